"""Open a kernel on a data dir: SQLite + Chroma (embedded or server) + the configured embedder."""

from __future__ import annotations

import threading
from pathlib import Path

from memos.clock import Clock
from memos.config import Settings
from memos.kernel.kernel import Kernel
from memos.kernel.ops.kinds import ActivationBudget
from memos.kernel.ops.reevaluate import reevaluate_adapters
from memos.models.llm import open_language_model
from memos.models.port import ModelPort
from memos.storage.owner import HomeLock
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import Embedder


def open_embedder(settings: Settings) -> Embedder:
    """The embedder ``settings.embedder`` names: all-MiniLM-L6-v2 (default), a sentence-transformers directory, or
    ``"hashing"`` (feature hashing, no model: for soaks and tests where a model load per start would dominate)."""
    from memos.models.embedder import DEFAULT_EMBEDDER, MiniLMEmbedder

    if settings.embedder == "hashing":
        from memos.models.hashing import HashingEmbedder

        return HashingEmbedder()
    if settings.embedder == DEFAULT_EMBEDDER:
        return MiniLMEmbedder()
    return MiniLMEmbedder(Path(settings.embedder))


def open_kernel(
    settings: Settings,
    *,
    embedder: Embedder | None = None,
    clock: Clock | None = None,
    model: ModelPort | None = None,
    owner: str = "an embedded kernel (Memos.embedded / Runtime inprocess)",
    endpoint: str | None = None,
    lock_wait_s: float = 0.0,
) -> Kernel:
    """The kernel that owns ``settings.home``, for this process's lifetime or until ``close``.

    The home's lock (``memos.storage.owner``) is taken first, as ``owner`` (answering at ``endpoint``, if any):
    nothing in the home is opened, and no crash recovery runs, unless this process owns it. ``model`` is the model
    host (in-process ``ModelService`` or the Ray actor's proxy); without one, activation memory and ``generate``
    raise ``ModelUnavailable``. ``lock_wait_s``: how long to wait for the lock (a restarted owner whose predecessor
    is still exiting); 0 fails at once.

    Raises:
        DataDirInUse: another process owns the home (the error names it and what to do instead).
    """
    from memos.storage.chroma import ChromaIndex

    settings.home.mkdir(parents=True, exist_ok=True)
    lock = HomeLock.acquire(settings.home, owner, endpoint=endpoint, wait_s=lock_wait_s)
    try:
        store = SqliteStore(settings.db_path, synchronous=settings.sqlite_synchronous)
        index = (ChromaIndex(url=settings.chroma_url, collection=settings.chroma_collection) if settings.chroma_url
                 else ChromaIndex(settings.chroma_path, collection=settings.chroma_collection))
        budgets = ActivationBudget(
            disk_bytes=settings.activation_disk_bytes, max_memories=settings.activation_max_memories,
            cube_disk_bytes=settings.activation_cube_disk_bytes, cube_max_memories=settings.activation_cube_max_memories,
        )
        kernel = Kernel(
            store, index, embedder or open_embedder(settings), clock=clock, superusers=settings.superusers,
            model=model, blob_dir=settings.blob_dir, budgets=budgets, llm=open_language_model(settings, model),
        )
    except BaseException:
        lock.release()
        raise
    kernel.home_lock = lock
    kernel.distill_max_steps = settings.distill_max_steps
    kernel.distill_max_s = settings.distill_max_s
    kernel.distill_queue.per_principal = settings.distill_queue_per_principal
    if model is not None:
        # A new base model: adopted adapters built for another one are not used, and are re-evaluated in the
        # background (the first fingerprint may load the model: not on the opener's time).
        threading.Thread(target=reevaluate_adapters, args=(kernel, kernel.closing), name="memos-reevaluate",
                         daemon=True).start()
    return kernel

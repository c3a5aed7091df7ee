"""Settings of a memos deployment. Plain data; read from the environment by ``Settings.from_env``.

| variable | default | meaning |
|---|---|---|
| MEMOS_HOME | ~/.memos | data dir: SQLite, Chroma, blobs, model cache, cluster file |
| MEMOS_EMBEDDER | all-MiniLM-L6-v2 | the embedder: that model, a sentence-transformers directory, or ``hashing`` (no model) |
| MEMOS_CHROMA_URL | (embedded) | use a Chroma server instead of the embedded PersistentClient |
| MEMOS_CHROMA_COLLECTION | memos_plaintext | the collection of this data dir's index (on a shared Chroma server: one per data dir) |
| MEMOS_SQLITE_SYNC | FULL | SQLite synchronous mode (FULL survives power loss; NORMAL survives process crashes) |
| MEMOS_LOG_LEVEL | WARNING | structlog level |
| MEMOS_MODEL | smollm2 | the model host's model (``none`` disables it: plaintext memory only) |
| MEMOS_MODEL_DEVICE | auto | where the model runs: ``auto`` (a CUDA GPU if torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:<n>`` |
| MEMOS_MODEL_DTYPE | auto | ``auto`` (float32 on the CPU, bfloat16 or float16 on a GPU), ``float32``, ``bfloat16``, ``float16`` |
| MEMOS_MODEL_CACHE | ~/.cache/memos/models | converted models, shared by every data dir on the machine (keyed by the source file's sha256) |
| MEMOS_POLICIES | (none) | policy files for the scheduler, separated by ``:`` |
| MEMOS_LLM | rules | language model for memory work (ingest, summaries): ``rules``, ``local`` or ``openai`` |
| MEMOS_LLM_URL, MEMOS_LLM_MODEL, MEMOS_LLM_API_KEY | (none) | the OpenAI-compatible endpoint of ``MEMOS_LLM=openai`` |
| MEMOS_LLM_FALLBACK | (none) | ``rules``: answer with the rules where the model's JSON is unusable |
| MEMOS_DASHBOARD_PORT, MEMOS_METRICS_PORT | 8265, 8081 | ports of the Ray dashboard and metrics export (``memos up``) |
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def default_home() -> Path:
    return Path(os.environ.get("MEMOS_HOME") or Path.home() / ".memos").expanduser()


def default_model_cache() -> Path:
    """Where converted models live: ``$MEMOS_MODEL_CACHE``, else ``$XDG_CACHE_HOME/memos/models``, else
    ``~/.cache/memos/models``. One cache per machine, shared by every data dir: each converted copy is named by the
    sha256 of the file it came from (``memos.models.loader``) and written under a temporary name then renamed, so
    several processes may share it and a different model never reuses another's copy."""
    if os.environ.get("MEMOS_MODEL_CACHE"):
        return Path(os.environ["MEMOS_MODEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "memos" / "models"


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(default_factory=default_home)
    chroma_url: str | None = None
    # On a Chroma server shared by several data dirs (kernel shards), each needs its own collection: a kernel's
    # start-up reconcile removes index entries its SQLite does not know.
    chroma_collection: str = Field(default="memos_plaintext", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{1,510}[a-zA-Z0-9]$")
    embedder: str = "all-MiniLM-L6-v2"  # or a local sentence-transformers model directory, or "hashing" (no model)
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    superusers: tuple[str, ...] = ("system",)
    # The language model behind activation memory and generate: "smollm2" (bundled), a .gguf file, a local
    # Hugging Face causal-LM directory, or None for no model host (plaintext memory only).
    model: str | None = "smollm2"
    # "auto": float32 on the CPU, bfloat16 (or float16) on a GPU; device "auto": the first CUDA GPU if torch sees one.
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    model_device: str = "auto"
    model_cache: Path = Field(default_factory=default_model_cache)
    activation_disk_bytes: int | None = 2 * 1024**3
    activation_max_memories: int | None = None
    # Per cube, under the global cap above (docs/activation.md, "Budgets and tenants"); None: only the global cap.
    activation_cube_disk_bytes: int | None = None
    activation_cube_max_memories: int | None = None
    # Distillation turns (docs/parametric.md): steps a caller may ask for, how long one job may train, jobs waiting
    # per principal.
    distill_max_steps: int = Field(default=1000, ge=1)
    distill_max_s: float = Field(default=3 * 3600.0, gt=0)
    distill_queue_per_principal: int = Field(default=4, ge=1)
    activation_ram_bytes: int = 256 * 1024**2
    activation_gpu_bytes: int = 1024**3  # the GPU tier of loaded caches (used only when the model runs on a GPU)
    loaded_adapters: int = 2  # LoRA adapters kept ready in the model host's RAM (LRU)
    compose_method: Literal["rotate", "recompute"] = "recompute"  # exact; "rotate" is cheaper but approximate (docs/activation.md)
    # The language model for memory work (memos.models.llm): "rules" (no model), "local" (the model host) or
    # "openai" (llm_url + llm_model); llm_fallback="rules" answers where the model's structured output is unusable.
    llm: Literal["rules", "local", "openai"] = "rules"
    llm_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = Field(default=None, repr=False)
    llm_fallback: Literal["rules"] | None = None
    # Lifecycle policy files the kernel's scheduler runs on their schedules (see docs/policies.md).
    policies: tuple[Path, ...] = ()
    ray_namespace: str = "memos"
    kernel_actor: str = "memos-kernel"
    model_actor: str = "memos-model"
    dashboard_port: int = 8265
    metrics_export_port: int = 8081

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env: dict[str, object] = {}
        if os.environ.get("MEMOS_EMBEDDER"):
            env["embedder"] = os.environ["MEMOS_EMBEDDER"]
        if os.environ.get("MEMOS_CHROMA_URL"):
            env["chroma_url"] = os.environ["MEMOS_CHROMA_URL"]
        if os.environ.get("MEMOS_CHROMA_COLLECTION"):
            env["chroma_collection"] = os.environ["MEMOS_CHROMA_COLLECTION"]
        if os.environ.get("MEMOS_MODEL"):
            value = os.environ["MEMOS_MODEL"]
            env["model"] = None if value.lower() == "none" else value
        if os.environ.get("MEMOS_MODEL_DEVICE"):
            env["model_device"] = os.environ["MEMOS_MODEL_DEVICE"]
        if os.environ.get("MEMOS_MODEL_DTYPE"):
            env["model_dtype"] = os.environ["MEMOS_MODEL_DTYPE"]
        if os.environ.get("MEMOS_DASHBOARD_PORT"):
            env["dashboard_port"] = int(os.environ["MEMOS_DASHBOARD_PORT"])
        if os.environ.get("MEMOS_METRICS_PORT"):
            env["metrics_export_port"] = int(os.environ["MEMOS_METRICS_PORT"])
        if os.environ.get("MEMOS_POLICIES"):
            env["policies"] = tuple(Path(p) for p in os.environ["MEMOS_POLICIES"].split(":") if p)
        for name in ("llm", "llm_url", "llm_model", "llm_api_key", "llm_fallback"):
            if os.environ.get(f"MEMOS_{name.upper()}"):
                env[name] = os.environ[f"MEMOS_{name.upper()}"]
        if os.environ.get("MEMOS_SQLITE_SYNC"):
            env["sqlite_synchronous"] = os.environ["MEMOS_SQLITE_SYNC"].upper()
        env.update({k: v for k, v in overrides.items() if v is not None or k == "model"})
        return cls(**env)  # type: ignore[arg-type]

    @property
    def db_path(self) -> Path:
        return self.home / "memos.sqlite3"

    @property
    def chroma_path(self) -> Path:
        return self.home / "chroma"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache

    @property
    def cluster_file(self) -> Path:
        return self.home / "cluster.json"

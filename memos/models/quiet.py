"""Keep the libraries under the model host quiet: their progress bars ("Loading weights", "Converting GGUF") and
their warnings (FutureWarning and friends) are not memos' messages and break the output people read.

``quiet_libraries()`` is called before any model or embedder is loaded, in whatever process loads it (the CLI, a
script, the Ray model actor). It does nothing when ``MEMOS_VERBOSE`` is set (to anything but ``0``) or
``MEMOS_LOG_LEVEL`` is ``DEBUG``: then everything the libraries say is shown. memos' own warnings are not touched.
"""

from __future__ import annotations

import logging
import os
import warnings

# Libraries whose warnings and progress output memos hides unless verbose.
_LIBRARIES = ("transformers", "huggingface_hub", "torch", "peft", "sentence_transformers", "gguf", "accelerate")


def verbose() -> bool:
    return os.environ.get("MEMOS_VERBOSE", "0") not in ("", "0") or os.environ.get("MEMOS_LOG_LEVEL", "").upper() == "DEBUG"


def quiet_libraries() -> None:
    if verbose():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in _LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(?!memos)")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers not installed: nothing of it to silence
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

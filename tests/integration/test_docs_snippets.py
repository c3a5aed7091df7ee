"""Every ```python block of README.md and docs/*.md runs as written.

Each block runs in its own Python process with a fresh temp HOME and MEMOS_HOME (so ``~`` and the default data dir
are empty), Hugging Face offline, and the session's converted-model cache ($MEMOS_MODEL_CACHE, so a block that needs
the model pays only its ~2 s load). The working directory is the repository root, so a block may name repository
files (``policies/...``, ``examples/...``). A block that is not meant to run on its own is written as ```text (with a
pointer to the runnable example), never skipped here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
TIMEOUT_S = 300


def python_blocks() -> list[tuple[str, int, str]]:
    """(file relative to the repo, line of the opening fence, code) for every ```python block."""
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((str(path.relative_to(ROOT)), line, match.group(1)))
    return blocks


BLOCKS = python_blocks()


def run_block(code: str, user_home: Path, model_cache: Path) -> subprocess.CompletedProcess[str]:
    user_home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ, "HOME": str(user_home), "MEMOS_HOME": str(user_home / ".memos"),
        "MEMOS_MODEL_CACHE": str(model_cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False", "PYTHONPATH": str(ROOT / "examples"),
    }
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def explain(where: str, result: subprocess.CompletedProcess[str]) -> str:
    return f"the ```python block at {where} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"


def test_the_docs_have_python_blocks_to_run():
    files = {f for f, _, _ in BLOCKS}
    assert "README.md" in files
    assert all(code.strip() for _, _, code in BLOCKS)


@pytest.mark.parametrize(("doc", "line", "code"), BLOCKS, ids=[f"{f}:{n}" for f, n, _ in BLOCKS])
def test_python_block_runs_as_written(doc, line, code, tmp_path, model_cache_dir):
    result = run_block(code, tmp_path / "user", model_cache_dir)
    assert result.returncode == 0, explain(f"{doc}:{line}", result)
    if doc == "README.md":
        # A new user runs it, edits nothing, runs it again: it must not trip over the first run's data.
        again = run_block(code, tmp_path / "user", model_cache_dir)
        assert again.returncode == 0, explain(f"{doc}:{line} (run a second time in the same home)", again)

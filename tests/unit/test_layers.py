"""The architecture's import rules (docs/architecture.md), enforced on the source, and a light ``import memos``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"memos": ROOT / "memos", "memos.cubes": ROOT / "cubes", "memos.schedulers": ROOT / "schedulers",
            "memos.agents": ROOT / "agents"}

# Lowest first; a module may import its own layer or lower ones. Every top-level module and package of memos is named
# here: a name covers itself and, for a package, its submodules, except ``memos``, which covers only memos/__init__.py
# (so a new top-level module is in no layer until it is added).
LAYERS = [
    {"memos", "memos.errors", "memos.types", "memos.syscalls", "memos.clock", "memos.config", "memos.logging",
     "memos.progress"},
    {"memos.cubes", "memos.storage", "memos.models"},
    {"memos.kernel"},
    {"memos.schedulers"},
    {"memos.service", "memos.transports", "memos.transports_http", "memos.hosting"},
    {"memos.client"},
    {"memos.runtime"},
    {"memos.agents"},
    {"memos.cli", "memos.server", "memos.bench"},
]

# Third-party fences: module prefix -> where it may be imported.
FENCES = {
    "ray": ("memos.hosting", "memos.transports.ray"),
    "torch": ("memos.models", "memos.cubes.activation", "memos.cubes.parametric", "memos.bench"),
    "transformers": ("memos.models", "memos.cubes.activation", "memos.cubes.parametric"),
    "peft": ("memos.models", "memos.cubes.parametric"),
    "chromadb": ("memos.storage.chroma",),
    "apscheduler": ("memos.schedulers",),
    "langgraph": ("memos.agents",),
}


def modules():
    for pkg, path in PACKAGES.items():
        for file in path.rglob("*.py"):
            rel = file.relative_to(path).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([pkg, *parts]), file


def layer_of(name: str) -> int | None:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            covers = name == prefix or (prefix != "memos" and name.startswith(prefix + "."))
            if covers and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def imports(file: Path):
    tree = ast.parse(file.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_every_module_imports_only_its_layer_or_lower():
    problems = []
    for name, file in modules():
        own = layer_of(name)
        assert own is not None, f"{name} is in no layer: add it to LAYERS"
        for imported in imports(file):
            if imported.startswith("memos"):
                other = layer_of(imported)
                if other is not None and other > own:
                    problems.append(f"{name} (layer {own}) imports {imported} (layer {other})")
    assert not problems, "\n".join(problems)


def test_a_module_outside_the_layers_is_reported():
    assert layer_of("memos.brand_new_module") is None
    assert layer_of("memos.kernel.ops.cubes") == layer_of("memos.kernel")
    assert layer_of("memos") == 0


def test_third_party_fences():
    problems = []
    for name, file in modules():
        for imported in imports(file):
            top = imported.split(".")[0]
            allowed = FENCES.get(top)
            if allowed and not any(name == a or name.startswith(a + ".") for a in allowed):
                problems.append(f"{name} imports {imported}; only {allowed} may")
    assert not problems, "\n".join(problems)


def test_every_package_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    for name, file in modules():
        if file.name == "__init__.py":
            assert f'"{name}"' in text, f"package {name} is missing from pyproject.toml [tool.setuptools] packages"


def test_import_memos_is_light():
    code = (
        "import sys, time; t = time.perf_counter(); import memos, memos.client; dt = time.perf_counter() - t; "
        "heavy = [m for m in ('ray', 'torch', 'transformers', 'peft', 'chromadb', 'langgraph') if m in sys.modules]; "
        "print(dt, heavy)"
    )
    # Best of three runs: the limit is about what the import does, not about a busy machine's scheduling.
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
            for _ in range(3)]
    assert all(out[1].strip() == "[]" for out in runs)
    assert min(float(out[0]) for out in runs) < 1.0


def test_the_kernel_never_imports_a_language_model_backend():
    """The kernel is given a ``LanguageModel`` (memos.models.llm); which backend is the composition root's choice."""
    backends = ("memos.models.llm_rules", "memos.models.llm_local", "memos.models.llm_openai")
    problems = [f"{name} imports {imported}" for name, file in modules() if name.startswith("memos.kernel.")
                and name != "memos.kernel.factory" for imported in imports(file) if imported.startswith(backends)]
    assert not problems, "\n".join(problems)

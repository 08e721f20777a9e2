"""The house: imports flow one way (io -> models -> scoring -> training/analysis -> cli), no cycles,
no imports hidden inside functions to dodge one, and the wheel carries the shipped weights."""
from __future__ import annotations

import ast
import graphlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "karl_cli"
# Each layer may import only from the layers before it (and itself).
LAYERS = ["errors", "defaults", "registry", "progress", "runtime", "io", "models", "scoring", "distributed", "training",
          "analysis", "cli"]
SAME_LEVEL = {"training": {"analysis"}, "analysis": {"training"}}   # neither may import the other


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported karl_cli module, whether the import sits inside a function) for one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("karl_cli"):
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("karl_cli")]
        for n in names:
            out.append((n, False))
    local = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("karl_cli"):
                    local.add(node.module)
    return [(n, n in local) for n, _ in out]


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, _ in _imports(path):
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name and target in modules:
                deps.add(target)
        graph[name] = deps
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_package_has_no_import_cycle():
    graphlib.TopologicalSorter(_graph()).prepare()   # raises CycleError naming the cycle


def test_imports_flow_one_way():
    bad = []
    for module, deps in _graph().items():
        mine = _layer(module)
        if mine not in LAYERS:
            continue
        for dep in deps:
            theirs = _layer(dep)
            if theirs in LAYERS and (LAYERS.index(theirs) > LAYERS.index(mine) or theirs in SAME_LEVEL.get(mine, ())):
                bad.append(f"{module} -> {dep}")
    assert not bad, bad


def test_no_function_local_imports_outside_the_cli():
    hidden = [f"{_module_name(p)}: {t}" for p in PACKAGE.rglob("*.py") if p.name not in ("cli.py", "__main__.py")
              for t, local in _imports(p) if local]
    assert not hidden, hidden


def test_the_wheel_carries_the_shipped_weights(tmp_path):
    # Built from a copy: setuptools writes build/ beside pyproject.toml, which must not touch the checkout.
    root, src = PACKAGE.parent, tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "karl_cli", "weights"):
        (shutil.copytree if (root / name).is_dir() else shutil.copy)(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("karl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("karl-small", "alit-small"):
        for f in ("config.json", "model.safetensors", "model_card.md"):
            assert f"karl_cli/weights/{model}/{f}" in names
    assert "karl_cli/models/karl.py" in names and "karl_cli/scoring/oracle.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

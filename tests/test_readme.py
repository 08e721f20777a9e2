"""README.md and docs/*.md, as a new user meets them (issues 22.3, 27).

Numbers: every table between `<!-- table:NAME -->` markers must equal what `docs/generate.py` renders
from the committed results (docs/results/) and the live CLI and weights; every result file must record
the command the docs show; the cheap documented commands (examples/, built-in images) are re-run and
must still print what their tables say. Savoias-based runs are checked against their result files
only (the data is not in the repository).

Code blocks: Python blocks of the README and of the docs pages this test owns are executed in a
scratch folder holding `weights/` (the shipped weights) and a few of the real `examples/`. Bash
blocks of every doc, line by line, get one of these checks, and the test fails on a line it cannot
place:

- RUN: the `karl` command runs in-process in that scratch folder (`imgs/` and `image.jpg` stand for
  the examples; the training quick-start uses the real 13-image `examples/`) and must exit 0;
  `karl decode` must rebuild `karl encode --recon`'s PNGs bit for bit, as the docs say.
- PARSE: every other `karl` line (too slow here, or on placeholders such as `savoias-dev`) is parsed
  by karl's own command line (every option known, every value of the right type, nothing required
  missing); `python benchmarks/X.py ...` and `python docs/generate.py ...` by the script's parser;
  shell variables are replaced by sample values first.
- DRY: `make demo` / `make test` are dry runs (`make -n`). pip, venv, `ray` and `nvidia-smi` lines are
  only recognised (they need the network, a cluster or a GPU).
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from karl_cli.cli import app

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    """docs/generate.py as a module (registered first: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["docs_generate"] = mod
    spec.loader.exec_module(mod)
    return mod


gen = _load_generator()
DOCS = gen.doc_files()
OWNED_ELSEWHERE = {"python-api.md", "distributed.md"}   # written and tested by the API / Ray work
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
README_BUDGET = 13_000    # bytes: "a README of at most ~12 KB" (issue 27), with room for a model column

RUN = {
    "karl complexity examples/ --eps 0.05 --csv kc.csv --baselines",
    "karl show examples/astronaut.jpg --out fig.png",
    "karl complexity imgs/ --eps 0.05 --csv out.csv",
    "karl encode imgs/ --eps 0.05 --out tokens/ --recon recon/",
    "karl decode tokens/ --out decoded/",
    "karl show image.jpg --out fig.png",
    "karl train examples/ --out runs/mine --preset tiny --batch-size 8 --steps 20",
    "karl complexity examples/ --weights runs/mine",
}
SHELL_VARS = {"$N": "2", "$i": "0", "$k": "0", "${SLURM_ARRAY_TASK_ID}": "0", "$((N - 1))": "1"}
NOT_RUN = ("python3 -m venv", ".venv/bin/pip install", "pip install", "N=$(nvidia-smi", "ray ")


def text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


def blocks(lang: str, docs=DOCS) -> list[tuple[Path, str]]:
    return [(d, code) for d in docs for kind, code in BLOCK.findall(text(d)) if kind == lang]


# --- numbers --------------------------------------------------------------------------------------
def test_every_table_matches_its_render():
    """No hand-edited or stale table: `python docs/generate.py --render` would change nothing."""
    stale = gen.rewrite(check=True)
    assert not stale, f"out of date (run `python docs/generate.py --render`, or re-run the commands): {stale}"


def test_docs_hold_the_generated_tables():
    names = {m.group("name") for d in DOCS for m in gen.BLOCK.finditer(text(d))}
    assert {"examples", "savoias", "compare", "battery", "throughput", "models", "presets"} <= names
    # every command's options are documented
    assert {n for n in gen.tables() if n.startswith("options-")} <= names
    # every measured table appears somewhere, so no run is made for nothing
    assert {n for n, t in gen.tables().items() if t.runs} <= names


def test_results_record_the_documented_commands():
    manifest = gen.read_manifest()
    for name, run in gen.RUNS.items():
        assert name in manifest, f"{name}: never run; `python docs/generate.py --only {name}`"
        assert manifest[name]["command"] == run.command, (name, manifest[name]["command"], run.command)
        for out in run.outputs:
            assert (gen.RESULTS / out).is_file(), f"{name}: docs/results/{out} is missing"
        for key in ("machine", "date", "commit", "wall_s"):
            assert key in manifest[name], (name, key)
    assert set(manifest) <= set(gen.RUNS), f"results of runs no doc makes: {set(manifest) - set(gen.RUNS)}"


def test_every_run_writes_only_under_docs():
    for run in gen.RUNS.values():
        written = [w for w in shlex.split(run.command) if "/" in w and w.startswith(("docs/results", "docs/figures"))]
        assert written, f"{run.name} writes no result file under docs/"


@pytest.mark.parametrize("name", sorted(n for n, r in gen.RUNS.items() if r.cheap))
def test_cheap_commands_still_print_their_tables(name, tmp_path, monkeypatch):
    """Re-run a cheap documented command; its table must equal the committed one."""
    from karl_cli import cli

    run = gen.RUNS[name]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli.console, "width", 1000)
    words = run.words(results=tmp_path, figures=tmp_path / "figures")
    assert words[0] == "karl"
    res = CliRunner().invoke(app, words[1:])
    assert res.exit_code == 0, res.output
    if run.keep_output:
        gen.keep_output(name, res.output, tmp_path)
    for table, spec in gen.tables().items():
        if name in spec.runs:
            assert spec.render(tmp_path) == spec.render(gen.RESULTS), f"{table}: {run.command} now prints otherwise"


def test_readme_fits_its_budget():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_BUDGET, f"README.md is {size} bytes; move detail into docs/"


# --- links and places ---------------------------------------------------------------------------------
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
CODE_PATH = re.compile(r"`((?:karl_cli|benchmarks|tests|docs|weights)/[\w./-]+)`(?: `(\w+)`)?")


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text(doc), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_links_resolve():
    for doc in DOCS:
        for target, anchor in LINK.findall(text(doc)):
            if target.startswith(("http://", "https://")):
                continue
            path = (doc.parent / target).resolve()
            if path.name in OWNED_ELSEWHERE and not path.exists():
                continue          # pages of parallel work, linked ahead of their merge
            assert path.exists(), f"{doc.name}: broken link {target}"
            if anchor and path.suffix == ".md":
                assert anchor[1:] in _anchors(path), f"{doc.name}: no heading {anchor} in {target}"


def test_named_files_and_symbols_exist():
    """`karl_cli/x.py` `Name` in a doc: the file exists and defines Name (the "Where things are" table)."""
    for doc in DOCS:
        for path, symbol in CODE_PATH.findall(text(doc)):
            p = ROOT / path.rstrip("/.")
            if p.name in OWNED_ELSEWHERE or "*" in path:
                continue
            assert p.exists() or p.parent.is_dir() and path.endswith("/"), f"{doc.name}: no {path}"
            if symbol and p.suffix == ".py":
                assert re.search(rf"^(class|def) {symbol}\b", p.read_text(encoding="utf-8"), re.M), \
                    f"{doc.name}: {path} defines no {symbol}"


# --- code blocks -----------------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path, monkeypatch):
    (tmp_path / "weights").symlink_to(ROOT / "weights", target_is_directory=True)
    (tmp_path / "examples").mkdir()
    for name in ("chelsea.jpg", "noise.png", "constant.png", "astronaut.jpg"):
        shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    shutil.copy(ROOT / "examples" / "chelsea.jpg", tmp_path / "image.jpg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KARL_CACHE_DIR", str(tmp_path / "cache"))
    from karl_cli import cli
    monkeypatch.setattr(cli.console, "width", 1000)
    return tmp_path


def test_docs_have_the_blocks_this_test_checks():
    bash = "\n".join(code for _, code in blocks("bash"))
    missing = [line for line in RUN if line not in bash]
    assert not missing, f"doc lines this test runs are gone: {missing}"
    assert blocks("python", [ROOT / "README.md"]), "the README's Python example is gone"


def test_python_blocks_run(site):
    ran = 0
    for doc, code in blocks("python", [d for d in DOCS if d.name not in OWNED_ELSEWHERE]):
        namespace: dict = {"__name__": "__docs__"}
        exec(compile(code, str(doc), "exec"), namespace)   # noqa: S102 - our own docs
        ran += 1
        if "enc" in namespace:      # the README's example: one count per image
            assert len(namespace["enc"].kc) == 2
    assert ran >= 1


def _command_lines(code: str) -> list[str]:
    """The commands of a bash block: comments dropped, `;`-separated parts split."""
    out = []
    for raw in code.splitlines():
        line = raw.split("  #")[0].split(" # ")[0].strip()
        if not line or line.startswith("#"):
            continue
        out.extend(p.strip() for p in line.split(";") if p.strip())
    return out


def _parse_karl(argv: list[str]) -> None:
    group = typer.main.get_command(app)
    ctx = group.make_context("karl", argv[:1])
    command = group.get_command(ctx, argv[0])
    assert command is not None, f"no command {argv[0]!r}"
    if argv[0] == "analyze":
        ctx = command.make_context("analyze", argv[1:2], parent=ctx)
        command, argv = command.get_command(ctx, argv[1]), argv[1:]
        assert command is not None, f"no study {argv[0]!r}"
    command.make_context(argv[0], argv[1:], parent=ctx)   # raises on an unknown option or a bad value


def _parse_script(argv: list[str]) -> None:
    script = ROOT / argv[0]
    mod = gen if script == ROOT / "docs" / "generate.py" else load_script(script, f"docs_{script.stem}")
    if hasattr(mod, "parse_args"):
        mod.parse_args(argv[1:])
    else:
        mod.build_parser().parse_args(argv[1:])


def test_bash_blocks(site):
    checked: dict[str, list[str]] = {"run": [], "parse": [], "dry": [], "not run": []}
    for doc, code in blocks("bash"):
        for line in _command_lines(code):
            if line.startswith(NOT_RUN):
                checked["not run"].append(line)
                continue
            if line.startswith("for ") or line in ("do", "done", "wait"):
                continue
            line = line.removeprefix("do ").removesuffix(" done").strip()   # a one-line loop's body
            line = line.removesuffix("&").strip()          # a background job: the command itself
            for var, value in SHELL_VARS.items():
                line = line.replace(var, value)
            argv = shlex.split(line)
            while argv and "=" in argv[0] and not argv[0].startswith("-"):   # VAR=value karl ...
                argv = argv[1:]
            if argv[:1] == ["make"]:
                res = subprocess.run(["make", "-n", *argv[1:]], cwd=ROOT, capture_output=True, text=True)
                assert res.returncode == 0, (line, res.stderr)
                checked["dry"].append(line)
            elif argv[:1] == ["torchrun"]:
                _parse_karl(argv[argv.index("karl_cli") + 1:])
                checked["parse"].append(line)
            elif argv[:1] == ["python"] and argv[1].startswith(("benchmarks/", "docs/")):
                _parse_script(argv[1:])
                checked["parse"].append(line)
            elif argv[:1] == ["karl"] and line in RUN and line not in checked["run"]:
                _run(line, argv[1:], site)
                checked["run"].append(line)
            elif argv[:1] == ["karl"]:
                _parse_karl(argv[1:])
                checked["parse"].append(line)
            else:
                raise AssertionError(f"{doc.name}: bash line this test does not know how to check: {line!r}")
    assert sorted(checked["run"]) == sorted(RUN), checked["run"]
    # The promise of `karl decode`: the same PNGs as `karl encode --recon`, bit for bit.
    recon = sorted(p.name for p in (site / "recon").iterdir())
    assert recon and all((site / "decoded" / n).read_bytes() == (site / "recon" / n).read_bytes() for n in recon)


def _run(line: str, args: list[str], site: Path) -> None:
    real_examples = "runs/mine" in line            # the training quick-start: all 13 shipped examples
    subst = {"imgs/": "examples/"}
    args = [subst.get(a, a) for a in args]
    if real_examples:
        args = [str(ROOT / "examples") if a == "examples/" else a for a in args]
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [*args, *(["--workers", "0"] if args[0] in ("complexity", "encode") else [])])
    print(f"{time.perf_counter() - t0:5.1f} s  {line}")
    assert res.exit_code == 0, (line, res.output)

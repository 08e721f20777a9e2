"""Every code block of README.md, as a new user would meet it (issue 22.3).

Python blocks are executed, in a scratch folder holding `weights/` (the shipped weights), a 3-image
`examples/` and a generated Savoias-layout `savoias/` (tests/savoias_fixture.py), the paths the
snippet names. Bash blocks, line by line, get one of these checks, and the test fails on a line it
cannot place:

- RUN: the `karl` command runs in-process in that scratch folder (`imgs/` and `image.jpg` stand for
  the 3-image examples; the training quick-start uses the real 13-image `examples/`) and must exit 0;
  `karl decode` must rebuild `karl encode --recon`'s PNGs bit for bit, as the README says.
- PARSE: commands too slow for this test (training on your data, calibration, `karl compare`'s
  searches, `karl correlate --plot`: the Python block runs `correlate` on the generated Savoias, and
  tests/test_correlate.py the command with its figures) and ones on placeholders are parsed by karl's own command line (every option known, every value of
  the right type, nothing required missing) without running; `python benchmarks/X.py ...` lines by
  the script's own argument parser; shell variables are replaced by sample values first.
- DRY: `make demo` / `make test` are dry runs (`make -n`): the targets exist. pip / venv lines and
  `nvidia-smi` are not run (they need the network or a GPU); only recognised.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from karl_cli.cli import app

from conftest import load_script
from savoias_fixture import make_savoias

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)

RUN = {
    "karl complexity examples/ --eps 0.05 --csv kc.csv --baselines",
    "karl complexity imgs/ --eps 0.05 --csv out.csv",
    "karl encode imgs/ --eps 0.05 --out tokens/ --recon recon/",
    "karl decode tokens/ --out decoded/",
    "karl show image.jpg --out fig.png",
    "karl train examples/ --out runs/mine --preset tiny --batch-size 8 --steps 20",
    "karl complexity examples/ --weights runs/mine",
}
SHELL_VARS = {"$N": "2", "$i": "0", "${SLURM_ARRAY_TASK_ID}": "0", "$((N - 1))": "1"}
NOT_RUN = ("python3 -m venv", ".venv/bin/pip install", "pip install", "N=$(nvidia-smi")


def blocks(lang: str) -> list[str]:
    return [code for kind, code in BLOCK.findall(README) if kind == lang]


@pytest.fixture
def site(tmp_path, monkeypatch):
    (tmp_path / "weights").symlink_to(ROOT / "weights", target_is_directory=True)
    (tmp_path / "examples").mkdir()
    for name in ("chelsea.jpg", "noise.png", "constant.png"):
        shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    shutil.copy(ROOT / "examples" / "chelsea.jpg", tmp_path / "image.jpg")
    make_savoias(tmp_path / "savoias")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KARL_CACHE_DIR", str(tmp_path / "cache"))
    from karl_cli import cli
    monkeypatch.setattr(cli.console, "width", 1000)
    return tmp_path


def test_readme_has_the_blocks_this_test_checks():
    assert len(blocks("python")) >= 1 and len(blocks("bash")) >= 6
    bash = "\n".join(blocks("bash"))
    missing = [line for line in RUN if line not in bash]
    assert not missing, f"README lines this test runs are gone: {missing}"


def test_python_blocks_run(site):
    for code in blocks("python"):
        namespace: dict = {"__name__": "__readme__"}
        exec(compile(code, "README.md", "exec"), namespace)   # noqa: S102 - our own README
    assert (site / "kc.csv").is_file()


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
    command.make_context(argv[0], argv[1:], parent=ctx)   # raises on an unknown option or a bad value


def _parse_benchmark(argv: list[str]) -> None:
    script = ROOT / argv[0]
    mod = load_script(script, f"readme_{script.stem}")
    if hasattr(mod, "parse_args"):
        mod.parse_args(argv[1:])
    else:
        mod.build_parser().parse_args(argv[1:])


def test_bash_blocks(site):
    checked: dict[str, list[str]] = {"run": [], "parse": [], "dry": [], "not run": []}
    for code in blocks("bash"):
        for line in _command_lines(code):
            if line.startswith(NOT_RUN):
                checked["not run"].append(line)
                continue
            if line.startswith("for ") or line in ("do", "done", "wait"):
                continue
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
            elif argv[:1] == ["python"] and argv[1].startswith("benchmarks/"):
                _parse_benchmark(argv[1:])
                checked["parse"].append(line)
            elif argv[:1] == ["karl"] and line in RUN:
                _run(line, argv[1:], site)
                checked["run"].append(line)
            elif argv[:1] == ["karl"]:
                _parse_karl(argv[1:])
                checked["parse"].append(line)
            else:
                raise AssertionError(f"README bash line this test does not know how to check: {line!r}")
    assert len(checked["run"]) == len(RUN), checked["run"]
    # The promise of `karl decode`: the same PNGs as `karl encode --recon`, bit for bit.
    recon = sorted(p.name for p in (site / "recon").iterdir())
    assert recon and all((site / "decoded" / n).read_bytes() == (site / "recon" / n).read_bytes() for n in recon)


def _run(line: str, args: list[str], site: Path) -> None:
    real_examples = "runs/mine" in line            # the training quick-start: all 13 shipped examples
    subst = {"imgs/": "examples/", "image.jpg": "image.jpg"}
    args = [subst.get(a, a) for a in args]
    if real_examples:
        args = [str(ROOT / "examples") if a == "examples/" else a for a in args]
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [*args, *(["--workers", "0"] if args[0] in ("complexity", "encode") else [])])
    print(f"{time.perf_counter() - t0:5.1f} s  {line}")
    assert res.exit_code == 0, (line, res.output)

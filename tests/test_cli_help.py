"""The command line itself: --version, help texts, and Ctrl-C while karl starts (issue 22.11)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from karl_cli import __version__
from karl_cli.cli import app

from conftest import make_images

COMMANDS = ["complexity", "merge", "encode", "decode", "show", "train", "correlate", "calibrate", "compare"]


def test_version():
    res = CliRunner().invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"karl {__version__}"


def test_version_is_one_number_everywhere():
    """`python -m karl_cli --version`, `karl --version` and the installed metadata (pyproject reads
    karl_cli.__version__) say the same."""
    import importlib.metadata

    out = subprocess.run([sys.executable, "-m", "karl_cli", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"karl {__version__}", out.stderr
    assert importlib.metadata.version("karl") == __version__


ANALYZE = [["analyze"], *(["analyze", s] for s in ("profile", "noise", "structure", "familiarity", "map"))]


@pytest.mark.parametrize("command", [None, *COMMANDS, *ANALYZE])
def test_help_shows_no_value_for_flags_and_no_doubled_brackets(command):
    argv = [] if command is None else [command] if isinstance(command, str) else command
    res = CliRunner().invoke(app, argv + ["--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "<bool>" not in res.output, "on/off flags take no value"
    assert "[[" not in res.output
    if command == "correlate":
        assert "[SAVOIAS_ROOT]" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.2, 0.6, 1.5])
def test_ctrl_c_while_starting_exits_130_without_traceback(tmp_path, tiny_weights, delay):
    make_images(tmp_path / "imgs", 2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "karl_cli", "complexity", str(tmp_path / "imgs"), "--weights",
                             str(tiny_weights), "--csv", str(tmp_path / "o.csv"), "--workers", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode(errors="replace")
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")   # a fast machine: nothing to interrupt
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err    # "interrupted" is printed, except while typer parses the arguments


def test_engine_ray_without_ray_says_how_to_install_it(tmp_path, tiny_weights, monkeypatch):
    make_images(tmp_path / "imgs", 1)
    monkeypatch.setitem(sys.modules, "ray", None)            # as if karl[ray] were not installed
    monkeypatch.delitem(sys.modules, "karl_cli.distributed", raising=False)
    res = CliRunner().invoke(app, ["complexity", str(tmp_path / "imgs"), "--weights", str(tiny_weights),
                                   "--engine", "ray"], terminal_width=200)
    assert res.exit_code == 2 and "pip install 'karl[ray]'" in res.output, res.output
    res = CliRunner().invoke(app, ["complexity", str(tmp_path / "imgs"), "--engine", "spark"], terminal_width=200)
    assert res.exit_code == 2 and "unknown engine 'spark'" in res.output


def _float_options():
    """(command words, flag, OptionInfo) for every float option of every command."""
    import inspect
    import typing

    out = []

    def walk(typer_app, words):
        for c in typer_app.registered_commands:
            name = c.name or c.callback.__name__.replace("_", "-")
            hints = typing.get_type_hints(c.callback)
            for pname, p in inspect.signature(c.callback).parameters.items():
                if "float" in str(hints.get(pname)):
                    out.append(([*words, name], p.default.param_decls[0], p.default))
        for g in typer_app.registered_groups:
            walk(g.typer_instance, [*words, g.name])

    walk(app, [])
    return out


def test_every_float_option_refuses_values_that_round_to_0_or_inf():
    """Issue 28.17: `--eps 1e-400` was refused as "got 0.0" (the parser had rounded it first)."""
    from karl_cli.cli import _number

    options = _float_options()
    assert len(options) >= 15 and any(w == ["complexity"] and f == "--eps" for w, f, _ in options)
    assert all(info.parser is _number for _, _, info in options), [f for _, f, i in options if i.parser is not _number]
    for words, flag in ((["complexity", "x.png"], "--eps"), (["train", "x", "--out", "y"], "--lr")):
        res = CliRunner().invoke(app, [*words, flag, "1e-400"], terminal_width=200)
        assert res.exit_code == 2 and "1e-400 is too small" in res.output and "0.0" not in res.output, res.output
    res = CliRunner().invoke(app, ["complexity", "x.png", "--eps", "1e400"], terminal_width=200)
    assert res.exit_code == 2 and "1e400 is too large" in res.output
    res = CliRunner().invoke(app, ["complexity", "x.png", "--eps", "0,05"], terminal_width=200)
    assert res.exit_code == 2 and "(write 0.05)" in res.output


def test_row_counts_read_as_words():
    from karl_cli.cli import _rows

    assert _rows(1, "new ") == "1 new row" and _rows(0, "new ") == "0 new rows" and _rows(2) == "2 rows"


def test_an_error_after_a_ctrl_c_is_the_interrupt(monkeypatch, capsys):
    # A Ctrl-C inside an import leaves a half-made module; what fails next (numpy's __getattr__ recursing,
    # a dataclass's __set_name__) must read as the interrupt, not as "unexpected RecursionError".
    import typer

    from karl_cli import cli

    def broken() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    wrapped = cli._handle_errors(broken)
    with pytest.raises(typer.Exit) as e:
        wrapped()
    assert e.value.exit_code == 3                       # no Ctrl-C: an unexpected error
    monkeypatch.setattr(cli, "_interrupts", [1])
    with pytest.raises(typer.Exit) as e:
        wrapped()
    assert e.value.exit_code == 130

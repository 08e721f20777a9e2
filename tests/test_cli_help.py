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

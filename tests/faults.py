"""Shared by the fault tests (issue #7): the zoo of hostile files, the tiny weights, and running
``karl`` in-process with no traceback allowed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from karl_cli.cli import app

from conftest import make_images
from zoo import make_zoo

SETTINGS = settings(max_examples=int(os.environ.get("KARL_FUZZ_EXAMPLES", 150)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """No line wrapping in the CLI's messages, so the tests can look for whole phrases."""
    from karl_cli import cli

    monkeypatch.setattr(cli.console, "width", 1000)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo") / "zoo")


@pytest.fixture(scope="module")
def weights(tiny_weights):
    return tiny_weights


def invoke(*args, ok_codes=None):
    """Run ``karl ARGS`` in-process; never a traceback, never an exception other than the exit."""
    res = CliRunner().invoke(app, [os.fspath(a) if isinstance(a, Path) else str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if ok_codes is not None:
        assert res.exit_code in ok_codes, (res.exit_code, res.output)
    return res


def rel(zoo, path) -> str:
    return os.path.relpath(str(path), str(zoo.root))


def check_rows_cover_zoo(zoo, rows, eps_count=1):
    """One row per (file, ε); the good ones ok, the bad ones error rows with the expected reason."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(rel(zoo, r["path"]), []).append(r)
    assert sorted(by_name) == zoo.names
    for name, rs in by_name.items():
        assert len(rs) == eps_count, name
        for r in rs:
            if name in zoo.good:
                assert r["status"] == "ok", (name, r.get("error"))
            else:
                assert r["status"] == "error" and r["error"], name
                assert zoo.bad[name].lower() in str(r["error"]).lower(), (name, r["error"])


@pytest.fixture
def job(tmp_path):
    make_images(tmp_path / "imgs", 3)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "index.csv").write_text("path,kc,shard,offset,eps,model_id,status,error,name\n")
    (tmp_path / "ratings.csv").write_text("path,rating\n" + "".join(f"imgs/img_00{i}.png,{i}\n" for i in range(3)))
    return tmp_path

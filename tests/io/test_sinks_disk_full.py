"""Disk full (ENOSPC) at open, write or close of every sink: a WriteError naming the target, the
previous file left as it was, and no temp or lock file behind."""
from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from karl_cli.io import rows, tables  # noqa: E402
from karl_cli.io.atomic import WriteError  # noqa: E402
from karl_cli.io.rows import RowWriter, write_table  # noqa: E402

PREVIOUS = b"the previous file\n"
FIELDS = ["path", "eps", "kc"]


def enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock")))


class _FailingFile:
    """A text file whose ``write`` fails (disk full) from its ``fail_at``-th call on."""

    def __init__(self, f, fail_at: int) -> None:
        self._f, self._left = f, fail_at

    def write(self, s):
        self._left -= 1
        if self._left <= 0:
            enospc()
        return self._f.write(s)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _fail_writes_after(monkeypatch, n: int) -> None:
    real = builtins.open

    def fake_open(file, mode="r", *a, **k):
        f = real(file, mode, *a, **k)
        return _FailingFile(f, n) if "w" in mode else f

    monkeypatch.setattr(rows, "open", fake_open, raising=False)


def _run(target: Path, n_rows: int = 3) -> None:
    with RowWriter(target, FIELDS) as w:
        for i in range(n_rows):
            w.write({"path": f"{i}.png", "eps": 0.05, "kc": i})


@pytest.mark.parametrize("suffix", [".csv", ".json"])
@pytest.mark.parametrize("where", ["open", "header", "row", "close"])
def test_text_sinks(tmp_path, monkeypatch, suffix, where):
    target = tmp_path / f"rows{suffix}"
    target.write_bytes(PREVIOUS)
    if where == "open":
        real = builtins.open
        monkeypatch.setattr(rows, "open", lambda f, mode="r", *a, **k: enospc() if "w" in mode else real(f, mode, *a, **k),
                            raising=False)
    elif where == "header":
        _fail_writes_after(monkeypatch, 1)
    elif where == "row":
        _fail_writes_after(monkeypatch, 3)
    else:
        monkeypatch.setattr(rows.os, "fsync", enospc)
    with pytest.raises(WriteError, match="disk full") as e:
        _run(target)
    assert str(target) in str(e.value)
    assert target.read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []


class _FailingParquetWriter:
    """pyarrow's ParquetWriter failing (disk full) at ``where``: "open", "write" or "close"."""

    where = "open"
    real = tables.pq.ParquetWriter

    def __init__(self, path, schema):
        if self.where == "open":
            Path(path).write_bytes(b"PAR1")     # what a failed open can leave in the file
            enospc()
        self._w = self.real(path, schema)

    def write_table(self, t):
        if self.where == "write":
            enospc()
        self._w.write_table(t)

    def close(self):
        self._w.close()
        if self.where == "close":
            enospc()


@pytest.mark.parametrize("where", ["open", "write", "close"])
def test_parquet_sink(tmp_path, monkeypatch, where):
    target = tmp_path / "rows.parquet"
    target.write_bytes(PREVIOUS)
    monkeypatch.setattr(_FailingParquetWriter, "where", where)
    monkeypatch.setattr(tables.pq, "ParquetWriter", _FailingParquetWriter)
    monkeypatch.setattr(tables, "ROW_GROUP_ROWS", 1)     # every row writes a row group
    with pytest.raises(WriteError, match="disk full"):
        _run(target)
    assert target.read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []


def test_parquet_checkpoint_that_cannot_reopen(tmp_path, monkeypatch):
    """A checkpoint publishes the rows so far and reopens the stream in a new temp file; disk full there
    fails the run, the target keeps the checkpoint, and neither temp file stays."""
    target = tmp_path / "rows.parquet"
    calls = []
    real = tables.pq.ParquetWriter

    def writer(path, schema):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"PAR1")
            enospc()
        return real(path, schema)

    monkeypatch.setattr(tables.pq, "ParquetWriter", writer)
    with pytest.raises(WriteError):
        with RowWriter(target, FIELDS) as w:
            w.write({"path": "a.png", "eps": 0.05, "kc": 1})
            w.checkpoint()
    assert leftovers(tmp_path) == []


def test_table_writer(tmp_path, monkeypatch):
    target = tmp_path / "table.csv"
    target.write_bytes(PREVIOUS)

    def to_csv(self, path, *a, **k):
        Path(path).write_text("half a tab", encoding="utf-8")
        enospc()

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    with pytest.raises(WriteError, match="disk full"):
        write_table(pd.DataFrame({"a": [1, 2]}), target)
    assert target.read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("writer", ["style", "study"])
def test_figures(tmp_path, monkeypatch, writer):
    from karl_cli.analysis import study_plots
    from karl_cli.analysis.style import save

    def savefig(self, fname, *a, **k):
        Path(fname).write_bytes(b"\x89PNG half")
        enospc()

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    target = tmp_path / "fig.png"
    target.write_bytes(PREVIOUS)
    fig = plt.figure()
    with pytest.raises(WriteError, match="disk full"):
        save(fig, target) if writer == "style" else study_plots._save(fig, tmp_path / "fig")
    plt.close("all")
    assert target.read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_a_run_failing_before_its_first_row_keeps_the_previous_file(tmp_path, suffix):
    """E.g. a second output that cannot be opened: the first one's target is not replaced by an empty table."""
    target = tmp_path / f"rows{suffix}"
    target.write_bytes(PREVIOUS)
    with pytest.raises(RuntimeError):
        with RowWriter(target, FIELDS):
            raise RuntimeError("the next output could not be opened")
    assert target.read_bytes() == PREVIOUS
    assert leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):       # one row done: kept for --resume
        with RowWriter(target, FIELDS) as w:
            w.write({"path": "a.png", "eps": 0.05, "kc": 1})
            raise KeyboardInterrupt
    assert [r["path"] for r in rows.read_rows(target)] == ["a.png"]

"""Disk full and failed writes: exit 3, a clear message, the old output intact; streamed outputs
checkpoint complete files."""
from __future__ import annotations

import errno

import pytest

from karl_cli.errors import EXIT_FAILED
from karl_cli.io.rows import RowWriter, read_rows

from faults import invoke, job, weights, wide_console  # noqa: F401 - fixtures


# --- disk full: exit 3, a clear message, the old file intact -------------------------------------------
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail", ["os.replace", "os.fsync"])
def test_disk_full_keeps_the_old_output(job, weights, monkeypatch, fail):
    out = job / "o.csv"
    out.write_text("old,output\n1,2\n")
    monkeypatch.setattr(fail, _enospc)
    res = invoke("complexity", job / "imgs", "--weights", weights, "--csv", out, "--workers", "0",
                 ok_codes=[EXIT_FAILED])
    text = res.output
    assert "disk full" in text and "o.csv" in text
    assert out.read_text() == "old,output\n1,2\n"
    assert sorted(p.name for p in job.iterdir() if p.name.endswith(".tmp")) == []


def test_disk_full_elsewhere(job, weights, monkeypatch):
    (job / "tok" / "index.csv").write_text("old index\n")
    (job / "res.csv").write_text("old results\n")
    monkeypatch.setattr("os.replace", _enospc)
    for args in (["encode", job / "imgs", "--weights", weights, "--out", job / "tok", "--workers", "0"],
                 ["correlate", "--ratings", job / "ratings.csv", "--weights", weights, "--no-cache", "--out",
                  job / "res.csv", "--bootstrap", "0", "--workers", "0"],
                 ["train", job / "imgs", "--out", job / "run", "--preset", "tiny", "--steps", "1",
                  "--batch-size", "2"]):
        res = invoke(*args, ok_codes=[EXIT_FAILED])
        assert "disk full" in res.output, res.output
    assert (job / "tok" / "index.csv").read_text() == "old index\n"
    assert (job / "res.csv").read_text() == "old results\n"
    assert not list(job.rglob("*.tmp"))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_row_writer_discards_after_a_failed_write(tmp_path, suffix):
    out = tmp_path / f"o{suffix}"
    out.write_text("old\n")

    class Full:
        def __getattr__(self, name):
            return _enospc

    with pytest.raises(OSError, match="disk full"):
        with RowWriter(out, ["path", "eps"], checkpoint_s=0) as w:
            w.write({"path": "a", "eps": 0.1})
            w._f, w._csv = Full(), Full()      # the disk fills up: every write fails from now on
            w.write({"path": "b", "eps": 0.1})
    assert out.read_text() != "old\n" and [r["path"] for r in read_rows(out)] == ["a"], "the last checkpoint"
    out.write_text("old\n")
    with pytest.raises(OSError, match="disk full"):
        with RowWriter(out, ["path", "eps"]) as w:
            w.write({"path": "a", "eps": 0.1})
            w._f, w._csv = Full(), Full()
            w.write({"path": "b", "eps": 0.1})
    assert out.read_text() == "old\n" and not list(tmp_path.glob("*.tmp"))


def test_row_writer_checkpoints_are_complete_files(tmp_path):
    for fmt in ("csv", "json"):
        out = tmp_path / f"o.{fmt}"
        with RowWriter(out, ["path", "eps"], checkpoint_s=0) as w:
            for i in range(3):
                w.write({"path": f"p{i}", "eps": 0.05})
                assert [r["path"] for r in read_rows(out)] == [f"p{k}" for k in range(i + 1)]
        assert w.checkpoints == 3 and len(read_rows(out)) == 3

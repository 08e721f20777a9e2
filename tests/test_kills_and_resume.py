"""Kills: the output stays parsable and --resume finishes without duplicates or gaps; damaged
token folders are refused."""
from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from karl_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from karl_cli.io.rows import read_rows

from conftest import make_images
from faults import invoke, weights, wide_console  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow   # runs karl in subprocesses and kills them mid-run


# --- kills: the output stays parsable, --resume finishes without duplicates or gaps --------------------
SLOW_KARL = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import karl_cli.scoring.complexity as c
    real = c.image_batches
    def slow(*a, **k):                      # a slow model, so that a kill lands mid-run
        for batch in real(*a, **k):
            time.sleep(0.3)
            yield batch
    c.image_batches = slow
    from karl_cli.cli import main
    sys.argv = ["karl"] + sys.argv[1:]
    main()
""")


def _start(tmp_path, args):
    script = tmp_path / "slow_karl.py"
    script.write_text(SLOW_KARL)
    env = dict(os.environ, KARL_CHECKPOINT_SECONDS="0.2", OMP_NUM_THREADS="1")
    # A job started in the background (``cmd &``) inherits SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: restore the default so the test sees what a terminal's Ctrl-C does.
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_rows(proc, out, at_least, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read().decode()
        if out.exists() and len(read_rows(out)) >= at_least:
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no partial output appeared")


def _keys(rows):
    return [(r["path"], r["eps"]) for r in rows]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_without_duplicates(tmp_path, weights, sig):
    n = 60
    imgs = make_images(tmp_path / "imgs", n)
    out = tmp_path / "out.csv"
    common = ["--weights", weights, "--csv", out, "--eps", "0.05", "--eps", "0.1", "--workers", "0",
              "--device", "cpu"]
    # A previous run over the first 10 images: its rows must survive everything below.
    invoke("complexity", *imgs[:10], *common, ok_codes=[EXIT_OK])
    previous = read_rows(out)
    assert len(previous) == 20
    proc = _start(tmp_path, ["complexity", tmp_path / "imgs", *common, "--batch-size", "2", "--resume"])
    _wait_for_rows(proc, out, at_least=40)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = err.decode(errors="replace")
    assert "Traceback" not in err
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == EXIT_INTERRUPTED and "interrupted" in err
    partial = read_rows(out)                          # parsable, whole rows only
    assert 40 <= len(partial) < 2 * n and len(set(_keys(partial))) == len(partial)
    assert partial[:20] == previous
    assert all(r["status"] == "ok" and r["kc"] is not None for r in partial)
    res = invoke("complexity", tmp_path / "imgs", *common, "--resume", ok_codes=[EXIT_OK])
    assert f"{len(partial)} kept from before" in res.output
    final = read_rows(out)
    assert len(final) == 2 * n and len(set(_keys(final))) == 2 * n
    assert {r["path"] for r in final} == {str(p) for p in imgs}
    assert final[: len(partial)] == partial


STALLED_KARL = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import karl_cli.scoring.complexity as c
    real = c.image_batches
    def stall_after_first(*a, **k):         # the model "works" on the second batch forever
        it = real(*a, **k)
        yield next(it)
        print("stalled", flush=True)
        time.sleep(3600)
    c.image_batches = stall_after_first
    from karl_cli.cli import main
    sys.argv = ["karl"] + sys.argv[1:]
    main()
""")


def test_sigkill_loses_at_most_the_last_checkpoint_interval(tmp_path, weights):
    """Issue 22.2: rows are published on a clock, not when the next row arrives. After the first batch
    the process stalls (a long second batch); within the checkpoint interval every finished row is on
    disk, a SIGKILL then loses none of them, and --resume finishes the job with each row once."""
    imgs = make_images(tmp_path / "imgs", 8)
    out = tmp_path / "out.csv"
    common = ["--weights", weights, "--csv", out, "--workers", "0", "--device", "cpu"]
    script = tmp_path / "stalled_karl.py"
    script.write_text(STALLED_KARL)
    every = 0.5
    env = dict(os.environ, KARL_CHECKPOINT_SECONDS=str(every), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), "complexity", str(tmp_path / "imgs"), *map(str, common),
                             "--batch-size", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"stalled", proc.stderr.read().decode()
        stalled = time.monotonic()
        rows = []
        while time.monotonic() - stalled < every + 20:      # generous: the machine may be busy
            rows = read_rows(out) if out.exists() else []
            if len(rows) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    rows = read_rows(out) if out.exists() else []
    assert len(rows) == 4, "every row of the finished batch is on disk before the next batch ends"
    assert all(r["status"] == "ok" for r in rows)
    res = invoke("complexity", tmp_path / "imgs", *common, "--resume", ok_codes=[EXIT_OK])
    assert "4 kept from before" in res.output
    final = read_rows(out)
    assert final[:4] == rows and sorted(r["path"] for r in final) == sorted(map(str, imgs))


def test_decode_refuses_damaged_token_folders(tmp_path, weights):
    make_images(tmp_path / "imgs", 4)
    tok = tmp_path / "tok"
    invoke("encode", tmp_path / "imgs", "--weights", weights, "--out", tok, "--workers", "0", ok_codes=[EXIT_OK])
    index = (tok / "index.csv").read_text()
    shard = (tok / "tokens-00000.safetensors").read_bytes()

    def with_row(**change):
        rows = list(csv.DictReader(io.StringIO(index)))
        rows[1].update(change)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().encode()

    damage = [("index.csv", with_row(shard="../../elsewhere.safetensors")), ("index.csv", with_row(offset="x")),
              ("index.csv", with_row(offset="999999")), ("index.csv", with_row(kc="-3")),
              ("index.csv", with_row(name="../../escaped.png")), ("index.csv", with_row(model_id="0123456789ab")),
              ("index.csv", b"\x00garbage\x00"), ("tokens-00000.safetensors", shard[: len(shard) // 2]),
              ("tokens-00000.safetensors", b"not safetensors")]
    for name, bad in damage:
        (tok / name).write_bytes(bad)
        res = invoke("decode", tok, "--weights", weights, "--out", tmp_path / "dec", ok_codes=[EXIT_USAGE])
        assert "error:" in res.output
        (tok / "index.csv").write_text(index)
        (tok / "tokens-00000.safetensors").write_bytes(shard)
    assert not list(tmp_path.rglob("escaped.png"))
    invoke("decode", tok, "--weights", weights, "--out", tmp_path / "dec", ok_codes=[EXIT_OK])

"""Scoring on Ray Data (karl_cli.distributed, `karl complexity --engine ray`) on a real local Ray: the
rows of the single process, error rows for bad images, and a worker killed mid-run (issue 29)."""
from __future__ import annotations

import io
import os
import signal
import sys
import tarfile
import threading
import time

import pytest
from typer.testing import CliRunner

from karl_cli.cli import app
from karl_cli.errors import EXIT_SOME_FAILED

from conftest import make_images

ray = pytest.importorskip("ray", reason="the Ray engine is the optional extra karl[ray]")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the session; karl's own start() then reuses it."""
    from karl_cli import distributed

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    distributed.start()
    yield distributed
    ray.shutdown()


@pytest.fixture
def inputs(tmp_path):
    """Images in a folder, a tar shard with a caption and a broken member, a truncated PNG, and a
    file list naming one missing file: every kind of input and of error row."""
    folder = tmp_path / "imgs"
    make_images(folder, 9)
    good = (folder / "img_000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    with tarfile.open(tmp_path / "shard.tar", "w") as tf:
        for name, data in (("k1.png", (folder / "img_001.png").read_bytes()), ("k1.txt", b"caption"),
                           ("k2.png", b"not a png")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "list.txt").write_text("imgs/img_002.png\nimgs/gone.png\n")
    os.rename(folder / "img_003.png", os.fsencode(folder) + b"/caf\xe9.png")    # a name that is not UTF-8
    return [str(folder), str(tmp_path / "shard.tar"), "--files-from", str(tmp_path / "list.txt")]


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_ray_engine_writes_the_rows_of_the_single_process(ray_local, tiny_weights, inputs, tmp_path):
    import pyarrow.parquet as pq

    common = [*inputs, "--weights", tiny_weights, "--eps", "0.05", "--eps", "0.1", "--batch-size", "4"]
    plain = _run(["complexity", *common, "--parquet", tmp_path / "plain.parquet", "--workers", "0"])
    on_ray = _run(["complexity", *common, "--parquet", tmp_path / "ray.parquet", "--csv", tmp_path / "ray.csv",
                   "--engine", "ray", "--workers", "2"])
    assert plain.exit_code == on_ray.exit_code == EXIT_SOME_FAILED, on_ray.output
    a, b = pq.read_table(tmp_path / "plain.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert a.num_rows == 2 * 13 and a.equals(b)      # same columns, types, order and values, bit for bit
    ok = [r for r in b.to_pylist() if r["status"] == "ok"]
    assert ok and all(r["l1"] is None and r["code_l1"] is not None for r in ok)   # the default check: the code's
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in b.to_pylist() if r["status"] == "error"}
    assert set(errors) == {"truncated.png", "k2.png", "gone.png"}


def test_a_ray_run_resumes_a_shard_into_the_whole(ray_local, tiny_weights, tmp_path):
    from karl_cli.io.rows import read_rows

    make_images(tmp_path / "imgs", 7)
    base = ["complexity", tmp_path / "imgs", "--weights", tiny_weights, "--batch-size", "2", "--engine", "ray"]
    assert _run([*base, "--csv", tmp_path / "r.csv", "--shard", "1/2"]).exit_code == 0
    assert len(read_rows(tmp_path / "r.csv")) == 3
    res = _run([*base, "--csv", tmp_path / "r.csv", "--resume"])
    assert res.exit_code == 0 and "wrote 4 new rows" in res.output, res.output
    assert _run(["complexity", tmp_path / "imgs", "--weights", tiny_weights, "--csv", tmp_path / "p.csv"]).exit_code == 0
    assert sorted(map(str, read_rows(tmp_path / "r.csv"))) == sorted(map(str, read_rows(tmp_path / "p.csv")))


def test_score_dataset_takes_rays_own_reader(ray_local, tiny_weights, tmp_path):
    from karl_cli.models.pretrained import load
    from karl_cli.scoring.complexity import score

    make_images(tmp_path / "imgs", 6)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    ds = ray.data.read_binary_files(str(tmp_path / "imgs"), include_paths=True)
    got = {os.path.basename(r["path"]): r for r in
           ray_local.score_dataset(ds, weights=tiny_weights, eps=[0.05], concurrency=1, batch_size=4).take_all()}
    want = {os.path.basename(r["path"]): r for r in score([tmp_path / "imgs"], load(tiny_weights), [0.05])}
    assert set(got) == set(want) and got["bad.png"]["status"] == "error" and "corrupt PNG" in got["bad.png"]["error"]
    assert all({k: v for k, v in got[n].items() if k != "path"} == {k: v for k, v in want[n].items() if k != "path"}
               for n in want)


def _descends_from_us(pid: int) -> bool:
    """Whether this test process is an ancestor of ``pid``: the local Ray started by ``ray_local`` runs
    its raylet, and so its workers, under it; another Ray on the same machine (a parallel test run)
    does not."""
    me = os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])   # the parent's PID
        except (OSError, ValueError, IndexError):
            return False
        if pid == me:
            return True
    return False


def _scorer_pids() -> set[int]:
    """Processes of this session's KCScorer actors (Ray titles them ray::MapWorker(MapBatches(KCScorer)))."""
    pids = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if b"KCScorer" in f.read() and _descends_from_us(int(d)):
                        pids.add(int(d))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor's process in /proc")
def test_a_worker_killed_mid_run_is_restarted_and_the_rows_are_complete(ray_local, tiny_weights, tmp_path):
    from karl_cli.models.pretrained import load
    from karl_cli.scoring.complexity import score
    from karl_cli.scoring.measure import collect_inputs

    make_images(tmp_path / "imgs", 120, size=24)
    found = collect_inputs([tmp_path / "imgs"])
    seen: set[int] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(_scorer_pids())
            time.sleep(0.02)

    before = _scorer_pids()       # actors of earlier tests still shutting down
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rows, killed = [], None
    try:
        for row in ray_local.score(found, tiny_weights, [0.05], batch_size=2, workers=1):
            rows.append(row)
            if killed is None:
                (killed,) = _scorer_pids() - before      # the one actor, busy with the next batches
                os.kill(killed, signal.SIGKILL)
                killed_after = len(rows)
    finally:
        stop.set()
        watcher.join()
    assert killed_after < len(found)
    assert seen - before - {killed}, "Ray started no new actor after the kill"
    want = list(score(found, load(tiny_weights), [0.05], batch_size=2))
    assert rows == want

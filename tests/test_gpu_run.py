"""benchmarks/gpu/run.sh --smoke: the one-shot GPU run's every step on the CPU with pca-tiny and a
generated pack, so the script cannot rot between GPU runs; and the cap rehearsal: a run killed
right after training still returns the model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from karl_cli.models.pretrained import load_pretrained

REPO = Path(__file__).resolve().parents[1]
RUN_SH = REPO / "benchmarks" / "gpu" / "run.sh"


def _env(tmp_path: Path, out: Path) -> dict[str, str]:
    return {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}


@pytest.mark.slow
@pytest.mark.smoke
def test_gpu_run_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(RUN_SH), "--smoke", "--budget", "240"], cwd=REPO, env=_env(tmp_path, out),
                          capture_output=True, text=True, timeout=300)   # the script's own budget is 240 s
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"run.log", "summary.md", "quality.json", "throughput.json", "metrics.jsonl",
            "karl-pca-tiny/model.safetensors", "karl-pca-tiny/config.json", "karl-pca-tiny/model_card.md"} <= names
    quality = json.loads((out / "quality.json").read_text())
    assert [r["eps"] for r in quality["single_vs_oracle"]] == [0.05, 0.09]
    assert quality["savoias"] is not None                     # ρ against the pack's ratings CSV
    tp = json.loads((out / "throughput.json").read_text())
    assert set(tp["learned"]["throughput"]["methods"]) == {"single", "decode_only"}   # nothing else
    # The shipped model's profile: at the machine's thread count, then at one (nproc: the usable cores).
    cores = len(os.sched_getaffinity(0))
    prof = tp["wavelet"]["profile"]
    assert tp["wavelet"]["complete"] and [e["threads"]["torch"] for e in prof["entries"]] == \
        ([cores, 1] if cores > 1 else [1])
    assert {"kc_only", "single"} <= set(prof["projection"]["modes"]) and prof["projection"]["cores"] == cores
    assert "projection, single on" in (out / "summary.md").read_text()
    model = load_pretrained(out / "karl-pca-tiny")              # fp16 on disk, loads into fp32
    assert model.config.code == "pca" and not model.config.halt_reads_code
    card = (out / "karl-pca-tiny" / "model_card.md").read_text()
    assert "not measured" not in card and "images/s" in card
    log = (out / "run.log").read_text()
    assert "export weights: exit 0" in log and "done: 0 failed step(s)" in log
    # Every step's limit came from the time left: none may run past the global deadline.
    starts = [(int(line.split("[")[1].split(" s left]")[0]), int(line.split("(limit ")[1].split(" s)")[0]))
              for line in log.splitlines() if "(limit " in line]
    assert len(starts) >= 8 and all(limit <= left for left, limit in starts)


@pytest.mark.smoke
def test_gpu_run_killed_at_the_cap_after_training_still_returns_the_model(tmp_path):
    """The rehearsal of a run cut at the machine's cap: killed (SIGKILL, the whole process group) as
    soon as training has stopped and the export step has run, before any evaluation."""
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(RUN_SH), "--smoke", "--budget", "240"], cwd=REPO,
                            env=_env(tmp_path, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = out / "run.log"
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 240:
            if log.is_file() and "export weights: exit" in log.read_text():
                break
            assert proc.poll() is None, "run.sh ended before exporting"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    # cut before the end (run.sh's last line, not the "done:" a training step may print)
    assert "export weights: exit 0" in text and "failed step(s); files in" not in text
    assert (out / "metrics.jsonl").is_file()
    model = load_pretrained(out / "karl-pca-tiny")
    assert model.config.code == "pca"
    assert "not measured" in (out / "karl-pca-tiny" / "model_card.md").read_text()

"""benchmarks/gpu/run.sh --smoke: the one-shot GPU run's every step, on the CPU with learned-tiny
and a generated pack, so the script cannot rot between GPU runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from karl_cli.models.pretrained import load_pretrained

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.smoke
def test_gpu_run_smoke_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "run.sh"), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)   # a hang guard, not a timing
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"run.log", "summary.md", "quality.json", "throughput.json", "metrics.jsonl",
            "karl-learned-tiny/model.safetensors", "karl-learned-tiny/config.json"} <= names
    quality = json.loads((out / "quality.json").read_text())
    assert [r["eps"] for r in quality["single_vs_oracle"]] == [0.03, 0.05, 0.09]
    assert quality["savoias"] is not None                     # ρ against the pack's ratings CSV
    tp = json.loads((out / "throughput.json").read_text())
    assert tp["learned"] and tp["wavelet"]
    model = load_pretrained(out / "karl-learned-tiny")          # fp16 on disk, loads into fp32
    assert model.config.code == "learned" and next(model.parameters()).dtype.is_floating_point
    log = (out / "run.log").read_text()
    assert "pytest -m cuda: exit 0" in log and "done: 0 failed step(s)" in log

"""Two CPU processes under torchrun (gloo) must end a run with identical weights."""
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from safetensors.torch import save_file
    from karl_cli import preset
    from karl_cli.training.trainer import TrainConfig, train
    torch.set_num_threads(1)
    data, out = sys.argv[1], sys.argv[2]
    res = train([data], out, preset("tiny"), TrainConfig(steps=6, batch_size=4, warmup_steps=2,
                checkpoint_every=100, seed=0), device="cpu")
    import os
    rank = os.environ["RANK"]
    save_file({k: v.contiguous() for k, v in res.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
""")


@pytest.mark.slow
def test_two_gloo_ranks_end_identical(image_folder, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", str(script), str(image_folder), str(out)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # only rank 0 logs
    assert '"step": 6' in lines[-1]

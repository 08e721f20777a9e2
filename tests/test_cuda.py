"""CUDA paths (``pytest -m cuda``; skipped without a GPU). benchmarks/gpu/run.sh runs them first on
the GPU machine: bf16 autocast, TF32, fused AdamW, channels-last, pinned memory, torch.compile, EMA
on the device across a resume, and CPU/GPU agreement of a single pass and of the code check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from karl_cli import KARL, preset
from karl_cli.io.synthetic import make_family_image
from karl_cli.models.pretrained import load_pretrained
from karl_cli.runtime import prepare_model
from karl_cli.training.trainer import TrainConfig, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _data(tmp_path, n=32):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        fam = ("constant", "noise", "gradient", "few shapes")[i % 4]
        Image.fromarray(make_family_image(fam, 48, rng)).save(d / f"{i:02d}.png")
    return [str(d)]


def _tc(**kw):
    return TrainConfig(**{**dict(steps=8, batch_size=8, lr=2e-3, warmup_steps=2, checkpoint_every=100,
                                 workers=2), **kw})


@pytest.mark.parametrize("name", ["learned-tiny", "tiny"])
def test_trains_on_cuda_in_bf16_with_fused_adamw(tmp_path, name, monkeypatch):
    seen = {}
    real = torch.optim.AdamW

    def spy(*a, **kw):
        seen["fused"] = kw.get("fused")
        return real(*a, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    res = train(_data(tmp_path), tmp_path / "run", preset(name), _tc(), device="cuda")
    assert seen["fused"] is True
    assert torch.backends.cuda.matmul.allow_tf32
    assert res.step == 8 and next(res.model.parameters()).is_cuda
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in rows)
    model = load_pretrained(tmp_path / "run")          # the EMA weights load on the CPU
    assert not next(model.parameters()).is_cuda


def test_compiled_training_matches_the_eager_loss_scale(tmp_path):
    data = _data(tmp_path)
    eager = train(data, tmp_path / "e", preset("learned-tiny"), _tc(steps=2), device="cuda")
    compiled = train(data, tmp_path / "c", preset("learned-tiny"), _tc(steps=2, compile=True), device="cuda")
    rows = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(line) for line in (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()]
    assert compiled.step == eager.step == 2
    # Same data, same init: compiled kernels may round differently in bf16, not compute something else.
    assert rows[0]["loss"] == pytest.approx(first[0]["loss"], rel=0.05)


def test_time_budget_stop_and_resume_on_cuda_keep_ema_on_the_device(tmp_path):
    data = _data(tmp_path)
    cut = train(data, tmp_path / "r", preset("learned-tiny"), _tc(max_minutes=1e-9), device="cuda")
    assert cut.stopped == "time budget" and cut.step == 1
    resumed = train(data, tmp_path / "r", resume=True, device="cuda")
    assert resumed.step == 8


@pytest.mark.parametrize("name", ["learned-tiny", "tiny"])
def test_single_pass_agrees_between_cpu_and_cuda(name):
    torch.manual_seed(0)
    model = KARL(preset(name)).eval()
    rng = np.random.default_rng(0)
    x = torch.stack([torch.from_numpy(make_family_image(f, model.config.resolution, rng)).permute(2, 0, 1)
                     for f in ("constant", "gradient", "few shapes", "noise")]).float() / 255
    cpu = model.encode(x, 0.05)
    gpu_model = prepare_model(KARL(preset(name)).eval(), "cuda")
    gpu_model.load_state_dict(model.state_dict())
    gpu = gpu_model.encode(x.cuda(), 0.05)
    torch.testing.assert_close(gpu.p_halt.cpu(), cpu.p_halt, atol=1e-2, rtol=0)   # TF32 matmuls
    rec_cpu, rec_gpu = model.decode(cpu), gpu_model.decode(gpu).cpu()
    assert (rec_cpu - rec_gpu).abs().mean() < 5e-3


def test_shipped_default_model_runs_on_cuda():
    model = prepare_model(load_pretrained(Path(__file__).resolve().parents[1] / "weights" / "karl-small"), "cuda")
    x = torch.rand(4, 3, 64, 64, device="cuda")
    enc = model.encode(x, 0.03)
    assert enc.kc.shape == (4,) and bool((enc.kc >= 1).all())


def test_code_check_on_cuda_is_the_cpus_synthesis_of_the_same_tokens(device="cuda"):
    from karl_cli.models.tokenizer import Encoding
    from karl_cli.scoring.measure import measure

    weights = Path(__file__).resolve().parents[1] / "weights" / "karl-small"
    model = prepare_model(load_pretrained(weights), device)
    rng = np.random.default_rng(0)
    x = torch.stack([torch.from_numpy(make_family_image(f, 64, rng)).permute(2, 0, 1)
                     for f in ("constant", "gradient", "few shapes", "many shapes")])
    m = measure(model, x, [0.05], check="code", keep_encodings=True)
    assert m.check == "code" and (m.decoder_runs == 0).all() and m.code_l1.isfinite().all()
    enc = m.encodings[0]
    # A fresh CPU model replays every position from the tokens: no memo, no GPU.
    cpu_enc = Encoding(enc.latents.cpu(), enc.p_halt.cpu(), enc.keep.cpu(), enc.eps)
    rec = load_pretrained(weights).code_reconstruction(cpu_enc)
    torch.testing.assert_close(m.code_l1[:, 0], (rec - x.float() / 255).abs().mean((1, 2, 3)), atol=1e-5, rtol=0)

"""The measuring core on in-memory batches: what a Ray Data scorer or a metric object calls."""
from __future__ import annotations

import pytest
import torch

from karl_cli import preset
from karl_cli.errors import UsageError
from karl_cli.models.alit import ALIT
from karl_cli.scoring.measure import measure, measure_all
from karl_cli.scoring.oracle import sweep

from conftest import as_if_trained
from karl_helpers import spread_halting


@pytest.fixture
def model(tiny_model):
    return spread_halting(tiny_model)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)


def test_uint8_and_float_batches_measure_alike(model, batch):
    a = measure(model, batch, [0.05, 0.2])
    b = measure(model, batch.float() / 255, [0.05, 0.2])
    assert a.kc.shape == a.l1.shape == (5, 2) and a.kc.dtype == torch.long
    assert torch.equal(a.kc, b.kc) and torch.equal(a.l1, b.l1)
    assert (a.encoder_runs == 1).all() and (a.decoder_runs == 1).all()


def test_single_pass_is_the_models_own_encoding(model, batch):
    m = measure(model, batch, [0.1], keep_recon=True, keep_halting=True, keep_encodings=True)
    with torch.inference_mode():
        enc = model.encode(batch.float() / 255, 0.1)
        rec = model.decode(enc)
    assert torch.equal(m.kc[:, 0], enc.kc) and torch.equal(m.encodings[0].keep, enc.keep)
    assert torch.allclose(m.recon[:, 0], rec) and torch.allclose(m.p_halt[:, 0], enc.p_halt)
    assert torch.allclose(m.l1[:, 0], (rec - batch.float() / 255).abs().mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("method", ["search", "prefix"])
def test_searches_are_the_oracle_sweep(model, batch, method):
    m = measure(model, batch, [0.05, 0.3], method)
    with torch.inference_mode():
        r = sweep(model, batch.float() / 255, [0.05, 0.3], method)
    assert torch.equal(m.kc, r.kc) and torch.equal(m.encoder_runs, r.encoder_runs)
    assert torch.equal(m.kc_soft, m.kc.float())


def test_need_leaves_pairs_out_without_work(model, batch):
    need = torch.tensor([[True, False], [False, False], [True, True], [False, True], [True, True]])
    m = measure(model, batch, [0.05, 0.2], need=need)
    full = measure(model, batch, [0.05, 0.2])
    assert torch.equal(m.kc[need], full.kc[need])
    assert m.l1[~need].isnan().all() and (m.encoder_runs[~need] == 0).all()


def test_measure_all_batches_an_array_of_any_length(model, batch):
    images = batch.permute(0, 2, 3, 1).numpy()          # (N, R, R, 3) as the loaders give them
    seen = []
    whole = measure_all(model, images, [0.1], batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert torch.equal(whole.kc, measure(model, batch, [0.1]).kc)
    assert seen == [(2, 5), (4, 5), (5, 5)]


def test_what_the_model_cannot_honour_is_refused(model, batch):
    torch.manual_seed(0)
    alit = as_if_trained(ALIT(preset("tiny", arch="alit"))).eval()
    with pytest.raises(UsageError, match="outside"):
        measure(model, batch, [0.9])
    with pytest.raises(UsageError, match="no halting head"):
        measure(alit, batch, [0.1], "single")
    with pytest.raises(UsageError, match="l1"):
        measure(model, batch, [0.1], "search", l1=False)

"""The measuring core on in-memory batches: what a Ray Data scorer or a metric object calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from karl_cli import preset
from karl_cli.errors import UsageError
from karl_cli.models.alit import ALIT
from karl_cli.models.karl import KARL
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
    a = measure(model, batch, [0.05, 0.2], check="decoder")
    b = measure(model, batch.float() / 255, [0.05, 0.2], check="decoder")
    assert a.kc.shape == a.l1.shape == a.code_l1.shape == (5, 2) and a.kc.dtype == torch.long
    assert torch.equal(a.kc, b.kc) and torch.equal(a.l1, b.l1) and torch.equal(a.code_l1, b.code_l1)
    assert (a.encoder_runs == 1).all() and (a.decoder_runs == 1).all()


def _code_l1_by_hand(model, images, kc):
    """The code's reconstruction of each image's first kc tokens, from fresh codes: the code
    forgets what it made, so synthesis replays every position from the kept tokens alone."""
    x = images.float() / 255
    with torch.inference_mode():
        model.code._memo = None
        codes = model.code.analyse(x)
        out = []
        for i, k in enumerate(kc.tolist()):
            model.code._memo = None
            rec = model.code.synthesise(codes[i:i + 1, :k]).clamp(0, 1)
            out.append(float((rec - x[i:i + 1]).abs().mean()))
    return torch.tensor(out)


def test_code_check_is_the_codes_reconstruction_and_never_decodes(model, batch, monkeypatch):
    def no_decoder(*a, **k):
        raise AssertionError("the code check ran the decoder")

    monkeypatch.setattr(model, "decode_tokens", no_decoder)
    m = measure(model, batch, [0.05, 0.2])                   # auto: the wavelet KARL's tokens are its code
    assert m.check == "code" and (m.decoder_runs == 0).all() and (m.encoder_runs == 1).all()
    assert m.l1.isnan().all() and m.code_l1.isfinite().all()
    for j in range(2):
        assert torch.allclose(m.code_l1[:, j], _code_l1_by_hand(model, batch, m.kc[:, j]), atol=1e-6)
    assert torch.equal(measure(model, batch, [0.05, 0.2], check="code").code_l1, m.code_l1)
    assert torch.equal(m.met, m.code_l1 <= torch.tensor([[0.05, 0.2]]))


def test_decoder_check_fills_l1_and_code_l1(model, batch):
    m = measure(model, batch, [0.05, 0.2], check="decoder")
    code = measure(model, batch, [0.05, 0.2], check="code")
    assert m.check == "decoder" and (m.decoder_runs == 1).all()
    assert m.l1.isfinite().all() and torch.equal(m.code_l1, code.code_l1) and torch.equal(m.kc, code.kc)
    assert not torch.equal(m.l1, m.code_l1), "the decoder refines the code's image: another L1"
    # met reads the decoder's l1 where it ran.
    assert torch.equal(m.met, m.l1 <= torch.tensor([[0.05, 0.2]]))
    none = measure(model, batch, [0.05, 0.2], check="none")
    assert none.l1.isnan().all() and none.code_l1.isnan().all() and (none.decoder_runs == 0).all()
    assert not none.met.any() and torch.equal(none.kc, m.kc)
    old = measure(model, batch, [0.05, 0.2], l1=False)          # karl ≤ 0.1's way of saying none
    assert old.check == "none" and old.code_l1.isnan().all()
    # Reconstructions are the decoder's, so keeping them checks with the decoder.
    kept = measure(model, batch, [0.05], keep_recon=True)
    assert kept.check == "decoder" and torch.allclose(kept.l1[:, 0], m.l1[:, 0])


def _other_models():
    torch.manual_seed(0)
    alit = as_if_trained(ALIT(preset("tiny", arch="alit"))).eval()
    learned = as_if_trained(KARL(preset("tiny", code="learned"))).eval()
    pca = as_if_trained(KARL(preset("tiny", code="pca"))).eval()
    return alit, learned, pca


def test_auto_checks_with_the_decoder_where_tokens_are_not_the_code(batch):
    alit, learned, pca = _other_models()
    for m in (learned, pca):
        r = measure(m, batch, [0.1])
        assert r.check == "decoder" and r.l1.isfinite().all() and r.code_l1.isnan().all()
        assert (r.decoder_runs == 1).all()
        with pytest.raises(UsageError, match="--check code needs"):
            measure(m, batch, [0.1], check="code")
        with pytest.raises(ValueError, match="no code reconstruction"):
            m.code_reconstruction(m.encode(batch.float() / 255, 0.1))
    r = measure(alit, batch, [0.1])
    assert r.check == "decoder" and r.l1.isfinite().all() and r.code_l1.isnan().all()
    with pytest.raises(UsageError, match="--check code works only with --method single"):
        measure(alit, batch, [0.1], check="code")


@pytest.mark.parametrize("method", ["search", "prefix"])
def test_searches_check_with_the_decoder_they_search_with(model, batch, method):
    r = measure(model, batch, [0.1], method)
    assert r.check == "decoder" and r.l1.isfinite().all() and r.code_l1.isnan().all()
    for check in ("code", "none"):
        with pytest.raises(UsageError, match=f"--check {check} works only with --method single"):
            measure(model, batch, [0.1], method, check=check)


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
    assert m.l1[~need].isnan().all() and m.code_l1[~need].isnan().all() and (m.encoder_runs[~need] == 0).all()
    assert m.code_l1[need].isfinite().all() and torch.equal(m.code_l1[need], full.code_l1[need])


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
    with pytest.raises(UsageError, match="unknown check 'fast'"):
        measure(model, batch, [0.1], check="fast")
    with pytest.raises(UsageError, match="cannot go with --check decoder"):
        measure(model, batch, [0.1], check="decoder", l1=False)


# --- the loader thread of workers=0 ------------------------------------------------------------------
def test_prefetched_keeps_order_and_raises_where_the_source_failed():
    from karl_cli.scoring.measure import prefetched

    def source():
        yield from range(5)
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(source(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_prefetched_stops_its_thread_when_the_consumer_stops_early():
    import threading
    import time

    from karl_cli.scoring.measure import prefetched

    made = []

    def source():
        for i in range(10_000):
            made.append(i)
            yield i

    gen = prefetched(source(), depth=2)
    assert next(gen) == 0
    gen.close()
    deadline = time.monotonic() + 5
    while any(t.name == "karl-image-loader" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "karl-image-loader" for t in threading.enumerate())
    assert len(made) < 10                 # the thread ran ahead by the queue's depth, not to the end


def test_workers_0_batches_equal_the_synchronous_loader(tmp_path):
    from PIL import Image
    from torch.utils.data import DataLoader

    from karl_cli.scoring.measure import ImageDataset, collate_images, collect_inputs, image_batches

    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    items = collect_inputs([tmp_path])
    got = list(image_batches(items, 16, batch_size=4, workers=0))
    want = list(DataLoader(ImageDataset(items, 16), batch_size=4, collate_fn=collate_images))
    assert [b["paths"] for b in got] == [b["paths"] for b in want]
    assert [b["errors"] for b in got] == [b["errors"] for b in want]
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(got, want))

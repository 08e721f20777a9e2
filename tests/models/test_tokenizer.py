import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from karl_cli import ALIT, EPS_BINS, KARL, KARLConfig, WeightsError, build_model, eps_to_bin, load_pretrained, preset
from karl_cli.models.config import MODELS, eps_position
from karl_cli.models.layers import at_position
from karl_cli.models.tokenizer import Encoding


def test_eps_rounds_up_to_bins():
    assert eps_to_bin(0.05) == EPS_BINS.index(0.05)
    assert eps_to_bin(0.051) == EPS_BINS.index(0.06)
    assert eps_to_bin(0.001) == 0
    assert eps_to_bin(0.08) == EPS_BINS.index(0.09)
    assert eps_to_bin(5.0) == len(EPS_BINS) - 1
    t = torch.tensor([0.001, 0.05, 0.051, 0.08, 5.0])
    assert eps_to_bin(t).tolist() == [eps_to_bin(float(v)) for v in t]
    for bad in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            eps_to_bin(bad)


def test_config_validation_and_roundtrip():
    cfg = preset("tiny")
    assert KARLConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="multiple of token_step"):
        dataclasses.replace(cfg, max_tokens=15)
    with pytest.raises(ValueError, match="unknown config keys"):
        KARLConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


@pytest.mark.parametrize("code", ["wavelet", "learned"])
def test_shapes_and_halting(code):
    torch.manual_seed(0)
    cfg = preset("tiny", code=code)
    m = KARL(cfg).eval()
    x = torch.rand(3, 3, cfg.resolution, cfg.resolution)
    lat, p = m.encode_tokens(x, torch.zeros(3, dtype=torch.long), 8)
    assert lat.shape == (3, 8, cfg.latent_dim) and p.shape == (3, 8)
    assert bool(((p >= 0) & (p <= 1)).all())
    out = m(x, torch.zeros(3, dtype=torch.long), halting=True)
    assert out.recon.shape == x.shape
    assert torch.equal(out.keep, m.kept(out.p_halt))
    enc = m.encode(x, 0.05)
    assert enc.kc.tolist() == enc.keep.sum(1).tolist()
    assert torch.allclose(enc.kc_soft, (1 - enc.p_halt).sum(1))
    rec = m.decode(enc)
    assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1


def test_prefix_of_full_encoding_equals_short_encoding(tiny_model):
    # Causal latents: encoding at budget T is the first T tokens of encoding at T_max.
    x = torch.rand(2, 3, 32, 32)
    idx = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        full, p_full = tiny_model.encode_tokens(x, idx, 16)
        short, p_short = tiny_model.encode_tokens(x, idx, 8)
    assert torch.allclose(full[:, :8], short, atol=1e-5)
    assert torch.allclose(p_full[:, :8], p_short, atol=1e-5)


@pytest.mark.parametrize("code", ["wavelet", "learned"])
def test_halted_tokens_have_no_effect(code, tiny_model):
    # The wavelet code is ordered (positions follow earlier values), so its model halts a suffix
    # (``kept``); learned tokens may halt anywhere.
    torch.manual_seed(0)
    model = tiny_model if code == "wavelet" else KARL(preset("tiny", code="learned")).eval()
    x = torch.rand(2, 3, 32, 32)
    enc = model.encode(x, 0.05)
    keep = torch.zeros_like(enc.keep)
    keep[0, :5] = True
    keep[1, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] if code == "wavelet" else [0, 3, 7, 9]] = True
    a = Encoding(enc.latents.clone(), enc.p_halt, keep, 0.05)
    noisy = enc.latents.clone()
    noisy[~keep] = torch.randn(int((~keep).sum()), noisy.shape[-1]) * 100
    b = Encoding(noisy, enc.p_halt, keep, 0.05)
    assert torch.allclose(model.decode(a), model.decode(b), atol=1e-6)
    # ...while changing a kept token does change the output.
    changed = enc.latents.clone()
    changed[0, 0] += 10
    assert not torch.allclose(model.decode(a), model.decode(Encoding(changed, enc.p_halt, keep, 0.05)))


def test_dropping_equals_decoding_only_the_kept_tokens(tiny_model):
    # Dropped tokens cost no compute: decoding a prefix mask equals decoding the prefix alone.
    x = torch.rand(1, 3, 32, 32)
    enc = tiny_model.encode(x, 0.05)
    keep = torch.zeros_like(enc.keep)
    keep[:, :6] = True
    with torch.no_grad():
        masked = tiny_model.decode_tokens(enc.latents, keep)
        prefix = tiny_model.decode_tokens(enc.latents[:, :6])
    assert torch.allclose(masked, prefix, atol=1e-5)


def test_one_token_budget_decodes_the_rest_of_the_first_step_as_zeros(tiny_model):
    # The decoder was trained on whole steps: one token enters with three zero codes beside it.
    assert tiny_model.config.budgets[:2] == [1, 4]
    x = torch.rand(2, 3, 32, 32)
    lat = tiny_model.encode(x, 0.05).latents
    zero_filled = torch.cat([lat[:, :1], torch.zeros_like(lat[:, 1:4])], dim=1)
    keep = torch.zeros(lat.shape[:2], dtype=torch.bool)
    keep[:, 0] = True
    with torch.no_grad():
        want = tiny_model.decode_tokens(zero_filled)
        assert torch.allclose(tiny_model.decode_tokens(lat[:, :1]), want, atol=1e-5)
        assert torch.allclose(tiny_model.decode_tokens(lat, keep), want, atol=1e-5)
        assert not torch.allclose(tiny_model.decode_tokens(lat[:, :4]), want, atol=1e-3)


def test_num_tokens_out_of_range(tiny_model):
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="num_tokens"):
        tiny_model.encode_tokens(x, torch.zeros(1, dtype=torch.long), 17)


def test_halting_head_reads_eps_directly(tiny_model):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tiny_model.halting_head.eps_bias.weight[3].fill_(5.0)
        _, p_a = tiny_model.encode_tokens(x, torch.full((2,), 0), 16)
        _, p_b = tiny_model.encode_tokens(x, torch.full((2,), 3), 16)
    assert not torch.allclose(p_a, p_b)


def test_four_models_and_nothing_else():
    assert set(MODELS) == {("karl", "wavelet"), ("karl", "learned"), ("karl", "pca"), ("alit", "dct")}
    assert isinstance(build_model(preset("tiny")), KARL) and isinstance(build_model(preset("tiny", arch="alit")), ALIT)
    for arch, code in (("karl", "dct"), ("alit", "wavelet"), ("alit", "learned"), ("alit", "pca")):
        with pytest.raises(ValueError, match=f"no model has arch '{arch}' with code '{code}'"):
            preset("tiny", arch=arch, code=code)


def test_each_model_names_only_the_fields_it_uses():
    assert "direct_dim" not in preset("tiny").to_dict() and "direct_dim" in preset("tiny", code="learned").to_dict()
    alit = preset("tiny", arch="alit").to_dict()
    assert not {"halt_threshold", "halt_hidden", "halt_grad_scale", "direct_dim"} & set(alit)
    for cfg in (preset("tiny"), preset("tiny", code="learned"), preset("tiny", arch="alit")):
        assert KARLConfig.from_dict(cfg.to_dict()) == cfg
    assert KARLConfig() == preset("small")   # defaults are the shipped model


@pytest.mark.parametrize("field,value", [("spectral", False), ("halt_l1", False), ("base", "patch"),
                                         ("one_token_budget", False), ("eps_bins", [0.01, 0.05]),
                                         ("direct_dim", 8)])
def test_a_retired_field_in_use_is_refused_by_name(field, value, tmp_path):
    raw = {**preset("tiny").to_dict(), field: value}
    with pytest.raises(ValueError, match=f"'{field}'") as e:
        KARLConfig.from_dict(raw)
    assert "\n" not in str(e.value)
    # ...and a weights folder holding it gets the same one line from the loader.
    KARL(preset("tiny")).save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match=f"'{field}'"):
        load_pretrained(tmp_path / "w")


def test_retired_fields_holding_what_the_model_does_still_load(tmp_path):
    # A karl 0.1 config.json of the shipped models: the retired fields state what the model does anyway.
    old = {**preset("tiny").to_dict(), "spectral": True, "halt_l1": True, "base": "conv", "direct_dim": 0,
           "one_token_budget": True, "eps_bins": list(EPS_BINS)}
    assert KARLConfig.from_dict(old) == preset("tiny")
    learned = {**preset("tiny", code="learned").to_dict(), "code": "dct", "spectral": False, "halt_l1": False,
               "one_token_budget": False}
    assert KARLConfig.from_dict(learned) == preset("tiny", code="learned")


def test_eps_between_bins_is_interpolated_on_the_log_scale():
    assert eps_position(0.03) == EPS_BINS.index(0.03) and eps_position(0.38) == len(EPS_BINS) - 1
    i = EPS_BINS.index(0.03)
    assert eps_position(math.sqrt(0.03 * 0.04)) == pytest.approx(i + 0.5)
    assert i < eps_position(0.031) < eps_position(0.039) < i + 1
    for bad in (0.004, 0.39, 1.0, float("nan")):
        with pytest.raises(ValueError, match="0.005 to 0.38"):
            eps_position(bad)
    table = torch.arange(12.0).view(4, 3)
    assert torch.equal(at_position(table, torch.tensor([1.0, 2.0])), table[[1, 2]])   # on a bin: exact
    assert torch.allclose(at_position(table, torch.tensor([1.25])), 0.75 * table[1] + 0.25 * table[2])


def test_single_pass_honours_eps_between_bins(tiny_model):
    # Conditioned on ε itself: the halting head's relative features see 0.031, not the bin 0.04.
    x = torch.rand(3, 3, 32, 32)
    at_bin, above, off = (tiny_model.encode(x, e) for e in (0.03, 0.04, 0.031))
    assert not torch.equal(off.p_halt, above.p_halt) and not torch.equal(off.p_halt, at_bin.p_halt)
    # Between the neighbours' p_halt, token by token (interpolated embeddings, ε-relative errors).
    lo = torch.minimum(at_bin.p_halt, above.p_halt) - 1e-5
    hi = torch.maximum(at_bin.p_halt, above.p_halt) + 1e-5
    assert bool(((off.p_halt >= lo) & (off.p_halt <= hi)).float().mean() > 0.9)
    with pytest.raises(ValueError, match="outside what a single pass can honour"):
        tiny_model.encode(x, 0.5)


def test_decoding_in_groups_of_similar_kept_counts_changes_nothing(tiny_model):
    from karl_cli.models import tokenizer

    torch.manual_seed(0)
    x = torch.rand(2 * tokenizer.CPU_DECODE_GROUP + 3, 3, 32, 32)
    x[::3] = 0.5                                                  # flat images keep fewer tokens
    enc = tiny_model.encode(x, 0.05)
    counts = torch.tensor([1, 4, 8, 12, 16, 5])[torch.arange(x.shape[0]) % 6]   # kept prefixes of all lengths
    keep = torch.arange(16).unsqueeze(0) < counts.unsqueeze(1)
    enc.keep = keep
    whole = tiny_model.decode_tokens(enc.latents, keep).clamp(0, 1)
    grouped = tiny_model.decode(enc)
    assert torch.allclose(grouped, whole, atol=1e-5)
    one = tiny_model.decode(type(enc)(enc.latents[5:6], enc.p_halt[5:6], keep[5:6], enc.eps))
    assert torch.allclose(one[0], whole[5], atol=1e-5)


def test_encode_refuses_pixels_it_would_misread(tiny_model):
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="divide by 255"):
        tiny_model.encode((x * 255).to(torch.uint8), 0.05)
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        tiny_model.encode(torch.rand(2, 3, 64, 64), 0.05)
    alit = ALIT(preset("tiny", arch="alit")).eval()
    with pytest.raises(ValueError, match="float tensor"):
        alit.encode((x * 255).to(torch.uint8), 0.05)
    assert tiny_model.encode(x, 0.05).kc.shape == (2,)


@pytest.mark.parametrize("code", ["wavelet", "learned"])
def test_single_pass_kc_never_rises_as_eps_loosens(code, monkeypatch):
    """Issue 28.12: KC(ε) is a rate-distortion curve: for any two ε (on the trained bins or between
    them) the looser one keeps no more tokens, and p_halt never falls, by the halting rule's
    construction; a coded model's halting pass is shared by every ε of the same images."""
    torch.manual_seed(1)
    model = KARL(preset("tiny" if code == "wavelet" else "learned-tiny")).eval()
    head = model.halting_head
    with torch.no_grad():   # a head that halts more as ε loosens, with bins that disagree (noise)
        n = len(EPS_BINS)
        wiggle = torch.linspace(-3.0, 3.0, n) + 2.0 * (-1.0) ** torch.arange(n)
        head.eps_bias.weight.copy_(wiggle[:, None] * head.fc2.weight.sign())
        head.fc2.bias.fill_(math.log(model.config.halt_threshold / (1 - model.config.halt_threshold)))
        if code == "learned":   # its features are encoded at each ε: the guarantee is the head's, so
            model.eps_embed.weight.zero_()   # take the encoder's ε token out to test it
    x = torch.rand(6, 3, model.config.resolution, model.config.resolution)
    rng = np.random.default_rng(0)
    eps = sorted({*EPS_BINS, *np.exp(rng.uniform(np.log(0.005), np.log(0.38), 40)).tolist()})
    calls = []
    real = model._encode
    monkeypatch.setattr(model, "_encode", lambda *a: calls.append(1) or real(*a))
    enc = [model.encode(x, e) for e in eps]
    assert len(calls) == (1 if code == "wavelet" else len(eps))   # learned: encoded at each ε
    kc = torch.stack([e.kc for e in enc], 1)
    p = torch.stack([e.p_halt for e in enc], 1)
    assert (kc[:, 1:] <= kc[:, :-1]).all() and (p[:, 1:] >= p[:, :-1] - 1e-6).all()
    assert kc[:, 0].float().mean() > kc[:, -1].float().mean()   # it does fall: not flat by accident
    # The raw head (what encode used before) does rise somewhere here: the rule is what prevents it.
    raw = torch.stack([model.kept(model.encode_tokens(x, torch.full((6,), eps_position(e)), model.config.max_tokens)[1]).sum(1)
                       for e in EPS_BINS], 1)
    assert (raw[:, 1:] > raw[:, :-1]).any()

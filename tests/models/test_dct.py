"""The DCT code (ALIT's tokens start from it) and the exact error hints a code gives the halting head."""
import pytest
import torch
from karl_helpers import fitted_code

from karl_cli import EPS_BINS, KARL, preset
from karl_cli.models.dct import DCTCode


def test_full_code_reconstructs_exactly():
    cfg = preset("tiny", arch="alit", max_tokens=256)        # 256 x 12 = 3 x 32 x 32: every coefficient
    sp = fitted_code(DCTCode, cfg)
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(sp.synthesise(sp.analyse(x)), x, atol=1e-4)


def test_detail_left_is_the_log_rms_error_of_each_prefix():
    cfg = preset("tiny", arch="alit", max_tokens=64)
    sp = fitted_code(DCTCode, cfg)
    x = torch.rand(2, 3, 32, 32)
    code = sp.analyse(x)
    got = sp.detail_left(x, code)
    for t in (1, 7, 32, 64):
        rms = (sp.synthesise(code[:, :t]) - x).square().mean(dim=(1, 2, 3)).sqrt()
        assert torch.allclose(got[:, t - 1], torch.log(rms + 1e-12), atol=1e-3)


@pytest.mark.parametrize("tokens", [16, 64])
def test_prefix_l1_is_the_clamped_l1_after_each_step(tokens):
    cfg = preset("tiny", arch="alit", max_tokens=64)
    sp = fitted_code(DCTCode, cfg)
    x = torch.rand(3, 3, 32, 32)
    x[0] = 0.5                                   # flat: met by the first step
    code = sp.analyse(x)[:, :tokens]
    ends = [1] + list(range(4, tokens + 1, 4))   # a 1-token budget, then steps of 4
    got = sp.prefix_l1(x, code, ends)
    want = torch.stack([(sp.synthesise(code[:, :t]).clamp(0, 1) - x).abs().mean(dim=(1, 2, 3))
                        for t in ends], dim=1)
    assert got.shape == (3, len(ends))
    assert torch.allclose(got, want, atol=1e-5)
    assert float(got[0].max()) < 1e-3 < float(got[1].min())
    assert bool((got[1:, 1:] <= got[1:, :-1] + 1e-3).all())   # more tokens, less error (noise: nearly flat)


def test_halting_head_reads_rms_and_l1_per_token():
    torch.manual_seed(0)
    model = KARL(preset("tiny")).eval()
    assert model.config.budgets[:3] == [1, 4, 8]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        d = model.halting_detail(x, 10)
        code = model.code.analyse(x)
        l1 = model.code.prefix_l1(x, code, [1, 4, 8, 12])
    assert d.shape == (2, 10, 3)
    log = lambda v: torch.log(v + 1e-4)  # noqa: E731
    # Token 0 is the 1-token budget: before it only the colour mean, after it that budget's L1.
    flat = (model.code.colour_mean.view(1, 3, 1, 1).clamp(0, 1) - x).abs().mean(dim=(1, 2, 3))
    assert torch.allclose(d[:, 0, 1], log(flat)) and torch.allclose(d[:, 0, 2], log(l1[:, 0]))
    # Tokens 1-3 complete the 4-token budget: between the 1- and 4-token L1.
    assert torch.allclose(d[:, 1:4, 1], log(l1[:, :1]).expand(-1, 3))
    assert torch.allclose(d[:, 1:4, 2], log(l1[:, 1:2]).expand(-1, 3))
    # Tokens 8-9 lie in the 12-token budget: between the 8- and 12-token L1.
    assert torch.allclose(d[:, 8:10, 1], log(l1[:, 2:3]).expand(-1, 2))
    assert torch.allclose(d[:, 8:10, 2], log(l1[:, 3:4]).expand(-1, 2))


def test_halting_head_reads_errors_relative_to_eps():
    # Same error-to-ε ratio under two bins, no per-bin bias: the same p_halt.
    torch.manual_seed(0)
    head = KARL(preset("tiny")).halting_head.eval()
    h = torch.randn(2, 8, 32)
    detail = torch.randn(2, 8, 3)
    lo, hi = EPS_BINS.index(0.03), EPS_BINS.index(0.09)
    shift = torch.log(torch.tensor(0.09 / 0.03))
    with torch.no_grad():
        p_lo = head(h, torch.full((2,), lo), detail)
        p_hi = head(h, torch.full((2,), hi), detail + shift)
        p_hi_same_error = head(h, torch.full((2,), hi), detail)
    assert torch.allclose(p_lo, p_hi, atol=1e-5)
    assert not torch.allclose(p_lo, p_hi_same_error, atol=1e-3)

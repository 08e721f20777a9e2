"""The wavelet spine: an orthonormal Haar code in an order each image chooses and the decoder replays."""
import pytest
import torch
from karl_helpers import fitted_code

from karl_cli import KARL, preset
from karl_cli.models.wavelet import WaveletCode, haar_forward, haar_inverse, haar_tree
from karl_cli.models.wavelet_kernels import KAPPA


def _wavelet_path(max_tokens: int = 64) -> WaveletCode:
    return fitted_code(WaveletCode, preset("tiny", max_tokens=max_tokens))


def _corner_detail(n: int = 2, r: int = 32) -> torch.Tensor:
    """Flat images with noise in one quarter: detail in one place only."""
    torch.manual_seed(1)
    x = torch.full((n, 3, r, r), 0.4)
    x[:, :, : r // 2, : r // 2] = torch.rand(n, 3, r // 2, r // 2)
    return x


def test_haar_transform_is_orthonormal_and_inverts():
    x = torch.rand(3, 3, 16, 16)
    c = haar_forward(x)
    assert c.shape == (3, 3 * 16 * 16)
    assert torch.allclose(c.square().sum(1), x.square().flatten(1).sum(1), rtol=1e-5)    # Parseval
    assert torch.allclose(haar_inverse(c, 3, 16), x, atol=1e-5)
    flat = haar_forward(torch.full((1, 3, 16, 16), 0.25))
    assert torch.allclose(flat[0, :3], torch.full((3,), 0.25 * 16)) and float(flat[0, 3:].abs().max()) < 1e-5


def test_tree_links_each_detail_to_the_same_place_one_scale_coarser():
    parent, children = haar_tree(3, 8)
    n = 3 * 64
    assert bool((parent[:12] == -1).all()) and bool((parent[12:] >= 3).all())
    # Every non-root has exactly one parent, which lists it among its children.
    for i in range(12, n):
        assert i in children[parent[i]].tolist()
    assert int((children < n).sum()) == n - 12
    # A finest-scale detail: channel 2, orientation 1, row 3, column 2 of the 4 x 4 details.
    start = 3 + 3 * 3 * (1 + 4)
    i = start + ((2 * 3 + 1) * 4 + 3) * 4 + 2
    assert int(parent[i]) == 3 + 9 + ((2 * 3 + 1) * 2 + 1) * 2 + 1


def test_full_code_reconstructs_exactly_and_the_decoder_replays_positions():
    wp = _wavelet_path(max_tokens=256)            # 256 x 12 = 3 x 32 x 32: every coefficient
    x = torch.rand(3, 3, 32, 32)
    code = wp.analyse(x)
    assert torch.allclose(wp.synthesise(code), x, atol=1e-4)
    pos = wp.positions(code)                                                # recalled from analyse
    assert all(len(set(p.flatten().tolist())) == 3 * 32 * 32 for p in pos)   # every coefficient once
    wp._memo = None
    assert torch.equal(wp.positions(code), pos)                             # replayed from the values
    # A prefix decodes to what the first tokens hold: positions depend only on earlier tokens.
    assert torch.equal(wp.positions(code[:, :40]), pos[:, :40])


def test_order_follows_where_the_detail_is():
    wp = _wavelet_path()
    x = _corner_detail()
    code = wp.analyse(x)
    l1 = wp.prefix_l1(x, code, range(4, code.shape[1] + 1, 4))
    # Energy left after 64 tokens: the adaptive order spends them in the noisy quarter, so it leaves
    # much less than a fixed coarse-to-fine order of the same coefficients would.
    c = haar_forward(x - 0.5)
    fixed = c[:, : 64 * 12].square().sum(1)
    adaptive = (code * wp.scale[wp.positions(code)]).square().flatten(1).sum(1)
    assert bool((adaptive > fixed * 1.1).all())
    assert bool((l1[:, 1:] <= l1[:, :-1] + 1e-3).all())


def test_detail_and_l1_hints_are_exact():
    wp = _wavelet_path()
    x = torch.rand(2, 3, 32, 32)
    x[0] = 0.5
    code = wp.analyse(x)
    rms = wp.detail_left(x, code)
    ends = [1, 4, 16, 64]                         # uneven segments, as a 1-token budget makes them
    l1 = wp.prefix_l1(x, code, ends)
    for i, t in enumerate(ends):
        recon = wp.synthesise(code[:, :t])
        assert torch.allclose(rms[:, t - 1], 0.5 * torch.log((recon - x).square().mean(dim=(1, 2, 3)) + 1e-6),
                              atol=1e-3)
        assert torch.allclose(l1[:, i], (recon.clamp(0, 1) - x).abs().mean(dim=(1, 2, 3)), atol=1e-5)
    assert float(l1[0].max()) < 1e-3 < float(l1[1].min())


def test_a_wavelet_model_keeps_its_code_as_tokens_and_a_prefix():
    torch.manual_seed(0)
    model = KARL(preset("tiny")).eval()
    assert model.bottleneck is None
    x = _corner_detail(2)
    enc = model.encode(x, 0.05)
    assert torch.equal(enc.latents, model.code.analyse(x)[:, : enc.latents.shape[1]])
    p = torch.rand(4, 16)
    keep = model.kept(p)
    # Kept tokens form a prefix: a halted token stops everything after it.
    assert bool((keep[:, 1:] <= keep[:, :-1]).all())
    assert model.config.budgets[:3] == [1, 4, 8]
    assert bool(keep[:, :1].all()) and not bool(keep[:, 1:].all())   # only the 1-token budget is forced
    assert model.decode(enc).shape == x.shape


def test_wavelet_config_is_checked():
    with pytest.raises(ValueError, match="no model has arch 'karl' with code 'jpeg'"):
        preset("tiny", code="jpeg")
    with pytest.raises(ValueError, match="power-of-two"):
        preset("tiny", code="wavelet", resolution=48, patch_size=8)
    with pytest.raises(ValueError, match="arch 'karl'"):
        preset("tiny", code="wavelet", arch="alit")
    assert preset("small", arch="alit").code == "dct" and preset("small").code == "wavelet"


def test_decoding_a_kept_prefix_ignores_the_dropped_tokens():
    torch.manual_seed(0)
    model = KARL(preset("tiny")).eval()
    x = _corner_detail(2)
    with torch.no_grad():
        enc = model.encode(x, 0.05)
        keep = torch.zeros_like(enc.keep)
        keep[:, :8] = True
        garbage = enc.latents.clone()
        garbage[:, 8:] = torch.randn_like(garbage[:, 8:])
        a = model.decode_tokens(enc.latents, keep)            # positions remembered from analyse
        b = model.decode_tokens(garbage, keep)                # positions replayed, other values after the prefix
        c = model.decode_tokens(enc.latents[:, :8].clone())   # the prefix alone
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_recalled_orders_match_replayed_ones():
    wp = _wavelet_path()
    x = torch.rand(4, 3, 32, 32)
    x[2] = 0.5
    code = wp.analyse(x)
    rows = torch.tensor([3, 1])
    again = wp.analyse(x[rows])                    # recalled: same values at the remembered positions
    pos = wp.positions(code[rows][:, :20])         # recalled for some rows and a prefix
    wp._memo = None
    assert torch.equal(again, wp.analyse(x[rows]))
    wp._memo = None
    assert torch.equal(pos, wp.positions(code[rows][:, :20]))
    # Codes that differ from the remembered ones after the first token are replayed, not recalled.
    wp.analyse(x)
    changed = code.clone()
    changed[:, 5] += 1.0
    wp_fresh = _wavelet_path()
    assert torch.equal(wp.positions(changed), wp_fresh.positions(changed))
    assert not torch.equal(wp.positions(changed), wp.positions(code))


def _reference_order(wp: WaveletCode, z: torch.Tensor, tokens: int) -> torch.Tensor:
    """The order as docs/design.md §4 states it, one tensor step per token: the 12 open coefficients
    of highest priority; a sent coefficient of value v opens its children at var x (v² + κ)/(1 + κ);
    while fewer than 12 are open, waiting ones by descending var."""
    n, k = wp.size, wp.latent_dim
    var = wp.scale.square()
    prior = torch.cat([var, var.new_tensor([-float("inf")])])
    pri = torch.cat([-1.0 - torch.argsort(torch.argsort(var, descending=True)).float(),
                     var.new_tensor([-float("inf")])]).expand(z.shape[0], -1).clone()
    pri[:, :12] = var[:12]
    done = torch.zeros(z.shape[0], n + 1, dtype=torch.bool)
    done[:, n] = True
    out = []
    for _ in range(tokens):
        pos = pri.topk(k, dim=1).indices
        vals = z.gather(1, pos)
        done.scatter_(1, pos, True)
        pri.scatter_(1, pos, -float("inf"))
        kids = wp.kids[pos].flatten(1)
        strength = ((vals.square() + KAPPA) / (1.0 + KAPPA)).repeat_interleave(4, dim=1)
        pri.scatter_(1, kids, torch.where(done.gather(1, kids), -float("inf"), prior[kids] * strength))
        out.append(pos)
    return torch.stack(out, dim=1)


def test_the_compiled_order_is_the_stated_one():
    wp = _wavelet_path()
    torch.manual_seed(3)
    x = torch.cat([torch.rand(3, 3, 32, 32), _corner_detail(2)])
    code = wp.analyse(x)
    expected = _reference_order(wp, wp._coefficients(x) / wp.scale, code.shape[1])
    assert torch.equal(wp.positions(code), expected)
    wp._memo = None
    assert torch.equal(wp.positions(code), expected)          # replayed from the tokens alone


def test_prefix_l1_of_some_prefixes_is_that_of_all():
    wp = _wavelet_path()
    x = torch.rand(3, 3, 32, 32)
    code = wp.analyse(x)
    ends = [1, 4, 8, 12, 40, 64]
    together = wp.prefix_l1(x, code, ends)
    assert torch.allclose(wp.prefix_l1(x, code, ends[:3]), together[:, :3], atol=1e-7)
    assert torch.allclose(wp.prefix_l1(x, code, [12, 64]), together[:, [3, 5]], atol=1e-7)


def test_the_halting_detail_is_made_once_per_batch_for_several_eps(monkeypatch):
    torch.manual_seed(0)
    model = KARL(preset("tiny")).eval()
    x = _corner_detail(2)
    calls = []
    real = model.code.prefix_l1
    monkeypatch.setattr(model.code, "prefix_l1", lambda *a: calls.append(1) or real(*a))
    first = model.encode(x, 0.05).p_halt
    model.encode(x, 0.09)
    assert len(calls) == 1                             # ε-independent: reused for the same images
    assert torch.equal(model.encode(x, 0.05).p_halt, first)
    x.add_(0.1)                                        # changed in place: made again
    model.encode(x, 0.05)
    model.encode(x[:1], 0.05)                          # other images: made again
    assert len(calls) == 3
    with torch.inference_mode():                       # as `karl complexity` makes its batches
        y = x + 0.05
        model.encode(y, 0.05)
        model.encode(y, 0.09)
    assert len(calls) == 4

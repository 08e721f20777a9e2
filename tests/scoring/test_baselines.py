"""The classic complexity baselines against values worked out by hand on small synthetic images,
the registry and its parsing, and the baselines in scoring rows and in correlate's "KC − best"."""
import io
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from karl_cli.analysis.correlate import _results_frame
from karl_cli.cli import bare_baselines
from karl_cli.errors import UsageError
from karl_cli.scoring import baselines as B
from karl_cli.scoring.complexity import score
from karl_cli.io.rows import ROW_FIELDS

R = 64


def _grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


FLAT = np.full((R, R, 3), 128, np.uint8)
STEP = _grey(np.where(np.arange(R)[None, :] >= R // 2, 255, 0).repeat(R, 0))           # black | white
_i, _j = np.indices((R, R))
CHECKER = _grey(((_i // 8 + _j // 8) % 2) * 255)                                        # 8-px squares
NOISE = np.random.default_rng(0).integers(0, 256, (R, R, 3), dtype=np.uint8)


# --- hand-worked values ------------------------------------------------------------------------------
def test_flat_image_has_no_edges_gradient_entropy_colour_or_extra_region():
    assert B.edge_density(FLAT) == 0.0
    assert B.spatial_information(FLAT) == 0.0
    assert B.luminance_entropy(FLAT) == 0.0
    assert B.colourfulness(FLAT) == 0.0
    assert B.fh_regions(FLAT) == 1.0
    assert B.subband_entropy(FLAT) == 0.0


def test_feature_congestion_of_a_flat_image_is_its_noise_floor():
    # Colour: det(diag(δL², δa², δb²))^(1/6) = (0.0007·0.1·0.05)^(1/3); contrast 0;
    # orientation: det(diag(0.001, 0.001))^(1/4) = 0.001^(1/2); weighted 1/0.2088, 1/0.0660, 1/0.0269.
    want = (0.0007 * 0.1 * 0.05) ** (1 / 3) / 0.2088 + 0.001 ** 0.5 / 0.0269
    assert B.feature_congestion(FLAT) == pytest.approx(want, rel=1e-6)
    assert B.feature_congestion(np.full((R, R, 3), 30, np.uint8)) == pytest.approx(want, rel=1e-6)


def test_single_edge():
    # Luma 0 | 255: two grey levels in equal shares -> 1 bit; two regions; no colour.
    assert B.luminance_entropy(STEP) == pytest.approx(1.0)
    assert B.fh_regions(STEP) == 2.0
    assert B.colourfulness(STEP) == 0.0
    # Sobel: |g| = (1+2+1)·255 = 1020 on the two columns beside the step, 0 elsewhere; over the 62x62
    # interior the share is p = 2/62, so SI = std = 1020·sqrt(p(1−p)).
    p = 2 / 62
    assert B.spatial_information(STEP) == pytest.approx(1020 * math.sqrt(p * (1 - p)))
    # Canny: one edge line on each side of the step (columns 31/32), at most 2 columns of 64 rows.
    assert 60 / R**2 <= B.edge_density(STEP) <= 2 * R / R**2


def test_checkerboard():
    assert B.luminance_entropy(CHECKER) == pytest.approx(1.0)
    # FH links 8-neighbours: same-colour squares touch at their corners, so 2 regions, not 64.
    assert B.fh_regions(CHECKER) == 2.0
    # 14 internal grid lines per axis: more gradient and more edge than the single step.
    assert B.spatial_information(CHECKER) > B.spatial_information(STEP) > 0
    assert B.edge_density(CHECKER) > 5 * B.edge_density(STEP)


def test_luminance_entropy_of_four_equal_grey_levels_is_two_bits():
    quads = _grey(np.select([(_i < 32) & (_j < 32), (_i < 32), (_j < 32)], [0, 80, 160], 240))
    assert B.luminance_entropy(quads) == pytest.approx(2.0)
    assert B.luminance_entropy(NOISE) > 7.5          # near the 8-bit maximum


def test_colourfulness_hand_values():
    red = np.zeros((R, R, 3), np.uint8)
    red[..., 0] = 255
    # rg = 255, yb = 127.5 everywhere: σ = 0, μ_rgyb = hypot(255, 127.5)
    assert B.colourfulness(red) == pytest.approx(0.3 * math.hypot(255, 127.5))
    red_green = red.copy()
    red_green[:, R // 2:] = (0, 255, 0)
    # rg = ±255 (mean 0, std 255), yb = 127.5 (std 0): M = 255 + 0.3·127.5
    assert B.colourfulness(red_green) == pytest.approx(255 + 0.3 * 127.5)


def test_webp_is_lossless_and_gif_keeps_up_to_256_colours_exactly():
    # WebP at the fast preset still decodes to the exact pixels.
    buf = io.BytesIO()
    Image.fromarray(NOISE).save(buf, format="WEBP", lossless=True, method=B.WEBP_METHOD, quality=B.WEBP_EFFORT)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), NOISE)
    assert B.webp_bpp(NOISE) == pytest.approx(len(buf.getvalue()) / R**2)
    # 256 grey levels: the GIF palette is the image's own colours (an octree would merge them).
    ramp = _grey(np.arange(R * R).reshape(R, R) // 16)
    pal = B._palette_image(Image.fromarray(ramp))
    assert np.array_equal(np.asarray(pal.convert("RGB")), ramp)
    # More than 256 colours: quantized to at most 256.
    assert len(B._palette_image(Image.fromarray(NOISE)).getcolors(256)) <= 256


def test_compression_orders_flat_edge_noise():
    for name in ("jpeg_bpp", "png_bpp", "webp_bpp", "gif_bpp"):
        f = B.REGISTRY[name].fn
        assert f(FLAT) < f(NOISE), name
    assert B.webp_bpp(NOISE) > 2.9           # lossless and incompressible: ~3 bytes per RGB pixel
    assert B.gif_bpp(STEP) < B.gif_bpp(NOISE) / 10    # two colours vs a full 256-colour palette
    with pytest.raises(TypeError):
        B.webp_bpp(NOISE.astype(np.float32))
    with pytest.raises(ValueError):
        B.colourfulness(NOISE[..., :2])


def test_clutter_measures_order_flat_checker_noise():
    for f in (B.subband_entropy, B.feature_congestion):
        assert f(FLAT) < f(CHECKER) < f(NOISE), f.__name__


def test_steerable_bands_pick_out_orientation():
    # A vertical grating (varying along x) puts its energy in the 0° band of its scale, none at 90°.
    grating = np.cos(2 * np.pi * _j / 4.0)
    levels = B._steerable_bands(grating, 3, 4)
    assert [b.shape for b in levels] == [(4, R, R), (4, R // 2, R // 2), (4, R // 4, R // 4), (R // 8, R // 8)]
    energy = (levels[0] ** 2).sum(axis=(1, 2))
    assert energy[0] > 100 * energy[2]
    # Odd sizes halve as (n + 1) // 2, and three channels at once give each channel's own bands.
    odd = NOISE[:37, :50].astype(np.float64).transpose(2, 0, 1)
    together = B._steerable_bands(odd, 3, 4)
    assert [b.shape[-2:] for b in together] == [(37, 50), (19, 25), (10, 13), (5, 7)]
    alone = B._steerable_bands(odd[1], 3, 4)
    assert all(np.allclose(t[1], a, atol=1e-9) for t, a in zip(together, alone))


def test_band_entropies_bin_as_np_histogram_does():
    # 0, 0.7, ..., 5.6 (and 55 more zeros) over 8 bins: every value lies on a bin edge, where
    # floor((v − min) / range · 8) puts 0.7·3 and 0.7·6 one bin low; np.histogram checks against its
    # edges, and so must we. Also: an even spread, noise, and a constant band (0 bits).
    on_edges = np.concatenate([np.arange(9) * 0.7, np.zeros(55)])
    bands = np.stack([np.arange(64.0), on_edges, np.random.default_rng(3).normal(size=64), np.full(64, 2.5)])
    got = B._band_entropies(bands)
    want = [B._shannon_bits(np.histogram(b, bins=8)[0]) for b in bands[:3]] + [0.0]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] == pytest.approx(3.0)          # 64 values spread evenly over 8 bins


def test_subband_entropy_of_grey_ignores_chroma():
    # Grey: a*, b* span < 0.008 and are zeroed, so SE = mean luminance band entropy / (1 + 2·0.0625),
    # the entropies taken with np.histogram's ceil(sqrt(n)) equal bins.
    lab = B._lab_rosenholtz(CHECKER)
    assert lab.shape == (3, R, R) and np.ptp(lab[1]) < 0.008
    bands = [band for level in B._steerable_bands(lab[0], 3, 4) for band in level.reshape(-1, *level.shape[-2:])]
    lum = np.mean([B._shannon_bits(np.histogram(b, bins=math.ceil(math.sqrt(b.size)))[0])
                   if np.ptp(b) > 1e-9 * max(1.0, np.abs(b).max()) else 0.0 for b in bands])
    assert len(bands) == 13
    assert B.subband_entropy(CHECKER) == pytest.approx(lum / 1.125)


def test_feature_congestion_filters_are_the_ndimage_filters():
    # Each filter runs as a cached matrix; it must be the ndimage call it stands for, borders included.
    maps = np.random.default_rng(4).normal(size=(2, 20, 13))
    for sigma, order, mode, truncate in ((3.0, (0, 0), "reflect", 2.0), (2.0, (2, 0), "mirror", 4.0),
                                         (2.0, (1, 1), "mirror", 4.0), (0.71, (0, 0), "mirror", 3 / 0.71)):
        want = np.stack([ndimage.gaussian_filter(m, sigma, order=order, mode=mode, truncate=truncate) for m in maps])
        assert np.allclose(B._gauss(maps, sigma, order, mode, truncate), want, atol=1e-12)
    down = B._gaussian_pyramid(maps, 2)[1]
    want = np.stack([ndimage.convolve1d(ndimage.convolve1d(m, B._PYR_KERNEL, axis=0, mode="mirror"),
                                        B._PYR_KERNEL, axis=1, mode="mirror")[::2, ::2] for m in maps])
    assert down.shape == (2, 10, 7) and np.allclose(down, want, atol=1e-12)
    up = B._upsample_matrix(20, 10) @ down[0] @ B._upsample_matrix(13, 7).T
    assert np.allclose(up, ndimage.zoom(down[0], (2.0, 13 / 7), order=1, mode="nearest"), atol=1e-12)


# --- the registry and its parsing ----------------------------------------------------------------
def test_parse_baselines():
    assert B.parse_baselines(True) == ("jpeg_bpp", "png_bpp")
    assert B.parse_baselines(None) == () and B.parse_baselines(False) == ()
    assert B.parse_baselines("all") == tuple(B.REGISTRY) and len(B.REGISTRY) == 11
    assert B.parse_baselines("webp, jpeg_bpp,EDGE_DENSITY") == ("jpeg_bpp", "webp_bpp", "edge_density")
    with pytest.raises(UsageError, match="feature_congestion"):
        B.parse_baselines("jpeg,sharpness")


def test_bare_baselines_flag_means_jpeg_png(tmp_path):
    assert bare_baselines(["complexity", "x", "--baselines"])[-1] == "--baselines=jpeg,png"
    assert bare_baselines(["--baselines", "--csv", "o.csv"])[0] == "--baselines=jpeg,png"
    assert bare_baselines(["--baselines", str(tmp_path)])[0] == "--baselines=jpeg,png"   # a path follows
    assert bare_baselines(["--baselines", "all", "x"]) == ["--baselines", "all", "x"]


def test_cli_help_names_every_baseline():
    from karl_cli.cli import BASELINES_HELP
    assert all(b.alias in BASELINES_HELP for b in B.REGISTRY.values())


# --- in the scoring rows and in correlate --------------------------------------------------------------
def test_score_rows_carry_the_chosen_baselines(tiny_model, image_folder):
    rows = list(score([image_folder], tiny_model, [0.05], baselines="all", batch_size=5))
    assert list(rows[0]) == ROW_FIELDS + list(B.REGISTRY)
    for r in rows:
        assert isinstance(r["fh_regions"], int) and r["fh_regions"] >= 1
        assert all(r[k] is not None and r[k] >= 0 for k in B.REGISTRY)
    two = list(score([image_folder], tiny_model, [0.05], baselines="gif,colourfulness", batch_size=5))
    assert list(two[0]) == ROW_FIELDS + ["gif_bpp", "colourfulness"]
    assert [r["gif_bpp"] for r in two] == [r["gif_bpp"] for r in rows]


def test_kc_is_compared_with_the_best_baseline_of_each_category():
    # Art: edge density tracks the ratings best; Scenes: PNG does. KC beats both in Scenes only.
    rng = np.random.default_rng(1)
    rows = []
    for cat, kc_n, png_n, edge_n in (("Scenes", 0.1, 0.6, 2.0), ("Art", 2.0, 1.5, 0.2)):
        for r in rng.uniform(0, 100, 80):
            rows.append({"category": cat, "rating": r, "eps": 0.03, "status": "ok", "kc": r + 30 * kc_n * rng.normal(),
                         "kc_soft": r + 30 * rng.normal(), "png_bpp": r + 30 * png_n * rng.normal(),
                         "edge_density": r + 30 * edge_n * rng.normal()})
    res = _results_frame(pd.DataFrame(rows), ["Scenes", "Art"], [0.03], "single", 300, 0, 0.95,
                         ("png_bpp", "edge_density"))
    ix = res.set_index(["category", "method"])
    assert ix.loc[("Scenes", "karl_kc")].best_baseline == "png_bpp"
    assert ix.loc[("Art", "karl_kc")].best_baseline == "edge_density"
    for cat in ("Scenes", "Art"):
        kc = ix.loc[(cat, "karl_kc")]
        assert kc.vs_best == pytest.approx(kc.spearman - ix.loc[(cat, kc.best_baseline)].spearman)
        assert kc.vs_best_lo < kc.vs_best < kc.vs_best_hi
        assert math.isnan(kc.vs_jpeg)                   # JPEG was not chosen
    assert ix.loc[("Scenes", "karl_kc")].vs_best_lo > 0 and ix.loc[("Art", "karl_kc")].vs_best_hi < 0

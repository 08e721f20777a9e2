"""`karl analyze`: the studies' properties on generated images, and the commands on tiny fixtures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from karl_cli import EPS_BINS, KARL, preset
from karl_cli.analysis import studies as S
from karl_cli.cli import app
from karl_cli.models.alit import ALIT
from conftest import as_if_trained, make_images

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped() -> KARL:
    return KARL.from_pretrained(ROOT / "weights" / "karl-small")


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def _gradient(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    g = 40 + 170 * (0.6 * xx + 0.4 * yy)
    return np.stack([g, 0.8 * g + 20, 200 - 0.5 * g], axis=2).round().astype(np.uint8)


# --- properties of the shipped model ----------------------------------------------------------------
def test_kc_of_a_flat_image_never_falls_as_gaussian_noise_grows(shipped, tmp_path):
    flat = _png(tmp_path / "flat.png", np.full((128, 128, 3), (90, 140, 200), np.uint8))
    study = S.noise([flat], shipped, eps=[0.05, 0.09], sigmas=[0, 0.02, 0.05, 0.1, 0.2, 0.4], sp=[], size=128)
    for (where, e), g in study.rows.groupby(["where", "eps"]):
        kc = g.sort_values("strength")["kc"].to_numpy()
        assert (np.diff(kc) >= 0).all(), (where, e, kc)
    assert study.rows.query("strength == 0")["kc"].max() == 1
    # Noise at the model input keeps its strength; at the image's own size the resize averages it away.
    seen = study.rows.query("strength == 0.4").groupby("where")["seen"].mean()
    assert seen["image"] < 0.7 * seen["input"]
    assert seen["input"] == pytest.approx(0.4, rel=0.35)   # clipping at 0 and 255 shrinks it


def test_shuffled_patches_never_cheaper_than_a_smooth_gradient(shipped, tmp_path):
    grad = _png(tmp_path / "gradient.png", _gradient())
    study = S.structure([grad], shipped, eps=[0.03, 0.05, 0.09], grids=(2, 4, 8, 16, 32))
    for e, g in study.rows.groupby("eps"):
        kc = g.set_index("step")["kc"]
        assert all(kc[s] >= kc["original"] for s in kc.index if s.startswith("shuffle")), (e, kc.to_dict())
        assert kc["pixels"] > kc["original"]


@pytest.mark.parametrize("method", ["prefix", "single"])   # single: issue 28.12 (noise rose 5 -> 8 at ε .28 -> .32)
def test_profile_kc_never_rises_as_eps_loosens(shipped, tmp_path, method):
    rng = np.random.default_rng(1)
    paths = [_png(tmp_path / "gradient.png", _gradient()),
             _png(tmp_path / "noise.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))]
    make_images(tmp_path / "shapes", 2, size=64)
    study = S.profile([*paths, tmp_path / "shapes"], shipped, method=method, curve=False)
    assert study.findings[0].startswith("KC is non-increasing in ε for 4 of 4")
    kc = study.rows[[f"kc@{e:g}" for e in study.extra["eps"]]].to_numpy()
    assert kc.shape == (4, len(EPS_BINS))
    assert (np.diff(kc, axis=1) <= 0).all()
    # The area is the mean KC over log ε: inside the profile's range, highest for noise.
    area = study.rows.set_index(study.rows["path"].map(lambda p: Path(p).stem))["kc_area"]
    assert ((area >= kc.min(axis=1)) & (area <= kc.max(axis=1))).all()
    assert area["noise"] == area.max() and area["gradient"] < area["noise"]


def test_map_puts_tokens_where_the_detail_is(shipped):
    rng = np.random.default_rng(0)
    img = np.full((64, 64, 3), 120, np.uint8)
    img[:, 32:] = rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)
    m = S.token_map(shipped, img, eps=[0.05], patch=8)
    b = m["budgets"][0]
    assert b.shape == (8, 8)
    flat, busy = b[:, :3], b[:, 5:]           # away from the border, which the noise bleeds into
    assert np.nanmax(flat) < np.nanmin(np.where(np.isnan(busy), np.inf, busy))
    assert set(np.unique(b[np.isfinite(b)])) <= set(shipped.config.budgets)


# --- the oracle and the curves agree, on every model ------------------------------------------------
@pytest.mark.parametrize("arch", ["karl", "alit"])
def test_oracle_kc_is_the_first_budget_of_the_curve_under_eps(arch, tmp_path):
    torch.manual_seed(0)
    model = as_if_trained((KARL if arch == "karl" else ALIT)(preset("tiny", arch=arch))).eval()
    make_images(tmp_path / "imgs", 3, size=32)
    eps = [0.05, 0.1, 0.2, 0.3]
    study = S.profile([tmp_path / "imgs"], model, eps=eps, method="prefix" if arch == "karl" else "search")
    budgets = model.config.budgets
    for _, r in study.rows.iterrows():
        l1 = np.array([r[f"l1@{t}"] for t in budgets])
        for e in eps:
            meets = np.nonzero(l1 <= e)[0]
            assert r[f"kc@{e:g}"] == (budgets[meets[0]] if meets.size else model.config.max_tokens)
    assert study.method == ("prefix" if arch == "karl" else "search")


# --- the image operations ---------------------------------------------------------------------------
def test_structure_steps_keep_the_pixels_and_the_power_spectrum():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)
    for g in (2, 4, 8, 16):
        out = S.shuffle_patches(img, g, rng)
        assert not np.array_equal(out, img)
        assert sorted(map(tuple, out.reshape(-1, 3))) == sorted(map(tuple, img.reshape(-1, 3)))
    perm = S.permute_pixels(img, rng)
    assert sorted(map(tuple, perm.reshape(-1, 3))) == sorted(map(tuple, img.reshape(-1, 3)))
    smooth = (128 + 40 * np.sin(np.mgrid[0:32, 0:32][1] / 3.0))[..., None].repeat(3, 2).astype(np.uint8)
    ph = S.randomise_phase(smooth, rng)
    amp = lambda a: np.abs(np.fft.fft2(a[..., 0].astype(float)))  # noqa: E731
    assert not np.array_equal(ph, smooth)
    assert np.abs(amp(ph) - amp(smooth)).max() < 0.02 * amp(smooth).max()
    with pytest.raises(Exception, match="multiple"):
        S.shuffle_patches(img, 5, rng)


def test_random_variants_depend_only_on_seed_image_and_variant(tiny_model):
    """Issue 28.13: the phase-randomised and pixel-permuted images (and each shuffle, and each noise
    level) were drawn from one stream shared with the other grids/levels, so --grid changed them."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    full = dict(S.structure_steps(img, (2, 4, 8), seed=3))
    for grids in ((2,), (8, 4), (16, 2)):
        few = dict(S.structure_steps(img, grids, seed=3))
        for name in set(full) & set(few):
            assert np.array_equal(full[name], few[name]), (grids, name)
    assert not np.array_equal(full["pixels"], dict(S.structure_steps(img, (2,), seed=4))["pixels"])
    assert not np.array_equal(S.permute_pixels(img, S.variant_rng(3, img, "pixels")),
                              S.permute_pixels(img, S.variant_rng(3, img, "phase")))
    # Whole studies: the rows of a step do not change with the grid list, the other images or their order.
    a = S.structure(None, tiny_model, eps=[0.09], grids=(2, 4, 8), seed=0).rows
    b = S.structure(None, tiny_model, eps=[0.09], grids=(2,), seed=0).rows
    for step in ("original", "shuffle 2x2", "phase", "pixels"):
        ka = a[a.step == step].set_index("source")["kc"]
        kb = b[b.step == step].set_index("source")["kc"]
        assert ka.equals(kb.loc[ka.index]), step
    n1 = S.noise(None, tiny_model, eps=[0.09], sigmas=[0.1], sp=[], size=32).rows
    n2 = S.noise(None, tiny_model, eps=[0.09], sigmas=[0.05, 0.1], sp=[0.02], size=32).rows
    key = ["source", "kind", "strength", "where"]
    m = n1.merge(n2, on=key, suffixes=("_1", "_2"))
    assert len(m) == len(n1) and (m["seen_1"] == m["seen_2"]).all() and (m["kc_1"] == m["kc_2"]).all()


def test_rank_tests_and_effect_sizes():
    a = np.arange(20.0)
    up = S.compare_kc(a, a + 5, paired=True, n_boot=200)
    assert up["effect"] == 1.0 and up["p"] < 0.001 and up["effect_lo"] <= 1.0
    same = S.compare_kc(a, a.copy(), paired=True, n_boot=200)
    assert np.isnan(same["p"]) and same["effect"] == 0 == same["effect_lo"] == same["effect_hi"]
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 40), rng.normal(1.5, 1, 40)
    two = S.compare_kc(x, y, paired=False, n_boot=300)
    assert two["test"] == "mann-whitney" and two["p"] < 0.01
    assert 0 < two["effect_lo"] <= two["effect"] <= two["effect_hi"] <= 1


def test_noise_kinds():
    rng = np.random.default_rng(0)
    img = np.full((50, 50, 3), 128, np.uint8)
    sp = S.add_noise(img, "salt-pepper", 0.3, rng)
    hit = (sp != 128).any(axis=2)
    assert 0.2 < hit.mean() < 0.4 and set(np.unique(sp[hit])) <= {0, 255}
    assert np.array_equal(S.add_noise(img, "gaussian", 0.0, rng), img)
    with pytest.raises(Exception, match="unknown noise"):
        S.add_noise(img, "speckle", 0.1, rng)


# --- the commands on tiny fixtures ------------------------------------------------------------------
def _run(args: list[str]):
    res = CliRunner().invoke(app, ["analyze", *args, "--device", "cpu"])
    return res


def test_analyze_commands_write_rows_and_figures(tiny_weights, tmp_path):
    make_images(tmp_path / "imgs", 3, size=32)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    w = ["--weights", str(tiny_weights)]
    figs = tmp_path / "figs"
    runs = {
        "profile": ["profile", str(tmp_path / "imgs"), "--eps", "0.05", "--eps", "0.1"],
        "noise": ["noise", "--sigma", "0", "--sigma", "0.3", "--sp", "0", "--sp", "0.2", "--size", "32", "--eps", "0.1"],
        "structure": ["structure", "--grid", "2", "--grid", "4", "--eps", "0.1"],
        "familiarity": ["familiarity", str(tmp_path / "imgs"), "--bootstrap", "50", "--eps", "0.1"],
        "map": ["map", str(tmp_path / "imgs" / "img_002.png"), "--eps", "0.1", "--patch", "8"],
    }
    for name, args in runs.items():
        out = tmp_path / f"{name}.csv"
        res = _run([*args, *w, "--csv", str(out), "--json", str(tmp_path / f"{name}.json"), "--plot", str(figs)])
        broken = name in ("profile", "familiarity")
        assert res.exit_code == (1 if broken else 0), (name, res.output)
        if broken:
            assert "unreadable" in res.output and "Traceback" not in res.output
        df = pd.read_csv(out)
        assert len(df) and len(pd.read_json(tmp_path / f"{name}.json")) == len(df)
    assert len(pd.read_csv(tmp_path / "profile.csv")) == 3
    assert set(pd.read_csv(tmp_path / "familiarity.csv")["group"]) == {"original", "flip", "invert", "swap"}
    m = pd.read_csv(tmp_path / "map.csv")
    assert len(m) == (32 // 8) ** 2 and {"row", "col", "budget"} <= set(m.columns)
    for stem in ("profile", "noise", "structure", "familiarity", "map_000_img_002"):
        assert (figs / f"{stem}.png").stat().st_size > 10_000 and (figs / f"{stem}.pdf").exists()


def test_analyze_refuses_what_the_model_cannot_do(tiny_weights, tmp_path):
    make_images(tmp_path / "imgs", 1, size=32)
    res = _run(["map", str(tmp_path / "imgs"), "--patch", "5", "--weights", str(tiny_weights)])
    assert res.exit_code == 2 and "divide" in res.output
    res = _run(["structure", "--grid", "3", "--weights", str(tiny_weights)])
    assert res.exit_code == 2 and "grids must divide" in res.output
    torch.manual_seed(0)
    alit = tmp_path / "alit"
    ALIT(preset("tiny", arch="alit")).save_pretrained(alit)
    res = _run(["profile", str(tmp_path / "imgs"), "--method", "single", "--weights", str(alit)])
    assert res.exit_code == 2 and "halting head" in res.output

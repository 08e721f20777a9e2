"""karl correlate: results table, score cache, ratings CSV, plots and the CLI, on a generated Savoias."""
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import karl_cli.scoring.complexity as complexity
from karl_cli import KARL, preset
from karl_cli.cli import app
from karl_cli.analysis.correlate import RESULT_COLUMNS, _results_frame, correlate
from karl_cli.models.pretrained import model_id
from karl_cli.errors import UsageError
from karl_cli.models.pretrained import load_pretrained
from savoias_fixture import LAYOUT, make_savoias

N_IMAGES = sum(len(present) for _, _, present in LAYOUT.values())   # 18 rated images on disk


@pytest.fixture(scope="module")
def savoias(tmp_path_factory):
    return make_savoias(tmp_path_factory.mktemp("data") / "savoias")


@pytest.fixture(scope="module")
def weights(tiny_weights):
    return tiny_weights


@pytest.fixture
def counted(monkeypatch):
    """Counts (image, ε) rows computed by complexity.score and encoder passes of any KARL."""
    calls = {"rows": 0, "encoder": 0}
    real_score = complexity.score

    def score(*a, **k):
        for row in real_score(*a, **k):
            calls["rows"] += 1
            yield row

    real_encode = KARL._encode   # every encoder pass, whichever path (training, halting, search) runs it

    def encode(self, *a, **k):
        calls["encoder"] += 1
        return real_encode(self, *a, **k)

    monkeypatch.setattr(complexity, "score", score)
    monkeypatch.setattr(KARL, "_encode", encode)
    return calls


def test_results_table(savoias, weights, tmp_path):
    results, per_image = correlate(savoias, weights=weights, eps=[0.05, 0.1], bootstrap=200, seed=1,
                                   cache=tmp_path / "cache")
    assert list(results.columns) == RESULT_COLUMNS
    cats = ["Scenes", "Interior Design", "Art", ""]    # "": the pooled rows (pooled True)
    assert list(dict.fromkeys(results["category"])) == cats
    assert list(results.pooled) == [c == "" for c in results.category]
    for cat in cats:
        sub = results[results.category == cat]
        # KC and soft KC at each ε, the baselines once with no ε.
        assert sorted(zip(sub.method, sub.eps.fillna(-1))) == sorted(
            [("karl_kc", 0.05), ("karl_kc_soft", 0.05), ("karl_kc", 0.1), ("karl_kc_soft", 0.1),
             ("jpeg_bpp", -1), ("png_bpp", -1)])
    n = results.set_index(["category", "method"]).xs("jpeg_bpp", level=1)["n"]
    assert n.to_dict() == {"Scenes": 7, "Interior Design": 5, "Art": 6, "": N_IMAGES}
    # The fixture's clutter grows with the rating: only correctly matched ratings give a high ρ.
    jpeg_all = results[results.pooled & (results.method == "jpeg_bpp")].iloc[0]
    assert jpeg_all.spearman > 0.8 and jpeg_all.spearman_lo <= jpeg_all.spearman <= jpeg_all.spearman_hi
    assert len(per_image) == 2 * N_IMAGES and (per_image.status == "ok").all()
    assert set(per_image.kc.dropna()) <= set(range(0, 17))
    assert results[~results.method.str.startswith("karl_")].vs_jpeg.isna().all()
    # Undefined coefficients (a random model may give every image the same KC) come with a reason.
    nan_rows = results[results.spearman.isna()]
    assert (nan_rows.reason != "").all()


def test_karl_rows_carry_their_paired_gap_to_jpeg():
    # Scores where KC tracks the ratings better than JPEG does in one category and worse in the other.
    rng = np.random.default_rng(0)
    rows = []
    for cat, kc_noise, jpeg_noise in (("Scenes", 0.2, 2.0), ("Art", 2.0, 0.2)):
        rating = rng.uniform(0, 100, 80)
        for r in rating:
            rows.append({"category": cat, "rating": r, "eps": 0.03, "status": "ok",
                         "kc": r + 30 * kc_noise * rng.normal(), "kc_soft": r + 30 * rng.normal(),
                         "jpeg_bpp": r + 30 * jpeg_noise * rng.normal(), "png_bpp": r + 30 * rng.normal()})
    res = _results_frame(pd.DataFrame(rows), ["Scenes", "Art"], [0.03], "single", 300, 0, 0.95)
    ix = res.set_index(["category", "method"])
    for cat in ("Scenes", "Art", ""):
        kc = ix.loc[(cat, "karl_kc")]
        assert kc.vs_jpeg == pytest.approx(kc.spearman - ix.loc[(cat, "jpeg_bpp")].spearman)
        assert kc.vs_jpeg_lo < kc.vs_jpeg < kc.vs_jpeg_hi
        assert math.isnan(ix.loc[(cat, "png_bpp")].vs_jpeg)
    assert ix.loc[("Scenes", "karl_kc")].vs_jpeg_lo > 0 and ix.loc[("Art", "karl_kc")].vs_jpeg_hi < 0


def test_cache_avoids_recomputation(savoias, weights, tmp_path, counted):
    savoias = shutil.copytree(savoias, tmp_path / "savoias")   # this test edits an image
    cache = tmp_path / "cache"
    first = correlate(savoias, weights=weights, eps=[0.05], bootstrap=100, cache=cache)
    assert first.computed == N_IMAGES and counted["rows"] == N_IMAGES and counted["encoder"] > 0
    assert len(list(cache.glob("scores-*.csv"))) == 1 and not list(cache.glob("*.tmp"))
    counted.update(rows=0, encoder=0)
    again = correlate(savoias, weights=weights, eps=[0.05], bootstrap=300, seed=5, cache=cache)
    assert counted == {"rows": 0, "encoder": 0} and again.cached == N_IMAGES and again.computed == 0
    cols = ["kc", "kc_soft", "jpeg_bpp", "png_bpp"]
    pd.testing.assert_frame_equal(first.per_image[cols].astype(float), again.per_image[cols].astype(float))
    pd.testing.assert_series_equal(first.results.spearman, again.results.spearman)
    # A new ε computes only that ε; a changed image only that image.
    third = correlate(savoias, weights=weights, eps=[0.05, 0.2], bootstrap=0, cache=cache)
    assert third.computed == N_IMAGES and third.cached == N_IMAGES
    img = savoias / "Images" / "Art" / "4.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(img)
    counted.update(rows=0)
    fourth = correlate(savoias, weights=weights, eps=[0.05], bootstrap=0, cache=cache)
    assert fourth.computed == 1 and counted["rows"] == 1
    # Another model (other weights) never reuses these scores.
    torch.manual_seed(1)
    other = correlate(savoias, model=KARL(preset("tiny")), eps=[0.05], bootstrap=0, cache=cache)
    assert other.computed == N_IMAGES and other.model_id != first.model_id
    # cache=False neither reads nor writes.
    counted.update(rows=0)
    assert correlate(savoias, weights=weights, eps=[0.05], bootstrap=0, cache=False).computed == N_IMAGES


def test_model_id_is_about_the_weights(weights):
    m = load_pretrained(weights)
    assert model_id(m) == model_id(load_pretrained(weights))
    with torch.no_grad():
        m.latent_tokens[0, 0, 0] += 1e-3
    assert model_id(m) != model_id(load_pretrained(weights))


def test_search_method(savoias, weights, tmp_path):
    r = correlate(savoias, weights=weights, eps=0.2, method="search", bootstrap=0, cache=tmp_path)
    assert set(r.results.method) == {"karl_search_kc", "jpeg_bpp", "png_bpp"}
    assert (r.per_image.method == "search").all() and r.per_image.kc.notna().all()
    with pytest.raises(UsageError, match="method"):
        correlate(savoias, weights=weights, method="guess", cache=tmp_path)


def test_ratings_csv_and_tiny_groups(savoias, weights, tmp_path):
    art = savoias / "Images" / "Art"
    csv = tmp_path / "rated.csv"
    rows = [(str(art / "0.png"), 25, "big"), (str(art / "1.jpg"), 65, "big"), (str(art / "2.jpg"), 85, "big"),
            (str(art / "3.png"), 40, "big"), (str(art / "5.jpg"), 75, "small"), (str(art / "missing.jpg"), 3, "small")]
    pd.DataFrame(rows, columns=["path", "rating", "category"]).to_csv(csv, index=False)
    r = correlate(ratings=csv, weights=weights, eps=[0.05], bootstrap=50, cache=tmp_path / "c")
    assert len(r.rated.missing) == 1 and len(r.per_image) == 5
    small = r.results[(r.results.category == "small") & (r.results.method == "jpeg_bpp")].iloc[0]
    assert small.n == 1 and math.isnan(small.spearman) and "n=1" in small.reason
    big = r.results[(r.results.category == "big") & (r.results.method == "jpeg_bpp")].iloc[0]
    assert big.n == 4 and math.isfinite(big.spearman)


def test_cli_writes_results_and_plots(savoias, weights, tmp_path):
    out, per, plots = tmp_path / "results.csv", tmp_path / "per_image.csv", tmp_path / "plots"
    res = CliRunner().invoke(app, ["correlate", str(savoias), "--weights", str(weights), "--eps", "0.05",
                                   "--bootstrap", "100", "--seed", "0", "--out", str(out), "--per-image", str(per),
                                   "--plot", str(plots), "--cache", str(tmp_path / "cache"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df.columns) == RESULT_COLUMNS
    assert set(df.category[~df.pooled]) == {"Scenes", "Interior Design", "Art"} and df.category[df.pooled].isna().all()
    assert len(pd.read_csv(per)) == N_IMAGES
    assert "2 ratings without an image" in res.output and "Interior Design" in res.output
    names = {p.name for p in plots.iterdir()}
    assert {"scatter_grid_eps0.05.png", "heatmap_eps0.05.png", "rho_eps0.05.png",
            "scatter_interior-design_eps0.05.png", "scatter_pooled_eps0.05.png"} <= names
    with Image.open(plots / "heatmap_eps0.05.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_cli_and_library_score_at_eps_003_by_default(savoias, weights, tmp_path):
    out = tmp_path / "results.csv"
    res = CliRunner().invoke(app, ["correlate", str(savoias), "--weights", str(weights), "--bootstrap", "0",
                                   "--out", str(out), "--no-cache", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert set(pd.read_csv(out).eps.dropna()) == {0.03}
    results, _ = correlate(savoias, weights=weights, bootstrap=0, cache=False)
    assert set(results.eps.dropna()) == {0.03}


def test_cli_usage_errors(savoias, weights, tmp_path):
    runner = CliRunner()
    (tmp_path / "flat").mkdir()
    res = runner.invoke(app, ["correlate", str(tmp_path / "flat"), "--weights", str(weights)])
    assert res.exit_code == 2 and "Savoias layout" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("file,score\na.png,1\n")
    res = runner.invoke(app, ["correlate", "--ratings", str(bad), "--weights", str(weights)])
    assert res.exit_code == 2 and "lacks the column(s) path, rating" in " ".join(res.output.split())
    res = runner.invoke(app, ["correlate", str(savoias), "--ratings", str(bad), "--weights", str(weights)])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(app, ["correlate", str(savoias), "--weights", str(tmp_path / "no-weights")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["correlate", str(savoias), "--weights", str(weights), "--method", "guess",
                              "--cache", str(tmp_path)])
    assert res.exit_code == 2 and "unknown method" in res.output


def test_terminal_table_shows_rho_r_and_tau_and_no_ci_title_without_bootstrap(savoias, weights):
    """Issue 22.6: the terminal shows Spearman ρ, Pearson r and Kendall τ; --bootstrap 0 claims no CI."""
    from rich.console import Console

    from karl_cli.analysis.correlate import rich_table

    for n_boot in (0, 50):
        result = correlate(savoias, weights=weights, eps=[0.05], bootstrap=n_boot, cache=False)
        console = Console(width=400, record=True, color_system=None)
        console.print(rich_table(result))
        text = " ".join(console.export_text().split())
        pooled = result.results[result.results.pooled & (result.results.method == "jpeg_bpp")].iloc[0]
        assert f"r {pooled.pearson:.2f}" in text and f"τ {pooled.kendall:.2f}" in text
        assert "Pearson r and Kendall τ" in text
        assert ("bootstrap CI" in text) == (n_boot > 0), text[:200]

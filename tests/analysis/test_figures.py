"""Every figure karl writes is fit for a paper: column widths at 300 dpi, integer-aligned KC
histograms, ρ axes within [-1, 1], legends off the data, the pooled scatter coloured by category."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import karl_cli.analysis.plots as plots
from karl_cli.analysis import correlate_plots as cp
from karl_cli.analysis.style import DOUBLE_COLUMN, DPI, SINGLE_COLUMN, figure, save

from karl_helpers import spread_halting


def _bbox(artist, fig):
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_saved_png_is_exactly_the_column_width_at_300_dpi(tmp_path):
    for width in (SINGLE_COLUMN, DOUBLE_COLUMN):
        fig = figure(width, 2.0)
        fig.add_subplot().plot([0, 1], [0, 1])
        with Image.open(save(fig, tmp_path / f"{width}.png")) as im:
            assert im.size == (round(width * DPI), round(2.0 * DPI))
    assert not list(tmp_path.glob("*.tmp*"))


def test_histogram_bins_hold_whole_token_counts():
    for values, top in (([1, 4, 8, 384], 384), ([1, 2, 3], 16), ([7], 0), ([0, 40, 41, 80], 81)):
        edges = plots.histogram_edges(values, top)
        assert np.allclose(edges % 1, 0.5)                          # edges between whole counts
        widths = np.diff(edges)
        assert np.allclose(widths, widths[0]) and widths[0] == int(widths[0]) >= 1
        assert edges[0] < 0 < edges[1] and edges[-1] > max(values + [top])
        assert len(edges) - 1 <= 41


def _rows():
    rng = np.random.default_rng(0)
    return [{"path": f"i{i}", "eps": e, "kc": int(rng.integers(1, 385)), "status": "ok", "max_tokens": 384}
            for e in (0.03, 0.05, 0.09) for i in range(30)]


def test_kc_histogram_is_small_multiples_with_whole_image_counts(tmp_path):
    fig = plots.kc_histogram_figure(_rows())
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3                                           # one panel per ε: no overlapping series
    assert fig.get_size_inches()[0] == SINGLE_COLUMN
    for ax in axes:
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # images are counted whole
    with Image.open(plots.kc_histogram(_rows(), tmp_path / "h.png")) as im:
        assert im.size[0] == SINGLE_COLUMN * DPI


@pytest.fixture
def shown(tiny_model, image_folder, tmp_path, monkeypatch):
    figures = []

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(plots, "save", keep)
    info = plots.show_figure(spread_halting(tiny_model), sorted(image_folder.iterdir())[3], tmp_path / "s.png",
                             [0.03, 0.2])
    return figures[0], info, tmp_path / "s.png"


def test_show_figure_titles_p_halt_axis_and_size(shown):
    fig, info, png = shown
    titles = [ax.get_title() for ax in fig.axes]
    assert any(t.startswith("first 1 token\n") for t in titles)
    assert not any("first 1 tokens" in t for t in titles)
    assert any(t.startswith("first 4 tokens\n") for t in titles)
    p_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "p_halt")
    lo, hi = p_ax.get_ylim()
    assert -0.1 < lo < 0 and 1 <= hi < 1.1                           # a p_halt of 0 is drawn above the axis
    legend = p_ax.get_legend()
    assert not _bbox(legend, fig).overlaps(_bbox(p_ax, fig).shrunk(1, 1))   # the legend is off the lines
    with Image.open(png) as im:
        assert im.size[0] == DOUBLE_COLUMN * DPI


def _results():
    cats = ["Art", "Scenes", "Suprematism", ""]   # "": the pooled rows
    rows = []
    for i, c in enumerate(cats):
        for m, rho in (("karl_kc", 0.6 - 0.1 * i), ("jpeg_bpp", -0.2 + 0.1 * i)):
            rows.append({"category": c, "pooled": c == "", "method": m, "eps": 0.05 if m.startswith("karl") else np.nan, "n": 20,
                         "spearman": rho, "spearman_lo": rho - 0.35, "spearman_hi": min(1.0, rho + 0.3)})
    return pd.DataFrame(rows)


def test_rho_figure_limits_and_legend_off_the_bars():
    res = _results()
    fig = cp.rho_figure(res, 0.05)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert -1.1 <= lo <= res["spearman_lo"].min() and res["spearman_hi"].max() <= hi <= 1.1
    legend = fig.legends[0]
    assert not _bbox(legend, fig).overlaps(_bbox(ax, fig))
    assert not _bbox(legend, fig).overlaps(_bbox(fig._suptitle, fig))
    assert "95% bootstrap CI" in fig._suptitle.get_text()
    no_ci = res.assign(spearman_lo=np.nan, spearman_hi=np.nan)
    assert "CI" not in cp.rho_figure(no_ci, 0.05)._suptitle.get_text()
    assert cp.rho_limits(pd.DataFrame({"spearman": [-1.0, 1.0], "spearman_lo": [-1.0, 0.9],
                                       "spearman_hi": [-0.8, 1.0]})) == pytest.approx((-1.08, 1.08))


def _per_image():
    rng = np.random.default_rng(1)
    cats = ["Art", "Scenes", "Suprematism"]
    return pd.DataFrame([{"path": f"{c}/{i}.png", "category": c, "rating": float(rng.uniform(0, 100)),
                          "eps": 0.05, "kc": int(rng.integers(1, 385)), "max_tokens": 384, "status": "ok",
                          "jpeg_bpp": float(rng.uniform(0.1, 2))} for c in cats for i in range(12)])


def test_pooled_scatter_is_coloured_by_category_with_the_legend_off_the_points():
    fig = cp.scatter_figure(_per_image(), cp.POOLED, 0.05)
    ax = fig.axes[0]
    groups = [c for c in ax.collections if len(c.get_offsets())]
    assert len(groups) == 3 and len({tuple(c.get_facecolor()[0][:3]) for c in groups}) == 3
    assert {t.get_text() for t in fig.legends[0].get_texts()} >= {"Art", "Scenes", "Suprematism"}
    assert not _bbox(fig.legends[0], fig).overlaps(_bbox(ax, fig))
    assert fig.get_size_inches()[0] == SINGLE_COLUMN
    one = cp.scatter_figure(_per_image(), "Art", 0.05)
    assert len([c for c in one.axes[0].collections if len(c.get_offsets())]) == 1


def test_grid_and_heatmap_are_double_column():
    per = _per_image()
    grid = cp.grid_figure(per, ["Art", "Scenes", "Suprematism"], 0.05)
    assert grid.get_size_inches()[0] == DOUBLE_COLUMN
    titles = [_bbox(ax.title, grid) for ax in grid.axes if ax.get_visible()]
    assert not any(a.overlaps(b) for i, a in enumerate(titles) for b in titles[i + 1:])   # titles side by side
    pooled = [ax for ax in grid.axes if ax.get_title().startswith("all (pooled)")][0]
    assert len([c for c in pooled.collections if len(c.get_offsets())]) == 3
    assert cp.heatmap_figure(per, 0.05).get_size_inches()[0] == DOUBLE_COLUMN


# --- issue 28.18: figures a reader trips over ----------------------------------------------------------
def _overlapping(boxes) -> list:
    return [(i, j) for i, a in enumerate(boxes) for j, b in enumerate(boxes[i + 1:], i + 1) if a.overlaps(b)]


def test_show_titles_stay_apart_at_three_digit_counts(tmp_path, monkeypatch):
    """'KC 108/384ε=0.05': the adaptive row's titles ran into each other once counts had 3 digits."""
    from karl_cli.models.pretrained import load

    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or path)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    info = plots.show_figure(load("karl-small"), tmp_path / "noise.png", tmp_path / "s.png", [0.01, 0.02, 0.03, 0.05])
    assert max(e["kc"] for e in info["eps"]) >= 100
    fig = figures[0]
    titled = [ax for ax in fig.axes if ax.get_title() and ax.get_ylabel() != "p_halt"]
    assert not _overlapping([_bbox(ax.title, fig) for ax in titled])
    assert all(_bbox(ax.title, fig).x1 <= fig.bbox.x1 + 1 for ax in titled)


def _rho_all():
    from karl_cli.scoring.baselines import REGISTRY
    methods = ["karl_kc", "karl_kc_soft", *REGISTRY]
    rows = []
    for c in ["Art", "Scenes", "Suprematism", ""]:
        for k, m in enumerate(methods):
            rho = 0.7 - 0.1 * k
            rows.append({"category": c, "pooled": c == "", "method": m, "eps": 0.05 if m.startswith("karl") else np.nan,
                         "n": 20, "spearman": rho, "spearman_lo": rho - 0.2, "spearman_hi": rho + 0.2})
    return pd.DataFrame(rows), methods


def test_rho_bars_with_every_baseline_named_coloured_apart_and_labelled_inside():
    """--baselines all: 13 series; the y label was clipped, webp_bpp shown raw, KC and WebP (and PNG and
    colourfulness, JPEG and GIF) in near-identical colours."""
    from matplotlib.colors import to_rgb
    from skimage.color import rgb2lab

    res, methods = _rho_all()
    assert len(methods) == 13
    fig = cp.rho_figure(res, 0.05)
    ax = fig.axes[0]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == 13 and not any("_" in t for t in labels) and "WebP bytes/px" in labels
    ylab = _bbox(ax.yaxis.label, fig)
    assert ylab.y0 >= _bbox(ax, fig).y0 - 1 and ylab.y1 <= _bbox(ax, fig).y1 + 1   # the label is not cut
    bars = {}
    for patch in ax.patches:
        bars.setdefault(patch.get_label(), patch.get_facecolor()[:3])
    lab = rgb2lab(np.array([to_rgb(c) for c in cp.method_colors(methods).values()])[None])[0]
    dist = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(len(lab)) * 1e9
    assert dist.min() > 20
    assert len({tuple(np.round(c, 3)) for c in bars.values()}) == len(bars)


def _capture_study_figs(monkeypatch):
    from karl_cli.analysis import study_plots as sp
    figures = []

    def keep(fig, stem):   # kept open (saving closes a pyplot figure) to measure its parts
        figures.append(fig)
        return stem

    monkeypatch.setattr(sp, "_save", keep)
    return sp, figures


def test_profile_without_curves_keeps_its_width_with_seven_folders(tmp_path, monkeypatch):
    from karl_cli.analysis.studies import Study
    sp, figures = _capture_study_figs(monkeypatch)
    eps = [0.03, 0.05, 0.09]
    rng = np.random.default_rng(0)
    rows = pd.DataFrame([{"path": f"f{k}/i{i}.png", "folder": f"folder-{k}", **{f"kc@{e:g}": int(rng.integers(1, 300))
                                                                                  for e in eps}}
                         for k in range(7) for i in range(5)])
    study = Study("profile", rows, pd.DataFrame(), "single", 384, [], [], {"eps": eps, "budgets": []})
    sp.profile_figure(study, tmp_path / "p")
    fig = figures[0]
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    assert len(texts) == 7 and not any("median" in t for t in texts) and "median" in legend.get_title().get_text()
    assert _bbox(legend, fig).width <= fig.bbox.width                      # nothing widens the saved figure
    assert _bbox(fig.axes[0], fig).width > 0.6 * fig.bbox.width


def test_map_keys_blocks_that_never_meet_eps(tmp_path, monkeypatch):
    sp, figures = _capture_study_figs(monkeypatch)
    b = np.full((2, 8, 8), 16.0)
    b[1, :3, :3] = np.nan
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    sp.map_figure(img, {"budgets": b, "eps": [0.05, 0.01], "kc": np.array([16, 64])}, tmp_path / "m", t_max=64)
    legend = figures[0].legends[0]
    assert "never meets ε" in legend.get_texts()[0].get_text()
    sp.map_figure(img, {"budgets": b[:1], "eps": [0.05], "kc": np.array([16])}, tmp_path / "m2", t_max=64)
    assert not figures[1].legends                                            # nothing to key


def test_familiarity_groups_are_named_by_their_folders(tmp_path):
    from karl_cli.analysis.studies import group_names
    assert group_names([tmp_path / "photos"], [tmp_path / "drawings"]) == ("photos", "drawings")
    assert group_names([tmp_path / "a" / "images"], [tmp_path / "b" / "images"]) == ("a/images", "b/images")
    assert group_names([tmp_path / "x", tmp_path / "y"], [tmp_path / "z"]) == ("x+y", "z")

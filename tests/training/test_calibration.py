import dataclasses
import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from karl_cli import EPS_BINS, KARL
from karl_cli.cli import app
from karl_cli.scoring.oracle import oracle_budgets, search
from karl_cli.defaults import HALT_THRESHOLDS as THRESHOLDS
from karl_cli.training.calibration import calibrate_halting
from karl_cli.io.synthetic import FAMILIES, make_family_image, random_family_images


def test_oracle_budgets_are_the_prefix_search(tiny_model):
    x = torch.rand(4, 3, 32, 32)
    x[0] = 0.5  # a flat image meets loose bins early
    oracle = oracle_budgets(tiny_model, x, EPS_BINS)
    assert oracle.shape == (4, len(EPS_BINS))
    for b in (3, 10, 18):
        res = search(tiny_model, x, EPS_BINS[b], method="prefix")
        assert oracle[:, b].tolist() == res.kc.tolist()
    # Looser ε never needs more tokens.
    assert bool((oracle[:, 1:] <= oracle[:, :-1]).all())


def test_calibration_trains_only_the_head_and_tracks_the_oracle(tiny_model, image_folder):
    with torch.no_grad():
        tiny_model.halting_head.fc2.bias.fill_(5.0)  # a head that halts all it may: kc = token_step, far from the oracle
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    report = calibrate_halting(tiny_model, [str(image_folder)], samples=48, bins_per_image=6, steps=300, lr=1e-2,
                               seed=0)
    after = tiny_model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("halting_head.") for k in changed)
    assert report.error_before > 8
    assert report.error_after < 0.5 * report.error_before
    assert report.samples + report.held_out == 48 * 6
    assert tiny_model.config.halt_threshold == report.threshold in THRESHOLDS
    assert report.undercut <= 0.01 or report.threshold == THRESHOLDS[-1]


def test_calibration_picks_the_smallest_threshold_that_rarely_undercuts_the_oracle(tiny_model, image_folder):
    with torch.no_grad():   # p_halt 0.83 for every token: halted at thresholds 0.75 and 0.8, kept from 0.85
        tiny_model.halting_head.fc2.weight.zero_()
        tiny_model.halting_head.fc2.bias.fill_(1.6)
    start = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    kw = dict(samples=48, bins_per_image=6, steps=1, lr=1e-7, seed=0)   # the head stays as set
    lax = calibrate_halting(tiny_model, [str(image_folder)], max_undercut=1.0, **kw)
    assert lax.threshold == 0.75 and lax.undercut > 0.2     # KC 1 (all halted) undercuts most oracles
    tiny_model.load_state_dict(start)
    strict = calibrate_halting(tiny_model, [str(image_folder)], max_undercut=0.0, **kw)
    assert strict.threshold == 0.85 == tiny_model.config.halt_threshold
    assert strict.undercut == 0.0 and strict.ratio_after > lax.ratio_after
    with pytest.raises(ValueError, match="max_undercut"):
        calibrate_halting(tiny_model, [str(image_folder)], max_undercut=1.5, **kw)


def test_cli_calibrate_writes_loadable_weights(tiny_model, image_folder, tmp_path):
    card = "# tiny\n\n## Model\n\n```json\n" + json.dumps(tiny_model.config.to_dict()) + "\n```\n"
    tiny_model.save_pretrained(tmp_path / "w", card=card)
    res = CliRunner().invoke(app, ["calibrate", str(image_folder), "--weights", str(tmp_path / "w"),
                                   "--out", str(tmp_path / "cal"), "--samples", "16", "--steps", "20"])
    assert res.exit_code == 0, res.output
    # Not a terminal: plain progress lines per stage instead of a bar (background runs log progress).
    assert "calibrate oracle: 16/16 (100 %)" in res.output and "━" not in res.output
    model = KARL.from_pretrained(tmp_path / "cal")
    assert model.config.halt_threshold in THRESHOLDS
    assert dataclasses.replace(model.config, halt_threshold=tiny_model.config.halt_threshold) == tiny_model.config
    card = (tmp_path / "cal" / "model_card.md").read_text()
    assert "Halting calibration" in card and f"halting threshold {model.config.halt_threshold:g}" in card
    block = re.search(r"```json\n(.*?)\n```", card, re.S).group(1)
    assert json.loads(block) == json.loads((tmp_path / "cal" / "config.json").read_text()), \
        "the card's config block shows the calibrated threshold"
    bad = CliRunner().invoke(app, ["calibrate", str(image_folder), "--weights", str(tmp_path / "w"),
                                   "--out", str(tmp_path / "x"), "--samples", "2"])
    assert bad.exit_code == 2
    bad = CliRunner().invoke(app, ["calibrate", str(image_folder), "--weights", str(tmp_path / "w"),
                                   "--out", str(tmp_path / "x"), "--synthetic", "1.5"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()
    bad = CliRunner().invoke(app, ["calibrate", str(image_folder), "--weights", str(tmp_path / "w"),
                                   "--out", str(tmp_path / "x"), "--max-undercut", "-0.1"])
    assert bad.exit_code == 2 and "--max-undercut" in bad.output and not (tmp_path / "x").exists()


def test_procedural_images_span_flat_to_noise():
    imgs = random_family_images(60, 16, np.random.default_rng(0))
    assert imgs.shape == (60, 16, 16, 3) and imgs.dtype == np.uint8
    distinct = [len(np.unique(a.reshape(-1, 3), axis=0)) for a in imgs]
    assert min(distinct) == 1 and max(distinct) > 200   # a flat colour and noise are both drawn
    assert [len(np.unique(make_family_image(f, 16, np.random.default_rng(1)).reshape(-1, 3), axis=0)) > 1
            for f in FAMILIES] == [False, True, True, True, True, True]

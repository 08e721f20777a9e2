"""The weights `make demo` uses load, score the examples, and use fewer tokens for a looser ε."""
import dataclasses
from pathlib import Path
import pytest
import torch

from karl_cli import KARL, preset
from karl_cli.scoring.complexity import score
from karl_cli.defaults import HALT_THRESHOLDS as THRESHOLDS

ROOT = Path(__file__).resolve().parents[2]


def test_default_weights_score_the_examples():
    model = KARL.from_pretrained(ROOT / "weights" / "karl-small")
    # The preset, but for the halting threshold that calibration chose.
    assert model.config.halt_threshold in THRESHOLDS
    assert dataclasses.replace(model.config, halt_threshold=preset("small").halt_threshold) == preset("small")
    rows = list(score([ROOT / "examples"], model, [0.05, 0.12]))
    assert rows and all(r["status"] == "ok" for r in rows)
    mean = {e: sum(r["kc"] for r in rows if r["eps"] == e) / (len(rows) / 2) for e in (0.05, 0.12)}
    assert mean[0.12] < 0.5 * mean[0.05]
    # Checked by the code's own reconstruction of the kept tokens (the default for a wavelet KARL).
    assert all(0 <= r["kc"] <= model.config.max_tokens and 0 <= r["code_l1"] < 0.5 and r["l1"] is None
               for r in rows)


def test_default_weights_order_the_examples_by_structure():
    """Issue #3: simple images get fewer tokens than complex ones, and noise more than any photo."""
    model = KARL.from_pretrained(ROOT / "weights" / "karl-small")
    rows = list(score([ROOT / "examples"], model, [0.03, 0.05]))
    kc = {(Path(r["path"]).stem, r["eps"]): r["kc"] for r in rows}
    assert kc["constant", 0.03] < kc["gradient", 0.03] < kc["shapes_few", 0.03] < kc["shapes_many", 0.03]
    # The 1-token budget (the colour means) is all a flat image needs.
    assert kc["constant", 0.03] == kc["constant", 0.05] == 1
    # The wavelet code's first token (the tree roots) carries a smooth gradient to L1 0.04, so at
    # ε 0.05 it fits in the smallest budget, like a flat image; shapes still need more.
    assert kc["constant", 0.05] <= kc["gradient", 0.05] < kc["shapes_few", 0.05] < kc["shapes_many", 0.05]
    photos = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble", "gravel")
    # At ε 0.05 a dark or smooth photo may need no more than a gradient (hubble, rocket: one step);
    # at 0.03 every photo needs more, and at 0.05 all need fewer than noise, which needs every token.
    assert all(kc["gradient", 0.03] < kc[p, 0.03] for p in photos)
    assert all(kc[p, 0.05] < kc["noise", 0.05] for p in photos)
    assert kc["noise", 0.05] >= 0.95 * model.config.max_tokens


def test_default_weights_single_pass_matches_the_search_oracle():
    """Issue #5: one pass predicts the smallest budget that meets ε (to within two token steps)."""
    model = KARL.from_pretrained(ROOT / "weights" / "karl-small")
    single = {r["path"]: r["kc"] for r in score([ROOT / "examples"], model, [0.05])}
    oracle = {r["path"]: r["kc"] for r in score([ROOT / "examples"], model, [0.05], method="prefix")}
    step = model.config.token_step
    assert single.keys() == oracle.keys() and len(single) >= 10
    assert all(abs(single[p] - oracle[p]) <= 2 * step for p in single), (single, oracle)


def test_shipped_alit_weights_score_by_search():
    from karl_cli import load_pretrained
    from karl_cli.models.alit import ALIT

    alit = load_pretrained(ROOT / "weights" / "alit-small")
    # The peer shares the sizes the default model was trained with (before its encoder was
    # distilled); it keeps the DCT code (ALIT corrects its tokens, which the default's ordered
    # wavelet code does not allow), and its architecture and step differ.
    small = preset("small-teacher")
    assert isinstance(alit, ALIT) and alit.config.has_code and alit.config.code == "dct" != small.code
    assert (alit.config.resolution, alit.config.latent_dim, alit.config.max_tokens, alit.config.width) == (
        small.resolution, small.latent_dim, small.max_tokens, small.width)
    rows = list(score([ROOT / "examples"], alit, [0.05], method="search"))
    kc = {Path(r["path"]).stem: r["kc"] for r in rows}
    assert kc["constant"] < kc["shapes_many"] and all(r["encoder_runs"] >= 1 for r in rows)


def test_shipped_learned_weights_carry_their_pca_start_and_rank_the_examples():
    from karl_cli.models.pretrained import load

    model = load("karl-learned-small")
    assert model.config.code == "pca" and model.code.basis.dtype == torch.float16
    assert (ROOT / "weights" / "karl-learned-small" / "model.safetensors").stat().st_size < 12 * 2**20
    rows = list(score([ROOT / "examples"], model, [0.05], method="single"))
    kc = {Path(r["path"]).stem: r["kc"] for r in rows}
    assert kc["constant"] < kc["shapes_many"] and len(set(kc.values())) > 3


@pytest.mark.parametrize("name", ["karl-small", "alit-small", "karl-learned-small"])
def test_model_card_agrees_with_config(name):
    """A card's config block (if it has one) and the halting threshold it states are config.json's."""
    import json
    import re

    folder = ROOT / "weights" / name
    card = (folder / "model_card.md").read_text(encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    for block in re.findall(r"```json\n(.*?)\n```", card, re.S):
        assert json.loads(block) == config
    for stated in re.findall(r"halting threshold (?:is )?(0\.\d+)", card):
        assert float(stated) == config["halt_threshold"], stated

"""The weights `make demo` uses load, score the examples, and use fewer tokens for a looser ε."""
from pathlib import Path

from karl_cli import KARL, preset
from karl_cli.complexity import score

ROOT = Path(__file__).resolve().parent.parent


def test_default_weights_score_the_examples():
    model = KARL.from_pretrained(ROOT / "weights" / "karl-small")
    assert model.config == preset("small")
    rows = list(score([ROOT / "examples"], model, [0.05, 0.12]))
    assert rows and all(r["status"] == "ok" for r in rows)
    mean = {e: sum(r["kc"] for r in rows if r["eps"] == e) / (len(rows) / 2) for e in (0.05, 0.12)}
    assert mean[0.12] < 0.5 * mean[0.05]
    assert all(0 <= r["kc"] <= model.config.max_tokens and 0 <= r["l1"] < 0.5 for r in rows)


def test_default_weights_order_the_examples_by_structure():
    """Issue #3: simple images get fewer tokens than complex ones, and noise more than any photo."""
    model = KARL.from_pretrained(ROOT / "weights" / "karl-small")
    kc = {Path(r["path"]).stem: r["kc"] for r in score([ROOT / "examples"], model, [0.05])}
    assert kc["constant"] < kc["gradient"] < kc["shapes_few"] < kc["shapes_many"]
    photos = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble", "gravel")
    assert all(kc["gradient"] < kc[p] < kc["noise"] for p in photos)
    assert kc["noise"] >= 0.95 * model.config.max_tokens


def test_shipped_alit_weights_score_by_search():
    from karl_cli import load_pretrained
    from karl_cli.alit import ALIT

    alit = load_pretrained(ROOT / "weights" / "alit-small")
    assert isinstance(alit, ALIT) and alit.config.max_tokens == preset("small").max_tokens
    rows = list(score([ROOT / "examples"], alit, [0.05], method="search"))
    kc = {Path(r["path"]).stem: r["kc"] for r in rows}
    assert kc["constant"] < kc["shapes_many"] and all(r["encoder_runs"] >= 1 for r in rows)

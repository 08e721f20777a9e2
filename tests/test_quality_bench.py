"""benchmarks/quality.py (issue #5's measurement tool) on a tiny model and 8 generated images."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from karl_cli import KARL, preset
from karl_cli.models.alit import ALIT
from karl_cli.scoring.complexity import score

from conftest import load_script, make_images
from karl_helpers import spread_halting
from savoias_fixture import make_savoias

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    return load_script(SCRIPT, "karl_quality_bench")


@pytest.fixture
def setup(tmp_path):
    torch.manual_seed(0)
    model = spread_halting(KARL(preset("tiny")).eval())
    model.save_pretrained(str(tmp_path / "w"))
    make_images(tmp_path / "imgs", 8)
    return model, tmp_path


@pytest.mark.slow
def test_report_fields(quality, setup, capsys):
    model, tmp = setup
    sav = make_savoias(tmp / "savoias")
    js, md = tmp / "q.json", tmp / "q.md"
    rc = quality.main([str(tmp / "imgs"), "--weights", str(tmp / "w"), "--eps", "0.1", "--eps", "0.3",
                       "--family-size", "2", "--savoias", str(sav), "--no-cache", "--bootstrap", "20",
                       "--batch-size", "5", "--json", str(js), "--markdown", str(md)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Missed targets" in out and "Rate–distortion" in out and "synthetic families" in out
    assert "Spearman ρ with human ratings" in out
    r = json.loads(js.read_text())
    assert r["eps"] == [0.1, 0.3] and r["images"]["ok"] == 8 and r["model"]["max_tokens"] == 16
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu"] and "quality.py" in r["command"]

    svo = r["single_vs_oracle"]
    assert [s["eps"] for s in svo] == [0.1, 0.3]
    for s in svo:
        for k in ("miss_single", "oracle_unmet", "single_below_oracle", "single_above_oracle", "tokens_share"):
            assert 0.0 <= s[k] <= 1.0, k
        assert 0 <= s["kc_single"] <= 16 and 1 <= s["kc_oracle"] <= 16
        assert s["ratio"] == pytest.approx(s["kc_single"] / s["kc_oracle"])
        assert s["paper_miss"] is None      # the paper has no figure for these ε
    # The oracle is what `karl complexity --method prefix` reports; the single pass what --method single does.
    files = sorted((tmp / "imgs").iterdir())
    for s in svo:
        prefix = [row["kc"] for row in score(files, model, [s["eps"]], method="prefix")]
        single = [row for row in score(files, model, [s["eps"]], method="single", check="decoder")]
        assert s["kc_oracle"] == pytest.approx(np.mean(prefix))
        assert s["kc_single"] == pytest.approx(np.mean([row["kc"] for row in single]))
        # The gate's misses are the decoder's; the code's own reconstruction is reported beside them.
        assert s["miss_single"] == pytest.approx(np.mean([row["l1"] > s["eps"] for row in single]))
        assert s["miss_code"] == pytest.approx(np.mean([row["code_l1"] > s["eps"] for row in single]))
        assert s["l1_code"] == pytest.approx(np.mean([row["code_l1"] for row in single]), abs=1e-6)

    rd = r["rate_distortion"]
    assert [row["budget"] for row in rd] == [1, 4, 8, 12, 16]   # the tiny preset offers a 1-token budget
    assert [row["token_bytes"] for row in rd] == [t * 12 * 2 for t in (1, 4, 8, 12, 16)]
    for row in rd:
        assert 0 <= row["l1"] <= 1 and -1 <= row["ssim"] <= 1 and row["psnr"] > 0
        if row["jpeg_quality"] is not None:
            assert 1 <= row["jpeg_quality"] <= 95 and 0 <= row["jpeg_l1"] <= 1
    assert any(row["jpeg_quality"] is not None for row in rd)

    fam = r["families"]
    assert [row["family"] for row in fam["rows"]] == list(quality.FAMILIES)
    assert all(row["images"] == 2 and set(row["kc"]) == {"0.1", "0.3"} for row in fam["rows"])
    assert set(fam["order"]) == {"0.1", "0.3"}
    assert all(isinstance(o["strict"], bool) and isinstance(o["weak"], bool) for o in fam["order"].values())

    cats = [row["category"] for row in r["savoias"]["rows"]]
    assert cats[-1] == "all (pooled)" and r["savoias"]["rows"][-1]["pooled"] and "Art" in cats
    assert "JPEG bpp" in r["savoias"]["columns"]
    assert r["savoias"]["columns"][-2:] == ["KC − JPEG ε=0.1", "KC − JPEG ε=0.3"]
    assert all(len(row["cells"]) == len(r["savoias"]["columns"]) for row in r["savoias"]["rows"])

    text = md.read_text()
    assert text.startswith("### ") and r["machine"]["cpu"] in text and "Command: `python benchmarks/quality.py" in text
    assert text.count("\n|---") == 5      # misses, tokens, rate-distortion, families, Savoias


def test_helpers(quality):
    rng = np.random.default_rng(0)
    for fam in quality.FAMILIES:
        a = quality.make_family_image(fam, 32, rng)
        assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert len(np.unique(quality.make_family_image("constant", 32, rng).reshape(-1, 3), axis=0)) == 1
    l1 = np.array([[0.5, 0.2, 0.1], [0.5, 0.4, 0.3]])
    kc, met = quality.oracle_kc(l1, [4, 8, 12], 0.2)
    assert kc.tolist() == [8, 12] and met.tolist() == [True, False]
    assert quality.spread(list(range(10)), 3) == [0, 3, 6] and quality.spread([1, 2], None) == [1, 2]
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=50)
    assert 0 < quality.jpeg_scan_bytes(buf.getvalue()) < len(buf.getvalue()) - 500   # tables and headers left out


def test_refuses_search_only_models(quality, tmp_path, capsys):
    ALIT(preset("tiny", arch="alit")).save_pretrained(str(tmp_path / "alit"))
    make_images(tmp_path / "imgs", 3)
    rc = quality.main([str(tmp_path / "imgs"), "--weights", str(tmp_path / "alit")])
    assert rc != 0 and "karl compare" in capsys.readouterr().err

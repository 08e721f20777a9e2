"""karl_cli.analysis.plots and `karl show`."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from karl_cli.cli import app
from karl_cli.scoring.complexity import score
from karl_cli.io.rows import read_rows, write_csv
from karl_cli.errors import UsageError
from karl_cli.io.images import load_for_model
from karl_cli.analysis.plots import kc_histogram, show_figure
from karl_cli.runtime import to_model_input

from karl_helpers import spread_halting

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def model(tiny_model):
    return spread_halting(tiny_model)


def test_show_figure(model, image_folder, tmp_path):
    img = sorted(image_folder.iterdir())[3]
    out = tmp_path / "fig.png"
    info = show_figure(model, img, out, [0.03, 0.2])
    assert out.read_bytes()[:8] == PNG
    w, h = Image.open(out).size
    assert w > 600 and h > 500
    x = to_model_input(torch.from_numpy(load_for_model(img, 32).transpose(2, 0, 1).copy())[None], "cpu")
    assert [e["kc"] for e in info["eps"]] == [int(model.encode(x, e).kc[0]) for e in (0.03, 0.2)]
    assert [b["tokens"] for b in info["budgets"]] == [1, 4, 8, 12, 16]
    with pytest.raises(UsageError, match="cannot read"):
        bad = tmp_path / "bad.png"
        bad.write_text("nope")
        show_figure(model, bad, tmp_path / "x.png")


def test_kc_histogram_from_rows_and_csv(model, image_folder, tmp_path):
    write_csv(score([image_folder], model, [0.05, 0.2]), tmp_path / "rows.csv")
    rows = read_rows(tmp_path / "rows.csv") + [{"path": "x", "eps": 0.05, "status": "error", "kc": None}]
    kc_histogram(rows, tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG
    kc_histogram([], tmp_path / "empty.png")   # nothing scored still gives a figure
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG


def test_cli_show(model, image_folder, tmp_path):
    model.save_pretrained(str(tmp_path / "w"))
    img = sorted(image_folder.iterdir())[0]
    res = CliRunner().invoke(app, ["show", str(img), "--out", str(tmp_path / "s.png"), "--eps", "0.05",
                                   "--weights", str(tmp_path / "w"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG and "KC" in res.output
    res = CliRunner().invoke(app, ["show", str(tmp_path / "missing.png"), "--out", str(tmp_path / "t.png"),
                                   "--weights", str(tmp_path / "w")])
    assert res.exit_code == 2 and not (tmp_path / "t.png").exists()

"""karl_cli.scoring.token_store: `karl encode` / `karl decode` and their files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from karl_cli import KARL, load_pretrained, preset
from karl_cli.scoring import token_store
from karl_cli.cli import app
from karl_cli.io.rows import read_rows
from karl_cli.errors import EXIT_SOME_FAILED, EXIT_USAGE, UsageError
from karl_cli.io.images import load_for_model
from karl_cli.runtime import to_model_input
from karl_cli.scoring.token_store import decode_folder, encode_folder, recon_names
from karl_cli.models.pretrained import model_id

from conftest import as_if_trained, make_images
from karl_helpers import spread_halting


@pytest.fixture
def model(tiny_model):
    return spread_halting(tiny_model)


@pytest.fixture
def folder(tmp_path):
    f = tmp_path / "imgs"
    make_images(f, 11)
    (f / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return f


def _pngs(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*.png"))}


def test_encode_writes_tokens_and_index(model, folder, tmp_path, monkeypatch):
    out = tmp_path / "tok"
    res = encode_folder([folder], model, 0.05, out, batch_size=5, images_per_shard=4)
    assert (res.ok, res.error) == (11, 1)
    rows = read_rows(out / "index.csv")
    assert list(rows[0]) == token_store.INDEX_FIELDS and len(rows) == 12
    bad = [r for r in rows if r["status"] == "error"]
    assert len(bad) == 1 and bad[0]["path"].endswith("broken.png") and bad[0]["kc"] is None and bad[0]["error"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["model_id"] for r in rows} == {model_id(model)} and len({r["kc"] for r in ok}) > 1
    assert res.shards == sorted({r["shard"] for r in ok}) and len(res.shards) == 3
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["model_id"] == res.model_id and manifest["token_files"] == res.shards
    # Stored tokens are exactly the model's kept tokens, at their positions.
    r = ok[4]
    t = load_file(str(out / r["shard"]))
    assert t["tokens"].dtype == torch.float32 and t["positions"].dtype == torch.int16
    assert t["offsets"].tolist()[-1] == t["tokens"].shape[0]
    x = to_model_input(torch.from_numpy(load_for_model(r["path"], 32).transpose(2, 0, 1).copy())[None], "cpu")
    enc = model.encode(x, 0.05)
    tok, pos = enc.tokens(0)
    a, b = r["offset"], r["offset"] + r["kc"]
    assert r["kc"] == int(enc.kc[0])
    assert torch.equal(t["positions"][a:b].long(), pos)
    assert torch.allclose(t["tokens"][a:b], tok, atol=1e-6)


@pytest.mark.parametrize("code", ["learned", "wavelet"])
def test_encode_decode_reproduces_recon_exactly(code, folder, tmp_path, monkeypatch):
    # A wavelet model's decoder replays token positions from the stored values: they must come back exact.
    torch.manual_seed(0)
    model = spread_halting(as_if_trained(KARL(preset("tiny", code=code))).eval())
    monkeypatch.setattr(token_store, "DECODE_CHUNK", 4)   # several decode chunks across token files
    out, recon, dec = tmp_path / "tok", tmp_path / "recon", tmp_path / "dec"
    res = encode_folder([folder], model, 0.05, out, recon_dir=recon, batch_size=5, images_per_shard=3)
    assert res.recon == 11
    monkeypatch.setattr(token_store, "DECODE_CHUNK", 64)  # decode follows the manifest, not the constant
    got = decode_folder(out, model, dec)
    assert got.images == 11
    a, b = _pngs(recon), _pngs(dec)
    assert len(a) == 11 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), "decode must reproduce --recon bit for bit"
    # and the PNG is the model's reconstruction from the kept tokens
    row = next(r for r in read_rows(out / "index.csv") if r["status"] == "ok")
    x = to_model_input(torch.from_numpy(load_for_model(row["path"], 32).transpose(2, 0, 1).copy())[None], "cpu")
    rec = model.decode(model.encode(x, 0.05))[0].mul(255).round().to(torch.uint8).permute(1, 2, 0)
    png = torch.from_numpy(np.array(Image.open(recon / row["name"])))
    assert (png.int() - rec.int()).abs().max() <= 1


def test_decode_refuses_another_model(model, folder, tmp_path):
    out = tmp_path / "tok"
    encode_folder([folder], model, 0.05, out)
    torch.manual_seed(123)
    other = KARL(preset("tiny"))
    with pytest.raises(UsageError, match="encoded by model"):
        decode_folder(out, other, tmp_path / "dec")
    assert not (tmp_path / "dec").exists()
    with pytest.raises(UsageError, match="index.csv"):
        decode_folder(tmp_path, model, tmp_path / "dec")


def test_model_id_survives_save_and_load(model, tmp_path):
    model.save_pretrained(str(tmp_path / "w"))
    assert model_id(load_pretrained(tmp_path / "w")) == model_id(model)
    torch.manual_seed(5)
    assert model_id(KARL(preset("tiny"))) != model_id(model)


def test_recon_names_are_unique():
    names = recon_names(["/d/a/x.jpg", "/d/a/x.png", "/d/b/y.jpg", "/d/a/z.webp"])
    assert names == {"/d/a/x.jpg": "a/x.jpg.png", "/d/a/x.png": "a/x.png.png", "/d/b/y.jpg": "b/y.png",
                     "/d/a/z.webp": "a/z.png"}


def test_sharded_encode_into_one_folder(model, folder, tmp_path):
    out = tmp_path / "tok"
    for k in range(2):
        encode_folder([folder], model, 0.05, out, recon_dir=tmp_path / "recon", shard=(k, 2))
    assert sorted(p.name for p in out.glob("index*.csv")) == ["index.shard-0-of-2.csv", "index.shard-1-of-2.csv"]
    got = decode_folder(out, model, tmp_path / "dec")
    assert got.images == 11
    assert _pngs(tmp_path / "recon") == _pngs(tmp_path / "dec")


def test_cli_encode_decode(model, folder, tmp_path):
    model.save_pretrained(str(tmp_path / "w"))
    run = CliRunner().invoke
    res = run(app, ["encode", str(folder), "--eps", "0.05", "--out", str(tmp_path / "tok"), "--recon",
                    str(tmp_path / "recon"), "--weights", str(tmp_path / "w"), "--workers", "0"])
    assert res.exit_code == EXIT_SOME_FAILED, res.output      # broken.png is an error row
    res = run(app, ["decode", str(tmp_path / "tok"), "--out", str(tmp_path / "dec"), "--weights", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    assert _pngs(tmp_path / "recon") == _pngs(tmp_path / "dec") and len(_pngs(tmp_path / "dec")) == 11
    res = run(app, ["encode", str(folder), "--eps", "-1", "--out", str(tmp_path / "t2"), "--weights", str(tmp_path / "w")])
    assert res.exit_code == EXIT_USAGE

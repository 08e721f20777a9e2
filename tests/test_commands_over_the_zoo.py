"""Every command over the zoo of hostile files (tests/zoo.py): bad files become error rows with a
reason, good ones are all scored, one row per file, exit code 1, no traceback."""
from __future__ import annotations

import csv
import os

from PIL import Image
import pandas as pd
import pytest

from karl_cli.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE
from karl_cli.io.names import unescape_path
from karl_cli.io.rows import read_rows

from faults import check_rows_cover_zoo, invoke, rel, weights, wide_console, zoo  # noqa: F401 - fixtures
from zoo import NON_UTF8_NAME


# --- every command over the zoo ------------------------------------------------------------------
def test_cli_complexity_over_the_zoo(zoo, weights, tmp_path):
    out_csv, out_json = tmp_path / "out.csv", tmp_path / "out.json"
    res = invoke("complexity", zoo.root, "--weights", weights, "--csv", out_csv, "--json", out_json,
                 "--eps", "0.05", "--eps", "0.1", "--baselines", "--workers", "0", "--batch-size", "5",
                 ok_codes=[EXIT_SOME_FAILED])
    assert "unreadable inputs" in res.output
    rows = read_rows(out_csv)
    check_rows_cover_zoo(zoo, rows, eps_count=2)
    assert read_rows(out_json) == rows
    # The non-UTF-8 name is stored escaped (valid UTF-8: pandas reads both files with its defaults)
    # and reads back as the same str.
    assert b"/caf\\xe9.png," in out_csv.read_bytes()
    for df in (pd.read_csv(out_csv), pd.read_json(out_json)):
        assert len(df) == len(rows) and df["path"].str.endswith("/caf\\xe9.png").sum() == 2
    assert zoo.path(NON_UTF8_NAME) in {r["path"] for r in rows}
    # --resume matches every row (the odd names included): nothing new, nothing duplicated.
    before = out_csv.read_bytes()
    res = invoke("complexity", zoo.root, "--weights", weights, "--csv", out_csv, "--eps", "0.05", "--eps", "0.1",
                 "--baselines", "--workers", "0", "--resume", ok_codes=[EXIT_SOME_FAILED])
    assert "wrote 0 new rows" in res.output
    assert out_csv.read_bytes() == before
    # To stdout as well (escaped the same way).
    res = invoke("complexity", zoo.path("plain.png"), zoo.path(NON_UTF8_NAME), "--weights", weights, "--csv", "-",
                 "--workers", "0", ok_codes=[EXIT_OK])
    assert "plain.png,0.05" in res.output and res.stdout_bytes.count(b"/caf\\xe9.png,0.05,") == 1


@pytest.mark.slow
def test_cli_complexity_with_workers_over_the_zoo(zoo, weights, tmp_path):
    invoke("complexity", zoo.root, "--weights", weights, "--csv", tmp_path / "w.csv", "--workers", "1",
           "--batch-size", "8", ok_codes=[EXIT_SOME_FAILED])
    check_rows_cover_zoo(zoo, read_rows(tmp_path / "w.csv"))


def test_cli_encode_decode_over_the_zoo(zoo, weights, tmp_path):
    tok = tmp_path / "tok"
    res = invoke("encode", zoo.root, "--weights", weights, "--out", tok, "--recon", tmp_path / "recon",
                 "--workers", "0", ok_codes=[EXIT_SOME_FAILED])
    assert f"{len(zoo.bad)} error rows" in res.output
    rows = read_rows(tok / "index.csv")
    check_rows_cover_zoo(zoo, rows)
    invoke("decode", tok, "--weights", weights, "--out", tmp_path / "dec", ok_codes=[EXIT_OK])
    def pngs(folder):
        return sorted(os.path.relpath(p, folder) for p in folder.rglob("*.png"))

    decoded = pngs(tmp_path / "dec")
    assert len(decoded) == len(zoo.good) and NON_UTF8_NAME in decoded
    assert decoded == pngs(tmp_path / "recon")
    # decode pointed at the zoo itself (no index): a usage error.
    res = invoke("decode", zoo.root, "--weights", weights, "--out", tmp_path / "dec2", ok_codes=[EXIT_USAGE])
    assert "index.csv" in res.output


def test_cli_show_over_the_zoo(zoo, weights, tmp_path):
    for name in ("exif_rotated.jpg", NON_UTF8_NAME, "one_pixel.png", "animated.gif"):
        out = tmp_path / f"show_{len(os.listdir(tmp_path))}.png"
        invoke("show", zoo.path(name), "--weights", weights, "--out", out, "--eps", "0.05", ok_codes=[EXIT_OK])
        assert Image.open(out).size[0] > 100
    for name in ("empty.png", "bomb.png", "text.jpg", "truncated.jpg", "broken_link.png", "loop_a.png", "pipe.png"):
        if name not in zoo.bad:
            continue
        res = invoke("show", zoo.path(name), "--weights", weights, "--out", tmp_path / "bad.png",
                     ok_codes=[EXIT_USAGE])
        assert "error:" in res.output
    assert not (tmp_path / "bad.png").exists()


def test_cli_correlate_over_the_zoo(zoo, weights, tmp_path):
    ratings = tmp_path / "ratings.csv"
    with open(ratings, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "rating"])
        for i, name in enumerate(zoo.names):
            w.writerow([zoo.path(name), i])
    per_image = tmp_path / "per_image.csv"
    res = invoke("correlate", "--ratings", ratings, "--weights", weights, "--no-cache", "--bootstrap", "20",
                 "--workers", "0", "--per-image", per_image, "--out", tmp_path / "res.csv",
                 ok_codes=[EXIT_SOME_FAILED])
    assert "could not be scored" in res.output
    # Valid UTF-8 for pandas' defaults; names escaped, and unescaped to the very names.
    scored = pd.read_csv(per_image).assign(path=lambda d: d["path"].map(unescape_path)).to_dict("records")
    # Broken links, loops and the pipe are not files: the ratings loader reports them as missing.
    exists = {n for n in zoo.names if os.path.isfile(zoo.path(n))}
    assert sorted(rel(zoo, r["path"]) for r in scored) == sorted(exists)
    for r in scored:
        assert (r["status"] == "ok") == (rel(zoo, r["path"]) in zoo.good), r


def test_cli_compare_over_the_zoo(zoo, weights, tmp_path):
    res = invoke("compare", zoo.root, "--weights", weights, "--eps", "0.05", "--csv", tmp_path / "cmp.csv",
                 ok_codes=[EXIT_SOME_FAILED])
    assert f"{len(zoo.bad)} images could not be read" in res.output


@pytest.mark.slow
def test_cli_train_over_the_zoo(zoo, tmp_path):
    res = invoke("train", zoo.root, "--out", tmp_path / "run", "--preset", "tiny", "--steps", "2",
                 "--batch-size", "4", "--warmup", "1", ok_codes=[EXIT_OK])
    assert "skipped unreadable training image" in res.output
    assert (tmp_path / "run" / "model.safetensors").is_file()

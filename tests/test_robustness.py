"""Issue #7: bad input and faults. Nothing crashes, nothing is lost, nothing unsafe is loaded.

Every command over the "zoo" of hostile files (tests/zoo.py): bad files become error rows with a
reason, good ones are all scored, one row per file, exit code 1, no traceback. Unsafe weights are
refused, outputs survive disk-full and kills (SIGKILL / SIGINT + --resume), usage errors are one
clear line, and the image reader either returns an image or raises ImageLoadError (fuzzed).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from karl_cli.cli import app
from karl_cli.scoring.complexity import score
from karl_cli.io.rows import RowWriter, read_rows
from karl_cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, UsageError
from karl_cli.io.images import ImageLoadError, discover_images, load_for_model, open_rgb
from karl_cli.io.names import unescape_path

from conftest import make_images
from zoo import NON_UTF8_NAME, _pattern, make_zoo

SETTINGS = settings(max_examples=int(os.environ.get("KARL_FUZZ_EXAMPLES", 150)), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """No line wrapping in the CLI's messages, so the tests can look for whole phrases."""
    from karl_cli import cli

    monkeypatch.setattr(cli.console, "width", 1000)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo") / "zoo")


@pytest.fixture(scope="module")
def weights(tiny_weights):
    return tiny_weights


def invoke(*args, ok_codes=None):
    """Run ``karl ARGS`` in-process; never a traceback, never an exception other than the exit."""
    res = CliRunner().invoke(app, [os.fspath(a) if isinstance(a, Path) else str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if ok_codes is not None:
        assert res.exit_code in ok_codes, (res.exit_code, res.output)
    return res


def rel(zoo, path) -> str:
    return os.path.relpath(str(path), str(zoo.root))


def check_rows_cover_zoo(zoo, rows, eps_count=1):
    """One row per (file, ε); the good ones ok, the bad ones error rows with the expected reason."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(rel(zoo, r["path"]), []).append(r)
    assert sorted(by_name) == zoo.names
    for name, rs in by_name.items():
        assert len(rs) == eps_count, name
        for r in rs:
            if name in zoo.good:
                assert r["status"] == "ok", (name, r.get("error"))
            else:
                assert r["status"] == "error" and r["error"], name
                assert zoo.bad[name].lower() in str(r["error"]).lower(), (name, r["error"])


# --- the image reader ----------------------------------------------------------------------------
def test_zoo_files_read_or_refused_with_reason(zoo):
    found = {rel(zoo, f.path): f for f in discover_images([zoo.root])}
    assert sorted(found) == zoo.names, "one entry per file; folder loops cut, README.txt ignored"
    for name, f in found.items():
        if name in zoo.good:
            assert f.error is None, name
            img = open_rgb(f.path)
            assert img.mode == "RGB" and img.size == zoo.good[name], name
            arr = load_for_model(f.path, 32)
            assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
        else:
            with pytest.raises(ImageLoadError) as info:
                if f.error:
                    raise ImageLoadError(f.error)
                open_rgb(f.path)
            assert zoo.bad[name].lower() in str(info.value).lower(), (name, str(info.value))


def test_zoo_pixels_are_right(zoo):
    a = lambda name: np.asarray(open_rgb(zoo.path(name)), dtype=np.int16)  # noqa: E731
    # EXIF orientation 6: stored 48x24, shown rotated 90° clockwise.
    upright = np.rot90(_pattern(48, 24, 3), k=-1).astype(np.int16)
    assert np.abs(a("exif_rotated.jpg") - upright).mean() < 8
    # Animations: the first frame (red), not the second (blue).
    for name in ("animated.gif", "animated.webp"):
        assert tuple(a(name)[0, 0]) == (255, 0, 0), name
    # Transparency composited on white: palette index 0 is transparent, index 1 is green.
    pal = a("palette_transparent.png")
    assert tuple(pal[0, 0]) == (0, 255, 0) and tuple(pal[0, 15]) == (255, 255, 255)
    assert tuple(a("rgba.png")[5, 5]) == (255, 255, 255)
    # 16-bit and float TIFF keep their gradients; CMYK comes back close to the RGB it was made from.
    g16, f32 = a("gray16.tif"), a("float32.tif")
    assert g16[0, 0, 0] < g16[-1, -1, 0] and f32[0, 0, 0] == 0 and f32[-1, -1, 0] == 255
    assert np.abs(a("cmyk.jpg") - _pattern(40, 30).astype(np.int16)).mean() < 12
    assert tuple(a("one_pixel.png")[0, 0]) == (10, 200, 30)


def test_unreadable_file_is_an_error_row(zoo, tmp_path, monkeypatch, tiny_model):
    """chmod 000 as a non-root user; simulated with a PermissionError everywhere (root reads anyway)."""
    good = tmp_path / "locked.png"
    Image.fromarray(_pattern(8, 8)).save(good)
    real_open = Image.open

    def deny(fp, *a, **k):
        if os.fspath(fp) == str(good):
            raise PermissionError(errno.EACCES, "Permission denied", str(good))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(ImageLoadError, match="permission denied"):
        open_rgb(good)
    (row,) = score([good], tiny_model, 0.05)
    assert row["status"] == "error" and row["error"] == "permission denied"


def test_chmod_000_blocks_reading(zoo):
    if "no_permission.png" in zoo.skipped:
        pytest.skip(zoo.skipped["no_permission.png"])
    with pytest.raises(ImageLoadError, match="permission denied"):
        open_rgb(zoo.path("no_permission.png"))


def test_bytes_paths_are_accepted(zoo):
    raw = os.fsencode(zoo.path(NON_UTF8_NAME))
    assert b"caf\xe9.png" in raw
    assert open_rgb(raw).size == (40, 30)
    (f,) = discover_images([raw])
    assert f.path == zoo.path(NON_UTF8_NAME) and f.error is None


def test_score_takes_bytes_paths(zoo, tiny_model):
    (row,) = score(os.fsencode(zoo.path(NON_UTF8_NAME)), tiny_model, 0.05)
    assert row["status"] == "ok" and row["path"] == zoo.path(NON_UTF8_NAME)


# --- property-based fuzzing of the reader --------------------------------------------------------
MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "LA", "YCbCr"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def _reader_contract(path) -> None:
    """open_rgb/load_for_model either give an upright RGB image / (R, R, 3) uint8, or ImageLoadError."""
    try:
        img = open_rgb(path)
    except ImageLoadError as e:
        assert str(e)
        return
    assert img.mode == "RGB" and img.size[0] >= 1 and img.size[1] >= 1
    arr = load_for_model(path, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@SETTINGS
@given(head=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
                             b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
       body=st.binary(max_size=1024), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".bmp"]))
def test_fuzz_random_bytes(fuzz_dir, head, body, suffix):
    p = fuzz_dir / f"bytes{suffix}"
    p.write_bytes(head + body)
    _reader_contract(p)


@SETTINGS
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS), w=st.integers(1, 64), h=st.integers(1, 64),
       seed=st.integers(0, 2**16), cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=3))
def test_fuzz_odd_images(fuzz_dir, mode, fmt, w, h, seed, cut, flips):
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "F":
        img = Image.fromarray((rng.standard_normal((h, w)) * 1000).astype(np.float32), "F")
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    elif mode == "P":
        img = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    else:
        img = base.convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError, TypeError):   # this format cannot hold this mode
        buf = io.BytesIO()
        base.save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    for where, byte in flips:                                # corrupt a few bytes
        data[min(len(data) - 1, int(where * len(data)))] = byte
    if cut is not None:                                      # truncate
        data = data[: int(cut * len(data))]
    p = fuzz_dir / f"odd.{fmt.lower()}"
    p.write_bytes(bytes(data))
    _reader_contract(p)


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


def test_cli_train_over_the_zoo(zoo, tmp_path):
    res = invoke("train", zoo.root, "--out", tmp_path / "run", "--preset", "tiny", "--steps", "2",
                 "--batch-size", "4", "--warmup", "1", ok_codes=[EXIT_OK])
    assert "skipped unreadable training image" in res.output
    assert (tmp_path / "run" / "model.safetensors").is_file()


# --- weights: only safetensors + config, checked ----------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


WEIGHT_COMMANDS = {
    "complexity": lambda d, w: ["complexity", d / "imgs", "--weights", w, "--csv", d / "o.csv", "--workers", "0"],
    "encode": lambda d, w: ["encode", d / "imgs", "--weights", w, "--out", d / "tok", "--workers", "0"],
    "decode": lambda d, w: ["decode", d / "tok", "--weights", w, "--out", d / "dec"],
    "show": lambda d, w: ["show", d / "imgs" / "img_000.png", "--weights", w, "--out", d / "s.png"],
    "correlate": lambda d, w: ["correlate", "--ratings", d / "ratings.csv", "--weights", w, "--no-cache"],
    "compare": lambda d, w: ["compare", d / "imgs", "--weights", w],
}


@pytest.fixture
def job(tmp_path):
    make_images(tmp_path / "imgs", 3)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "index.csv").write_text("path,kc,shard,offset,eps,model_id,status,error,name\n")
    (tmp_path / "ratings.csv").write_text("path,rating\n" + "".join(f"imgs/img_00{i}.png,{i}\n" for i in range(3)))
    return tmp_path


@pytest.mark.parametrize("command", sorted(WEIGHT_COMMANDS))
def test_pickled_weights_are_refused_and_never_run(job, command):
    marker = job / "pwned"
    torch.save(_Evil(marker), job / "evil.pt")
    res = invoke(*WEIGHT_COMMANDS[command](job, job / "evil.pt"), ok_codes=[EXIT_FAILED])
    assert "pickle" in res.output and "refused" in res.output
    assert not marker.exists()


def test_bad_weight_directories_are_refused(job, weights):
    import shutil

    cases = {}
    d = job / "only_pickle"
    shutil.copytree(weights, d)
    (d / "model.safetensors").unlink()
    torch.save(_Evil(job / "pwned"), d / "model.pt")
    cases[d] = "pickles are refused"
    d = job / "wrong_shapes"
    shutil.copytree(weights, d)
    state = {k: torch.zeros(3) for k in ("a", "b")}
    save_file(state, str(d / "model.safetensors"))
    cases[d] = "does not match"
    d = job / "other_config"
    shutil.copytree(weights, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["width"] = cfg["width"] * 2
    (d / "config.json").write_text(json.dumps(cfg))
    cases[d] = "wrong shape"
    d = job / "bad_config"
    shutil.copytree(weights, d)
    (d / "config.json").write_text('{"width": "wide"}')
    cases[d] = "config.json"
    d = job / "garbage"
    shutil.copytree(weights, d)
    (d / "model.safetensors").write_bytes(os.urandom(256))
    cases[d] = "not a valid safetensors"
    for d, why in cases.items():
        res = invoke(*WEIGHT_COMMANDS["complexity"](job, d), ok_codes=[EXIT_FAILED])
        assert why in res.output, (d.name, res.output)
    assert not (job / "pwned").exists()
    res = invoke(*WEIGHT_COMMANDS["complexity"](job, job / "nope"), ok_codes=[EXIT_USAGE])
    assert "does not exist" in res.output


def test_train_resume_refuses_a_foreign_checkpoint(job):
    run = job / "run"
    run.mkdir()
    torch.save(_Evil(job / "pwned"), run / "checkpoint.pt")
    res = invoke("train", job / "imgs", "--out", run, "--resume", ok_codes=[EXIT_FAILED])
    assert "not a readable karl checkpoint" in res.output
    assert not (job / "pwned").exists()


# --- usage errors: one clear line, exit 2 ----------------------------------------------------------
def test_usage_errors_are_one_clear_line(job, weights):
    w = ["--weights", weights]
    imgs, csv_out = job / "imgs", ["--csv", job / "u.csv"]
    (job / "empty").mkdir()
    cases = [
        (["complexity", job / "missing", *w, *csv_out], "no such file or folder"),
        (["complexity", job / "empty", *w, *csv_out], "no images found"),
        (["encode", job / "empty", *w, "--out", job / "t2"], "no images found"),
        (["compare", job / "empty", *w], "no images found"),
        (["train", job / "empty", "--out", job / "r", "--preset", "tiny"], "no images found"),
        (["show", job / "missing.png", *w, "--out", job / "s.png"], "no such file"),
        (["correlate", "--ratings", job / "missing.csv", *w], "no such ratings file"),
        (["complexity", imgs, *w, *csv_out, "--shard", "4/4"], "shard"),
        (["complexity", imgs, *w, *csv_out, "--method", "magic"], "unknown method"),
        (["complexity", imgs, *w, *csv_out, "--device", "tpu"], "unknown device"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "0"], "--steps"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--batch-size", "0"],
         "--batch-size"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--lr", "nan"], "--lr"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--lr", "-1"], "--lr"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--epochs", "0"], "--epochs"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--checkpoint-every", "0"],
         "--checkpoint-every"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--warmup", "-1"], "--warmup"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--batch-size", "64"],
         "fewer than one batch"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--token-step", "5"],
         "multiple of token_step"),
        (["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "2", "--max-tokens", "400"],
         "code needs max_tokens x latent_dim"),
    ]
    for bad_eps in ("0", "-0.1", "nan", "inf", "-inf"):
        cases += [(["complexity", imgs, *w, *csv_out, "--eps", bad_eps], "ε must be"),
                  (["encode", imgs, *w, "--out", job / "t3", "--eps", bad_eps], "ε must be"),
                  (["show", imgs / "img_000.png", *w, "--out", job / "s.png", "--eps", bad_eps], "ε must be"),
                  (["correlate", "--ratings", job / "ratings.csv", *w, "--eps", bad_eps], "ε must be"),
                  (["compare", imgs, *w, "--eps", bad_eps], "ε must be")]
    if not torch.cuda.is_available():
        for cmd in (["complexity", imgs, *w, *csv_out], ["encode", imgs, *w, "--out", job / "t4"],
                    ["decode", job / "tok", *w, "--out", job / "d"], ["show", imgs / "img_000.png", *w, "--out",
                                                                       job / "s.png"],
                    ["correlate", "--ratings", job / "ratings.csv", *w], ["compare", imgs, *w],
                    ["train", imgs, "--out", job / "r", "--preset", "tiny", "--steps", "1", "--batch-size", "2"]):
            cases.append(([*cmd, "--device", "cuda"], "CUDA is not available"))
    for args, words in cases:
        res = invoke(*args)
        assert res.exit_code == EXIT_USAGE, (args, res.exit_code, res.output)
        assert words in res.output, (args, res.output)
    assert not (job / "u.csv").exists() and not (job / "r" / "checkpoint.pt").exists()


def test_debug_shows_the_exception(job, weights):
    res = CliRunner().invoke(app, ["--debug", "complexity", str(job / "imgs"), "--weights", str(weights), "--csv",
                                   str(job / "o.csv"), "--eps", "0"])
    assert isinstance(res.exception, UsageError)


# --- disk full: exit 3, a clear message, the old file intact -------------------------------------------
def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail", ["os.replace", "os.fsync"])
def test_disk_full_keeps_the_old_output(job, weights, monkeypatch, fail):
    out = job / "o.csv"
    out.write_text("old,output\n1,2\n")
    monkeypatch.setattr(fail, _enospc)
    res = invoke("complexity", job / "imgs", "--weights", weights, "--csv", out, "--workers", "0",
                 ok_codes=[EXIT_FAILED])
    text = res.output
    assert "disk full" in text and "o.csv" in text
    assert out.read_text() == "old,output\n1,2\n"
    assert sorted(p.name for p in job.iterdir() if p.name.endswith(".tmp")) == []


def test_disk_full_elsewhere(job, weights, monkeypatch):
    (job / "tok" / "index.csv").write_text("old index\n")
    (job / "res.csv").write_text("old results\n")
    monkeypatch.setattr("os.replace", _enospc)
    for args in (["encode", job / "imgs", "--weights", weights, "--out", job / "tok", "--workers", "0"],
                 ["correlate", "--ratings", job / "ratings.csv", "--weights", weights, "--no-cache", "--out",
                  job / "res.csv", "--bootstrap", "0", "--workers", "0"],
                 ["train", job / "imgs", "--out", job / "run", "--preset", "tiny", "--steps", "1",
                  "--batch-size", "2"]):
        res = invoke(*args, ok_codes=[EXIT_FAILED])
        assert "disk full" in res.output, res.output
    assert (job / "tok" / "index.csv").read_text() == "old index\n"
    assert (job / "res.csv").read_text() == "old results\n"
    assert not list(job.rglob("*.tmp"))


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_row_writer_discards_after_a_failed_write(tmp_path, suffix):
    out = tmp_path / f"o{suffix}"
    out.write_text("old\n")

    class Full:
        def __getattr__(self, name):
            return _enospc

    with pytest.raises(OSError, match="disk full"):
        with RowWriter(out, ["path", "eps"], checkpoint_s=0) as w:
            w.write({"path": "a", "eps": 0.1})
            w._f, w._csv = Full(), Full()      # the disk fills up: every write fails from now on
            w.write({"path": "b", "eps": 0.1})
    assert out.read_text() != "old\n" and [r["path"] for r in read_rows(out)] == ["a"], "the last checkpoint"
    out.write_text("old\n")
    with pytest.raises(OSError, match="disk full"):
        with RowWriter(out, ["path", "eps"]) as w:
            w.write({"path": "a", "eps": 0.1})
            w._f, w._csv = Full(), Full()
            w.write({"path": "b", "eps": 0.1})
    assert out.read_text() == "old\n" and not list(tmp_path.glob("*.tmp"))


def test_row_writer_checkpoints_are_complete_files(tmp_path):
    for fmt in ("csv", "json"):
        out = tmp_path / f"o.{fmt}"
        with RowWriter(out, ["path", "eps"], checkpoint_s=0) as w:
            for i in range(3):
                w.write({"path": f"p{i}", "eps": 0.05})
                assert [r["path"] for r in read_rows(out)] == [f"p{k}" for k in range(i + 1)]
        assert w.checkpoints == 3 and len(read_rows(out)) == 3


# --- kills: the output stays parsable, --resume finishes without duplicates or gaps --------------------
SLOW_KARL = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import karl_cli.scoring.complexity as c
    real = c.image_batches
    def slow(*a, **k):                      # a slow model, so that a kill lands mid-run
        for batch in real(*a, **k):
            time.sleep(0.3)
            yield batch
    c.image_batches = slow
    from karl_cli.cli import main
    sys.argv = ["karl"] + sys.argv[1:]
    main()
""")


def _start(tmp_path, args):
    script = tmp_path / "slow_karl.py"
    script.write_text(SLOW_KARL)
    env = dict(os.environ, KARL_CHECKPOINT_SECONDS="0.2", OMP_NUM_THREADS="1")
    # A job started in the background (``cmd &``) inherits SIGINT ignored, and Python then installs
    # no KeyboardInterrupt handler: restore the default so the test sees what a terminal's Ctrl-C does.
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_rows(proc, out, at_least, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read().decode()
        if out.exists() and len(read_rows(out)) >= at_least:
            return
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no partial output appeared")


def _keys(rows):
    return [(r["path"], r["eps"]) for r in rows]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_without_duplicates(tmp_path, weights, sig):
    n = 60
    imgs = make_images(tmp_path / "imgs", n)
    out = tmp_path / "out.csv"
    common = ["--weights", weights, "--csv", out, "--eps", "0.05", "--eps", "0.1", "--workers", "0",
              "--device", "cpu"]
    # A previous run over the first 10 images: its rows must survive everything below.
    invoke("complexity", *imgs[:10], *common, ok_codes=[EXIT_OK])
    previous = read_rows(out)
    assert len(previous) == 20
    proc = _start(tmp_path, ["complexity", tmp_path / "imgs", *common, "--batch-size", "2", "--resume"])
    _wait_for_rows(proc, out, at_least=40)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = err.decode(errors="replace")
    assert "Traceback" not in err
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == EXIT_INTERRUPTED and "interrupted" in err
    partial = read_rows(out)                          # parsable, whole rows only
    assert 40 <= len(partial) < 2 * n and len(set(_keys(partial))) == len(partial)
    assert partial[:20] == previous
    assert all(r["status"] == "ok" and r["kc"] is not None for r in partial)
    res = invoke("complexity", tmp_path / "imgs", *common, "--resume", ok_codes=[EXIT_OK])
    assert f"{len(partial)} kept from before" in res.output
    final = read_rows(out)
    assert len(final) == 2 * n and len(set(_keys(final))) == 2 * n
    assert {r["path"] for r in final} == {str(p) for p in imgs}
    assert final[: len(partial)] == partial


STALLED_KARL = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    import karl_cli.scoring.complexity as c
    real = c.image_batches
    def stall_after_first(*a, **k):         # the model "works" on the second batch forever
        it = real(*a, **k)
        yield next(it)
        print("stalled", flush=True)
        time.sleep(3600)
    c.image_batches = stall_after_first
    from karl_cli.cli import main
    sys.argv = ["karl"] + sys.argv[1:]
    main()
""")


def test_sigkill_loses_at_most_the_last_checkpoint_interval(tmp_path, weights):
    """Issue 22.2: rows are published on a clock, not when the next row arrives. After the first batch
    the process stalls (a long second batch); within the checkpoint interval every finished row is on
    disk, a SIGKILL then loses none of them, and --resume finishes the job with each row once."""
    imgs = make_images(tmp_path / "imgs", 8)
    out = tmp_path / "out.csv"
    common = ["--weights", weights, "--csv", out, "--workers", "0", "--device", "cpu"]
    script = tmp_path / "stalled_karl.py"
    script.write_text(STALLED_KARL)
    every = 0.5
    env = dict(os.environ, KARL_CHECKPOINT_SECONDS=str(every), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), "complexity", str(tmp_path / "imgs"), *map(str, common),
                             "--batch-size", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"stalled", proc.stderr.read().decode()
        stalled = time.monotonic()
        rows = []
        while time.monotonic() - stalled < every + 20:      # generous: the machine may be busy
            rows = read_rows(out) if out.exists() else []
            if len(rows) >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    rows = read_rows(out) if out.exists() else []
    assert len(rows) == 4, "every row of the finished batch is on disk before the next batch ends"
    assert all(r["status"] == "ok" for r in rows)
    res = invoke("complexity", tmp_path / "imgs", *common, "--resume", ok_codes=[EXIT_OK])
    assert "4 kept from before" in res.output
    final = read_rows(out)
    assert final[:4] == rows and sorted(r["path"] for r in final) == sorted(map(str, imgs))


def test_decode_refuses_damaged_token_folders(tmp_path, weights):
    make_images(tmp_path / "imgs", 4)
    tok = tmp_path / "tok"
    invoke("encode", tmp_path / "imgs", "--weights", weights, "--out", tok, "--workers", "0", ok_codes=[EXIT_OK])
    index = (tok / "index.csv").read_text()
    shard = (tok / "tokens-00000.safetensors").read_bytes()

    def with_row(**change):
        rows = list(csv.DictReader(io.StringIO(index)))
        rows[1].update(change)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().encode()

    damage = [("index.csv", with_row(shard="../../elsewhere.safetensors")), ("index.csv", with_row(offset="x")),
              ("index.csv", with_row(offset="999999")), ("index.csv", with_row(kc="-3")),
              ("index.csv", with_row(name="../../escaped.png")), ("index.csv", with_row(model_id="0123456789ab")),
              ("index.csv", b"\x00garbage\x00"), ("tokens-00000.safetensors", shard[: len(shard) // 2]),
              ("tokens-00000.safetensors", b"not safetensors")]
    for name, bad in damage:
        (tok / name).write_bytes(bad)
        res = invoke("decode", tok, "--weights", weights, "--out", tmp_path / "dec", ok_codes=[EXIT_USAGE])
        assert "error:" in res.output
        (tok / "index.csv").write_text(index)
        (tok / "tokens-00000.safetensors").write_bytes(shard)
    assert not list(tmp_path.rglob("escaped.png"))
    invoke("decode", tok, "--weights", weights, "--out", tmp_path / "dec", ok_codes=[EXIT_OK])

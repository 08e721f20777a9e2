"""Issue #17: every image a user means is read as the user sees it, and every output reads back.

Formats a folder scan finds, hidden files, links, pixel scaling by declared bit depth, colour
profiles, the pixel limit, non-UTF-8 names in every output, ratings CSV quirks, the pooled row of
``karl correlate`` next to a user category named ``all``, and tables off a terminal.
"""
from __future__ import annotations

import csv
import io
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageCms
from typer.testing import CliRunner

from karl_cli.analysis.correlate import _results_frame
from karl_cli.cli import app
from karl_cli.errors import EXIT_OK, EXIT_SOME_FAILED
from karl_cli.io.images import (DEFAULT_MAX_PIXELS, ImageLoadError, discover_images, image_suffixes, load_for_model,
                                max_pixels, open_rgb, set_max_pixels)
from karl_cli.io.names import escape_path, unescape_path
from karl_cli.io.savoias import load_ratings_csv, load_savoias
from karl_cli.io.rows import read_rows

from savoias_fixture import make_savoias
from zoo import bomb_png


def invoke(*args):
    res = CliRunner().invoke(app, [os.fspath(a) if isinstance(a, Path) else str(a) for a in args])
    assert "Traceback" not in res.output, res.output
    return res


def _photo(seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
    return Image.fromarray(a).resize((size, size), Image.NEAREST)


@pytest.fixture(autouse=True)
def default_limit():
    yield
    set_max_pixels(None)


# --- 3: bit depth ----------------------------------------------------------------------------------
def test_16bit_images_are_scaled_by_their_depth_not_their_maximum(tmp_path):
    """Two 16-bit greys differing in one pixel (211 vs 256) read the same; the old rule divided the
    first by 255 (max <= 255) and the second by 65535."""
    arrays = []
    for v in (211, 256):
        a = np.full((16, 16), 100, np.uint16)
        a[0, 0] = v
        Image.fromarray(a).save(tmp_path / f"g{v}.png")
        arrays.append(load_for_model(tmp_path / f"g{v}.png", 16).astype(int))
    assert np.abs(arrays[0] - arrays[1]).max() <= 1
    assert arrays[0].max() <= 1                   # 100 / 65535 of full scale is black, not mid grey
    full = np.full((4, 4), 65535, np.uint16)
    Image.fromarray(full).save(tmp_path / "white16.png")
    assert np.asarray(open_rgb(tmp_path / "white16.png")).min() == 255


def test_float_images_read_as_0_to_1_never_stretched(tmp_path):
    a = np.array([[0.2, 0.4], [0.3, 0.25]], np.float32)
    Image.fromarray(a, "F").save(tmp_path / "low.tif")
    got = np.asarray(open_rgb(tmp_path / "low.tif"))[..., 0]
    assert got.tolist() == [[51, 102], [77, 64]]            # x * 255, not (x - min) / (max - min)
    b = np.array([[-1.0, 0.5], [1.0005, np.nan]], np.float32)
    Image.fromarray(b, "F").save(tmp_path / "wide.tif")
    assert np.asarray(open_rgb(tmp_path / "wide.tif"))[..., 0].tolist() == [[0, 128], [255, 0]]


def test_float_rgb_tiffs_are_read_not_called_corrupt(tmp_path):
    """Issue 28.10: float32/float16/float64 RGB TIFFs (interleaved or planar, + alpha) are read on the
    0-1 rule; whole-number samples above 1 are 8- or 16-bit data (divided by 255 or 65535); other
    values above 1 are refused naming the maximum (not clipped to white, KC 1); a layout no reader
    handles says 'unsupported', never 'corrupt'."""
    tifffile = pytest.importorskip("tifffile")
    rng = np.random.default_rng(0)
    a = rng.random((12, 10, 3))
    want = (a * 255 + 0.5).astype(np.uint8)
    rgb = {"photometric": "rgb"}
    for name, arr, kw in (("f32.tif", a.astype(np.float32), rgb), ("f64.tif", a, rgb),
                          ("planar.tif", np.moveaxis(a.astype(np.float32), 2, 0), {"planarconfig": "separate",
                                                                                   "photometric": "rgb"})):
        tifffile.imwrite(tmp_path / name, arr, **kw)
        assert np.array_equal(np.asarray(open_rgb(tmp_path / name)), want), name
    tifffile.imwrite(tmp_path / "f16.tif", a.astype(np.float16), **rgb)
    assert np.abs(np.asarray(open_rgb(tmp_path / "f16.tif")).astype(int) - want).max() <= 1
    rgba = np.concatenate([a, np.zeros((12, 10, 1))], axis=2).astype(np.float32)   # fully transparent
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.asarray(open_rgb(tmp_path / "rgba.tif")).min() == 255                 # on white
    tifffile.imwrite(tmp_path / "u8f.tif", np.round(a * 255).astype(np.float32), **rgb)   # 8-bit as float
    assert np.array_equal(np.asarray(open_rgb(tmp_path / "u8f.tif")), np.round(a * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "u16f.tif", np.full((4, 4, 3), 65535.0, np.float32), **rgb)
    assert np.asarray(open_rgb(tmp_path / "u16f.tif")).min() == 255
    tifffile.imwrite(tmp_path / "hdr.tif", (a * 4).astype(np.float32), **rgb)
    with pytest.raises(ImageLoadError, match=r"float samples reach 3\.9.*rescale it to 0-1"):
        open_rgb(tmp_path / "hdr.tif")
    tifffile.imwrite(tmp_path / "cmyk.tif", rng.random((4, 4, 4)).astype(np.float32), photometric="separated")
    with pytest.raises(ImageLoadError, match="unsupported TIFF layout.*SEPARATED"):
        open_rgb(tmp_path / "cmyk.tif")


def test_heic_without_a_decoder_names_the_missing_plugin(tmp_path):
    """Issue 28.10: a HEIC file is not 'not an image': karl says pillow-heif is missing."""
    if ".heic" in image_suffixes():
        pytest.skip("a HEIF decoder is installed here")
    p = tmp_path / "IMG_0001.HEIC"
    p.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    with pytest.raises(ImageLoadError, match="HEIF/HEIC image, and no HEIF decoder is installed: pip install pillow-heif"):
        open_rgb(p)
    (tmp_path / "b.heif").write_bytes(p.read_bytes())
    (tmp_path / "notes.txt").write_text("x")
    scan = discover_images([tmp_path])   # a folder scan says why it skipped them
    assert scan.other == 3 and scan.heif == 2
    assert "3 non-image files (2 HEIF/HEIC: no decoder installed, pip install pillow-heif)" in scan.summary()


# --- 4: formats -------------------------------------------------------------------------------------
def test_folder_scan_finds_every_readable_format_and_counts_the_rest(tmp_path):
    img = _photo(0)
    saved = {"a.jfif": "JPEG", "b.jpe": "JPEG", "c.tga": "TGA", "d.ppm": "PPM", "e.pgm": "PPM", "f.qoi": "QOI",
             "g.JPG": "JPEG", "h.sgi": "SGI", "i.pcx": "PCX"}
    if ".avif" in image_suffixes():
        saved["j.avif"] = "AVIF"
    for name, fmt in saved.items():
        (img.convert("L") if name.endswith(".pgm") else img).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "data.csv").write_text("a,b\n")
    scan = discover_images([tmp_path])
    assert sorted(os.path.basename(f.path) for f in scan) == sorted(saved)
    assert all(f.error is None for f in scan) and scan.other == 2 and "2 non-image files" in scan.summary()
    for f in scan:
        assert open_rgb(f.path).size == (24, 24)


def test_folder_of_jfif_files_is_scored(tmp_path, tiny_weights):
    for i in range(2):
        _photo(i).save(tmp_path / f"{i}.jfif", format="JPEG")
    (tmp_path / "readme.md").write_text("x")
    res = invoke("complexity", tmp_path, "--weights", tiny_weights, "--csv", tmp_path / "out.csv", "--workers", "0")
    assert res.exit_code == EXIT_OK, res.output
    assert len(read_rows(tmp_path / "out.csv")) == 2 and "skipped 1 non-image file" in res.output


# --- 6: hidden files ----------------------------------------------------------------------------------
def _with_hidden(root: Path) -> Path:
    root.mkdir()
    _photo(0).save(root / "a.jpg")
    (root / ".ipynb_checkpoints").mkdir()
    _photo(0).save(root / ".ipynb_checkpoints" / "a-checkpoint.jpg")
    (root / "._a.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble")   # macOS resource fork: not a JPEG
    return root


def test_hidden_files_and_folders_are_skipped_and_counted(tmp_path, tiny_weights):
    root = _with_hidden(tmp_path / "imgs")
    scan = discover_images([root])
    assert [os.path.basename(f.path) for f in scan] == ["a.jpg"] and scan.hidden == 2
    assert "2 hidden files or folders" in scan.summary()
    assert len(discover_images([root], include_hidden=True)) == 3
    assert discover_images([root / "._a.jpg"])[0].path == str(root / "._a.jpg")   # named: taken
    out = tmp_path / "out.csv"
    res = invoke("complexity", root, "--weights", tiny_weights, "--csv", out, "--workers", "0")
    assert res.exit_code == EXIT_OK and "skipped 2 hidden files or folders" in res.output
    assert len(read_rows(out)) == 1
    res = invoke("complexity", root, "--weights", tiny_weights, "--csv", out, "--workers", "0", "--include-hidden")
    assert res.exit_code == EXIT_SOME_FAILED and len(read_rows(out)) == 3   # ._a.jpg is an error row


def test_savoias_loader_skips_hidden_the_same_way(tmp_path):
    root = make_savoias(tmp_path / "sav")
    art = next(p for p in (root / "Images").iterdir() if p.name == "Art")
    (art / ".ipynb_checkpoints").mkdir()
    _photo(1).save(art / ".ipynb_checkpoints" / "1-checkpoint.jpg")
    _photo(1).save(art / ".1.jpg")
    (root / "Images" / ".cache").mkdir()
    _photo(2).save(root / "Images" / ".cache" / "x.jpg")
    rated = load_savoias(root)
    assert any("skipped 3 hidden" in n for n in rated.notes), rated.notes
    assert not any("/." in p for p in list(rated.table.path) + rated.unrated)
    assert any(".cache" in p for p in load_savoias(root, include_hidden=True).unrated)


# --- 9: links -----------------------------------------------------------------------------------------
def test_a_file_reached_through_links_is_listed_once_under_its_first_path(tmp_path):
    real = tmp_path / "photos"
    real.mkdir()
    _photo(0).save(real / "x.png")
    os.symlink(real, tmp_path / "z_link")
    os.symlink(real, tmp_path / "b_link")
    os.symlink(real / "x.png", tmp_path / "y.png")
    want = str(tmp_path / "b_link" / "x.png")          # first in component order: b_link < photos < y.png < z_link
    for tops in ([tmp_path], [tmp_path / "z_link", tmp_path], [tmp_path / "photos", tmp_path / "b_link"]):
        assert [f.path for f in discover_images(tops)] == [want], tops   # whatever order the walk takes
    assert discover_images([tmp_path]).aliases == 3


# --- 7: colour profiles --------------------------------------------------------------------------------
def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(x) + _s15(y) + _s15(z)


def adobe_rgb_profile() -> bytes:
    """A minimal ICC v2 matrix/TRC display profile with the Adobe RGB (1998) primaries (D50-adapted
    colorants as published in Adobe's profile) and gamma 563/256: a wide-gamut RGB space."""
    desc_text = b"karl test wide-gamut RGB\0"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(desc_text)) + desc_text + struct.pack(">II", 0, 0)
            + struct.pack(">HB", 0, 0) + b"\0" * 67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 563) + b"\0\0"
    tags = [(b"desc", desc), (b"wtpt", _xyz(0.9642, 1.0, 0.8249)), (b"rXYZ", _xyz(0.60974, 0.31111, 0.01947)),
            (b"gXYZ", _xyz(0.20528, 0.62567, 0.06087)), (b"bXYZ", _xyz(0.14919, 0.06322, 0.74457)),
            (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve), (b"cprt", b"text\0\0\0\0no copyright\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        body += b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_embedded_profile_is_converted_to_srgb(tmp_path, fmt):
    rng = np.random.default_rng(3)
    original = Image.fromarray(rng.integers(20, 236, (32, 32, 3), dtype=np.uint8))
    wide = adobe_rgb_profile()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    encoded = ImageCms.profileToProfile(original, srgb, ImageCms.ImageCmsProfile(io.BytesIO(wide)), outputMode="RGB")
    raw_gap = np.abs(np.asarray(encoded, int) - np.asarray(original, int)).mean()
    assert raw_gap > 5, "the wide-gamut numbers differ from the sRGB ones (else the test shows nothing)"
    path = tmp_path / f"wide.{fmt.lower()}"
    encoded.save(path, format=fmt, icc_profile=wide)
    seen = np.asarray(open_rgb(path), int)
    err = np.abs(seen - np.asarray(original, int))
    assert err.mean() < 0.5 and err.max() <= 6, (err.mean(), err.max())   # 8-bit rounding in the wider space
    # The same with transparency: colour converted, alpha composited as before.
    rgba = encoded.convert("RGBA")
    rgba.save(tmp_path / "wide_alpha.png", icc_profile=wide)
    assert np.abs(np.asarray(open_rgb(tmp_path / "wide_alpha.png"), int) - np.asarray(original, int)).mean() < 1.0


def test_profile_that_does_not_fit_is_ignored(tmp_path):
    grey = Image.new("L", (8, 8), 77)
    grey.save(tmp_path / "g.png", icc_profile=adobe_rgb_profile())   # an RGB profile on grey pixels
    assert np.asarray(open_rgb(tmp_path / "g.png"))[0, 0].tolist() == [77, 77, 77]
    rgb = Image.new("RGB", (8, 8), (10, 20, 30))
    rgb.save(tmp_path / "broken.png", icc_profile=b"not a profile at all")
    assert np.asarray(open_rgb(tmp_path / "broken.png"))[0, 0].tolist() == [10, 20, 30]


# --- 9: the pixel limit --------------------------------------------------------------------------------
def test_max_pixels_lowers_and_raises_the_limit(tmp_path, tiny_weights):
    _photo(0, 100).save(tmp_path / "p.png")
    assert max_pixels() == DEFAULT_MAX_PIXELS
    with pytest.raises(ImageLoadError, match="too large"):
        open_rgb(tmp_path / "p.png", max_pixels=5000)
    (tmp_path / "huge.png").write_bytes(bomb_png(20_000, 10_000))    # 200 Mpx: over 2x Pillow's own limit
    with pytest.raises(ImageLoadError, match="bomb|too large"):
        open_rgb(tmp_path / "huge.png")
    set_max_pixels(250_000_000)
    with pytest.raises(ImageLoadError) as info:    # allowed now: only its fake pixel data fails
        open_rgb(tmp_path / "huge.png")
    assert "bomb" not in str(info.value) and "too large" not in str(info.value)
    assert Image.MAX_IMAGE_PIXELS != 250_000_000     # Pillow's global is left as it was
    with pytest.raises(ValueError):
        set_max_pixels(0)
    out = tmp_path / "o.csv"
    res = invoke("complexity", tmp_path / "p.png", "--weights", tiny_weights, "--csv", out, "--max-pixels", "5000",
                 "--workers", "0")
    assert res.exit_code == EXIT_SOME_FAILED and "too large" in read_rows(out)[0]["error"]
    res = invoke("complexity", tmp_path / "p.png", "--weights", tiny_weights, "--csv", out, "--max-pixels", "10000",
                 "--workers", "1")                                       # worker processes get the limit too
    assert res.exit_code == EXIT_OK and read_rows(out)[0]["status"] == "ok"
    assert max_pixels() == 10_000


# --- 5: non-UTF-8 names --------------------------------------------------------------------------------
def test_escape_round_trips_every_name():
    names = ["plain/a.png", os.fsdecode(b"caf\xe9.png"), "back\\slash.png", "caf\\xe9.png", "x\\\\y",
             os.fsdecode(b"\xff\\xff"), "日本/画像.png"]
    escaped = [escape_path(n) for n in names]
    assert [unescape_path(e) for e in escaped] == names
    assert len(set(escaped)) == len(names)         # the literal "caf\xe9.png" and the byte name differ
    for e in escaped:
        e.encode("utf-8")
    assert escape_path("plain/a.png") == "plain/a.png" and escape_path(names[1]) == "caf\\xe9.png"


def test_odd_names_in_every_output_read_with_pandas_and_resume(tmp_path, tiny_weights):
    folder = tmp_path / "imgs"
    folder.mkdir()
    byte_name = os.fsdecode(b"caf\xe9.png")
    for i, name in enumerate([byte_name, "caf\\xe9.png", "plain.png"]):
        _photo(i).save(folder / name)
    out, out_json = tmp_path / "kc.csv", tmp_path / "kc.json"
    res = invoke("complexity", folder, "--weights", tiny_weights, "--csv", out, "--json", out_json, "--workers", "0")
    assert res.exit_code == EXIT_OK, res.output
    for df in (pd.read_csv(out), pd.read_json(out_json)):
        assert sorted(df.path.map(unescape_path)) == sorted(str(folder / n) for n in os.listdir(folder))
    res = invoke("complexity", folder, "--weights", tiny_weights, "--csv", out, "--workers", "0", "--resume")
    assert "wrote 0 new rows" in res.output and len(read_rows(out)) == 3
    tok = tmp_path / "tok"
    res = invoke("encode", folder, "--weights", tiny_weights, "--out", tok, "--workers", "0")
    assert res.exit_code == EXIT_OK
    assert len(pd.read_csv(tok / "index.csv")) == 3
    res = invoke("decode", tok, "--weights", tiny_weights, "--out", tmp_path / "dec")
    assert res.exit_code == EXIT_OK and sorted(os.listdir(tmp_path / "dec")) == sorted(
        os.path.splitext(n)[0] + ".png" for n in os.listdir(folder))
    res = invoke("compare", folder, "--weights", tiny_weights, "--eps", "0.1", "--csv", tmp_path / "cmp.csv")
    assert res.exit_code == EXIT_OK and len(pd.read_csv(tmp_path / "cmp.csv")) > 0


# --- 9: ratings CSV quirks ---------------------------------------------------------------------------------
def test_ratings_csv_missing_markers_and_windows_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(6):
        _photo(i).save(tmp_path / "sub" / f"{i}.png")
    rows = [("sub\\0.png", "10"), ("sub/1.png", "NA"), ("sub/2.png", "n/a"), ("sub/3.png", "NaN"),
            ("sub/4.png", ""), ("sub\\5.png", "30"), ("C:\\data\\7.png", "5")]
    with open(tmp_path / "r.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "rating"])
        w.writerows(rows)
    rated = load_ratings_csv(tmp_path / "r.csv")
    assert sorted(os.path.basename(p) for p in rated.table.path) == ["0.png", "5.png"]
    assert list(rated.missing.rating) == [5.0]
    text = " ".join(rated.notes)
    assert "4 rows with an empty or missing rating" in text
    assert "read with \\ as the folder separator" in text and "absolute Windows paths" in text
    with open(tmp_path / "bad.csv", "w", encoding="utf-8") as f:
        f.write("path,rating\nsub/0.png,lots\n")
    with pytest.raises(Exception, match="not a number"):
        load_ratings_csv(tmp_path / "bad.csv")


# --- 2 and 9: a category named "all", and tables off a terminal ---------------------------------------------
def test_category_named_all_never_meets_the_pooled_row():
    rng = np.random.default_rng(0)
    rows = [{"category": cat, "rating": r, "eps": 0.05, "status": "ok", "kc": r + k * rng.normal(),
             "kc_soft": r, "jpeg_bpp": r, "png_bpp": r}
            for cat, k in (("all", 0.1), ("B", 50.0)) for r in rng.uniform(0, 100, 5)]
    res = _results_frame(pd.DataFrame(rows), ["all", "B"], [0.05], "single", 0, 0, 0.95)
    kc = res[res.method == "karl_kc"]
    assert kc[kc.category == "all"].n.tolist() == [5] and kc[kc.pooled].n.tolist() == [10]
    assert (kc[kc.pooled].category == "").all() and not kc[kc.category == "all"].pooled.any()


def test_cli_category_all_and_uncut_table(tmp_path, tiny_weights):
    with open(tmp_path / "r.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "rating", "category"])
        for i in range(10):
            _photo(i).save(tmp_path / f"{i}.png")
            w.writerow([f"{i}.png", i * 10 + (i % 3), "all" if i < 5 else "B"])
    out = tmp_path / "res.csv"
    res = invoke("correlate", "--ratings", tmp_path / "r.csv", "--weights", tiny_weights, "--no-cache",
                 "--bootstrap", "20", "--eps", "0.05", "--eps", "0.1", "--out", out, "--workers", "0",
                 "--plot", tmp_path / "plots")
    assert res.exit_code == EXIT_OK, res.output
    df = pd.read_csv(out)
    jpeg = df[df.method == "jpeg_bpp"]
    assert jpeg[jpeg.pooled].n.tolist() == [10] and jpeg[jpeg.category == "all"].n.tolist() == [5]
    lines = res.stdout.splitlines()
    pooled = [ln for ln in lines if ln.lstrip().startswith("all (pooled)")]
    user = [ln for ln in lines if ln.lstrip().startswith("all ") and "pooled" not in ln]
    assert len(pooled) == 1 and pooled[0].split()[2] == "10" and user and user[0].split()[1] == "5"
    assert "…" not in res.stdout and max(len(ln) for ln in lines) > 80    # wider than 80, and whole
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"scatter_all_eps0.05.png", "scatter_pooled_eps0.05.png", "scatter_b_eps0.05.png"} <= plots

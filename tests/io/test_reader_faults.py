"""The image reader over hostile files (tests/zoo.py) and fuzzed bytes: an image, or ImageLoadError
with a reason; never a crash."""
from __future__ import annotations

import errno
import io
import os

from PIL import Image
from hypothesis import given, strategies as st
import numpy as np
import pytest

from karl_cli.io.images import ImageLoadError, discover_images, load_for_model, open_rgb
from karl_cli.scoring.complexity import score

from faults import SETTINGS, rel, wide_console, zoo  # noqa: F401 - fixtures
from zoo import NON_UTF8_NAME, _pattern


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


@pytest.mark.slow
@SETTINGS
@given(head=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00",
                             b"RIFF\x00\x00\x00\x00WEBPVP8 "]),
       body=st.binary(max_size=1024), suffix=st.sampled_from([".png", ".jpg", ".gif", ".tif", ".webp", ".bmp"]))
def test_fuzz_random_bytes(fuzz_dir, head, body, suffix):
    p = fuzz_dir / f"bytes{suffix}"
    p.write_bytes(head + body)
    _reader_contract(p)


@pytest.mark.slow
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

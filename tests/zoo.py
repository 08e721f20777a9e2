"""A "zoo" of hostile and odd image files, for the robustness tests.

    from zoo import make_zoo
    zoo = make_zoo(tmp_path / "zoo")
    zoo.good   # {name: expected (width, height) after EXIF rotation} - every one must be scored
    zoo.bad    # {name: a word the error reason must contain} - every one must become an error row

Names are relative to the zoo folder, as ``str``; the non-UTF-8 name is the surrogate-escaped ``str``
Python gives for ``b"caf\\xe9.png"`` (``os.fsdecode``). Loop/broken symlinks and the unreadable file
are included only where the file system allows them (``zoo.skipped`` says what was left out and why).
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NON_UTF8_NAME = os.fsdecode(b"caf\xe9.png")   # 'caf\udce9.png' on a UTF-8 file system


@dataclass
class Zoo:
    root: Path
    good: dict[str, tuple[int, int]] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(str(self.root), name)

    @property
    def names(self) -> list[str]:
        return sorted({**self.good, **self.bad})


def _pattern(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
    a[: h // 2, : w // 2] = rng.integers(0, 256, 3)
    return a


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, **kw)
    return buf.getvalue()


def exif_rotated_jpeg(w: int = 48, h: int = 24, orientation: int = 6) -> bytes:
    """A w x h JPEG whose EXIF says "rotate 90° clockwise to display" (upright it is h x w)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(Image.fromarray(_pattern(w, h, 3)), format="JPEG", exif=exif.tobytes(), quality=90)


def animated(fmt: str, size: int = 24) -> bytes:
    """Two frames: the first red, the second blue (the first frame must be the one scored)."""
    frames = [Image.new("RGB", (size, size), (255, 0, 0)), Image.new("RGB", (size, size), (0, 0, 255))]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    return _save(frames[0], format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)


def make_zoo(root: str | os.PathLike, symlinks: bool = True, unreadable: bool = True) -> Zoo:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    zoo = Zoo(root)

    def good(name: str, data: bytes, size: tuple[int, int]) -> None:
        (root / name).write_bytes(data)
        zoo.good[name] = size

    def bad(name: str, data: bytes, reason: str) -> None:
        (root / name).write_bytes(data)
        zoo.bad[name] = reason

    rgb = Image.fromarray(_pattern(40, 30))
    png = _save(rgb, format="PNG")
    jpg = _save(rgb, format="JPEG", quality=90)
    # --- readable, if odd ---
    good("plain.png", png, (40, 30))
    good("plain.jpg", jpg, (40, 30))
    good("one_pixel.png", _save(Image.new("RGB", (1, 1), (10, 200, 30)), format="PNG"), (1, 1))
    good("thin_line.png", _save(Image.new("L", (300, 1), 128), format="PNG"), (300, 1))
    good("gray16.tif", _save(Image.fromarray((np.arange(32 * 24, dtype=np.uint16).reshape(24, 32) * 80)), format="TIFF"),
         (32, 24))
    good("float32.tif", _save(Image.fromarray(np.linspace(-0.5, 1.0, 20 * 16, dtype=np.float32).reshape(16, 20), "F"),
                              format="TIFF"), (20, 16))
    good("float_nan.tif", _save(Image.fromarray(np.full((8, 8), np.nan, np.float32), "F"), format="TIFF"), (8, 8))
    good("cmyk.jpg", _save(rgb.convert("CMYK"), format="JPEG"), (40, 30))
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 8, 16))
    good("palette_transparent.png", _save(pal, format="PNG", transparency=0), (16, 16))
    good("rgba.png", _save(Image.new("RGBA", (12, 12), (0, 0, 255, 0)), format="PNG"), (12, 12))
    good("animated.gif", animated("GIF"), (24, 24))
    good("animated.webp", animated("WEBP"), (24, 24))
    good("exif_rotated.jpg", exif_rotated_jpeg(48, 24, 6), (24, 48))
    good("UPPER.PNG", png, (40, 30))
    good(NON_UTF8_NAME, png, (40, 30))
    good("name with spaces, commas and \"quotes\".png", png, (40, 30))
    good("bitmap.bmp", _save(rgb, format="BMP"), (40, 30))
    # --- not readable ---
    # Float samples past 1 that are not whole numbers: no scale fits them (issue 28.10), refused.
    bad("float_out_of_range.tif", _save(Image.fromarray(np.linspace(-3.5, 7.0, 20 * 16, dtype=np.float32)
                                                        .reshape(16, 20), "F"), format="TIFF"), "float samples reach")
    bad("empty.png", b"", "empty")
    bad("empty.jpg", b"", "empty")
    bad("truncated.png", png[: len(png) // 2], "truncated")
    bad("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    corrupt = bytearray(png)
    corrupt[40:80] = b"\xff" * 40       # inside IHDR/IDAT: CRC and zlib both break
    bad("corrupt.png", bytes(corrupt), "corrupt PNG")
    bad("corrupt.jpg", jpg[:200] + os.urandom(64) + b"\xff\xd9", "")
    bad("text.jpg", b"this is not an image\n" * 10, "not an image")
    bad("html.png", b"<!doctype html><html><body>404</body></html>", "not an image")
    bad("bomb.png", bomb_png(), "bomb")
    bad("bomb_edge.png", bomb_png(9000, 8000), "too large")   # under PIL's limit, over karl's
    bad("zero_width.png", bomb_png(0, 10), "")
    if symlinks:
        try:
            os.symlink(root / "does-not-exist.png", root / "broken_link.png")
            zoo.bad["broken_link.png"] = "link"
            os.symlink(root / "loop_b.png", root / "loop_a.png")
            os.symlink(root / "loop_a.png", root / "loop_b.png")
            zoo.bad["loop_a.png"] = "link"
            zoo.bad["loop_b.png"] = "link"
            (root / "sub").mkdir()
            good(os.path.join("sub", "nested.png"), png, (40, 30))
            os.symlink(root, root / "sub" / "loop_dir")   # a folder loop: must not recurse forever
        except (OSError, NotImplementedError) as e:
            zoo.skipped["symlinks"] = str(e)
    if hasattr(os, "mkfifo"):
        try:
            os.mkfifo(root / "pipe.png")   # reading it would block forever
            zoo.bad["pipe.png"] = "regular file"
        except OSError as e:
            zoo.skipped["pipe.png"] = str(e)
    if unreadable:
        p = root / "no_permission.png"
        p.write_bytes(png)
        os.chmod(p, 0)
        try:
            with open(p, "rb"):
                readable = True
        except PermissionError:
            readable = False
        if readable:   # root (or a capable process) reads it anyway
            zoo.good["no_permission.png"] = (40, 30)
            zoo.skipped["no_permission.png"] = "running as root: chmod 000 does not block reads"
        else:
            zoo.bad["no_permission.png"] = "permission"
    (root / "README.txt").write_text("not an image suffix: ignored when walking folders\n")
    return zoo

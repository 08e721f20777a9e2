"""Finding image files and reading any of them as RGB, or saying clearly why not.

Every reader in karl goes through ``open_rgb``: odd modes (RGBA, palette with transparency, 16-bit,
float, CMYK, greyscale), EXIF rotation and animations (first frame) are handled here, once.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# Refuse decompression bombs: more pixels than this is almost surely a hostile or broken header.
MAX_PIXELS = 64_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageLoadError(Exception):
    """An image that cannot be read; the message is the reason, fit for an ``error`` column."""


@dataclass(frozen=True)
class Found:
    """A path met while walking the inputs; ``error`` is set for paths that cannot be images."""

    path: str
    error: str | None = None


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def discover_images(paths: Iterable[str | os.PathLike]) -> list[Found]:
    """Image files under ``paths`` (files and folders, recursive), sorted, each once.

    Broken symlinks and unreadable folders come back as entries with an ``error``; symlinked
    folders are followed once (loops are cut); a missing top-level path raises FileNotFoundError.
    """
    found: dict[str, Found] = {}
    for top in paths:
        top = os.fsdecode(top)   # bytes paths (non-UTF-8 names) become surrogate-escaped str, like scandir's
        if not os.path.lexists(top):
            raise FileNotFoundError(f"no such file or folder: {top}")
        if os.path.isdir(top):
            _walk(top, found, seen_dirs=set())
        elif os.path.islink(top) and not os.path.exists(top):
            found.setdefault(top, Found(top, "broken symlink"))
        else:
            found.setdefault(top, Found(top))
    return [found[k] for k in sorted(found)]


def _walk(folder: str, found: dict[str, Found], seen_dirs: set[str]) -> None:
    real = os.path.realpath(folder)
    if real in seen_dirs:
        return
    seen_dirs.add(real)
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        found.setdefault(folder, Found(folder, f"cannot list folder: {e.strerror or e}"))
        return
    for entry in entries:
        path = entry.path
        try:
            if entry.is_dir(follow_symlinks=True):
                _walk(path, found, seen_dirs)
                continue
        except OSError as e:  # symlink loops land here
            if _is_image_name(entry.name):
                found.setdefault(path, Found(path, f"cannot follow link: {e.strerror or e}"))
            continue
        if not _is_image_name(entry.name):
            continue
        if entry.is_symlink() and not os.path.exists(path):
            found.setdefault(path, Found(path, "broken symlink"))
        else:
            found.setdefault(path, Found(path))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited on white, high bit depths scaled to 8 bits."""
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(a)
        a = np.where(finite, a, 0.0)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and hi > 255):
            a = a / (65535.0 if hi > 255 else 255.0)
        elif img.mode == "F" and lo >= 0 and hi <= 1:
            pass
        else:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _signature(path: str) -> str | None:
    """The image format a file's first bytes claim (to tell a corrupt image from a non-image), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for sig, name in _SIGNATURES if head.startswith(sig)), None)


def open_rgb(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Read an image as an upright RGB PIL image, or raise ImageLoadError with the reason.

    ``draft_size`` lets JPEG decoding skip resolution it does not need (much faster for big photos).
    """
    path = os.fsdecode(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):   # a FIFO or device would block or never end
            raise ImageLoadError("not a regular file (a pipe, device or socket)")
        if st.st_size == 0:
            raise ImageLoadError("empty file (0 bytes)")
        with warnings.catch_warnings():
            # Decoders warn about damaged metadata they skip; the pixels are still good, and a
            # folder of scraped images must not flood the terminal. Bombs stay errors.
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w < 1 or h < 1:
                    raise ImageLoadError(f"invalid size {w}x{h}")
                if w * h > MAX_PIXELS:
                    raise ImageLoadError(f"too large: {w}x{h} pixels (limit {MAX_PIXELS:,})")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
                    img.draft(img.mode, (draft_size, draft_size))
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        kind = _signature(path)
        raise ImageLoadError(f"corrupt {kind} file (its header cannot be read)" if kind
                             else "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(f"decompression bomb refused: {e}") from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except FileNotFoundError:
        raise ImageLoadError("file not found (broken link or removed)") from None
    except OSError as e:
        raise ImageLoadError(f"corrupt or truncated image: {e}") from None
    except Exception as e:  # noqa: BLE001 - decoders raise many types (struct.error, zlib.error, KeyError, ...)
        raise ImageLoadError(f"cannot decode image: {type(e).__name__}: {e}") from None


def load_for_model(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """The whole image squashed to resolution x resolution: uint8 array (R, R, 3).

    Squashing (not cropping) keeps all of the content, which is what complexity is about.
    """
    img = open_rgb(path, draft_size=2 * resolution)
    img = img.resize((resolution, resolution), Image.BICUBIC, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def load_max_side(path: str | os.PathLike, max_side: int) -> np.ndarray:
    """The image with its shorter side at most ``max_side`` (aspect kept): uint8 (H, W, 3)."""
    img = open_rgb(path, draft_size=max_side)
    w, h = img.size
    scale = max_side / min(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC, reducing_gap=3.0)
    return np.array(img, dtype=np.uint8)


def load_images(paths: Iterable[str | os.PathLike], resolution: int) -> torch.Tensor:
    """Image files as the model's input: a float32 tensor (B, 3, R, R) in [0, 1], R = ``resolution``
    (the model's ``config.resolution``), in the order given.

    Each image is read as ``karl complexity`` reads it (``open_rgb``: EXIF rotation, transparency on
    white, first frame, ...) and **squashed** to R x R with bicubic resampling: the aspect ratio is not
    kept, so all of the content counts (no crop). The same pixels as ``score`` gives the model
    (``runtime.to_model_input`` divides the same uint8 values by 255). Raises ImageLoadError naming
    the first unreadable file.

        model = KARL.from_pretrained("weights/karl-small")
        x = load_images(["a.jpg", "b.png"], model.config.resolution)   # (2, 3, 64, 64)
        kc = model.encode(x, eps=0.05).kc
    """
    arrays = []
    for p in paths:
        try:
            arrays.append(load_for_model(p, resolution))
        except ImageLoadError as e:
            raise ImageLoadError(f"{os.fsdecode(p)}: {e}") from None
    if not arrays:
        return torch.empty(0, 3, resolution, resolution)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)

"""Classical complexity baselines: how many bytes a standard codec needs per pixel.

Both take the image as the model sees it (uint8 (R, R, 3) at the model resolution, from
``images.load_for_model``), so KC and the baselines describe the same pixels. The unit is
**bytes per pixel** (file bytes / (H·W)), encoded in memory with Pillow; nothing touches the disk.
JPEG-75 bytes/pixel is the classic complexity proxy (docs/design.md §5).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _as_image(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 array, got {a.dtype}")
    if a.ndim == 2:
        return Image.fromarray(a, "L")
    if a.ndim == 3 and a.shape[2] == 3:
        return Image.fromarray(a, "RGB")
    raise ValueError(f"expected an (H, W) or (H, W, 3) array, got shape {a.shape}")


def _bytes_per_pixel(img: Image.Image, **save_args) -> float:
    buf = io.BytesIO()
    img.save(buf, **save_args)
    return buf.tell() / float(img.width * img.height)


def jpeg_bpp(array: np.ndarray, quality: int = 75) -> float:
    """JPEG bytes per pixel at ``quality`` (Pillow defaults otherwise: 4:2:0, baseline)."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must lie in 1..100, got {quality}")
    return _bytes_per_pixel(_as_image(array), format="JPEG", quality=int(quality))


def png_bpp(array: np.ndarray) -> float:
    """PNG bytes per pixel (lossless, zlib level 6, Pillow's default filter choice)."""
    return _bytes_per_pixel(_as_image(array), format="PNG")

"""Images already in memory (PIL images, NumPy arrays, torch tensors) as the model's pixels.

The same pixel path as files (``images.open_rgb`` then ``images.squash``): a PIL image gets the EXIF
rotation, mode conversion, ICC profile and transparency rules of a file; arrays and tensors become
8-bit sRGB pixels by the fixed rule below and are squashed to R x R with the same bicubic resampling.
So the KC of an in-memory image equals the KC of the same pixels saved losslessly (PNG) and scored
from the file.

What is accepted (anything else is one ``ValueError`` line naming what was given):

- a PIL image (any mode Pillow reads; the current frame of an animation);
- a NumPy array (H, W, 3), or a batch (N, H, W, 3): channels last, ``uint8`` 0-255 or float in [0, 1];
- a torch tensor (3, H, W), or a batch (B, 3, H, W): channels first, float in [0, 1] or ``uint8``
  0-255, on any device;
- a list or tuple of the above, one image per entry.

Float pixels become 8-bit as a float file does (``images`` module docstring): round(v x 255); a
float value outside [0, 1] or NaN is refused (a [0, 255] float image read as [0, 1] would saturate
every pixel, which is why nothing is clipped here).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from karl_cli.io.images import squash, upright_rgb

ACCEPTED = ("a PIL image, a NumPy array (H, W, 3) uint8 or float in [0, 1], or a tensor (B, 3, H, W) / "
            "(3, H, W) in [0, 1]")


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"a NumPy array of shape {x.shape} and dtype {x.dtype}"
    if torch.is_tensor(x):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


def _float_to_uint8(a: np.ndarray, what: str) -> np.ndarray:
    """Float pixels in [0, 1] -> uint8 by round(v x 255), the rule for float image files."""
    a = a.astype(np.float64, copy=False)
    finite = np.isfinite(a)
    if a.size and not (finite.all() and a.min() >= 0.0 and a.max() <= 1.0):
        vals = a[finite]
        hi = float(vals.max()) if vals.size else 0.0
        got = f"values from {vals.min():g} to {hi:g}" if vals.size else "no finite values"
        raise ValueError(f"{what} must hold floats in [0, 1], got {got}" + ("" if finite.all() else " and NaN/inf")
                         + (" (0-255 pixels: pass uint8, or divide by 255)" if hi > 1.0 else ""))
    return (a * 255.0 + 0.5).astype(np.uint8)


def _hwc_uint8(a: np.ndarray, what: str) -> np.ndarray:
    """One (H, W, 3) array as uint8, or ValueError."""
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return _float_to_uint8(a, what)
    raise ValueError(f"{what} must be uint8 (0-255) or float in [0, 1], got dtype {a.dtype}")


def _split(x: Any) -> list[Image.Image | np.ndarray]:
    """One input (an image or a batch) -> its images: PIL images, or uint8 (H, W, 3) arrays."""
    if isinstance(x, Image.Image):
        return [x]
    if isinstance(x, np.ndarray):
        if x.ndim in (3, 4) and x.shape[-1] == 3 and all(s > 0 for s in x.shape[-3:-1]):
            arr = _hwc_uint8(x, f"the array {x.shape}")
            return [arr] if arr.ndim == 3 else list(arr)
        hint = "; channels-first arrays: transpose to (H, W, 3)" if x.ndim in (3, 4) and x.shape[-3] == 3 else ""
        raise ValueError(f"cannot read {_describe(x)} as an image: arrays are (H, W, 3) or (N, H, W, 3){hint}")
    if torch.is_tensor(x):
        if x.ndim in (3, 4) and x.shape[-3] == 3 and all(s > 0 for s in x.shape[-2:]):
            t = x.detach().to("cpu")
            t = t[None] if t.ndim == 3 else t
            if t.dtype == torch.uint8:
                a = t.numpy()
            elif t.is_floating_point():
                a = _float_to_uint8(t.double().numpy(), f"the tensor {tuple(x.shape)}")
            else:
                raise ValueError(f"the tensor must be float in [0, 1] or uint8 (0-255), got dtype {x.dtype}")
            return list(np.ascontiguousarray(a.transpose(0, 2, 3, 1)))
        hint = "; channels-last tensors: permute to (B, 3, H, W)" if x.ndim in (3, 4) and x.shape[-1] == 3 else ""
        raise ValueError(f"cannot read {_describe(x)} as an image: tensors are (3, H, W) or (B, 3, H, W){hint}")
    raise ValueError(f"cannot read {_describe(x)} as an image: give {ACCEPTED}")


def is_in_memory(x: Any) -> bool:
    """Whether ``x`` is an in-memory image or batch this module reads (not a path)."""
    return isinstance(x, (Image.Image, np.ndarray)) or torch.is_tensor(x)


def memory_pixels(images: Any, resolution: int) -> np.ndarray:
    """In-memory images (see the module docstring) squashed to the model input: uint8 (N, R, R, 3), sRGB.

    ``images``: one image, a batch, or a list/tuple of either. A PIL image goes through the files'
    own conversion (EXIF rotation, ICC profile, transparency on white); arrays and tensors are taken
    as sRGB. Raises ValueError (one line) for anything else, including an empty input.
    """
    items: Sequence[Any] = images if isinstance(images, (list, tuple)) else [images]
    out: list[np.ndarray] = []
    for item in items:
        for img in _split(item):
            if isinstance(img, Image.Image):
                img.load()
                img = upright_rgb(img)
            else:
                img = Image.fromarray(np.ascontiguousarray(img), "RGB")
            out.append(squash(img, resolution))
    if not out:
        raise ValueError(f"no images given: give {ACCEPTED}")
    return np.stack(out)

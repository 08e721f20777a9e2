"""Procedural images of known, ordered complexity: a constant colour, a smooth gradient, a few shapes,
many shapes, a sine texture, and uniform noise.

They check a model (KC should rise along ``FAMILIES``) and teach the halting head the extremes that
photos rarely show (``karl calibrate``): a flat image needs almost no tokens, noise every token.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Simplest first.
FAMILIES = ("constant", "gradient", "few shapes", "many shapes", "texture", "noise")


def make_family_image(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of a family, uint8 (size, size, 3)."""
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    if family == "constant":
        return np.broadcast_to(np.array(colour(), np.uint8), (size, size, 3)).copy()
    if family == "gradient":
        c0, c1 = np.array(colour(), float), np.array(colour(), float)
        th = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = xx * np.cos(th) + yy * np.sin(th)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        return np.clip(c0 + t[..., None] * (c1 - c0), 0, 255).round().astype(np.uint8)
    if family in ("few shapes", "many shapes"):
        n, lo, hi = (3, size // 4, size // 2) if family == "few shapes" else (30, max(2, size // 16), max(3, size // 5))
        img = Image.new("RGB", (size, size), colour())
        draw = ImageDraw.Draw(img)
        for _ in range(n):
            w, h = rng.integers(lo, hi + 1, 2)
            x0, y0 = rng.integers(-w // 2, size - w // 2, 2) if size > w else (0, 0)
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour())
        return np.asarray(img)
    if family == "texture":
        yy, xx = np.mgrid[0:size, 0:size].astype(float)
        out = np.zeros((size, size, 3))
        for c in range(3):
            for _ in range(3):
                th, period, phase = rng.uniform(0, np.pi), rng.uniform(3, 8), rng.uniform(0, 2 * np.pi)
                out[..., c] += np.sin(2 * np.pi * (xx * np.cos(th) + yy * np.sin(th)) / period + phase)
        return np.clip(127.5 + 127.5 * out / 3, 0, 255).round().astype(np.uint8)
    if family == "noise":
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    raise ValueError(f"unknown family {family!r}")


def random_family_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` images of families drawn uniformly at random: uint8 (n, size, size, 3)."""
    return np.stack([make_family_image(FAMILIES[int(rng.integers(len(FAMILIES)))], size, rng) for _ in range(n)])

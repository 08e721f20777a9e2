"""Regenerate the example images in this folder, deterministically.

    python examples/make_examples.py          # writes into examples/
    python examples/make_examples.py OUT_DIR

Photos come from scikit-image's bundled data (public domain / CC0, see README.md), resized so the
longer side is at most 256 px and saved as JPEG quality 85. Synthetic images span simple to
complex: a constant colour, a smooth gradient, a few shapes, many shapes, a texture, and uniform
noise. Needs numpy, Pillow and scikit-image (``pip install -e .[test]``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MAX_SIDE = 256
SIZE = 256
JPEG_QUALITY = 85

# name -> skimage.data function; licences are listed in README.md
PHOTOS = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "chelsea",
    "rocket": "rocket",
    "camera": "camera",
    "hubble": "hubble_deep_field",
    "gravel": "gravel",
}


def _resize(img: Image.Image) -> Image.Image:
    w, h = img.size
    scale = MAX_SIDE / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return img


def photos() -> dict[str, Image.Image]:
    import skimage.data

    out = {}
    for name, fn in PHOTOS.items():
        a = getattr(skimage.data, fn)()
        out[name] = _resize(Image.fromarray(a))
    return out


def constant() -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (70, 130, 180))


def gradient() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    a = np.stack([0.15 + 0.7 * x, 0.25 + 0.5 * y, 0.9 - 0.6 * x * y], axis=-1)
    return Image.fromarray(np.round(a * 255).astype(np.uint8), "RGB")


def _shapes(n: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (SIZE, SIZE), (245, 240, 230))
    draw = ImageDraw.Draw(img)
    for i in range(n):
        size = int(rng.integers(SIZE // 12, SIZE // 3)) if n < 10 else int(rng.integers(6, SIZE // 8))
        x, y = (int(v) for v in rng.integers(0, SIZE - size, 2))
        colour = tuple(int(c) for c in rng.integers(0, 230, 3))
        box = (x, y, x + size, y + size)
        kind = i % 3
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        else:
            draw.polygon([(x, y + size), (x + size // 2, y), (x + size, y + size)], fill=colour)
    return img


def shapes_few() -> Image.Image:
    return _shapes(4, seed=1)


def shapes_many() -> Image.Image:
    return _shapes(150, seed=2)


def texture() -> Image.Image:
    """Checkerboard blended with diagonal stripes: regular, high-frequency, still compressible."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    checker = ((x // 16 + y // 16) % 2).astype(float)
    stripes = (((x + y) // 6) % 2).astype(float)
    a = np.stack([0.2 + 0.6 * checker, 0.3 + 0.4 * stripes, 0.5 + 0.3 * checker * stripes], axis=-1)
    return Image.fromarray(np.round(a * 255).astype(np.uint8), "RGB")


def noise() -> Image.Image:
    """Uniform RGB noise: incompressible, the most complex image there is (128 px to keep it small)."""
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), "RGB")


SYNTHETIC = {
    "constant": constant,
    "gradient": gradient,
    "shapes_few": shapes_few,
    "shapes_many": shapes_many,
    "texture": texture,
    "noise": noise,
}


def main(out_dir: str | Path | None = None) -> list[Path]:
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in SYNTHETIC.items():
        p = out / f"{name}.png"
        make().save(p, format="PNG", optimize=True)
        written.append(p)
    for name, img in photos().items():
        p = out / f"{name}.jpg"
        img.save(p, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        written.append(p)
    return written


if __name__ == "__main__":
    files = main(sys.argv[1] if len(sys.argv) > 1 else None)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"{p.name:20s} {p.stat().st_size / 1024:7.1f} KiB")
    print(f"{len(files)} images, {total / 1024:.0f} KiB in all")

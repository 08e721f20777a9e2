"""A small generated Savoias-layout folder for tests (random images, xlsx written with openpyxl)."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_xlsx(path: Path, values, header: str = "gt") -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append([header])
    for v in values:
        ws.append([v])
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


def complexity_image(rating: float, seed: int, size: int = 40) -> np.ndarray:
    """An image whose clutter grows with ``rating`` (0-100): smooth gradient + noise of growing amplitude."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, size)[None, :, None] * np.ones((size, 1, 3))
    noise = rng.normal(0, 1.2 * rating, size=(size, size, 3))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


# key -> (folder, ratings, indices present on disk)
LAYOUT = {
    "scenes": ("Scenes", [10, 80, 35, 60, 5, 95, 50, 20], [0, 1, 3, 4, 5, 6, 7]),          # image 2 missing
    "interior_design": ("Interior Design", [70, 15, 45, 90, 30, 55], [0, 1, 3, 4, 5]),     # image 2 missing
    "art": ("Art", [25, 65, 85, 40, 10, 75], [0, 1, 2, 3, 4, 5]),
}


def make_savoias(root: Path, size: int = 40) -> Path:
    """Writes the layout; Interior Design also gets an unrated extra file (index past the last row)."""
    for key, (folder, ratings, present) in LAYOUT.items():
        write_xlsx(root / "Ground truth" / "xlsx" / f"global_ranking_{key}.xlsx", ratings)
        d = root / "Images" / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in present:
            arr = complexity_image(ratings[i], seed=zlib.crc32(f"{key}{i}".encode()), size=size)
            ext = "png" if (i % 3 == 0) else "jpg"
            Image.fromarray(arr).save(d / f"{i}.{ext}")
    Image.fromarray(complexity_image(50, 1, size)).save(root / "Images" / "Interior Design" / "99.jpg")
    return root

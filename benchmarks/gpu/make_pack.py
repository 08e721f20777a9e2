#!/usr/bin/env python
"""Build the data pack that benchmarks/gpu/run.sh carries to a GPU machine (no network there).

    python benchmarks/gpu/make_pack.py [--out gpu-pack] [--data DIR ...] [--savoias ROOT]
                                       [--eval 200] [--max-side 128] [--budget-mib 28] [--site]
    python benchmarks/gpu/make_pack.py --synthetic --out gpu-pack-smoke   # CI: generated images only

The pack (git-ignored; ``--budget-mib``, default 28 MiB, in all: under the 30 MiB the run may carry):

- ``train/<source>/…jpg``: every readable training image of ``--data`` (default: the shared data's
  imagenet-sample and debian-photos), shrunk to ``--max-side`` px (128: ``karl train`` decodes
  images at twice the model's resolution before random resized crops, and the GPU recipe is 32 px) and saved as JPEG; the quality
  steps down from 90 until the pack fits the budget.
- ``eval/<Category>/<i>.jpg`` + ``eval/ratings.csv`` (``path,rating,category``): ``--eval`` Savoias
  dev images spread evenly over each category's sorted list, shrunk the same way (JPEG quality 95),
  with their ratings, never training images. A CSV because the GPU machine has no openpyxl for the
  xlsx ground truth: ``karl correlate --ratings eval/ratings.csv`` reads it. Note that the JPEG
  baseline of that folder is the bytes of these re-encoded files, not of the originals.
- ``site/`` (only with ``--site``, for a machine without pytest): pytest and what it needs (pure Python, copied from this environment), for ``pytest -m
  cuda`` on a machine without pytest; run.sh adds it to the path only where pytest is missing.
- ``pack.json``: what is in the pack, from where, and the command.

``--synthetic`` builds a small pack of procedural images (karl_cli/io/synthetic.py) with ratings
= family rank + noise, without ``site/``, for ``run.sh --smoke``; it needs no shared data.
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata as md
import io
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from karl_cli.errors import KarlError, UsageError
from karl_cli.io.images import ImageLoadError, discover_images, load_max_side
from karl_cli.io.savoias import load_savoias
from karl_cli.io.synthetic import FAMILIES, make_family_image

REPO = Path(__file__).resolve().parents[2]
SHARED = Path("/work/shared/data") if not (REPO.parent / "shared" / "data").is_dir() else REPO.parent / "shared" / "data"
TRAIN_QUALITIES = (90, 85, 80, 75, 70, 60)
EVAL_QUALITY = 95


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "gpu-pack"))
    ap.add_argument("--data", action="append", help="Training folder (repeat; default: imagenet-sample and "
                                                    "debian-photos of the shared data).")
    ap.add_argument("--savoias", default=str(SHARED / "savoias-dev"), help="Savoias root of the evaluation images.")
    ap.add_argument("--eval", type=int, default=200, help="Evaluation images (spread over the categories).")
    ap.add_argument("--max-side", type=int, default=128)
    ap.add_argument("--budget-mib", type=float, default=28.0)
    ap.add_argument("--site", action="store_true", help="Also copy pytest into site/ (for a machine without it).")
    ap.add_argument("--synthetic", action="store_true", help="A small pack of generated images (for --smoke).")
    ap.add_argument("--synthetic-train", type=int, default=48)
    return ap.parse_args(argv)


def _jpeg(a: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def _copy_dist(name: str, dest: Path, done: set[str]) -> None:
    """Copy an installed distribution's files (and its requirements') into ``dest``."""
    key = name.lower().replace("-", "_")
    if key in done:
        return
    done.add(key)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return
    for f in dist.files or ():
        if ".." in f.parts or f.suffix == ".pyc":
            continue
        src = Path(dist.locate_file(f))
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    from packaging.requirements import Requirement

    for req in dist.requires or ():
        r = Requirement(req)
        if r.marker is None or r.marker.evaluate({"python_version": "3.12", "python_full_version": "3.12.0",
                                                   "extra": ""}):
            _copy_dist(r.name, dest, done)


def _eval_rows(savoias: str, n: int) -> list[dict]:
    rated = load_savoias(savoias)
    df = rated.table
    cats = sorted(df["category"].unique())
    per = {c: df[df["category"] == c].sort_values("path") for c in cats}
    # An equal share per category (the remainder to the first ones), each spread over its list.
    rows = []
    for k, c in enumerate(cats):
        take = n // len(cats) + (1 if k < n % len(cats) else 0)
        rows += _spread(per[c].to_dict("records"), take)
    return rows


def build(args: argparse.Namespace, command: str) -> dict:
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    (out / "train").mkdir(parents=True)
    (out / "eval").mkdir()
    budget = int(args.budget_mib * 2**20)
    rng = np.random.default_rng(0)
    train_arrays: list[tuple[str, np.ndarray]] = []
    eval_rows: list[dict] = []
    skipped = 0
    if args.synthetic:
        for i in range(args.synthetic_train):
            fam = FAMILIES[i % len(FAMILIES)]
            train_arrays.append((f"families/{i:03d}.jpg", make_family_image(fam, 48, rng)))
        for i in range(max(args.eval, len(FAMILIES) * 2)):
            fam = FAMILIES[i % len(FAMILIES)]
            eval_rows.append({"array": make_family_image(fam, 48, rng), "category": "families",
                              "rating": float(FAMILIES.index(fam)) + float(rng.uniform(0, 0.5)), "name": f"{i:03d}"})
        sources = {"train": "procedural families", "eval": "procedural families (rating = family rank + noise)"}
    else:
        folders = args.data or [str(SHARED / "imagenet-sample"), str(SHARED / "debian-photos")]
        for folder in folders:
            for f in discover_images([folder]):
                if f.error is not None:
                    skipped += 1
                    continue
                try:
                    a = load_max_side(f.path, args.max_side)
                except ImageLoadError:
                    skipped += 1
                    continue
                rel = Path(f.path).resolve().relative_to(Path(folder).resolve())
                train_arrays.append((f"{Path(folder).name}/{rel.with_suffix('.jpg').as_posix()}", a))
        for r in _eval_rows(args.savoias, args.eval):
            eval_rows.append({"array": load_max_side(r["path"], args.max_side), "category": r["category"],
                              "rating": float(r["rating"]), "name": Path(r["path"]).stem})
        sources = {"train": folders, "eval": f"{args.savoias} ({args.eval} images, spread over each category)"}

    ratings = []
    eval_bytes = 0
    for r in eval_rows:
        rel = Path(r["category"]) / f"{r['name']}.jpg"
        (out / "eval" / rel).parent.mkdir(parents=True, exist_ok=True)
        data = _jpeg(r["array"], EVAL_QUALITY)
        (out / "eval" / rel).write_bytes(data)
        eval_bytes += len(data)
        ratings.append({"path": rel.as_posix(), "rating": r["rating"], "category": r["category"]})
    with open(out / "eval" / "ratings.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "rating", "category"])
        w.writeheader()
        w.writerows(ratings)
    if args.site:   # only for a machine without pytest: run.sh skips the CUDA tests there otherwise
        _copy_dist("pytest", out / "site", set())
    site_bytes = sum(p.stat().st_size for p in (out / "site").rglob("*") if p.is_file())

    for quality in TRAIN_QUALITIES:
        encoded = [(rel, _jpeg(a, quality)) for rel, a in train_arrays]
        train_bytes = sum(len(d) for _, d in encoded)
        if train_bytes + eval_bytes + site_bytes <= budget:
            break
    else:
        raise UsageError(f"the pack does not fit {args.budget_mib} MiB even at JPEG quality {quality}; "
                         "lower --max-side or pass fewer --data folders")
    for rel, data in encoded:
        (out / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / "train" / rel).write_bytes(data)
    manifest = {"command": command, "sources": sources, "train_images": len(encoded), "train_jpeg_quality": quality,
                "train_mib": round(train_bytes / 2**20, 2), "eval_images": len(ratings),
                "eval_jpeg_quality": EVAL_QUALITY, "eval_mib": round(eval_bytes / 2**20, 2),
                "site_mib": round(site_bytes / 2**20, 2), "max_side": args.max_side, "skipped": skipped,
                "total_mib": round((train_bytes + eval_bytes + site_bytes) / 2**20, 2)}
    (out / "pack.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/gpu/make_pack.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    try:
        manifest = build(args, command)
    except KarlError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

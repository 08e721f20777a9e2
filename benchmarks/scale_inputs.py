#!/usr/bin/env python
"""Memory over inputs at scale: a generated tar shard and a file list, streamed into CSV + Parquet.

    python benchmarks/scale_inputs.py --images 10000 [--tiny | --weights DIR] [--no-l1] [--json OUT]

Writes ``--images`` generated images (a few hundred distinct ones, JPEG and PNG, repeated under new
keys) as one WebDataset-style tar shard (each image with a ``.txt`` caption) and, beside it, as files
named by a file list. Each source is then scored as ``karl complexity SHARD --csv --parquet`` and
``karl complexity --files-from LIST --csv --parquet`` do (``collect_inputs`` -> ``score`` -> two
``RowWriter``s, checkpoints on), sampling the RSS of this process and of the loader workers about 20
times. Memory is flat when the RSS after the first batch and at the end differ by a few MiB, whatever
``--images``. Not a test: it takes minutes.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import karl_cli  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
import torch
from PIL import Image

from karl_cli.models.pretrained import DEFAULT_MODEL, load
from karl_cli.runtime import default_workers, prepare_model, resolve_device
from karl_cli.scoring.complexity import score
from karl_cli.io.rows import ROW_FIELDS, RowWriter, Summary, checkpoint_seconds
from karl_cli.scoring.measure import collect_inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
from throughput import peak_rss_mb, rss_mb, workers_rss_mb  # noqa: E402


def distinct_images(n: int, size: int = 96, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` encoded images (suffix, bytes): flat colour, rectangles and noise, every other one JPEG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = np.zeros((size, size, 3), np.int16) + rng.integers(0, 256, 3)
        for _ in range(i % 8):
            x, y = rng.integers(0, size - 16, 2)
            w, h = rng.integers(4, 16, 2)
            a[y:y + h, x:x + w] = rng.integers(0, 256, 3)
        a += rng.integers(-(i % 5) * 8, (i % 5) * 8 + 1, a.shape)
        buf = io.BytesIO()
        fmt = "JPEG" if i % 2 else "PNG"
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, fmt, **({"quality": 90} if i % 2 else {}))
        out.append((".jpg" if i % 2 else ".png", buf.getvalue()))
    return out


def make_shard(path: Path, n: int, images: list[tuple[str, bytes]]) -> None:
    """A WebDataset-style shard: ``n`` samples ``KEY.jpg|png`` + ``KEY.txt``."""
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            sfx, data = images[i % len(images)]
            for name, blob in ((f"{i:07d}{sfx}", data), (f"{i:07d}.txt", b"a generated image")):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))


def make_list(folder: Path, n: int, images: list[tuple[str, bytes]]) -> Path:
    """``n`` image files (1,000 per subfolder) and ``list.txt`` naming them, relative to the list."""
    lines = []
    for i in range(n):
        sfx, data = images[i % len(images)]
        rel = f"part{i // 1000:03d}/{i:07d}{sfx}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
        lines.append(rel)
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def stream(found: list, model: torch.nn.Module, out: Path, batch_size: int, workers: int,
           device: torch.device, l1: bool) -> dict[str, Any]:
    """Score ``found`` into ``out``.csv and ``out``.parquet as the CLI does, sampling memory."""
    total = len(found)
    samples: list[tuple[int, float, float]] = []
    every = max(1, total // 20)
    state = {"next": 1}

    def progress(done: int, _total: int) -> None:
        if done >= state["next"]:
            samples.append((done, rss_mb(), workers_rss_mb()))
            state["next"] = done + every

    summary = Summary()
    t0 = time.perf_counter()
    with RowWriter(out.with_suffix(".csv"), ROW_FIELDS, checkpoint_s=checkpoint_seconds()) as w_csv, \
            RowWriter(out.with_suffix(".parquet"), ROW_FIELDS, checkpoint_s=checkpoint_seconds()) as w_pq:
        for row in score(found, model, [0.05], batch_size=batch_size, workers=workers, device=device,
                         progress=progress, l1=l1):
            w_csv.write(row)
            w_pq.write(row)
            summary.add(row)
    seconds = time.perf_counter() - t0
    samples.append((total, rss_mb(), workers_rss_mb()))
    first, end = samples[0], samples[-1]
    return {"images": total, "errors": summary.errors, "seconds": round(seconds, 1),
            "images_per_s": round(total / seconds, 1),
            "rss_first_batch_mb": round(first[1], 1), "rss_end_mb": round(end[1], 1),
            "rss_growth_mb": round(end[1] - first[1], 1),
            "rss_max_sampled_mb": round(max(s[1] for s in samples), 1),
            "workers_rss_mb": round(max(s[2] for s in samples), 1),
            "rss_series_mb": [(n, round(r)) for n, r, _ in samples],
            "csv_bytes": out.with_suffix(".csv").stat().st_size,
            "parquet_bytes": out.with_suffix(".parquet").stat().st_size}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="benchmarks/scale_inputs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--distinct", type=int, default=256)
    p.add_argument("--weights", default=None, help=f"A shipped model name or a weights folder (default: {DEFAULT_MODEL}).")
    p.add_argument("--tiny", action="store_true", help="A tiny random model: the inputs and outputs dominate.")
    p.add_argument("--no-l1", dest="l1", action="store_false")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args(argv)
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
    device = resolve_device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers
    with tempfile.TemporaryDirectory(prefix="karl-scale-") as tmp:
        tmp_p = Path(tmp)
        if args.tiny:
            from karl_cli import KARL, preset
            torch.manual_seed(0)
            KARL(preset("tiny")).save_pretrained(str(tmp_p / "tiny"))
            weights = tmp_p / "tiny"
        else:
            weights = args.weights or DEFAULT_MODEL
        model = load(weights)
        prepare_model(model, device)
        images = distinct_images(args.distinct)
        log(f"writing a {args.images}-image shard and file list ...")
        shard = tmp_p / "shard-000000.tar"
        make_shard(shard, args.images, images)
        lst = make_list(tmp_p / "listed", args.images, images)
        result: dict[str, Any] = {"machine": machine_info(device), "weights": "tiny (random)" if args.tiny else str(weights),
                                  "images": args.images, "batch_size": args.batch_size, "workers": workers,
                                  "l1": args.l1, "rss_before_mb": round(rss_mb(), 1)}
        for name, found in (("tar", collect_inputs([shard])), ("list", collect_inputs([], files_from=lst))):
            log(f"scoring the {name} ({len(found)} images) ...")
            result[name] = stream(found, model, tmp_p / f"rows-{name}", args.batch_size, workers, device, args.l1)
            log(json.dumps({k: v for k, v in result[name].items() if k != "rss_series_mb"}))
        result["rss_peak_mb"] = round(peak_rss_mb()["self"], 1)
    print(json.dumps(result, indent=1))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

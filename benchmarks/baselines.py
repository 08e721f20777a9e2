#!/usr/bin/env python
"""How much do the classic baselines add to ``karl complexity``? Per-measure cost and end-to-end wall time.

    python benchmarks/baselines.py FOLDER [--weights DIR] [--limit 150] [--repeats 3] [--batch-size 64]
                                   [--workers N] [--eps 0.05] [--threads N] [--json OUT]

Prints, as medians over ``--repeats`` runs on the same images (sorted, the first ``--limit``):

- per measure (``karl_cli.scoring.baselines.REGISTRY``): milliseconds per image of the measure alone,
  on the images as the loader hands them to the model (uint8 R x R x 3), in this process;
- end to end: seconds of ``score(method="single")`` (what ``karl complexity`` runs) with no baselines,
  with ``jpeg,png`` (bare ``--baselines``) and with ``all``, at the loader workers ``karl complexity``
  would use (or ``--workers``); and the share each adds to the run without baselines. With workers the
  baselines run in the loader processes beside the model, so they cost wall time only where the
  loader cannot keep up; with ``--workers 0`` they add their full per-image cost;
- the machine and the exact command.

Run it under ``nice -n 19`` on a shared machine; absolute numbers move with the load.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import karl_cli  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the sibling module machine.py
from machine import machine_info  # noqa: E402
from karl_cli.models.pretrained import load_pretrained
from karl_cli.runtime import default_workers, resolve_device
from karl_cli.scoring.baselines import REGISTRY
from karl_cli.scoring.complexity import score
from karl_cli.scoring.measure import collect_inputs, read_pixels

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "weights" / "karl-small"
CHOICES = {"none": (), "jpeg,png": ("jpeg_bpp", "png_bpp"), "all": tuple(REGISTRY)}


def per_measure_ms(arrays: Sequence[Any], repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of the milliseconds per image of each measure alone."""
    out = {}
    for name, b in REGISTRY.items():
        b.fn(arrays[0])                                    # warm caches (pyramid masks, imports)
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            for a in arrays:
                b.fn(a)
            runs.append((time.perf_counter() - t) * 1000 / len(arrays))
        out[name] = statistics.median(runs)
    return out


def end_to_end_s(paths: Sequence[str], model: torch.nn.Module, eps: float, batch_size: int, workers: int,
                 repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall seconds of ``score`` over all images, per choice of baselines (runs interleaved)."""
    runs: dict[str, list[float]] = {k: [] for k in CHOICES}
    for _ in range(repeats):
        for key, names in CHOICES.items():
            t = time.perf_counter()
            for _row in score(paths, model, [eps], baselines=names, batch_size=batch_size, workers=workers,
                              device=device):
                pass
            runs[key].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in runs.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/baselines.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="Images to benchmark on (recursive).")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="Model folder (default: weights/karl-small).")
    p.add_argument("--limit", type=int, default=150, help="Only the first N images (sorted).")
    p.add_argument("--repeats", type=int, default=3, help="Runs; medians are reported.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="Loader processes (default: as `karl complexity`).")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    p.add_argument("--json", dest="json_out", default=None, help="Also write the results as JSON.")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = load_pretrained(args.weights, device=device)
    found = [f for f in collect_inputs([args.folder]) if f.error is None][: args.limit]
    paths = [f.path for f in found]
    workers = default_workers(device) if args.workers is None else args.workers
    arrays = [read_pixels(f, model.config.resolution) for f in found]
    per = per_measure_ms(arrays, args.repeats)
    e2e = end_to_end_s(paths, model, args.eps, args.batch_size, workers, args.repeats, device)
    base = e2e["none"]
    res = {"command": "python " + shlex.join([sys.argv[0]] + list(argv if argv is not None else sys.argv[1:])),
           "machine": machine_info(device), "images": len(paths), "resolution": model.config.resolution,
           "workers": workers, "per_measure_ms": per, "per_measure_total_ms": sum(per.values()),
           "end_to_end_s": e2e,
           "added": {k: (v - base) / base for k, v in e2e.items() if k != "none"}}
    print(f"{len(paths)} images at {model.config.resolution} px, workers {workers}, {res['machine']}")
    print("per measure, ms / image:")
    for name, ms in per.items():
        print(f"  {name:22s} {ms:8.2f}")
    print(f"  {'(all together)':22s} {res['per_measure_total_ms']:8.2f}")
    print("karl complexity (score, method single), wall seconds:")
    for k, v in e2e.items():
        extra = f"  (+{100 * res['added'][k]:.0f}% vs none)" if k in res["added"] else ""
        print(f"  --baselines {k:9s} {v:8.2f}{extra}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2, default=float) + "\n", encoding="utf-8")
    return res


if __name__ == "__main__":
    main()

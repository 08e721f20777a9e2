#!/usr/bin/env python
"""`karl complexity --engine ray` against the single process on the same generated images.

    python benchmarks/ray_engine.py --images 2000 [--weights karl-small] [--size 256] [--json OUT]

Writes ``--images`` procedural images (``io.synthetic`` families, ``--size`` px, PNG and JPEG in
turn) to a temporary folder and scores them twice with the command a user runs, each in its own
process: ``karl complexity DIR --parquet OUT`` and the same with ``--engine ray`` (a local Ray
instance on this machine's cores; ``--ray-args`` adds options such as ``--workers 2``). For each it
reports images/s over the whole run, the start-up cost (the wall time of the same command on
``--startup-images`` images: interpreter, imports, model load, and for Ray its instance and actors)
and the peak resident memory (VmHWM) of the driver process, of Ray's worker processes (each actor
holds one model) and of Ray's own services (raylet, GCS), sampled from /proc every 0.2 s. The two
Parquet outputs must hold the same rows (checked). Not a test: it takes minutes. Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402

from karl_cli.io.synthetic import FAMILIES, make_family_image


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """``n`` images of the synthetic families in turn, every other one JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = make_family_image(FAMILIES[i % len(FAMILIES)], size, rng)
        if i % 2:
            Image.fromarray(a).save(folder / f"{i:05d}.jpg", quality=90)
        else:
            Image.fromarray(a).save(folder / f"{i:05d}.png")


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) and the parent pid of a process; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmHWM", "VmRSS", "PPid"):
                    out[key] = int(val.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class PeakSampler:
    """Peak RSS (VmHWM) of a process and its descendants, by role: the driver itself, Ray's workers
    (process titles ``ray::...``), and every other descendant (Ray's services)."""

    def __init__(self, root: int, every_s: float = 0.2) -> None:
        self.root, self.every_s = root, every_s
        self.peak: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _descendants(self) -> list[int]:
        parent = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                st = _status(int(d))
                if "PPid" in st:
                    parent[int(d)] = st["PPid"]
        out, frontier = [], {self.root}
        while frontier:
            kids = {p for p, pp in parent.items() if pp in frontier}
            out.extend(kids)
            frontier = kids
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in [self.root, *self._descendants()]:
                st = _status(pid)
                if "VmHWM" in st:
                    cmd = _cmdline(pid)
                    role = "driver" if pid == self.root else "ray workers" if cmd.startswith("ray::") else "ray services"
                    self.peak[pid] = (role, max(st["VmHWM"], self.peak.get(pid, ("", 0))[1]))
            self._stop.wait(self.every_s)

    def stop(self) -> dict[str, dict[str, float]]:
        """Per role: processes seen, the largest one's peak and the sum of peaks (MiB)."""
        self._stop.set()
        self._thread.join()
        roles: dict[str, list[int]] = {}
        for role, kib in self.peak.values():
            roles.setdefault(role, []).append(kib)
        return {r: {"processes": len(v), "max_mib": round(max(v) / 1024, 1), "sum_mib": round(sum(v) / 1024, 1)}
                for r, v in roles.items()}


def run(args: list[str]) -> dict:
    """One ``karl complexity`` process: wall seconds and peak memory by role."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "karl_cli", "complexity", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = PeakSampler(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    memory = sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"karl complexity {' '.join(args)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "memory": memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--startup-images", type=int, default=8)
    ap.add_argument("--size", type=int, default=256, help="side of the generated images (px)")
    ap.add_argument("--weights", default="karl-small")
    ap.add_argument("--eps", default="0.05")
    ap.add_argument("--ray-args", default="", help="extra options for the Ray run, e.g. '--workers 2'")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "imgs", a.images, a.size)
        make_images(tmp / "few", a.startup_images, a.size, seed=1)
        common = ["--weights", a.weights, "--eps", a.eps, "--device", "cpu"]
        engines = {"single": [], "ray": ["--engine", "ray", *a.ray_args.split()]}
        results = {}
        for name, extra in engines.items():
            start = run([str(tmp / "few"), "--parquet", str(tmp / f"few-{name}.parquet"), *common, *extra])
            full = run([str(tmp / "imgs"), "--parquet", str(tmp / f"{name}.parquet"), *common, *extra])
            results[name] = {"images_per_s": round(a.images / full["wall_s"], 1), "wall_s": full["wall_s"],
                             "startup_s": start["wall_s"], "peak_memory": full["memory"]}
            print(f"{name:>6}: {results[name]['images_per_s']} images/s ({full['wall_s']} s for {a.images}), "
                  f"start-up {start['wall_s']} s, peak memory {json.dumps(full['memory'])}", flush=True)
        same = pq.read_table(tmp / "single.parquet").equals(pq.read_table(tmp / "ray.parquet"))
        print(f"rows identical: {same}")
    report = {"images": a.images, "size": a.size, "weights": a.weights, "eps": a.eps, "rows_identical": same,
              "results": results, "loadavg_before_after": [load_before, os.getloadavg()], "machine": machine_info("cpu"),
              "command": " ".join(sys.argv)}
    if a.json:
        a.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not same:
        raise SystemExit("the Ray engine's rows differ from the single process's")


if __name__ == "__main__":
    main()

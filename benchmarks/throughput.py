#!/usr/bin/env python
"""How fast is ``karl complexity``? Images per second of the single pass and the searches against decode-only.

    python benchmarks/throughput.py FOLDER [--weights DIR] [--repeats 3] [--batch-size 64] [--workers N]
                                    [--eps 0.05] [--limit N] [--device auto] [--threads N] [--json OUT]
    python benchmarks/throughput.py --synthetic 10000 --tiny      # memory stays flat over a long stream
    python benchmarks/throughput.py FOLDER --profile [--device cuda]   # where the time goes, per stage
    python benchmarks/throughput.py FOLDER --threads-sweep 1,2 [--project-cores 16]   # + thread scaling

One run prints, as medians over ``--repeats`` runs on the same images:

- images/s of ``score(method="single")`` (what ``karl complexity`` runs: KC plus its default check, for
  the wavelet model the L1 of the code's own reconstruction, ``code_l1``), of ``kc_only`` (``check="none"``,
  ``karl complexity --no-l1``: the encoder pass alone), of ``decoder_check`` (``check="decoder"``,
  ``--check decoder``: the decoder's reconstruction and its ``l1``, one more network pass), of the ``search`` (ALIT-style re-encoding) and ``prefix`` (One-D-Piece-style
  prefix decoding) baselines through the same ``karl_cli.scoring.complexity.score``, and of a decode-only loop
  (the same DataLoader, workers and batch size: open + convert + resize, no model; the practical limit);
  also the CPU time per image (this process + loader workers), steadier than images/s under other load;
- the ratios single / decode-only (target >= 0.5 on CPU), kc_only / decode-only (target >= 0.8; both
  issue #30) and single vs search (target >= 4x faster at the same ε and model);
- per-stage time per image, measured in one extra serial pass of ``decoder_check`` (no loader workers and
  nothing decoded ahead, so nothing overlaps):
  decode images (open + convert + resize), encoder (``KARL.encode``: the encoder and halting), decoder
  (``KARL.decode_tokens``) and the rest (batching, rows); plus, in the timed single runs, how long the
  main process waited on the loader (a model starved of images shows up here);
- peak memory: RSS of this process and of the loader workers (``getrusage``), the Python heap peak
  (``tracemalloc``, one extra single pass), and ``torch.cuda.max_memory_allocated`` per method on CUDA;
- the machine (CPU model, cores, torch threads, device) and the exact command.

``--profile`` measures instead, for ``--no-l1`` (``kc_only``), the default check (``single``) and the
decoder's check (``decoder_check``): images/s against decode-only, and the
ms per image of each of ``STAGES`` (decode, the numba kernels, copies, the networks, the rest) in serial
passes that time each stage on its own (CUDA synchronised at every boundary), the torch and numba
threads, and on CUDA the GPU-busy share (``torch.profiler``). ``--threads-sweep 1,2`` does so at each
thread count and projects images/s to ``--project-cores`` cores from the measured stages (``project``;
its assumptions are printed with it). docs/performance.md explains every column.

``--synthetic N`` writes N small images into a temporary folder (a few hundred distinct ones, the rest
hard links to them) and streams ``score`` into a CSV as ``karl complexity --csv`` does, sampling RSS and
Python's allocated blocks as it goes: start, after the first batch, middle, end. ``--tiny`` benchmarks a tiny
random model saved to a temporary folder (seconds per thousand images) instead of ``--weights``.

Run it under ``nice -n 19`` on a shared machine, and quote ratios: absolute numbers move with the load.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shlex
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import karl_cli  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the sibling module machine.py
from machine import machine_info  # noqa: E402
from karl_cli.scoring import complexity as cx
from karl_cli.scoring.complexity import score
from karl_cli.io.rows import ROW_FIELDS, RowWriter, Summary, checkpoint_seconds
from karl_cli.scoring.measure import ImageDataset, collate_images, collect_inputs, image_batches
from karl_cli.io.images import Found
from karl_cli.runtime import default_workers, prepare_model, resolve_device
from karl_cli.scoring.methods import check_method
from karl_cli.errors import UsageError
from karl_cli.models.pretrained import DEFAULT_MODEL, WeightsNotFound, load

REPO = Path(__file__).resolve().parent.parent
METHODS = ("single", "kc_only", "decoder_check", "search", "prefix")   # see score_args
TARGET_SPEEDUP = 4.0          # single-pass vs search at the same ε and model
TARGET_SINGLE_SHARE = 0.5     # `karl complexity` (its default check) vs the decode-only limit, on CPU (issue #30)
TARGET_KC_ONLY_SHARE = 0.8    # KC alone (`--no-l1`) vs the decode-only limit, on CPU (issue #30)


# --- memory --------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_of(pid: int | str) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def rss_mb() -> float:
    """Resident memory of this process now (MiB)."""
    return _rss_of("self") / 2**20


def workers_rss_mb() -> float:
    """Resident memory of this process's children now (DataLoader workers), summed (MiB)."""
    return sum(_rss_of(c) for c in _children(os.getpid())) / 2**20


def peak_rss_mb() -> dict[str, float]:
    """Peak RSS (MiB) of this process, and the largest of its finished children (Linux: KiB units)."""
    unit = 1 if sys.platform == "darwin" else 1024
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 2**20}


# --- timing helpers ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def loader_timer(acc: dict[str, float]) -> Iterator[None]:
    """Time every wait of ``score`` on its DataLoader: wraps ``complexity.image_batches`` for the block."""
    original = cx.image_batches

    def timed(*args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        it = original(*args, **kwargs)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                acc["loader"] = acc.get("loader", 0.0) + time.perf_counter() - t0
                return
            acc["loader"] = acc.get("loader", 0.0) + time.perf_counter() - t0
            yield batch

    cx.image_batches = timed
    try:
        yield
    finally:
        cx.image_batches = original


@contextlib.contextmanager
def model_timer(model: torch.nn.Module, acc: dict[str, float], device: torch.device) -> Iterator[None]:
    """Time ``encode`` (the single pass: encoder and halting) / ``decode_tokens`` of ``model`` (instance
    attributes shadow the methods)."""

    def wrap(name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            _sync(device)
            acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed

    model.encode = wrap("encoder", model.encode)
    model.decode_tokens = wrap("decoder", model.decode_tokens)
    try:
        yield
    finally:
        del model.encode, model.decode_tokens


# --- the runs ------------------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (the loader workers)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def run_decode_only(items: Sequence[Found], resolution: int, batch_size: int, workers: int,
                    device: torch.device) -> dict[str, Any]:
    """The DataLoader of ``score`` on its own: open + convert + resize, batched, no model."""
    c0, t0 = _cpu_seconds(), time.perf_counter()
    n = 0
    for batch in image_batches(items, resolution, batch_size, workers, pin_memory=device.type == "cuda"):
        if batch["images"] is not None:
            n += batch["images"].shape[0]
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu_seconds() - c0, "images": n}


def score_args(method: str) -> tuple[str, dict[str, Any]]:
    """``score``'s method and keywords for a benchmark method: ``single`` is plain ``karl complexity``
    (its default check), ``kc_only`` the single pass without a check (``--no-l1``), ``decoder_check``
    the single pass checked by the decoder (``--check decoder``); ``search`` / ``prefix`` as named."""
    if method == "kc_only":
        return "single", {"check": "none"}
    if method == "decoder_check":
        return "single", {"check": "decoder"}
    return method, {}


def forget_last_batch(model: torch.nn.Module) -> None:
    """Clear what the model keeps of the last batch (the ``*_memo`` attributes of it and its modules:
    the code's last codes, the halting features) so a run over the same images does the work again, as
    ``karl complexity`` does for every new batch. Without this, a run of one batch would be answered
    from the warm-up's results."""
    for m in model.modules():
        for name in [k for k in vars(m) if k.endswith("_memo")]:
            setattr(m, name, None)


def run_method(items: Sequence[Found], model: torch.nn.Module, eps: float, method: str, batch_size: int,
               workers: int, device: torch.device, timers: dict[str, float] | None = None) -> dict[str, Any]:
    """One ``score`` pass, rows consumed as the CLI does (summary, no file): seconds, images, runs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    summary = Summary()
    enc_runs = dec_runs = n_rows = 0
    method, kwargs = score_args(method)
    forget_last_batch(model)
    _sync(device)
    c0, t0 = _cpu_seconds(), time.perf_counter()
    with loader_timer(timers if timers is not None else {}):
        for row in score(items, model, [eps], method=method, batch_size=batch_size, workers=workers, device=device,
                         **kwargs):
            summary.add(row)
            n_rows += 1
            enc_runs += row["encoder_runs"]
            dec_runs += row["decoder_runs"]
    _sync(device)
    seconds = time.perf_counter() - t0
    stats = summary.table()[0] if n_rows else {}
    out = {"seconds": seconds, "cpu_seconds": _cpu_seconds() - c0, "images": n_rows - summary.errors,
           "errors": summary.errors,
           "encoder_runs": enc_runs / max(n_rows, 1), "decoder_runs": dec_runs / max(n_rows, 1),
           "kc_mean": stats.get("kc_mean"), "l1_mean": stats.get("l1_mean"), "miss": stats.get("miss")}
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_stages(items: Sequence[Found], model: torch.nn.Module, eps: float, batch_size: int,
               device: torch.device) -> dict[str, float]:
    """One serial run of the single pass checked by the decoder (``decoder_check``: every stage has work;
    no loader workers and nothing decoded ahead, ``serial_decode``): ms per image in decode images,
    encoder, decoder, rest."""
    acc: dict[str, float] = {}
    with serial_decode(), model_timer(model, acc, device):
        res = run_method(items, model, eps, "decoder_check", batch_size, 0, device, timers=acc)
    total = res["seconds"]
    stages = {"decode_images": acc.get("loader", 0.0), "encoder": acc.get("encoder", 0.0),
              "decoder": acc.get("decoder", 0.0)}
    stages["rest"] = max(0.0, total - sum(stages.values()))
    stages["total"] = total
    return {k: 1000.0 * v / max(res["images"], 1) for k, v in stages.items()}   # ms per image


def python_heap_peak(items: Sequence[Found], model: torch.nn.Module, eps: float, batch_size: int,
                     workers: int, device: torch.device) -> float:
    """Peak of the Python heap (tracemalloc, MiB) over one single-pass run."""
    tracemalloc.start()
    try:
        run_method(items, model, eps, "single", batch_size, workers, device)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def throughput(items: Sequence[Found], model: torch.nn.Module, eps: float, repeats: int, batch_size: int,
               workers: int, device: torch.device, methods: Sequence[str] = METHODS,
               log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The throughput figures (see the module docstring) as a dict."""
    res_ = model.config.resolution
    prepare_model(model, device)
    # Warm-up: first-call costs (kernel selection, page faults, the loader's fork) stay out of the medians.
    run_method(items[: min(len(items), batch_size)], model, eps, "single", batch_size, 0, device)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("decode_only", *methods)}
    stages: list[dict[str, float]] = []
    for r in range(repeats):
        # Interleaved, so a change in the machine's load hits every method alike.
        runs["decode_only"].append(run_decode_only(items, res_, batch_size, workers, device))
        for m in methods:
            timers: dict[str, float] = {}
            runs[m].append(run_method(items, model, eps, m, batch_size, workers, device, timers))
            runs[m][-1]["loader_wait"] = timers.get("loader", 0.0)
        stages.append(run_stages(items, model, eps, batch_size, device))
        log(f"repeat {r + 1}/{repeats}: " + ", ".join(
            f"{k} {v[-1]['images'] / v[-1]['seconds']:.1f} img/s" for k, v in runs.items()))
    out: dict[str, Any] = {"images": len(items), "methods": {}}
    for m, rs in runs.items():
        ips = [x["images"] / x["seconds"] for x in rs if x["seconds"] > 0]
        entry: dict[str, Any] = {"images_per_s": _median(ips), "images_per_s_runs": ips,
                                 "seconds": _median([x["seconds"] for x in rs]),
                                 "cpu_ms_per_image": _median([1000 * x["cpu_seconds"] / max(x["images"], 1)
                                                              for x in rs])}
        if m != "decode_only":
            last = rs[-1]
            for k in ("encoder_runs", "decoder_runs", "kc_mean", "l1_mean", "miss", "errors"):
                entry[k] = last[k]
            entry["loader_wait_s"] = _median([x["loader_wait"] for x in rs])
            if "cuda_peak_mb" in last:
                entry["cuda_peak_mb"] = max(x["cuda_peak_mb"] for x in rs)
        out["methods"][m] = entry
    out["stages_ms_per_image"] = {k: _median([s[k] for s in stages]) for k in stages[0]}
    ips = {m: out["methods"][m]["images_per_s"] for m in out["methods"]}
    ratios: dict[str, float] = {"single_vs_decode_only": ips["single"] / ips["decode_only"]}
    if "kc_only" in ips:
        ratios["kc_only_vs_decode_only"] = ips["kc_only"] / ips["decode_only"]
    if "decoder_check" in ips:
        ratios["decoder_check_vs_decode_only"] = ips["decoder_check"] / ips["decode_only"]
    for m in ("search", "prefix"):
        if m in ips:
            ratios[f"single_speedup_vs_{m}"] = ips["single"] / ips[m]
    out["ratios"] = ratios
    targets: dict[str, Any] = {}
    if "search" in ips:
        targets["single_4x_faster_than_search"] = ratios["single_speedup_vs_search"] >= TARGET_SPEEDUP
    if device.type == "cpu":
        targets["single_half_of_decode_only"] = ratios["single_vs_decode_only"] >= TARGET_SINGLE_SHARE
        if "kc_only" in ips:
            targets["kc_only_four_fifths_of_decode_only"] = ratios["kc_only_vs_decode_only"] >= TARGET_KC_ONLY_SHARE
    out["targets"] = targets
    out["memory"] = {"python_heap_peak_mb": python_heap_peak(items, model, eps, batch_size, workers, device),
                     "rss_peak_mb": peak_rss_mb()["self"], "workers_rss_peak_mb": peak_rss_mb()["children"],
                     "rss_now_mb": rss_mb()}
    if device.type == "cuda":
        out["memory"]["cuda_peak_mb"] = max(out["methods"][m].get("cuda_peak_mb", 0.0) for m in methods)
    return out


# --- the profile: where the time goes, and how it scales with threads ------------------------------------
# Stages of a profiled pass, in report order. Each is exclusive: a region's time less the regions timed
# inside it (the kernels run inside the encoder's and the decoder's calls).
STAGES = {
    "decode_images": "waiting on the loader: open + convert + resize (the whole decode in a serial pass)",
    "kernel_order": "numba wavelet_kernels.order: the code's adaptive order (encoding; decoder replays)",
    "kernel_prefix_l1": "numba wavelet_kernels.prefix_l1: the prefix L1s the halting head reads (and checks)",
    "copies": "host<->device copies and tensor<->numpy conversions around the kernels, the batch to the device",
    "encoder": "KARL.encode less the above: Haar transform, conv stem, encoder transformer, halting head",
    "decoder": "decode_tokens less the above: decoder transformer, conv head, the code's synthesis",
    "rest": "everything else: measure's bookkeeping, rows, the summary",
}
NETWORK_STAGES = ("encoder", "decoder")            # torch networks: on the GPU under --device cuda
KERNEL_STAGES = ("kernel_order", "kernel_prefix_l1")


def profile_modes(model: torch.nn.Module) -> list[str]:
    """What the profile measures: KC alone, ``karl complexity`` with its default check, and with the
    decoder's check (the same as the default for a model whose tokens are not its code)."""
    return ["kc_only", "single", "decoder_check"]


class StageClock:
    """Exclusive wall time per stage of nested, wrapped calls (``wrap``), synchronising CUDA at every
    boundary so GPU work is charged to the stage that queued it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._inner: list[float] = []          # time of the regions nested in each open region

    def wrap(self, stage: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync(self.device)
            t0 = time.perf_counter()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(self.device)
                dt = time.perf_counter() - t0
                inner = self._inner.pop()
                self.seconds[stage] = self.seconds.get(stage, 0.0) + dt - inner
                self.calls[stage] = self.calls.get(stage, 0) + 1
                if self._inner:
                    self._inner[-1] += dt
        return timed


@contextlib.contextmanager
def profile_hooks(model: torch.nn.Module, clock: StageClock) -> Iterator[None]:
    """Wrap, for the block: ``model.encode`` / ``decode_tokens`` (instance attributes shadow the methods),
    the code's kernel callers ``_order`` / ``prefix_l1`` (their own time: conversions and copies), the
    numba kernels in ``karl_cli.models.wavelet_kernels`` and measure's ``to_model_input``. A hook whose
    target this model lacks is left out (its stage then reads 0 and ``calls`` shows it)."""
    import karl_cli.models.wavelet_kernels as kernels
    import karl_cli.scoring.measure as measure_mod

    undo: list[Callable[[], None]] = []

    def shadow(obj: Any, name: str, stage: str) -> None:
        if obj is not None and callable(getattr(obj, name, None)):
            setattr(obj, name, clock.wrap(stage, getattr(obj, name)))
            undo.append(lambda: delattr(obj, name))

    def patch(module: Any, name: str, stage: str) -> None:
        original = getattr(module, name, None)
        if callable(original):
            setattr(module, name, clock.wrap(stage, original))
            undo.append(lambda: setattr(module, name, original))

    shadow(model, "encode", "encoder")
    shadow(model, "decode_tokens", "decoder")
    code = getattr(model, "code", None)
    shadow(code, "_order", "copies")
    shadow(code, "prefix_l1", "copies")
    patch(kernels, "order", "kernel_order")
    patch(kernels, "prefix_l1", "kernel_prefix_l1")
    patch(measure_mod, "to_model_input", "copies")
    try:
        yield
    finally:
        for u in reversed(undo):
            u()


@contextlib.contextmanager
def serial_decode() -> Iterator[None]:
    """For the block, ``score`` decodes each batch when it asks for it, in its own thread (a DataLoader
    without workers, nothing decoded ahead), whatever ``image_batches`` does with ``workers=0``: in a
    profiled pass the decode then overlaps, and competes with, nothing."""
    original = cx.image_batches

    def serial(items: Sequence[Found], resolution: int, batch_size: int, workers: int,
               baselines: Sequence[str] = (), pin_memory: bool = False) -> Iterator[dict[str, Any]]:
        return iter(DataLoader(ImageDataset(items, resolution, baselines), batch_size=batch_size, shuffle=False,
                               num_workers=0, collate_fn=collate_images, pin_memory=pin_memory))

    cx.image_batches = serial
    try:
        yield
    finally:
        cx.image_batches = original


def run_profiled(items: Sequence[Found], model: torch.nn.Module, eps: float, mode: str, batch_size: int,
                 device: torch.device) -> dict[str, Any]:
    """One serial pass (no loader workers, no decoding ahead: nothing overlaps) of ``mode`` with every
    stage timed: ms per image of each of ``STAGES`` (they sum to ``total``) and the calls each hook saw."""
    clock = StageClock(device)
    acc: dict[str, float] = {}
    with profile_hooks(model, clock), serial_decode():
        res = run_method(items, model, eps, mode, batch_size, 0, device, timers=acc)
    seconds = dict(clock.seconds, decode_images=acc.get("loader", 0.0))
    seconds["rest"] = max(0.0, res["seconds"] - sum(seconds.get(s, 0.0) for s in STAGES if s != "rest"))
    n = max(res["images"], 1)
    ms = {s: 1000.0 * seconds.get(s, 0.0) / n for s in STAGES}
    ms["total"] = 1000.0 * res["seconds"] / n
    return {"ms": ms, "calls": dict(clock.calls)}


def busy_us(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time at least one of them was running (streams
    that overlap are counted once)."""
    total, end = 0.0, -math.inf
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def gpu_busy(items: Sequence[Found], model: torch.nn.Module, eps: float, mode: str, batch_size: int,
             device: torch.device, batches: int = 2) -> dict[str, Any]:
    """GPU-busy ms per image of ``mode``: the union of the GPU's kernel and copy intervals (CUPTI, via
    ``torch.profiler``) over a serial pass of ``batches`` batches. ``{"error": ...}`` where the
    profiler cannot trace the GPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sub = items[: batches * batch_size]
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            res = run_method(sub, model, eps, mode, batch_size, 0, device)
        spans = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    except Exception as e:   # noqa: BLE001 - a profiler that cannot trace is a figure missing, not a failed run
        return {"error": f"{type(e).__name__}: {e}"}
    if not spans:
        return {"error": "the profiler recorded no GPU activity"}
    return {"gpu_busy_ms_per_image": busy_us(spans) / 1000.0 / max(res["images"], 1), "images": res["images"]}


def _set_threads(n: int) -> dict[str, int]:
    """torch's and numba's thread counts to ``n`` (numba: at most its pool), as the run will use them."""
    import karl_cli.models.wavelet_kernels as kernels
    import numba

    torch.set_num_threads(n)
    kernels.use_threads(n)
    return {"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
            "numba_pool": numba.config.NUMBA_NUM_THREADS}


def profile_entry(items: Sequence[Found], model: torch.nn.Module, eps: float, repeats: int, batch_size: int,
                  workers: int, device: torch.device, log: Callable[[str], None] = lambda s: None
                  ) -> dict[str, Any]:
    """The profile at the current thread counts: for decode-only and each of ``profile_modes``,
    images/s and CPU ms/image (medians over ``repeats`` runs with ``workers`` loader processes), ms per
    image of each stage (median over ``repeats`` serial profiled passes), and on CUDA the GPU-busy ms
    per image and its share of the run's wall time."""
    import numba

    threads = {"torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
               "numba_pool": numba.config.NUMBA_NUM_THREADS}
    modes = profile_modes(model)
    res_ = model.config.resolution
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in ("decode_only", *modes)}
    passes: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(repeats):
        runs["decode_only"].append(run_decode_only(items, res_, batch_size, workers, device))
        for m in modes:
            runs[m].append(run_method(items, model, eps, m, batch_size, workers, device))
            passes[m].append(run_profiled(items, model, eps, m, batch_size, device))
    entry: dict[str, Any] = {"threads": threads, "workers": workers, "modes": {}}
    for m, rs in runs.items():
        e: dict[str, Any] = {"images_per_s": _median([x["images"] / x["seconds"] for x in rs if x["seconds"] > 0]),
                             "cpu_ms_per_image": _median([1000 * x["cpu_seconds"] / max(x["images"], 1) for x in rs])}
        if m in passes:
            ms = passes[m]
            e["stages_ms_per_image"] = {s: _median([p["ms"][s] for p in ms]) for s in (*STAGES, "total")}
            e["calls"] = ms[-1]["calls"]
            if device.type == "cuda":
                e["gpu"] = gpu_busy(items, model, eps, m, batch_size, device)
                if "gpu_busy_ms_per_image" in e["gpu"] and e["images_per_s"] > 0:
                    # The share of the real (overlapped, unsynchronised) run's wall time the GPU is busy:
                    # well under 1 means the CPU side bounds the run.
                    e["gpu"]["busy_share"] = e["gpu"]["gpu_busy_ms_per_image"] * e["images_per_s"] / 1000.0
        entry["modes"][m] = e
    log(f"threads torch {threads['torch']} / numba {threads['numba']}: " + ", ".join(
        f"{m} {e['images_per_s']:.1f} img/s" for m, e in entry["modes"].items()))
    return entry


def _fit(points: Sequence[tuple[int, float]]) -> tuple[float, float, str]:
    """t(n) = serial + parallel / n through the fewest and the most threads measured (Amdahl's law in
    ms per image), both parts >= 0: a stage that got slower with threads counts as serial at its
    slowest, one that scaled better than 1/n as all parallel. One thread count: all parallel (an
    assumption, said in the third value)."""
    (n_a, t_a), (n_b, t_b) = min(points), max(points)
    if n_a == n_b:
        return 0.0, t_a * n_a, "assumed parallel (one thread count measured)"
    parallel = (t_a - t_b) / (1.0 / n_a - 1.0 / n_b)
    serial = t_a - parallel / n_a
    if parallel < 0:
        return max(t_a, t_b), 0.0, "fit"
    if serial < 0:
        return 0.0, t_b * n_b, "fit"
    return serial, parallel, "fit"


def project(entries: Sequence[dict[str, Any]], cores: int, device: torch.device) -> dict[str, Any]:
    """Images/s of each profiled mode on a machine with ``cores`` cores like this one's, from the
    entries' stage times (see ``PROJECTION_ASSUMPTIONS``), for a CPU-only run and for one whose
    networks run on a GPU. Nothing here is a constant: every term comes from ``entries``."""
    out: dict[str, Any] = {"cores": cores, "from_threads": sorted({e["threads"]["torch"] for e in entries}),
                           "assumptions": PROJECTION_ASSUMPTIONS, "modes": {}}
    for m in entries[0]["modes"]:
        if "stages_ms_per_image" not in entries[0]["modes"][m]:
            continue
        pts = {s: [(e["threads"]["torch"], e["modes"][m]["stages_ms_per_image"][s]) for e in entries] for s in STAGES}
        fits = {s: _fit(p) for s, p in pts.items() if s != "decode_images"}
        decode = min(pts["decode_images"])[1]      # one image per loader process: no thread scaling
        per_mode: dict[str, Any] = {"fit": {s: {"serial_ms": f[0], "parallel_ms": f[1], "how": f[2]}
                                            for s, f in fits.items()}}
        # Measured on CUDA the network stages are GPU times: no CPU-only projection from them.
        for target in ("gpu",) if device.type == "cuda" else ("cpu", "gpu"):
            workers = default_workers_for(target, cores)
            stage_ms: dict[str, float] = {}
            for s, (serial, parallel, _) in fits.items():
                if target == "gpu" and s in NETWORK_STAGES:
                    # Measured on CUDA: the synchronised GPU time as it is. Measured on a CPU: 0, an
                    # upper bound (the GPU's own time for the networks is not known here).
                    stage_ms[s] = max(pts[s])[1] if device.type == "cuda" else 0.0
                else:
                    stage_ms[s] = serial + parallel / cores
            main_ms = sum(stage_ms.values()) + (decode if workers == 0 else 0.0)
            cpu_work = decode + sum(serial + parallel for s, (serial, parallel, _) in fits.items()
                                    if not (target == "gpu" and s in NETWORK_STAGES))
            bounds = {"main process": 1000.0 / main_ms if main_ms > 0 else math.inf,
                      "loader": 1000.0 * workers / decode if workers and decode > 0 else math.inf,
                      "cores": 1000.0 * cores / cpu_work if cpu_work > 0 else math.inf}
            bound = min(bounds, key=bounds.get)
            per_mode[target] = {"workers": workers, "stages_ms_per_image": dict(stage_ms, decode_images=decode),
                                "main_process_ms_per_image": main_ms, "cpu_work_ms_per_image": cpu_work,
                                "bounds_images_per_s": bounds, "images_per_s": bounds[bound], "bound": bound}
        out["modes"][m] = per_mode
    return out


def default_workers_for(target: str, cores: int) -> int:
    """``runtime.default_workers`` on a machine with ``cores`` cores (``target`` "cpu" or "gpu")."""
    import unittest.mock

    with unittest.mock.patch("os.cpu_count", return_value=cores):
        return default_workers(torch.device("cuda" if target == "gpu" else "cpu"))


PROJECTION_ASSUMPTIONS = [
    "cores as fast as this machine's, per image the same work; memory bandwidth and caches not limiting",
    "each main-process stage takes serial + parallel/N ms per image on N threads, the two parts fitted "
    "through the fewest and the most threads measured (Amdahl); torch and numba use all N cores",
    "decoding runs one image at a time in each loader process (as many as `karl complexity` starts on "
    "that machine), beside the main process; with none it is serial in the main process",
    "with a GPU: the networks (encoder, decoder) leave the CPU; their time is the measured CUDA time, "
    "or 0 when measured on a CPU (an upper bound); the main process waits for them (the code's kernels "
    "read the GPU's results), so kernels, copies, networks and the rest add up per batch",
    "images/s = the least of: the main process's rate, the loaders' rate, and N cores over the total "
    "CPU work per image (loaders and kernels share the cores)",
]


def threads_sweep(items: Sequence[Found], model: torch.nn.Module, eps: float, repeats: int, batch_size: int,
                  workers: int, device: torch.device, counts: Sequence[int], cores: int,
                  log: Callable[[str], None] = lambda s: None,
                  on_entry: Callable[[dict[str, Any]], None] = lambda p: None) -> dict[str, Any]:
    """``profile_entry`` at each thread count (torch and numba alike) in ``counts``, then ``project``
    to ``cores`` cores. ``on_entry(partial)`` after each entry (the caller saves it: a run cut short
    keeps what it measured). Restores the thread counts it found."""
    prepare_model(model, device)
    # Warm-up: numba's compile (first call, or its cache), kernel selection, page faults.
    run_method(items[: min(len(items), batch_size)], model, eps, "single", batch_size, 0, device)
    before = torch.get_num_threads()
    out: dict[str, Any] = {"images": len(items), "repeats": repeats, "stages": STAGES, "entries": []}
    try:
        for n in counts:
            _set_threads(n)
            out["entries"].append(profile_entry(items, model, eps, repeats, batch_size, workers, device, log))
            out["projection"] = project(out["entries"], cores, device)
            on_entry(out)
    finally:
        _set_threads(before)
    return out


# --- memory over a long stream -------------------------------------------------------------------------
def make_synthetic(folder: Path, n: int, distinct: int = 256, size: int = 96, seed: int = 0) -> Path:
    """``n`` images under ``folder`` (1,000 per subfolder): ``distinct`` generated ones (JPEG and PNG,
    flat colour + rectangles + noise), the rest hard links to them, cyclically."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = folder / "distinct"
    src.mkdir(parents=True, exist_ok=True)
    originals = []
    for i in range(min(distinct, n)):
        a = np.zeros((size, size, 3), np.int16) + rng.integers(0, 256, 3)
        for _ in range(i % 8):
            x, y = rng.integers(0, size - 16, 2)
            w, h = rng.integers(4, 16, 2)
            a[y:y + h, x:x + w] = rng.integers(0, 256, 3)
        a += rng.integers(-(i % 5) * 8, (i % 5) * 8 + 1, a.shape)
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        p = src / (f"s{i:05d}.jpg" if i % 2 else f"s{i:05d}.png")
        img.save(p, quality=90) if i % 2 else img.save(p)
        originals.append(p)
    for i in range(len(originals), n):
        sub = folder / f"part{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        target = originals[i % len(originals)]
        os.link(target, sub / f"l{i:06d}{target.suffix}")   # hard links: scanning skips symlinks
    return folder


def memory_stream(folder: Path, model: torch.nn.Module, eps: float, batch_size: int, workers: int,
                  device: torch.device, csv_path: Path, log: Callable[[str], None] = lambda s: None,
                  l1: bool = True) -> dict[str, Any]:
    """Stream ``score`` rows into a CSV (as ``karl complexity --csv``), sampling memory: RSS of this
    process and its workers, and the Python heap (tracemalloc), at start, first batch, middle, end."""
    found = collect_inputs([folder])
    total = len(found)
    samples: list[dict[str, Any]] = []
    every = max(1, -(-total // batch_size) // 20) * batch_size     # about 20 samples over the stream

    def sample(label: str, done: int) -> None:
        samples.append({"label": label, "images": done, "rss_mb": rss_mb(), "workers_rss_mb": workers_rss_mb(),
                        "py_blocks": sys.getallocatedblocks()})

    def progress(done: int, _total: int) -> None:
        if done == 0:
            return
        labels = {s["label"] for s in samples}
        if "first_batch" not in labels:
            sample("first_batch", done)
        elif "middle" not in labels and done >= total // 2:
            sample("middle", done)
        elif done % every == 0:
            sample("", done)

    # No tracemalloc here: its own bookkeeping grows the RSS it would be measuring. Python objects are
    # counted with sys.getallocatedblocks() instead (free to read).
    prepare_model(model, device)
    sample("start", 0)
    t0 = time.perf_counter()
    summary = Summary()   # as the CLI: it keeps kc and l1 per row for the medians (~2 floats a row)
    with RowWriter(csv_path, ROW_FIELDS, checkpoint_s=checkpoint_seconds()) as w:   # as the CLI
        for row in score(found, model, [eps], batch_size=batch_size, workers=workers, device=device,
                         progress=progress, l1=l1):
            w.write(row)
            summary.add(row)
    seconds = time.perf_counter() - t0
    sample("end", total)
    named = {s["label"]: s for s in samples if s["label"]}
    first, end = named.get("first_batch", named["start"]), named["end"]
    out = {
        "images": total, "rows": w.count, "errors": summary.errors, "seconds": seconds,
        "images_per_s": total / seconds if seconds else 0.0, "csv_bytes": csv_path.stat().st_size,
        "rss_mb": {k: round(named[k]["rss_mb"], 1) for k in ("start", "first_batch", "middle", "end") if k in named},
        "workers_rss_mb": {k: round(named[k]["workers_rss_mb"], 1)
                           for k in ("first_batch", "middle") if k in named},
        "py_blocks": {k: named[k]["py_blocks"] for k in ("start", "first_batch", "middle", "end") if k in named},
        "rss_growth_mb": end["rss_mb"] - first["rss_mb"],
        "py_blocks_per_image": (end["py_blocks"] - first["py_blocks"]) / max(total - first["images"], 1),
        "rss_series_mb": [(s["images"], round(s["rss_mb"], 1)) for s in samples],
        "rss_peak_mb": peak_rss_mb()["self"],
    }
    log(f"streamed {total} images in {seconds:.1f} s ({out['images_per_s']:.0f} img/s)")
    return out


# --- command line --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/throughput.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", help="Images to benchmark on (recursive).")
    p.add_argument("--weights", default=None, help=f"A shipped model name or a weights folder (default: {DEFAULT_MODEL}).")
    p.add_argument("--tiny", action="store_true", help="Use a tiny random model (saved to a temp folder).")
    p.add_argument("--repeats", type=int, default=3, help="Runs per method; medians are reported.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="Loader processes (default: as `karl complexity`).")
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--limit", type=int, default=None, help="Only the first N images (sorted).")
    p.add_argument("--methods", default=None,
                   help="Comma-separated subset of " + ",".join(METHODS) + " (default: all; not with --profile).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    p.add_argument("--profile", action="store_true",
                   help="Where the time goes: images/s and ms/image per stage (decode, numba kernels, copies, "
                        "networks, rest) of --no-l1, the default check and the decoder check, GPU-busy share on "
                        "CUDA, a projection to --project-cores cores.")
    p.add_argument("--threads-sweep", default=None, metavar="N,M,..",
                   help="The profile at each torch/numba thread count, side by side (implies --profile).")
    p.add_argument("--project-cores", type=int, default=16, metavar="N",
                   help="Cores of the machine the profile projects to (default 16).")
    p.add_argument("--synthetic", type=int, default=None, metavar="N",
                   help="Memory run: stream score over N generated images into a CSV.")
    p.add_argument("--no-l1", action="store_true", help="Memory run without the l1 check (`karl complexity --no-l1`).")
    p.add_argument("--json", dest="json_out", default=None, help="Also write the results as JSON ('-' = stdout).")
    return p


def _fmt_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def render(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"command: {result['command']}",
             f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), torch {m['torch']} with "
             f"{m['torch_threads']} threads, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
             + (f", nice {m['nice']}" if m.get("nice") else ""),
             f"model: {result['weights']} ({result['params'] / 1e6:.2f}M params, {result['resolution']} px, "
             f"T_max {result['max_tokens']}); batch {result['batch_size']}, workers {result['workers']}, "
             f"ε {result['eps']:g}"]
    if "throughput" in result:
        t = result["throughput"]
        lines.append(f"{t['images']} images, median of {result['repeats']} runs")
        rows = [["method", "img/s", "runs (img/s)", "CPU ms/img", "enc/dec runs", "KC mean", "L1 mean",
                 "loader wait s"]]
        for name, e in t["methods"].items():
            rows.append([name, f"{e['images_per_s']:.1f}", " ".join(f"{v:.1f}" for v in e["images_per_s_runs"]),
                         f"{e['cpu_ms_per_image']:.2f}",
                         f"{e['encoder_runs']:.1f}/{e['decoder_runs']:.1f}" if "encoder_runs" in e else "–",
                         f"{e['kc_mean']:.1f}" if e.get("kc_mean") is not None else "–",
                         f"{e['l1_mean']:.4f}" if e.get("l1_mean") is not None else "–",
                         f"{e['loader_wait_s']:.2f}" if "loader_wait_s" in e else "–"])
        lines += ["", _fmt_table(rows),
                  "(single: `karl complexity`, KC + its default check (the code's L1 for the wavelet model); kc_only: "
                  "`--no-l1`, the encoder pass alone; decoder_check: `--check decoder`, + 1 decoder pass; CPU ms/img: CPU time of this process and its loader workers per image, steadier than img/s on "
                  "a loaded machine)", ""]
        r = t["ratios"]
        lines.append(f"single / decode-only: {r['single_vs_decode_only']:.2f}"
                     + (f"   kc_only / decode-only: {r['kc_only_vs_decode_only']:.2f}"
                        if "kc_only_vs_decode_only" in r else "")
                     + (f"   decoder_check / decode-only: {r['decoder_check_vs_decode_only']:.2f}"
                        if "decoder_check_vs_decode_only" in r else "")
                     + (f"   single vs search: {r['single_speedup_vs_search']:.1f}x faster"
                        if "single_speedup_vs_search" in r else "")
                     + (f"   single vs prefix: {r['single_speedup_vs_prefix']:.1f}x faster"
                        if "single_speedup_vs_prefix" in r else ""))
        s = t["stages_ms_per_image"]
        lines.append("stages, ms/image (a serial decoder_check pass): " + ", ".join(
            f"{k.replace('_', ' ')} {s[k]:.2f}" for k in ("decode_images", "encoder", "decoder", "rest", "total")))
        mem = t["memory"]
        lines.append(f"memory: peak RSS {mem['rss_peak_mb']:.0f} MiB"
                     + (f" (largest loader worker {mem['workers_rss_peak_mb']:.0f} MiB)" if result["workers"] else "")
                     + ", "
                     f"Python heap peak {mem['python_heap_peak_mb']:.1f} MiB"
                     + (f", CUDA peak {mem['cuda_peak_mb']:.0f} MiB" if "cuda_peak_mb" in mem else ""))
        for name, ok in t["targets"].items():
            lines.append(f"target {name.replace('_', ' ')}: {'PASS' if ok else 'FAIL'}")
    if "profile" in result:
        lines += ["", render_profile(result["profile"])]
    if "synthetic" in result:
        s = result["synthetic"]
        lines += ["", f"memory stream{'' if s.get('l1', True) else ' (--no-l1)'}: {s['images']} images -> CSV ({s['csv_bytes'] / 1e6:.1f} MB) in "
                      f"{s['seconds']:.1f} s ({s['images_per_s']:.0f} img/s), {s['errors']} errors",
                  "RSS MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in s["rss_mb"].items())
                  + f"; growth first batch -> end {s['rss_growth_mb']:+.1f} MiB",
                  *(["loader workers RSS MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in s["workers_rss_mb"].items())]
                    if result["workers"] else []),
                  "Python objects (allocated blocks): " + ", ".join(f"{k} {v:,}" for k, v in s["py_blocks"].items())
                  + f"; growth {s['py_blocks_per_image']:+.2f} per image (the summary keeps kc and l1 per row)",
                  "RSS series (images, MiB): " + " ".join(f"{n}:{v:.0f}" for n, v in s["rss_series_mb"])]
    return "\n".join(lines)


def _ms(v: float) -> str:
    return f"{v:.2f}"


def render_profile(p: dict[str, Any]) -> str:
    """The profile as text: one column per (mode, thread count), then the projection and its assumptions."""
    entries = p["entries"]
    cols = [(m, e) for e in entries for m in e["modes"] if m != "decode_only"]
    head = ["ms per image"] + [f"{m} @{e['threads']['torch']}/{e['threads']['numba']}" for m, e in cols]
    rows = [head]
    for s in (*STAGES, "total"):
        rows.append([s.replace("_", " ")] + [_ms(e["modes"][m]["stages_ms_per_image"][s]) for m, e in cols])
    rows.append([f"images/s ({entries[0]['workers']} workers)"]
                + [f"{e['modes'][m]['images_per_s']:.1f}" for m, e in cols])
    rows.append(["of decode-only"] + [f"{e['modes'][m]['images_per_s'] / e['modes']['decode_only']['images_per_s']:.2f}"
                                      for m, e in cols])
    rows.append(["CPU ms/image"] + [_ms(e["modes"][m]["cpu_ms_per_image"]) for m, e in cols])
    if any("gpu" in e["modes"][m] for m, e in cols):
        g = [e["modes"][m].get("gpu", {}) for m, e in cols]
        rows.append(["GPU busy ms/image"] + [_ms(x["gpu_busy_ms_per_image"]) if "gpu_busy_ms_per_image" in x else "–"
                                             for x in g])
        rows.append(["GPU busy share"] + [f"{x['busy_share']:.2f}" if "busy_share" in x else "–" for x in g])
    lines = [f"profile: {p['images']} images, medians of {p['repeats']} run(s); @torch/numba threads; stage "
             "ms/image from serial profiled passes (no loader workers or decoding ahead, CUDA synchronised at "
             "each stage), images/s from unprofiled runs",
             _fmt_table(rows), "decode-only images/s: " + ", ".join(
                 f"{e['modes']['decode_only']['images_per_s']:.1f} at {e['threads']['torch']}t" for e in entries)]
    lines += [f"  {s.replace('_', ' ')}: {d}" for s, d in p["stages"].items()]
    errors = {x["gpu"]["error"] for e in entries for x in e["modes"].values() if "error" in x.get("gpu", {})}
    lines += [f"GPU busy: not measured ({err})" for err in sorted(errors)]
    pr = p.get("projection")
    if pr:
        threads = ", ".join(map(str, pr["from_threads"]))
        lines += ["", f"projection to {pr['cores']} cores, from the stage times at {threads} thread(s):"]
        rows = [["mode", "machine", "workers", "kernels ms", "networks ms", "copies+rest ms", "decode ms",
                 "main ms/img", "img/s", "bound"]]
        for m, q in pr["modes"].items():
            for target in [k for k in ("cpu", "gpu") if k in q]:
                t = q[target]
                st = t["stages_ms_per_image"]
                rows.append([m, f"{pr['cores']} cores" + (" + GPU" if target == "gpu" else ""), str(t["workers"]),
                             _ms(sum(st[s] for s in KERNEL_STAGES)), _ms(sum(st[s] for s in NETWORK_STAGES)),
                             _ms(st["copies"] + st["rest"]), _ms(st["decode_images"]),
                             _ms(t["main_process_ms_per_image"]), f"{t['images_per_s']:.0f}", t["bound"]])
        lines += [_fmt_table(rows), "assumptions:"] + [f"  - {a}" for a in pr["assumptions"]]
        hows = {f["how"] for q in pr["modes"].values() for f in q["fit"].values()} - {"fit"}
        lines += [f"  - {h}" for h in sorted(hows)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([sys.executable, str(Path(__file__).resolve().relative_to(REPO))
                          if Path(__file__).resolve().is_relative_to(REPO) else __file__, *map(str, argv_list)])
    to_stdout = args.json_out == "-"
    out_stream = sys.stderr if to_stdout else sys.stdout

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    if args.folder is None and args.synthetic is None:
        build_parser().error("give a FOLDER, or --synthetic N")
    profiling = args.profile or args.threads_sweep is not None
    if profiling and args.methods is not None:
        build_parser().error("--profile measures --no-l1, the default check and the decoder check itself: leave out --methods")
    methods = [m.strip() for m in (args.methods or ",".join(METHODS)).split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods) or "single" not in methods:
        build_parser().error(f"--methods: a subset of {','.join(METHODS)} that includes single")
    if args.repeats < 1 or args.batch_size < 1 or args.project_cores < 1:
        build_parser().error("--repeats, --batch-size and --project-cores must be >= 1")
    if args.threads_sweep is not None:
        try:
            counts = [int(c) for c in args.threads_sweep.split(",") if c.strip()]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
            build_parser().error(f"--threads-sweep: distinct thread counts >= 1, like 1,2 (got {args.threads_sweep!r})")
        if args.threads:
            build_parser().error("--threads-sweep sets the threads itself: leave out --threads")
    if profiling and args.folder is None:
        build_parser().error("--profile needs a FOLDER")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    workers = default_workers(device) if args.workers is None else args.workers

    with tempfile.TemporaryDirectory(prefix="karl-bench-") as tmp:
        tmp_p = Path(tmp)
        if args.tiny:
            from karl_cli import KARL, preset
            torch.manual_seed(0)
            weights = tmp_p / "tiny-model"
            KARL(preset("tiny")).save_pretrained(str(weights))
        else:
            weights = args.weights or DEFAULT_MODEL
        try:
            model = load(weights)
        except WeightsNotFound as e:
            build_parser().error(f"{e}; or pass --tiny")
        cfg = model.config
        try:   # what the model cannot do (ALIT has no single pass) is a usage error, not a traceback
            for m in ["single"] if profiling else methods:
                check_method(model, score_args(m)[0])
        except UsageError as e:
            build_parser().error(f"{e} (model {weights})")
        result: dict[str, Any] = {
            "command": command, "machine": machine_info(device),
            "weights": "tiny (random)" if args.tiny else str(weights),
            "params": sum(p.numel() for p in model.parameters()), "resolution": cfg.resolution,
            "max_tokens": cfg.max_tokens, "batch_size": args.batch_size, "workers": workers, "eps": args.eps,
            "repeats": args.repeats,
        }
        if args.folder is not None:
            items = collect_inputs([args.folder])
            if args.limit is not None:
                if args.limit < 1:
                    build_parser().error("--limit N needs N >= 1")
                items = items[: args.limit]
            if profiling:
                def save(partial: dict[str, Any]) -> None:   # a run cut short keeps the entries it finished
                    if args.json_out and not to_stdout:
                        write_json(Path(args.json_out), dict(result, profile=partial, complete=False))

                counts_ = counts if args.threads_sweep is not None else [torch.get_num_threads()]
                result["profile"] = threads_sweep(items, model, args.eps, args.repeats, args.batch_size, workers,
                                                  device, counts_, args.project_cores, log=log, on_entry=save)
            else:
                result["throughput"] = throughput(items, model, args.eps, args.repeats, args.batch_size, workers,
                                                  device, methods, log=log)
        if args.synthetic is not None:
            if args.synthetic < 1:
                build_parser().error("--synthetic N needs N >= 1")
            log(f"generating {args.synthetic} images ...")
            folder = make_synthetic(tmp_p / "images", args.synthetic)
            result["synthetic"] = memory_stream(folder, model, args.eps, args.batch_size, workers, device,
                                                tmp_p / "rows.csv", log=log, l1=not args.no_l1)
            result["synthetic"]["l1"] = not args.no_l1
    import numba

    result["machine"]["torch_threads"] = torch.get_num_threads()
    result["machine"]["numba_threads"] = numba.get_num_threads()
    result["complete"] = True
    print(render(result), file=out_stream, flush=True)
    if args.json_out:
        if to_stdout:
            print(json.dumps(result, indent=2, default=float))
        else:
            write_json(Path(args.json_out), result)
    return result


def write_json(path: Path, result: dict[str, Any]) -> None:
    """``result`` as JSON at ``path``, atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()

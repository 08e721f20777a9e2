"""Scoring images: the KC of every (image, ε), streamed as rows, and the files those rows go to.

    from karl_cli.complexity import score, write_csv
    rows = score(["imgs/"], model, [0.03, 0.05], baselines=True)
    write_csv(rows, "out.csv")

Each row is a dict with ``ROW_FIELDS`` (+ ``BASELINE_FIELDS`` with ``baselines=True``):

- ``path``, ``eps``: the image and the requested ε (the model conditions on the ε bin it rounds up to).
- ``kc``: token count at ε. ``single`` = KARL's one-pass estimate (T_max - halted tokens);
  ``search`` / ``prefix`` = the smallest budget (multiple of the token step) whose reconstruction
  reaches l1 <= ε, or T_max when none does.
- ``kc_soft``: Σ(1 - p_halt) for ``single``; for ``search`` / ``prefix`` it equals ``kc``.
- ``max_tokens``: T_max of the model.
- ``l1``: mean absolute pixel error (0-1 scale) of the reconstruction from the kept tokens, at the
  model resolution.
- ``status`` (``ok`` / ``error``) and ``error`` (the reason; None when ok). Unreadable files are
  error rows, never exceptions.
- ``encoder_runs``, ``decoder_runs``: model passes needed for this (image, ε): single 1/1;
  search k/k and prefix 1/k, where k = budgets tried (kc / step, or every budget when ε is never met).
  With several ε, search/prefix share one sweep over the budgets and report, per ε, the runs a
  search for that ε alone would need.
- ``jpeg_bpp``, ``png_bpp``: codec bytes per pixel of the same model-resolution image (``baselines.py``).
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .baselines import jpeg_bpp, png_bpp
from .errors import UsageError
from .images import Found, ImageLoadError, discover_images, load_for_model
from .runtime import inference, prepare_model, resolve_device, to_model_input

ROW_FIELDS = ["path", "eps", "kc", "kc_soft", "max_tokens", "l1", "status", "error", "encoder_runs", "decoder_runs"]
BASELINE_FIELDS = ["jpeg_bpp", "png_bpp"]
METHODS = ("single", "search", "prefix")
_INT_FIELDS = {"kc", "max_tokens", "encoder_runs", "decoder_runs", "offset"}
_FLOAT_FIELDS = {"eps", "kc_soft", "l1", "jpeg_bpp", "png_bpp"}

Progress = Callable[[int, int], None]   # progress(images_done, images_total)


# --- arguments -----------------------------------------------------------------------------------
def validate_eps(eps_list: float | Iterable[float]) -> list[float]:
    """ε values as floats, duplicates dropped (order kept); <= 0, NaN or inf raise UsageError."""
    if isinstance(eps_list, (int, float, str)):
        eps_list = [eps_list]
    out: list[float] = []
    for e in eps_list:
        try:
            v = float(e)
        except (TypeError, ValueError):
            raise UsageError(f"ε must be a number, got {e!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"ε must be a positive finite number, got {e!r}")
        if v not in out:
            out.append(v)
    if not out:
        raise UsageError("give at least one ε (e.g. --eps 0.05)")
    return out


def parse_shard(spec: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"K/N"`` or ``(K, N)`` -> (K, N) with 0 <= K < N; None stays None."""
    if spec is None:
        return None
    try:
        if isinstance(spec, str):
            k_s, n_s = spec.split("/")
            k, n = int(k_s), int(n_s)
        else:
            k, n = (int(v) for v in spec)
    except (ValueError, TypeError):
        raise UsageError(f"shard must look like K/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= k < n:
        raise UsageError(f"shard K/N needs 0 <= K < N, got {k}/{n}")
    return k, n


def apply_shard(items: Sequence[Any], shard: str | Sequence[int] | None) -> list[Any]:
    """Items i with i % N == K (items are in sorted order, so every shard is deterministic)."""
    parsed = parse_shard(shard)
    if parsed is None:
        return list(items)
    k, n = parsed
    return [it for i, it in enumerate(items) if i % n == k]


def collect_inputs(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found]) -> list[Found]:
    """Found entries for paths (files and folders, recursive) or pass-through ``Found`` objects.

    A missing path or no images at all raise UsageError.
    """
    if isinstance(paths_or_found, (str, os.PathLike, Found)):
        paths_or_found = [paths_or_found]
    given = list(paths_or_found)
    found = [p for p in given if isinstance(p, Found)]
    raw = [p for p in given if not isinstance(p, Found)]
    if raw:
        try:
            found.extend(discover_images(raw))
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
    if not given:
        raise UsageError("no input paths given")
    if not found:
        raise UsageError("no images found under " + ", ".join(os.fspath(p) for p in raw))
    uniq = {f.path: f for f in reversed(found)}  # first occurrence wins
    return [uniq[k] for k in sorted(uniq)]


def row_key(path: Any, eps: Any) -> tuple[str, float]:
    """The identity of a row: (path, ε rounded to 9 decimals)."""
    return str(path), round(float(eps), 9)


# --- loading -------------------------------------------------------------------------------------
class ImageDataset(Dataset):
    """Reads each Found item at the model resolution; failures become error items, never exceptions."""

    def __init__(self, items: Sequence[Found], resolution: int, baselines: bool = False) -> None:
        self.items = list(items)
        self.resolution = resolution
        self.baselines = baselines

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str | None, tuple[float, float] | None]:
        f = self.items[i]
        if f.error:
            return f.path, None, f.error, None
        try:
            arr = load_for_model(f.path, self.resolution)
        except ImageLoadError as e:
            return f.path, None, str(e) or "cannot read image", None
        except Exception as e:  # noqa: BLE001 - an odd file must never stop a 10,000-image run
            return f.path, None, f"cannot read image: {type(e).__name__}: {e}", None
        base = (jpeg_bpp(arr), png_bpp(arr)) if self.baselines else None
        return f.path, torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), None, base


def collate_images(items: list[tuple]) -> dict[str, Any]:
    """Batch of dataset items: ``images`` stacks only the readable ones (uint8 (n_ok,3,R,R) or None)."""
    paths = [it[0] for it in items]
    errors = [it[2] for it in items]
    good = [it[1] for it in items if it[1] is not None]
    return {"paths": paths, "errors": errors, "baselines": [it[3] for it in items],
            "images": torch.stack(good) if good else None}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def image_batches(items: Sequence[Found], resolution: int, batch_size: int = 64, workers: int = 0,
                  baselines: bool = False, pin_memory: bool = False) -> Iterator[dict[str, Any]]:
    """Batches in item order; ``workers`` processes decode images while the model runs."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if workers < 0:
        raise UsageError(f"workers must be >= 0, got {workers}")
    if not items:
        return iter(())
    loader = DataLoader(ImageDataset(items, resolution, baselines), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate_images, pin_memory=pin_memory,
                        worker_init_fn=_worker_init if workers else None)
    return iter(loader)


# --- the model loop ------------------------------------------------------------------------------
def _single(model: torch.nn.Module, x: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    enc = model.encode(x, eps)
    rec = model.decode(enc)
    l1 = (rec - x).abs().mean(dim=(1, 2, 3))
    return {"kc": enc.kc.cpu(), "kc_soft": enc.kc_soft.float().cpu(), "l1": l1.float().cpu()}


def _budget_sweep(model: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor, need: torch.Tensor,
                  reencode: bool) -> dict[str, torch.Tensor]:
    """Search the smallest budget meeting each ε, for a batch at once (CPU bookkeeping, no per-image loop).

    ``need`` (n, E) marks the (image, ε) pairs wanted. ``reencode`` (ALIT-style search) runs the encoder
    at every budget; otherwise (One-D-Piece prefixes) it runs once at T_max and decodes prefixes.
    Images drop out of the batch once all their ε are met.
    """
    cfg = model.config
    budgets = cfg.budgets
    n, n_eps = need.shape
    kc = torch.full((n, n_eps), cfg.max_tokens, dtype=torch.long)
    l1_at = torch.full((n, n_eps), float("nan"))
    runs = torch.zeros((n, n_eps), dtype=torch.long)
    last_l1 = torch.full((n,), float("nan"))
    need = need.clone()
    idx0 = torch.zeros(n, dtype=torch.long, device=x.device)   # the smallest ε bin, as in phase 1
    lat_full = None if reencode else model.encode_tokens(x, idx0, cfg.max_tokens)[0]
    active = need.any(1).nonzero().squeeze(1)
    for step, t in enumerate(budgets, start=1):
        if active.numel() == 0:
            break
        a_dev = active.to(x.device)
        xa = x.index_select(0, a_dev)
        if reencode:
            lat = model.encode_tokens(xa, idx0[: len(active)], t)[0]
        else:
            lat = lat_full.index_select(0, a_dev)[:, :t]
        rec = model.decode_tokens(lat).float().clamp_(0.0, 1.0)
        l1 = (rec - xa).abs().mean(dim=(1, 2, 3)).float().cpu()
        last_l1[active] = l1
        sub_need = need[active]
        sub_runs = runs[active]
        sub_runs[sub_need] = step
        runs[active] = sub_runs
        met = sub_need & (l1.unsqueeze(1) <= eps.unsqueeze(0))
        sub_kc, sub_l1 = kc[active], l1_at[active]
        sub_kc[met] = t
        sub_l1[met] = l1.unsqueeze(1).expand_as(sub_l1)[met]
        kc[active], l1_at[active] = sub_kc, sub_l1
        need[active] = sub_need & ~met
        active = need.any(1).nonzero().squeeze(1)
    # Never met: kc stays T_max, l1 is the error at T_max.
    l1_at = torch.where(need, last_l1.unsqueeze(1).expand_as(l1_at), l1_at)
    enc_runs = runs if reencode else (runs > 0).long()
    return {"kc": kc, "kc_soft": kc.float(), "l1": l1_at, "encoder_runs": enc_runs, "decoder_runs": runs}


def _fmt(v: float, digits: int) -> float | None:
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def score(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found], model: torch.nn.Module,
          eps_list: float | Iterable[float], method: str = "single", baselines: bool = False,
          batch_size: int = 64, workers: int = 0, device: str | torch.device | None = None,
          shard: str | Sequence[int] | None = None, skip: Iterable[tuple[str, float]] | None = None,
          progress: Progress | None = None) -> Iterator[dict[str, Any]]:
    """Yield one row per (image, ε), image by image in sorted path order (see the module docstring).

    Arguments are checked before the first row (a bad ε, method, shard or device raises UsageError
    at the call, not at iteration). ``device=None`` keeps the model where it is, ``"auto"`` picks CUDA
    when available; the model is moved in place. ``skip`` holds (path, ε) pairs already done: they
    yield no row, and images with every ε done are not even read. ``progress(done, total)`` is called
    with image counts after every batch.
    """
    eps_list = validate_eps(eps_list)
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    dev = resolve_device(device, model)
    shard = parse_shard(shard)
    items = apply_shard(collect_inputs(paths_or_found), shard)
    done = {row_key(p, e) for p, e in (skip or ())}
    if done:
        items = [f for f in items if not all(row_key(f.path, e) in done for e in eps_list)]
    prepare_model(model, dev)
    return _score_rows(items, model, eps_list, method, baselines, batch_size, workers, dev, done, progress)


def _score_rows(items: list[Found], model: torch.nn.Module, eps_list: list[float], method: str, baselines: bool,
                batch_size: int, workers: int, dev: torch.device, done: set[tuple[str, float]],
                progress: Progress | None) -> Iterator[dict[str, Any]]:
    cfg = model.config
    total, n_done = len(items), 0
    if progress:
        progress(0, total)
    eps_t = torch.tensor(eps_list, dtype=torch.float32)
    batches = image_batches(items, cfg.resolution, batch_size, workers, baselines, pin_memory=dev.type == "cuda")
    for batch in batches:
        paths, errors = batch["paths"], batch["errors"]
        todo = [[row_key(p, e) not in done for e in eps_list] for p in paths]
        ok_pos = [k for k, err in enumerate(errors) if err is None]
        res: dict[str, list] = {}
        if ok_pos:
            with inference(dev):
                x = to_model_input(batch["images"], dev)
                need = torch.tensor([todo[k] for k in ok_pos], dtype=torch.bool)
                if method == "single":
                    res = {k: [[None] * len(eps_list) for _ in ok_pos] for k in ("kc", "kc_soft", "l1")}
                    for ei, e in enumerate(eps_list):
                        sel = need[:, ei].nonzero().squeeze(1)
                        if sel.numel() == 0:
                            continue
                        xs = x if sel.numel() == len(ok_pos) else x.index_select(0, sel.to(dev))
                        out = {k: v.tolist() for k, v in _single(model, xs, e).items()}
                        for j, s in enumerate(sel.tolist()):
                            for k in out:
                                res[k][s][ei] = out[k][j]
                    res["encoder_runs"] = res["decoder_runs"] = [[1] * len(eps_list) for _ in ok_pos]
                else:
                    out = _budget_sweep(model, x, eps_t, need, reencode=method == "search")
                    res = {k: v.tolist() for k, v in out.items()}
        slot = {k: j for j, k in enumerate(ok_pos)}
        for k, path in enumerate(paths):
            for ei, e in enumerate(eps_list):
                if not todo[k][ei]:
                    continue
                row: dict[str, Any] = {"path": path, "eps": e, "kc": None, "kc_soft": None,
                                       "max_tokens": cfg.max_tokens, "l1": None, "status": "error",
                                       "error": errors[k], "encoder_runs": 0, "decoder_runs": 0}
                if k in slot:
                    j = slot[k]
                    row.update(kc=int(res["kc"][j][ei]), kc_soft=_fmt(res["kc_soft"][j][ei], 4),
                               l1=_fmt(res["l1"][j][ei], 6), status="ok", error=None,
                               encoder_runs=int(res["encoder_runs"][j][ei]),
                               decoder_runs=int(res["decoder_runs"][j][ei]))
                if baselines:
                    b = batch["baselines"][k]
                    row["jpeg_bpp"] = _fmt(b[0], 6) if b else None
                    row["png_bpp"] = _fmt(b[1], 6) if b else None
                yield row
        n_done += len(paths)
        if progress:
            progress(n_done, total)


# --- rows on disk --------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else repr(v))
    return str(v)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def coerce_row(row: dict[str, Any]) -> dict[str, Any]:
    """Typed copy of a row read back from CSV: numbers as int/float, empty cells as None."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, str):
            if v == "":
                v = None
            else:
                try:
                    if k in _INT_FIELDS:
                        v = int(float(v)) if not v.lstrip("-").isdigit() else int(v)
                    elif k in _FLOAT_FIELDS:
                        v = float(v)
                except ValueError:
                    pass    # leave odd cells as text
        out[k] = v
    return out


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV (``.csv``) or JSON-records (``.json``) file written by ``RowWriter``, typed."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UsageError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UsageError(f"{path} must hold a JSON list of records")
        return [coerce_row(r) for r in data]
    with open(path, newline="", encoding="utf-8") as f:
        return [coerce_row(r) for r in csv.DictReader(f)]


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f), [])


class RowWriter:
    """Streams rows to a CSV or JSON-records file atomically: rows go to a temp file beside the
    target, renamed over it by ``close()``. Leaving the ``with`` block by an exception (Ctrl-C
    included) also renames, so the rows done so far are kept and ``resume`` continues from them;
    only a hard kill leaves the old file untouched.

    ``resume=True`` reads an existing output first: its rows are kept (``existing``) and copied to
    the new file, and ``done`` holds their (path, ε) keys for ``score(skip=...)``. ``path="-"``
    writes to stdout (no atomicity, no resume).
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] = ROW_FIELDS, fmt: str | None = None,
                 resume: bool = False) -> None:
        self.path = Path(path) if os.fspath(path) != "-" else None
        self.fields = list(fields)
        suffix = self.path.suffix.lower() if self.path else ""
        self.fmt = fmt or ("json" if suffix == ".json" else "csv")
        if self.fmt not in ("csv", "json"):
            raise UsageError(f"unknown output format {self.fmt!r} (csv or json)")
        self.existing: list[dict[str, Any]] = []
        self.done: set[tuple[str, float]] = set()
        if resume and self.path is not None and self.path.exists():
            if self.fmt == "csv":
                header = _csv_header(self.path)
                if header and header != self.fields:
                    raise UsageError(f"cannot resume {self.path}: its columns ({', '.join(header)}) differ from "
                                     f"this run's ({', '.join(self.fields)}); use the same options or a new file")
            self.existing = read_rows(self.path)
            self.done = {row_key(r["path"], r["eps"]) for r in self.existing
                         if r.get("path") is not None and r.get("eps") is not None}
        self.count = 0
        self._tmp: Path | None = None
        self._f: Any = None
        self._csv: Any = None
        self._first = True
        self._open()

    def _open(self) -> None:
        if self.path is None:
            self._f = sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            self._tmp = Path(tmp)
            self._f = io.open(fd, "w", newline="", encoding="utf-8")
        if self.fmt == "csv":
            self._csv = csv.writer(self._f, lineterminator="\n")
            self._csv.writerow(self.fields)
        else:
            self._f.write("[")
        for row in self.existing:
            self.write(row)

    def write(self, row: dict[str, Any]) -> None:
        if self._f is None:
            raise ValueError("RowWriter is closed")
        if self.fmt == "csv":
            self._csv.writerow([_cell(row.get(k)) for k in self.fields])
        else:
            rec = {k: _json_value(row.get(k)) for k in self.fields}
            self._f.write(("\n" if self._first else ",\n") + json.dumps(rec))
        self._first = False
        self.count += 1

    def close(self, commit: bool = True) -> None:
        """Finish the file and rename it over the target (``commit=False`` discards it)."""
        if self._f is None:
            return
        f, self._f = self._f, None
        if self.fmt == "json":
            f.write("\n]\n" if not self._first else "]\n")
        if self.path is None:
            f.flush()
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        if commit:
            os.replace(self._tmp, self.path)
        elif self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(commit=True)


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike, fields: Sequence[str] | None = None,
              resume: bool = False) -> int:
    """Stream ``rows`` into ``path`` (CSV, or JSON records for ``.json``) atomically; returns rows written
    by this call. ``fields`` defaults to ROW_FIELDS (+ BASELINE_FIELDS if the first row has them).
    With ``resume`` the rows already in ``path`` are kept; pass ``RowWriter.done`` as ``skip`` to
    ``score`` to avoid duplicates, or use ``RowWriter`` directly."""
    it = iter(rows)
    first = next(it, None)
    if fields is None:
        fields = ROW_FIELDS + (BASELINE_FIELDS if first and "jpeg_bpp" in first else [])
    with RowWriter(path, fields, resume=resume) as w:
        n0 = w.count
        for row in itertools.chain([first] if first is not None else [], it):
            if row_key(row["path"], row["eps"]) not in w.done:
                w.write(row)
        return w.count - n0


def merge_csv(out: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> dict[str, int]:
    """Join shard outputs into one file sorted by (path, ε); for a duplicated (path, ε) an ``ok`` row
    beats an error row, else the first one read wins. Returns counts: files, rows, duplicates."""
    if not inputs:
        raise UsageError("give at least one CSV to merge")
    fields: list[str] = []
    best: dict[tuple[str, float], dict[str, Any]] = {}
    n_in = 0
    for p in inputs:
        p = Path(p)
        if not p.is_file():
            raise UsageError(f"no such file: {p}")
        header = _csv_header(p) if p.suffix.lower() != ".json" else []
        rows = read_rows(p)
        for k in header or (list(rows[0]) if rows else []):
            if k not in fields:
                fields.append(k)
        for r in rows:
            if r.get("path") is None or r.get("eps") is None:
                raise UsageError(f"{p}: rows need path and eps columns")
            n_in += 1
            key = row_key(r["path"], r["eps"])
            old = best.get(key)
            if old is None or (old.get("status") != "ok" and r.get("status") == "ok"):
                best[key] = r
    with RowWriter(out, fields or ROW_FIELDS) as w:
        for key in sorted(best):
            w.write(best[key])
    return {"files": len(inputs), "rows": len(best), "duplicates": n_in - len(best)}


# --- summary -------------------------------------------------------------------------------------
class Summary:
    """Per-ε counts and KC statistics, fed row by row (no rows kept in memory)."""

    def __init__(self) -> None:
        self._kc: dict[float, list[float]] = {}
        self._l1: dict[float, list[float]] = {}
        self._err: dict[float, int] = {}
        self._err_paths: set[str] = set()

    def add(self, row: dict[str, Any]) -> None:
        e = round(float(row["eps"]), 9)
        self._kc.setdefault(e, [])
        self._l1.setdefault(e, [])
        self._err.setdefault(e, 0)
        if row.get("status") == "ok" and row.get("kc") not in (None, ""):
            self._kc[e].append(float(row["kc"]))
            if row.get("l1") not in (None, ""):
                self._l1[e].append(float(row["l1"]))
        else:
            self._err[e] += 1
            self._err_paths.add(str(row.get("path")))

    @property
    def errors(self) -> int:
        """Error rows."""
        return sum(self._err.values())

    @property
    def error_paths(self) -> int:
        """Distinct inputs with an error row."""
        return len(self._err_paths)

    def table(self) -> list[dict[str, Any]]:
        """One dict per ε: eps, ok, error, kc_mean, kc_median, kc_q10, kc_q90, l1_mean, miss
        (share of ok images whose reconstruction misses ε, the paper's failure rate)."""
        out = []
        for e in sorted(self._kc):
            kc = np.asarray(self._kc[e], dtype=float)
            l1 = np.asarray(self._l1[e], dtype=float)
            stats: dict[str, Any] = {"eps": e, "ok": int(kc.size), "error": self._err[e]}
            if kc.size:
                stats.update(kc_mean=float(kc.mean()), kc_median=float(np.median(kc)),
                             kc_q10=float(np.quantile(kc, 0.1)), kc_q90=float(np.quantile(kc, 0.9)))
            else:
                stats.update(kc_mean=None, kc_median=None, kc_q10=None, kc_q90=None)
            stats["l1_mean"] = float(l1.mean()) if l1.size else None
            stats["miss"] = float((l1 > e + 1e-12).mean()) if l1.size else None
            out.append(stats)
        return out


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``Summary`` of an iterable of rows, as a list of per-ε dicts."""
    s = Summary()
    for r in rows:
        s.add(r)
    return s.table()

"""Scoring images: the KC of every (image, ε), streamed as rows, and the files those rows go to.

    from karl_cli.scoring.complexity import score, write_csv
    rows = score(["imgs/"], model, [0.03, 0.05], baselines="all")
    write_csv(rows, "out.csv")

Each row is a dict with ``ROW_FIELDS`` (+ one column per chosen baseline, see ``baselines.REGISTRY``):

- ``path``, ``eps``: the image and the requested ε (the model conditions on the ε bin it rounds up to).
- ``kc``: token count at ε. ``single`` = KARL's one-pass estimate (T_max - halted tokens);
  ``search`` / ``prefix`` = the smallest budget (of the model's ``config.budgets``) whose reconstruction
  reaches l1 <= ε, or T_max when none does.
- ``kc_soft``: Σ(1 - p_halt) for ``single``; for ``search`` / ``prefix`` it equals ``kc``.
- ``max_tokens``: T_max of the model.
- ``l1``: mean absolute pixel error (0-1 scale) of the reconstruction from the kept tokens, at the
  model resolution.
- ``status`` (``ok`` / ``error``) and ``error`` (the reason; None when ok). Unreadable files are
  error rows, never exceptions.
- ``encoder_runs``, ``decoder_runs``: model passes needed for this (image, ε): single 1/1;
  search k/k and prefix 1/k, where k = budgets tried (kc / step, or every budget when ε is never met).
  With several ε, search/prefix share one sweep over the budgets (``search.sweep``) and report, per
  ε, the runs a search for that ε alone would need. Which model supports which method: ``methods.py``
  (ALIT, with no halting head, only ``search``); it continues one rollout, so an encoder run is one iteration.
- ``model_id``: the id of the model that scored the row (``models.pretrained.model_id``: a hash of its
  config and weights), ``method``: ``single``, ``search`` or ``prefix``. ``--resume`` and ``merge`` use
  them to refuse mixing rows of different models or methods.
- baselines (``baselines=True``: ``jpeg_bpp``, ``png_bpp``; ``"all"`` or a list: any of ``baselines.REGISTRY``):
  the classic complexity measures of the same model-resolution pixels, computed in the loader's workers
  beside the model (``baselines.py``).

What a count can be: ``single`` gives any whole number from the smallest budget (``config.budgets[0]``:
1 for the wavelet code, else ``token_step``) to T_max (the halting head decides per token, so the
kept prefix need not end on a budget); ``search`` / ``prefix`` give one of
``config.budgets`` (1 for the wavelet code, then the multiples of ``token_step``); ``kc_soft`` is
continuous and may fall below 1 (Σ(1 - p_halt) over tokens whose p_halt is near 1).
"""
from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from karl_cli.io.atomic import WriteError, atomic_path, fsync_path, temp_beside, write_error
from karl_cli.scoring.baselines import DEFAULT_BASELINES, REGISTRY, parse_baselines
from karl_cli.errors import UsageError
from karl_cli.io.images import Found
from karl_cli.io.tables import ParquetSink, parquet_columns, parquet_schema, read_parquet_rows
from karl_cli.io.names import escape_path, safe_text, unescape_path
from karl_cli.models.pretrained import model_id
from karl_cli.runtime import prepare_model, resolve_device
from karl_cli.scoring.measure import (Measurement, Progress, apply_shard, collect_inputs, image_batches, measure,
                                      parse_shard)
from karl_cli.scoring.methods import check_eps, check_method, validate_eps

ROW_FIELDS = ["path", "eps", "kc", "kc_soft", "max_tokens", "l1", "status", "error", "encoder_runs", "decoder_runs",
              "model_id", "method"]
BASELINE_FIELDS = list(DEFAULT_BASELINES)     # the columns of baselines=True
_INT_FIELDS = {"kc", "max_tokens", "encoder_runs", "decoder_runs", "offset", "fh_regions"}
_FLOAT_FIELDS = {"eps", "kc_soft", "l1"} | (set(REGISTRY) - _INT_FIELDS)


def row_key(path: Any, eps: Any) -> tuple[str, float]:
    """The identity of a row: (path, ε rounded to 9 decimals)."""
    return str(path), round(float(eps), 9)


# --- the rows ------------------------------------------------------------------------------------
def _fmt(v: float, digits: int) -> float | None:
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def score(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found], model: torch.nn.Module,
          eps_list: float | Iterable[float], method: str = "single", baselines: bool | str | Iterable[str] = False,
          batch_size: int = 64, workers: int = 0, device: str | torch.device | None = None,
          shard: str | Sequence[int] | None = None, skip: Iterable[tuple[str, float]] | None = None,
          progress: Progress | None = None, l1: bool = True) -> Iterator[dict[str, Any]]:
    """Yield one row per (image, ε), image by image in sorted path order (see the module docstring).

    Arguments are checked before the first row (a bad ε, method, shard or device raises UsageError
    at the call, not at iteration). ``device=None`` keeps the model where it is, ``"auto"`` picks CUDA
    when available; the model is moved in place. ``skip`` holds (path, ε) pairs already done: they
    yield no row, and images with every ε done are not even read. ``progress(done, total)`` is called
    with image counts after every batch. ``l1=False`` (method ``single`` only) skips the decoder pass
    that checks the reconstruction: KC from the encoder alone, about 3x faster on CPU; ``l1`` is
    None and ``decoder_runs`` 0 in the rows. ``baselines``: ``True`` (JPEG, PNG), ``"all"``, or names
    (``baselines.parse_baselines``); an unknown name raises UsageError.
    """
    eps_list = validate_eps(eps_list)
    check_method(model, method)
    check_eps(model, method, eps_list)
    names = parse_baselines(baselines)
    dev = resolve_device(device, model)
    items, done = pending(paths_or_found, eps_list, shard, skip)
    if not l1 and method != "single":
        raise UsageError(f"skipping the l1 check works only with method 'single' ({method!r} needs the decoder)")
    prepare_model(model, dev)
    return _score_rows(items, model, eps_list, method, names, batch_size, workers, dev, done, progress, l1)


def pending(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found], eps_list: Sequence[float],
            shard: str | Sequence[int] | None = None, skip: Iterable[tuple[str, float]] | None = None
            ) -> tuple[list[Found], set[tuple[str, float]]]:
    """The input entries a run scores (``collect_inputs``, then ``shard``), less those whose every ε
    is in ``skip`` (rows already written), and the ``row_key``s of ``skip``."""
    items = apply_shard(collect_inputs(paths_or_found), parse_shard(shard))
    done = {row_key(p, e) for p, e in (skip or ())}
    if done:
        items = [f for f in items if not all(row_key(f.path, e) in done for e in eps_list)]
    return items, done


def _score_rows(items: list[Found], model: torch.nn.Module, eps_list: list[float], method: str, baselines: tuple[str, ...],
                batch_size: int, workers: int, dev: torch.device, done: set[tuple[str, float]],
                progress: Progress | None, l1: bool = True) -> Iterator[dict[str, Any]]:
    cfg = model.config
    mid = model_id(model)
    total, n_done = len(items), 0
    if progress:
        progress(0, total)
    batches = image_batches(items, cfg.resolution, batch_size, workers, baselines, pin_memory=dev.type == "cuda")
    for batch in batches:
        paths, errors = batch["paths"], batch["errors"]
        todo = [[row_key(p, e) not in done for e in eps_list] for p in paths]
        ok_pos = [k for k, err in enumerate(errors) if err is None]
        m = None
        if ok_pos:
            need = torch.tensor([todo[k] for k in ok_pos], dtype=torch.bool)
            m = measure(model, batch["images"], eps_list, method, l1=l1, need=need)
        yield from batch_rows(batch, m, eps_list, method, baselines, cfg.max_tokens, mid, todo)
        n_done += len(paths)
        if progress:
            progress(n_done, total)


def batch_rows(batch: dict[str, Any], m: Measurement | None, eps_list: Sequence[float], method: str,
               baselines: Sequence[str], max_tokens: int, mid: str, todo: list[list[bool]] | None = None
               ) -> Iterator[dict[str, Any]]:
    """The rows of one batch (``measure.collate_images``: ``paths``, ``errors``, ``baselines``), image
    by image, ε by ε; ``m`` is ``measure``'s result for the batch's readable images in order (None when
    there are none). ``todo[k][j]`` False leaves out the row of image k at ``eps_list[j]`` (default:
    every row). The one place a row is built: the single process and the Ray actors
    (``karl_cli.distributed``) both call it, so their rows are the same."""
    paths, errors = batch["paths"], batch["errors"]
    res = {} if m is None else {k: getattr(m, k).tolist() for k in ("kc", "kc_soft", "l1", "encoder_runs",
                                                                     "decoder_runs")}
    slot = {k: j for j, k in enumerate(kk for kk, err in enumerate(errors) if err is None)}
    for k, path in enumerate(paths):
        for ei, e in enumerate(eps_list):
            if todo is not None and not todo[k][ei]:
                continue
            row: dict[str, Any] = {"path": path, "eps": e, "kc": None, "kc_soft": None,
                                   "max_tokens": max_tokens, "l1": None, "status": "error",
                                   "error": errors[k], "encoder_runs": 0, "decoder_runs": 0,
                                   "model_id": mid, "method": method}
            if k in slot and res:
                j = slot[k]
                row.update(kc=int(res["kc"][j][ei]), kc_soft=_fmt(res["kc_soft"][j][ei], 4),
                           l1=_fmt(res["l1"][j][ei], 6), status="ok", error=None,
                           encoder_runs=int(res["encoder_runs"][j][ei]),
                           decoder_runs=int(res["decoder_runs"][j][ei]))
            b = batch["baselines"][k]
            for j, name in enumerate(baselines):
                v = _fmt(b[j], 6) if b else None
                row[name] = int(v) if v is not None and name in _INT_FIELDS else v
            yield row


def row_schema(fields: Sequence[str]) -> pa.Schema:
    """The Arrow schema of rows with ``fields`` (``--parquet``'s, and the Ray scorer's output)."""
    return parquet_schema(fields, {f: _kind(f) for f in fields})


# --- rows on disk --------------------------------------------------------------------------------
def _text(key: str, v: Any) -> Any:
    """A string value as written: file names escaped, other text with no lone surrogates."""
    if not isinstance(v, str):
        return v
    return escape_path(v) if key in PATH_FIELDS else safe_text(v)


def _os_error(e: BaseException) -> OSError:
    """pyarrow's write errors as OSError (for ``write_error``)."""
    return e if isinstance(e, OSError) else OSError(0, str(e))


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
    """Typed copy of a row read back from CSV: numbers as int/float, empty cells as None, file names
    (``PATH_FIELDS``) unescaped to the exact names they were written from."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if isinstance(v, str) and k in PATH_FIELDS:
            v = unescape_path(v) if v else None
        elif isinstance(v, str):
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


# File names that are not valid UTF-8 (e.g. b"caf\xe9.png") reach Python as ``str`` with lone
# surrogates ("caf\udce9.png", PEP 383). Outputs hold them escaped (``names.escape_path``: "caf\\xe9.png"),
# so CSV and JSON stay valid UTF-8 for any reader, and reading back unescapes them to the very same
# ``str``, so ``--resume`` matches it. Other text (errors) goes through ``names.safe_text``. Files are
# read with surrogateescape so that outputs of earlier versions (raw bytes) still resume.
CSV_ENCODING = "utf-8"
CSV_ERRORS = "surrogateescape"
_WRITE_ERRORS = "backslashreplace"   # a safety net only: written text is escaped already
PATH_FIELDS = frozenset({"path", "name"})   # columns holding file names: escaped on write, unescaped on read
CHECKPOINT_SECONDS = 5.0
PARQUET_SUFFIX = ".parquet"
# A checkpoint copies the rows so far, so its cost grows with the output; spacing checkpoints at least
# this many times their last cost keeps them under 1/20 of the run, however long the output gets.
CHECKPOINT_COST_FACTOR = 20.0


def _kind(field: str) -> str:
    return "int" if field in _INT_FIELDS else "float" if field in _FLOAT_FIELDS else "str"


def _parquet_cell(field: str, v: Any) -> Any:
    """A row value as its Parquet column type (``_kind``); a value that does not fit becomes null
    (numbers) or text."""
    if v is None or (isinstance(v, str) and v == "" and _kind(field) != "str"):
        return None
    kind = _kind(field)
    try:
        if kind == "int":
            return int(v)
        if kind == "float":
            return float(v)
    except (TypeError, ValueError):
        return None
    return _text(field, v if isinstance(v, str) else str(v))


def checkpoint_seconds() -> float:
    """Seconds between checkpoints of a streamed output: ``$KARL_CHECKPOINT_SECONDS``, else 5."""
    try:
        v = float(os.environ.get("KARL_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))
    except ValueError:
        return CHECKPOINT_SECONDS
    return v if math.isfinite(v) and v >= 0 else CHECKPOINT_SECONDS


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a CSV (``.csv``), JSON-records (``.json``) or Parquet (``.parquet``) file written by
    ``RowWriter``, typed."""
    path = Path(path)
    if path.suffix.lower() == PARQUET_SUFFIX:
        try:
            return [coerce_row(r) for r in read_parquet_rows(path)]
        except (pa.ArrowException, OSError) as e:
            raise UsageError(f"{path} is not a readable Parquet file: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise UsageError(f"{path} must hold a JSON list of records")
        return [coerce_row(r) for r in data]
    try:
        with open(path, newline="", encoding=CSV_ENCODING, errors=CSV_ERRORS) as f:
            return [coerce_row(r) for r in csv.DictReader(f)]
    except csv.Error as e:
        raise UsageError(f"{path} is not a readable CSV: {e}") from None


def csv_header(path: str | os.PathLike) -> list[str]:
    """The column names of a CSV file (its first row), or of a Parquet file (its schema)."""
    if Path(path).suffix.lower() == PARQUET_SUFFIX:
        try:
            return parquet_columns(path)
        except (pa.ArrowException, OSError) as e:
            raise UsageError(f"{path} is not a readable Parquet file: {e}") from None
    try:
        with open(path, newline="", encoding=CSV_ENCODING, errors=CSV_ERRORS) as f:
            return next(csv.reader(f), [])
    except csv.Error as e:
        raise UsageError(f"{path} is not a readable CSV: {e}") from None


def _stdout_text() -> Any:
    """stdout as UTF-8 text (detached, never closed, by close())."""
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None:
        return sys.stdout
    sys.stdout.flush()
    return io.TextIOWrapper(buf, encoding=CSV_ENCODING, errors=_WRITE_ERRORS, newline="", write_through=True)


class RowWriter:
    """Streams rows to a CSV, JSON-records or Parquet file (by suffix, ``.parquet``; in row groups, so
    memory stays flat) atomically: rows go to a temp file beside the target, renamed over it by
    ``close()``. Leaving the ``with`` block by an exception (Ctrl-C
    included) also renames (unless ``keep_partial=False``), so the rows done so far are kept and
    ``resume`` continues from them. A failed write (disk full, ...) discards the temp file, leaves
    the target as it was and raises ``WriteError``.

    ``checkpoint_s``: while rows stream, publish the rows so far to the target on a clock (a copy of
    the temp file, renamed over the target: the target is always a complete, parsable file). A
    background thread wakes every ``checkpoint_s`` seconds and publishes whatever rows arrived since,
    so a row is on disk at most ``checkpoint_s`` seconds after ``write`` returned, even while the
    model works on the next batch: a hard kill (SIGKILL, power loss) loses at most the rows finished in
    the last ``checkpoint_s`` seconds (once outputs grow large, the clock slows to 20 times the last
    copy's cost). ``0``: publish after every row (no thread). ``None`` (the
    default): only on close.

    ``resume=True`` reads an existing output first: its rows are kept (``existing``) and copied to
    the new file, and ``done`` holds their (path, ε) keys for ``score(skip=...)``. ``validate(rows)``
    (e.g. ``resume_guard``) may refuse them by returning the reason: ``UsageError`` before anything
    is written. ``path="-"`` writes to stdout (no atomicity, no resume). Output is valid UTF-8: file
    names escaped (``PATH_FIELDS``).
    """

    def __init__(self, path: str | os.PathLike, fields: Sequence[str] = ROW_FIELDS, fmt: str | None = None,
                 resume: bool = False, checkpoint_s: float | None = None, keep_partial: bool = True,
                 validate: Callable[[list[dict[str, Any]]], str | None] | None = None) -> None:
        self.path = Path(path) if os.fspath(path) != "-" else None
        self.fields = list(fields)
        suffix = self.path.suffix.lower() if self.path else ""
        self.fmt = fmt or ("json" if suffix == ".json" else "parquet" if suffix == PARQUET_SUFFIX else "csv")
        if self.fmt not in ("csv", "json", "parquet"):
            raise UsageError(f"unknown output format {self.fmt!r} (csv, json or parquet)")
        if self.fmt == "parquet" and self.path is None:
            raise UsageError("Parquet cannot stream to stdout; name a file (e.g. --parquet out.parquet)")
        self.checkpoint_s = checkpoint_s
        self.keep_partial = keep_partial
        self.existing: list[dict[str, Any]] = []
        self.done: set[tuple[str, float]] = set()
        if resume and self.path is not None and self.path.exists():
            if self.fmt in ("csv", "parquet"):
                header = csv_header(self.path)
                if header and header != self.fields:
                    raise UsageError(f"cannot resume {self.path}: its columns ({', '.join(header)}) differ from "
                                     f"this run's ({', '.join(self.fields)}); use the same options or a new file")
            self.existing = read_rows(self.path)
            why = validate(self.existing) if validate is not None else None
            if why:
                raise UsageError(f"cannot resume {self.path}: {why}; use the same settings or a new file")
            self.done = {row_key(r["path"], r["eps"]) for r in self.existing
                         if r.get("path") is not None and r.get("eps") is not None}
        self.count = 0
        self.checkpoints = 0
        self._tmp: Path | None = None
        self._f: Any = None
        self._csv: Any = None
        self._sink: ParquetSink | None = None
        self._checkpoint_cost = 0.0
        self._first = True
        self._broken = False
        self._published = 0
        self._lock = threading.Lock()
        self._clock_error: WriteError | None = None
        self._stop = threading.Event()
        self._open()
        self._clock: threading.Thread | None = None
        if checkpoint_s and self.path is not None:
            self._clock = threading.Thread(target=self._tick, name="karl-row-checkpoints", daemon=True)
            self._clock.start()

    def _tick(self) -> None:
        """The clock: publish new rows every ``checkpoint_s`` seconds until close."""
        while not self._stop.wait(self._checkpoint_every()):
            try:
                with self._lock:
                    if (self._f is not None or self._sink is not None) and self.count > self._published:
                        self._checkpoint_locked()
            except WriteError as e:     # reported to the writing thread at its next write or close
                self._clock_error = e
                return

    def _fail(self, e: OSError) -> WriteError:
        self._broken = True
        return write_error(self.path or "<stdout>", e)

    def _open(self) -> None:
        if self.fmt == "parquet":
            try:
                self._sink = ParquetSink(self.path, row_schema(self.fields))
            except OSError as e:
                raise self._fail(e) from e
            self._tmp, self._f = self._sink.path, self._sink
            for row in self.existing:
                self._write(row)
            return
        if self.path is None:
            self._f = _stdout_text()
        else:
            try:
                self._tmp = temp_beside(self.path)
                self._f = open(self._tmp, "w", newline="", encoding=CSV_ENCODING, errors=_WRITE_ERRORS)
            except OSError as e:
                raise self._fail(e) from e
        try:
            if self.fmt == "csv":
                self._csv = csv.writer(self._f, lineterminator="\n")
                self._csv.writerow(self.fields)
            else:
                self._f.write("[")
        except OSError as e:
            raise self._fail(e) from e
        for row in self.existing:
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        if self._f is None:
            raise ValueError("RowWriter is closed")
        try:
            if self.fmt == "parquet":
                self._sink.write([_parquet_cell(k, row.get(k)) for k in self.fields])
            elif self.fmt == "csv":
                self._csv.writerow([_cell(_text(k, row.get(k))) for k in self.fields])
            else:
                rec = {k: _json_value(_text(k, row.get(k))) for k in self.fields}
                self._f.write(("\n" if self._first else ",\n") + json.dumps(rec))
        except (OSError, pa.ArrowException) as e:
            raise self._fail(_os_error(e)) from e
        self._first = False
        self.count += 1

    def write(self, row: dict[str, Any]) -> None:
        if self._clock_error is not None:
            raise self._clock_error
        with self._lock:
            self._write(row)
            if self.checkpoint_s == 0 and self.path is not None:
                self._checkpoint_locked()

    def _checkpoint_every(self) -> float:
        """Seconds between checkpoints: ``checkpoint_s``, stretched to 20 times the last one's cost (0
        means after every row, for tests)."""
        if not self.checkpoint_s:
            return 0.0
        return max(self.checkpoint_s, CHECKPOINT_COST_FACTOR * self._checkpoint_cost)

    def _json_tail(self) -> str:
        return "\n]\n" if not self._first else "]\n"

    def checkpoint(self) -> None:
        """Publish the rows written so far to the target, atomically; streaming goes on."""
        with self._lock:
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        if (self._f is None and self._sink is None) or self.path is None or self._broken:
            return
        t0 = time.monotonic()
        try:
            with atomic_path(self.path) as tmp:
                if self._sink is not None:
                    self._sink.snapshot(tmp)
                    self._tmp = self._sink.path
                else:
                    self._f.flush()
                    shutil.copyfile(self._tmp, tmp)
                    if self.fmt == "json":
                        with open(tmp, "a", encoding="utf-8") as f:
                            f.write(self._json_tail())
        except (OSError, pa.ArrowException) as e:
            raise self._fail(_os_error(e)) from e
        self.checkpoints += 1
        self._published = self.count
        self._checkpoint_cost = time.monotonic() - t0

    def close(self, commit: bool = True) -> None:
        """Finish the file and rename it over the target (``commit=False`` discards it)."""
        self._stop.set()
        if self._clock is not None and self._clock is not threading.current_thread():
            self._clock.join()
        if self._f is None:
            return
        f, self._f = self._f, None
        to_file = self.path is not None
        commit = (commit and not self._broken) or not to_file
        if self._sink is not None:
            self._close_parquet(commit)
            return
        try:
            try:
                if commit:
                    if self.fmt == "json":
                        f.write(self._json_tail())
                    f.flush()
                    if to_file:
                        os.fsync(f.fileno())
            finally:
                if not to_file:
                    if f is not sys.stdout:
                        f.detach()          # leave stdout itself open
                else:
                    with contextlib.suppress(OSError):
                        f.close()
            if to_file and commit:
                os.replace(self._tmp, self.path)
        except OSError as e:
            raise self._fail(e) from e
        finally:
            if self._tmp is not None:
                with contextlib.suppress(OSError):
                    self._tmp.unlink(missing_ok=True)
        if self._clock_error is not None:   # a checkpoint failed: the target holds the last good one
            raise self._clock_error

    def _close_parquet(self, commit: bool) -> None:
        sink = self._sink
        try:
            if commit:
                sink.finish()
                fsync_path(sink.path)
                os.replace(sink.path, self.path)
        except (OSError, pa.ArrowException) as e:
            raise self._fail(_os_error(e)) from e
        finally:
            sink.discard()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(commit=exc_type is None or self.keep_partial)


def row_settings(row: dict[str, Any]) -> dict[str, Any]:
    """What a row says about the run that wrote it: ``model_id``, ``method`` and ``l1`` (whether the
    kept tokens were decoded to check l1: False for ``--no-l1`` rows, None where a row cannot tell,
    e.g. an error row)."""
    l1 = None
    if row.get("status") == "ok" and row.get("method") == "single" and row.get("decoder_runs") is not None:
        l1 = int(row["decoder_runs"]) > 0
    return {"model_id": row.get("model_id"), "method": row.get("method"), "l1": l1}


def resume_guard(model_id: str, method: str, l1: bool | None = True) -> Callable[[list[dict[str, Any]]], str | None]:
    """A ``RowWriter(validate=...)`` check for ``resume``: the reason the rows already in a file cannot
    be continued by a run of ``model_id`` / ``method`` / ``l1`` (another model, method or l1 check
    would mix rows that mean different things), or None when every row matches."""
    def check(rows: list[dict[str, Any]]) -> str | None:
        for r in rows:
            had = row_settings(r)
            if had["model_id"] != model_id:
                return (f"its rows came from model {had['model_id'] or '(none recorded)'}, this run's model is "
                        f"{model_id} (other --weights)")
            if had["method"] != method:
                return f"its rows came from --method {had['method'] or '(none recorded)'}, this run uses --method {method}"
            if had["l1"] is not None and l1 is not None and had["l1"] != l1:
                return ("its rows were scored " + ("with" if had["l1"] else "without") + " the l1 check, this run "
                        + ("has it" if l1 else "skips it (--no-l1)"))
        return None

    return check


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike, fields: Sequence[str] | None = None,
              resume: bool = False) -> int:
    """Stream ``rows`` into ``path`` (CSV, or JSON records for ``.json``) atomically; returns rows written
    by this call. ``fields`` defaults to ROW_FIELDS (+ the baseline columns the first row has).
    With ``resume`` the rows already in ``path`` are kept (refused, ``UsageError``, when another model,
    method or l1 setting wrote them: ``resume_guard``); pass ``RowWriter.done`` as ``skip`` to
    ``score`` to avoid duplicates, or use ``RowWriter`` directly."""
    it = iter(rows)
    first = next(it, None)
    if fields is None:
        fields = ROW_FIELDS + [k for k in REGISTRY if first and k in first]
    guard = resume_guard(**row_settings(first)) if resume and first is not None else None
    with RowWriter(path, fields, resume=resume, validate=guard) as w:
        n0 = w.count
        for row in itertools.chain([first] if first is not None else [], it):
            if row_key(row["path"], row["eps"]) not in w.done:
                w.write(row)
        return w.count - n0


MERGE_PREFER = ("first", "last")


def merge_csv(out: str | os.PathLike, inputs: Sequence[str | os.PathLike], prefer: str | None = None,
              mixed_models: bool = False) -> dict[str, int]:
    """Join shard outputs (CSV or JSON records) into one file sorted by (path, ε).

    The same (path, ε) in several inputs: identical rows merge quietly; an ``ok`` row beats an error
    row (a later run scored what an earlier one could not read); two error rows keep the first. Rows
    that disagree otherwise (another kc, l1, model, ...) raise ``UsageError`` naming them, unless
    ``prefer`` picks a side: ``"first"`` (the input given first) or ``"last"``. Rows of different
    models (``model_id``) are refused unless ``mixed_models``. Returns counts: files, rows,
    duplicates (identical rows dropped), errors_replaced, conflicts (resolved by ``prefer``).
    """
    if not inputs:
        raise UsageError("give at least one CSV to merge")
    if prefer is not None and prefer not in MERGE_PREFER:
        raise UsageError(f"prefer must be one of: {', '.join(MERGE_PREFER)}; got {prefer!r}")
    fields: list[str] = []
    best: dict[tuple[str, float], tuple[dict[str, Any], Path]] = {}
    models: dict[Any, Path] = {}
    counts = {"files": len(inputs), "rows": 0, "duplicates": 0, "errors_replaced": 0, "conflicts": 0}
    conflicts: list[str] = []
    for p in inputs:
        p = Path(p)
        if not p.is_file():
            raise UsageError(f"no such file: {p}")
        header = csv_header(p) if p.suffix.lower() != ".json" else []
        rows = read_rows(p)
        for k in header or (list(rows[0]) if rows else []):
            if k not in fields:
                fields.append(k)
        for r in rows:
            if r.get("path") is None or r.get("eps") is None:
                raise UsageError(f"{p}: rows need path and eps columns")
            models.setdefault(r.get("model_id"), p)
            key = row_key(r["path"], r["eps"])
            if key not in best:
                best[key] = (r, p)
                continue
            old, old_p = best[key]
            a, b = ({k: v for k, v in row.items() if v is not None} for row in (old, r))
            if a == b:
                counts["duplicates"] += 1
            elif (old.get("status") == "ok") != (r.get("status") == "ok"):
                if r.get("status") == "ok":
                    best[key] = (r, p)
                counts["errors_replaced"] += 1
            elif old.get("status") != "ok":
                counts["duplicates"] += 1          # two error rows: nothing to disagree about
            else:
                counts["conflicts"] += 1
                if prefer == "last":
                    best[key] = (r, p)
                elif prefer is None and len(conflicts) < 3:
                    diff = ", ".join(f"{k} {a.get(k)} vs {b.get(k)}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k))
                    conflicts.append(f"{key[0]} at ε {key[1]:g} ({old_p.name} vs {p.name}: {diff})")
    if len(models) > 1 and not mixed_models:
        named = ", ".join(f"{m or '(none recorded)'} in {f.name}" for m, f in models.items())
        raise UsageError(f"the inputs hold rows of {len(models)} models ({named}); KC of different models do not "
                         "compare: merge each model's shards separately, or pass --mixed-models")
    if counts["conflicts"] and prefer is None:
        more = counts["conflicts"] - len(conflicts)
        raise UsageError(f"{counts['conflicts']} (path, ε) rows disagree between inputs: " + "; ".join(conflicts)
                         + (f"; and {more} more" if more > 0 else "") + ". Pass --prefer first or --prefer last to "
                         "pick a side")
    with RowWriter(out, fields or ROW_FIELDS) as w:
        for key in sorted(best):
            w.write(best[key][0])
    counts["rows"] = len(best)
    return counts


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

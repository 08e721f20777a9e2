"""Rows on disk: the one place karl's tabular outputs open, stream, resume, merge and summarise.

    from karl_cli.io.rows import RowWriter, read_rows
    with RowWriter("out.csv", fields, resume=True, checkpoint_s=5) as w:
        for row in rows:
            if row_key(row["path"], row["eps"]) not in w.done:
                w.write(row)

- ``RowWriter``: CSV, JSON records or Parquet (by suffix), atomic (temp file beside the target, renamed
  by ``close``), checkpointed on a clock, resumable (``resume=True`` keeps the rows already there;
  ``resume_guard`` refuses rows of another model, method or check: the one resume rule).
- ``read_rows`` / ``csv_header`` / ``coerce_row``: typed rows back from any of the three formats.
- ``merge_csv``: shard outputs joined into one file sorted by (path, ε).
- ``write_table``: a whole table at once (studies, ``compare``, ``correlate``), CSV or JSON records.
- ``Summary`` / ``summarize``: per-ε counts and KC statistics of a stream of rows.

A row is a dict; ``ROW_FIELDS`` are the columns of ``karl complexity`` (``scoring/complexity.py`` says
what they mean). Column types: ``TEXT_FIELDS`` are text, ``INT_FIELDS`` whole numbers, every other
column a number (the classic measures, ε, soft KC, l1, code_l1); a CSV cell that is not a number stays text.
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
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from karl_cli.errors import UsageError
from karl_cli.io.atomic import WriteError, atomic_path, fsync_path, temp_beside, write_error
from karl_cli.io.names import escape_path, safe_frame, safe_text, unescape_path
from karl_cli.io.outputs import OutputLock
from karl_cli.io.tables import ParquetSink, parquet_columns, parquet_schema, read_parquet_rows

ROW_FIELDS = ["path", "eps", "kc", "kc_soft", "max_tokens", "l1", "code_l1", "status", "error", "encoder_runs",
              "decoder_runs", "model_id", "method"]
# Columns added after files were first written: a file without them still resumes (its rows hold none).
ADDED_FIELDS = frozenset({"code_l1"})
INT_FIELDS = frozenset({"kc", "max_tokens", "encoder_runs", "decoder_runs", "offset", "fh_regions"})
TEXT_FIELDS = frozenset({"path", "name", "status", "error", "model_id", "method", "shard"})


def row_key(path: Any, eps: Any) -> tuple[str, float]:
    """The identity of a row: (path, ε rounded to 9 decimals)."""
    return str(path), round(float(eps), 9)


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
                    if column_kind(k) == "int":
                        v = int(float(v)) if not v.lstrip("-").isdigit() else int(v)
                    elif column_kind(k) == "float":
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


def column_kind(field: str) -> str:
    """A column's type in files: "str" for ``TEXT_FIELDS``, "int" for ``INT_FIELDS``, else "float"."""
    return "str" if field in TEXT_FIELDS else "int" if field in INT_FIELDS else "float"


def row_schema(fields: Sequence[str]) -> pa.Schema:
    """The Arrow schema of rows with ``fields``, typed by ``column_kind`` (``--parquet``'s, and the rows
    of the Ray scorer, ``karl_cli.distributed``)."""
    return parquet_schema(fields, {f: column_kind(f) for f in fields})


def _parquet_cell(field: str, v: Any) -> Any:
    """A row value as its Parquet column type (``column_kind``); a value that does not fit becomes null
    (numbers) or text."""
    if v is None or (isinstance(v, str) and v == "" and column_kind(field) != "str"):
        return None
    kind = column_kind(field)
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
    ``close()``. Leaving the ``with`` block by an exception (Ctrl-C included) also renames once new
    rows were written (unless ``keep_partial=False``), so the rows done so far are kept and
    ``resume`` continues from them; before the first new row it leaves the target as it was. A failed write (disk full, ...) discards the temp file, leaves
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
        # One writer per file, from before resume reads it until close (``outputs.OutputLock``).
        self._out_lock = OutputLock(self.path).acquire() if self.path is not None else None
        try:
            self._setup(resume, validate)
        except BaseException:
            self._abandon()
            raise
        self._clock: threading.Thread | None = None
        if checkpoint_s and self.path is not None:
            self._clock = threading.Thread(target=self._tick, name="karl-row-checkpoints", daemon=True)
            self._clock.start()

    def _setup(self, resume: bool, validate: Callable[[list[dict[str, Any]]], str | None] | None) -> None:
        if resume and self.path is not None and self.path.exists():
            if self.fmt in ("csv", "parquet"):
                header = csv_header(self.path)
                # A file of an older karl lacks the columns added since; its rows are copied with them empty.
                if header and header != self.fields and header != [f for f in self.fields if f not in ADDED_FIELDS]:
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

    def _abandon(self) -> None:
        """A constructor that fails leaves nothing behind: no temp file, no lock."""
        f, self._f = getattr(self, "_f", None), None
        if getattr(self, "_sink", None) is not None:
            self._sink.discard()
        elif f is not None and self.path is not None:
            with contextlib.suppress(OSError):
                f.close()
        if getattr(self, "_tmp", None) is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink(missing_ok=True)
        if self._out_lock is not None:
            self._out_lock.release()

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
        """Finish the file and rename it over the target (``commit=False`` discards it); release the lock."""
        try:
            self._close(commit)
        finally:
            if self._out_lock is not None:
                self._out_lock.release()

    def _close(self, commit: bool) -> None:
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
        # A run that fails before its first new row (e.g. another output cannot be opened) leaves the
        # target as it was instead of replacing it with an empty table.
        partial = self.keep_partial and self.count > len(self.existing)
        self.close(commit=exc_type is None or partial)


def row_settings(row: dict[str, Any]) -> dict[str, Any]:
    """What a row says about the run that wrote it: ``model_id``, ``method`` and ``check`` (how its
    KC was checked, ``methods.resolve_check``: ``decoder`` when the kept tokens were decoded, else
    ``code`` when ``code_l1`` is filled, else ``none``; None where a row cannot tell, e.g. an error
    row or a search, which always decodes). Rows of files older than the ``code_l1`` column read as
    ``decoder`` or ``none``, the two checks karl had then."""
    check = None
    if row.get("status") == "ok" and row.get("method") == "single" and row.get("decoder_runs") is not None:
        check = "decoder" if int(row["decoder_runs"]) > 0 else "code" if row.get("code_l1") is not None else "none"
    return {"model_id": row.get("model_id"), "method": row.get("method"), "check": check}


_CHECK_WORDS = {"decoder": "the decoder's l1 check (--check decoder)",
                "code": "the code's l1 check (--check code)",
                "none": "no l1 check (--check none, --no-l1)"}


def resume_guard(model_id: str, method: str, check: str | None = "decoder"
                 ) -> Callable[[list[dict[str, Any]]], str | None]:
    """A ``RowWriter(validate=...)`` check for ``resume``: the reason the rows already in a file cannot
    be continued by a run of ``model_id`` / ``method`` / ``check`` (``code``, ``decoder`` or
    ``none``, as ``methods.resolve_check`` resolves it; None: any), since another model, method or
    check would mix rows that mean different things; None when every row matches."""
    def validate(rows: list[dict[str, Any]]) -> str | None:
        for r in rows:
            had = row_settings(r)
            if had["model_id"] != model_id:
                return (f"its rows came from model {had['model_id'] or '(none recorded)'}, this run's model is "
                        f"{model_id} (other --weights)")
            if had["method"] != method:
                return f"its rows came from --method {had['method'] or '(none recorded)'}, this run uses --method {method}"
            if had["check"] is not None and check is not None and had["check"] != check:
                return f"its rows were scored with {_CHECK_WORDS[had['check']]}, this run has {_CHECK_WORDS[check]}"
        return None

    return validate


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike, fields: Sequence[str] | None = None,
              resume: bool = False) -> int:
    """Stream ``rows`` into ``path`` (CSV, or JSON records for ``.json``) atomically; returns rows written
    by this call. ``fields`` defaults to ROW_FIELDS (+ the other columns the first row has, e.g. baselines).
    With ``resume`` the rows already in ``path`` are kept (refused, ``UsageError``, when another model,
    method or check wrote them: ``resume_guard``); pass ``RowWriter.done`` as ``skip`` to
    ``score`` to avoid duplicates, or use ``RowWriter`` directly."""
    it = iter(rows)
    head: list[dict[str, Any]] = []    # rows up to the first that tells its check (error rows cannot)
    for row in it:
        head.append(row)
        if not resume or row_settings(row)["check"] is not None or row.get("method") != "single":
            break
    first = head[0] if head else None
    if fields is None:
        fields = ROW_FIELDS + [k for k in (first or {}) if k not in ROW_FIELDS]
    guard = resume_guard(**row_settings(head[-1])) if resume and head else None
    with RowWriter(path, fields, resume=resume, validate=guard) as w:
        n0 = w.count
        for row in itertools.chain(head, it):
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
    checks: dict[tuple[Any, str], Path] = {}   # (model, check) -> the first file with such rows
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
            settings = row_settings(r)
            if settings["check"] is not None:
                checks.setdefault((r.get("model_id"), settings["check"]), p)
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
    # Files of an older karl lack the columns added since (``ADDED_FIELDS``): put each where karl writes it.
    for k in ADDED_FIELDS & set(fields):
        before = ROW_FIELDS[ROW_FIELDS.index(k) - 1]
        if before in fields:
            fields.remove(k)
            fields.insert(fields.index(before) + 1, k)
    if len(models) > 1 and not mixed_models:
        named = ", ".join(f"{m or '(none recorded)'} in {f.name}" for m, f in models.items())
        raise UsageError(f"the inputs hold rows of {len(models)} models ({named}); KC of different models do not "
                         "compare: merge each model's shards separately, or pass --mixed-models")
    for m in {m for m, _ in checks}:
        kinds = {c: f for (mm, c), f in checks.items() if mm == m}
        if len(kinds) > 1:   # the same model checked two ways: one file could not be resumed by either
            named = ", ".join(f"{_CHECK_WORDS[c]} in {f.name}" for c, f in kinds.items())
            raise UsageError(f"the inputs hold rows scored with {len(kinds)} checks ({named}); their L1 columns "
                             "mean different things and --resume could continue neither: rescore with one --check")
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


def write_table(df: Any, path: str | os.PathLike, fmt: str | None = None) -> None:
    """A whole table (a pandas DataFrame: a study's rows, a comparison, correlations) written at once,
    atomically: ``fmt`` "json" (JSON records, missing values null) or "csv"; None: by the suffix
    (``.json``, else CSV). Valid UTF-8 that pandas reads with its defaults (file names escaped,
    ``names.safe_frame``). Raises WriteError."""
    frame = safe_frame(df)
    try:
        with atomic_path(path) as tmp:
            if (fmt or ("json" if Path(path).suffix.lower() == ".json" else "csv")) == "json":
                frame.to_json(tmp, orient="records", force_ascii=True, indent=1)
            else:
                frame.to_csv(tmp, index=False, encoding=CSV_ENCODING)
    except OSError as e:
        raise write_error(path, e) from None


# --- summary -------------------------------------------------------------------------------------
def checked_l1(row: dict[str, Any]) -> tuple[float | None, str | None]:
    """A row's check of its KC: (the L1, the column it came from): ``l1`` (the decoder's
    reconstruction) where filled, else ``code_l1`` (the code's), else (None, None)."""
    for k in ("l1", "code_l1"):
        if row.get(k) not in (None, ""):
            return float(row[k]), k
    return None, None


class Summary:
    """Per-ε counts and KC statistics, fed row by row (no rows kept in memory). The L1 statistics
    take each row's ``checked_l1``: the decoder's ``l1`` where present, else ``code_l1``."""

    def __init__(self) -> None:
        self._kc: dict[float, list[float]] = {}
        self._l1: dict[float, list[float]] = {}
        self._l1_from: dict[float, set[str]] = {}
        self._err: dict[float, int] = {}
        self._err_paths: set[str] = set()

    def add(self, row: dict[str, Any]) -> None:
        e = round(float(row["eps"]), 9)
        self._kc.setdefault(e, [])
        self._l1.setdefault(e, [])
        self._l1_from.setdefault(e, set())
        self._err.setdefault(e, 0)
        if row.get("status") == "ok" and row.get("kc") not in (None, ""):
            self._kc[e].append(float(row["kc"]))
            l1, column = checked_l1(row)
            if column is not None:
                self._l1[e].append(l1)
                self._l1_from[e].add(column)
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

    @property
    def l1_columns(self) -> list[str]:
        """The columns the L1 statistics came from, over every ε: [], ["l1"], ["code_l1"] or both."""
        seen = set().union(*self._l1_from.values()) if self._l1_from else set()
        return [k for k in ("l1", "code_l1") if k in seen]

    def table(self) -> list[dict[str, Any]]:
        """One dict per ε: eps, ok, error, kc_mean, kc_median, kc_q10, kc_q90, l1_mean, miss
        (share of ok images whose checked reconstruction misses ε, the paper's failure rate) and
        l1_from (the columns those two came from, ``checked_l1``: "l1", "code_l1", "l1+code_l1" for
        mixed rows, None without any)."""
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
            stats["l1_from"] = "+".join(k for k in ("l1", "code_l1") if k in self._l1_from[e]) or None
            out.append(stats)
        return out


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``Summary`` of an iterable of rows, as a list of per-ε dicts."""
    s = Summary()
    for r in rows:
        s.add(r)
    return s.table()

"""Parquet tables written as a stream: rows in row groups, so memory holds one group, not the table.

``ParquetSink`` writes to a temp file it owns; ``snapshot`` publishes the rows so far as a complete
file (a Parquet file is readable only once its footer is written, so a snapshot closes the stream,
copies the finished file, and continues in a new temp file that starts with the same row groups).
``read_parquet_rows`` reads a table back, one row group at a time. pyarrow does the format.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from karl_cli.io.atomic import temp_beside

ROW_GROUP_ROWS = 8192
_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}


def parquet_schema(fields: Sequence[str], kinds: Mapping[str, str]) -> pa.Schema:
    """A schema with ``fields`` in order; ``kinds[field]`` is "int", "float" or "str" (the default)."""
    return pa.schema([(f, _TYPES[kinds.get(f, "str")]) for f in fields])


class ParquetSink:
    """Rows (sequences of cells in ``schema`` order; None = null) into a Parquet file beside ``target``.

    ``path`` is the current temp file. ``finish()`` writes the last row group and the footer; the caller
    then renames ``path`` over the target. Raises OSError (or pyarrow's ArrowException) on failed writes.
    """

    def __init__(self, target: Path, schema: pa.Schema, row_group_rows: int | None = None) -> None:
        self.target = target
        self.schema = schema
        self.row_group_rows = row_group_rows or ROW_GROUP_ROWS
        self._rows: list[Sequence[Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self.path = temp_beside(target)
        self._writer = self._open(self.path)

    def _open(self, path: Path) -> pq.ParquetWriter:
        """A writer on the new temp file ``path``; if pyarrow cannot open it (disk full, ...) the file is removed."""
        try:
            return pq.ParquetWriter(path, self.schema)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def write(self, cells: Sequence[Any]) -> None:
        self._rows.append(cells)
        if len(self._rows) >= self.row_group_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows or self._writer is None:
            return
        cols = list(zip(*self._rows))
        self._writer.write_table(pa.table([pa.array(c, type=t.type) for c, t in zip(cols, self.schema)],
                                          schema=self.schema))
        self._rows = []

    def finish(self) -> None:
        """The last rows and the footer: ``path`` is then a complete file."""
        if self._writer is None:
            return
        self._flush()
        writer, self._writer = self._writer, None
        writer.close()

    def snapshot(self, dest: Path) -> None:
        """Write every row so far as a complete Parquet file at ``dest``; streaming goes on."""
        self.finish()
        shutil.copyfile(self.path, dest)
        nxt = temp_beside(self.target)
        writer = self._open(nxt)
        try:
            with contextlib.closing(pq.ParquetFile(self.path)) as done:
                for i in range(done.num_row_groups):   # row group by row group: memory stays one group
                    writer.write_table(done.read_row_group(i))
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()
            nxt.unlink(missing_ok=True)
            raise
        old, self.path, self._writer = self.path, nxt, writer
        old.unlink(missing_ok=True)

    def discard(self) -> None:
        """Close without finishing and remove the temp file."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def parquet_columns(path: str | os.PathLike) -> list[str]:
    """The column names of a Parquet file."""
    return list(pq.read_schema(path).names)


def read_parquet_rows(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Each row of a Parquet file as a dict (nulls as None), read one row group at a time."""
    f = pq.ParquetFile(path)
    try:
        for i in range(f.num_row_groups):
            yield from f.read_row_group(i).to_pylist()
    finally:
        f.close()

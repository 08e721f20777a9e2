"""Inputs the way big collections are stored: file lists and tar shards (the WebDataset layout).

    from karl_cli.io.sources import gather
    scan = gather(["shards/000000.tar", "more/"], files_from="list.txt")

- **File lists** (``--files-from LIST``): one path per line, ``-`` reads the list from stdin. A
  relative path is taken relative to the folder that holds the list (so a list travels with its
  images); from stdin, relative to the current folder. Blank lines are skipped; a trailing CR
  (Windows lists) is dropped; nothing else is stripped, since names may end in spaces. A listed
  path that does not exist becomes an error row, never the end of the run: in a list of a million
  paths some are always gone. A listed folder is scanned like a command-line folder; a listed
  ``.tar`` is read as a shard. A **Parquet list** (``LIST.parquet``) holds the paths in its text
  column ``path`` (other columns are ignored; empty cells skipped), with the same rules.
- **Tar shards** (``.tar``, uncompressed, as WebDataset writes them): members ``KEY.EXT`` where
  several members share a key (``000123.jpg``, ``000123.txt``, ``000123.json``). Every image member
  (a suffix Pillow decodes, ``images.image_suffixes``) is one input with the path
  ``shard.tar/KEY.EXT``; other members (captions, labels, metadata) and hidden members (a path
  component starting with '.', e.g. macOS ``._x.jpg``) are skipped and counted. Nothing is unpacked:
  the headers are read in one pass (tarfile seeks over the data), and each image member is later
  read from its offset in the shard, one member at a time, so memory does not grow with the shard.
  An image member that is not a regular file (a link), or whose bytes do not decode, is an error
  row; a shard that is cut short or damaged keeps the members before the damage and adds one error
  row for the shard itself. A path ``shard.tar/KEY.EXT`` (as rows name members) names that one
  member, on the command line or in a list, so a row's path can be read again.
"""
from __future__ import annotations

import os
import sys
import tarfile
from dataclasses import dataclass
from typing import IO, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from karl_cli.errors import UsageError
from karl_cli.io.images import (Found, ImageLoadError, Scan, discover_images, is_hidden, is_image_name, load_for_model,
                                load_max_side)

TAR_SUFFIX = ".tar"
PARQUET_LIST_SUFFIX = ".parquet"


@dataclass(frozen=True)
class TarMember(Found):
    """An image member of a tar shard: ``path`` is ``shard.tar/KEY.EXT``; its bytes are ``size`` bytes
    at byte ``offset`` of the file ``tar``."""

    tar: str = ""
    offset: int = 0
    size: int = 0


@dataclass(frozen=True)
class Blob(Found):
    """An input whose file bytes are already in memory (``data``; e.g. a row of Ray's
    ``read_binary_files``); ``path`` only names it."""

    data: bytes = b""


def is_tar(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a tar shard (by its suffix, ``.tar``)."""
    return os.fsdecode(path).lower().endswith(TAR_SUFFIX)


def scan_tar(path: str | os.PathLike, include_hidden: bool = False) -> Scan:
    """The image members of the tar shard ``path`` as ``TarMember`` entries in archive order, with
    counts of the hidden and non-image members skipped (``Scan.hidden``, ``Scan.other``).

    Reads only headers. A missing or unreadable shard, or one cut short, gives an error entry with the
    shard's own path (after the members read before the damage); never raises for a bad shard.
    """
    path = os.fsdecode(path)
    found: list[Found] = []
    hidden = other = 0
    last: tarfile.TarInfo | None = None
    try:
        # "r:" (uncompressed, seekable): iterating reads a header and seeks over the member's data.
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                tf.members = []   # tarfile keeps every header it met; a shard's list would grow without end
                last = m
                if m.isdir():
                    continue
                if not include_hidden and any(is_hidden(part) for part in m.name.split("/")):
                    hidden += 1
                    continue
                if not is_image_name(m.name):
                    other += 1
                    continue
                name = f"{path}/{m.name}"
                if not m.isfile():
                    found.append(Found(name, "not a regular file in the tar (a link or device member)"))
                else:
                    found.append(TarMember(name, None, path, m.offset_data, m.size))
            # tarfile ends quietly at a damaged or cut header after the first, and seeking past the
            # end raises nothing: what follows the last member must be the zero blocks of a tar's end.
            after = f" after the member {last.name}" if last is not None else ""
            if last is not None and last.offset_data + last.size > os.path.getsize(path):
                found.append(Found(path, f"tar shard cut short: it ends inside the member {last.name}"))
            else:
                tf.fileobj.seek(tf.offset)
                if tf.fileobj.read(1 << 16).strip(b"\0"):
                    found.append(Found(path, f"tar shard damaged: unreadable header{after}"))
    except (tarfile.TarError, OSError, EOFError) as e:
        what = "cut short or damaged" if found else "unreadable"
        found.append(Found(path, f"tar shard {what}: {e}"))
    return Scan(found, hidden=hidden, other=other)


def read_member(m: TarMember) -> bytes:
    """The bytes of one tar member; ImageLoadError when the shard is shorter than its header says."""
    try:
        with open(m.tar, "rb") as f:
            f.seek(m.offset)
            data = f.read(m.size)
    except OSError as e:
        raise ImageLoadError(f"cannot read tar shard: {e.strerror or e}") from None
    if len(data) != m.size:
        raise ImageLoadError(f"tar member truncated: {len(data)} of {m.size} bytes")
    return data


def load_found(f: Found, resolution: int | None, max_pixels: int | None = None, max_side: int | None = None
               ) -> np.ndarray:
    """Any input entry's pixels: a file, a member of a tar shard (read from the shard, never
    unpacked), or a ``Blob`` of bytes already in memory. With ``resolution``:
    ``images.load_for_model``, uint8 (R, R, 3) sRGB; else ``images.load_max_side`` with ``max_side``
    (uint8 (H, W, 3)). ImageLoadError with the reason otherwise."""
    data = read_member(f) if isinstance(f, TarMember) else f.data if isinstance(f, Blob) else None
    if resolution is not None:
        return load_for_model(f.path, resolution, max_pixels, data=data)
    if max_side is None:
        raise ValueError("give resolution or max_side")
    return load_max_side(f.path, max_side, max_pixels, data=data)


def split_member(path: str) -> tuple[str, str] | None:
    """``(shard, member)`` when ``path`` names a member of a tar shard (``shard.tar/KEY.EXT``, as rows
    name them) rather than a file on disk; None otherwise."""
    if os.path.lexists(path):
        return None
    head = path
    while True:
        head, _ = os.path.split(head)
        if not head or head == os.path.dirname(head):
            return None
        if is_tar(head) and os.path.isfile(head):
            return head, path[len(head) + 1:]
        if os.path.lexists(head):
            return None


def _read_parquet_list(list_path: str) -> list[str]:
    """The ``path`` column of a Parquet file list, relative paths joined to the list's folder; null
    and empty cells skipped. UsageError when the file is not Parquet or has no text column ``path``."""
    if not os.path.exists(list_path):
        raise FileNotFoundError(2, "No such file or directory", list_path)
    try:
        schema = pq.read_schema(list_path)
        field = schema.field("path") if "path" in schema.names else None
        if field is None or not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            raise UsageError(f"the Parquet file list {list_path} needs a text column 'path' (it has: "
                             f"{', '.join(schema.names) or 'no columns'})")
        paths = pq.read_table(list_path, columns=["path"]).column("path").to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise UsageError(f"{list_path} is not a readable Parquet file list: {e}") from None
    base = os.path.dirname(list_path)
    return [p if os.path.isabs(p) or not base else os.path.join(base, p) for p in paths if p]


def read_files_list(list_path: str | os.PathLike, stdin: IO[bytes] | None = None) -> list[str]:
    """The paths in a file list (``-``: stdin; a ``.parquet`` file: its ``path`` column), relative ones
    joined to the list's folder (see the module docstring). Raises FileNotFoundError for a missing list."""
    list_path = os.fsdecode(list_path)
    if list_path.lower().endswith(PARQUET_LIST_SUFFIX):
        return _read_parquet_list(list_path)
    if list_path == "-":
        raw = (stdin or sys.stdin.buffer).read()
        base = ""
    else:
        with open(list_path, "rb") as fh:
            raw = fh.read()
        base = os.path.dirname(list_path)
    out = []
    for line in raw.split(b"\n"):
        line = line[:-1] if line.endswith(b"\r") else line
        if not line.strip():
            continue
        p = os.fsdecode(line)   # non-UTF-8 names as surrogate escapes, like the folder scan's
        out.append(p if os.path.isabs(p) or not base else os.path.join(base, p))
    return out


def gather(paths: Iterable[str | os.PathLike] = (), files_from: str | os.PathLike | None = None,
           include_hidden: bool = False, stdin: IO[bytes] | None = None) -> Scan:
    """Every input entry named by ``paths`` (files, folders, tar shards, members ``shard.tar/KEY.EXT``)
    and the list ``files_from``, sorted by path, each path once, with the counts of what was skipped
    (hidden, non-image, links).

    A missing command-line path raises FileNotFoundError (a typo should stop the run at once); a
    missing path from a list is an error entry. Tar shards, named or met in a folder scan, are
    expanded into their image members (``scan_tar``).
    """
    given = [os.fsdecode(p) for p in paths]
    listed = read_files_list(files_from, stdin) if files_from is not None else []
    found: list[Found] = []
    hidden = other = aliases = 0
    scan_paths: list[str] = []
    members: dict[str, list[str]] = {}   # shard -> the members named as paths (each shard is read once)
    for p in listed:
        if (m := split_member(p)) is not None:
            members.setdefault(m[0], []).append(p)
        elif not os.path.lexists(p):
            found.append(Found(p, "no such file (listed in the file list)"))
        else:
            scan_paths.append(p)
    for p in given:
        if (m := split_member(p)) is not None:
            members.setdefault(m[0], []).append(p)
        else:
            scan_paths.append(p)
    for shard, wanted in members.items():
        have = {f.path: f for f in scan_tar(shard, include_hidden=True)}
        found.extend(have.get(p) or Found(p, f"no such member in the tar shard {shard}")
                     for p in wanted)
    if scan_paths:
        scan = discover_images(scan_paths, include_hidden=include_hidden, extra_suffixes=(TAR_SUFFIX,))
        hidden, other, aliases = scan.hidden, scan.other, scan.aliases
        for f in scan:
            if f.error is None and is_tar(f.path) and os.path.isfile(f.path):
                members = scan_tar(f.path, include_hidden)
                hidden += members.hidden
                other += members.other
                found.extend(members)
            else:
                found.append(f)
    uniq: dict[str, Found] = {}
    for f in found:
        if f.path in uniq:
            aliases += 1
        else:
            uniq[f.path] = f
    return Scan((uniq[k] for k in sorted(uniq)), hidden, other, aliases)


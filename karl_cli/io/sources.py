"""Inputs the way big collections are stored: file lists and tar shards (the WebDataset layout).

    from karl_cli.io.sources import gather
    scan = gather(["shards/000000.tar", "more/"], files_from="list.txt")

- **File lists** (``--files-from LIST``): one path per line, ``-`` reads the list from stdin. A
  relative path is taken relative to the folder that holds the list (so a list travels with its
  images); from stdin, relative to the current folder. Blank lines are skipped; a trailing CR
  (Windows lists) is dropped; nothing else is stripped, since names may end in spaces. A listed
  path that does not exist becomes an error row, never the end of the run: in a list of a million
  paths some are always gone. A listed path that names no file as written is matched with its names
  compared under Unicode NFC (``names.find_normalised``: a list written on Linux or Windows names files
  a Mac stored in NFD), and the row names the file as stored. A listed folder is scanned like a command-line folder; a listed
  ``.tar`` is read as a shard. A **Parquet list** (``LIST.parquet``) holds the paths in its text
  column ``path`` (other columns are ignored; empty cells skipped), with the same rules.
- **Tar shards** (``.tar``, uncompressed, as WebDataset writes them): members ``KEY.EXT`` where
  several members share a key (``000123.jpg``, ``000123.txt``, ``000123.json``). Every image member
  (a suffix Pillow decodes, ``images.image_suffixes``) is one input with the path
  ``shard.tar/KEY.EXT``. Member names are read as ``tar -x`` writes them (``member_name``): ``.``
  parts and empty parts are dropped and ``..`` is resolved within the shard, so a shard made with
  ``tar -C src -cf shard.tar .`` (members ``./000001.jpg``) gives ``shard.tar/000001.jpg``. A name
  that occurs more than once (after that normalisation) is one input, the **last** member of that
  name, as ``tar -x`` leaves it on disk; the earlier copies are counted (``Scan.replaced``). Other
  members (captions, labels, metadata) and hidden members (a path part starting with '.', e.g. macOS
  ``._x.jpg``) are skipped and counted. Nothing is unpacked: the headers are read in one pass
  (tarfile seeks over the data), and each image member is later decoded from a read-only window on
  the shard (``open_member``), so the image's header is checked (size, pixel limit) before its data is
  read and memory does not grow with the member or the shard. An image member that is not a regular
  file (a link or device member), or whose bytes do not decode, is an error row; a shard that is cut
  short or damaged keeps the members before the damage and adds one error row for the shard itself.
  A path ``shard.tar/KEY.EXT`` (as rows name members) names that one member, on the command line or
  in a list, so a row's path can be read again.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tarfile
from dataclasses import dataclass
from typing import IO, BinaryIO, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from karl_cli.errors import UsageError
from karl_cli.io.names import find_normalised
from karl_cli.io.images import (HEIF_SUFFIXES, Found, ImageLoadError, Scan, discover_images, is_hidden, is_image_name, load_for_model,
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


def member_name(name: str) -> str:
    """A tar member's name as ``tar -x`` writes it below the folder it extracts into: empty and ``.``
    parts dropped, ``..`` resolved lexically and never above the shard's top (leading ``/`` and
    ``../`` are dropped, as tar does). ``./a/./b.jpg`` -> ``a/b.jpg``; ``"./"`` -> ``""``."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def scan_tar(path: str | os.PathLike, include_hidden: bool = False) -> Scan:
    """The image members of the tar shard ``path`` as ``TarMember`` entries in archive order, with
    counts of the hidden and non-image members skipped (``Scan.hidden``, ``Scan.other``) and of the
    earlier copies of a repeated name (``Scan.replaced``: the last member of a name is the input).

    Reads only headers. A missing or unreadable shard, or one cut short, gives an error entry with the
    shard's own path (after the members read before the damage); never raises for a bad shard.
    """
    path = os.fsdecode(path)
    members: dict[str, Found] = {}   # normalised name -> its last member (dicts keep archive order)
    damage: list[Found] = []
    hidden = other = replaced = heif = 0
    last: tarfile.TarInfo | None = None
    try:
        # "r:" (uncompressed, seekable): iterating reads a header and seeks over the member's data.
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                tf.members = []   # tarfile keeps every header it met; a shard's list would grow without end
                last = m
                name = member_name(m.name)
                if m.isdir() or not name:
                    continue
                if not include_hidden and any(is_hidden(part) for part in name.split("/")):
                    hidden += 1
                    continue
                if not is_image_name(name):
                    other += 1
                    heif += os.path.splitext(name)[1].lower() in HEIF_SUFFIXES
                    continue
                if name in members:
                    replaced += 1
                    del members[name]   # re-inserted below: the entry sits where its last copy is
                full = f"{path}/{name}"
                if not m.isfile():
                    members[name] = Found(full, "not a regular file in the tar (a link or device member)")
                else:
                    members[name] = TarMember(full, None, path, m.offset_data, m.size)
            # tarfile ends quietly at a damaged or cut header after the first, and seeking past the
            # end raises nothing: what follows the last member must be the zero blocks of a tar's end.
            after = f" after the member {last.name}" if last is not None else ""
            if last is not None and last.offset_data + last.size > os.path.getsize(path):
                damage.append(Found(path, f"tar shard cut short: it ends inside the member {last.name}"))
            else:
                tf.fileobj.seek(tf.offset)
                if tf.fileobj.read(1 << 16).strip(b"\0"):
                    damage.append(Found(path, f"tar shard damaged: unreadable header{after}"))
    except (tarfile.TarError, OSError, EOFError) as e:
        what = "cut short or damaged" if members else "unreadable"
        damage.append(Found(path, f"tar shard {what}: {e}"))
    return Scan([*members.values(), *damage], hidden=hidden, other=other, replaced=replaced, heif=heif)


class _MemberFile(io.RawIOBase):
    """A read-only, seekable window of ``size`` bytes at ``offset`` of an open file: one tar member
    as a file of its own, read only as far as the decoder asks."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        super().__init__()
        self._f, self._start, self._size, self._pos = f, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._size - self._pos))
        if n == 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(b)[:n]) or 0
        self._pos += got
        return got

    def close(self) -> None:
        self._f.close()
        super().close()


def open_member(m: TarMember) -> BinaryIO:
    """One tar member as a buffered, seekable binary file (close it after use). Nothing is read yet:
    a decoder reads the header first and the data only as it needs it. ImageLoadError when the shard
    cannot be opened or is shorter than the member's header says."""
    try:
        f = open(m.tar, "rb")
    except OSError as e:
        raise ImageLoadError(f"cannot read tar shard: {e.strerror or e}") from None
    have = os.fstat(f.fileno()).st_size - m.offset
    if have < m.size:
        f.close()
        raise ImageLoadError(f"tar member truncated: {max(have, 0)} of {m.size} bytes")
    return io.BufferedReader(_MemberFile(f, m.offset, m.size), buffer_size=1 << 16)


def load_found(f: Found, resolution: int | None, max_pixels: int | None = None, max_side: int | None = None
               ) -> np.ndarray:
    """Any input entry's pixels: a file, a member of a tar shard (decoded from a window on the
    shard, ``open_member``, never unpacked), or a ``Blob`` of bytes already in memory. With
    ``resolution``: ``images.load_for_model``, uint8 (R, R, 3) sRGB; else ``images.load_max_side``
    with ``max_side`` (uint8 (H, W, 3)). ImageLoadError with the reason otherwise."""
    if resolution is None and max_side is None:
        raise ValueError("give resolution or max_side")
    with open_member(f) if isinstance(f, TarMember) else contextlib.nullcontext(
            f.data if isinstance(f, Blob) else None) as data:
        if resolution is not None:
            return load_for_model(f.path, resolution, max_pixels, data=data)
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
    (hidden, non-image, links, paths named more than once, tar members replaced by a later one of the
    same name).

    A missing command-line path raises FileNotFoundError (a typo should stop the run at once); a
    missing path from a list is an error entry. Tar shards, named or met in a folder scan, are
    expanded into their image members (``scan_tar``).
    """
    given = [os.fsdecode(p) for p in paths]
    listed = read_files_list(files_from, stdin) if files_from is not None else []
    found: list[Found] = []
    hidden = other = aliases = repeated = replaced = heif = 0
    scan_paths: list[str] = []
    members: dict[str, list[str]] = {}   # shard -> the members named as paths (each shard is read once)
    listings: dict = {}
    for p in listed:
        if (m := split_member(p)) is not None:
            members.setdefault(m[0], []).append(m[1])
        elif (on_disk := find_normalised(p, listings)) is None:   # as written, else in another Unicode form
            found.append(Found(p, "no such file (listed in the file list)"))
        else:
            scan_paths.append(on_disk)
    for p in given:
        if (m := split_member(p)) is not None:
            members.setdefault(m[0], []).append(m[1])
        else:
            scan_paths.append(p)
    for shard, wanted in members.items():
        have = {f.path: f for f in scan_tar(shard, include_hidden=True)}
        for name in wanted:
            p = f"{shard}/{member_name(name)}"   # as scan_tar names it (./x.jpg is x.jpg)
            found.append(have.get(p) or Found(p, f"no such member in the tar shard {shard}"))
    if scan_paths:
        scan = discover_images(scan_paths, include_hidden=include_hidden, extra_suffixes=(TAR_SUFFIX,))
        hidden, other, aliases, repeated, heif = scan.hidden, scan.other, scan.aliases, scan.repeated, scan.heif
        for f in scan:
            if f.error is None and is_tar(f.path) and os.path.isfile(f.path):
                shard = scan_tar(f.path, include_hidden)
                hidden += shard.hidden
                other += shard.other
                replaced += shard.replaced
                heif += shard.heif
                found.extend(shard)
            else:
                found.append(f)
    uniq: dict[str, Found] = {}
    for f in found:
        if f.path in uniq:
            repeated += 1   # a missing path listed twice
        else:
            uniq[f.path] = f
    return Scan((uniq[k] for k in sorted(uniq)), hidden, other, aliases, repeated, replaced, heif)

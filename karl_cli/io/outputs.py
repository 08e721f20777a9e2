"""Where outputs may go, and who may write them: the rules every command that writes follows.

1. **An output is never an input.** A table, figure or folder output that is one of the inputs (a
   named file, a tar shard, a listed file, the file list itself, a ratings file) is refused before any
   work (``UsageError``, exit 2). Files are compared by real path (symlinks and ``..`` resolved) and,
   where the output already exists, by identity (``os.stat``: same device and inode), which also
   covers a case-insensitive file system as far as the OS reports it.
2. **Images are not written among the inputs.** A folder output (``encode --out/--recon``, figure
   folders) or a figure file that is, or lies inside, an input folder is refused unless the user says
   so (``allow_inside_inputs``; the CLI's ``--allow-inside-inputs``): the next folder run would score
   the new PNGs, and a reconstruction could replace the original of the same name.
3. **A weights folder is new.** ``check_new_weights_folder``: a command that writes a weights folder
   (train, calibrate, distil) refuses an existing non-empty ``--out`` unless it is continuing its own
   run there (``karl train --resume``).
4. **One writer per output.** ``OutputLock`` holds an exclusive ``flock`` on a hidden sidecar file
   (``.NAME.lock`` beside the output) for the run's lifetime; a second process gets ``OutputBusy``
   (exit 2) naming the holder's PID. The kernel drops a flock when its process dies, so a killed
   run's leftover lock file never blocks the next one.

    with claim_outputs([Output("--csv", "rows.csv")], inputs=paths, found=scan):
        ...   # score and write
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from karl_cli.errors import UsageError
from karl_cli.io.atomic import default_mode, write_error
from karl_cli.io.images import Found
from karl_cli.io.sources import read_files_list, split_member

ALLOW_FLAG = "--allow-inside-inputs"
LOCK_SUFFIX = ".lock"


class OutputBusy(UsageError):
    """Another process holds the lock on an output (it is writing it now)."""


@dataclass(frozen=True)
class Output:
    """One output of a command. ``flag``: how the user named it (for messages, e.g. "--csv").
    ``kind``: "table" (rows; rule 1), "figure" (an image file; rules 1 and 2) or "folder" (rules 1
    and 2). ``lock``: hold ``OutputLock`` on it for the run (folders that several shard runs share,
    e.g. a token folder, are locked per file by their writers instead)."""

    flag: str
    path: str | os.PathLike
    kind: str = "table"
    lock: bool = True


def _real(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.realpath(os.fspath(path)))


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class _RealPaths:
    """Real paths of many inputs, resolving each folder once (a scan of a million files stays cheap)."""

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        head, tail = os.path.split(os.path.abspath(path))
        if head not in self._dirs:
            self._dirs[head] = os.path.realpath(head)
        joined = os.path.join(self._dirs[head], tail)
        return os.path.normcase(os.path.realpath(joined) if os.path.islink(joined) else joined)


def _input_files(inputs: Sequence[str | os.PathLike], found: Iterable[Found], files_from: str | os.PathLike | None,
                 extra: Sequence[str | os.PathLike]) -> Iterator[tuple[str, str]]:
    """(path as named, what it is) for every input file: named paths, tar shards, scanned and listed
    files, the list itself and ``extra`` files (ratings)."""
    for p in inputs:
        p = os.fsdecode(p)
        member = split_member(p)
        if member or not os.path.isdir(p):     # folders: rule 2 (their files are in ``found``)
            yield (member[0] if member else p), "the input"
    for f in found:
        yield (getattr(f, "tar", "") or f.path), "the input"
    if files_from is not None and os.fsdecode(files_from) != "-":
        yield os.fsdecode(files_from), "the file list (--files-from)"
        with contextlib.suppress(OSError):
            for p in read_files_list(files_from):
                member = split_member(p)
                if member or not os.path.isdir(p):
                    yield (member[0] if member else p), "a file listed in --files-from"
    for p in extra:
        yield os.fsdecode(p), "the input"


def _input_folders(inputs: Sequence[str | os.PathLike], files_from: str | os.PathLike | None) -> list[str]:
    named = [os.fsdecode(p) for p in inputs]
    if files_from is not None and os.fsdecode(files_from) != "-":
        with contextlib.suppress(OSError):
            named += read_files_list(files_from)
    return [_real(p) for p in dict.fromkeys(named) if os.path.isdir(p)]


def check_outputs(outputs: Sequence[Output], inputs: Sequence[str | os.PathLike] = (), found: Iterable[Found] = (),
                  files_from: str | os.PathLike | None = None, extra_inputs: Sequence[str | os.PathLike] = (),
                  allow_inside_inputs: bool = False) -> None:
    """Refuse (``UsageError``, one line) an output that is an input (rule 1), two outputs that are one
    file, or an output that writes images into an input folder without ``allow_inside_inputs`` (rule 2);
    see the module docstring. ``inputs``:
    the paths as given (files, folders, tar shards, members ``shard.tar/KEY.EXT``); ``found``: the
    scan's entries; ``files_from``: the file list (``-``: stdin, whose entries are in ``found``);
    ``extra_inputs``: other files the command reads (a ratings CSV). Outputs that are None or ``-``
    (stdout) are skipped."""
    outs = [o for o in outputs if o.path is not None and os.fspath(o.path) != "-"]
    if not outs:
        return
    keys: dict[str, Output] = {}
    for o in outs:
        other = keys.setdefault(_real(o.path), o)
        if other is not o:
            raise UsageError(f"{other.flag} and {o.flag} name the same file ({os.fspath(o.path)}); give each "
                             "output its own path")
    # Outputs that exist, by identity and by name in lower case: a case-insensitive file system shows
    # the same file under names that differ in case (only those names are worth a stat).
    ids = {i: o for o in outs if (i := _identity(o.path)) is not None}
    names = {os.path.basename(k).lower() for k in keys} if ids else set()
    real = _RealPaths()
    for path, what in _input_files(inputs, found, files_from, extra_inputs):
        hit = keys.get(real(path))
        if hit is None and ids and os.path.basename(path).lower() in names:
            hit = ids.get(_identity(path))
        if hit is not None:
            raise UsageError(f"{hit.flag} {os.fspath(hit.path)} would replace {what} {path}; choose another "
                             "output path")
    folders = _input_folders(inputs, files_from)
    for o in outs:
        if o.kind not in ("figure", "folder") or allow_inside_inputs:
            continue
        target = _real(o.path)
        for folder in folders:
            if target == folder or target.startswith(folder.rstrip(os.sep) + os.sep):
                where = "is the input folder" if target == folder else "lies inside the input folder"
                raise UsageError(f"{o.flag} {os.fspath(o.path)} {where} {folder}: a later run over that folder "
                                 f"would read what this one writes; choose a folder outside the inputs, or "
                                 f"pass {ALLOW_FLAG} to write there anyway")


def check_new_weights_folder(out: str | os.PathLike, flag: str = "--out", resume_hint: bool = False) -> None:
    """Rule 3: a weights folder a command is about to create must not exist yet, or be an empty folder;
    otherwise ``UsageError`` (the weights, checkpoint and log there would stop matching each other).
    ``resume_hint``: the command can continue its own run there (``karl train --resume``)."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not any(out.iterdir()):
        return
    what = "is a file" if not out.is_dir() else "is not empty"
    hint = ("; pass --resume to continue the run there, or choose a new " + flag) if resume_hint else (
        f"; choose a new (or empty) {flag}: writing there would replace the weights it holds")
    raise UsageError(f"{flag} {out} already exists and {what}{hint}")


def check_new_file(out: str | os.PathLike, flag: str, replace: bool = False) -> None:
    """An output a command writes whole from other files (``karl merge OUT INPUTS…``) must not exist
    yet unless ``replace``: its first argument is easily taken for one of the files to join, and the
    rows in it would be lost. ``UsageError`` naming ``flag`` otherwise."""
    if not replace and (os.path.lexists(out)) and not os.path.isdir(out) and os.path.getsize(out) > 0:
        raise UsageError(f"{flag} {os.fspath(out)} already exists: it would be replaced, not merged (the output "
                         "comes first: karl merge OUT INPUTS...); choose a new file, or pass --replace")


# --- locks ------------------------------------------------------------------------------------------
def lock_file(target: str | os.PathLike) -> Path:
    """The sidecar lock file of ``target``: ``.NAME.lock`` in the real folder of ``target``."""
    target = Path(os.path.abspath(os.fspath(target)))
    return Path(os.path.realpath(target.parent)) / f".{target.name}{LOCK_SUFFIX}"


# Locks this process holds, by lock file: a second claim of the same output in one process (the CLI
# claims an output, then its RowWriter opens it) shares the lock instead of blocking on itself.
_held: dict[str, list] = {}
_held_guard = threading.Lock()


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text(encoding="utf-8").split()
        if text and text[0].isdigit():
            return f"PID {text[0]}"
    return "PID unknown"


class OutputLock:
    """An exclusive lock on one output for as long as it is held (a context manager; re-entrant within a
    process). Raises ``OutputBusy`` naming the holder's PID when another process holds it, and
    ``WriteError`` when the lock file cannot be created (the output could not be written there
    either). Works wherever ``flock`` does (Linux, macOS; not every network file system)."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = lock_file(target)
        self._key = str(self.path)
        self._acquired = False

    def acquire(self) -> "OutputLock":
        with _held_guard:
            entry = _held.get(self._key)
            if entry is not None:
                entry[1] += 1
                self._acquired = True
                return self
            fd = self._lock()
            _held[self._key] = [fd, 1]
        self._acquired = True
        return self

    def _lock(self) -> int:
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), default_mode())
            except OSError as e:
                raise write_error(self.target, e) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise write_error(self.target, e) from e
                raise OutputBusy(f"{self.target} is being written by another karl run ({_holder(self.path)}); "
                                 "wait for it to finish, or write to another file (shard runs each need "
                                 "their own output: merge them with `karl merge`)") from None
            # The previous holder may have removed the file between our open and our lock: then this
            # lock guards nothing, start again.
            if _identity(self.path) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        with _held_guard:
            entry = _held.get(self._key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _held[self._key]
            # Remove the file while still holding the lock, so no one locks a file about to vanish.
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(entry[0])

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claim_outputs(outputs: Sequence[Output], inputs: Sequence[str | os.PathLike] = (), found: Iterable[Found] = (),
                  files_from: str | os.PathLike | None = None, extra_inputs: Sequence[str | os.PathLike] = (),
                  allow_inside_inputs: bool = False) -> Iterator[None]:
    """``check_outputs``, then hold an ``OutputLock`` on every output with ``lock`` until the block ends."""
    check_outputs(outputs, inputs, found, files_from, extra_inputs, allow_inside_inputs)
    with contextlib.ExitStack() as stack:
        for o in outputs:
            if o.lock and o.path is not None and os.fspath(o.path) != "-":
                stack.enter_context(OutputLock(o.path))
        yield

"""Atomic writes: a temp file in the target's folder, fsync, then rename over the target.

A run killed at any moment leaves either the old file or the new one, never half of one. A write
that fails (disk full, read-only folder, ...) removes its temp file, leaves the target as it was,
and raises ``WriteError`` naming the target.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from karl_cli.errors import EXIT_FAILED, KarlError
from karl_cli.io.names import safe_text

_HINTS = {getattr(errno, name): hint for name, hint in (("ENOSPC", "disk full"), ("EDQUOT", "disk quota exceeded"),
                                                       ("EROFS", "read-only file system")) if hasattr(errno, name)}


class WriteError(KarlError, OSError):
    """An output could not be written; the previous file at ``filename`` is left intact."""

    exit_code = EXIT_FAILED

    def __str__(self) -> str:
        why = self.strerror or "write failed"
        hint = _HINTS.get(self.errno)
        return f"cannot write {self.filename}: {why}" + (f" ({hint}); the previous file is left as it was"
                                                         if hint else "")


def write_error(target: str | os.PathLike, e: OSError) -> WriteError:
    """``e`` as a ``WriteError`` about ``target`` (not about the temp file it happened on)."""
    if isinstance(e, WriteError):
        return e
    return WriteError(e.errno, e.strerror or str(e), os.fspath(target))


def temp_beside(target: Path) -> Path:
    """A new, empty temp file in ``target``'s folder (hidden, ``.tmp`` suffix), created safely."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, default_mode())
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return Path(tmp)


def default_mode() -> int:
    """The permissions a plain ``open()`` would give a new file (mkstemp's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_path(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target``, on error it is removed.

    An ``OSError`` while writing, syncing or renaming becomes ``WriteError`` (an ``OSError`` too).
    """
    target = Path(target)
    try:
        tmp_path = temp_beside(target)
    except OSError as e:
        raise write_error(target, e) from e
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.chmod(tmp_path, default_mode())  # writers that recreate the file (safetensors) reset it
        os.replace(tmp_path, target)
    except OSError as e:
        raise write_error(target, e) from e
    finally:
        with contextlib.suppress(OSError):
            if tmp_path.exists():
                tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """``open`` that writes atomically."""
    with atomic_path(target) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` as valid UTF-8 (a file name that was not UTF-8 appears escaped: ``names.safe_text``)."""
    with atomic_open(target, "w", encoding="utf-8") as f:
        f.write(safe_text(text))

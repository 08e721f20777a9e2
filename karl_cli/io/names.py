"""File names as text in karl's CSV and JSON outputs: always valid UTF-8, and read back exactly.

On POSIX a file name is bytes; one that is not valid UTF-8 (``b"caf\\xe9.png"``) reaches Python as a
``str`` with lone surrogates (``"caf\\udce9.png"``, PEP 383), which no UTF-8 reader accepts. Outputs
therefore hold ``escape_path(path)``: such bytes written as ``\\xNN`` (Python's ``backslashreplace``
spelling), and a literal backslash as ``\\\\`` so that the escape is unambiguous. Every other
name (all valid UTF-8 names without a backslash) is written unchanged. ``unescape_path`` gives the
exact original back (``karl complexity --resume`` relies on it).

On Windows, where ``\\`` is the folder separator and names are Unicode, names are written as they
are (a lone UTF-16 surrogate, which Windows allows, is written as ``\\udNNN``).
"""
from __future__ import annotations

import os
import re
import unicodedata

import pandas as pd

# File names held in memory keep their lone surrogates (PEP 383) until written. pandas 3 stores text
# columns in pyarrow (a dependency, for Parquet) when it is installed, and pyarrow refuses lone
# surrogates: a DataFrame of such names would raise. Python-backed storage (pandas' own default
# without pyarrow) holds them, with the same dtype and values.
pd.set_option("mode.string_storage", "python")

_POSIX = os.sep == "/"
_ESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def _has_surrogate(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def escape_path(path: str | os.PathLike) -> str:
    """``path`` as valid UTF-8 text that ``unescape_path`` turns back into ``path`` (see the module)."""
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = os.fsdecode(p)
    if not _POSIX:
        return safe_text(p)
    if "\\" not in p and not _has_surrogate(p):
        return p
    raw = os.fsencode(p).replace(b"\\", b"\\\\")
    return raw.decode("utf-8", "backslashreplace")


def unescape_path(text: str) -> str:
    """The file name ``escape_path`` wrote as ``text`` (a ``str``, surrogate-escaped if not UTF-8).

    Text with no escape in it comes back unchanged; a backslash not followed by ``\\`` or ``xNN`` is
    kept as it is (names written by other tools).
    """
    if not _POSIX or "\\" not in text:
        return text
    raw = os.fsencode(text)   # surrogate-escaped input (old karl outputs) keeps its bytes
    out = _ESCAPE.sub(lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1)[1:], 16)]), raw)
    return os.fsdecode(out)


def safe_text(text: str) -> str:
    """Free text (an error message, a category name) as valid UTF-8: bytes that were not UTF-8 become
    ``\\xNN``, any other lone surrogate ``\\udNNN``. Only read, never matched, so not reversed."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_frame(df):
    """A copy of a pandas DataFrame ready for ``to_csv``: its ``path`` column through ``escape_path``,
    every other text cell through ``safe_text`` (so the CSV is valid UTF-8)."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype.kind == "O":   # object or pandas' string dtype
            esc = escape_path if col == "path" else safe_text
            df[col] = df[col].map(lambda v, esc=esc: esc(v) if isinstance(v, str) else v)
    return df


def nfc(name: str) -> str:
    """``name`` in Unicode normalisation form C, the one karl compares names under."""
    return unicodedata.normalize("NFC", name)


def find_normalised(path: str | os.PathLike, listings: dict[str, dict[str, list[str]]] | None = None) -> str | None:
    """The existing path that ``path`` names when its parts are compared under Unicode NFC, or None.

    A name typed or written by one system (``café.png`` in NFC, as most editors and Windows write it)
    names the file another stored in NFD (macOS writes ``cafe`` + a combining accent): both are
    the same text to a reader, different bytes to a POSIX file system. Each part that does not exist
    as written is looked up among its folder's entries by NFC; an exact match always wins, and a part
    that two entries match (both spellings on disk) is ambiguous: None. ``listings`` caches folder
    contents between calls (a ratings file of thousands of rows lists each folder once).
    """
    p = os.fspath(path)
    if os.path.lexists(p):
        return p
    cache = {} if listings is None else listings
    parts = p.split(os.sep)
    absolute = parts[0] == ""
    cur = os.sep if absolute else ""
    for part in parts[1:] if absolute else parts:
        nxt = os.path.join(cur, part) if cur else part
        if part in ("", ".", "..") or os.path.lexists(nxt):
            cur = nxt
            continue
        folder = cur or "."
        if folder not in cache:
            index: dict[str, list[str]] = {}
            try:
                for entry in os.listdir(folder):
                    index.setdefault(nfc(entry), []).append(entry)
            except OSError:
                pass
            cache[folder] = index
        hits = cache[folder].get(nfc(part), [])
        if len(hits) != 1:
            return None
        cur = os.path.join(cur, hits[0]) if cur else hits[0]
    return cur if os.path.lexists(cur) else None

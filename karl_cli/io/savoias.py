"""Human-rated image sets: the Savoias layout, and any set given as a CSV of (path, rating[, category]).

Savoias (Saraee et al.) on disk::

    ROOT/Images/<Category>/<i>.jpg|png
    ROOT/Ground truth/xlsx/global_ranking_<key>.xlsx     one column ``gt`` (0-100), header in row 1

Data row i (0-based, after the header) is the rating of image ``i``. Rows are matched to files by
that index and never shifted: an image missing from disk leaves its rating unused (and reported),
it does not move later ratings up.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from karl_cli.errors import UsageError
from karl_cli.io.images import is_hidden, is_image_name
from karl_cli.io.names import find_normalised, nfc, unescape_path
from karl_cli.io.sources import split_member

# xlsx key -> image folder, in the order the categories are shown.
SAVOIAS_CATEGORIES: dict[str, str] = {
    "scenes": "Scenes",
    "ad": "Advertisement",
    "vis": "Visualizations",
    "objects": "Objects",
    "interior_design": "Interior Design",
    "art": "Art",
    "sup": "Suprematism",
}
IMAGES_DIR = "Images"
GROUND_TRUTH_DIR = Path("Ground truth") / "xlsx"
_XLSX_RE = re.compile(r"^global_ranking_(.+)\.xlsx$", re.IGNORECASE)
COLUMNS = ["path", "rating", "category", "index"]


@dataclass
class RatedSet:
    """Images with a human rating, and what could not be matched.

    ``table``: one row per rated image found on disk: path, rating, category, index.
    ``missing``: ratings whose image is not on disk: category, index, rating (and path for a CSV).
    ``unrated``: image files that have no rating.
    ``notes``: anything else worth telling (duplicates, skipped categories, dropped empty ratings).
    """

    table: pd.DataFrame
    missing: pd.DataFrame
    unrated: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    source: str = ""
    kind: str = "savoias"

    @property
    def categories(self) -> list[str]:
        """Categories present, in first-seen order (Savoias order for Savoias)."""
        return [c for c in dict.fromkeys(self.table["category"]) if isinstance(c, str) and c]

    def summary(self) -> str:
        """One line: how many rated images, and what is missing."""
        parts = [f"{len(self.table)} rated images"]
        if len(self.missing):
            per = self.missing.groupby("category", sort=False).size()
            detail = ", ".join(f"{c} {k}" for c, k in per.items() if c)
            parts.append(f"{len(self.missing)} ratings without an image" + (f" ({detail})" if detail else ""))
        else:
            parts.append("no missing images")
        if self.unrated:
            parts.append(f"{len(self.unrated)} image files without a rating")
        return "; ".join(parts)


def _empty_missing() -> pd.DataFrame:
    return pd.DataFrame({"category": pd.Series(dtype=object), "index": pd.Series(dtype="int64"),
                         "rating": pd.Series(dtype="float64"), "path": pd.Series(dtype=object)})


# Cells that mean "no rating", as pandas reads them by default (compared case-insensitively).
MISSING_MARKERS = frozenset({"", "na", "n/a", "nan", "-nan", "<na>", "#n/a", "#n/a n/a", "#na", "null", "none",
                             "-1.#ind", "1.#ind", "-1.#qnan", "1.#qnan"})


def _to_float(v) -> float | None:
    """A cell as a float; None for an empty or missing cell (``MISSING_MARKERS``: NA, n/a, NaN, ...);
    ValueError for text that is not a number."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(repr(v))
    if isinstance(v, (int, float)):
        return None if (isinstance(v, float) and math.isnan(v)) else float(v)
    s = str(v).strip()
    if s.lower() in MISSING_MARKERS:
        return None
    return float(s.replace(",", "."))


def _header_names(row) -> list[str]:
    return [str(h).strip().lower() if h is not None else "" for h in (row or ())]


def read_ratings_xlsx(path: str | os.PathLike) -> list[float | None]:
    """The ``gt`` column of a Savoias ground-truth workbook: element i is the rating of image i.

    The ratings are the column whose row-1 header is ``gt`` (case and surrounding spaces ignored), on
    the one sheet that has such a column, whatever the sheet's name or place (a user's own ``kc``
    sheet beside it is never read as ratings). No sheet with a ``gt`` column, several such sheets, or
    several ``gt`` columns on one sheet raise UsageError naming the sheets. Empty cells are None (kept,
    so later rows are not shifted); text that is not a number raises UsageError naming the row.
    """
    import openpyxl
    from zipfile import BadZipFile

    path = Path(path)
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, BadZipFile, KeyError, ValueError) as e:
        raise UsageError(f"{path} is not a readable .xlsx workbook: {e}") from None
    try:
        headed = []   # (sheet, column index) of every column headed gt
        for ws in wb.worksheets:
            first = next(ws.iter_rows(max_row=1, values_only=True), ())
            headed.extend((ws, i) for i, n in enumerate(_header_names(first)) if n == "gt")
        sheets = ", ".join(repr(ws.title) for ws in wb.worksheets)
        if not headed:
            raise UsageError(f"{path}: no sheet has a column headed 'gt' in row 1 (sheets: {sheets}); Savoias "
                             "ratings are the column headed gt")
        if len(headed) > 1:
            where = ", ".join(f"{ws.title!r} column {openpyxl.utils.get_column_letter(i + 1)}" for ws, i in headed)
            raise UsageError(f"{path}: several columns headed 'gt' ({where}); keep the ratings in one")
        ws, col = headed[0]
        rows = [list(r) for r in ws.iter_rows(min_row=2, values_only=True)]
    finally:
        wb.close()
    while rows and all(v is None for v in rows[-1]):
        rows.pop()
    out: list[float | None] = []
    for i, row in enumerate(rows):
        cell = row[col] if col < len(row) else None
        try:
            out.append(_to_float(cell))
        except ValueError:
            raise UsageError(f"{path}: sheet {ws.title!r} row {i + 2} holds {cell!r}, not a rating") from None
    if not out:
        raise UsageError(f"{path}: sheet {ws.title!r} has a 'gt' header and no ratings below it")
    return out


def _find_dir(parent: Path, name: str) -> Path | None:
    """The folder ``name`` in ``parent``, as written or else compared case-insensitively under NFC."""
    exact = parent / name
    if exact.is_dir():
        return exact
    if parent.is_dir():
        want = nfc(name).casefold()
        for d in sorted(parent.iterdir()):
            if d.is_dir() and nfc(d.name).casefold() == want:
                return d
    return None


def _index_files(folder: Path, include_hidden: bool = False
                 ) -> tuple[dict[int, Path], list[Path], list[str], int]:
    """Image files of a category folder by integer index; files that carry no index; notes; hidden
    entries skipped (the same rule as ``images.discover_images``)."""
    by_index: dict[int, list[Path]] = {}
    other: list[Path] = []
    hidden = 0
    for p in sorted(folder.iterdir(), key=lambda q: q.name):
        if is_hidden(p.name) and not include_hidden:
            hidden += 1
            continue
        if not is_image_name(p.name) or not p.is_file():
            continue
        if p.stem.isdigit():
            by_index.setdefault(int(p.stem), []).append(p)
        else:
            other.append(p)
    notes = []
    chosen: dict[int, Path] = {}
    for i, ps in sorted(by_index.items()):
        chosen[i] = ps[0]
        if len(ps) > 1:
            notes.append(f"{folder.name}: image {i} has {len(ps)} files ({', '.join(q.name for q in ps)}); "
                         f"using {ps[0].name}")
    return chosen, other, notes, hidden


def load_savoias(root: str | os.PathLike, include_hidden: bool = False) -> RatedSet:
    """Ratings of a Savoias-layout folder matched to its image files by index.

    Hidden files and folders (names starting with '.') are skipped and counted in ``notes`` unless
    ``include_hidden``; image files are those of ``images.image_suffixes()``.
    """
    root = Path(root)
    if not root.exists():
        raise UsageError(f"no such folder: {root}")
    if not root.is_dir():
        raise UsageError(f"{root} is a file; pass the Savoias root folder (or use --ratings for a CSV)")
    images = _find_dir(root, IMAGES_DIR)
    gt = root / GROUND_TRUTH_DIR
    if images is None or not gt.is_dir():
        raise UsageError(f"{root} does not have the Savoias layout: expected '{IMAGES_DIR}/<Category>/<i>.jpg' "
                         f"and '{GROUND_TRUTH_DIR.as_posix()}/global_ranking_<key>.xlsx'")
    workbooks: dict[str, Path] = {}
    for p in sorted(gt.iterdir()):
        m = _XLSX_RE.match(p.name)
        if m and p.is_file() and not p.name.startswith("~$"):
            workbooks[m.group(1).lower()] = p
    if not workbooks:
        raise UsageError(f"{gt} holds no global_ranking_<key>.xlsx files")
    keys = [k for k in SAVOIAS_CATEGORIES if k in workbooks] + sorted(k for k in workbooks if k not in SAVOIAS_CATEGORIES)

    rows: list[dict] = []
    missing: list[dict] = []
    unrated: list[str] = []
    notes: list[str] = []
    seen_folders: set[str] = set()
    hidden = 0
    for key in keys:
        category = SAVOIAS_CATEGORIES.get(key)
        folder = _find_dir(images, category) if category else None
        if category is None:  # an unknown key: accept a folder of the same name
            folder = _find_dir(images, key) or _find_dir(images, key.replace("_", " "))
            if folder is None:
                notes.append(f"{workbooks[key].name}: unknown category key {key!r} with no image folder; skipped")
                continue
            category = folder.name
        ratings = read_ratings_xlsx(workbooks[key])
        files, other, dup_notes, n_hidden = (_index_files(folder, include_hidden) if folder is not None
                                             else ({}, [], [], 0))
        notes.extend(dup_notes)
        hidden += n_hidden
        if folder is None:
            notes.append(f"no image folder {IMAGES_DIR}/{category}: all {len(ratings)} of its ratings unmatched")
        else:
            seen_folders.add(folder.name)
        empty = 0
        for i, r in enumerate(ratings):
            f = files.get(i)
            if r is None:
                empty += 1
                if f is not None:
                    unrated.append(str(f))
                continue
            if f is None:
                missing.append({"category": category, "index": i, "rating": r, "path": None})
            else:
                rows.append({"path": str(f), "rating": r, "category": category, "index": i})
        if empty:
            notes.append(f"{workbooks[key].name}: {empty} empty rating cells")
        unrated.extend(str(f) for i, f in files.items() if i >= len(ratings))
        unrated.extend(str(p) for p in other)
    for d in sorted(images.iterdir()):
        if d.is_dir() and d.name not in seen_folders:
            if is_hidden(d.name) and not include_hidden:
                hidden += 1
                continue
            stray = [p for p in d.iterdir() if is_image_name(p.name) and (include_hidden or not is_hidden(p.name))]
            if stray:
                notes.append(f"{IMAGES_DIR}/{d.name}: no ground-truth workbook; {len(stray)} images unrated")
                unrated.extend(str(p) for p in sorted(stray))
    if hidden:
        notes.append(f"skipped {hidden} hidden files or folders (--include-hidden scans them)")
    if not rows:
        raise UsageError(f"{root}: no rated image was found (checked {len(keys)} workbooks)")
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"rating": "float64", "index": "int64"})
    miss = pd.DataFrame(missing, columns=["category", "index", "rating", "path"]) if missing else _empty_missing()
    return RatedSet(table, miss.astype({"index": "int64", "rating": "float64"}), unrated, notes, str(root), "savoias")


_WINDOWS_ABS = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")   # C:\x, C:/x or \\server\share


_NORMALISED = "matched a file whose name is stored in another Unicode normalisation (NFC vs NFD, e.g. written on macOS)"


def _resolve(raw: str, base: Path, listings: dict | None = None) -> tuple[Path, str]:
    """The file a ratings-CSV path names, and how it was read when not as written ('' if as written).

    Relative paths resolve against ``base``. A path that names no file as written is matched with its
    names compared under Unicode NFC (``names.find_normalised``; ``listings`` caches folder contents).
    On POSIX a path with backslashes that names no file is tried as karl's escaped form
    (``names.escape_path``, as in karl's own outputs) and then with ``\\`` as the folder separator (a
    CSV made on Windows), each also under NFC.
    """
    def full(text: str) -> Path:
        p = Path(os.path.expanduser(text))
        return p if p.is_absolute() else base / p

    def existing(p: Path) -> tuple[Path | None, str]:
        if p.is_file():
            return p, ""
        q = find_normalised(p, listings)
        return (Path(q), _NORMALISED) if q is not None and os.path.isfile(q) else (None, "")

    first = full(raw)
    hit, how = existing(first)
    if hit is not None:
        return hit, how
    if "\\" not in raw or os.sep == "\\":
        return first, ""
    hit, how = existing(full(unescape_path(raw)))
    if hit is not None:
        return hit, how
    slashed = full(raw.replace("\\", "/"))
    if _WINDOWS_ABS.match(raw):
        return slashed, ("are absolute Windows paths (like C:\\data\\x.png) and cannot be found here: "
                         "write them relative to the CSV's folder, with / or \\ between folders")
    return existing(slashed)[0] or slashed, "were read with \\ as the folder separator (Windows paths)"


def load_ratings_csv(csv_path: str | os.PathLike) -> RatedSet:
    """Any rated image set: a CSV with columns ``path``, ``rating`` and optionally ``category``.

    A path may name a member of a tar shard (``shard.tar/KEY.EXT``). Relative paths resolve against
    the CSV's folder; Windows ``\\`` separators are accepted (with a
    note). Rows whose file does not exist are reported as missing (index = 0-based data row); rows
    with an empty or missing rating (``MISSING_MARKERS``: NA, n/a, NaN, ...) are dropped with a note.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UsageError(f"no such ratings file: {csv_path}")
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True,
                         encoding="utf-8", encoding_errors="surrogateescape")  # non-UTF-8 names as bytes
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UsageError(f"{csv_path} is not a readable CSV: {e}") from None
    cols = {str(c).strip().lower(): c for c in df.columns}
    need = [c for c in ("path", "rating") if c not in cols]
    if need:
        raise UsageError(f"{csv_path} lacks the column(s) {', '.join(need)}; a ratings CSV needs 'path' and "
                         f"'rating' (and may have 'category'); found: {', '.join(map(str, df.columns)) or 'none'}")
    base = csv_path.resolve().parent
    has_cat = "category" in cols
    rows, missing, notes = [], [], []
    listings: dict = {}
    read_as: dict[str, int] = {}
    empty = 0
    seen: dict[str, int] = {}
    for i, rec in enumerate(df.itertuples(index=False)):
        rec = dict(zip(df.columns, rec))
        raw_path = str(rec[cols["path"]]).strip()
        if not raw_path:
            raise UsageError(f"{csv_path}: data row {i + 1} has an empty path")
        try:
            rating = _to_float(rec[cols["rating"]])
        except ValueError:
            raise UsageError(f"{csv_path}: data row {i + 1} ({raw_path}) has rating "
                             f"{rec[cols['rating']]!r}, not a number") from None
        if rating is not None and not math.isfinite(rating):
            raise UsageError(f"{csv_path}: data row {i + 1} ({raw_path}) has a non-finite rating")
        category = str(rec[cols["category"]]).strip() if has_cat else ""
        full, how = _resolve(raw_path, base, listings)
        if how:
            read_as[how] = read_as.get(how, 0) + 1
        key = os.path.normpath(str(full))
        if key in seen:
            raise UsageError(f"{csv_path}: {raw_path} is listed twice (data rows {seen[key] + 1} and {i + 1}); "
                             f"give one rating per image (e.g. the mean over raters)")
        seen[key] = i
        if rating is None:
            empty += 1
            continue
        if not full.is_file() and split_member(str(full)) is None:   # a file, or a tar member shard.tar/KEY.EXT
            missing.append({"category": category, "index": i, "rating": rating, "path": str(full)})
        else:
            rows.append({"path": str(full), "rating": rating, "category": category, "index": i})
    if empty:
        notes.append(f"{empty} rows with an empty or missing rating (NA, n/a, NaN, ...) dropped")
    for how, k in read_as.items():
        notes.append(f"{k} paths {how}")
    if not rows:
        raise UsageError(f"{csv_path}: none of its {len(df)} rows names an existing image with a rating")
    table = pd.DataFrame(rows, columns=COLUMNS).astype({"rating": "float64", "index": "int64"})
    miss = pd.DataFrame(missing, columns=["category", "index", "rating", "path"]) if missing else _empty_missing()
    return RatedSet(table, miss.astype({"index": "int64", "rating": "float64"}), [], notes, str(csv_path), "csv")


def load_ratings(root: str | os.PathLike | None = None, ratings: str | os.PathLike | None = None,
                 include_hidden: bool = False) -> RatedSet:
    """A Savoias root folder, or (``ratings=``) a ratings CSV; a CSV passed as ``root`` also works.
    ``include_hidden`` applies to a Savoias folder (a CSV's rows name their files explicitly)."""
    if (root is None) == (ratings is None):
        raise UsageError("give either a Savoias root folder or a ratings CSV (--ratings), not both"
                         if root is not None else "give a Savoias root folder or --ratings FILE.csv")
    if ratings is not None:
        return load_ratings_csv(ratings)
    if Path(root).is_file() and Path(root).suffix.lower() == ".csv":
        return load_ratings_csv(root)
    return load_savoias(root, include_hidden)

"""``karl correlate``: how well KC (and the classic complexity baselines) track human complexity ratings.

    from karl_cli.analysis.correlate import correlate
    results, per_image = correlate("savoias/", weights="weights/karl-small", eps=[0.05])

Scores come from ``complexity.score`` (one scoring loop in the project) and are cached per
(image content hash, model id, ε, method), so a re-run with another ``--bootstrap`` or ``--plot``
does not run the model again. Results: one row per (category, method, ε), plus the pooled rows over
every image (``pooled`` True, ``category`` empty, so no category name of yours can clash with it), with
n, Spearman ρ and its seeded percentile-bootstrap 95% CI, Pearson r and Kendall τ-b; one row per
chosen baseline (``baselines.REGISTRY``: JPEG and PNG by default, ``"all"`` for the whole battery).
KARL's rows add ``vs_best``, ρ − ρ(best baseline) on the same images with a paired bootstrap CI
(``stats.spearman_difference``), where the best baseline (``best_baseline``) is the chosen baseline with
the highest ρ *in that category*: an interval above 0 says KC ranks those images better than the best
classic measure does. Picking the best on the same images favours the baseline, so the test is
conservative for KC. ``vs_jpeg`` is the same against JPEG bytes per pixel (when JPEG is chosen).
"""
from __future__ import annotations

import hashlib
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from karl_cli.analysis.stats import correlation, spearman_difference
from karl_cli.defaults import BATCH_SIZE, BOOTSTRAP, CORRELATE_EPS
from karl_cli.errors import UsageError
from karl_cli.io.rows import write_table
from karl_cli.io.savoias import RatedSet, load_ratings
from karl_cli.models.pretrained import load, model_id
from karl_cli.runtime import resolve_device
from karl_cli.scoring import complexity
from karl_cli.scoring.baselines import DEFAULT_BASELINES, REGISTRY, parse_baselines
from karl_cli.scoring.methods import check_eps, check_method, method_name, validate_eps

RESULT_COLUMNS = ["category", "pooled", "method", "eps", "n", "spearman", "spearman_lo", "spearman_hi", "pearson",
                  "kendall", "reason", "vs_jpeg", "vs_jpeg_lo", "vs_jpeg_hi", "best_baseline", "vs_best",
                  "vs_best_lo", "vs_best_hi"]
PER_IMAGE_COLUMNS = ["path", "category", "index", "rating", "eps", "method", "kc", "kc_soft", "max_tokens", "l1",
                     "code_l1", "status", "error", "sha256"]
SCORE_FIELDS = ["kc", "kc_soft", "max_tokens", "l1", "code_l1", "encoder_runs", "decoder_runs"] + list(REGISTRY)
CACHE_COLUMNS = ["sha256", "model_id", "eps", "method"] + SCORE_FIELDS
# 2: every registry baseline has a column (NaN until computed); 3: WebP and GIF redefined (fast presets);
# 4: the code_l1 column, and the default check (the code's, for the wavelet KARL: l1 empty)
CACHE_VERSION = 4
POOLED_LABEL = "all (pooled)"   # how the terminal and the figures name the pooled rows


# --- identities ------------------------------------------------------------------------------------
# Default ε for correlating with ratings: on the Savoias dev half it ranks photos most like people do
# (pooled ρ 0.59 at 0.03 vs 0.55 at 0.05 and 0.42 at 0.09 for the wavelet default; 0.51 vs 0.50 for
# the old DCT one).

def file_sha256(path: str | os.PathLike) -> str | None:
    """sha256 of a file's bytes; None if it cannot be read (it is then scored but not cached)."""
    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):   # a pipe would block: not cached, and scored as an error
            return None
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _eps_key(eps: float) -> str:
    return f"{float(eps):.6g}"


def method_names(method: str) -> list[tuple[str, str]]:
    """(results name, score column) pairs a scoring method contributes."""
    if method == "single":
        return [("karl_kc", "kc"), ("karl_kc_soft", "kc_soft")]
    return [(f"karl_{method}_kc", "kc")]


# --- the score cache ---------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$KARL_CACHE_DIR``, else ``$XDG_CACHE_HOME/karl``, else ``~/.cache/karl``."""
    if os.environ.get("KARL_CACHE_DIR"):
        return Path(os.environ["KARL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "karl"


class ScoreCache:
    """Scores of one model in ``<dir>/scores-<model id>.csv``; rewritten atomically on ``save``."""

    def __init__(self, directory: str | os.PathLike, mid: str) -> None:
        self.path = Path(directory).expanduser() / f"scores-v{CACHE_VERSION}-{mid}.csv"
        self.model_id = mid
        self._rows: dict[tuple[str, str, str], dict] = {}
        self._dirty = False
        self.warning = ""
        if self.path.is_file():
            try:
                df = pd.read_csv(self.path, dtype={"sha256": str, "model_id": str, "eps": str, "method": str})
                if list(df.columns) != CACHE_COLUMNS:
                    raise ValueError(f"unexpected columns {list(df.columns)}")
                for rec in df.to_dict("records"):
                    if rec["model_id"] == mid:
                        self._rows[(rec["sha256"], rec["eps"], rec["method"])] = rec
            except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
                self.warning = f"ignoring unreadable score cache {self.path} ({e}); it will be rebuilt"
                self._rows = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, sha: str | None, eps: float, method: str, need: Sequence[str] = ()) -> dict | None:
        """The cached scores, or None if absent or any column of ``need`` (baselines) is missing."""
        if sha is None:
            return None
        hit = self._rows.get((sha, _eps_key(eps), method))
        if hit is None or not all(math.isfinite(_num(hit.get(k))) for k in need):
            return None
        return hit

    def put(self, sha: str | None, eps: float, method: str, row: dict) -> None:
        if sha is None:
            return
        rec = {"sha256": sha, "model_id": self.model_id, "eps": _eps_key(eps), "method": method}
        old = self._rows.get((sha, _eps_key(eps), method), {})
        rec.update({k: row.get(k, old.get(k, math.nan)) for k in SCORE_FIELDS})   # keep baselines known before
        self._rows[(sha, _eps_key(eps), method)] = rec
        self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        df = pd.DataFrame(list(self._rows.values()), columns=CACHE_COLUMNS)
        write_table(df, self.path, "csv")
        self._dirty = False


class _NoCache(ScoreCache):
    def __init__(self) -> None:  # noqa: D401 - a cache that remembers nothing
        self.path, self.model_id, self._rows, self._dirty, self.warning = None, "", {}, False, ""

    def put(self, *a, **k) -> None:
        pass

    def save(self) -> None:
        pass


# --- the job ---------------------------------------------------------------------------------------
@dataclass
class CorrelationResult:
    """``results`` (one row per category x method x ε), ``per_image`` (one row per image x ε), and
    what was done. Unpacks as ``results, per_image = correlate(...)``."""

    results: pd.DataFrame
    per_image: pd.DataFrame
    rated: RatedSet
    eps: list[float]
    method: str
    model_id: str
    n_boot: int
    seed: int
    computed: int = 0          # (image, ε) scores computed by the model in this call
    cached: int = 0            # (image, ε) scores taken from the cache
    cache_path: str | None = None
    notes: list[str] = field(default_factory=list)
    level: float = 0.95
    baselines: tuple[str, ...] = DEFAULT_BASELINES

    def __iter__(self):
        return iter((self.results, self.per_image))

    @property
    def failed(self) -> pd.DataFrame:
        """Per-image rows that could not be scored (unreadable image, ...)."""
        return self.per_image[self.per_image["status"] != "ok"]

    def save(self, out: str | os.PathLike | None = None, per_image: str | os.PathLike | None = None) -> None:
        """Write the results and/or per-image tables as CSV, atomically: valid UTF-8 that
        ``pandas.read_csv`` reads with its defaults (a non-UTF-8 file name is written escaped, as
        ``names.escape_path`` says; category names and errors likewise)."""
        if out is not None:
            write_table(self.results, out, "csv")
        if per_image is not None:
            write_table(self.per_image, per_image, "csv")


def correlate(source: str | os.PathLike | RatedSet | None = None, *, ratings: str | os.PathLike | None = None,
              model=None, weights: str | os.PathLike | None = None, eps: float | Sequence[float] = (CORRELATE_EPS,),
              method: str = "single", bootstrap: int = BOOTSTRAP, seed: int = 0, level: float = 0.95,
              batch_size: int = BATCH_SIZE, workers: int = 0, device: str | None = None,
              cache: str | os.PathLike | bool | None = None, progress: Callable | None = None,
              include_hidden: bool = False, baselines: bool | str | Sequence[str] = True) -> CorrelationResult:
    """Correlate KC and the classic baselines with human ratings.

    ``source``: a Savoias root folder, a ratings CSV, or a loaded ``RatedSet``; or pass ``ratings=CSV``.
    ``model`` (a loaded tokenizer) or ``weights`` (a shipped model name or a weights directory,
    ``pretrained.load``; neither: the default model). ``method``: ``single`` (one
    encoder pass, KC and soft KC), ``search`` or ``prefix`` (the search baselines' minimal token
    count). ``cache``: a folder for the score cache (None: the default folder, False: no cache).
    ``include_hidden``: also take hidden files and folders of a Savoias folder (skipped and counted in
    the notes by default).
    ``baselines``: ``True`` (JPEG, PNG), ``"all"`` or names (``baselines.parse_baselines``; an unknown
    name raises UsageError).
    """
    method_name(method)
    if bootstrap < 0:
        raise UsageError("--bootstrap must be >= 0")
    if not 0 < level < 1:
        raise UsageError("level must lie in (0, 1)")
    eps_list = validate_eps(eps)
    names = parse_baselines(baselines)
    rated = source if isinstance(source, RatedSet) else load_ratings(source, ratings, include_hidden)
    if model is None:
        model = load(weights, device=resolve_device(device or "auto"))
    check_method(model, method)
    check_eps(model, method, eps_list)
    mid = model_id(model)
    store = _NoCache() if cache is False else ScoreCache(default_cache_dir() if cache in (None, True) else cache, mid)
    notes = [store.warning] if store.warning else []

    table = rated.table.reset_index(drop=True)
    paths = table["path"].tolist()
    shas = [file_sha256(p) for p in paths]
    scores: dict[tuple[str, str], dict] = {}   # (path, eps key) -> score row
    todo: dict[str, list[float]] = {}          # path -> ε still to compute
    cached = 0
    for p, sha in zip(paths, shas):
        for e in eps_list:
            hit = store.get(sha, e, method, names)
            if hit is not None:
                scores[(p, _eps_key(e))] = {**hit, "status": "ok", "error": ""}
                cached += 1
            else:
                todo.setdefault(p, []).append(e)

    computed = 0
    sha_of = dict(zip(paths, shas))
    groups: dict[tuple[float, ...], list[str]] = {}   # images needing the same ε run in one call
    for p, es in todo.items():
        groups.setdefault(tuple(es), []).append(p)
    try:
        for es, group_paths in groups.items():
            computed += _score_into(group_paths, model, list(es), method, names, batch_size, workers, device,
                                    progress, scores, store, sha_of)
    finally:
        store.save()

    per_image = _per_image_frame(table, shas, eps_list, method, scores, names)
    results = _results_frame(per_image, rated.categories, eps_list, method, bootstrap, seed, level, names)
    return CorrelationResult(results, per_image, rated, eps_list, method, mid, bootstrap, seed, computed, cached,
                             str(store.path) if store.path else None, notes, level, names)


def _score_into(paths, model, eps_list, method, names, batch_size, workers, device, progress, scores, store,
                sha_of) -> int:
    n = 0
    rows = complexity.score(paths, model, eps_list, method=method, baselines=names, batch_size=batch_size,
                            workers=workers, device=device, progress=progress)
    for row in rows:
        p = os.fspath(row["path"])
        key = (p, _eps_key(row["eps"]))
        scores[key] = dict(row)
        n += 1
        if row.get("status", "ok") == "ok":
            store.put(sha_of.get(p), row["eps"], method, row)
    return n


def _num(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _per_image_frame(table: pd.DataFrame, shas, eps_list, method, scores, names) -> pd.DataFrame:
    recs = []
    for i, t in enumerate(table.itertuples(index=False)):
        for e in eps_list:
            s = scores.get((t.path, _eps_key(e)))
            if s is None:
                s = {"status": "error", "error": "not scored (no row came back for this image)"}
            err = s.get("error")
            recs.append({
                "path": t.path, "category": t.category, "index": t.index, "rating": t.rating, "eps": e,
                "method": method, **{k: _num(s.get(k)) for k in ("kc", "kc_soft", "max_tokens", "l1", "code_l1", *names)},
                "status": s.get("status", "ok"), "error": "" if err is None or (isinstance(err, float) and
                                                                               math.isnan(err)) else str(err),
                "sha256": shas[i] or "",
            })
    cut = PER_IMAGE_COLUMNS.index("status")
    df = pd.DataFrame(recs, columns=PER_IMAGE_COLUMNS[:cut] + list(names) + PER_IMAGE_COLUMNS[cut:])
    return df.astype({"kc": "Int64", "max_tokens": "Int64", "index": "int64"})


def _results_frame(per_image: pd.DataFrame, categories: list[str], eps_list, method, n_boot, seed, level,
                   names: Sequence[str] = DEFAULT_BASELINES) -> pd.DataFrame:
    ok = per_image[per_image["status"] == "ok"]
    groups: list[tuple[str, bool, pd.DataFrame]] = [(c, False, ok[ok["category"] == c]) for c in categories]
    groups.append(("", True, ok))
    rows = []
    for name, pooled, g in groups:
        first = g[g["eps"] == eps_list[0]]
        base_rows = [_row(name, pooled, b, math.nan, first[b], first["rating"], n_boot, seed, level) for b in names]
        defined = [r for r in base_rows if math.isfinite(r["spearman"])]
        best = max(defined, key=lambda r: r["spearman"])["method"] if defined else None   # first on ties
        for e in eps_list:
            ge = g[g["eps"] == e]
            for label, col in method_names(method):
                if method != "single" or col == "kc" or ge[col].notna().any():
                    row = _row(name, pooled, label, e, ge[col], ge["rating"], n_boot, seed, level)
                    for key, against in (("vs_jpeg", "jpeg_bpp" if "jpeg_bpp" in names else None), ("vs_best", best)):
                        if against is not None:
                            d = spearman_difference(_floats(ge[col]), _floats(ge[against]), _floats(ge["rating"]),
                                                    n_boot=n_boot, seed=seed, level=level)
                            row.update({key: d.delta, f"{key}_lo": d.lo, f"{key}_hi": d.hi})
                    rows.append({**row, "best_baseline": best or ""})
        rows.extend(base_rows)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS).astype({"pooled": bool})


def _floats(s) -> np.ndarray:
    return pd.to_numeric(pd.Series(s), errors="coerce").astype("float64").to_numpy()


def _row(category, pooled, method, eps, x, y, n_boot, seed, level) -> dict:
    c = correlation(_floats(x), _floats(y), n_boot=n_boot, seed=seed, level=level)
    return {"category": category, "pooled": pooled, "method": method, "eps": eps, "n": c.n, "spearman": c.spearman,
            "spearman_lo": c.spearman_lo, "spearman_hi": c.spearman_hi, "pearson": c.pearson,
            "kendall": c.kendall, "reason": c.reason, "vs_jpeg": math.nan, "vs_jpeg_lo": math.nan,
            "vs_jpeg_hi": math.nan, "best_baseline": "", "vs_best": math.nan, "vs_best_lo": math.nan,
            "vs_best_hi": math.nan}


# --- terminal rendering ------------------------------------------------------------------------------
def _fmt_rho(row) -> str:
    """ρ on one line, its CI (or why there is no ρ) dimmed on the next, Pearson r and Kendall τ below."""
    if row is None:
        return "—"
    if not math.isfinite(row["spearman"]):
        why = {"x is constant": "constant", "y is constant": "flat ratings",
               "both inputs constant": "both constant"}.get(row["reason"], row["reason"] or "undefined")
        return f"n/a\n[dim]{why}[/]"
    ci = f"\n[dim][{row['spearman_lo']:.2f}, {row['spearman_hi']:.2f}][/]" if math.isfinite(row["spearman_lo"]) else ""
    others = "  ".join(f"{name} {row[col]:.2f}" for name, col in (("r", "pearson"), ("τ", "kendall"))
                       if math.isfinite(row[col]))
    return f"{row['spearman']:.2f}{ci}" + (f"\n[dim]{others}[/]" if others else "")


def _fmt_gap(row, key: str = "vs_best") -> str:
    """ρ − ρ(best baseline) (``key`` "vs_best") or − ρ(JPEG) ("vs_jpeg") signed, green where its CI lies
    above 0, red where below; the CI dimmed beneath, and for ``vs_best`` which baseline was best."""
    if row is None or not math.isfinite(row[key]):
        return "—"
    lo, hi = row[f"{key}_lo"], row[f"{key}_hi"]
    colour = "green" if lo > 0 else "red" if hi < 0 else ""
    head = f"{row[key]:+.2f}"
    head = f"[{colour}]{head}[/]" if colour else head
    best = REGISTRY[row["best_baseline"]].label if key == "vs_best" and row["best_baseline"] in REGISTRY else ""
    return head + (f"\n[dim][{lo:+.2f}, {hi:+.2f}][/]" if math.isfinite(lo) else "") + (f"\n[dim]{best}[/]" if best else "")


def _bold(cell: str) -> str:
    head, _, tail = cell.partition("\n")
    return f"[bold green]{head}[/]" + (f"\n{tail}" if tail else "")


def _title(result: CorrelationResult) -> str:
    ci = (f" [{100 * result.level:g}% bootstrap CI, {result.n_boot} resamples, seed {result.seed}]"
          if result.n_boot else " (no CI: --bootstrap 0)")
    return f"Spearman ρ with human ratings{ci}; below it Pearson r and Kendall τ-b"


def rich_table(result: CorrelationResult, title: str | None = None):
    """A rich Table: one row per category, then the pooled row (bold, in its own section, named
    ``POOLED_LABEL``); per measure Spearman ρ [CI], Pearson r and Kendall τ-b side by side (the best ρ
    of each row in bold green), then KC − the category's best baseline, paired CI."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    res = result.results
    cols: list[tuple[str, str, float | None]] = []   # (header, method, eps)
    for e in result.eps:
        for label, _ in method_names(result.method):
            if ((res["method"] == label) & np.isclose(res["eps"].astype(float), e)).any():
                name = {"karl_kc": "KC", "karl_kc_soft": "soft KC"}.get(label, label.replace("karl_", "").replace(
                    "_kc", " KC"))
                cols.append((f"{name} ε={e:g}", label, e))
    n_model = len(cols)
    cols += [(REGISTRY[b].label, b, None) for b in result.baselines]
    # KC − best baseline per ε (the first KARL measure): the paired test of "KC beats the best".
    gaps = [(f"{h.split(' ε=')[0]} − best ε={e:g}", m, e) for h, m, e in cols[:n_model]
            if m == cols[0][1] and result.baselines]
    table = Table(box=box.SIMPLE_HEAVY, pad_edge=False, collapse_padding=True, title=title or _title(result),
                  title_justify="left")
    groups = list(dict.fromkeys(zip(res["pooled"].astype(bool), res["category"])))
    groups = [g for g in groups if not g[0]] + [g for g in groups if g[0]]
    table.add_column("category", no_wrap=True, min_width=max([len(str(c)) for _, c in groups] + [8]))
    table.add_column("n", justify="right", no_wrap=True)
    for header, _, _ in cols + gaps:
        table.add_column(header, justify="right")
    for pooled, cat in groups:
        sub = res[res["pooled"] if pooled else (~res["pooled"] & (res["category"] == cat))]
        cells, rhos = [], []
        for _, method, e in cols:
            m = sub[(sub["method"] == method) & (sub["eps"].isna() if e is None else np.isclose(sub["eps"].astype(float), e))]
            row = m.iloc[0] if len(m) else None
            cells.append(_fmt_rho(row))
            rhos.append(row["spearman"] if row is not None and math.isfinite(row["spearman"]) else -math.inf)
        best = max(rhos) if rhos else -math.inf
        if math.isfinite(best):
            cells = [_bold(c) if r == best else c for c, r in zip(cells, rhos)]
        for _, method, e in gaps:
            m = sub[(sub["method"] == method) & np.isclose(sub["eps"].astype(float), e)]
            cells.append(_fmt_gap(m.iloc[0] if len(m) else None))
        n = int(sub["n"].max()) if len(sub) else 0
        if pooled and len(groups) > 1:
            table.rows[-1].end_section = True
        table.add_row(f"[bold]{POOLED_LABEL}[/]" if pooled else escape(str(cat)), str(n), *cells)
    return table

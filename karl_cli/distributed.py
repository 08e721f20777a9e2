"""Scoring on Ray Data: the KC of every image of a dataset, across the processes, GPUs and machines of
a Ray cluster, with the rows of ``karl complexity`` (``pip install 'karl[ray]'``).

    import ray, karl_cli.distributed as kd
    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)   # columns bytes, path
    rows = kd.score_dataset(ds, weights="karl-small", eps=[0.03, 0.05], concurrency=8)
    rows.write_parquet("s3://bucket/kc/")

or, stage by stage, ``ds.map_batches(KCScorer, fn_constructor_kwargs={"eps": [0.05]}, batch_size=64,
batch_format="pyarrow", concurrency=4, num_gpus=1)``. Each actor loads one model and keeps it; the
images of a batch are read and decoded in the actor (the driver sends names or bytes, never pixels),
through the same reader and measuring core as the single process (``scoring.measure``), so the rows
are the same: on the CPU bit for bit, given the same batches.

Input rows (any Ray dataset with these columns): ``path`` (str, the name the row carries; as in
karl's own outputs, a name that is not UTF-8 is held as ``io.names.escape_path`` text), and
optionally ``bytes`` (the file's bytes, e.g. from ``ray.data.read_binary_files(include_paths=True)``;
``path`` then only names them), ``source`` (the file to read when it differs from ``path``: the
driver sends absolute paths so an actor on another node or folder finds the file), ``offset`` and
``size`` (a tar member's bytes inside the file ``source``) and ``error`` (an input already known to be
unreadable). An unreadable image is an error row with the reason, never a failed task. Output rows:
``io.rows.ROW_FIELDS`` (+ the chosen baselines), typed as in ``karl complexity --parquet``.

Lost workers: Ray Data restarts a dead actor and resubmits its batch (actor pools default to
``max_restarts=-1`` and ``max_task_retries=-1``); the rows come out complete and in order.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

try:
    import ray
    import ray.data
except ImportError as e:  # the optional extra; the CLI turns this into one line
    raise ImportError("scoring on Ray needs Ray Data: pip install 'karl[ray]' (ray[data] >= 2.60)") from e

from karl_cli.errors import UsageError
from karl_cli.io.images import Found, max_pixels, set_max_pixels
from karl_cli.io.names import escape_path, safe_text, unescape_path
from karl_cli.io.sources import Blob, TarMember
from karl_cli.models.pretrained import load, model_id
from karl_cli.runtime import prepare_model, resolve_device
from karl_cli.scoring.baselines import parse_baselines
from karl_cli.io.rows import ROW_FIELDS, row_key, row_schema
from karl_cli.scoring.complexity import batch_rows, pending
from karl_cli.scoring.measure import ImageDataset, Progress, collate_images, measure
from karl_cli.scoring.methods import check_eps, check_method, resolve_check, validate_eps

ENTRY_COLUMNS = ("path", "source", "offset", "size", "error")


def _columns(batch: Any) -> dict[str, list]:
    """A Ray batch in any of its formats (pyarrow Table, pandas DataFrame, dict of arrays) as lists."""
    if isinstance(batch, pa.Table):
        return batch.to_pydict()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):       # pandas
        return {k: list(batch[k]) for k in batch.columns}
    return {k: list(v) for k, v in batch.items()}


def _entry(cols: dict[str, list], i: int) -> Found:
    """Row i of a batch as the input entry the measuring core reads."""
    def get(k: str) -> Any:
        v = cols[k][i] if k in cols else None
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else v

    path = unescape_path(str(get("path")))
    if get("error"):
        return Found(path, str(get("error")))
    data = get("bytes")
    if data is not None:
        return Blob(path, None, bytes(data))
    source = unescape_path(get("source")) if get("source") else path
    if get("offset") is not None:
        return TarMember(source, None, source, int(get("offset")), int(get("size")))
    return Found(source)


class KCScorer:
    """A Ray Data callable class: one model per actor; a batch of image rows in, KC rows out
    (``pyarrow.Table`` with ``io.rows.ROW_FIELDS`` + the baselines, one row per image and ε).

    Arguments as ``karl complexity`` takes them: ``weights`` (a shipped name or a weights folder
    readable on every node), ``eps`` (one or more ε), ``method`` (None: the model's default),
    ``device`` (``auto``: the actor's GPU when Ray gave it one), ``check`` (``auto``, ``code``,
    ``decoder`` or ``none``: how each KC is checked, ``methods.resolve_check``), ``l1`` (False:
    ``check="none"``, kept for older callers), ``baselines`` (as ``baselines.parse_baselines``), ``max_pixels`` (the
    decompression-bomb guard). Bad arguments raise ``UsageError`` in the constructor.
    """

    def __init__(self, weights: str | os.PathLike | None = None, eps: float | Sequence[float] = 0.05,
                 method: str | None = None, device: str = "auto", l1: bool = True,
                 baselines: bool | str | Iterable[str] = False, max_pixels: int | None = None,
                 check: str = "auto") -> None:
        self.model = load(weights)
        self.eps = validate_eps(eps)
        self.method = check_method(self.model, method)
        check_eps(self.model, self.method, self.eps)
        self.baselines = parse_baselines(baselines)
        self.check = resolve_check(self.model, self.method, check, l1)
        self.device = resolve_device(device)
        prepare_model(self.model, self.device)
        self.model_id = model_id(self.model)
        set_max_pixels(max_pixels)
        self.schema = row_schema(ROW_FIELDS + list(self.baselines))

    def __call__(self, batch: Any) -> pa.Table:
        cols = _columns(batch)
        if "path" not in cols:
            raise UsageError(f"KCScorer needs a 'path' column (and optionally 'bytes', 'source', 'offset', 'size', "
                             f"'error'); the batch has: {', '.join(cols) or 'no columns'}")
        entries = [_entry(cols, i) for i in range(len(cols["path"]))]
        items = ImageDataset(entries, self.model.config.resolution, self.baselines)
        collated = collate_images([items[i] for i in range(len(items))])
        collated["paths"] = [str(p) for p in cols["path"]]   # rows name inputs as given, not where they were read
        m = None
        if collated["images"] is not None:
            m = measure(self.model, collated["images"], self.eps, self.method, check=self.check)
        rows = list(batch_rows(collated, m, self.eps, self.method, self.baselines, self.model.config.max_tokens,
                               self.model_id))
        for r in rows:      # Arrow holds UTF-8 only: a reason may quote a non-UTF-8 name (paths are escaped already)
            r["error"] = safe_text(r["error"]) if r["error"] else r["error"]
        return pa.Table.from_pylist(rows, schema=self.schema)


def score_dataset(ds: "ray.data.Dataset", weights: str | os.PathLike | None = None,
                  eps: float | Sequence[float] = 0.05, method: str | None = None, *, device: str = "auto",
                  l1: bool = True, baselines: bool | str | Iterable[str] = False, batch_size: int = 64,
                  concurrency: int | None = None, num_gpus: float | None = None, num_cpus: float = 1,
                  max_pixels: int | None = None, check: str = "auto") -> "ray.data.Dataset":
    """The rows of ``karl complexity`` for every image row of ``ds`` (see the module docstring for
    the columns it reads), as a lazy Ray dataset: write it (``.write_parquet(dir)``) or iterate it.

    ``concurrency``: actors (one model each; default: every GPU of the cluster when ``num_gpus``,
    else its CPUs / ``num_cpus``). ``num_gpus``: GPUs per actor (None: 1 when ``device`` asks for CUDA
    or is ``auto`` on a cluster with GPUs, else 0). ``batch_size``: images per model run. The
    arguments are checked here, on the driver, before any actor starts (``UsageError``).
    """
    eps = validate_eps(eps)
    model = load(weights)                       # a wrong name, method, ε or check fails here, not in every actor
    check_eps(model, check_method(model, method), eps)
    resolve_check(model, check_method(model, method), check, l1)
    parse_baselines(baselines)
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if not ray.is_initialized():
        ray.init()
    num_gpus, default = _actors(device, num_gpus, num_cpus)
    concurrency = default if concurrency is None else concurrency
    gpus = ray.cluster_resources().get("GPU", 0)
    if concurrency < 1:
        raise UsageError(f"concurrency must be >= 1 actor, got {concurrency} (the cluster has "
                         f"{ray.cluster_resources().get('CPU', 0):g} CPUs and {gpus:g} GPUs)")
    kwargs = {"weights": None if weights is None else os.fspath(weights), "eps": eps, "method": method,
              "device": device, "l1": l1, "baselines": baselines, "max_pixels": max_pixels, "check": check}
    return ds.map_batches(KCScorer, fn_constructor_kwargs=kwargs, batch_size=batch_size, batch_format="pyarrow",
                          compute=ray.data.ActorPoolStrategy(size=concurrency), num_gpus=num_gpus or None,
                          num_cpus=num_cpus)


def _actors(device: str, num_gpus: float | None, num_cpus: float) -> tuple[float, int]:
    """GPUs per actor (None: 1 when the cluster has GPUs and ``device`` is ``auto`` or CUDA, else 0) and
    the actors the cluster holds at that size (every GPU, else every CPU / ``num_cpus``)."""
    res = ray.cluster_resources()
    gpus = res.get("GPU", 0)
    if num_gpus is None:
        num_gpus = 1 if gpus and str(device).split(":")[0] in ("auto", "cuda") else 0
    return num_gpus, max(1, int(gpus // num_gpus) if num_gpus else int(res.get("CPU", 1) // num_cpus))


def entries_dataset(found: Sequence[Found], batch_size: int = 64) -> "ray.data.Dataset":
    """Input entries (``measure.collect_inputs``) as a Ray dataset of ``ENTRY_COLUMNS``, one block per
    ``batch_size`` entries in order, so the actors' batches are the single process's batches. File
    paths travel absolute in ``source`` (an actor may run in another folder or on another node)."""
    cols: dict[str, list] = {k: [] for k in ENTRY_COLUMNS}
    for f in found:
        tar = isinstance(f, TarMember)
        cols["path"].append(escape_path(f.path))
        cols["source"].append(None if f.error else escape_path(os.path.abspath(f.tar if tar else f.path)))
        cols["offset"].append(f.offset if tar else None)
        cols["size"].append(f.size if tar else None)
        cols["error"].append(safe_text(f.error) if f.error else None)
    schema = pa.schema([("path", pa.string()), ("source", pa.string()), ("offset", pa.int64()),
                        ("size", pa.int64()), ("error", pa.string())])
    table = pa.table(cols, schema=schema)
    blocks = [table.slice(i, batch_size) for i in range(0, len(table), batch_size)] or [table]
    return ray.data.from_arrow(blocks)


def start(address: str | None = None) -> None:
    """Connect to the Ray cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine;
    None: that one if it runs, else a new local Ray on this machine's cores; Ray's own rule, which
    also reads ``$RAY_ADDRESS``), quietly, unless Ray is already initialised.
    Ray Data keeps the rows in order and leaves progress to karl."""
    if not ray.is_initialized():
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"cannot start or reach Ray at {address or 'this machine'}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)     # karl shows its own progress


def score(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found],
          weights: str | os.PathLike | None = None, eps_list: float | Iterable[float] = 0.05,
          method: str | None = None, baselines: bool | str | Iterable[str] = False, batch_size: int = 64,
          workers: int | None = None, device: str = "auto", shard: str | Sequence[int] | None = None,
          skip: Iterable[tuple[str, float]] | None = None, progress: Progress | None = None,
          l1: bool = True, address: str | None = None, check: str = "auto") -> Iterator[dict[str, Any]]:
    """``complexity.score`` on Ray (``karl complexity --engine ray``): the same rows, in the same order,
    scored by ``workers`` actors (default: ``score_dataset``'s). The inputs are listed here on the
    driver (``complexity.pending``: the same scan, shard and ``skip`` rules); the actors read them.
    Connects with ``start(address)`` when there is work and Ray is not running yet. Arguments are checked at the call
    (UsageError), as ``score`` does."""
    eps_list = validate_eps(eps_list)
    items, done = pending(paths_or_found, eps_list, shard, skip)
    if not items:
        return iter(())
    start(address)
    if workers is None:     # no more actors than batches: an idle actor still loads a model
        workers = min(_actors(device, None, 1)[1], -(-len(items) // batch_size))
    ds = score_dataset(entries_dataset(items, batch_size), weights, eps_list, method, device=device, l1=l1,
                       check=check, baselines=baselines, batch_size=batch_size, concurrency=workers, max_pixels=max_pixels())
    return _rows(ds, len(items), len(eps_list), done, progress)


def _rows(ds: "ray.data.Dataset", total: int, per_image: int, done: set[tuple[str, float]],
          progress: Progress | None) -> Iterator[dict[str, Any]]:
    if progress:
        progress(0, total)
    n = 0
    for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows = table.to_pylist()
        for r in rows:
            r["path"] = unescape_path(r["path"])    # the name as the single process holds it
            if row_key(r["path"], r["eps"]) not in done:
                yield r
        n += len(rows) // per_image
        if progress:
            progress(n, total)

"""The ``karl`` command: parse, call the library, render. No logic lives here."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from karl_cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SOME_FAILED, KarlError, UsageError
from karl_cli.progress import make_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Image complexity from a single-pass adaptive image tokenizer (KARL).")
console = make_console(stderr=True)   # uncut lines off a terminal
_state = {"debug": False}

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "karl-small"


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.")) -> None:
    _state["debug"] = debug


# --- helpers shared by the commands ----------------------------------------------------------------
def _handle_errors(fn: Callable) -> Callable:
    """User errors become one clear line and their exit code, also under ``CliRunner`` (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):   # typer's own control flow
            raise
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            console.print("[yellow]interrupted[/]: what was done is saved; --resume continues")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:  # noqa: BLE001 - the one place where errors meet the user
            if _state["debug"]:
                raise
            console.print(f"[bold red]error:[/] {escape(_error_text(e))}", highlight=False)
            raise typer.Exit(getattr(e, "exit_code", EXIT_FAILED)) from None

    return wrapper


def _error_text(e: BaseException) -> str:
    """One line for an error: a KarlError's own message; an OSError's reason and file; else the type."""
    if isinstance(e, KarlError):
        return str(e)
    if isinstance(e, OSError):
        where = " ".join(str(f) for f in (e.filename, e.filename2) if f)
        return f"{e.strerror or e}" + (f": {where}" if where else "")
    return (f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback, and please report it)")


def _default_workers(device=None) -> int:
    """Image-decoding processes when --workers is not given.

    CUDA: cores - 1, at most 16 (decoding is the limit there). CPU: a quarter of the cores, at most 4:
    the model needs the cores (decoding a photo costs ~2 ms of CPU, the small model's single pass
    ~15 ms), and a worker that preempts torch's threads slows every parallel op. Measured on 2 cores
    (benchmarks/throughput.py): 0 workers beat 1 by 12-25%, idle or loaded.
    """
    cores = os.cpu_count() or 1
    if str(getattr(device, "type", device)).split(":")[0] == "cuda":
        return max(0, min(16, cores - 1))
    return min(4, cores // 4)


def _load_model(weights: Optional[Path]):
    """The model in ``weights`` (a missing path is a usage error; an unloadable one a WeightsError, exit 3)."""
    from karl_cli.models.pretrained import load_pretrained

    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if weights is None and not path.exists():
        raise UsageError(f"no default model at {path}; pass --weights DIR (a folder with config.json and "
                         "model.safetensors, e.g. one written by `karl train`)")
    if not path.exists():
        raise UsageError(f"weights directory {path} does not exist")
    return load_pretrained(path)


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        speed = task.completed / elapsed if elapsed and task.completed else None
        return Text(f"{speed:,.1f} img/s" if speed else "… img/s", style="cyan")


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[..., None]]:
    """A progress bar on a terminal. Elsewhere (a log file, a background job) rich would print only the
    finished bar, so a plain line marks every tenth of the work instead. ``update(done, total, stage)``."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    plain = not console.is_terminal
    started = time.monotonic()
    shown: dict[str, int] = {}
    with Progress(*columns, console=console, transient=False, disable=plain) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int, stage: str | None = None) -> None:
            name = f"{label} {stage}" if stage else label
            bar.update(task, completed=done, total=total, description=name)
            tenth = done * 10 // total if total else -1
            if plain and tenth > shown.get(name, -1):
                shown[name] = tenth
                console.print(f"{name}: {done}/{total} ({tenth * 10} %), {time.monotonic() - started:.0f} s elapsed",
                              highlight=False)

        yield update


def _include_hidden_option():
    return typer.Option(False, "--include-hidden", help="Also scan hidden files and folders (names starting "
                        "with '.', e.g. .ipynb_checkpoints, macOS ._ files); skipped and counted by default.")


def _max_pixels_option():
    return typer.Option(None, "--max-pixels", min=1, help="Refuse images with more pixels than this "
                        "(default 64000000, a guard against decompression bombs); raise it for huge images.")


def _files_from_option():
    return typer.Option(None, "--files-from", help="Also read the paths listed in this file, one per line ('-' = "
                        "stdin); relative paths are relative to the list's folder. Missing ones become error rows.")


def _paths_argument():
    return typer.Argument(None, help="Image files, folders (searched recursively) and/or .tar shards "
                          "(WebDataset layout; read in place, rows name shard.tar/KEY.EXT).")


def _scan(paths, include_hidden: bool, max_pixels: Optional[int], files_from: Optional[str] = None):
    """The images under ``paths`` and in the list ``files_from`` (collect_inputs), with the pixel limit
    set and what the scan skipped said."""
    from karl_cli.io.images import set_max_pixels
    from karl_cli.scoring.complexity import collect_inputs

    set_max_pixels(max_pixels)
    found = collect_inputs(paths or [], include_hidden=include_hidden, files_from=files_from)
    if found.summary():
        console.print(f"[dim]{escape(found.summary())}[/]")
    return found


def _fmt(v, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def _summary_table(stats: list[dict], method: str) -> Table:
    table = Table(title=f"KC per ε (method: {method})", title_justify="left", header_style="bold")
    for name in ("ε", "ok", "errors", "KC mean", "median", "q10", "q90", "L1 mean", "missed ε"):
        table.add_column(name, justify="right")
    for s in stats:
        table.add_row(f"{s['eps']:g}", str(s["ok"]), f"[red]{s['error']}[/]" if s["error"] else "0",
                      _fmt(s["kc_mean"]), _fmt(s["kc_median"], "g"), _fmt(s["kc_q10"], "g"), _fmt(s["kc_q90"], "g"),
                      _fmt(s["l1_mean"], ".4f"), _fmt(None if s["miss"] is None else 100 * s["miss"], ".0f") +
                      ("%" if s["miss"] is not None else ""))
    return table


# --- commands ------------------------------------------------------------------------------------------
@app.command()
@_handle_errors
def complexity(
    paths: Optional[List[str]] = _paths_argument(),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="Target L1 error; repeat for several (default 0.05)."),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write rows to this CSV ('-' = stdout)."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write rows as JSON records to this file."),
    parquet_out: Optional[str] = typer.Option(None, "--parquet", help="Write rows to this Parquet file (streamed "
                                              "in row groups)."),
    files_from: Optional[str] = _files_from_option(),
    baselines: bool = typer.Option(False, "--baselines", help="Add JPEG-75 and PNG bytes per pixel."),
    method: Optional[str] = typer.Option(None, "--method", help="single (KARL, 1 pass), search (ALIT-style "
                                         "re-encoding) or prefix (One-D-Piece-style prefix decoding); default: "
                                         "single, or search for models without a halting head (ALIT)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model folder (default: weights/karl-small)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per model run."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Image-decoding processes (default: cores/4 "
                                          "up to 4 on CPU; cores-1 up to 16 on CUDA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: score only files i % N == K of the sorted list."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in the output and skip them."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the KC histogram per ε to this PNG."),
    l1: bool = typer.Option(True, "--l1/--no-l1", help="Check each KC by decoding (the l1 column). --no-l1: KC "
                            "from the encoder pass alone, ~3x faster on CPU (method single only)."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Estimate the complexity (KC at ε) of every image; one row per (image, ε)."""
    from karl_cli.scoring.complexity import (BASELINE_FIELDS, METHODS, ROW_FIELDS, RowWriter, Summary, check_method,
                             checkpoint_seconds, default_method, parse_shard, score, validate_eps)
    from karl_cli.runtime import resolve_device

    eps_v = validate_eps(eps or [0.05])
    if method is not None and method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    shard_t = parse_shard(shard)
    dev = resolve_device(device)
    outs_given = [p for p in (csv_out, json_out, parquet_out) if p is not None]
    if not outs_given:
        raise UsageError("say where the rows go: --csv FILE, --json FILE ('-' for stdout) and/or --parquet FILE")
    if parquet_out == "-":
        raise UsageError("Parquet cannot stream to stdout; name a file for --parquet")
    if resume and outs_given[0] == "-":
        raise UsageError("--resume needs an output file, not stdout")
    found = _scan(paths, include_hidden, max_pixels, files_from)
    model = _load_model(weights)
    method = check_method(model, method or default_method(model))
    if not l1 and method != "single":
        raise UsageError(f"--no-l1 works only with --method single ({method} needs the decoder)")
    fields = ROW_FIELDS + (BASELINE_FIELDS if baselines else [])
    summary = Summary()
    plot_rows: list[dict] = []
    with contextlib.ExitStack() as stack:
        every = checkpoint_seconds()   # a hard kill loses at most this many seconds of rows
        # --resume reads back the first output given (csv, json, parquet); the others are rewritten from it.
        primary = stack.enter_context(RowWriter(outs_given[0], fields, resume=resume, checkpoint_s=every))
        sinks = [primary]
        for other in outs_given[1:]:
            sinks.append(stack.enter_context(RowWriter(other, fields, checkpoint_s=every)))
            for row in primary.existing:
                sinks[-1].write(row)
        for row in primary.existing:
            summary.add(row)
            if plot:
                plot_rows.append({k: row.get(k) for k in ("eps", "kc", "status", "max_tokens")})
        if primary.existing:
            console.print(f"resuming: {len(primary.existing)} rows already in {escape(outs_given[0])} are kept")
        with _progress("scoring") as update:
            rows = score(found, model, eps_v, method=method, baselines=baselines, batch_size=batch_size,
                         workers=_default_workers(dev) if workers is None else workers, device=dev, shard=shard_t,
                         skip=primary.done, progress=update, l1=l1)
            for row in rows:
                for sink in sinks:
                    sink.write(row)
                summary.add(row)
                if plot:
                    plot_rows.append({k: row.get(k) for k in ("eps", "kc", "status", "max_tokens")})
    console.print(_summary_table(summary.table(), method))
    unreachable = [f"{st['eps']:g}" for st in summary.table() if st["miss"] is not None and st["miss"] > 0.5]
    if unreachable:
        # Most images missing ε means the model cannot reconstruct that well: KC then sits at T_max.
        console.print(f"[yellow]note:[/] most images miss ε = {', '.join(unreachable)} even with the kept tokens; "
                      "this model cannot reconstruct that closely, so KC saturates there. A larger ε (or a "
                      "better model) gives KC that separates images.")
    outs = " and ".join(p for p in outs_given if p != "-")
    if outs:
        kept = len(primary.existing)
        console.print(f"wrote {primary.count - kept} new rows to {escape(outs)}" + (f" ({kept} kept from before)" if kept else ""))
    if plot:
        from karl_cli.analysis.plots import kc_histogram
        kc_histogram(plot_rows, plot)
        console.print(f"KC histogram: {escape(str(plot))}")
    if summary.errors:
        console.print(f"[yellow]{summary.error_paths} unreadable inputs[/] ({summary.errors} error rows; "
                      "see the error column)")
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
@_handle_errors
def merge(
    out: str = typer.Argument(..., help="The merged file to write (.csv, .json or .parquet)."),
    inputs: List[Path] = typer.Argument(..., help="Shard outputs (from --shard K/N runs): CSV, JSON or Parquet, mixed."),
) -> None:
    """Join shard outputs into one, sorted by (path, ε); duplicated (path, ε) rows are dropped."""
    from karl_cli.scoring.complexity import merge_csv

    counts = merge_csv(out, inputs)
    console.print(f"merged {counts['files']} files: {counts['rows']} rows "
                  f"({counts['duplicates']} duplicates dropped) -> {out}")


@app.command()
@_handle_errors
def encode(
    paths: Optional[List[str]] = _paths_argument(),
    eps: float = typer.Option(0.05, "--eps", help="Target L1 error the tokens are chosen for."),
    out: Path = typer.Option(..., "--out", help="Folder for token files + index.csv."),
    recon: Optional[Path] = typer.Option(None, "--recon", help="Also save reconstructions as PNG here."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model folder (default: weights/karl-small)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per model run."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Image-decoding processes."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: encode only files i % N == K of the sorted list."),
    files_from: Optional[str] = _files_from_option(),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Store every image's kept tokens (safetensors shards + index.csv)."""
    from karl_cli.scoring.complexity import parse_shard, validate_eps
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.token_store import encode_folder

    eps_v = validate_eps(eps)[0]
    shard_t = parse_shard(shard)
    dev = resolve_device(device)
    found = _scan(paths, include_hidden, max_pixels, files_from)
    model = _load_model(weights)
    with _progress("encoding") as update:
        res = encode_folder(found, model, eps_v, out, recon_dir=recon, batch_size=batch_size,
                            workers=_default_workers(dev) if workers is None else workers, device=dev, shard=shard_t,
                            progress=update)
    console.print(f"encoded {res.ok} images at ε={eps_v:g} into {escape(str(out))} ({len(res.shards)} token files, "
                  f"index {res.index.name}, model {res.model_id})" + (f"; {res.recon} PNGs in {escape(str(recon))}" if recon else ""))
    if res.error:
        console.print(f"[yellow]{res.error} error rows[/] (unreadable inputs; see {escape(str(res.index))})")
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
@_handle_errors
def decode(
    token_dir: Path = typer.Argument(..., help="A folder written by `karl encode`."),
    out: Path = typer.Option(..., "--out", help="Folder for the reconstructed PNGs."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="The model that encoded the tokens."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Rebuild images from stored tokens (bit-identical to `karl encode --recon` on the same device)."""
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.token_store import decode_folder

    dev = resolve_device(device)
    if not token_dir.is_dir():
        raise UsageError(f"no such folder: {token_dir}")
    model = _load_model(weights)
    with _progress("decoding") as update:
        res = decode_folder(token_dir, model, out, device=dev, progress=update)
    console.print(f"decoded {res.images} images into {escape(str(out))}")


@app.command()
@_handle_errors
def show(
    image: Path = typer.Argument(..., help="One image."),
    out: Path = typer.Option(..., "--out", help="The figure to write (PNG)."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values to show (default 0.03, 0.05, 0.09)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Model folder (default: weights/karl-small)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Draw one image, its reconstructions at growing budgets, p_halt per token and KC per ε."""
    from karl_cli.scoring.complexity import validate_eps
    from karl_cli.analysis.plots import DEFAULT_SHOW_EPS, show_figure
    from karl_cli.io.images import set_max_pixels
    from karl_cli.runtime import resolve_device

    set_max_pixels(max_pixels)
    eps_v = validate_eps(eps or DEFAULT_SHOW_EPS)
    dev = resolve_device(device)
    if not image.is_file():
        raise UsageError(f"no such file: {image}")
    model = _load_model(weights)
    info = show_figure(model, image, out, eps_v, device=dev)
    kcs = ", ".join(f"ε={e['eps']:g}: KC {e['kc']}" for e in info["eps"])
    console.print(f"{escape(image.name)}: {kcs} -> {escape(str(out))}")


def main() -> None:
    """Console-script entry point: user errors become one clear line and an exit code."""
    debug = "--debug" in sys.argv
    try:
        app()
    except KarlError as e:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(_error_text(e))}", highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as e:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(_error_text(e))}", highlight=False)
        sys.exit(EXIT_FAILED)


@app.command()
@_handle_errors
def train(
    data: List[Path] = typer.Argument(..., help="Image folders (recursive) to train on."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: weights, checkpoint.pt, metrics.jsonl."),
    preset_name: str = typer.Option("small", "--preset", help="Model size preset: tiny or small."),
    arch: str = typer.Option("karl", "--arch", help="Architecture: karl or alit."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="T_max (default: the preset's)."),
    token_step: Optional[int] = typer.Option(None, "--token-step",
                                             help="Budgets are multiples of this; ALIT adds this many tokens "
                                                  "per iteration (default: the preset's)."),
    code: Optional[str] = typer.Option(None, "--code", help="KARL's tokens: wavelet (a Haar code in an adaptive "
                                       "order, the CPU default) or learned (the papers' tokenizer); ALIT: dct."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default: from --epochs)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Images per step and process."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    warmup: int = typer.Option(200, "--warmup", help="Warm-up steps."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", help="Steps between checkpoints."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Keep decoded images in memory."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from these weights (fine-tune)."),
) -> None:
    """Train a tokenizer with two-phase loss-conditioned training."""
    from karl_cli.models.config import preset
    from karl_cli.training.trainer import TrainConfig
    from karl_cli.training.trainer import train as run_training
    from karl_cli.progress import training_progress

    sizes = {k: v for k, v in (("max_tokens", max_tokens), ("token_step", token_step), ("code", code))
             if v is not None}
    if resume and sizes:
        raise UsageError("--max-tokens, --token-step and --code cannot change a run being resumed")
    model_config = None if resume else _checked(lambda: preset(preset_name, arch=arch, **sizes))
    tc = TrainConfig(steps=steps, epochs=epochs, batch_size=batch_size, lr=lr, warmup_steps=warmup, workers=workers,
                     seed=seed, checkpoint_every=checkpoint_every, cache=cache)
    with training_progress(console) as on_step:
        run_training([str(d) for d in data], out, model_config, tc, device=device, resume=resume,
                     on_step=on_step, on_log=lambda s: console.print(f"[dim]{escape(s)}[/]"), init_from=init_from)
    console.print(f"[green]done:[/] weights in {escape(str(out))}")


@app.command()
@_handle_errors
def correlate(
    root: Optional[Path] = typer.Argument(None, metavar="[SAVOIAS_ROOT]",
                                          help="Savoias folder (Images/<Category>/, 'Ground truth/xlsx/')."),
    ratings: Optional[Path] = typer.Option(None, "--ratings", help="CSV of any rated set: path, rating[, category]; "
                                           "relative paths resolve against the CSV's folder."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="Target error ε (repeat for several; default "
                                              "0.03, the ε that ranks most like people on Savoias)."),
    method: Optional[str] = typer.Option(None, "--method", help="single (one pass: KC, soft KC), search or prefix; "
                                         "default: single, or search for models without a halting head (ALIT)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CI of ρ (0: none)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results table (CSV)."),
    per_image: Optional[Path] = typer.Option(None, "--per-image", help="Write per-image scores (CSV)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write figures (PNG) into this folder."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="Model folder (default: weights/karl-small)."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per model run."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Image-decoding processes (default: cores/4 up to 4 on CPU; "
                                          "cores-1 up to 16 on CUDA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Score cache folder (default ~/.cache/karl)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the score cache."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Correlate KC (and JPEG/PNG bytes per pixel) with human complexity ratings."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from karl_cli.analysis.correlate import CORRELATE_EPS, rich_table
    from karl_cli.analysis.correlate import correlate as run_correlate
    from karl_cli.runtime import resolve_device
    from karl_cli.io.savoias import load_ratings

    from karl_cli.scoring.complexity import check_method, default_method

    from karl_cli.io.images import set_max_pixels

    set_max_pixels(max_pixels)
    rated = load_ratings(root, ratings, include_hidden)   # a bad root or CSV fails before the model is loaded
    dev = resolve_device(device)
    model = _load_model(weights)
    method = check_method(model, method or default_method(model))
    bar = Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    task = None

    def on_progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task("score", total=total)
        bar.update(task, completed=done, total=total)

    with bar:
        result = run_correlate(rated, model=model, eps=eps or [CORRELATE_EPS], method=method, bootstrap=bootstrap,
                               seed=seed, batch_size=batch_size,
                               workers=_default_workers(dev) if workers is None else workers, device=dev,
                               cache=False if no_cache else cache, progress=on_progress)
    result.save(out, per_image)
    make_console().print(rich_table(result))
    console.print(f"[dim]{escape(result.rated.summary())}[/]")
    for note in result.rated.notes + result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"[dim]scores: {result.computed} computed, {result.cached} from cache"
                  + (f" ({escape(result.cache_path)})" if result.cache_path else "") + "[/]")
    if plot is not None:
        from karl_cli.analysis.correlate_plots import write_plots
        files = write_plots(result, plot)
        console.print(f"[green]wrote[/] {len(files)} figures to {escape(str(plot))}")
    for path, what in ((out, "results"), (per_image, "per-image scores")):
        if path is not None:
            console.print(f"[green]wrote[/] {what} to {escape(str(path))}")
    failed = result.failed
    if len(failed):
        console.print(f"[yellow]{failed['path'].nunique()} images could not be scored[/] "
                      f"(e.g. {escape(str(failed['path'].iloc[0]))}: {escape(str(failed['error'].iloc[0]))})")
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command()
@_handle_errors
def calibrate(
    data: List[Path] = typer.Argument(..., help="Image folders to calibrate on (e.g. the training data)."),
    weights: Path = typer.Option(..., "--weights", "-w", help="Trained weights to calibrate."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the calibrated weights."),
    samples: int = typer.Option(2048, "--samples", help="Image crops to compute oracle budgets on."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps for the halting head."),
    synthetic: float = typer.Option(0.125, "--synthetic",
                                    help="Share of samples that are procedural images (flat colours to noise)."),
    max_undercut: float = typer.Option(0.01, "--max-undercut",
                                       help="Pick the smallest halting threshold (0.75-0.95) at which at most this "
                                            "share of held-out crops keep fewer tokens than the oracle (1: keep 0.75)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Retrain the halting head on oracle budgets (smallest prefix meeting each ε) and pick its
    threshold; tokens unchanged."""
    from karl_cli.training.calibration import calibrate_halting
    from karl_cli.runtime import prepare_model

    if samples < 10 or steps < 1:
        raise UsageError("--samples must be >= 10 and --steps >= 1")
    if not 0.0 <= synthetic < 1.0:
        raise UsageError(f"--synthetic must be a share in [0, 1), got {synthetic}")
    if not 0.0 <= max_undercut <= 1.0:
        raise UsageError(f"--max-undercut must be a share in [0, 1], got {max_undercut}")
    model = prepare_model(_load_model(weights), device)
    if not getattr(model, "single_pass", False):
        raise UsageError("only KARL weights have a halting head to calibrate")
    with _progress("calibrate") as update:
        report = calibrate_halting(model, [str(d) for d in data], samples=samples, steps=steps, seed=seed,
                                   synthetic=synthetic, max_undercut=max_undercut, progress=lambda stage, done, total: update(done, total, stage))
    card_path = Path(weights) / "model_card.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "# karl tokenizer\n"
    card += (f"\n## Halting calibration\n\n`karl calibrate` on {samples} samples ({synthetic:.0%} procedural "
             f"images, the rest crops of {', '.join(Path(d).name for d in data)}), {steps} steps, seed {seed}. Held-out |KC - oracle KC|: "
             f"{report.error_before:.1f} -> {report.error_after:.1f} tokens; KC / oracle KC: "
             f"{report.ratio_before:.2f} -> {report.ratio_after:.2f}; halting threshold {report.threshold:g} "
             f"(held-out pairs below the oracle: {report.undercut:.1%}).\n")
    model.save_pretrained(str(out), card=card)
    console.print(f"held-out |KC - oracle|: {report.error_before:.1f} -> {report.error_after:.1f} tokens; "
                  f"KC/oracle {report.ratio_before:.2f} -> {report.ratio_after:.2f}; halting threshold "
                  f"{report.threshold:g} ({report.undercut:.1%} of held-out crops below the oracle)")
    console.print(f"[green]done:[/] calibrated weights in {escape(str(out))}")


def _checked(make):
    """Config errors are usage errors."""
    from karl_cli.errors import UsageError

    try:
        return make()
    except ValueError as e:
        raise UsageError(str(e)) from None


@app.command()
@_handle_errors
def compare(
    paths: List[Path] = typer.Argument(..., help="Images or folders (recursive)."),
    weights: List[Path] = typer.Option(..., "--weights", "-w", help="Weights folder (repeat: KARL, ALIT, ...)."),
    eps: List[float] = typer.Option([0.03, 0.05, 0.09], "--eps", help="Target error ε (repeat for several)."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV."),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """KARL single pass vs. searches (KARL, ALIT) side by side: tokens, misses, L1/PSNR/SSIM, runs, time."""
    from karl_cli.io.atomic import atomic_write_text
    from karl_cli.io.names import safe_frame
    from karl_cli.scoring.compare import compare as run_compare
    from karl_cli.scoring.compare import load_models, render_table
    from karl_cli.errors import EXIT_SOME_FAILED

    found = _scan(paths, include_hidden, max_pixels)
    models = load_models(weights)
    with console.status("comparing") as status:
        df = run_compare(found, models, eps, batch_size=batch_size, device=device,
                         on_progress=lambda what: status.update(f"comparing: {what}"))
    make_console().print(render_table(df))
    if csv is not None:
        atomic_write_text(csv, safe_frame(df).to_csv(index=False))
        console.print(f"[green]wrote[/] {escape(str(csv))}")
    skipped = df.attrs.get("skipped", [])
    if skipped:
        console.print(f"[yellow]{len(skipped)} images could not be read[/] (e.g. {escape(str(skipped[0][0]))}: {escape(str(skipped[0][1]))})")
        raise typer.Exit(EXIT_SOME_FAILED)


if __name__ == "__main__":
    main()

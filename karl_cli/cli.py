"""The ``karl`` command: parse, call the library, render. No logic lives here."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional


def _interrupted_while_starting(*_) -> None:
    sys.stderr.write("interrupted\n")
    sys.exit(130)   # EXIT_INTERRUPTED; SystemExit prints no traceback


# Ctrl-C while the imports below load is a quiet exit 130, not a traceback; restored after them.
_SIGINT_BEFORE = signal.getsignal(signal.SIGINT)
if _SIGINT_BEFORE is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_while_starting)

import typer  # noqa: E402
from rich.markup import escape
from rich.table import Table

from karl_cli import __version__  # noqa: E402
from karl_cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SOME_FAILED, KarlError, UsageError  # noqa: E402
from karl_cli.progress import make_console  # noqa: E402

if _SIGINT_BEFORE is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _FlagsWithoutType:
    """Help lists on/off flags (``--resume``, ``--l1/--no-l1``, ``--help``) without a ``<bool>`` type,
    which would suggest they take a value."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""
        return params


BASELINES_HELP = ("Add classic complexity measures of the same pixels: bare --baselines = jpeg,png; 'all'; or a "
                  "comma list of jpeg, png, webp, gif, edge_density, spatial_information, subband_entropy, "
                  "feature_congestion, fh_regions, colourfulness, luminance_entropy.")


def bare_baselines(args: List[str]) -> List[str]:
    """``--baselines`` with no list after it (the end, another option, or an existing path next) becomes
    ``--baselines=jpeg,png``, its meaning before it took a list; anything else is read as the list."""
    out = list(args)
    for i, a in enumerate(out):
        nxt = out[i + 1] if i + 1 < len(out) else None
        if a == "--baselines" and (nxt is None or nxt.startswith("-") or os.path.exists(nxt)):
            out[i] = "--baselines=jpeg,png"
    return out


class _Group(_FlagsWithoutType, typer.core.TyperGroup):
    """The command group; also lets ``--baselines`` stand alone (Typer has no optional-value options)."""

    def parse_args(self, ctx, args: List[str]) -> List[str]:
        return super().parse_args(ctx, bare_baselines(args))


class _Command(_FlagsWithoutType, typer.core.TyperCommand):
    pass


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Image complexity from a single-pass adaptive image tokenizer (KARL).")
console = make_console(stderr=True)   # uncut lines off a terminal
_state = {"debug": False}

WEIGHTS_HELP = "Model: a shipped name (karl-small, alit-small) or a weights folder (default: karl-small)."


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"karl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
          version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    _state["debug"] = debug


# --- helpers shared by the commands ----------------------------------------------------------------
def _handle_errors(fn: Callable) -> Callable:
    """User errors become one clear line and their exit code, also under ``CliRunner`` (no traceback)."""

    # Only commands that can resume have saved anything worth continuing from.
    resumable = "resume" in inspect.signature(fn).parameters

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):   # typer's own control flow
            raise
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            console.print("[yellow]interrupted[/]" + (": what was done is saved; --resume continues"
                                                      if resumable else ""))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as e:  # noqa: BLE001 - the one place where errors meet the user
            if _state["debug"]:
                raise
            if getattr(e, "exit_code", None) == EXIT_INTERRUPTED:   # e.g. training's "interrupted at step N"
                console.print(f"[yellow]{escape(_error_text(e))}[/]", highlight=False)
                raise typer.Exit(EXIT_INTERRUPTED) from None
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


def _load_model(weights: Optional[str]):
    """The model ``--weights`` names (``pretrained.load``): a shipped name or a folder; None: the default."""
    from karl_cli.models.pretrained import load

    return load(weights)


def _progress(label: str):
    """The shared progress display (``progress.progress``) on the CLI's console."""
    from karl_cli.progress import progress

    return progress(console, label)


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
@app.command(cls=_Command)
@_handle_errors
def complexity(
    paths: Optional[List[str]] = _paths_argument(),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="Target L1 error; repeat for several (default 0.05)."),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write rows to this CSV ('-' = stdout). Without "
                                          "--csv and --json only the summary table is printed."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write rows as JSON records to this file."),
    parquet_out: Optional[str] = typer.Option(None, "--parquet", help="Write rows to this Parquet file (streamed "
                                              "in row groups)."),
    files_from: Optional[str] = _files_from_option(),
    baselines: Optional[str] = typer.Option(None, "--baselines", metavar="[LIST]", help=BASELINES_HELP),
    method: Optional[str] = typer.Option(None, "--method", help="single (KARL, 1 pass), search (ALIT-style "
                                         "re-encoding) or prefix (One-D-Piece-style prefix decoding); default: "
                                         "single, or search for models without a halting head (ALIT)."),
    weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per model run."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Image-decoding processes (default: cores/4 "
                                          "up to 4 on CPU; cores-1 up to 16 on CUDA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: score only files i % N == K of the sorted list."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in the output and skip them; "
                                "refused if they came from another model, --method or l1 setting."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the KC histogram per ε to this PNG."),
    l1: bool = typer.Option(True, "--l1/--no-l1", help="Check each KC by decoding (the l1 column). --no-l1: KC "
                            "from the encoder pass alone, ~3x faster on CPU (method single only)."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Estimate the complexity (KC at ε) of every image; one row per (image, ε)."""
    from karl_cli.models.pretrained import model_id
    from karl_cli.scoring.baselines import parse_baselines
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.complexity import (ROW_FIELDS, RowWriter, Summary, checkpoint_seconds, parse_shard,
                                             resume_guard, score, validate_eps)
    from karl_cli.scoring.methods import check_method, method_name

    eps_v = validate_eps(eps or [0.05])
    chosen = parse_baselines(baselines)
    if method is not None:
        method_name(method)     # a bad name fails before the model is loaded
    shard_t = parse_shard(shard)
    dev = resolve_device(device)
    outs_given = [p for p in (csv_out, json_out, parquet_out) if p is not None]
    if parquet_out == "-":
        raise UsageError("Parquet cannot stream to stdout; name a file for --parquet")
    if resume and not outs_given:
        raise UsageError("--resume needs an output file (--csv FILE, --json FILE or --parquet FILE)")
    if resume and outs_given[0] == "-":
        raise UsageError("--resume needs an output file, not stdout")
    found = _scan(paths, include_hidden, max_pixels, files_from)
    model = _load_model(weights)
    method = check_method(model, method)
    if not l1 and method != "single":
        raise UsageError(f"--no-l1 works only with --method single ({method} needs the decoder)")
    fields = ROW_FIELDS + list(chosen)
    summary = Summary()
    plot_rows: list[dict] = []
    existing: list[dict] = []
    with contextlib.ExitStack() as stack:
        every = checkpoint_seconds()   # a hard kill loses at most this many seconds of rows
        sinks = []
        if outs_given:       # without any, the summary table is the output
            # --resume reads back the first output given (csv, json, parquet); the others are rewritten from it.
            guard = resume_guard(model_id(model), method, l1)
            primary = stack.enter_context(RowWriter(outs_given[0], fields, resume=resume, checkpoint_s=every,
                                                    validate=guard))
            sinks.append(primary)
            existing = primary.existing
            for other in outs_given[1:]:
                sinks.append(stack.enter_context(RowWriter(other, fields, checkpoint_s=every)))
                for row in existing:
                    sinks[-1].write(row)
        for row in existing:
            summary.add(row)
            if plot:
                plot_rows.append({k: row.get(k) for k in ("eps", "kc", "status", "max_tokens")})
        if existing:
            console.print(f"resuming: {len(existing)} rows already in {escape(outs_given[0])} are kept")
        with _progress("scoring") as update:
            rows = score(found, model, eps_v, method=method, baselines=chosen, batch_size=batch_size,
                         workers=_default_workers(dev) if workers is None else workers, device=dev, shard=shard_t,
                         skip=sinks[0].done if sinks else None, progress=update, l1=l1)
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
        kept = len(existing)
        console.print(f"wrote {sinks[0].count - kept} new rows to {escape(outs)}" + (f" ({kept} kept from before)" if kept else ""))
    if plot:
        from karl_cli.analysis.plots import kc_histogram
        kc_histogram(plot_rows, plot)
        console.print(f"KC histogram: {escape(str(plot))}")
    if summary.errors:
        console.print(f"[yellow]{summary.error_paths} unreadable inputs[/] ({summary.errors} error rows; "
                      "see the error column)")
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command(cls=_Command)
@_handle_errors
def merge(
    out: str = typer.Argument(..., help="The merged file to write (.csv, .json or .parquet)."),
    inputs: List[Path] = typer.Argument(..., help="Shard outputs (from --shard K/N runs): CSV, JSON or Parquet, mixed."),
    prefer: Optional[str] = typer.Option(None, "--prefer", help="first or last: which input wins where rows of "
                                         "the same (path, ε) disagree (default: refuse and name them)."),
    mixed_models: bool = typer.Option(False, "--mixed-models", help="Merge rows of different models (model_id)."),
) -> None:
    """Join shard outputs (CSV, JSON or Parquet) into one, sorted by (path, ε). Identical duplicates
    merge quietly, an ok row replaces an error row; rows that disagree, or rows of different models,
    are refused."""
    from karl_cli.scoring.complexity import merge_csv

    counts = merge_csv(out, inputs, prefer=prefer, mixed_models=mixed_models)
    notes = [f"{counts['duplicates']} identical duplicates dropped"]
    if counts["errors_replaced"]:
        notes.append(f"{counts['errors_replaced']} error rows replaced by ok rows")
    if counts["conflicts"]:
        notes.append(f"{counts['conflicts']} disagreeing rows taken from the {prefer} input")
    console.print(f"merged {counts['files']} files: {counts['rows']} rows ({'; '.join(notes)}) -> {escape(out)}")


@app.command(cls=_Command)
@_handle_errors
def encode(
    paths: Optional[List[str]] = _paths_argument(),
    eps: float = typer.Option(0.05, "--eps", help="Target L1 error the tokens are chosen for."),
    out: Path = typer.Option(..., "--out", help="Folder for token files + index.csv."),
    recon: Optional[Path] = typer.Option(None, "--recon", help="Also save reconstructions as PNG here."),
    weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
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


@app.command(cls=_Command)
@_handle_errors
def decode(
    token_dir: Path = typer.Argument(..., help="A folder written by `karl encode`."),
    out: Path = typer.Option(..., "--out", help="Folder for the reconstructed PNGs."),
    weights: Optional[str] = typer.Option(None, "--weights", help="The model that encoded the tokens: a shipped "
                                          "name (karl-small, alit-small) or a weights folder (default: karl-small)."),
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


@app.command(cls=_Command)
@_handle_errors
def show(
    image: Path = typer.Argument(..., help="One image."),
    out: Path = typer.Option(..., "--out", help="The figure to write (PNG)."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values to show (default 0.03, 0.05, 0.09)."),
    weights: Optional[str] = typer.Option(None, "--weights", help=WEIGHTS_HELP),
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


def _exit_interrupted() -> None:
    """Exit 130 after a handled Ctrl-C. Outputs are closed by now; ``os._exit`` because CPython turns
    a normal exit into death by SIGINT (-2) when the interrupt landed inside an import (measured: a
    Ctrl-C one second after start)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


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
        _exit_interrupted()
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:
            _exit_interrupted()
        # The work is done and its outputs closed: a Ctrl-C during interpreter teardown must not turn
        # this exit code into death by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
    except OSError as e:
        if debug:
            raise
        console.print(f"[bold red]error:[/] {escape(_error_text(e))}", highlight=False)
        sys.exit(EXIT_FAILED)


@app.command(cls=_Command)
@_handle_errors
def train(
    data: List[Path] = typer.Argument(..., help="Image folders (recursive) to train on."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: weights, checkpoint.pt, metrics.jsonl."),
    preset_name: Optional[str] = typer.Option(None, "--preset", help="Model preset (default small): small (the "
                                              "shipped wavelet model, 64 px, 384 tokens, 2.0 M parameters, its "
                                              "halting encoder distilled), small-teacher (the same with the encoder "
                                              "it was trained with, 2.8 M: train this, then `karl distil`), tiny "
                                              "(32 px, 16 tokens: tests and trying the pipeline), learned-64 "
                                              "(learned tokens, CPU-sized), learned-128 (the GPU recipe) or "
                                              "learned-tiny."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture: karl (default) or alit."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="T_max (default: the preset's)."),
    token_step: Optional[int] = typer.Option(None, "--token-step",
                                             help="Budgets are multiples of this; ALIT adds this many tokens "
                                                  "per iteration (default: the preset's)."),
    code: Optional[str] = typer.Option(None, "--code", help="KARL's tokens: wavelet (a Haar code in an adaptive "
                                       "order, the CPU default) or learned (the papers' tokenizer); ALIT: dct."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps; the cosine schedule is defined "
                                        "over them (default: from --epochs)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes",
                                                help="Wall-clock budget: stop cleanly after the step that passes it, "
                                                     "save weights and checkpoint (--resume continues). The schedule "
                                                     "stays the one over --steps, so the learning rate is not annealed."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per step and process "
                                             "(default 64; the folders need at least this many images)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (default 1e-3)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps (default 200, at most a fifth of "
                                         "the run; a warning when longer than the run)."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    halt_warmup: Optional[int] = typer.Option(None, "--halt-warmup", help="Steps before the halting loss's "
                                              "gradient reaches the encoder (default 0)."),
    label_decodes: Optional[int] = typer.Option(None, "--label-decodes", help="Budgets phase 1 decodes per step "
                                                "to find each image's needed budget (default 4)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed (default 0)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints "
                                                   "(default 200)."),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="Keep decoded images in memory "
                                         "(default: cache)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the transformer blocks and conv base "
                                  "(a minute of compiling first; for long CUDA runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped "
                                "(only --steps, --epochs, --max-minutes, --workers, --compile and --device may "
                                "change)."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from these weights (fine-tune): a "
                                            "shipped name (karl-small, alit-small) or a weights folder."),
) -> None:
    """Train a tokenizer with two-phase loss-conditioned training.

    Presets: tiny (32 px, T_max 16, 0.3 M parameters; for tests), small-teacher (the shipped model as
    trained: 64 px, T_max 384 tokens of a Haar wavelet code, 2.8 M parameters, about 7 s per step of
    32 crops on 2 CPU cores) and small (the shipped model, its halting encoder distilled: 2.0 M).
    """
    from karl_cli.models.config import preset
    from karl_cli.training.trainer import TrainConfig, resume_conflicts
    from karl_cli.training.trainer import train as run_training
    from karl_cli.progress import training_progress

    sizes = {k: v for k, v in (("arch", arch), ("max_tokens", max_tokens), ("token_step", token_step),
                               ("code", code)) if v is not None}
    recipe = {k: v for k, v in (("batch_size", batch_size), ("lr", lr), ("warmup_steps", warmup), ("seed", seed),
                                ("checkpoint_every", checkpoint_every), ("cache", cache),
                                ("halt_warmup", halt_warmup), ("label_decodes", label_decodes)) if v is not None}
    if resume:
        if init_from is not None:
            raise UsageError("--init-from starts a new run; it cannot be combined with --resume")
        conflicts = resume_conflicts(out, preset_name, sizes, recipe)
        if conflicts:
            raise UsageError(f"cannot resume {out}: " + "; ".join(conflicts) + ". A resumed run keeps its model "
                             "and recipe (only --steps, --epochs, --workers and --device may change); drop these "
                             "flags or start a new run with another --out")
    model_config = None if resume else _checked(lambda: preset(preset_name or "small", **sizes))
    defaults = TrainConfig()
    tc = TrainConfig(steps=steps, epochs=epochs, workers=workers, max_minutes=max_minutes, compile=compile_,
                     **{k: recipe.get(k, getattr(defaults, k)) for k in ("batch_size", "lr", "warmup_steps", "seed",
                                                                         "checkpoint_every", "cache", "halt_warmup",
                                                                         "label_decodes")})

    def on_log(line: str) -> None:
        style = "yellow" if line.startswith("warning:") else "dim"
        console.print(f"[{style}]{escape(line)}[/]")

    with training_progress(console) as on_step:
        result = run_training([str(d) for d in data], out, model_config, tc, device=device, resume=resume,
                              on_step=on_step, on_log=on_log, init_from=init_from)
    if result.stopped:
        console.print(f"[yellow]stopped by the {escape(result.stopped)}[/] at step {result.step} of {result.total}: "
                      f"weights in {escape(str(out))}; continue with --resume")
    else:
        console.print(f"[green]done:[/] weights in {escape(str(out))}")


@app.command(cls=_Command)
@_handle_errors
def correlate(
    root: Optional[Path] = typer.Argument(None, metavar="SAVOIAS_ROOT",
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
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help=WEIGHTS_HELP),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1, help="Images per model run."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Image-decoding processes (default: cores/4 up to 4 on CPU; "
                                          "cores-1 up to 16 on CUDA)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Score cache folder (default ~/.cache/karl)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the score cache."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
    baselines: Optional[str] = typer.Option(None, "--baselines", metavar="[LIST]",
                                            help=BASELINES_HELP.replace("Add", "Compare with") + " Default: jpeg,png."),
) -> None:
    """Correlate KC and classic complexity measures with human complexity ratings; KC − the best
    baseline of each category with its paired bootstrap CI."""
    from karl_cli.analysis.correlate import CORRELATE_EPS, rich_table
    from karl_cli.analysis.correlate import correlate as run_correlate
    from karl_cli.io.savoias import load_ratings
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.methods import check_method

    from karl_cli.io.images import set_max_pixels
    from karl_cli.scoring.baselines import parse_baselines

    chosen = parse_baselines(baselines or True)   # an unknown name fails before anything is loaded
    set_max_pixels(max_pixels)
    rated = load_ratings(root, ratings, include_hidden)   # a bad root or CSV fails before the model is loaded
    dev = resolve_device(device)
    model = _load_model(weights)
    method = check_method(model, method)
    with _progress("scoring") as update:
        result = run_correlate(rated, model=model, eps=eps or [CORRELATE_EPS], method=method, bootstrap=bootstrap,
                               seed=seed, batch_size=batch_size,
                               workers=_default_workers(dev) if workers is None else workers, device=dev,
                               cache=False if no_cache else cache, progress=update, baselines=chosen)
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


@app.command(cls=_Command)
@_handle_errors
def calibrate(
    data: List[Path] = typer.Argument(..., help="Image folders to calibrate on (e.g. the training data)."),
    weights: str = typer.Option(..., "--weights", "-w", help="Weights to calibrate: a folder (e.g. from `karl "
                                "train`) or a shipped name (karl-small)."),
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
    from karl_cli.training.trainer import card_with_config
    from karl_cli.models.pretrained import weights_path
    from karl_cli.runtime import prepare_model
    from karl_cli.scoring.methods import methods_for

    if samples < 10 or steps < 1:
        raise UsageError("--samples must be >= 10 and --steps >= 1")
    if not 0.0 <= synthetic < 1.0:
        raise UsageError(f"--synthetic must be a share in [0, 1), got {synthetic}")
    if not 0.0 <= max_undercut <= 1.0:
        raise UsageError(f"--max-undercut must be a share in [0, 1], got {max_undercut}")
    model = prepare_model(_load_model(weights), device)
    if "single" not in methods_for(model):
        raise UsageError("only KARL weights have a halting head to calibrate")
    with _progress("calibrate") as update:
        report = calibrate_halting(model, [str(d) for d in data], samples=samples, steps=steps, seed=seed,
                                   synthetic=synthetic, max_undercut=max_undercut, progress=lambda stage, done, total: update(done, total, stage))
    card_path = weights_path(weights) / "model_card.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "# karl tokenizer\n"
    card = card_with_config(card, model.config)     # the card's config block shows the new threshold
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


@app.command(cls=_Command)
@_handle_errors
def distil(
    data: List[Path] = typer.Argument(..., help="Image folders to distil on (e.g. the training data)."),
    weights: str = typer.Option(..., "--weights", "-w", help="The teacher: a wavelet KARL folder or shipped name."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the student's weights."),
    width: int = typer.Option(32, "--width", help="Student encoder width."),
    enc_depth: int = typer.Option(1, "--enc-depth", help="Student encoder blocks."),
    enc_heads: int = typer.Option(2, "--enc-heads", help="Student attention heads."),
    stem_channels: int = typer.Option(8, "--stem-channels", help="Student conv stem's first width."),
    samples: int = typer.Option(1024, "--samples", help="Image crops to read the teacher's p_halt on."),
    eps_per_image: int = typer.Option(4, "--eps-per-image", help="ε values per crop (log-uniform over 0.005-0.38)."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps for the student."),
    synthetic: float = typer.Option(0.125, "--synthetic",
                                    help="Share of samples that are procedural images (flat colours to noise)."),
    max_undercut: float = typer.Option(0.01, "--max-undercut",
                                       help="Pick the smallest halting threshold (0.75-0.95) at which at most this "
                                            "share of held-out pairs keep fewer tokens than the teacher."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Distil a lighter halting encoder from a wavelet KARL: same tokens, decoder and l1; a cheaper
    single pass that predicts the teacher's halting."""
    import torch

    from karl_cli.training.distil import distil_halting, student_of
    from karl_cli.training.trainer import card_with_config
    from karl_cli.models.pretrained import weights_path
    from karl_cli.runtime import prepare_model

    if samples < 10 or steps < 1 or eps_per_image < 1:
        raise UsageError("--samples must be >= 10, --steps and --eps-per-image >= 1")
    if not 0.0 <= synthetic < 1.0:
        raise UsageError(f"--synthetic must be a share in [0, 1), got {synthetic}")
    if not 0.0 <= max_undercut <= 1.0:
        raise UsageError(f"--max-undercut must be a share in [0, 1], got {max_undercut}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists and is not an empty folder; the student needs a new --out "
                         "(it would overwrite the weights there, the teacher's included)")
    teacher = prepare_model(_load_model(weights), device)
    torch.manual_seed(seed)     # the student's fresh weights
    student = _checked(lambda: student_of(teacher, width=width, enc_depth=enc_depth, enc_heads=enc_heads,
                                          stem_channels=stem_channels))
    with _progress("distil") as update:
        report = distil_halting(student, teacher, [str(d) for d in data], samples=samples,
                                eps_per_image=eps_per_image, steps=steps, seed=seed, synthetic=synthetic,
                                max_undercut=max_undercut,
                                progress=lambda stage, done, total: update(done, total, stage))
    card_path = weights_path(weights) / "model_card.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else "# karl tokenizer\n"
    card = card_with_config(card, student.config)
    card += (f"\n## Halting encoder distilled\n\n`karl distil` from {weights} on {samples} crops x {eps_per_image} ε "
             f"({synthetic:.0%} procedural images, the rest crops of {', '.join(Path(d).name for d in data)}), "
             f"{steps} steps, seed {seed}: encoder path {report.teacher_params:,} -> {report.student_params:,} "
             f"parameters. Held-out |KC - teacher KC| {report.error:.1f} tokens, KC / teacher KC "
             f"{report.ratio:.3f}, {report.undercut:.1%} of pairs below the teacher; halting threshold "
             f"{report.threshold:g}.\n")
    student.save_pretrained(str(out), card=card)
    console.print(f"encoder path {report.teacher_params:,} -> {report.student_params:,} parameters; held-out "
                  f"|KC - teacher KC| {report.error:.1f} tokens, KC/teacher {report.ratio:.3f}, "
                  f"{report.undercut:.1%} below the teacher; halting threshold {report.threshold:g}")
    console.print(f"[green]done:[/] student weights in {escape(str(out))}")


def _checked(make):
    """Config errors are usage errors."""
    from karl_cli.errors import UsageError

    try:
        return make()
    except ValueError as e:
        raise UsageError(str(e)) from None


@app.command(cls=_Command)
@_handle_errors
def compare(
    paths: List[Path] = typer.Argument(..., help="Images or folders (recursive)."),
    weights: List[str] = typer.Option(..., "--weights", "-w", help="A shipped model name (karl-small, alit-small) "
                                      "or a weights folder; repeat to compare several."),
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



# --- karl analyze: the papers' studies ---------------------------------------------------------------
analyze_app = typer.Typer(cls=_Group, no_args_is_help=True, help="The papers' studies of what a token count means: complexity "
                          "profiles, noise, structure, familiarity, and where an image spends its tokens.")
app.add_typer(analyze_app, name="analyze")

_WEIGHTS_OPT = typer.Option(None, "--weights", help="Model folder (default: weights/karl-small); KARL or ALIT.")
_METHOD_OPT = typer.Option(None, "--method", help="single (KARL's one pass), search or prefix (the oracle: smallest "
                           "budget meeting ε); default: single, or search for ALIT.")
_CSV_OPT = typer.Option(None, "--csv", help="Write the rows to this CSV.")
_JSON_OPT = typer.Option(None, "--json", help="Write the rows as JSON records to this file.")
_PLOT_OPT = typer.Option(None, "--plot", help="Write figures (PNG 300 dpi + PDF) into this folder.")
_DEVICE_OPT = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
_SAMPLE_OPT = typer.Option(None, "--sample", min=1, help="Use a seeded random subset of this many images.")
_SEED_OPT = typer.Option(0, "--seed", help="Seed of noise, shuffles, subsets and bootstraps.")
_BATCH_OPT = typer.Option(32, "--batch-size", min=1, help="Images per model run.")


def _df_table(df, title: str) -> Table:
    import pandas as pd

    table = Table(title=title, title_justify="left", header_style="bold")
    for c in df.columns:
        table.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(df[c]) else "left")
    for rec in df.itertuples(index=False):
        table.add_row(*("–" if v is None or (isinstance(v, float) and v != v) else
                        (f"{v:g}" if isinstance(v, float) else escape(str(v))) for v in rec))
    return table


def _finish_study(study, csv_out: Optional[Path], json_out: Optional[Path], plot: Optional[Path], draw) -> None:
    """Write, draw and summarise a study: the shared tail of every `karl analyze` command."""
    from karl_cli.analysis.studies import save_rows, summary_view

    save_rows(study, csv_out, json_out)
    make_console().print(_df_table(summary_view(study), f"{study.name} (method {study.method}, T_max {study.max_tokens})"))
    for line in study.findings:
        console.print(f"• {escape(line)}", highlight=False)
    for out in (csv_out, json_out):
        if out is not None:
            console.print(f"wrote {len(study.rows)} rows to {escape(str(out))}")
    if plot is not None:
        for png in draw(study, plot):
            console.print(f"figure: {escape(str(png))} (+ .pdf)")
    if study.errors:
        console.print(f"[yellow]{len(study.errors)} unreadable inputs skipped[/] (e.g. "
                      f"{escape(str(study.errors[0][0]))}: {escape(study.errors[0][1])})")
        raise typer.Exit(EXIT_SOME_FAILED)


def _study_setup(weights: Optional[Path], device: str):
    from karl_cli.runtime import prepare_model, resolve_device

    dev = resolve_device(device)
    return prepare_model(_load_model(weights), dev), dev


@analyze_app.command("profile", cls=_Command)
@_handle_errors
def analyze_profile(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders (recursive)."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values (repeat; default: every ε bin of the model)."),
    curve: bool = typer.Option(True, "--curve/--no-curve", help="Also L1 at every budget (rate–distortion; the "
                               "slow part: one decode per budget)."),
    ratings: Optional[Path] = typer.Option(None, "--ratings", help="A Savoias root or ratings CSV: compare how "
                                           "kc_area and KC at --rank-eps rank the rated images (Spearman ρ)."),
    rank_eps: float = typer.Option(0.03, "--rank-eps", help="The single ε kc_area is compared with."),
    weights: Optional[Path] = _WEIGHTS_OPT, method: Optional[str] = _METHOD_OPT,
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _SEED_OPT, batch_size: int = _BATCH_OPT,
    device: str = _DEVICE_OPT,
) -> None:
    """KC at every ε and L1 at every budget, per image: complexity profile and rate–distortion curve."""
    from karl_cli.analysis.studies import profile, rank_against_ratings

    model, dev = _study_setup(weights, device)
    if ratings is not None and eps and rank_eps not in eps:
        raise UsageError(f"--rank-eps {rank_eps:g} must be one of the --eps values")
    with _progress("profile") as update:
        study = profile(paths, model, eps, method, curve=curve, sample=sample, seed=seed, batch_size=batch_size,
                        device=dev, progress=lambda d, t, s: update(d, t, s))
    if ratings is not None:
        from karl_cli.io.savoias import load_ratings

        rank = rank_against_ratings(study.rows, load_ratings(ratings).table, rank_eps, seed=seed)
        make_console().print(_df_table(rank.round(3), f"Spearman ρ with the ratings: kc_area vs KC at ε {rank_eps:g} "
                                  "(delta = ρ(area) − ρ(KC), paired bootstrap 95 % CI)"))

    def draw(st, folder):
        from karl_cli.analysis.study_plots import profile_figure
        return [profile_figure(st, folder / "profile")]

    _finish_study(study, csv_out, json_out, plot, draw)


@analyze_app.command("noise", cls=_Command)
@_handle_errors
def analyze_noise(
    paths: Optional[List[str]] = typer.Argument(None, help="Images/folders (default: built-in procedural images)."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values (repeat; default 0.03, 0.05, 0.09)."),
    sigma: Optional[List[float]] = typer.Option(None, "--sigma", help="Gaussian σ steps, 0-1 pixel scale (repeat)."),
    sp: Optional[List[float]] = typer.Option(None, "--sp", help="Salt-and-pepper shares of pixels (repeat)."),
    size: int = typer.Option(256, "--size", min=8, help="Procedural images' side, and the cap on given images' "
                             "shorter side, in px: noise is added at this size and at the model input."),
    weights: Optional[Path] = _WEIGHTS_OPT, method: Optional[str] = _METHOD_OPT,
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _SEED_OPT, batch_size: int = _BATCH_OPT,
    device: str = _DEVICE_OPT,
) -> None:
    """KC against noise strength (Gaussian σ, salt-and-pepper), at several ε."""
    from karl_cli.analysis.studies import DEFAULT_EPS, DEFAULT_SIGMAS, DEFAULT_SP, noise

    model, dev = _study_setup(weights, device)
    with _progress("noise") as update:
        study = noise(paths or None, model, eps or DEFAULT_EPS, sigma or DEFAULT_SIGMAS, sp or DEFAULT_SP, method,
                      size=size, sample=sample, seed=seed, batch_size=batch_size, device=dev,
                      progress=lambda d, t, s: update(d, t, s))

    def draw(st, folder):
        from karl_cli.analysis.study_plots import noise_figure
        return [noise_figure(st, folder / "noise")]

    _finish_study(study, csv_out, json_out, plot, draw)


@analyze_app.command("structure", cls=_Command)
@_handle_errors
def analyze_structure(
    paths: Optional[List[str]] = typer.Argument(None, help="Images/folders (default: built-in procedural images)."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values (repeat; default 0.03, 0.05, 0.09)."),
    grid: Optional[List[int]] = typer.Option(None, "--grid", help="Patch-shuffle grids (repeat; default 2 4 8 16 32)."),
    weights: Optional[Path] = _WEIGHTS_OPT, method: Optional[str] = _METHOD_OPT,
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _SEED_OPT, batch_size: int = _BATCH_OPT,
    device: str = _DEVICE_OPT,
) -> None:
    """KC as structure is destroyed: patch shuffles, phase randomisation, pixel permutation."""
    from karl_cli.analysis.studies import DEFAULT_EPS, DEFAULT_GRIDS, structure

    model, dev = _study_setup(weights, device)
    with _progress("structure") as update:
        study = structure(paths or None, model, eps or DEFAULT_EPS, grid or DEFAULT_GRIDS, method, sample=sample,
                          seed=seed, batch_size=batch_size, device=dev, progress=lambda d, t, s: update(d, t, s))

    def draw(st, folder):
        from karl_cli.analysis.study_plots import structure_figure
        return [structure_figure(st, folder / "structure", st.extra["example"], tuple(st.extra["grids"]), seed)]

    _finish_study(study, csv_out, json_out, plot, draw)


@analyze_app.command("familiarity", cls=_Command)
@_handle_errors
def analyze_familiarity(
    paths: List[str] = typer.Argument(..., help="In-distribution images/folders."),
    other: Optional[List[str]] = typer.Option(None, "--other", help="Out-of-distribution images/folder (repeat); "
                                              "without it each image is compared with its controls."),
    control: Optional[List[str]] = typer.Option(None, "--control", help="flip, invert or swap (repeat; default all)."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values (repeat; default 0.03, 0.05, 0.09)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples for the effect size's CI."),
    weights: Optional[Path] = _WEIGHTS_OPT, method: Optional[str] = _METHOD_OPT,
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _SEED_OPT, batch_size: int = _BATCH_OPT,
    device: str = _DEVICE_OPT,
) -> None:
    """KC of familiar vs unfamiliar images: rank test (scipy) and effect size with a bootstrap CI."""
    from karl_cli.analysis.studies import CONTROLS, DEFAULT_EPS, familiarity

    if other and control:
        raise UsageError("--control applies to one folder; with --other the second folder is the comparison")
    model, dev = _study_setup(weights, device)
    with _progress("familiarity") as update:
        study = familiarity(paths, model, other or None, control or CONTROLS, eps or DEFAULT_EPS, method,
                            n_boot=bootstrap, sample=sample, seed=seed, batch_size=batch_size, device=dev,
                            progress=lambda d, t, s: update(d, t, s))

    def draw(st, folder):
        from karl_cli.analysis.study_plots import familiarity_figure
        return [familiarity_figure(st, folder / "familiarity")]

    _finish_study(study, csv_out, json_out, plot, draw)


@analyze_app.command("map", cls=_Command)
@_handle_errors
def analyze_map(
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    eps: Optional[List[float]] = typer.Option(None, "--eps", help="ε values (repeat; default 0.03, 0.05, 0.09)."),
    patch: int = typer.Option(4, "--patch", min=1, help="Block side in model-input pixels (must divide it; 1: per pixel)."),
    weights: Optional[Path] = _WEIGHTS_OPT,
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _SEED_OPT, device: str = _DEVICE_OPT,
) -> None:
    """Where an image spends its tokens: per block, the smallest budget whose reconstruction meets ε there."""
    from karl_cli.analysis.studies import DEFAULT_EPS, token_maps

    model, dev = _study_setup(weights, device)
    with _progress("map") as update:
        study = token_maps(paths, model, eps or DEFAULT_EPS, patch, sample=sample, seed=seed, device=dev,
                           progress=lambda d, t, s: update(d, t, s))

    def draw(st, folder):
        from karl_cli.analysis.study_plots import map_figure
        return [map_figure(img, m, folder / f"map_{i:03d}_{Path(p).stem}", Path(p).name, st.max_tokens,
                           st.extra["patch"]) for i, (p, (img, m)) in enumerate(st.extra["maps"].items())]

    _finish_study(study, csv_out, json_out, plot, draw)

if __name__ == "__main__":
    main()

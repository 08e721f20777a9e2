"""The ``karl`` command: parse, call the library, render. No logic lives here."""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import re
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
from karl_cli import defaults  # noqa: E402
from karl_cli.registry import DEFAULT_MODEL, DEFAULT_PRESET, ENTRIES, list_models, names_help  # noqa: E402
from karl_cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SOME_FAILED, KarlError, UsageError  # noqa: E402
from karl_cli.progress import make_console  # noqa: E402
from karl_cli.training.flags import RESUME_RULE  # noqa: E402

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

SHIPPED = ", ".join(list_models("shipped"))
WEIGHTS_HELP = (f"Model: a shipped name ({SHIPPED}; `karl models` lists them) or a weights folder (default: "
                f"{DEFAULT_MODEL}).")


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
            with contextlib.ExitStack() as held:    # what _claim takes is held until the command ends
                _held.append(held)
                try:
                    return fn(*args, **kwargs)
                finally:
                    _held.pop()
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
            if _interrupts[0]:
                # A Ctrl-C that landed inside an import leaves the module half made, and what fails next
                # is any error (numpy's __getattr__ recursing, a dataclass's __set_name__): it was the Ctrl-C.
                console.print("[yellow]interrupted[/]" + (": what was done is saved; --resume continues"
                                                          if resumable else ""))
                raise typer.Exit(EXIT_INTERRUPTED) from None
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


def _paths_argument(what: str = "Image files"):
    return typer.Argument(None, help=f"{what}: files, folders (searched recursively), .tar shards (WebDataset "
                          "layout; read in place, rows name shard.tar/KEY.EXT) and/or members shard.tar/KEY.EXT.")


def _inputs(paths, files_from: Optional[str]):
    """The study inputs the command line names (``collect_inputs``), or None for none (built-in images)."""
    return _scan(paths, False, None, files_from) if paths or files_from is not None else None


def _number(text: str) -> float:
    """A float option's text as a float, refusing what ``float`` would silently round: a value too
    small to hold (``1e-400`` would read as 0.0) or too large (``1e400`` as inf). A decimal comma
    gets a hint."""
    if isinstance(text, (int, float)):   # a default, already a number
        return float(text)
    try:
        v = float(text)
    except ValueError:
        hint = f" (write {text.replace(',', '.')})" if re.fullmatch(r"\s*[-+]?\d*,\d+\s*", text) else ""
        raise typer.BadParameter(f"{text!r} is not a number{hint}") from None
    mantissa = text.lower().split("e")[0]
    if v == 0.0 and re.search(r"[1-9]", mantissa):
        raise typer.BadParameter(f"{text} is too small to hold as a floating-point number (it is not 0, but "
                                 "would be read as 0)")
    if math.isinf(v) and "inf" not in text.lower():
        raise typer.BadParameter(f"{text} is too large to hold as a floating-point number")
    return v



def _eps_list(values) -> str:
    return ", ".join(f"{e:g}" for e in values)


def _eps_option(default=(defaults.EPS,), what: str = "Target error ε (pixel L1, 0-1 scale)"):
    """--eps, repeatable; ``default`` (a tuple, or a phrase) is named in the help and applied by the command."""
    said = default if isinstance(default, str) else _eps_list(default)
    return typer.Option(None, "--eps", parser=_number, help=f"{what}; repeat for several (default {said}).")


def _device_option():
    return typer.Option(defaults.DEVICE, "--device", help="auto, cpu, cuda or cuda:N.")


def _weights_option(help: str = WEIGHTS_HELP, required: bool = False):
    return typer.Option(... if required else None, "--weights", "-w", help=help)


def _batch_size_option(default: int = defaults.BATCH_SIZE):
    return typer.Option(default, "--batch-size", "-b", min=1, help="Images per model run.")


RAY_WORKERS_HELP = " With --engine ray: scoring actors, one model each (default: one per GPU, else per CPU, of the cluster)."


def _workers_option(more: str = ""):
    return typer.Option(None, "--workers", min=0, help="Image-decoding processes (default: cores/4 up to 4 on CPU; "
                        "cores-1 up to 16 on CUDA); 0: a thread of this process decodes ahead." + more)


def _seed_option(what: str = "Seed."):
    return typer.Option(defaults.SEED, "--seed", help=what)


def _bootstrap_option(what: str):
    return typer.Option(defaults.BOOTSTRAP, "--bootstrap", min=0, help=f"{what} (0: none).")


def _synthetic_option():
    return typer.Option(defaults.SYNTHETIC_SHARE, "--synthetic", parser=_number, help="Share of samples that are procedural images "
                        "(flat colours to noise).")


def _max_undercut_option(what: str):
    lo, hi = defaults.HALT_THRESHOLDS[0], defaults.HALT_THRESHOLDS[-1]
    return typer.Option(defaults.MAX_UNDERCUT, "--max-undercut", parser=_number, help=f"Pick the smallest halting threshold "
                        f"({lo:g}-{hi:g}) at which at most this share of held-out {what} (1: keep {lo:g}).")


def _method_option():
    return typer.Option(None, "--method", help="single (KARL's one pass), search (ALIT-style re-encoding at every "
                        "budget) or prefix (One-D-Piece-style prefixes of one encoding); default: single, or search "
                        "for models without a halting head (ALIT).")


def _scan(paths, include_hidden: bool, max_pixels: Optional[int], files_from: Optional[str] = None):
    """The images under ``paths`` and in the list ``files_from`` (collect_inputs), with the pixel limit
    set and what the scan skipped said."""
    from karl_cli.io.images import set_max_pixels
    from karl_cli.scoring.measure import collect_inputs

    set_max_pixels(max_pixels)
    found = collect_inputs(paths or [], include_hidden=include_hidden, files_from=files_from)
    if found.summary():
        console.print(f"[dim]{escape(found.summary())}[/]")
    return found


ENGINES = ("single", "ray")


def _ray_engine():
    """``karl_cli.distributed``, or a usage error saying how to install Ray when it is missing."""
    try:
        from karl_cli import distributed
    except ImportError as e:
        raise UsageError(f"--engine ray: {e}") from None
    return distributed


def _allow_inside_inputs_option():
    return typer.Option(False, "--allow-inside-inputs", help="Allow output folders and figures inside (or equal "
                        "to) an input folder; refused by default, since a later run over that folder would read them.")


_held: list[contextlib.ExitStack] = []    # per running command (``_handle_errors``): its output locks


def _claim(outputs, **inputs) -> None:
    """Refuse outputs that are inputs (or write images among them) and lock them until the command ends
    (``io.outputs.claim_outputs``). ``outputs``: (flag, path[, kind[, lock]]) tuples; None paths are skipped."""
    from karl_cli.io.outputs import Output, claim_outputs

    outs = [Output(*o) for o in outputs if o[1] is not None]
    _held[-1].enter_context(claim_outputs(outs, **inputs))


def _fmt(v, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


_L1_CAPTION = {"l1": "L1: the decoder's reconstruction of the kept tokens (l1)",
               "code_l1": "L1: the code's reconstruction of the kept tokens (code_l1)",
               "l1+code_l1": "L1: the decoder's reconstruction (l1) where checked, else the code's (code_l1)"}


def _image_table(rows: list[dict], method: str) -> Table:
    """One image's rows: its KC (of T_max), soft KC and the check's L1 per ε (``rows.checked_l1``),
    titled with its path."""
    from karl_cli.io.rows import checked_l1

    path = str(rows[0]["path"]) if rows else ""
    used = "+".join(k for k in ("l1", "code_l1") if any(checked_l1(r)[1] == k for r in rows))
    caption = f"KC per ε, method {method}" + (f"; {_L1_CAPTION[used]}" if used else "")
    table = Table(title=escape(path), title_justify="left", caption=caption,
                  caption_justify="left", header_style="bold")
    for name in ("ε", "KC", "of T_max", "soft KC", "L1"):
        table.add_column(name, justify="right")
    for r in sorted(rows, key=lambda r: float(r["eps"])):
        if r.get("status") != "ok":
            table.add_row(f"{r['eps']:g}", f"[red]error[/]: {escape(str(r.get('error')))}", "", "", "")
            continue
        table.add_row(f"{r['eps']:g}", str(r["kc"]), str(r["max_tokens"]), _fmt(r["kc_soft"], ".2f"),
                      _fmt(checked_l1(r)[0], ".4f"))
    return table


def _summary_table(stats: list[dict], method: str, l1_columns: list[str]) -> Table:
    """Per-ε statistics (``rows.Summary.table``); the caption names where L1 and misses came from."""
    used = "+".join(l1_columns)
    table = Table(title=f"KC per ε (method: {method})", title_justify="left", header_style="bold",
                  caption=_L1_CAPTION[used] if used else None, caption_justify="left")
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
    eps: Optional[List[float]] = _eps_option(),
    csv_out: Optional[str] = typer.Option(None, "--csv", help="Write rows to this CSV ('-' = stdout). Without "
                                          "--csv and --json only the summary table is printed."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write rows as JSON records to this file."),
    parquet_out: Optional[str] = typer.Option(None, "--parquet", help="Write rows to this Parquet file (streamed "
                                              "in row groups)."),
    files_from: Optional[str] = _files_from_option(),
    baselines: Optional[str] = typer.Option(None, "--baselines", metavar="[LIST]", help=BASELINES_HELP),
    method: Optional[str] = _method_option(),
    weights: Optional[str] = _weights_option(),
    batch_size: int = _batch_size_option(),
    workers: Optional[int] = _workers_option(RAY_WORKERS_HELP),
    device: str = _device_option(),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: score only files i % N == K of the sorted list."),
    resume: bool = typer.Option(False, "--resume", help="Keep the rows already in the output and skip them; "
                                "refused if they came from another model, --method or --check."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the KC histogram per ε to this PNG."),
    check: str = typer.Option("auto", "--check", metavar="[auto|code|decoder|none]", help="How each KC is checked "
                              "(method single). code: the L1 of the code's own reconstruction of the kept tokens "
                              "(code_l1 column; exact Haar synthesis, ~0.1 ms/image; wavelet KARL only). decoder: "
                              "decode the kept tokens with the learned decoder (l1 column, plus code_l1 where the "
                              "model has it; ~9 of ~14 ms/image on a CPU). none: KC from the encoder pass alone. "
                              "auto: code where the model has it, else decoder. The searches always use the decoder."),
    l1: bool = typer.Option(True, "--l1/--no-l1", help="--no-l1 is --check none (kept for older scripts)."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
    allow_inside_inputs: bool = _allow_inside_inputs_option(),
    engine: str = typer.Option("single", "--engine", help="single (this process and its --workers) or ray (Ray "
                               "Data actors on this machine or a cluster; pip install 'karl[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: the cluster to join ('auto' or "
                                          "HEAD_IP:6379; default: the one `ray start` runs here, else a new local Ray)."),
) -> None:
    """Estimate the complexity (KC at ε) of every image; one row per (image, ε)."""
    from karl_cli.runtime import default_workers
    from karl_cli.models.pretrained import model_id
    from karl_cli.scoring.baselines import parse_baselines
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.complexity import score
    from karl_cli.io.rows import ROW_FIELDS, RowWriter, Summary, checkpoint_seconds, resume_guard
    from karl_cli.scoring.measure import parse_shard
    from karl_cli.scoring.methods import CHECKS, check_method, method_name, resolve_check, validate_eps

    eps_v = validate_eps(eps or [defaults.EPS])
    chosen = parse_baselines(baselines)
    if check not in CHECKS:
        raise UsageError(f"unknown --check {check!r}; choose one of: {', '.join(CHECKS)}")
    if method is not None:
        method_name(method)     # a bad name fails before the model is loaded
    shard_t = parse_shard(shard)
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise UsageError("--address needs --engine ray")
    on_ray = _ray_engine() if engine == "ray" else None
    dev = resolve_device(device) if on_ray is None else device    # Ray's actors pick their own device
    outs_given = [p for p in (csv_out, json_out, parquet_out) if p is not None]
    if parquet_out == "-":
        raise UsageError("Parquet cannot stream to stdout; name a file for --parquet")
    if resume and not outs_given:
        raise UsageError("--resume needs an output file (--csv FILE, --json FILE or --parquet FILE)")
    if resume and outs_given[0] == "-":
        raise UsageError("--resume needs an output file, not stdout")
    found = _scan(paths, include_hidden, max_pixels, files_from)
    _claim([("--csv", csv_out), ("--json", json_out), ("--parquet", parquet_out), ("--plot", plot, "figure")],
           inputs=paths or [], found=found, files_from=files_from, allow_inside_inputs=allow_inside_inputs)
    model = _load_model(weights)
    method = check_method(model, method)
    check = resolve_check(model, method, check, l1)
    fields = ROW_FIELDS + list(chosen)
    summary = Summary()
    one_image = len(found) == 1 and not resume   # one image: its own KC per ε, not statistics of one
    image_rows: list[dict] = []
    plot_rows: list[dict] = []
    existing: list[dict] = []
    with contextlib.ExitStack() as stack:
        every = checkpoint_seconds()   # a hard kill loses at most this many seconds of rows
        sinks = []
        if outs_given:       # without any, the summary table is the output
            # --resume reads back the first output given (csv, json, parquet); the others are rewritten from it.
            guard = resume_guard(model_id(model), method, check)
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
            console.print(f"resuming: {_rows(len(existing))} already in {escape(outs_given[0])} kept")
        with _progress("scoring") as update:
            skip = sinks[0].done if sinks else None
            if on_ray is not None:
                rows = on_ray.score(found, weights, eps_v, method=method, baselines=chosen, batch_size=batch_size,
                                    workers=workers, device=device, shard=shard_t, skip=skip, progress=update,
                                    check=check, address=address)
            else:
                rows = score(found, model, eps_v, method=method, baselines=chosen, batch_size=batch_size,
                             workers=default_workers(dev) if workers is None else workers, device=dev, shard=shard_t,
                             skip=skip, progress=update, check=check)
            for row in rows:
                for sink in sinks:
                    sink.write(row)
                summary.add(row)
                if one_image:
                    image_rows.append(row)
                if plot:
                    plot_rows.append({k: row.get(k) for k in ("eps", "kc", "status", "max_tokens")})
    console.print(_image_table(image_rows, method) if one_image and image_rows
                  else _summary_table(summary.table(), method, summary.l1_columns))
    unreachable = [f"{st['eps']:g}" for st in summary.table() if st["miss"] is not None and st["miss"] > 0.5]
    if unreachable:
        # Most images missing ε means the model cannot reconstruct that well: KC then sits at T_max.
        console.print(f"[yellow]note:[/] most images miss ε = {', '.join(unreachable)} even with the kept tokens; "
                      "this model cannot reconstruct that closely, so KC saturates there. A larger ε (or a "
                      "better model) gives KC that separates images.")
    outs = " and ".join(p for p in outs_given if p != "-")
    if outs:
        kept = len(existing)
        console.print(f"wrote {_rows(sinks[0].count - kept, 'new ')} to {escape(outs)}" + (f" ({kept} kept from before)" if kept else ""))
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
    replace: bool = typer.Option(False, "--replace", help="Overwrite an existing OUT (refused otherwise: the "
                                 "output comes first and is never one of the files joined)."),
) -> None:
    """Join shard outputs (CSV, JSON or Parquet) into one, sorted by (path, ε). Identical duplicates
    merge quietly, an ok row replaces an error row; rows that disagree, or rows of different models,
    are refused."""
    from karl_cli.io.outputs import check_new_file
    from karl_cli.io.rows import merge_csv

    _claim([("OUT", out)], inputs=inputs)
    check_new_file(out, "OUT", replace)
    counts = merge_csv(out, inputs, prefer=prefer, mixed_models=mixed_models)
    notes = [f"{counts['duplicates']} identical duplicates dropped"]
    if counts["errors_replaced"]:
        notes.append(f"{counts['errors_replaced']} error rows replaced by ok rows")
    if counts["conflicts"]:
        notes.append(f"{counts['conflicts']} disagreeing rows taken from the {prefer} input")
    console.print(f"merged {counts['files']} files: {_rows(counts['rows'])} ({'; '.join(notes)}) -> {escape(out)}")


@app.command(cls=_Command)
@_handle_errors
def encode(
    paths: Optional[List[str]] = _paths_argument(),
    eps: float = typer.Option(defaults.EPS, "--eps", parser=_number, help="Target error ε the tokens are chosen for."),
    out: Path = typer.Option(..., "--out", help="Folder for token files + index.csv."),
    recon: Optional[Path] = typer.Option(None, "--recon", help="Also save reconstructions as PNG here."),
    weights: Optional[str] = _weights_option(),
    batch_size: int = _batch_size_option(),
    workers: Optional[int] = _workers_option(),
    device: str = _device_option(),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: encode only files i % N == K of the sorted list."),
    files_from: Optional[str] = _files_from_option(),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
    allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """Store every image's kept tokens (safetensors shards + index.csv)."""
    from karl_cli.runtime import default_workers
    from karl_cli.scoring.measure import parse_shard
    from karl_cli.scoring.methods import validate_eps
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.token_store import encode_folder

    eps_v = validate_eps(eps)[0]
    shard_t = parse_shard(shard)
    dev = resolve_device(device)
    found = _scan(paths, include_hidden, max_pixels, files_from)
    model = _load_model(weights)
    with _progress("encoding") as update:
        res = encode_folder(found, model, eps_v, out, recon_dir=recon, batch_size=batch_size,
                            workers=default_workers(dev) if workers is None else workers, device=dev, shard=shard_t,
                            progress=update, inputs=paths or [], files_from=files_from,
                            allow_inside_inputs=allow_inside_inputs)
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
    weights: Optional[str] = _weights_option("The model that encoded the tokens. " + WEIGHTS_HELP),
    device: str = _device_option(),
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
    image: str = typer.Argument(..., help="One image: a file or a tar member (shard.tar/KEY.EXT)."),
    out: Path = typer.Option(..., "--out", help="The figure to write (PNG)."),
    eps: Optional[List[float]] = _eps_option(defaults.EPS_SERIES),
    weights: Optional[str] = _weights_option(),
    device: str = _device_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """Draw one image, its reconstructions at growing budgets, p_halt per token and KC per ε."""
    from karl_cli.scoring.methods import validate_eps
    from karl_cli.analysis.plots import show_figure
    from karl_cli.io.images import set_max_pixels
    from karl_cli.runtime import resolve_device

    set_max_pixels(max_pixels)
    eps_v = validate_eps(eps or defaults.EPS_SERIES)
    _claim([("--out", out, "figure")], inputs=[image])
    dev = resolve_device(device)
    model = _load_model(weights)
    info = show_figure(model, image, out, eps_v, device=dev)
    kcs = ", ".join(f"ε={e['eps']:g}: KC {e['kc']}" for e in info["eps"])
    console.print(f"{escape(os.path.basename(image))}: {kcs} -> {escape(str(out))}")


@app.command(cls=_Command)
@_handle_errors
def models(
    kind: Optional[str] = typer.Option(None, "--kind", help="shipped (weights for --weights) or preset (configs "
                                       "for `karl train --preset`); default: both."),
    pattern: str = typer.Argument("*", help="Shell pattern the names must match (e.g. 'learned*')."),
) -> None:
    """List the model names karl knows: shipped weights and training presets."""
    from karl_cli.models.config import PRESETS
    from karl_cli.models.pretrained import weights_path, read_config

    table = Table(title="karl models", title_justify="left", header_style="bold")
    for col in ("name", "kind", "arch", "code", "px", "T_max", "what"):
        table.add_column(col, justify="right" if col in ("px", "T_max") else "left")
    for name in _checked(lambda: list_models(kind, pattern)):
        entry = ENTRIES[name]
        cfg = PRESETS[name] if entry.kind == "preset" else read_config(weights_path(name))
        mark = " (default)" if name == DEFAULT_MODEL else " (train's default)" if name == DEFAULT_PRESET else ""
        table.add_row(name + mark, entry.kind, cfg.arch, cfg.code, str(cfg.resolution),
                      str(cfg.max_tokens), escape(entry.summary))
    make_console().print(table)


def _rows(n: int, what: str = "") -> str:
    """``n`` rows, in words: "1 new row", "3 rows"."""
    return f"{n} {what}row{'' if n == 1 else 's'}"


def _exit_interrupted() -> None:
    """Exit 130 after a handled Ctrl-C. Outputs are closed by now; ``os._exit`` because CPython turns
    a normal exit into death by SIGINT (-2) when the interrupt landed inside an import (measured: a
    Ctrl-C one second after start)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


_interrupts = [0]   # Ctrl-Cs received by the `karl` command (``main``)


def _on_sigint(signum: int, frame: object) -> None:
    """Python's own Ctrl-C behaviour (KeyboardInterrupt), counted: see ``_handle_errors``."""
    _interrupts[0] += 1
    raise KeyboardInterrupt


def main() -> None:
    """Console-script entry point: user errors become one clear line and an exit code."""
    debug = "--debug" in sys.argv
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
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
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: weights, checkpoint.pt, metrics.jsonl. New or "
                             "empty, unless --resume continues the run in it."),
    preset_name: Optional[str] = typer.Option(None, "--preset", help=f"Model preset (default {DEFAULT_PRESET}): "
                                              + names_help("preset") + "."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture: karl (default) or alit."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="T_max (default: the preset's)."),
    token_step: Optional[int] = typer.Option(None, "--token-step",
                                             help="Budgets are multiples of this; ALIT adds this many tokens "
                                                  "per iteration (default: the preset's)."),
    code: Optional[str] = typer.Option(None, "--code", help="KARL's tokens: wavelet (a Haar code in an adaptive "
                                       "order, the CPU default) or learned (the papers' tokenizer); ALIT: dct."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps; the cosine schedule is defined "
                                        "over them (default: from --epochs)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", parser=_number,
                                                help="Wall-clock budget: stop cleanly after the step that passes it, "
                                                     "save weights and checkpoint (--resume continues). The schedule "
                                                     "stays the one over --steps, so the learning rate is not annealed."),
    epochs: Optional[float] = typer.Option(None, "--epochs", parser=_number, help="Passes over the data (default 1)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per step and process "
                                             "(default 64; the folders need at least this many images)."),
    lr: Optional[float] = typer.Option(None, "--lr", parser=_number, help="Peak learning rate (default 1e-3)."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warm-up steps (default 200, at most a fifth of "
                                         "the run; a warning when longer than the run)."),
    workers: int = typer.Option(0, "--workers", help="Data-loading worker processes."),
    halt_warmup: Optional[int] = typer.Option(None, "--halt-warmup", help="Steps before the halting loss's "
                                              "gradient reaches the encoder (default 0)."),
    label_decodes: Optional[int] = typer.Option(None, "--label-decodes", help="Budgets phase 1 decodes per step "
                                                "to find each image's needed budget (default 4)."),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Seed (default {defaults.SEED})."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Steps between checkpoints "
                                                   "(default 200)."),
    cache: Optional[bool] = typer.Option(None, "--cache/--no-cache", help="Keep decoded images in memory "
                                         "(default: cache)."),
    device: str = _device_option(),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the transformer blocks and conv base "
                                  "(a minute of compiling first; for long CUDA runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped "
                                f"({RESUME_RULE})."),
    init_from: Optional[str] = typer.Option(None, "--init-from", help="Start from these weights (fine-tune): a "
                                            f"shipped name ({SHIPPED}) or a weights folder."),
) -> None:
    """Train a tokenizer with two-phase loss-conditioned training (`karl models` lists the presets)."""
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
            raise UsageError(f"cannot resume {out}: " + "; ".join(conflicts) + f"; {RESUME_RULE}: drop these "
                             "flags or start a new run with another --out")
    model_config = None if resume else _checked(lambda: preset(preset_name or DEFAULT_PRESET, **sizes))
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
    eps: Optional[List[float]] = _eps_option(f"{defaults.CORRELATE_EPS:g}, the ε that ranks most like people on "
                                             "Savoias"),
    method: Optional[str] = _method_option(),
    bootstrap: int = _bootstrap_option("Bootstrap resamples for the 95% CI of ρ"),
    seed: int = _seed_option("Seed of the bootstrap."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results table (CSV)."),
    per_image: Optional[Path] = typer.Option(None, "--per-image", help="Write per-image scores (CSV)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write figures (PNG) into this folder."),
    weights: Optional[str] = _weights_option(),
    batch_size: int = _batch_size_option(),
    workers: Optional[int] = _workers_option(),
    device: str = _device_option(),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Score cache folder (default ~/.cache/karl)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the score cache."),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
    baselines: Optional[str] = typer.Option(None, "--baselines", metavar="[LIST]",
                                            help=BASELINES_HELP.replace("Add", "Compare with") + " Default: jpeg,png."),
    allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """Correlate KC and classic complexity measures with human complexity ratings; KC − the best
    baseline of each category with its paired bootstrap CI."""
    from karl_cli.runtime import default_workers
    from karl_cli.analysis.correlate import rich_table
    from karl_cli.analysis.correlate import correlate as run_correlate
    from karl_cli.io.savoias import load_ratings
    from karl_cli.runtime import resolve_device
    from karl_cli.scoring.methods import check_method

    from karl_cli.io.images import set_max_pixels
    from karl_cli.scoring.baselines import parse_baselines

    chosen = parse_baselines(baselines or True)   # an unknown name fails before anything is loaded
    set_max_pixels(max_pixels)
    rated = load_ratings(root, ratings, include_hidden)   # a bad root or CSV fails before the model is loaded
    _claim([("--out", out), ("--per-image", per_image), ("--plot", plot, "folder", False)],
           inputs=([root] if root is not None else []) + list(rated.table["path"]),
           extra_inputs=[ratings] if ratings is not None else [], allow_inside_inputs=allow_inside_inputs)
    dev = resolve_device(device)
    model = _load_model(weights)
    method = check_method(model, method)
    with _progress("scoring") as update:
        result = run_correlate(rated, model=model, eps=eps or [defaults.CORRELATE_EPS], method=method, bootstrap=bootstrap,
                               seed=seed, batch_size=batch_size,
                               workers=default_workers(dev) if workers is None else workers, device=dev,
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
    weights: str = _weights_option("Weights to calibrate: a folder (e.g. from `karl train`) or a shipped name.",
                                   required=True),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the calibrated weights: a new or empty folder."),
    samples: int = typer.Option(2048, "--samples", help="Image crops to compute oracle budgets on."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps for the halting head."),
    synthetic: float = _synthetic_option(),
    max_undercut: float = _max_undercut_option("crops keep fewer tokens than the oracle"),
    seed: int = _seed_option(),
    device: str = _device_option(),
) -> None:
    """Retrain the halting head on oracle budgets (smallest prefix meeting each ε) and pick its
    threshold; tokens unchanged."""
    from karl_cli.io.outputs import check_new_weights_folder
    from karl_cli.training.calibration import calibrate_halting, check_settings
    from karl_cli.training.cards import derived_card
    from karl_cli.runtime import prepare_model
    from karl_cli.scoring.methods import methods_for

    _checked(lambda: check_settings(samples, steps, synthetic, max_undercut))
    check_new_weights_folder(out)       # e.g. --out the folder of -w: the model there would be replaced
    _claim([("--out", out)], inputs=data)
    model = prepare_model(_load_model(weights), device)
    if "single" not in methods_for(model):
        raise UsageError("only KARL weights have a halting head to calibrate")
    with _progress("calibrate") as update:
        report = calibrate_halting(model, [str(d) for d in data], samples=samples, steps=steps, seed=seed,
                                   synthetic=synthetic, max_undercut=max_undercut, progress=lambda stage, done, total: update(done, total, stage))
    card = derived_card(weights, model.config, "Halting calibration", (
        f"`karl calibrate` on {samples} samples ({synthetic:.0%} procedural images, the rest crops of "
        f"{', '.join(Path(d).name for d in data)}), {steps} steps, seed {seed}. Held-out |KC - oracle KC|: "
        f"{report.error_before:.1f} -> {report.error_after:.1f} tokens; KC / oracle KC: "
        f"{report.ratio_before:.2f} -> {report.ratio_after:.2f}; halting threshold {report.threshold:g} "
        f"(held-out pairs below the oracle: {report.undercut:.1%})."))
    model.save_pretrained(str(out), card=card)
    console.print(f"held-out |KC - oracle|: {report.error_before:.1f} -> {report.error_after:.1f} tokens; "
                  f"KC/oracle {report.ratio_before:.2f} -> {report.ratio_after:.2f}; halting threshold "
                  f"{report.threshold:g} ({report.undercut:.1%} of held-out crops below the oracle)")
    console.print(f"[green]done:[/] calibrated weights in {escape(str(out))}")


@app.command(cls=_Command)
@_handle_errors
def distil(
    data: List[Path] = typer.Argument(..., help="Image folders to distil on (e.g. the training data)."),
    weights: str = _weights_option("The teacher: a wavelet KARL folder or shipped name.", required=True),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the student's weights: a new or empty folder."),
    width: int = typer.Option(32, "--width", help="Student encoder width."),
    enc_depth: int = typer.Option(1, "--enc-depth", help="Student encoder blocks."),
    enc_heads: int = typer.Option(2, "--enc-heads", help="Student attention heads."),
    stem_channels: int = typer.Option(8, "--stem-channels", help="Student conv stem's first width."),
    samples: int = typer.Option(1024, "--samples", help="Image crops to read the teacher's p_halt on."),
    eps_per_image: int = typer.Option(4, "--eps-per-image", help="ε values per crop (log-uniform over 0.005-0.38)."),
    steps: int = typer.Option(1500, "--steps", help="Optimiser steps for the student."),
    synthetic: float = _synthetic_option(),
    max_undercut: float = _max_undercut_option("pairs keep fewer tokens than the teacher"),
    seed: int = _seed_option(),
    device: str = _device_option(),
) -> None:
    """Distil a lighter halting encoder from a wavelet KARL: same tokens, decoder and l1; a cheaper
    single pass that predicts the teacher's halting."""
    import torch

    from karl_cli.io.outputs import check_new_weights_folder
    from karl_cli.training.calibration import check_settings
    from karl_cli.training.cards import derived_card
    from karl_cli.training.distil import distil_halting, student_of
    from karl_cli.runtime import prepare_model

    _checked(lambda: check_settings(samples, steps, synthetic, max_undercut, eps_per_image))
    check_new_weights_folder(out)       # e.g. the teacher's own folder
    _claim([("--out", out)], inputs=data)
    teacher = prepare_model(_load_model(weights), device)
    torch.manual_seed(seed)     # the student's fresh weights
    student = _checked(lambda: student_of(teacher, width=width, enc_depth=enc_depth, enc_heads=enc_heads,
                                          stem_channels=stem_channels))
    with _progress("distil") as update:
        report = distil_halting(student, teacher, [str(d) for d in data], samples=samples,
                                eps_per_image=eps_per_image, steps=steps, seed=seed, synthetic=synthetic,
                                max_undercut=max_undercut,
                                progress=lambda stage, done, total: update(done, total, stage))
    card = derived_card(weights, student.config, "Halting encoder distilled", (
        f"`karl distil` from {weights} on {samples} crops x {eps_per_image} ε ({synthetic:.0%} procedural images, "
        f"the rest crops of {', '.join(Path(d).name for d in data)}), {steps} steps, seed {seed}: encoder path "
        f"{report.teacher_params:,} -> {report.student_params:,} parameters. Held-out |KC - teacher KC| "
        f"{report.error:.1f} tokens, KC / teacher KC {report.ratio:.3f}, {report.undercut:.1%} of pairs below the "
        f"teacher; halting threshold {report.threshold:g}."))
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
    paths: Optional[List[str]] = _paths_argument(),
    weights: List[str] = _weights_option(f"A shipped model name ({SHIPPED}) or a weights folder; repeat to compare "
                                         "several.", required=True),
    eps: Optional[List[float]] = _eps_option(defaults.EPS_SERIES),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV."),
    files_from: Optional[str] = _files_from_option(),
    batch_size: int = _batch_size_option(defaults.IN_MEMORY_BATCH_SIZE),
    device: str = _device_option(),
    include_hidden: bool = _include_hidden_option(),
    max_pixels: Optional[int] = _max_pixels_option(),
) -> None:
    """KARL single pass vs. searches (KARL, ALIT) side by side: tokens, misses, L1/PSNR/SSIM, runs, time."""
    from karl_cli.io.rows import write_table
    from karl_cli.scoring.compare import compare as run_compare
    from karl_cli.scoring.compare import load_models, render_table
    from karl_cli.errors import EXIT_SOME_FAILED

    found = _scan(paths, include_hidden, max_pixels, files_from)
    _claim([("--csv", csv)], inputs=paths, found=found)
    models = load_models(weights)
    with _progress("comparing") as update:
        df = run_compare(found, models, eps or defaults.EPS_SERIES, batch_size=batch_size, device=device,
                         progress=update)
    make_console().print(render_table(df))
    if csv is not None:
        write_table(df, csv, "csv")
        console.print(f"[green]wrote[/] {escape(str(csv))}")
    skipped = df.attrs.get("skipped", [])
    if skipped:
        console.print(f"[yellow]{len(skipped)} images could not be read[/] (e.g. {escape(str(skipped[0][0]))}: {escape(str(skipped[0][1]))})")
        raise typer.Exit(EXIT_SOME_FAILED)



# --- karl analyze: the papers' studies ---------------------------------------------------------------
analyze_app = typer.Typer(cls=_Group, no_args_is_help=True, help="The papers' studies of what a token count means: complexity "
                          "profiles, noise, structure, familiarity, and where an image spends its tokens.")
app.add_typer(analyze_app, name="analyze")

_CSV_OPT = typer.Option(None, "--csv", help="Write the rows to this CSV.")
_JSON_OPT = typer.Option(None, "--json", help="Write the rows as JSON records to this file.")
_PLOT_OPT = typer.Option(None, "--plot", help="Write figures (PNG 300 dpi + PDF) into this folder.")
_SAMPLE_OPT = typer.Option(None, "--sample", min=1, help="Use a seeded random subset of this many images.")
_STUDY_SEED = "Seed of noise, shuffles, subsets and bootstraps."


def _study_outputs(paths, csv_out, json_out, plot, allow_inside_inputs: bool, extra=()) -> None:
    """A study's outputs: none may be an input, figures not among them (``_claim``)."""
    _claim([("--csv", csv_out), ("--json", json_out), ("--plot", plot, "folder", False)], inputs=list(paths or []),
           extra_inputs=[e for e in extra if e is not None], allow_inside_inputs=allow_inside_inputs)


def _df_table(df, title: str) -> Table:
    import pandas as pd

    table = Table(title=title, title_justify="left", header_style="bold")
    for c in df.columns:
        table.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(df[c]) else "left")
    for rec in df.itertuples(index=False):
        table.add_row(*("–" if v is None or (isinstance(v, float) and v != v) else
                        (f"{v:g}" if isinstance(v, float) else escape(str(v))) for v in rec))
    return table


def _finish_study(study, csv_out: Optional[Path], json_out: Optional[Path], plot: Optional[Path]) -> None:
    """Write, draw and summarise a study: the shared tail of every `karl analyze` command."""
    from karl_cli.analysis.studies import save_rows, summary_view

    save_rows(study, csv_out, json_out)
    make_console().print(_df_table(summary_view(study), f"{study.name} (method {study.method}, T_max {study.max_tokens})"))
    for line in study.findings:
        console.print(f"• {escape(line)}", highlight=False)
    for out in (csv_out, json_out):
        if out is not None:
            console.print(f"wrote {_rows(len(study.rows))} to {escape(str(out))}")
    if plot is not None:
        from karl_cli.analysis.study_plots import draw_study

        for png in draw_study(study, plot):
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
    paths: Optional[List[str]] = _paths_argument(),
    files_from: Optional[str] = _files_from_option(),
    eps: Optional[List[float]] = _eps_option("every ε bin of the model"),
    curve: bool = typer.Option(True, "--curve/--no-curve", help="Also L1 at every budget (rate–distortion; the "
                               "slow part: one decode per budget)."),
    ratings: Optional[Path] = typer.Option(None, "--ratings", help="A Savoias root or ratings CSV: compare how "
                                           "kc_area and KC at --rank-eps rank the rated images (Spearman ρ)."),
    rank_eps: float = typer.Option(defaults.CORRELATE_EPS, "--rank-eps", parser=_number, help="The single ε kc_area is compared with."),
    weights: Optional[str] = _weights_option(), method: Optional[str] = _method_option(),
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _seed_option(_STUDY_SEED),
    batch_size: int = _batch_size_option(defaults.IN_MEMORY_BATCH_SIZE), device: str = _device_option(), allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """KC at every ε and L1 at every budget, per image: complexity profile and rate–distortion curve."""
    from karl_cli.analysis.studies import profile, rank_against_ratings

    _study_outputs(paths, csv_out, json_out, plot, allow_inside_inputs, extra=[ratings])
    model, dev = _study_setup(weights, device)
    if ratings is not None and eps and rank_eps not in eps:
        raise UsageError(f"--rank-eps {rank_eps:g} must be one of the --eps values")
    with _progress("profile") as update:
        study = profile(_scan(paths, False, None, files_from), model, eps, method, curve=curve, sample=sample,
                        seed=seed, batch_size=batch_size,
                        device=dev, progress=update)
    if ratings is not None:
        from karl_cli.io.savoias import load_ratings

        rank = rank_against_ratings(study.rows, load_ratings(ratings).table, rank_eps, seed=seed)
        make_console().print(_df_table(rank.round(3), f"Spearman ρ with the ratings: kc_area vs KC at ε {rank_eps:g} "
                                  "(delta = ρ(area) − ρ(KC), paired bootstrap 95 % CI)"))

    _finish_study(study, csv_out, json_out, plot)


@analyze_app.command("noise", cls=_Command)
@_handle_errors
def analyze_noise(
    paths: Optional[List[str]] = _paths_argument("Images (default: built-in procedural images)"),
    files_from: Optional[str] = _files_from_option(),
    eps: Optional[List[float]] = _eps_option(defaults.EPS_SERIES),
    sigma: Optional[List[float]] = typer.Option(None, "--sigma", parser=_number, help="Gaussian σ steps, 0-1 pixel scale (repeat)."),
    sp: Optional[List[float]] = typer.Option(None, "--sp", parser=_number, help="Salt-and-pepper shares of pixels (repeat)."),
    size: int = typer.Option(256, "--size", min=8, help="Procedural images' side, and the cap on given images' "
                             "shorter side, in px: noise is added at this size and at the model input."),
    weights: Optional[str] = _weights_option(), method: Optional[str] = _method_option(),
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _seed_option(_STUDY_SEED),
    batch_size: int = _batch_size_option(defaults.IN_MEMORY_BATCH_SIZE), device: str = _device_option(), allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """KC against noise strength (Gaussian σ, salt-and-pepper), at several ε."""
    from karl_cli.analysis.studies import DEFAULT_SIGMAS, DEFAULT_SP, noise

    _study_outputs(paths, csv_out, json_out, plot, allow_inside_inputs)
    model, dev = _study_setup(weights, device)
    with _progress("noise") as update:
        study = noise(_inputs(paths, files_from), model, eps or defaults.EPS_SERIES, sigma or DEFAULT_SIGMAS,
                      sp or DEFAULT_SP, method,
                      size=size, sample=sample, seed=seed, batch_size=batch_size, device=dev, progress=update)

    _finish_study(study, csv_out, json_out, plot)


@analyze_app.command("structure", cls=_Command)
@_handle_errors
def analyze_structure(
    paths: Optional[List[str]] = _paths_argument("Images (default: built-in procedural images)"),
    files_from: Optional[str] = _files_from_option(),
    eps: Optional[List[float]] = _eps_option(defaults.EPS_SERIES),
    grid: Optional[List[int]] = typer.Option(None, "--grid", help="Patch-shuffle grids (repeat; default 2 4 8 16 32)."),
    weights: Optional[str] = _weights_option(), method: Optional[str] = _method_option(),
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _seed_option(_STUDY_SEED),
    batch_size: int = _batch_size_option(defaults.IN_MEMORY_BATCH_SIZE), device: str = _device_option(), allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """KC as structure is destroyed: patch shuffles, phase randomisation, pixel permutation."""
    from karl_cli.analysis.studies import DEFAULT_GRIDS, structure

    _study_outputs(paths, csv_out, json_out, plot, allow_inside_inputs)
    model, dev = _study_setup(weights, device)
    with _progress("structure") as update:
        study = structure(_inputs(paths, files_from), model, eps or defaults.EPS_SERIES, grid or DEFAULT_GRIDS, method,
                          sample=sample,
                          seed=seed, batch_size=batch_size, device=dev, progress=update)

    _finish_study(study, csv_out, json_out, plot)


@analyze_app.command("familiarity", cls=_Command)
@_handle_errors
def analyze_familiarity(
    paths: Optional[List[str]] = _paths_argument("In-distribution images"),
    files_from: Optional[str] = _files_from_option(),
    other: Optional[List[str]] = typer.Option(None, "--other", help="Out-of-distribution images/folder (repeat); "
                                              "without it each image is compared with its controls."),
    control: Optional[List[str]] = typer.Option(None, "--control", help="flip, invert or swap (repeat; default all)."),
    eps: Optional[List[float]] = _eps_option(defaults.EPS_SERIES),
    bootstrap: int = _bootstrap_option("Bootstrap resamples for the effect size's CI"),
    weights: Optional[str] = _weights_option(), method: Optional[str] = _method_option(),
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _seed_option(_STUDY_SEED),
    batch_size: int = _batch_size_option(defaults.IN_MEMORY_BATCH_SIZE), device: str = _device_option(), allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """KC of familiar vs unfamiliar images: rank test (scipy) and effect size with a bootstrap CI."""
    from karl_cli.analysis.studies import CONTROLS, familiarity

    if other and control:
        raise UsageError("--control applies to one folder; with --other the second folder is the comparison")
    _study_outputs(list(paths) + list(other or []), csv_out, json_out, plot, allow_inside_inputs)
    model, dev = _study_setup(weights, device)
    with _progress("familiarity") as update:
        study = familiarity(_scan(paths, False, None, files_from), model, other or None, control or CONTROLS,
                            eps or defaults.EPS_SERIES, method,
                            n_boot=bootstrap, sample=sample, seed=seed, batch_size=batch_size, device=dev,
                            progress=update)

    _finish_study(study, csv_out, json_out, plot)


@analyze_app.command("map", cls=_Command)
@_handle_errors
def analyze_map(
    paths: Optional[List[str]] = _paths_argument(),
    files_from: Optional[str] = _files_from_option(),
    eps: Optional[List[float]] = _eps_option(defaults.EPS_SERIES),
    patch: int = typer.Option(4, "--patch", min=1, help="Block side in model-input pixels (must divide it; 1: per pixel)."),
    weights: Optional[str] = _weights_option(),
    csv_out: Optional[Path] = _CSV_OPT, json_out: Optional[Path] = _JSON_OPT, plot: Optional[Path] = _PLOT_OPT,
    sample: Optional[int] = _SAMPLE_OPT, seed: int = _seed_option(_STUDY_SEED), device: str = _device_option(), allow_inside_inputs: bool = _allow_inside_inputs_option(),
) -> None:
    """Where an image spends its tokens: per block, the smallest budget whose reconstruction meets ε there."""
    from karl_cli.analysis.studies import token_maps

    _study_outputs(paths, csv_out, json_out, plot, allow_inside_inputs)
    model, dev = _study_setup(weights, device)
    with _progress("map") as update:
        study = token_maps(_scan(paths, False, None, files_from), model, eps or defaults.EPS_SERIES, patch,
                           sample=sample, seed=seed, device=dev,
                           progress=update)

    _finish_study(study, csv_out, json_out, plot)

if __name__ == "__main__":
    main()

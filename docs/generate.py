"""Every number in README.md and docs/*.md comes from here: run the documented commands, keep their
outputs under docs/results/, and rewrite the tables between the markers

    <!-- table:NAME -->
    ... generated, do not edit ...
    <!-- /table -->

    python docs/generate.py                         # run everything (Savoias runs need --savoias), rewrite the docs
    python docs/generate.py --only examples,noise   # run some, re-render all
    python docs/generate.py --render                # no runs: re-render from docs/results/ (CLI options, models)
    python docs/generate.py --check                 # exit 1 where a doc's table differs from its render

A *run* is one documented command (its text is what the docs show and what docs/results/manifest.json
records, with the machine, date, commit and wall time). A *table* renders result files into Markdown.
Option tables (from the CLI itself) and the model tables (from the shipped weights and presets) are
rendered live, so a CLI or model change shows up with `--render`. tests/test_readme.py fails when a
block differs from its render, when a result file does not record its documented command, or when a
cheap command (examples/, built-in images) no longer prints what its table says.

`savoias-dev` in a command stands for the Savoias dev half (docs/reproducing.md); `--savoias PATH`
(default $KARL_SAVOIAS, else ../shared/data/savoias-dev beside the repository) says where it is.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
FIGURES = ROOT / "docs" / "figures"
MANIFEST = RESULTS / "manifest.json"
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
SAVOIAS_TOKEN = "savoias-dev"
COMPARE_EVERY = 24          # the compare subset: every 24th image of the dev half's sorted images ...
COMPARE_IMAGES = 30         # ... the first 30 of them


def doc_files() -> list[Path]:
    """The documents whose tables this script owns: README.md and docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --- runs: the documented commands ------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One documented command. ``command`` is the text the docs show; ``outputs`` the files under
    docs/results/ (or docs/figures/) it writes; ``savoias``: needs the Savoias dev half; ``cheap``:
    tests/test_readme.py re-runs it (seconds on 2 cores)."""
    name: str
    command: str
    outputs: tuple[str, ...]
    savoias: bool = False
    cheap: bool = False
    keep_output: bool = False     # keep the command's terminal output as docs/results/NAME.txt

    def argv(self, savoias: Path | None = None, results: Path = RESULTS, figures: Path = FIGURES,
             subset: Path | None = None) -> list[str]:
        """The command as run: `karl` through this Python, placeholders replaced."""
        out = self.words(savoias, results, figures, subset)
        if out[0] == "karl":
            return [sys.executable, "-m", "karl_cli", *out[1:]]
        if out[0] == "python":
            return [sys.executable, *out[1:]]
        raise ValueError(f"run {self.name}: not a karl or python command: {self.command}")

    def words(self, savoias: Path | None = None, results: Path = RESULTS, figures: Path = FIGURES,
              subset: Path | None = None) -> list[str]:
        """The command's words with docs/results, docs/figures and the Savoias placeholders replaced."""
        args = shlex.split(self.command)
        out = []
        for a in args:
            a = a.replace("docs/results", _short(results)).replace("docs/figures", _short(figures))
            if subset is not None and a.startswith("savoias-dev-subset"):
                a = str(subset) + a[len("savoias-dev-subset"):]
            elif savoias is not None and a.startswith(SAVOIAS_TOKEN):
                a = str(savoias) + a[len(SAVOIAS_TOKEN):]
            out.append(a)
        return out


def shipped_models() -> tuple[str, ...]:
    """The models `--weights` names (the correlate and compare runs cover each): the registry's
    shipped entries, the default first."""
    from karl_cli.registry import shipped_models as names
    return tuple(names())


def _runs() -> dict[str, Run]:
    models = shipped_models()
    correlate = [Run(f"correlate-{m}", f"karl correlate savoias-dev --weights {m}"
                     + (" --baselines all" if i == 0 else "") + f" --out docs/results/correlate-{m}.csv",
                     (f"correlate-{m}.csv",), savoias=True) for i, m in enumerate(models)]
    return {r.name: r for r in (
        Run("examples", "karl complexity examples/ --eps 0.03 --eps 0.05 --eps 0.09 --eps 0.12 "
            "--csv docs/results/examples.csv", ("examples.csv",), cheap=True),
        *correlate,
        Run("compare", "karl compare savoias-dev-subset/ " + " ".join(f"-w {m}" for m in models)
            + " --csv docs/results/compare.csv", ("compare.csv", "compare-images.txt"), savoias=True),
        Run("throughput", "python benchmarks/throughput.py savoias-dev/Images --limit 200 --repeats 3 --workers 0 "
            "--methods single,kc_only,decoder_check --json docs/results/throughput.json", ("throughput.json",),
            savoias=True),
        Run("threads", "python benchmarks/throughput.py savoias-dev/Images --limit 200 --repeats 3 --workers 0 "
            "--threads-sweep 1,2 --project-cores 16 --json docs/results/threads.json", ("threads.json",),
            savoias=True),
        Run("noise", "karl analyze noise --csv docs/results/noise.csv --plot docs/figures", ("noise.csv",),
            keep_output=True),
        Run("structure", "karl analyze structure --csv docs/results/structure.csv --plot docs/figures",
            ("structure.csv",), cheap=True, keep_output=True),
        Run("familiarity", "karl analyze familiarity examples/ --csv docs/results/familiarity.csv "
            "--plot docs/figures", ("familiarity.csv",), keep_output=True),
        Run("map", "karl analyze map examples/shapes_few.png --csv docs/results/map.csv --plot docs/figures",
            ("map.csv",), keep_output=True),
        Run("profile", "karl analyze profile savoias-dev/Images --no-curve --sample 100 --ratings savoias-dev "
            "--csv docs/results/profile.csv", ("profile.csv",), savoias=True, keep_output=True),
    )}


RUNS: dict[str, Run] = _runs()


def _short(path: Path) -> str:
    """A path as a command names it: relative to the repository when inside it (commands run there)."""
    return os.path.relpath(path, ROOT) if path.resolve().is_relative_to(ROOT) else str(path)


def machine() -> dict:
    """What a figure was measured on (named beside every table)."""
    import torch

    cpu = platform.machine()
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo", encoding="utf-8")
                    if ln.lower().startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None}


def git_commit() -> str:
    res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "karl_cli", "weights"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return res.stdout.strip() + ("+changes" if dirty else "")


def make_subset(savoias: Path, folder: Path) -> list[str]:
    """The compare subset: every COMPARE_EVERY-th image of the dev half's sorted images, the first
    COMPARE_IMAGES, linked into one folder; returns their paths relative to ``savoias``."""
    from karl_cli.io.images import image_suffixes

    images = sorted(p for p in (savoias / "Images").rglob("*") if p.suffix.lower() in image_suffixes())
    chosen = images[::COMPARE_EVERY][:COMPARE_IMAGES]
    folder.mkdir(parents=True, exist_ok=True)
    for p in chosen:
        (folder / f"{p.parent.name.replace(' ', '_')}__{p.name}").symlink_to(p)
    return [p.relative_to(savoias).as_posix() for p in chosen]


def execute(run: Run, savoias: Path | None, results: Path = RESULTS, figures: Path = FIGURES) -> dict:
    """Run one documented command, writing its outputs into ``results``/``figures``; returns its
    manifest entry. Raises RuntimeError with the command's output when it fails."""
    if run.savoias and (savoias is None or not savoias.is_dir()):
        raise RuntimeError(f"{run.name} needs the Savoias dev half: pass --savoias PATH")
    results.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subset = None
        if "savoias-dev-subset" in run.command:
            subset = Path(tmp) / "savoias-dev-subset"
            listed = make_subset(savoias, subset)
            (results / "compare-images.txt").write_text("\n".join(listed) + "\n", encoding="utf-8")
        argv = run.argv(savoias, results, figures, subset)
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "KARL_CACHE_DIR": str(Path(tmp) / "cache")}
        info = {"command": run.command, "machine": machine(), "commit": git_commit(),
                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        t0 = time.perf_counter()
        res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        info["wall_s"] = round(time.perf_counter() - t0, 1)
    if res.returncode != 0:
        raise RuntimeError(f"{run.command} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    for pdf in figures.glob("*.pdf"):        # the studies write PNG + PDF; the docs show the PNGs
        pdf.unlink()
    if run.keep_output:
        keep_output(run.name, res.stdout + res.stderr, results)
    return info


def keep_output(name: str, text: str, results: Path = RESULTS) -> None:
    """Store a command's terminal output as results/NAME.txt, without its progress lines (they vary)."""
    lines = [ln.rstrip() for ln in text.splitlines() if not re.search(r"\d+/\d+ \(\d+ %\), .*elapsed", ln)]
    (results / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# --- rendering helpers ------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list], align: str | None = None) -> str:
    """A Markdown table; ``align``: one 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def g(x: float, digits: int = 2) -> str:
    """A number as the docs print it: '–' for NaN, a true minus sign."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}".replace("-", "−")


def provenance(names: list[str], manifest: dict) -> str:
    """One line under a table: which command(s) made it, where and when."""
    parts = []
    for n in names:
        m = manifest.get(n)
        if m is None:
            parts.append(f"`{RUNS[n].command}`: not run yet")
            continue
        mc = m["machine"]
        where = mc["cuda"] or f"{mc['cores']}-core {mc['cpu']}, CPU"
        parts.append(f"`{m['command']}` — {where}, torch {mc['torch']}, load {mc['load']}, "
                     f"{m['wall_s']:g} s wall, karl {m['commit']}, {m['date']}")
    return "<sub>Made by " + "; ".join(parts) + ".</sub>"


def output_lines(name: str, results: Path, prefix: str = "• ") -> list[str]:
    path = results / f"{name}.txt"
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith(prefix)] if path.is_file() else []


def bullets(lines: list[str]) -> str:
    """The command's findings lines as a Markdown list (after a blank line), or nothing."""
    return "".join(f"\n- {ln[2:]}" for ln in lines).replace("\n", "\n\n", 1) if lines else ""


# --- the tables ----------------------------------------------------------------------------------------
def t_examples(results: Path) -> str:
    df = pd.read_csv(results / "examples.csv")
    df["name"] = df["path"].map(lambda p: Path(p).name)
    eps = sorted(df["eps"].unique())
    order = df[df["eps"] == eps[0]].sort_values(["kc", "name"])["name"].tolist()
    rows = []
    for name in order:
        r = df[df["name"] == name].set_index("eps")
        rows.append([f"`{name}`"] + [f"{int(r.loc[e, 'kc'])}" + _miss(r.loc[e], e) for e in eps])
    table = md_table(["image"] + [f"KC ε={e:g}" for e in eps], rows)
    return (table + "\n\n\\* even all T_max tokens miss ε (the check's L1, `l1` or `code_l1`, > ε); † the single pass stopped short: its kept tokens"
            " miss ε where a few more would not.")


def _miss(row: pd.Series, eps: float) -> str:
    # The row's check: the decoder's l1 where it ran, else the code's own reconstruction (code_l1).
    l1 = row["l1"] if pd.notna(row["l1"]) or "code_l1" not in row.index else row["code_l1"]
    if l1 <= eps:
        return ""
    return "*" if row["kc"] >= row["max_tokens"] else "†"


def _correlate_frame(results: Path, model: str) -> pd.DataFrame | None:
    path = results / f"correlate-{model}.csv"
    return pd.read_csv(path, keep_default_na=True) if path.is_file() else None


def _cell(df: pd.DataFrame, pooled: bool, category: str, method: str, eps: float | None = None,
          ci: bool = True, key: str = "spearman") -> str:
    sel = df[(df["pooled"] == pooled) & (df["method"] == method)]
    if not pooled:
        sel = sel[sel["category"] == category]
    if eps is not None:
        sel = sel[(sel["eps"] - eps).abs() < 1e-9]
    if sel.empty:
        return "–"
    r = sel.iloc[0]
    num = g if key == "spearman" else signed      # a difference carries its sign
    s = num(r[key])
    if ci and math.isfinite(r[f"{key}_lo"]):
        s += f" [{num(r[f'{key}_lo'])}, {num(r[f'{key}_hi'])}]"
    return s


def signed(x: float) -> str:
    return g(x) if x < 0 or math.isnan(x) else "+" + g(x)


def kc_method(df: pd.DataFrame) -> str:
    """The results name of a model's KC: `karl_kc` for the single pass, `karl_search_kc` for ALIT."""
    kcs = [m for m in dict.fromkeys(df["method"]) if str(m).startswith("karl_") and str(m).endswith("_kc")]
    return "karl_kc" if "karl_kc" in kcs else kcs[0]


def _groups(df: pd.DataFrame) -> list[tuple[bool, str]]:
    cats = [c for c in dict.fromkeys(df.loc[~df["pooled"], "category"])]
    return [(False, c) for c in cats] + [(True, "")]


def _n(df: pd.DataFrame, pooled: bool, cat: str) -> int:
    sel = df[(df["pooled"] == pooled) & (df["method"] == "karl_kc")]
    if not pooled:
        sel = sel[sel["category"] == cat]
    return int(sel["n"].iloc[0])


def t_savoias(results: Path) -> str:
    models = [m for m in shipped_models() if _correlate_frame(results, m) is not None]
    ref = _correlate_frame(results, models[0])
    eps = float(ref.loc[ref["method"] == "karl_kc", "eps"].iloc[0])
    header = ["category", "n"] + [f"`{m}` KC" + (" (search)" if kc_method(_correlate_frame(results, m)) != "karl_kc"
                                                  else "") for m in models] + ["JPEG bytes/px", "PNG bytes/px",
                                                                     f"`{models[0]}` − JPEG [paired CI]"]
    rows = []
    for pooled, cat in _groups(ref):
        row = ["**all (pooled)**" if pooled else cat, _n(ref, pooled, cat)]
        row += [_cell(f, pooled, cat, kc_method(f), eps) for f in (_correlate_frame(results, m) for m in models)]
        row += [_cell(ref, pooled, cat, "jpeg_bpp"), _cell(ref, pooled, cat, "png_bpp"),
                _cell(ref, pooled, cat, "karl_kc", eps, key="vs_jpeg")]
        rows.append(row)
    return (f"Spearman ρ with the human ratings [95 % bootstrap CI], ε = {eps:g}, the Savoias dev half:\n\n"
            + md_table(header, rows))


def t_battery(results: Path) -> str:
    from karl_cli.scoring.baselines import REGISTRY

    df = _correlate_frame(results, shipped_models()[0])
    eps = float(df.loc[df["method"] == "karl_kc", "eps"].iloc[0])
    names = [b for b in REGISTRY if (df["method"] == b).any()]
    header = ["category", "KC"] + [REGISTRY[b].label for b in names] + ["best baseline", "KC − best [paired CI]"]
    align = "lr" + "r" * len(names) + "lr"
    rows = []
    for pooled, cat in _groups(df):
        vals = [_cell(df, pooled, cat, "karl_kc", eps, ci=False)] + [_cell(df, pooled, cat, b, ci=False) for b in names]
        nums = [float(v.replace("−", "-")) if v != "–" else -9 for v in vals]
        top = max(nums)
        vals = [f"**{v}**" if n == top else v for v, n in zip(vals, nums)]
        sel = df[(df["pooled"] == pooled) & (df["method"] == "karl_kc")]
        sel = sel if pooled else sel[sel["category"] == cat]
        best = sel["best_baseline"].iloc[0]
        rows.append(["**all (pooled)**" if pooled else cat, *vals, REGISTRY[best].label if best in REGISTRY else "–",
                     _cell(df, pooled, cat, "karl_kc", eps, key="vs_best")])
    return (f"Spearman ρ with the human ratings, ε = {eps:g} (CIs of every ρ are in "
            f"`docs/results/correlate-{shipped_models()[0]}.csv`); bold: the best of the row.\n\n"
            + md_table(header, rows, align))


def t_compare(results: Path) -> str:
    df = pd.read_csv(results / "compare.csv")
    rows = [[f"{r.eps:g}", f"`{r.model}`", r.method, g(r.tokens, 1), f"{100 * r.over_target:.0f} %", g(r.l1, 4),
             g(r.psnr, 2), g(r.ssim, 3), g(r.encoder_runs, 1), g(r.decoder_runs, 1), g(1000 * r.sec_per_image, 1)]
            for r in df.itertuples()]
    n = int(df["images"].iloc[0])
    return (f"{n} Savoias dev images (every {COMPARE_EVERY}th of the sorted dev half, listed in "
            "`docs/results/compare-images.txt`):\n\n"
            + md_table(["ε", "model", "method", "tokens", "over ε", "L1", "PSNR", "SSIM", "encoder runs",
                        "decoder runs", "ms/image"], rows, "lllrrrrrrrr"))


def t_throughput(results: Path) -> str:
    d = json.loads((results / "throughput.json").read_text(encoding="utf-8"))
    t = d["throughput"]
    label = {"decode_only": "decode only (open + convert + resize)", "kc_only": "`karl complexity --no-l1` (KC only)",
             "single": "`karl complexity` (KC + its default check, `code_l1`)",
             "decoder_check": "`karl complexity --check decoder` (KC + `l1`)", "search": "`--method search`",
             "prefix": "`--method prefix`"}
    dec = t["methods"]["decode_only"]["images_per_s"]
    rows = []
    for m in ("decode_only", "kc_only", "single", "decoder_check", "search", "prefix"):
        e = t["methods"].get(m)
        if e is None:
            continue
        runs = "–" if m == "decode_only" else f"{g(e['encoder_runs'], 1)} + {g(e['decoder_runs'], 1)}"
        rows.append([label[m], g(e["images_per_s"], 1), f"{100 * e['images_per_s'] / dec:.0f} %",
                     g(e["cpu_ms_per_image"], 1), runs])
    what = {"kc_only": "for KC alone", "single": "with the default check", "decoder_check": "with the decoder's check"}
    hours = {m: 1e6 / t["methods"][m]["images_per_s"] / 3600 for m in what if m in t["methods"]}
    million = ", ".join(f"{h:.1f} h {what[m]}" for m, h in hours.items())
    return (f"{t['images']} Savoias dev images, ε {d['eps']:g}, batch {d['batch_size']}, {d['workers']} loader "
            f"workers, {d['machine']['torch_threads']} torch threads, {d['repeats']} run(s):\n\n"
            + md_table(["", "images/s", "of decode-only", "CPU ms/image", "encoder + decoder runs"], rows)
            + f"\n\nAt these rates a million images take {million} on this machine at the load named below.")


def t_threads(results: Path) -> str:
    p = json.loads((results / "threads.json").read_text(encoding="utf-8"))["profile"]
    label = {"kc_only": "`--no-l1`", "single": "default check", "decoder_check": "`--check decoder`"}
    rows = []
    for e in p["entries"]:
        dec = e["modes"]["decode_only"]["images_per_s"]
        for m, v in e["modes"].items():
            if m == "decode_only":
                continue
            st = v["stages_ms_per_image"]
            rows.append([label.get(m, m), f"{e['threads']['torch']} / {e['threads']['numba']}",
                         g(v["images_per_s"], 1), f"{100 * v['images_per_s'] / dec:.0f} %", g(v["cpu_ms_per_image"], 2),
                         g(st["decode_images"], 2), g(st["kernel_order"] + st["kernel_prefix_l1"], 2),
                         g(st["encoder"] + st["decoder"], 2), g(st["copies"] + st["rest"], 2)])
    measured = md_table(["", "torch / numba threads", "images/s", "of decode-only", "CPU ms/image", "decode ms",
                         "kernels ms", "networks ms", "copies + rest ms"], rows)
    pr = p["projection"]
    proj = []
    for m, q in pr["modes"].items():
        for target in [k for k in ("cpu", "gpu") if k in q]:
            t = q[target]
            proj.append([label.get(m, m), f"{pr['cores']} cores" + (" + GPU" if target == "gpu" else ""),
                         str(t["workers"]), g(t["main_process_ms_per_image"], 2), f"{t['images_per_s']:.0f}", t["bound"]])
    projected = md_table(["", "machine", "loader workers", "main process ms/image", "images/s", "bound by"], proj)
    hows = sorted({f["how"] for q in pr["modes"].values() for f in q["fit"].values()} - {"fit"})
    return (f"{p['images']} Savoias dev images, ε 0.05, medians of {p['repeats']} runs; stage ms/image from serial "
            "profiled passes, images/s from plain runs (the loader thread decoding ahead):\n\n" + measured
            + f"\n\nProjected to {pr['cores']} cores from these stage times (computed by the script):\n\n" + projected
            + "\n\nAssumptions, as the script prints them:\n\n" + "\n".join(f"- {a}" for a in [*pr["assumptions"], *hows]))


def t_noise(results: Path) -> str:
    df = pd.read_csv(results / "noise.csv")
    med = df.groupby(["kind", "strength", "where", "eps"])["kc"].median()
    eps = sorted(df["eps"].unique())
    rows = []
    for (kind, s) in dict.fromkeys((k, s) for k, s, _, _ in med.index):
        rows.append([kind, f"{s:g}"] + [f"{med[kind, s, 'input', e]:g} / {med[kind, s, 'image', e]:g}" for e in eps])
    return (md_table(["noise", "strength"] + [f"median KC ε={e:g} (input / image)" for e in eps], rows, "llrrr")
            + bullets(output_lines("noise", results)))


def t_structure(results: Path) -> str:
    df = pd.read_csv(results / "structure.csv")
    eps = sorted(df["eps"].unique())
    med = df.groupby(["step_index", "step", "eps"])["kc"].median()
    rows = [[step] + [f"{med[i, step, e]:g}" for e in eps] for i, step in dict.fromkeys((i, s) for i, s, _ in med.index)]
    orig = df[df["step"] == "original"].pivot_table(index="source", columns="eps", values="kc", sort=False)
    per_source = md_table(["original image"] + [f"KC ε={e:g}" for e in eps],
                          [[src] + [f"{orig.loc[src, e]:g}" for e in eps] for src in orig.index])
    return (md_table(["step"] + [f"median KC ε={e:g}" for e in eps], rows) + "\n\n" + per_source
            + bullets(output_lines("structure", results)))


def t_familiarity(results: Path) -> str:
    df = pd.read_csv(results / "familiarity.csv")
    eps = sorted(df["eps"].unique())
    med = df.groupby(["group", "eps"])["kc"].median()
    groups = list(dict.fromkeys(df["group"]))
    rows = [[gr] + [f"{med[gr, e]:g}" for e in eps] for gr in groups]
    return (md_table(["images", *[f"median KC ε={e:g}" for e in eps]], rows)
            + bullets(output_lines("familiarity", results)))


def t_map(results: Path) -> str:
    df = pd.read_csv(results / "map.csv")
    eps = sorted(df["eps"].unique())
    rows = []
    for e in eps:
        b = df[df["eps"] == e]["budget"]
        rows.append([f"{e:g}", f"{b.median():g}", f"{b.max():g}", f"{b.isna().sum()}"])
    return (md_table(["ε", "median block budget", "largest block budget", "blocks never meeting ε"], rows)
            + bullets(output_lines("map", results)))


def terminal_table(name: str, title: str, results: Path) -> tuple[list[str], list[list[str]]]:
    """A table the command printed (rich box drawing) under a title line starting with ``title``:
    (header, rows)."""
    lines = (results / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    header, rows = None, []
    for ln in lines[start + 1:]:
        if ln.startswith("┃") and header is None:
            header = [c.strip() for c in ln.strip("┃").split("┃")]
        elif ln.startswith("│"):
            rows.append([c.strip() for c in ln.strip("│").split("│")])
        elif ln.startswith("└"):
            break
    return header, rows


def t_profile(results: Path) -> str:
    header, rows = terminal_table("profile", "Spearman ρ with the ratings", results)
    cols = {h: i for i, h in enumerate(header)}
    out = [[("**all (pooled)**" if r[0] == "pooled" else r[0]), r[cols["n"]], g(float(r[cols["rho_area"]])), g(float(r[cols["rho_kc"]])),
            f"{signed(float(r[cols['delta']]))} [{signed(float(r[cols['delta_lo']]))}, {signed(float(r[cols['delta_hi']]))}]"]
           for r in rows]
    return ("Spearman ρ with the Savoias ratings of `kc_area` and of KC at ε 0.03, and their difference with a "
            "paired bootstrap 95 % CI:\n\n"
            + md_table(["category", "n", "ρ(kc_area)", "ρ(KC ε=0.03)", "difference [CI]"], out)
            + bullets(output_lines("profile", results)))


def t_models(results: Path) -> str:
    """Live: the shipped models as `--weights` names them."""
    from karl_cli.models.pretrained import load, weights_path

    rows = []
    for name in shipped_models():
        m = load(name)
        c = m.config
        size = sum(f.stat().st_size for f in weights_path(name).iterdir()) / 2 ** 20
        params = sum(p.numel() for p in m.parameters()) / 1e6
        thr = getattr(c, "halt_threshold", None)
        rows.append([f"`{name}`", c.arch, c.code, f"{c.resolution}", f"{c.max_tokens}", f"{c.token_step}",
                     f"{thr:g}" if thr is not None and c.arch == "karl" else "–", f"{params:.1f} M", f"{size:.1f} MiB"])
    return md_table(["name", "arch", "code", "input px", "T_max", "token step", "halting threshold", "parameters",
                     "on disk"], rows, "lllrrrrrr")


def t_presets(results: Path) -> str:
    """Live: `karl train --preset` names."""
    from karl_cli.models.config import PRESETS
    from karl_cli.models.pretrained import build_model

    rows = []
    for name, c in PRESETS.items():
        params = sum(p.numel() for p in build_model(c).parameters()) / 1e6
        rows.append([f"`{name}`", c.arch, c.code, f"{c.resolution}", f"{c.max_tokens}", f"{c.token_step}",
                     f"{c.width} × {c.enc_depth}", f"{c.halt_threshold:g}", f"{params:.2f} M"])
    return md_table(["preset", "arch", "code", "px", "T_max", "token step", "encoder width × blocks",
                     "halting threshold", "parameters"], rows, "lllrrrrrr")


def t_options(command: str) -> Callable[[Path], str]:
    """Live: a command's options as its --help states them."""
    def render(results: Path) -> str:
        import typer.main

        from karl_cli.cli import app

        cmd = typer.main.get_command(app)
        for part in command.split():
            cmd = cmd.commands[part]
        rows = []
        for p in cmd.params:
            if p.name == "help":
                continue
            if p.param_type_name == "argument":
                names = f"`{p.name.upper()}`" + ("…" if p.nargs == -1 else "")
            else:
                names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            text = (getattr(p, "help", None) or "").replace("|", "\\|").replace("\n", " ")
            default = p.default
            if getattr(p, "secondary_opts", None) and isinstance(default, bool):
                default = p.opts[0] if default else p.secondary_opts[0]
            shown = ("" if default in (None, (), [], False, True) or callable(default) or p.required
                     else f" (default `{default}`)")
            if shown and str(default) in text:
                shown = ""
            rows.append([names, ("**required.** " if p.required else "") + text + shown])
        return md_table(["argument / option", "meaning"], rows, "ll")
    return render


def t_runtimes(results: Path) -> str:
    manifest = read_manifest(results / "manifest.json")
    rows = [[f"`{m['command']}`", f"{m['wall_s']:g} s", m["machine"]["load"], m["date"]]
            for n, m in manifest.items()]
    return md_table(["command", "wall time", "load average", "when"], rows, "lrrl")


@dataclass(frozen=True)
class Table:
    render: Callable[[Path], str]
    runs: tuple[str, ...] = ()      # the runs it reads (empty: rendered live)


def _commands() -> list[str]:
    import typer.main

    from karl_cli.cli import app

    group = typer.main.get_command(app)
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out += [f"{name} {sub}" for sub in cmd.commands]
        else:
            out.append(name)
    return out


def tables() -> dict[str, Table]:
    t = {
        "examples": Table(t_examples, ("examples",)),
        "savoias": Table(t_savoias, tuple(f"correlate-{m}" for m in shipped_models() if f"correlate-{m}" in RUNS)),
        "battery": Table(t_battery, ("correlate-karl-small",)),
        "compare": Table(t_compare, ("compare",)),
        "throughput": Table(t_throughput, ("throughput",)),
        "threads": Table(t_threads, ("threads",)),
        "noise": Table(t_noise, ("noise",)),
        "structure": Table(t_structure, ("structure",)),
        "familiarity": Table(t_familiarity, ("familiarity",)),
        "map": Table(t_map, ("map",)),
        "profile": Table(t_profile, ("profile",)),
        "runtimes": Table(t_runtimes),
        "models": Table(t_models),
        "presets": Table(t_presets),
    }
    for c in _commands():
        t["options-" + c.replace(" ", "-")] = Table(t_options(c))
    return t


def render_block(name: str, results: Path = RESULTS, manifest: dict | None = None) -> str:
    """The text between a table's markers: its body, then (for measured tables) the command line(s)
    and where they ran."""
    table = tables()[name]
    missing = [f for r in table.runs for f in RUNS[r].outputs if not (results / f).is_file()]
    body = f"(not run yet: {', '.join(missing)} missing)" if missing else table.render(results)
    if table.runs:
        manifest = read_manifest(results / "manifest.json") if manifest is None else manifest
        body += "\n\n" + provenance(list(table.runs), manifest)
    return body.rstrip("\n") + "\n"


def rewrite(check: bool = False) -> list[str]:
    """Re-render every marked block of every doc; returns the blocks that differ (and, unless
    ``check``, rewrites them)."""
    known = tables()
    stale = []
    for doc in doc_files():
        text = doc.read_text(encoding="utf-8")

        def sub(m: re.Match) -> str:
            name = m.group("name")
            if name not in known:
                raise SystemExit(f"{doc.name}: unknown table {name!r}")
            new = render_block(name)
            if new != m.group("body"):
                stale.append(f"{doc.relative_to(ROOT)}:{name}")
            return m.group(1) + new + m.group(4)

        new_text = BLOCK.sub(sub, text)
        if not check and new_text != text:
            doc.write_text(new_text, encoding="utf-8")
    return stale


def default_savoias() -> Path | None:
    env = os.environ.get("KARL_SAVOIAS")
    guess = Path(env) if env else ROOT.parent / "shared" / "data" / "savoias-dev"
    if not guess.is_dir():
        guess = Path("/work/shared/data/savoias-dev")
    return guess if guess.is_dir() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="docs/generate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="Comma list of runs to execute (default: all; see RUNS).")
    p.add_argument("--skip-savoias", action="store_true", help="Execute only the runs that need no Savoias data.")
    p.add_argument("--render", action="store_true", help="Execute nothing; re-render the docs from docs/results/.")
    p.add_argument("--check", action="store_true", help="Execute nothing; exit 1 if a doc's table is out of date.")
    p.add_argument("--savoias", type=Path, default=None, help="The Savoias dev half (default $KARL_SAVOIAS).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check:
        stale = rewrite(check=True)
        for s in stale:
            print(f"out of date: {s}")
        return 1 if stale else 0
    if not args.render:
        names = args.only.split(",") if args.only else list(RUNS)
        unknown = [n for n in names if n not in RUNS]
        if unknown:
            raise SystemExit(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
        savoias = args.savoias or default_savoias()
        manifest = read_manifest()
        for n in names:
            run = RUNS[n]
            if run.savoias and args.skip_savoias:
                continue
            print(f"running {n}: {run.command}", flush=True)
            manifest[n] = execute(run, savoias)
            print(f"  {manifest[n]['wall_s']} s", flush=True)
            MANIFEST.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    stale = rewrite()
    print(f"rewrote {len(stale)} blocks" + (": " + ", ".join(stale) if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

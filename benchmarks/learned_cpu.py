#!/usr/bin/env python
"""The learned KARL on this CPU (issue #26): train it, and measure whether its single pass tracks its
own oracle on images it never saw.

    python benchmarks/learned_cpu.py split  --split DIR [--data FOLDER ...]
    python benchmarks/learned_cpu.py train  --split DIR --out RUN [--preset pca-small] [--minutes 80] [--resume]
    python benchmarks/learned_cpu.py paper-head --split DIR --weights W --out W_PAPER [--samples 1024]
    python benchmarks/learned_cpu.py measure --weights W [--weights W2 ...] --split DIR
                                             [--savoias-dev DIR] [--limit 150] [--json OUT.json]

``split``: the training photos (default: ../shared/data's imagenet-sample and debian-photos), sorted,
every tenth held out: DIR/train and DIR/heldout hold links to them (deterministic; Savoias is never
among them).
``train``: ``training.trainer.train`` on DIR/train with the karl-learned-small recipe (below): the
PCA start is fitted on DIR/train's crops, then the two-phase objective with each image's T*
(``training/objectives.py``). ``--resume`` continues a stopped run on the same schedule.
``paper-head``: the paper's halting head (it reads the encoder's outputs only, ``halt_reads_code``
false) on a trained model's frozen trunk, fitted by ``karl calibrate``'s procedure
(``training.calibration``) on DIR/train: what the encoder's features alone tell about KC.
``measure``: for each ``--weights``, the single pass vs ``--method search`` at ε 0.05 and 0.09 on
DIR/heldout (the model's resolution) and on ``--limit`` Savoias dev images: Spearman ρ
between single-pass and oracle KC (target >= 0.9), token ratio single/oracle (<= 1.10), misses of ε
minus the oracle's (<= +5 points), and the spread of KC (it must vary). Prints a markdown table.

Not a timed test: the CPU is shared; run it in the background under ``nice``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import karl_cli  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
import quality  # noqa: E402  (benchmarks/quality.py: the measurements)

from karl_cli.models.config import preset  # noqa: E402
from karl_cli.training.data import training_files  # noqa: E402
from karl_cli.training.trainer import TrainConfig, train  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():     # a worktree under /work/wt/NAME
    SHARED = Path("/work/shared/data")
EPS = (0.05, 0.09)
HELD_OUT_EVERY = 10
# The karl-learned-small recipe (weights/karl-learned-small/model_card.md): a schedule a loaded
# 2-core CPU finishes in about 80 minutes, EMA short enough for it.
RECIPE = dict(steps=240, batch_size=16, lr=1e-3, warmup_steps=20, checkpoint_every=20, ema_decay=0.98,
              halt_warmup=40, label_decodes=5, seed=0)
TARGETS = {"spearman": 0.9, "ratio": 1.10, "extra_misses": 0.05}


def split(folder: Path, data: Sequence[str]) -> tuple[Path, Path]:
    """DIR/train and DIR/heldout: links to the sorted training photos, every tenth held out."""
    tr, ho = folder / "train", folder / "heldout"
    if tr.is_dir() and ho.is_dir():
        return tr, ho
    tr.mkdir(parents=True)
    ho.mkdir(parents=True)
    for i, f in enumerate(training_files(data)):
        name = Path(f).resolve().relative_to(Path(os.path.commonpath(data)).resolve()).as_posix().replace("/", "__")
        os.symlink(Path(f).resolve(), (ho if i % HELD_OUT_EVERY == 0 else tr) / name)
    return tr, ho


def measure(weights: str, folder: str, limit: int | None, label: str, batch: int = 32) -> list[dict[str, Any]]:
    """Single pass vs ``--method search`` at each ε in ``EPS`` for one model on one folder's images
    (``limit`` spread over the sorted list): KC of both, their Spearman ρ and spread, and the share of
    images whose reconstruction misses ε (the single pass's kept tokens; the search's T_max when no
    budget meets ε). The quantities of ``karl compare`` and benchmarks/quality.py, computed directly:
    one encoder pass and one decode per ε for the single pass, and the search's sweep."""
    from karl_cli.analysis.stats import spearman
    from karl_cli.io.images import load_images
    from karl_cli.models.pretrained import load
    from karl_cli.scoring.measure import collect_inputs
    from karl_cli.scoring.oracle import sweep

    model = load(weights).eval()
    paths = [f.path for f in quality.spread([f for f in collect_inputs([folder]) if not f.error], limit)]
    kc_s, kc_o, miss_s, miss_o = ({e: [] for e in EPS} for _ in range(4))
    t0 = time.perf_counter()
    for i in range(0, len(paths), batch):
        x = load_images(paths[i:i + batch], model.config.resolution)
        with torch.inference_mode():
            for e in EPS:
                enc = model.encode(x, e)
                rec = model.decode(enc)
                kc_s[e] += enc.kc.tolist()
                miss_s[e] += ((rec - x).abs().mean(dim=(1, 2, 3)).double() > e).tolist()
            sw = sweep(model, x, list(EPS), method="search")
            for j, e in enumerate(EPS):
                kc_o[e] += sw.kc[:, j].tolist()
                miss_o[e] += (~sw.met[:, j]).tolist()
    seconds = time.perf_counter() - t0
    rows = []
    for e in EPS:
        s, o = np.array(kc_s[e], float), np.array(kc_o[e], float)
        rows.append({"set": label, "weights": weights, "eps": e, "images": len(s), "spearman": spearman(s, o),
                     "ratio": s.mean() / o.mean(), "kc_single": s.mean(), "kc_oracle": o.mean(),
                     "kc_std": s.std(), "kc_oracle_std": o.std(), "miss_single": float(np.mean(miss_s[e])),
                     "miss_oracle": float(np.mean(miss_o[e])),
                     "extra_misses": float(np.mean(miss_s[e]) - np.mean(miss_o[e])), "seconds": seconds})
    return rows


def paper_head(weights: str, train_dir: str, out: str, samples: int) -> int:
    """The trained model's trunk with the paper's halting head, calibrated on ``train_dir``; saved to ``out``."""
    import dataclasses

    from karl_cli.models.karl import KARL
    from karl_cli.models.pretrained import load, save_pretrained
    from karl_cli.training.calibration import calibrate_halting

    trained = load(weights)
    cfg = dataclasses.replace(trained.config, halt_reads_code=False)
    model = KARL(cfg)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("halting_head.detail_in")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    t0 = time.time()
    rep = calibrate_halting(model, [train_dir], samples=samples)
    card = (f"# {Path(out).name}: the paper's halting head on {weights}'s trunk\n\nThe trunk (PCA start, encoder, "
            f"bottleneck, decoder) of `{weights}`, frozen; a halting head that reads the encoder's outputs only "
            f"(`halt_reads_code` false), fitted on oracle budgets of {samples} crops of {train_dir} "
            f"(`training.calibration`, {time.time() - t0:.0f} s): {rep}.\n")
    save_pretrained(model, out, card=card)
    print(rep)
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | images | ε | ρ(single, oracle) | KC single / oracle | ratio | KC std | misses single / oracle "
            "| meets targets |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = (r["spearman"] >= TARGETS["spearman"] and r["ratio"] <= TARGETS["ratio"]
              and r["extra_misses"] <= TARGETS["extra_misses"] and r["kc_std"] > 0)
        lines.append(f"| {Path(r['weights']).name} | {r['set']} ({r['images']}) | {r['eps']:g} | {r['spearman']:.3f} | "
                     f"{r['kc_single']:.1f} / {r['kc_oracle']:.1f} | {r['ratio']:.3f} | {r['kc_std']:.1f} | "
                     f"{100 * r['miss_single']:.0f} % / {100 * r['miss_oracle']:.0f} % | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("split", "train", "paper-head", "measure"))
    ap.add_argument("--split", required=True, type=Path, help="Folder of the train / held-out links.")
    ap.add_argument("--data", action="append", help="Training folders (default: imagenet-sample, debian-photos).")
    ap.add_argument("--out", help="train: the run folder.")
    ap.add_argument("--preset", default="pca-small")
    ap.add_argument("--minutes", type=float, default=80.0, help="train: wall-clock budget (loading included).")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--samples", type=int, default=1024, help="paper-head: crops to compute oracle budgets on.")
    ap.add_argument("--weights", action="append", help="measure: a model (repeat).")
    ap.add_argument("--savoias-dev", default=str(SHARED / "savoias-dev" / "Images"))
    ap.add_argument("--limit", type=int, default=150, help="measure: Savoias dev images, spread over the list.")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data or [str(SHARED / "imagenet-sample"), str(SHARED / "debian-photos")]
    tr, ho = split(args.split, data)
    if args.mode == "split":
        print(f"{len(list(tr.iterdir()))} training and {len(list(ho.iterdir()))} held-out images under {args.split}")
        return 0
    if args.mode == "train":
        if not args.out:
            ap.error("train needs --out")
        t0 = time.time()

        def on_step(r) -> None:
            if r.step % 10 == 0 or r.step == 1:
                m = r.metrics
                print(f"step {r.step}/{r.total} rec1 {m['rec1']:.4f} rec2 {m['rec2']:.4f} halt {m['halt']:.3f} "
                      f"kept2 {m['kept2']:.1f} needed {m.get('needed', 0):.1f} {m['img_s']:.1f} img/s "
                      f"{time.time() - t0:.0f} s", flush=True)

        tc = None if args.resume else TrainConfig(**RECIPE, max_minutes=args.minutes)
        res = train([str(tr)], args.out, None if args.resume else preset(args.preset), tc, device="cpu",
                    resume=args.resume, on_step=on_step, on_log=lambda s: print(s, flush=True))
        print(f"trained {res.step} of {res.total} steps in {(time.time() - t0) / 60:.1f} min"
              + (f" (stopped by the {res.stopped})" if res.stopped else ""))
        return 0
    if not args.weights:
        ap.error(f"{args.mode} needs --weights")
    if args.mode == "paper-head":
        if not args.out:
            ap.error("paper-head needs --out")
        return paper_head(args.weights[0], str(tr), args.out, args.samples)
    command = "python benchmarks/learned_cpu.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    rows: list[dict[str, Any]] = []
    for w in args.weights:
        for label, folder, limit in (("held-out photos", str(ho), None),
                                     ("Savoias dev", args.savoias_dev, args.limit)):
            rows += measure(w, folder, limit, label)
            print(table(rows[-len(EPS):]), flush=True)
    md = (f"Machine: {quality.machine_line(machine_info('cpu'))}. Command: `{command}`.\n\n" + table(rows))
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(quality._jsonable({"command": command, "rows": rows}), indent=1,
                                              ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

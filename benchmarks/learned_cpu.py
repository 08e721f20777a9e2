#!/usr/bin/env python
"""Does the learned KARL learn on a CPU? Train ``learned-64`` for a wall-clock budget, then measure it.

    python benchmarks/learned_cpu.py [--minutes 22] [--out runs/learned-cpu] [--preset learned-64]
                                     [--steps 200] [--batch-size 16] [--lr 1e-3]
                                     [--data DIR ...] [--held-out DIR] [--limit 100] [--family-size 8]
                                     [--threads N] [--json OUT.json] [--markdown OUT.md]

1. Trains ``--preset`` (KARL with learned tokens) with ``karl_cli.training.trainer.train`` on
   ``--data`` (default: ../shared/data's imagenet-sample and debian-photos) for ``--minutes`` of
   wall clock (``TrainConfig.max_minutes``, what ``karl train --max-minutes`` runs), on a cosine
   schedule over ``--steps`` (warm-up a tenth of them). A run stopped by the budget is a prefix of
   the full schedule: its learning rate had not annealed.
2. Measures the trained (EMA) weights with ``benchmarks/quality.py`` on ``--limit`` images spread
   over ``--held-out`` (default: the Savoias dev images, never trained on): pixel L1 / PSNR / SSIM
   per token budget (prefix decodes conditioned on the smallest ε bin), single pass vs oracle at
   ``--eps`` (default .05/.09/.16: minutes of CPU training do not reach .03), and mean KC per procedural family (constant < gradient < few shapes < many shapes <
   texture < noise; ``karl_cli/io/synthetic.py``). Beside the L1 per budget, the same images
   through the untrained model (same seed), so "it learns" is a comparison, not a claim.
3. Prints the training curve (phase-2 L1 per tenth of the steps) and a README-ready markdown block
   that names the machine and the command.

Not a timed test: the CPU is shared and step times move with its load. Run it once, in the
background, under ``nice``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info  # noqa: E402
import quality  # noqa: E402  (benchmarks/quality.py: the measurements)

from karl_cli.models.config import preset  # noqa: E402
from karl_cli.models.pretrained import build_model  # noqa: E402
from karl_cli.scoring.measure import collect_inputs  # noqa: E402
from karl_cli.training.trainer import METRICS_NAME, TrainConfig, train  # noqa: E402

DEFAULT_EPS = (0.05, 0.09, 0.16)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if not SHARED.is_dir():     # a worktree under /work/wt/NAME
    SHARED = Path("/work/shared/data")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=22.0, help="Wall-clock training budget (loading included).")
    ap.add_argument("--out", default="runs/learned-cpu", help="Run folder (a fresh one; weights, metrics).")
    ap.add_argument("--preset", default="learned-64")
    ap.add_argument("--steps", type=int, default=200, help="Steps the cosine schedule is defined over.")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--data", action="append", help="Training folder (repeat; default: imagenet-sample, "
                                                    "debian-photos under the shared data).")
    ap.add_argument("--held-out", default=str(SHARED / "savoias-dev" / "Images"))
    ap.add_argument("--limit", type=int, default=100, help="Held-out images, spread over the sorted list.")
    ap.add_argument("--family-size", type=int, default=8, help="Procedural images per family.")
    ap.add_argument("--eps", type=float, action="append",
                    help="ε (repeat; default 0.05, 0.09, 0.16: minutes of CPU training do not reach 0.03).")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    return ap.parse_args(argv)


def training_curve(metrics: Path, parts: int = 10) -> list[dict[str, float]]:
    """Mean phase-1/phase-2 L1 and halting BCE over each tenth of the logged steps."""
    rows = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for chunk in np.array_split(np.arange(len(rows)), min(parts, len(rows))):
        sel = [rows[i] for i in chunk]
        out.append({"steps": f"{sel[0]['step']}-{sel[-1]['step']}",
                    **{k: float(np.mean([r[k] for r in sel])) for k in ("rec1", "rec2", "halt")}})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/learned_cpu.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    data = args.data or [str(SHARED / "imagenet-sample"), str(SHARED / "debian-photos")]
    cfg = preset(args.preset)
    tc = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=max(1, args.steps // 10),
                     checkpoint_every=max(1, args.steps // 4), max_minutes=args.minutes)
    t0 = time.perf_counter()

    def on_step(r) -> None:
        if r.step % 10 == 0 or r.step == 1:
            m = r.metrics
            log(f"step {r.step}/{r.total}  rec1 {m['rec1']:.4f}  rec2 {m['rec2']:.4f}  halt {m['halt']:.3f}  "
                f"kept2 {m['kept2']:.1f}  {time.perf_counter() - t0:.0f} s")

    result = train(data, args.out, cfg, tc, device="cpu", on_step=on_step, on_log=log)
    train_seconds = time.perf_counter() - t0
    log(f"trained {result.step} steps in {train_seconds / 60:.1f} min"
        + (f" (stopped by the {result.stopped})" if result.stopped else ""))

    qargs = quality.parse_args([args.held_out, "--weights", args.out, "--limit", str(args.limit),
                                "--family-size", str(args.family_size), "--batch-size", "32", "--device", "cpu"]
                                + [a for e in (args.eps or DEFAULT_EPS) for a in ("--eps", str(e))])
    report, _ = quality.run(qargs, command)
    # The same held-out images through the untrained model (the trainer's seed): the baseline.
    torch.manual_seed(tc.seed)
    untrained = build_model(cfg).eval()
    items = quality.spread([f for f in collect_inputs([args.held_out]) if not f.error], args.limit)
    before = quality.budget_curves(items, untrained, 32, 0, torch.device("cpu"))
    for row, l1 in zip(report["rate_distortion"], before["l1"].mean(0)):
        row["l1_untrained"] = float(l1)
    report["training"] = {"preset": args.preset, "steps_done": result.step, "steps_schedule": result.total,
                          "stopped": result.stopped, "minutes": train_seconds / 60, "batch_size": args.batch_size,
                          "data": data, "curve": training_curve(Path(args.out) / METRICS_NAME)}
    report["machine"] = machine_info("cpu")
    quality.print_report(report)
    md = markdown(report)
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(quality._jsonable(report), indent=1, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(md + "\n", encoding="utf-8")
    return 0


def markdown(report: dict[str, Any]) -> str:
    """The README block: training curve, L1 per budget (trained vs untrained), families, single vs oracle."""
    tr = report["training"]
    lines = [f"Machine: {quality.machine_line(report['machine'])}. Command: `{report['command']}`.", "",
             f"{tr['preset']}: {tr['steps_done']} steps of {tr['batch_size']} crops in {tr['minutes']:.1f} min "
             f"(schedule over {tr['steps_schedule']} steps"
             + (f"; stopped by the {tr['stopped']}" if tr["stopped"] else "") + ").", "",
             "| steps | phase-1 L1 | phase-2 L1 | halting BCE |", "|---|---|---|---|"]
    lines += [f"| {c['steps']} | {c['rec1']:.4f} | {c['rec2']:.4f} | {c['halt']:.3f} |" for c in tr["curve"]]
    lines += ["", f"Held out: {report['images']['ok']} Savoias dev images at {report['model']['resolution']} px.", "",
              "| tokens | L1 untrained | L1 trained | PSNR | SSIM |", "|---|---|---|---|---|"]
    lines += [f"| {r['budget']} | {r['l1_untrained']:.4f} | {r['l1']:.4f} | {r['psnr']:.2f} | {r['ssim']:.3f} |"
              for r in report["rate_distortion"]]
    fam = report["families"]
    eps_list = report["eps"]
    lines += ["", "| family | " + " | ".join(f"KC ε {e:g} (oracle)" for e in eps_list) + " |",
              "|---|" + "---|" * len(eps_list)]
    for row in fam["rows"]:
        lines.append(f"| {row['family']} | " + " | ".join(f"{row['kc'][e]:.1f} ({row['oracle'][e]:.0f})"
                                                          for e in eps_list) + " |")
    lines.append("| order holds (strict) | " + " | ".join(
        ("yes" if fam["order"][e]["strict"] else "no: " + ", ".join(fam["order"][e]["violations"]))
        + f", ρ {fam['order'][e]['spearman']:.2f}" for e in eps_list) + " |")
    lines += ["", "| ε | misses (single) | KC single | KC oracle | ratio | oracle unmet |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['eps']:g} | {100 * r['miss_single']:.0f} % | {r['kc_single']:.1f} | {r['kc_oracle']:.1f} | "
              f"{r['ratio']:.3f} | {100 * r['oracle_unmet']:.0f} % |" for r in report["single_vs_oracle"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

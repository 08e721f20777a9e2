#!/usr/bin/env python
"""Steps of benchmarks/gpu/run.sh: export the trained model into ``--out`` as soon as training
stops (``--weights-only``), and at the end gather the figures; at most 8 files, each under 16 MiB.

    python benchmarks/gpu/collect.py --run RUN_FOLDER --work WORK_FOLDER --out OUT [--preset P] [--weights-only]

``--weights-only`` writes ``karl-<preset>/`` (config.json, model.safetensors with the EMA weights in
fp16, model_card.md: for pca-small-paper ``model_card_template.md`` filled with the trainer's card)
and metrics.jsonl (the training log). Without it: throughput.json (the learned model's throughput,
the wavelet model's profile: benchmarks/throughput.py --profile), summary.md (quality and throughput
in README form) and the figures added to the model card
(exporting the weights first if that step did not run). quality.json and run.log are written by
run.sh itself. Missing inputs (a step that failed) are noted in summary.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"
MAX_FILES = 8
# What the exported card says in place of the figures until the final collect fills them in.
NOT_MEASURED = "(not measured: the run stopped before its evaluation)"
MAX_BYTES = 16 * 2**20


def fp16_weights(run: Path, dest: Path) -> None:
    """config.json, model.safetensors (floating tensors as fp16; karl loads them into fp32 models) and
    model_card.md of a run folder."""
    from safetensors.torch import load_file, save_file   # torch: only where weights are written (start-up time)

    dest.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run / "model.safetensors"))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(dest / "model.safetensors"))
    shutil.copy2(run / "config.json", dest / "config.json")
    (dest / "model.safetensors").chmod(0o644)


def export(run: Path, dest: Path, preset: str, out: Path) -> None:
    """The model (fp16) with its card, and the training log, into ``out``: what must come back even
    if the run is cut before evaluation. The card's figures are a placeholder until the final collect."""
    fp16_weights(run, dest)
    trainer_card = (run / "model_card.md").read_text(encoding="utf-8")
    if preset == "pca-small-paper":   # the recipe's card: model_card_template.md, filled in
        card = TEMPLATE.read_text(encoding="utf-8").replace("TRAINER_CARD", trainer_card.replace("\n# ", "\n### "))
    else:
        card = (trainer_card + "\n## Stored\n\nThe EMA weights in fp16 (karl loads them into an fp32 model).\n\n"
                "## Measured (benchmarks/gpu/run.sh)\n\nFIGURES\n")
    (dest / "model_card.md").write_text(card.replace("FIGURES", NOT_MEASURED), encoding="utf-8")
    if (run / "metrics.jsonl").is_file():
        shutil.copy2(run / "metrics.jsonl", out / "metrics.jsonl")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def throughput_lines(name: str, tp: Any) -> list[str]:
    """One line per model: images/s of each method (benchmarks/throughput.py's JSON), and the batch."""
    try:
        methods = tp["throughput"]["methods"]
        rates = ", ".join(f"{m} {v['images_per_s']:.0f}" for m, v in methods.items())
        return [f"- {name}: images/s {rates} (batch {tp['batch_size']}, {tp['throughput']['images']} images, "
                f"{tp['machine'].get('device')}, median of {tp['repeats']})"]
    except (KeyError, TypeError, ValueError):
        return [f"- {name}: no throughput figures (the step failed)"]


def profile_lines(name: str, tp: Any) -> list[str]:
    """The profile of benchmarks/throughput.py --profile: per thread count and mode, images/s, its
    share of decode-only, ms per stage and the GPU-busy share; then the projection's images/s and bound."""
    try:
        p = tp["profile"]
        lines = [f"- {name}: profile of {p['images']} images, batch {tp['batch_size']}, {tp['workers']} loader "
                 f"workers, {tp['machine'].get('device')}, median of {p['repeats']}"
                 + ("" if tp.get("complete", True) else " (cut short: the thread counts it finished)")]
        for e in p["entries"]:
            dec = e["modes"]["decode_only"]["images_per_s"]
            for m, v in e["modes"].items():
                if m == "decode_only":
                    continue
                stages = ", ".join(f"{k} {ms:.2f}" for k, ms in v["stages_ms_per_image"].items() if ms >= 0.005)
                busy = v.get("gpu", {}).get("busy_share")
                lines.append(f"  - {m}, torch/numba threads {e['threads']['torch']}/{e['threads']['numba']}: "
                             f"{v['images_per_s']:.0f} images/s ({v['images_per_s'] / dec:.2f} of decode-only "
                             f"{dec:.0f}); ms/image: {stages}"
                             + (f"; GPU busy {busy:.0%} of the run" if busy is not None else ""))
        for m, q in p.get("projection", {}).get("modes", {}).items():
            for target, t in q.items():
                if target != "fit":
                    lines.append(f"  - projection, {m} on {p['projection']['cores']} cores"
                                 + (" + GPU" if target == "gpu" else "") + f": {t['images_per_s']:.0f} images/s, "
                                 f"bound by the {t['bound']}")
        return lines
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return [f"- {name}: no profile figures (the step failed)"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--preset", default="pca-small-paper")
    ap.add_argument("--weights-only", action="store_true", help="Export the model and training log only.")
    args = ap.parse_args(argv)
    out, run, work = args.out, args.run, args.work
    dest = out / f"karl-{args.preset}"
    if args.weights_only:
        if not (run / "model.safetensors").is_file():
            print(f"no trained weights in {run}", file=sys.stderr)
            return 1
        export(run, dest, args.preset, out)
        print(f"exported {dest} ({(dest / 'model.safetensors').stat().st_size / 2**20:.2f} MiB) and metrics.jsonl")
        return 0
    notes = []
    summary = [f"# karl GPU run: {args.preset}", ""]
    quality_md = work / "quality.md"
    summary += [quality_md.read_text(encoding="utf-8") if quality_md.is_file() else "(no quality report)", ""]
    tp = {"learned": _read(work / "tp-learned.json"), "wavelet": _read(work / "tp-wavelet.json")}
    (out / "throughput.json").write_text(json.dumps(tp, indent=1) + "\n", encoding="utf-8")
    summary += ["## Throughput (`benchmarks/throughput.py`)", ""]
    summary += throughput_lines("learned", tp["learned"]) + profile_lines("wavelet (karl-small)", tp["wavelet"])
    if (run / "model.safetensors").is_file():
        if not (dest / "model.safetensors").is_file():
            export(run, dest, args.preset, out)
        figures = "\n".join(summary[2:])
        card = (dest / "model_card.md").read_text(encoding="utf-8")
        (dest / "model_card.md").write_text(card.replace(NOT_MEASURED, figures), encoding="utf-8")
    else:
        notes.append("no trained weights: the training step failed")
    summary += [""] + [f"- note: {n}" for n in notes]
    (out / "summary.md").write_text("\n".join(summary) + "\n", encoding="utf-8")
    files = [p for p in out.rglob("*") if p.is_file()]
    big = [f"{p.name} ({p.stat().st_size / 2**20:.1f} MiB)" for p in files if p.stat().st_size >= MAX_BYTES]
    print(f"{len(files)} files in {out}" + (f"; over 16 MiB: {', '.join(big)}" if big else ""))
    return 1 if big or len(files) > MAX_FILES else 0


if __name__ == "__main__":
    sys.exit(main())

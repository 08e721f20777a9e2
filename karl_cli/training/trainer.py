"""The training loop: data, optimiser, schedule, EMA, checkpoints and resume around the step of
``training/objectives.py`` (docs/design.md §3).

Runs on CPU or CUDA and data-parallel under ``torchrun`` (DDP: nccl on CUDA, gloo on CPU). On CUDA:
bf16 autocast, TF32 matmuls, fused AdamW, channels-last images, pinned host memory with non-blocking
copies, and optionally ``torch.compile`` of the transformer blocks and the conv base.

Length: ``steps`` (or ``epochs``) defines the schedule (warm-up, then cosine to ``min_lr_ratio``);
``max_minutes`` is a wall-clock budget that stops the run early, cleanly and resumably. A stopped
run is exactly a prefix of the full run: its learning rate is wherever the cosine over ``steps``
had reached (it is not annealed to the end), and ``--resume`` continues the same schedule.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from karl_cli.io.atomic import atomic_path
from karl_cli.io.outputs import OutputLock, check_new_weights_folder
from karl_cli.models.config import KARLConfig, preset
from karl_cli.models.layers import Block
from karl_cli.training.flags import RECIPE_FLAGS, RESUME_MAY_CHANGE, SIZE_FLAGS
from karl_cli.training.data import CropDataset, batches, batches_per_epoch, training_files
from karl_cli.runtime import resolve_device
from karl_cli.errors import EXIT_INTERRUPTED, KarlError, UsageError
from karl_cli.models.pretrained import WeightsError, build_model, read_state, save_pretrained, weights_path
from karl_cli.training.objectives import training_objective, two_phase_step

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"


class TrainingError(KarlError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


class TrainingInterrupted(KarlError):
    exit_code = EXIT_INTERRUPTED


@dataclass
class TrainConfig:
    """Everything about a run except the model's sizes."""

    steps: int | None = None          # total optimiser steps; or derived from epochs
    epochs: float | None = None
    batch_size: int = 64              # per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int | None = None   # None: DEFAULT_WARMUP, at most a fifth of the run (see warmup_for)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 3.0
    ema_decay: float = 0.999
    halt_weight: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    workers: int = 0
    cache: bool = True
    crop_scale: tuple[float, float] = (0.25, 1.0)
    max_minutes: float | None = None  # wall-clock budget of this process's run (loading included)
    compile: bool = False             # torch.compile the transformer blocks and the conv base

    def __post_init__(self) -> None:
        """Out-of-range settings are usage errors, found before any work (not a crash at step N)."""
        def bad(name: str, v, need: str) -> UsageError:
            return UsageError(f"{name} must be {need}, got {v!r}")

        def finite(v) -> bool:
            return isinstance(v, (int, float)) and math.isfinite(v)

        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise bad("--steps", self.steps, "a whole number >= 1")
        if self.epochs is not None and not (finite(self.epochs) and self.epochs > 0):
            raise bad("--epochs", self.epochs, "a positive number")
        for name, v in (("--batch-size", self.batch_size), ("--checkpoint-every", self.checkpoint_every)):
            if not isinstance(v, int) or v < 1:
                raise bad(name, v, "a whole number >= 1")
        for name, v in (("--warmup", self.warmup_steps), ("--workers", self.workers)):
            if name == "--warmup" and v is None:
                continue
            if not isinstance(v, int) or v < 0:
                raise bad(name, v, "a whole number >= 0")
        if not (finite(self.lr) and self.lr > 0):
            raise bad("--lr", self.lr, "a positive finite number")
        for name, v in (("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip),
                        ("halt_weight", self.halt_weight)):
            if not (finite(v) and v >= 0):
                raise bad(name, v, "a finite number >= 0")
        if not (finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            raise bad("min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        if not (finite(self.ema_decay) and 0 <= self.ema_decay < 1):
            raise bad("ema_decay", self.ema_decay, "in [0, 1)")
        if self.max_minutes is not None and not (finite(self.max_minutes) and self.max_minutes > 0):
            raise bad("--max-minutes", self.max_minutes, "a positive number")


# --- schedule and EMA ----------------------------------------------------------------------------
DEFAULT_WARMUP = 200


def warmup_for(total: int, warmup: int | None) -> int:
    """Warm-up steps of a run of ``total`` steps: ``warmup`` as given, or by default DEFAULT_WARMUP
    capped at a fifth of the run, so that a short run still reaches its peak learning rate."""
    return min(DEFAULT_WARMUP, max(1, total // 5)) if warmup is None else warmup


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to ``min_ratio`` of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of the weights; its warm-up keeps early averages from lagging."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.dtype.is_floating_point]
        # One fused lerp over all float tensors (a per-tensor loop launches ~100 kernels per step on CUDA).
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach().float() for k in floats], 1 - d)
        for k, v in state.items():
            if not v.dtype.is_floating_point:
                self.shadow[k].copy_(v)

    def to(self, device: torch.device) -> None:
        """Keep the averages beside the weights (on CUDA the update then never leaves the GPU)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)


# --- the run -------------------------------------------------------------------------------------


def read_run(out: str | os.PathLike) -> tuple[KARLConfig, TrainConfig, int]:
    """The model config, recipe and step of the run checkpointed in ``out`` (UsageError when there is
    none; KarlError when the checkpoint is not a readable karl checkpoint)."""
    ckpt_path = Path(out) / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise UsageError(f"nothing to resume: {ckpt_path} does not exist")
    state = _load_checkpoint(ckpt_path)
    return state["_model_config"], state["_train_config"], int(state["step"])


def _load_checkpoint(ckpt_path: Path) -> dict:
    # Our own checkpoint; weights_only keeps it from executing anything (a foreign pickle is refused).
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        state["_model_config"] = KARLConfig.from_dict(state["model_config"])
        saved_tc = dict(state["train_config"])
        saved_tc["betas"] = tuple(saved_tc["betas"])
        saved_tc["crop_scale"] = tuple(saved_tc["crop_scale"])
        # A time budget and compilation belong to one invocation, not to the run.
        state["_train_config"] = TrainConfig(**{**saved_tc, "max_minutes": None, "compile": False})
    except KarlError:
        raise
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, KeyError, ...: all mean "not ours"
        raise KarlError(f"cannot resume from {ckpt_path}: not a readable karl checkpoint "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    return state


def resume_conflicts(out: str | os.PathLike, preset_name: str | None = None, sizes: dict | None = None,
                     recipe: dict | None = None) -> list[str]:
    """What the flags given to a resumed run contradict in the run checkpointed in ``out``, one
    phrase per flag naming it (empty: nothing contradicts). ``preset_name``: the --preset given (it
    must describe the run's sizes, with the run's own --arch, --max-tokens, --token-step and
    --code); ``sizes``: KARLConfig fields given by flag (``SIZE_FLAGS``); ``recipe``:
    TrainConfig fields given by flag (``RECIPE_FLAGS``); fields the rule lets change
    (``flags.RESUME_RULE``) are never conflicts."""
    cfg, tc, _ = read_run(out)
    problems = []
    for name, value in (sizes or {}).items():
        if getattr(cfg, name) != value:
            problems.append(f"{SIZE_FLAGS.get(name, name)} {_flag_value(value)} (the run has {_flag_value(getattr(cfg, name))})")
    if preset_name is not None:
        try:
            want = preset(preset_name, **{k: getattr(cfg, k) for k in SIZE_FLAGS})
        except ValueError as e:
            raise UsageError(str(e)) from None
        mine = cfg.to_dict()
        diff = [k for k, v in want.to_dict().items() if k != "halt_threshold" and mine.get(k) != v]
        if diff:
            problems.append(f"--preset {preset_name} (the run's model differs from it in "
                            + ", ".join(f"{k} {mine.get(k)} vs {want.to_dict()[k]}" for k in diff[:3])
                            + (", ..." if len(diff) > 3 else "") + ")")
    for name, value in (recipe or {}).items():
        if name not in RESUME_MAY_CHANGE and getattr(tc, name) != value:
            problems.append(f"{RECIPE_FLAGS.get(name, name)} {_flag_value(value)} (the run has "
                            f"{_flag_value(getattr(tc, name))})")
    return problems


def _flag_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


@dataclass
class TrainResult:
    out: Path                 # the run folder (weights, checkpoint, metrics)
    model: nn.Module          # the trained (non-EMA) model, as this process holds it
    step: int
    total: int = 0            # the steps the schedule is defined over
    stopped: str | None = None   # why the run ended before ``total`` ("time budget"), or None


@dataclass
class StepReport:
    step: int
    total: int
    epoch: int
    metrics: dict


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed(device: torch.device) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _dist_info()


def train(data: list[str], out: str | os.PathLike, model_config: KARLConfig | None = None,
          train_config: TrainConfig | None = None, device: str = "auto", resume: bool = False,
          on_step: Callable[[StepReport], None] | None = None, on_log: Callable[[str], None] | None = None,
          init_from: str | os.PathLike | None = None) -> TrainResult:
    """Train a tokenizer on the image folders in ``data``; weights and checkpoints go to ``out``.

    A new run needs a new or empty ``out`` (``outputs.check_new_weights_folder``); one process writes
    it (``outputs.OutputLock`` on ``out``, held by rank 0 for the whole run: a second ``karl train``
    on the same folder raises ``OutputBusy`` naming the first one's PID).

    ``out`` then holds config.json + model.safetensors (EMA weights) + model_card.md, plus
    checkpoint.pt (for ``resume``) and metrics.jsonl. ``init_from`` starts a new run from the tensors of
    a weights directory (fine-tuning); tensors the architecture has and the file lacks keep their init.
    With ``train_config.max_minutes`` the run stops after the first step that ends past the budget
    (counted from this call, loading included), saves weights and checkpoint, and returns with
    ``stopped="time budget"``; ``resume`` continues it on the same schedule.
    """
    # Every rank of a distributed run is given the same --out; rank 0 is the one that writes it.
    writer = int(os.environ.get("RANK", "0")) == 0
    with OutputLock(out) if writer else contextlib.nullcontext():
        return _train(data, out, model_config, train_config, device, resume, on_step, on_log, init_from)


def _train(data: list[str], out: str | os.PathLike, model_config: KARLConfig | None,
           train_config: TrainConfig | None, device: str, resume: bool,
           on_step: Callable[[StepReport], None] | None, on_log: Callable[[str], None] | None,
           init_from: str | os.PathLike | None) -> TrainResult:
    t_start = time.monotonic()
    out = Path(out)
    log = on_log or (lambda s: None)
    ckpt_path = out / CHECKPOINT_NAME
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise UsageError(f"nothing to resume: {ckpt_path} does not exist")
        if init_from is not None:
            raise UsageError("--init-from starts a new run; it cannot be combined with --resume")
        state = _load_checkpoint(ckpt_path)
        if model_config is not None and model_config.to_dict() != state["_model_config"].to_dict():
            mine, theirs = state["_model_config"].to_dict(), model_config.to_dict()
            diff = [f"{k} {theirs[k]} vs {mine[k]}" for k in mine if mine[k] != theirs.get(k)]
            raise UsageError(f"cannot resume {out}: the given model config differs from the run's ({', '.join(diff[:3])})")
        model_config, tc = state["_model_config"], state["_train_config"]
        if train_config is not None:
            # flags.RESUME_RULE: the recipe is kept; the fields it names come from this invocation.
            length = ({"steps": train_config.steps, "epochs": None} if train_config.steps else
                      {"steps": None, "epochs": train_config.epochs} if train_config.epochs else {})
            tc = dataclasses.replace(tc, workers=train_config.workers, max_minutes=train_config.max_minutes,
                                     compile=train_config.compile, **length)
    else:
        model_config = model_config or preset("small")
        tc = train_config or TrainConfig()
        check_new_weights_folder(out, resume_hint=ckpt_path.exists())

    dev = resolve_device(device)
    rank, world = _init_distributed(dev)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    torch.manual_seed(tc.seed)
    if dev.type == "cuda":
        # TF32 for the fp32 matmuls and convolutions left outside bf16 autocast (optimizer, EMA, losses).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    files = training_files(data)
    dataset = CropDataset(files, model_config.resolution, seed=tc.seed, scale=tc.crop_scale, cache=tc.cache)
    for path, why in dataset.skipped[:5]:
        log(f"skipped unreadable training image {path}: {why}")
    if len(dataset.skipped) > 5:
        log(f"... and {len(dataset.skipped) - 5} more unreadable images skipped")
    per_epoch = batches_per_epoch(len(dataset), tc.batch_size, world)
    if per_epoch < 1:
        raise UsageError(f"{len(dataset)} images are fewer than one batch of {tc.batch_size} per process; "
                         "lower --batch-size")
    total = tc.steps if tc.steps else max(1, round((tc.epochs or 1) * per_epoch))
    if tc.warmup_steps is None:
        tc = dataclasses.replace(tc, warmup_steps=warmup_for(total, None))
    elif tc.warmup_steps > total and state is None:
        log(f"warning: --warmup {tc.warmup_steps} is longer than the run ({total} steps): the learning rate "
            f"reaches only {total / tc.warmup_steps:.0%} of --lr {tc.lr:g}; lower --warmup (or leave it out: "
            f"the default is {DEFAULT_WARMUP}, at most a fifth of the run)")

    model = build_model(model_config).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_module: nn.Module = training_objective(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(loss_module, device_ids=[dev.index] if dev.type == "cuda" else None)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "pos" in name or "token" in name or "embed" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas,
                            fused=dev.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, tc.warmup_steps, tc.min_lr_ratio))
    if init_from is not None and state is None:
        fresh = init_weights(model, init_from)
        log(f"initialised from {init_from}" + (f"; fresh: {', '.join(fresh)}" if fresh else ""))
    elif state is None and model.code is not None:
        # Reading the crops can take minutes on large photos, before the first step's progress.
        def reading(done: int, total: int) -> None:
            if done * 10 // total > (done - 1) * 10 // total:
                log(f"fitting the {model.config.code} code: {done}/{total} training crops read")

        log(f"fitted the {model.config.code} code on {fit_code(model, dataset, progress=reading)} training crops")
    ema = EMA(model, tc.ema_decay)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ema.shadow = state["ema"]
        ema.to(dev)
        step = int(state["step"])
        log(f"resumed at step {step} of {total}")
    if tc.compile:
        compile_model(model)
    autocast_dtype = torch.bfloat16 if dev.type == "cuda" else None
    metrics_path = out / METRICS_NAME
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, step)

    def save(final: bool = False, stopped: str | None = None) -> None:
        if rank != 0:
            return
        with atomic_path(ckpt_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "ema": ema.shadow, "step": step, "model_config": model_config.to_dict(),
                        "train_config": dataclasses.asdict(tc)}, tmp)
        ema_model = build_model(model_config)
        ema.copy_to(ema_model)
        save_pretrained(ema_model, out, card=model_card(model_config, tc, data, len(dataset), step, total, world,
                                                        metrics_path, final, stopped))

    amp_dtype_name = "bf16" if autocast_dtype else "fp32"
    log(f"training {model_config.arch} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) on "
        f"{len(dataset)} images, {dev} {amp_dtype_name}, {world} process(es), {total} steps of "
        f"{tc.batch_size * world} images")
    model.train()
    t_last = time.perf_counter()
    previous_term = _stop_on_sigterm()
    stopped = None
    deadline = None if tc.max_minutes is None else t_start + 60.0 * tc.max_minutes
    try:
        for images in batches(dataset, tc.batch_size, tc.seed, step, total, rank, world, tc.workers,
                              pin_memory=dev.type == "cuda"):
            epoch = step // per_epoch
            images = images.to(dev, non_blocking=True)
            if dev.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            loss, stats = two_phase_step(loss_module, images, step, tc.seed, tc.halt_weight, autocast_dtype)
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {step}; stopped. The last good "
                                    f"checkpoint is {ckpt_path} (try a lower --lr)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            ema.update(model, step)
            step += 1
            now = time.perf_counter()
            row = {"step": step, "epoch": epoch, "loss": loss.item(), "lr": sched.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "img_s": tc.batch_size * world / max(now - t_last, 1e-9),
                   **{k: float(v) for k, v in stats.items()}, "time": time.time()}
            t_last = now
            if rank == 0:
                with open(metrics_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                if on_step:
                    on_step(StepReport(step, total, epoch, row))
            if deadline is not None and _past(deadline, dev, world) and step < total:
                stopped = "time budget"
                break
            if step % tc.checkpoint_every == 0 and step < total:
                save()
        if stopped is None:
            save(final=True)
        else:
            save(stopped=stopped)
            log(f"stopped by the {tc.max_minutes:g}-minute budget at step {step} of {total}; "
                "weights and checkpoint saved, continue with --resume")
    except KeyboardInterrupt:
        save()
        raise TrainingInterrupted(f"interrupted at step {step}; checkpoint saved, continue with --resume") from None
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return TrainResult(out, model, step, total, stopped)


def _past(deadline: float, dev: torch.device, world: int) -> bool:
    """Whether the wall-clock budget is spent; under DDP rank 0's clock decides for every rank, so
    all ranks stop after the same step (one rank leaving early would hang the others' all-reduce)."""
    past = time.monotonic() >= deadline
    if world == 1:
        return past
    flag = torch.tensor([float(past)], device=dev if dev.type == "cuda" else "cpu")
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def compile_model(model: nn.Module) -> None:
    """``torch.compile`` the parts with fixed or merely growing shapes, in place (state-dict keys
    unchanged): every transformer block (``dynamic=True``: the token count varies with the budget
    and with halting) and the conv stem and head. The glue between them (halting, gathering the
    kept tokens) has data-dependent shapes and stays eager."""
    for blk in (m for m in model.modules() if isinstance(m, Block)):
        blk.compile(dynamic=True)
    model.base.stem.compile()
    model.base.head.compile()


CODE_FIT_CROPS = 4096


def fit_code(model: nn.Module, dataset: CropDataset, crops: int = CODE_FIT_CROPS,
             progress: Callable[[int, int], None] | None = None) -> int:
    """Fit a model's linear code (colour basis, coefficient scales and order) on training crops (deterministic:
    the crops of the first epochs, at most ``crops`` of them and two per image); returns their number.
    ``progress(done, total)`` after each crop read."""
    n = min(len(dataset) * 2, crops)
    images = []
    for i in range(n):
        dataset.set_epoch(i // len(dataset))
        images.append(dataset[i % len(dataset)])
        if progress:
            progress(i + 1, n)
    model.code.fit(torch.stack(images).to(model.code.scale.device))
    return n


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm():
    """SIGTERM (kill, SLURM time limits; background jobs ignore Ctrl-C's SIGINT) saves like Ctrl-C.

    Returns the previous handler, or None where handlers cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def init_weights(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Load the tensors of a weights directory or shipped model (``pretrained.weights_path``) into
    ``model``; returns the names the file did not have."""
    state = read_state(weights_path(directory))
    expected = model.state_dict()
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if unexpected or wrong:
        raise WeightsError(f"cannot start from {directory}: " + "; ".join(
            ([f"unknown tensors {', '.join(unexpected[:3])}"] if unexpected else []) +
            ([f"shape mismatch for {', '.join(wrong[:3])}"] if wrong else [])))
    model.load_state_dict(state, strict=False)
    return sorted(set(expected) - set(state))


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop logged steps after the checkpoint so the log has each step once."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


def _recent(metrics_path: Path, keys: tuple[str, ...], n: int = 100) -> dict[str, float | None]:
    """Mean of each key over the last ``n`` logged steps (None where unknown); reads the log once."""
    try:
        rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines()[-n:]]
    except (OSError, ValueError):
        rows = []
    means: dict[str, float | None] = {}
    for key in keys:
        vals = [r[key] for r in rows if key in r]
        means[key] = sum(vals) / len(vals) if vals else None
    return means


_CARD_CONFIG = re.compile(r"(## Model\n\n```json\n)(.*?)(\n```)", re.S)


def card_with_config(card: str, cfg: KARLConfig) -> str:
    """``card`` with its "## Model" JSON block (as ``model_card`` writes it) showing ``cfg``, so a
    card stays true to ``config.json`` when a step such as ``karl calibrate`` changes the config
    (e.g. the halting threshold). A card without that block is returned unchanged."""
    return _CARD_CONFIG.sub(lambda m: m.group(1) + json.dumps(cfg.to_dict()) + m.group(3), card, count=1)


def model_card(cfg: KARLConfig, tc: TrainConfig, data: list[str], n_images: int, step: int, total: int,
               world: int, metrics_path: Path, final: bool, stopped: str | None = None) -> str:
    """A model card: data, recipe, steps and the training figures at the time of writing."""
    recent = _recent(metrics_path, ("rec2", "halt", "kept2"))
    rec2, halt, kept = recent["rec2"], recent["halt"], recent["kept2"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [
        f"# {cfg.arch.upper()} tokenizer (karl)", "",
        f"Status: {'finished' if final else f'stopped by the {stopped}' if stopped else 'checkpoint'} at step "
        f"{step} of {total} ({step * tc.batch_size * world:,} training crops)"
        + (f"; the cosine schedule over {total} steps was cut there, so the learning rate had not annealed "
           "(`karl train --resume` continues it)." if stopped else "."), "",
        "## Data", "",
        f"{n_images} images from: " + ", ".join(f"`{Path(d).name or d}`" for d in data) + ".", "",
        "## Recipe", "",
        f"Two-phase loss-conditioned training (karl trainer), {world} process(es), batch {tc.batch_size}/process, "
        f"AdamW lr {tc.lr} betas {tc.betas} wd {tc.weight_decay}, warmup {tc.warmup_steps} + cosine to "
        f"{tc.min_lr_ratio}x, grad clip {tc.grad_clip}, EMA {tc.ema_decay}, halting weight {tc.halt_weight}, "
        f"seed {tc.seed}, random resized crops {tc.crop_scale} + flips at {cfg.resolution} px.", "",
        "## Model", "", "```json", json.dumps(cfg.to_dict()), "```", "",
        "## Training figures (mean of the last 100 logged steps)", "",
        f"- phase-2 reconstruction L1: {fmt(rec2)}",
        f"- halting BCE: {fmt(halt)}",
        f"- tokens kept in phase 2: {fmt(kept)} of {cfg.max_tokens}", "",
    ]
    return "\n".join(lines)

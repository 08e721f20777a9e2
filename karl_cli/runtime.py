"""Where and how a model runs at inference: device choice, placement, inference mode, bf16 autocast.

One place for these rules so every command (complexity, encode, decode, show) runs a model the same way:

    device = resolve_device("auto")          # CUDA when available, else CPU
    model = prepare_model(model, device)     # eval(), moved, channels_last for the conv base (CPU, CUDA)
    with inference(device):                  # torch.inference_mode() (+ bf16 autocast on CUDA)
        x = to_model_input(uint8_batch, device)
        ...
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from karl_cli.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(spec: str | torch.device | None = "auto", model: torch.nn.Module | None = None) -> torch.device:
    """The device ``spec`` names, checked: ``auto`` picks CUDA when available, else CPU.

    ``None`` keeps the model where it is (CPU without a model). An unknown device, or CUDA/MPS asked for
    but not present, raises ``UsageError`` with the reason.
    """
    if spec is None:
        if model is not None:
            try:
                return next(model.parameters()).device
            except StopIteration:
                pass
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        name = str(spec)
    else:
        name = str(spec).strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {spec!r}; choose one of: {', '.join(DEVICE_CHOICES)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} was requested but CUDA is not available here "
                             "(no GPU, or this torch build has no CUDA); use --device cpu or --device auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"device {name!r} does not exist: this machine has {count} CUDA device(s)")
        return dev
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError("device 'mps' was requested but is not available here; use --device cpu")
        return dev
    raise UsageError(f"unsupported device {spec!r}; choose one of: {', '.join(DEVICE_CHOICES)}")


# Devices where conv models and their inputs use channels_last memory (not MPS: spotty support).
_CHANNELS_LAST = ("cpu", "cuda")


def _has_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def prepare_model(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.nn.Module:
    """Put ``model`` in eval mode on ``device`` (in place; returned for chaining).

    On CPU and CUDA, models with convolutions use channels_last memory: faster conv kernels under bf16
    on CUDA, and on CPU (oneDNN) the conv stem of the encoder runs ~17% faster (benchmarks/throughput.py).
    """
    dev = resolve_device(device, model)
    model.eval()
    model.to(dev)
    if dev.type in _CHANNELS_LAST and _has_conv(model):
        model.to(memory_format=torch.channels_last)
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def inference(device: str | torch.device) -> Iterator[None]:
    """``torch.inference_mode()``, plus bf16 autocast on CUDA."""
    dev = torch.device(device)
    with torch.inference_mode():
        if dev.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


def to_model_input(batch: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """uint8 (B,3,R,R) in 0..255 (or float in [0,1]) -> float32 in [0,1] on ``device``.

    On CPU and CUDA the result is channels_last, matching ``prepare_model``.
    """
    dev = torch.device(device)
    x = batch.to(dev, non_blocking=True)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if dev.type in _CHANNELS_LAST:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def default_workers(device: str | torch.device | None = None) -> int:
    """Image-decoding processes when --workers is not given.

    CUDA: cores - 1, at most 16 (decoding is the limit there). CPU: a quarter of the cores, at most 4:
    the model needs the cores (decoding a photo costs ~2 ms of CPU, the small model's single pass
    ~15 ms), and a worker that preempts torch's threads slows every parallel op. Measured on 2 cores
    (benchmarks/throughput.py): 0 workers beat 1 by 12-25%, idle or loaded.
    """
    import os

    cores = os.cpu_count() or 1
    if str(getattr(device, "type", device)).split(":")[0] == "cuda":
        return max(0, min(16, cores - 1))
    return min(4, cores // 4)

"""KC as a metric object, the way pyiqa (``create_metric``) and timm (``create_model``) are called:

    import karl_cli
    kc = karl_cli.create_metric("karl-small", device="cuda")     # or "cpu", "auto"
    kc(pil_image)                    # tensor([148]): KC at the metric's ε (default 0.05)
    kc(np_array), kc(tensor_b3hw), kc("photo.jpg"), kc(["a.png", pil_image])
    kc(images, eps=[0.03, 0.09])     # (B, 2)
    r = kc(images, full=True)        # r.kc, r.kc_soft, r.l1 (the check's, r.check), r.p_halt
    kc.lower_better                  # True: fewer tokens = a simpler image

Inputs are read by ``measure.load_images``: paths (files, tar members) exactly as ``karl complexity``
reads them, and PIL images, NumPy arrays and tensors through the same conversion and resize
(``io.arrays``), so an image in memory has the KC of the same pixels saved to a PNG and scored from the
file. Anything else is one ``ValueError`` line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from karl_cli.errors import UsageError
from karl_cli.io.arrays import ACCEPTED
from karl_cli.models.pretrained import load
from karl_cli.registry import DEFAULT_MODEL, shipped_models
from karl_cli.runtime import prepare_model, resolve_device
from karl_cli.scoring.measure import load_pixels, measure
from karl_cli.scoring.methods import check_eps, check_method, resolve_check, validate_eps


@dataclass
class KCResult:
    """Everything the metric measured for B images at E values of ε (column j for ``eps[j]``)."""

    eps: list[float]
    kc: torch.Tensor              # (B, E) long: tokens the image needs at ε (KARL §3)
    kc_soft: torch.Tensor         # (B, E) float32: Σ(1 − p_halt) (single); = kc for the searches
    l1: torch.Tensor              # (B, E) float32: pixel L1 (0-1 scale) of the check's reconstruction of the kept tokens
    p_halt: torch.Tensor | None   # (B, E, T_max) float32 per-token halting probability (single only)
    check: str = "decoder"        # whose reconstruction ``l1`` is: "code" (the code's own) or "decoder"


class KCMetric(torch.nn.Module):
    """A KARL/ALIT model as an image-complexity metric: ``metric(images)`` is the KC per image.

    ``lower_better`` is True as in pyiqa's convention for a cost: KC counts the tokens an image
    needs (a simpler image needs fewer). ``eps``: the default ε (one value or several); ``method``:
    ``single`` (one encoder pass, the default for KARL), ``search`` or ``prefix``; ``check``: how
    ``full=True`` checks each KC (``methods.resolve_check``: ``auto``, the default, is the code's own
    reconstruction of the kept tokens for the wavelet KARL, the decoder's otherwise; ``code``;
    ``decoder``); ``batch_size``: images per model run. Works on CPU or CUDA (``device``), in
    inference mode (no gradients). Raises UsageError (a ValueError) for a check the model or method
    cannot make.
    """

    lower_better = True

    def __init__(self, model: torch.nn.Module, eps: float | Sequence[float] = 0.05, method: str | None = None,
                 device: str | torch.device = "auto", batch_size: int = 64, check: str = "auto") -> None:
        super().__init__()
        self.net = prepare_model(model, resolve_device(device))
        self.method = check_method(model, method)
        if check == "none":
            raise UsageError("a metric checks KC only with full=True; give check auto, code or decoder")
        self.check = resolve_check(model, self.method, check)
        self.eps = self._checked_eps(eps)
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _checked_eps(self, eps: Any) -> list[float]:
        eps_list = validate_eps(eps)
        check_eps(self.net, self.method, eps_list)
        return eps_list

    def forward(self, images: Any, eps: float | Sequence[float] | None = None, full: bool = False
                ) -> torch.Tensor | KCResult:
        """KC of ``images`` (a path, PIL image, array, tensor, or a list of them; see the module
        docstring) at ``eps`` (default: the metric's). One ε given as a number: a (B,) long tensor;
        a list of ε: (B, E). ``full=True``: a ``KCResult`` with soft KC, the check's l1 (``check``:
        the code's reconstruction, ~0.1 ms per image, or a decoder pass per ε) and (single) p_halt
        too. Raises ValueError for inputs or ε it cannot take."""
        one = eps is None and len(self.eps) == 1 or isinstance(eps, (int, float))
        eps_list = self.eps if eps is None else self._checked_eps(eps)
        pixels = load_pixels(images, self.net.config.resolution)
        if not len(pixels):
            raise ValueError(f"no images given: give a path, {ACCEPTED}, or a list of them")
        parts = []
        for i in range(0, len(pixels), self.batch_size):
            x = torch.from_numpy(pixels[i:i + self.batch_size]).permute(0, 3, 1, 2)
            check = self.check if full or self.method != "single" else "none"
            parts.append(measure(self.net, x, eps_list, self.method, check=check,
                                 keep_halting=full and self.method == "single"))
        kc = torch.cat([p.kc for p in parts])
        if not full:
            return kc[:, 0] if one else kc
        p_halt = torch.cat([p.p_halt for p in parts]) if parts[0].p_halt is not None else None
        l1 = torch.cat([p.checked_l1 for p in parts])
        return KCResult(eps_list, kc, torch.cat([p.kc_soft for p in parts]), l1, p_halt, self.check)


def list_metrics() -> list[str]:
    """The names ``create_metric`` takes: the shipped models of the registry (``karl models``)."""
    return list(shipped_models())


def create_metric(name: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device = "auto",
                  eps: float | Sequence[float] = 0.05, method: str | None = None, batch_size: int = 64,
                  check: str = "auto") -> KCMetric:
    """A ``KCMetric`` for a shipped model (``list_metrics()``) or a weights folder, on ``device``
    (``auto``: CUDA when available). Raises ValueError for an unknown name (naming the shipped
    ones), a device that is not there, or an ε, method or check the model cannot honour."""
    return KCMetric(load(name), eps=eps, method=method, device=device, batch_size=batch_size, check=check)

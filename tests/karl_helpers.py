"""Helpers for the complexity / token-store / plot / linear-code tests."""
from __future__ import annotations

import math

import torch

from karl_cli import KARL


def spread_halting(model: KARL) -> KARL:
    """Make p_halt vary enough that some tokens halt and kc differs between images and ε."""
    torch.manual_seed(1)
    x = torch.rand(8, 3, model.config.resolution, model.config.resolution)
    with torch.no_grad():
        if model.halting_head.detail_in is not None:   # spread by the encoder features alone
            model.halting_head.detail_in.weight.zero_()
            model.halting_head.detail_in.bias.zero_()
        last = model.halting_head.fc2
        last.weight.mul_(40.0)
        # ε through the head itself (a coded model's halting features are encoded at one ε): looser
        # bins lean towards halting, as a trained head's do.
        n = model.halting_head.eps_bias.weight.shape[0]
        model.halting_head.eps_bias.weight.copy_(torch.linspace(-0.3, 0.3, n)[:, None] * last.weight.sign())
        p = model.encode(x, 0.05).p_halt
        last.bias.add_(math.log(0.75 / 0.25) - torch.logit(p.clamp(1e-6, 1 - 1e-6)).median())
    return model


def fitted_code(path_class, cfg, seed: int = 0):
    """A linear code (``SpectralPath`` or ``WaveletPath``) fitted to smooth random images, so its
    statistics (order, scales) are not arbitrary."""
    torch.manual_seed(seed)
    path = path_class(cfg)
    path.fit(torch.nn.functional.interpolate(torch.rand(64, 3, 8, 8), size=cfg.resolution, mode="bilinear"))
    return path

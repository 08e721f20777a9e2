"""Model configuration: one dataclass names every size, plus the ε bins.

A config travels with its weights as ``config.json`` (see ``weights.py``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

# The ε bins of the KARL paper: a requested ε rounds UP to the nearest bin.
EPS_BINS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.09, 0.10,
    0.12, 0.14, 0.16, 0.18, 0.20, 0.24, 0.28, 0.32, 0.38,
)
# Phase 1 of training conditions on "small" ε: the bins up to 0.04.
SMALL_EPS_BINS: int = sum(1 for e in EPS_BINS if e <= 0.04 + 1e-9)


def eps_to_bin(eps: float | torch.Tensor) -> int | torch.Tensor:
    """Index of the smallest bin >= eps (round up); ε above the last bin maps to the last bin.

    Accepts a float (returns int) or a tensor (returns a long tensor of the same shape).
    """
    bins = torch.tensor(EPS_BINS)
    if isinstance(eps, torch.Tensor):
        idx = torch.bucketize(eps.detach().float().cpu() - 1e-9, bins)
        return idx.clamp_(max=len(EPS_BINS) - 1).to(eps.device)
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    for i, b in enumerate(EPS_BINS):
        if eps <= b + 1e-9:
            return i
    return len(EPS_BINS) - 1


@dataclass
class KARLConfig:
    """Every size of a tokenizer. ``arch`` selects the architecture (``karl`` or ``alit``)."""

    arch: str = "karl"
    resolution: int = 64            # images are resized to resolution x resolution
    patch_size: int = 8             # 2D token grid = (resolution / patch_size)^2
    base: str = "conv"              # 2D tokenizer: "patch" (one strided conv) or "conv" (conv stem/head)
    base_channels: int = 32         # widest conv channel count of the conv base (halved per 2x upsampling)
    width: int = 128                # encoder width
    enc_depth: int = 2
    enc_heads: int = 4
    dec_width: int = 160
    dec_depth: int = 3
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    max_tokens: int = 64            # T_max, the number of 1D latent tokens
    token_step: int = 4             # budgets are multiples of this
    one_token_budget: bool = False  # a KARL model also offers a budget of 1 token (see ``budgets``)
    latent_dim: int = 12            # continuous bottleneck per 1D token
    halt_hidden: int = 64
    direct_dim: int = 32            # width of the linear grid<->token shortcuts (0: attention only)
    halt_threshold: float = 0.75
    halt_grad_scale: float = 0.0    # share of the halting loss's gradient that reaches the encoder
    spectral: bool = False          # tokens start as ordered DCT codes and the networks refine them (spectral.py)
    halt_l1: bool = False           # a spectral model's halting head also reads its code's pixel L1 per budget
    code: str = "dct"               # a spectral model's linear code: "dct" (spectral.py) or "wavelet" (wavelet.py)
    eps_bins: list[float] = field(default_factory=lambda: list(EPS_BINS))

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):   # a config.json from a user's path may hold anything
            v = getattr(self, f.name)
            least = 0 if f.name == "direct_dim" else 1
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < least):
                problems.append(f"{f.name} must be a whole number >= {least}, not {v!r}")
            elif f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                problems.append(f"{f.name} must be a finite number, not {v!r}")
        if not isinstance(self.eps_bins, (list, tuple)) or not all(
                isinstance(e, (int, float)) and not isinstance(e, bool) for e in self.eps_bins):
            problems.append("eps_bins must be a list of numbers")
        for name in ("spectral", "halt_l1", "one_token_budget"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, not {getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid KARLConfig: " + "; ".join(problems))
        if self.arch not in ("karl", "alit"):
            problems.append(f"arch must be 'karl' or 'alit', not {self.arch!r}")
        if self.code not in ("dct", "wavelet"):
            problems.append(f"code must be 'dct' or 'wavelet', not {self.code!r}")
        elif self.code == "wavelet" and self.resolution & (self.resolution - 1):
            problems.append("a wavelet code needs a power-of-two resolution")
        elif self.code == "wavelet" and not (self.spectral and self.arch == "karl"):
            problems.append("a wavelet code needs spectral: true and arch 'karl' (ALIT corrects its tokens)")
        if self.base not in ("patch", "conv"):
            problems.append(f"base must be 'patch' or 'conv', not {self.base!r}")
        if self.resolution % self.patch_size:
            problems.append("resolution must be a multiple of patch_size")
        if self.patch_size & (self.patch_size - 1):
            problems.append("patch_size must be a power of two")
        if self.max_tokens % self.token_step:
            problems.append("max_tokens must be a multiple of token_step")
        if self.spectral and self.max_tokens * self.latent_dim > 3 * self.resolution ** 2:
            problems.append("a spectral model needs max_tokens x latent_dim <= 3 x resolution^2")
        if self.one_token_budget and self.arch != "karl":
            problems.append("one_token_budget needs arch 'karl' (ALIT adds token_step tokens per iteration)")
        if self.halt_l1 and not self.spectral:
            problems.append("halt_l1 needs a spectral model")
        if self.width % self.enc_heads or self.dec_width % self.dec_heads:
            problems.append("widths must be divisible by their head counts")
        if not 0.0 < self.halt_threshold < 1.0:
            problems.append("halt_threshold must lie in (0, 1)")
        if [round(float(e), 6) for e in self.eps_bins] != [round(e, 6) for e in EPS_BINS]:
            problems.append("eps_bins differ from the bins this version of karl knows")
        if problems:
            raise ValueError("invalid KARLConfig: " + "; ".join(problems))

    @property
    def grid(self) -> int:
        return self.resolution // self.patch_size

    @property
    def num_2d_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def budgets(self) -> list[int]:
        """Token counts a model is trained at and searched over, smallest first: the multiples of
        ``token_step``, and with ``one_token_budget`` also 1. A code's first token holds the colour
        means, all a flat image needs: without that budget a flat image and a gradient both take
        the smallest step and tie."""
        steps = list(range(self.token_step, self.max_tokens + 1, self.token_step))
        return [1] + steps if self.one_token_budget and self.token_step > 1 else steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KARLConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)


PRESETS: dict[str, KARLConfig] = {
    # Seconds on a CPU: for tests.
    "tiny": KARLConfig(resolution=32, patch_size=8, base="conv", base_channels=16, width=32, enc_depth=1,
                       enc_heads=2, dec_width=32, dec_depth=1, dec_heads=2, max_tokens=16, token_step=4,
                       halt_hidden=16, direct_dim=8, spectral=True, halt_l1=True, one_token_budget=True),
    # The CPU default model: 384 tokens at 64 px of a Haar wavelet code in an image-adaptive order
    # (wavelet.py), which the decoder refines; the encoder only serves the halting head, so the
    # halting loss may train it. 384, not 256: ε 0.03 takes more than 256 tokens of this code for
    # a fifth of photos, more than 384 for 3 %. The linear grid<->token shortcuts are left out: the
    # code already links tokens and pixels. A 1-token budget lets a flat image need less than a gradient.
    "small": KARLConfig(max_tokens=384, direct_dim=0, spectral=True, halt_l1=True, code="wavelet",
                        halt_grad_scale=1.0, one_token_budget=True),
}


def preset(name: str, **overrides: Any) -> KARLConfig:
    """A copy of a named preset, with fields overridden. ALIT keeps the DCT code (it corrects its
    tokens, which an ordered wavelet code does not allow) and whole iterations as budgets unless told
    otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if overrides.get("arch") == "alit":
        overrides.setdefault("code", "dct")
        overrides.setdefault("one_token_budget", False)
    return dataclasses.replace(PRESETS[name], **overrides)

"""Model configuration: the three models karl knows, their sizes, and the ε bins.

A config travels with its weights as ``config.json`` (``models/pretrained.py``). Which model a config
describes is the pair (``arch``, ``code``); docs/design.md §1 describes each:

- ``("karl", "wavelet")``: KARL on the wavelet code (``models/wavelet.py``) — the shipped CPU default;
- ``("karl", "learned")``: KARL with learned 1D tokens, the papers' tokenizer (the GPU recipe);
- ``("alit", "dct")``: ALIT, recurrent allocation over DCT-initialised tokens (``models/alit.py``).

Field defaults are the shipped default model (``weights/karl-small``). Presets (``preset(name)``):
``tiny`` and ``small`` (the wavelet model), and the learned tokens' recipe, ``learned-tiny`` (tests),
``learned-64`` (CPU-sized: 64 px, T_max 64 in budgets of 8; benchmarks/learned_cpu.py) and
``learned-128`` (the GPU recipe of benchmarks/gpu/run.sh: 128 px, patch 16, encoder 192 x 4 blocks,
decoder 256 x 4, T_max 256 in budgets of 32 as in the papers, 7.5M parameters). The learned presets
use the paper's halting threshold 0.75 and keep the halting loss off the shared encoder
(``halt_grad_scale`` 0; docs/design.md §3).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

# The ε bins of the KARL paper (arXiv 2507.07995, §3.2): the halting head is trained on these.
EPS_BINS: tuple[float, ...] = (
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.09, 0.10,
    0.12, 0.14, 0.16, 0.18, 0.20, 0.24, 0.28, 0.32, 0.38,
)
# The ε a single pass can honour: the trained bins' span (between bins, ε is interpolated).
EPS_RANGE: tuple[float, float] = (EPS_BINS[0], EPS_BINS[-1])
# Phase 1 of training conditions on "small" ε: the bins up to 0.04.
SMALL_EPS_BINS: int = sum(1 for e in EPS_BINS if e <= 0.04 + 1e-9)

# The models a config can describe: (arch, code) -> what it is.
MODELS: dict[tuple[str, str], str] = {
    ("karl", "wavelet"): "KARL on the wavelet code",
    ("karl", "learned"): "KARL with learned tokens",
    ("alit", "dct"): "ALIT",
}
# Fields a model has no use for, left out of its config.json: ALIT has no halting head, and only
# learned tokens need the linear grid<->token shortcuts (``direct_dim``; models/layers.py).
_UNUSED_FIELDS = {("karl", "wavelet"): ("direct_dim",), ("karl", "learned"): (),
                  ("alit", "dct"): ("halt_hidden", "halt_threshold", "halt_grad_scale", "direct_dim")}


def _retired_value(name: str, arch: str, code: str) -> Any:
    """The value a retired field of karl ≤ 0.1 must hold for (arch, code): what the model now does
    without the field. A config.json holding another value describes a model karl no longer builds."""
    return {
        "spectral": code != "learned",
        "halt_l1": code == "wavelet" if arch == "karl" else None,    # None: any value, ALIT never read it
        "base": "conv",
        "one_token_budget": code == "wavelet",
        "eps_bins": [round(e, 6) for e in EPS_BINS],
    }[name]


RETIRED_FIELDS = ("spectral", "halt_l1", "base", "one_token_budget", "eps_bins")


# --- reading old config.json files -----------------------------------------------------------------
# Each step brings a config dict (retired fields popped into ``legacy``) of an older karl up to date in
# place, or raises ValueError for a model karl no longer builds.
def _stem_as_wide_as_head(d: dict, legacy: dict, default_code: str) -> None:
    if "base_channels" in d and "stem_channels" not in d:
        d["stem_channels"] = d["base_channels"]


def _spectral_false_is_learned(d: dict, legacy: dict, default_code: str) -> None:
    if legacy.get("spectral") is False and d.get("code", "dct") == "dct":
        d["code"] = "learned"


def _code_by_arch(d: dict, legacy: dict, default_code: str) -> None:
    d.setdefault("code", "dct" if d.get("arch") == "alit" else default_code)


def _retired_hold_what_the_model_does(d: dict, legacy: dict, default_code: str) -> None:
    arch, code = d.get("arch", "karl"), d["code"]
    for name, value in legacy.items():
        want = _retired_value(name, arch, code)
        if name == "eps_bins" and isinstance(value, list):
            value = [round(float(e), 6) for e in value if isinstance(e, (int, float))]
        if want is not None and value != want:
            raise ValueError(f"retired field {name!r} = {value!r}: no karl model uses it any more "
                             f"(the {MODELS.get((arch, code), 'model')} has {name} = {want!r})")


def _direct_dim_only_learned(d: dict, legacy: dict, default_code: str) -> None:
    if d.get("direct_dim", 0) and d["code"] != "learned":
        raise ValueError(f"retired field 'direct_dim' = {d['direct_dim']!r}: only learned tokens use the linear "
                         f"shortcuts (the {MODELS.get((d.get('arch', 'karl'), d['code']), 'model')} has none)")


# The migrations, dated (the day karl stopped writing the old form), applied in this order.
MIGRATIONS = (
    ("2026-12-01", "no stem_channels: the encoder's conv stem was as wide as the decoder's head (base_channels)",
     _stem_as_wide_as_head),
    ("2026-12-01", "learned tokens were written as spectral: false beside an unused code", _spectral_false_is_learned),
    ("2026-12-01", "no code: ALIT's is the DCT code, KARL's the class default", _code_by_arch),
    ("2026-12-01", "retired fields (spectral, halt_l1, base, one_token_budget, eps_bins) are read only when they "
     "hold what the model does anyway", _retired_hold_what_the_model_does),
    ("2026-12-01", "direct_dim (the linear grid<->token shortcuts) only with learned tokens", _direct_dim_only_learned),
)


def eps_to_bin(eps: float | torch.Tensor) -> int | torch.Tensor:
    """Index of the smallest bin >= eps (round up); ε above the last bin maps to the last bin.

    Training labels use it (T tokens reached ε₀ ≤ bin, so the label is true for the bin; paper
    §3.2). Accepts a float (returns int) or a tensor (returns a long tensor of the same shape).
    Raises ValueError for a non-positive or non-finite float.
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


def one_eps(eps: Any) -> float:
    """``eps`` as one float, or a one-line ValueError: ``encode`` conditions a pass on a single ε (several
    ε: one call each, or ``karl_cli.create_metric``, which takes a list). A one-element tensor counts."""
    if isinstance(eps, numbers.Real) and not isinstance(eps, bool):
        return float(eps)
    if torch.is_tensor(eps) and eps.numel() == 1 and not eps.dtype == torch.bool:
        return float(eps.item())
    size = f" of {len(eps)}" if hasattr(eps, "__len__") else ""
    raise ValueError(f"ε must be one number (a pixel L1 target such as 0.05), got a {type(eps).__name__}{size}: "
                     f"{eps!r}; for several ε call once per ε, or use karl_cli.create_metric(...)(images, eps=[...])")


def eps_position(eps: float) -> float:
    """Where ε sits on the bin scale, for conditioning a KARL model on any ε in ``EPS_RANGE``:
    i + w for EPS_BINS[i] <= ε < EPS_BINS[i + 1], with w linear in log ε (an ε on a bin gives the
    bin's index exactly). The model interpolates its per-bin embeddings at that position and reads
    its error features relative to ε itself (docs/design.md §2). Raises ValueError outside
    ``EPS_RANGE``: the model was never trained there, and snapping to the nearest bin would silently
    answer another question. A value that is not one number is a ValueError too (``one_eps``)."""
    eps = one_eps(eps)
    lo, hi = EPS_RANGE
    if not math.isfinite(eps) or not lo - 1e-12 <= eps <= hi + 1e-12:
        raise ValueError(f"ε {eps:g} is outside what a single pass can honour ({lo:g} to {hi:g}, the trained ε "
                         f"range); the search methods take any ε > 0")
    for i, b in enumerate(EPS_BINS):
        if abs(eps - b) <= 1e-9 * b:
            return float(i)
        if eps < b:
            a = EPS_BINS[i - 1]
            return i - 1 + math.log(eps / a) / math.log(b / a)
    return float(len(EPS_BINS) - 1)


@dataclass
class KARLConfig:
    """Every size of a tokenizer. (``arch``, ``code``) names the model (see ``MODELS``)."""

    arch: str = "karl"              # "karl" (single pass, halting head) or "alit" (recurrent)
    code: str = "wavelet"           # KARL: "wavelet" or "learned"; ALIT: "dct"
    resolution: int = 64            # images are resized to resolution x resolution
    patch_size: int = 8             # 2D token grid = (resolution / patch_size)^2
    base_channels: int = 32         # first conv width of the decoder's conv head (doubled per 2x downsampling)
    stem_channels: int = 8          # first conv width of the encoder's conv stem that makes the 2D tokens
    width: int = 32                 # encoder width
    enc_depth: int = 1
    enc_heads: int = 2
    dec_width: int = 160
    dec_depth: int = 3
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    max_tokens: int = 384           # T_max, the number of 1D latent tokens
    token_step: int = 4             # budgets are multiples of this (and 1 for the wavelet code)
    latent_dim: int = 12            # continuous bottleneck per 1D token
    halt_hidden: int = 64
    halt_threshold: float = 0.9     # a token halts when p_halt exceeds this (paper: 0.75)
    halt_grad_scale: float = 1.0    # share of the halting loss's gradient that reaches the encoder
    direct_dim: int = 32            # learned tokens: width of the linear grid<->token shortcuts

    def __post_init__(self) -> None:
        problems = []
        for f in dataclasses.fields(self):   # a config.json from a user's path may hold anything
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                problems.append(f"{f.name} must be a whole number >= 1, not {v!r}")
            elif f.type == "float" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                problems.append(f"{f.name} must be a finite number, not {v!r}")
        if problems:
            raise ValueError("invalid KARLConfig: " + "; ".join(problems))
        if (self.arch, self.code) not in MODELS:
            known = "; ".join(f"arch {a!r} with code {c!r} ({what})" for (a, c), what in MODELS.items())
            problems.append(f"no model has arch {self.arch!r} with code {self.code!r}; karl knows {known}")
        elif self.code == "wavelet" and self.resolution & (self.resolution - 1):
            problems.append("a wavelet code needs a power-of-two resolution")
        if self.resolution % self.patch_size:
            problems.append("resolution must be a multiple of patch_size")
        if self.patch_size & (self.patch_size - 1):
            problems.append("patch_size must be a power of two")
        if self.max_tokens % self.token_step:
            problems.append("max_tokens must be a multiple of token_step")
        if self.has_code and self.max_tokens * self.latent_dim > 3 * self.resolution ** 2:
            problems.append(f"the {self.code} code needs max_tokens x latent_dim <= 3 x resolution^2")
        if self.width % self.enc_heads or self.dec_width % self.dec_heads:
            problems.append("widths must be divisible by their head counts")
        if not 0.0 < self.halt_threshold < 1.0:
            problems.append("halt_threshold must lie in (0, 1)")
        if problems:
            raise ValueError("invalid KARLConfig: " + "; ".join(problems))
        for f in dataclasses.fields(self):   # a field the model does not use holds its default
            if f.name in _UNUSED_FIELDS[self.arch, self.code]:
                setattr(self, f.name, f.default)

    @property
    def has_code(self) -> bool:
        """Whether tokens start from a fixed linear code (wavelet, DCT) the networks refine."""
        return self.code != "learned"

    @property
    def grid(self) -> int:
        return self.resolution // self.patch_size

    @property
    def num_2d_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def budgets(self) -> list[int]:
        """Token counts a model is trained at and searched over, smallest first: the multiples of
        ``token_step``, and for the wavelet code also 1. That code's first token holds the colour
        means, all a flat image needs: without that budget a flat image and a gradient both take
        the smallest step and tie."""
        steps = list(range(self.token_step, self.max_tokens + 1, self.token_step))
        return [1] + steps if self.code == "wavelet" and self.token_step > 1 else steps

    def to_dict(self) -> dict[str, Any]:
        """The fields this model uses."""
        d = dataclasses.asdict(self)
        for name in _UNUSED_FIELDS[self.arch, self.code]:
            del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "KARLConfig":
        """A config from ``config.json``'s object; older forms are brought up to date by ``MIGRATIONS``.
        Raises ValueError naming the field for unknown keys, and for a retired field (karl ≤ 0.1)
        whose value describes a model karl no longer builds; a retired field holding what the model
        does anyway is accepted."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - set(RETIRED_FIELDS))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        d = dict(d)
        legacy = {k: d.pop(k) for k in RETIRED_FIELDS if k in d}
        for _, _, step in MIGRATIONS:     # in the table's order
            step(d, legacy, cls.code)
        arch, code = d.get("arch", cls.arch), d["code"]
        for name in _UNUSED_FIELDS.get((arch, code), ()):
            d.pop(name, None)
        return cls(**d)


PRESETS: dict[str, KARLConfig] = {
    # Seconds on a CPU: for tests. The shipped model's path (wavelet code), small.
    "tiny": KARLConfig(resolution=32, base_channels=16, stem_channels=16, width=32, enc_depth=1, enc_heads=2, dec_width=32,
                       dec_depth=1, dec_heads=2, max_tokens=16, halt_hidden=16, halt_threshold=0.75),
    # The CPU default model: 384 tokens at 64 px of a Haar wavelet code in an image-adaptive order
    # (wavelet.py), which the decoder refines. 384, not 256: ε 0.03 takes more than 256 tokens of this
    # code for a fifth of photos (docs/design.md §4).
    # Its encoder serves only the halting head, so it is small (a width-32 block over a narrow conv
    # stem), distilled by `karl distil` from one of "small-teacher"'s size (docs/design.md §6).
    "small": KARLConfig(),
    # The same model with the encoder it was trained with (2 blocks of width 128): `karl train
    # --preset small-teacher`, `karl calibrate`, then `karl distil` gives "small".
    "small-teacher": KARLConfig(stem_channels=32, width=128, enc_depth=2, enc_heads=4, halt_threshold=0.8),
    # The papers' tokenizer (learned 1D tokens through the 12-d bottleneck, conv base, linear
    # grid<->token shortcuts), seconds on a CPU: for tests.
    "learned-tiny": KARLConfig(code="learned", resolution=32, base_channels=16, stem_channels=16, width=32, enc_depth=1, enc_heads=2,
                               dec_width=48, dec_depth=1, dec_heads=2, max_tokens=16, token_step=4, halt_hidden=16,
                               halt_threshold=0.75, halt_grad_scale=0.0, direct_dim=8),
    # CPU-sized learned tokens at 64 px (benchmarks/learned_cpu.py): 64 tokens (768 values for 12,288
    # pixel values) in budgets of 8, two encoder and two decoder blocks, a narrow conv base: a step
    # of 16 crops takes seconds on 2 cores. The halting loss does not reach the shared encoder
    # (halt_grad_scale 0; docs/design.md §3).
    "learned-64": KARLConfig(code="learned", resolution=64, base_channels=16, stem_channels=16, width=128, enc_depth=2, enc_heads=4,
                             dec_width=128, dec_depth=2, dec_heads=4, max_tokens=64, token_step=8,
                             halt_threshold=0.75, halt_grad_scale=0.0, direct_dim=32),
    # The GPU recipe (benchmarks/gpu/run.sh): 128 px, a small encoder and a larger decoder, T_max 256
    # in budgets of 32 as in the papers. Patch 16 (an 8x8 grid) keeps the shortcuts' dense maps, which
    # scale with grid x tokens, small enough for fp16 weights under 16 MiB (7.5M parameters).
    "learned-128": KARLConfig(code="learned", resolution=128, patch_size=16, base_channels=16, stem_channels=16, width=192,
                              enc_depth=4, enc_heads=3, dec_width=256, dec_depth=4, dec_heads=4, max_tokens=256,
                              token_step=32, halt_hidden=64, halt_threshold=0.75, halt_grad_scale=0.0,
                              direct_dim=4),
}


def preset(name: str, **overrides: Any) -> KARLConfig:
    """A copy of a named preset, with fields overridden. ALIT takes the DCT code (it corrects its
    tokens, which an ordered wavelet code does not allow). Raises ValueError for an unknown preset or
    an invalid combination."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    if overrides.get("arch") == "alit":
        overrides.setdefault("code", "dct")
    return dataclasses.replace(PRESETS[name], **overrides)

"""The KARL tokenizer: one encoder pass gives 1D tokens and, per token, the probability of halting.

Layout of a forward pass (DESIGN.md §2):

    image -> base 2D tokens (+pos) ─┐
    ε-bin token ────────────────────┼-> encoder -> latents -> halting_head -> p_halt
    learned 1D latent tokens[:T] ───┘                     -> bottleneck (12-d)
    kept 12-d tokens -> decoder (with mask tokens at the 2D positions) -> base head -> image

Inside the encoder the context (ε token + 2D tokens) does not attend to the latents, and latent t
attends only to latents <= t. So encoding at budget T is exactly the first T tokens of encoding at
T_max: every prefix is a valid encoding, and the search baselines can run on the same model.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from karl_cli.models.config import KARLConfig, eps_to_bin
from karl_cli.scoring.oracle import SearchResult, TokenSource, sweep
from karl_cli.models.dct import SpectralPath
from karl_cli.models.wavelet import WaveletPath


class Block(nn.Module):
    """Pre-LN transformer block; attention through SDPA (flash/efficient kernels on CUDA)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.ln2(x))


class PatchBase(nn.Module):
    """The plain base: one strided conv in, one linear map to pixel patches out."""

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.patch = p
        self.embed = nn.Conv2d(3, cfg.width, p, stride=p)
        self.head = nn.Linear(cfg.dec_width, 3 * p * p)
        if cfg.spectral:   # a correction of the linear reconstruction: starts at zero
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).flatten(2).transpose(1, 2)

    def pixels(self, h: torch.Tensor, grid: int, skip: torch.Tensor | None = None) -> torch.Tensor:
        b, p = h.shape[0], self.patch
        y = self.head(h).view(b, grid, grid, 3, p, p)
        return y.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, grid * p, grid * p)


def conv_stem(cfg: KARLConfig, out_channels: int) -> nn.Sequential:
    """Pixels (B, 3, R, R) in [-1, 1] -> a (B, out_channels, grid, grid) feature map: strided convs."""
    stages = int(math.log2(cfg.patch_size))
    chans = [cfg.base_channels * 2**i for i in range(stages)]
    down: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1), nn.GELU()]
    for i in range(stages):
        out = chans[i + 1] if i + 1 < stages else out_channels
        down.append(nn.Conv2d(chans[i], out, 4, stride=2, padding=1))
        if i + 1 < stages:
            down.append(nn.GELU())
    return nn.Sequential(*down)


class ConvBase(nn.Module):
    """A small conv stem/head around the transformer: it does the local pixel work, which a CPU
    learns far faster with convolutions than with a linear patch map (DESIGN.md §5).

    In a spectral model the head also sees the linear reconstruction at full resolution (``skip``)
    and its last layer starts at zero, so the decoder starts as the spectral code and learns a
    correction."""

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        stages = int(math.log2(cfg.patch_size))
        chans = [cfg.base_channels * 2**i for i in range(stages)]
        self.stem = conv_stem(cfg, cfg.width)
        up: list[nn.Module] = [nn.Conv2d(cfg.dec_width, chans[-1], 3, padding=1), nn.GELU()]
        prev = chans[-1]
        for c in reversed(chans):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, c, 3, padding=1), nn.GELU()]
            prev = c
        # The last conv also reads the linear reconstruction in a spectral model, and starts at zero.
        final = nn.Conv2d(prev + (3 if cfg.spectral else 0), 3, 3, padding=1)
        if cfg.spectral:
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)
        self.head = nn.Sequential(*up, final)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).flatten(2).transpose(1, 2)

    def pixels(self, h: torch.Tensor, grid: int, skip: torch.Tensor | None = None) -> torch.Tensor:
        b, _, c = h.shape
        x = h.transpose(1, 2).reshape(b, c, grid, grid)
        if skip is None:
            return self.head(x)
        y = self.head[:-1](x)
        return self.head[-1](torch.cat([y, skip.to(y.dtype)], dim=1))


def make_base(cfg: KARLConfig) -> nn.Module:
    """The pluggable 2D tokenizer: anything with ``tokens(x)`` and ``pixels(h, grid, skip=None)``."""
    return {"patch": PatchBase, "conv": ConvBase}[cfg.base](cfg)


class HaltingHead(nn.Module):
    """LN -> Linear (+ ε-bin bias, + detail) -> Tanh -> Linear -> sigmoid: p_halt for each 1D token.

    The per-bin bias hands the head ε directly. Through the encoder alone ε reaches the latents only
    as fast as the (deliberately weak) halting gradient teaches attention to read the ε token, and
    p_halt stayed the same for every ε for hundreds of CPU steps. A spectral model also hands it,
    per token, the log RMS error its linear code leaves after that token (``detail``): from encoder
    features alone a calibrated head predicted nearly the same KC for a flat image as for noise. With
    ``halt_l1`` it also reads the log pixel L1 of that code at the budgets below and above each token, the
    very quantity ε bounds, so the head only learns how far the decoder's refinement improves on it.
    Those features are then taken relative to ε, as log(error / ε) x ``RELATIVE_GAIN`` (``eps_bins``
    given; the weights start divided by the gain, which thus only multiplies their learning rate): a
    token should halt once the error before its step is below ε, a threshold the head otherwise has
    to rebuild for every bin, and L1 falls only a few per cent per step, so unscaled log errors left
    a calibrated head too soft to tell neighbouring steps apart (it kept 15-40 % more tokens than the
    oracle at threshold 0.75, and 2-9 % fewer at 0.5).
    """

    RELATIVE_GAIN = 8.0

    def __init__(self, width: int, hidden: int, num_bins: int, detail: int = 0,
                 eps_bins: Sequence[float] | None = None) -> None:
        super().__init__()
        log_eps = None if eps_bins is None else torch.log(torch.tensor(list(eps_bins), dtype=torch.float32))
        self.register_buffer("log_eps", log_eps, persistent=False)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.eps_bias = nn.Embedding(num_bins, hidden)
        nn.init.zeros_(self.eps_bias.weight)
        self.detail_in = nn.Linear(detail, hidden) if detail else None
        if self.detail_in is not None and eps_bins is not None:
            with torch.no_grad():   # the gain speeds learning; it must not saturate the tanh at the start
                self.detail_in.weight.div_(self.RELATIVE_GAIN)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, eps_idx: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        z = self.fc1(self.norm(h)) + self.eps_bias(eps_idx).unsqueeze(1).to(h.dtype)
        if self.detail_in is not None:
            if detail is None:
                raise ValueError("this halting head needs the per-token detail of a spectral model")
            if self.log_eps is not None:
                detail = (detail - self.log_eps[eps_idx].view(-1, 1, 1)) * self.RELATIVE_GAIN
            z = z + self.detail_in(detail.to(z.dtype))
        return torch.sigmoid(self.fc2(torch.tanh(z)).squeeze(-1).float())


class DirectPaths(nn.Module):
    """Linear shortcuts between the 2D grid and the 1D tokens, beside attention.

    read: each latent token starts from its own linear read-out of the (channel-reduced) 2D grid;
    spread: each 2D position starts from a linear map of the kept 12-d tokens (halted ones are zero,
    so they still cannot affect the output). Attention must otherwise learn from scratch which
    token talks to which position, which is what kept pure-attention models at the mean image for
    thousands of CPU steps (DESIGN.md §5); with these paths the model learns like a conv autoencoder
    from the first steps, and causality holds (token t still depends on the image and tokens <= t).
    """

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        n, d, t = cfg.num_2d_tokens, cfg.direct_dim, cfg.max_tokens
        self.t, self.d, self.n = t, d, n
        self.reduce = nn.Linear(cfg.width, 8)
        self.read_map = nn.Linear(n * 8, t * d)
        self.read_up = nn.Linear(d, cfg.width)
        self.spread_map = nn.Linear(t * cfg.latent_dim, n * d)
        self.spread_up = nn.Linear(d, cfg.dec_width)

    def read(self, x2d: torch.Tensor) -> torch.Tensor:
        b = x2d.shape[0]
        return self.read_up(self.read_map(self.reduce(x2d).flatten(1)).view(b, self.t, self.d))

    def spread(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, T <= T_max, latent_dim), halted ones already zero -> 2D-position features."""
        b, t, c = latents.shape
        if t < self.t:
            latents = torch.cat([latents, latents.new_zeros(b, self.t - t, c)], dim=1)
        return self.spread_up(self.spread_map(latents.flatten(1)).view(b, self.n, self.d))


@dataclass
class ForwardOutput:
    recon: torch.Tensor      # (B, 3, R, R), unclamped
    p_halt: torch.Tensor     # (B, T) float32
    keep: torch.Tensor       # (B, T) bool: the tokens the decoder saw


@dataclass
class Encoding:
    """What one encoder pass says about a batch of images at one ε.

    ``latents`` holds all T_max tokens; only those with ``keep`` are the image's representation
    (halted tokens have no effect on ``KARL.decode``).
    """

    latents: torch.Tensor    # (B, T_max, latent_dim)
    p_halt: torch.Tensor     # (B, T_max)
    keep: torch.Tensor       # (B, T_max) bool
    eps: float

    @property
    def kc(self) -> torch.Tensor:
        """Token count: T_max minus the halted tokens."""
        return self.keep.sum(1)

    @property
    def kc_soft(self) -> torch.Tensor:
        """A continuous companion of kc: sum of (1 - p_halt)."""
        return (1.0 - self.p_halt).sum(1)

    def tokens(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image i's kept tokens (kc, latent_dim) and their positions (kc,)."""
        pos = self.keep[i].nonzero().squeeze(1)
        return self.latents[i, pos], pos


class Tokenizer(nn.Module):
    """What every architecture shares: the 2D base, the latent table, encoder blocks, the 12-d
    bottleneck and the decoder (same names, so ``KARL.decode_tokens`` runs on any of them), where the
    model lives, and its weights directory on disk."""

    def __init__(self, config: KARLConfig, arch: str) -> None:
        super().__init__()
        if config.arch != arch:
            raise ValueError(f"{type(self).__name__} needs arch={arch!r}, the config says {config.arch!r}")
        self.config = cfg = config
        n, w, dw = cfg.num_2d_tokens, cfg.width, cfg.dec_width
        self.base = make_base(cfg)
        self.pos_2d = nn.Parameter(torch.randn(1, n, w) * 0.02)
        self.latent_tokens = nn.Parameter(torch.randn(1, cfg.max_tokens, w) * 0.02)
        self.encoder = nn.ModuleList(Block(w, cfg.enc_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth))
        self.enc_norm = nn.LayerNorm(w)
        self.unbottleneck = nn.Linear(cfg.latent_dim, dw)
        self.dec_latent_pos = nn.Parameter(torch.randn(1, cfg.max_tokens, dw) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dw) * 0.02)
        self.dec_pos_2d = nn.Parameter(torch.randn(1, n, dw) * 0.02)
        self.decoder = nn.ModuleList(Block(dw, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth))
        self.dec_norm = nn.LayerNorm(dw)
        self.direct = DirectPaths(cfg) if cfg.direct_dim else None
        self.spectral = (WaveletPath if cfg.code == "wavelet" else SpectralPath)(cfg) if cfg.spectral else None
        # An ordered code's tokens are the code itself (``to_tokens``): no correction to learn.
        ordered = self.spectral is not None and self.spectral.ordered
        self.bottleneck = None if ordered else nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.latent_dim))
        if cfg.spectral:
            self.code_embed = nn.Linear(cfg.latent_dim, w)        # each latent starts from its own code
            self.recon_embed = conv_stem(cfg, dw)                  # the decoder sees the linear reconstruction
            if self.bottleneck is not None:
                nn.init.zeros_(self.bottleneck[-1].weight)         # tokens start as the spectral code
                nn.init.zeros_(self.bottleneck[-1].bias)

    def _fill_first_step(self, latents: torch.Tensor, keep: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents and keep with the first ``token_step`` tokens always present: missing or halted
        ones become zero codes (coefficients 0, which carry nothing of the image)."""
        step, (b, t, d) = self.config.token_step, latents.shape
        if self.config.budgets[0] >= step:
            return latents, keep
        if t < step:
            latents = torch.cat([latents, latents.new_zeros(b, step - t, d)], dim=1)
            keep = torch.ones(b, t, dtype=torch.bool, device=latents.device) if keep is None else keep
            keep = torch.cat([keep, keep.new_zeros(b, step - t)], dim=1)
        if keep is None:
            return latents, keep
        first = torch.arange(latents.shape[1], device=latents.device) < step
        latents = torch.where((first & ~keep).unsqueeze(-1), torch.zeros_like(latents), latents)
        return latents, keep | first

    def spectral_code(self, images: torch.Tensor) -> torch.Tensor | None:
        """The images' spectral code (B, T_max, latent_dim), or None for a model without one."""
        return None if self.spectral is None else self.spectral.analyse(images)

    def latent_inputs(self, code: torch.Tensor | None, first: int, last: int, batch: int) -> torch.Tensor:
        """The encoder's inputs for latent tokens first..last-1: learned tokens (+ their codes)."""
        lat = self.latent_tokens[:, first:last].expand(batch, -1, -1)
        return lat if code is None else lat + self.code_embed(code[:, first:last].to(lat.dtype))

    def to_tokens(self, h: torch.Tensor, code: torch.Tensor | None) -> torch.Tensor:
        """Encoder outputs (B, T, width) -> 12-d tokens; a spectral model adds the correction to its
        code, except an ``ordered`` code (wavelet.py), whose tokens are the code itself: the decoder
        replays its positions from the exact values."""
        if self.bottleneck is None:
            return code[:, : h.shape[1]]
        z = self.bottleneck(h)
        return z if code is None else code[:, : z.shape[1]].to(z.dtype) + z

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def save_pretrained(self, directory: str, card: str | None = None) -> None:
        from karl_cli.models.pretrained import save_pretrained
        save_pretrained(self, directory, card=card)

    @classmethod
    def from_pretrained(cls, directory: str, device: str | torch.device = "cpu") -> "Tokenizer":
        from karl_cli.models.pretrained import load_pretrained
        model = load_pretrained(directory, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class KARL(Tokenizer):
    """Single-pass adaptive image tokenizer (arXiv 2507.07995)."""

    # One encoder pass predicts the token count (halting head); ALIT has single_pass = False.
    single_pass = True

    def __init__(self, config: KARLConfig) -> None:
        super().__init__(config, "karl")
        w = config.width
        self.eps_embed = nn.Embedding(len(config.eps_bins), w)
        detail = (3 if config.halt_l1 else 1) if config.spectral else 0
        self.halting_head = HaltingHead(w, config.halt_hidden, len(config.eps_bins), detail=detail,
                                        eps_bins=config.eps_bins if config.halt_l1 else None)
        self._enc_masks: dict[tuple[int, str], torch.Tensor] = {}

    # --- encoder -------------------------------------------------------------------------------
    def _encoder_mask(self, t: int, device: torch.device) -> torch.Tensor:
        key = (t, str(device))
        if key not in self._enc_masks:
            ctx = 1 + self.config.num_2d_tokens
            allowed = torch.ones(ctx + t, ctx + t, dtype=torch.bool)
            allowed[:ctx, ctx:] = False
            allowed[ctx:, ctx:] = torch.ones(t, t, dtype=torch.bool).tril()
            self._enc_masks[key] = allowed.to(device)
        return self._enc_masks[key]

    def encode_tokens(self, images: torch.Tensor, eps_idx: torch.Tensor, num_tokens: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder pass at budget ``num_tokens``: (latents (B,T,latent_dim), p_halt (B,T))."""
        eps_idx = eps_idx.to(images.device)
        h, code = self._encode(images, eps_idx, num_tokens)
        # By default the halting loss does not reach the shared encoder (halt_grad_scale 0): its easy
        # early target (p_halt -> 0 everywhere) otherwise steers the trunk and the latents stall at the
        # mean image; even 2 % of it did so in small models. The head sees ε through its own bias.
        g = self.config.halt_grad_scale
        h_halt = h if g == 1.0 else h.detach() + g * (h - h.detach())
        detail = self.halting_detail(images, num_tokens, code)
        return self.to_tokens(h, code), self.halting_head(h_halt, eps_idx, detail)

    def encode_latents(self, images: torch.Tensor, eps_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """``encode_tokens`` without the halting head and its detail input: latents (B,T,latent_dim)
        for the searches, which keep every token."""
        return self.to_tokens(*self._encode(images, eps_idx.to(images.device), num_tokens))

    def halting_detail(self, images: torch.Tensor, num_tokens: int, code: torch.Tensor | None = None
                       ) -> torch.Tensor | None:
        """The halting head's per-token detail input (B, num_tokens, 1 or 3), or None without a spectral
        code: log RMS left after each token, and with ``halt_l1`` the log pixel L1 of the code at the
        budget below the token and at the smallest that includes it. ``code``: the images' spectral
        code (all T_max tokens) when the caller has it already."""
        if self.spectral is None:
            return None
        code = self.spectral.analyse(images) if code is None else code
        rms = self.spectral.detail_left(images, code)[:, :num_tokens, None]
        if not self.config.halt_l1:
            return rms
        # A token halts when the budgets below it already meet ε: the head reads the L1 of the budget
        # below the token and of the one that includes it (below the first: the colour mean alone).
        budgets = self.config.budgets
        ends = budgets[: bisect.bisect_left(budgets, num_tokens) + 1]
        after = self.spectral.prefix_l1(images, code, ends)
        none = (self.spectral.colour_mean.view(1, 3, 1, 1).clamp(0, 1) - images.float()).abs().mean(dim=(1, 2, 3))
        before = torch.cat([none[:, None], after[:, :-1]], dim=1)
        l1 = torch.log(torch.stack([before, after], dim=-1) + 1e-4)
        return torch.cat([rms, l1[:, self._budget_of_token(num_tokens, images.device)]], dim=-1)

    def _budget_of_token(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Index into ``config.budgets`` of the smallest budget that includes each token (num_tokens,)."""
        budgets = torch.tensor(self.config.budgets, device=device)
        return torch.searchsorted(budgets, torch.arange(1, num_tokens + 1, device=device))

    def latent_features(self, images: torch.Tensor, eps_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The encoder's normalised outputs at the latent tokens (B, T, width): what the bottleneck
        and the halting head read."""
        return self._encode(images, eps_idx, num_tokens)[0]

    def _encode(self, images: torch.Tensor, eps_idx: torch.Tensor, num_tokens: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.config
        if not 1 <= num_tokens <= cfg.max_tokens:
            raise ValueError(f"num_tokens must lie in 1..{cfg.max_tokens}, got {num_tokens}")
        b = images.shape[0]
        code = self.spectral_code(images)
        x2d = self.base.tokens(images * 2.0 - 1.0) + self.pos_2d
        eps_tok = self.eps_embed(eps_idx.to(images.device)).unsqueeze(1)
        lat = self.latent_inputs(code, 0, num_tokens, b)
        if self.direct is not None:
            lat = lat + self.direct.read(x2d)[:, :num_tokens]
        x = torch.cat([eps_tok, x2d, lat], dim=1)
        mask = self._encoder_mask(num_tokens, images.device)
        for blk in self.encoder:
            x = blk(x, mask)
        return self.enc_norm(x[:, 1 + cfg.num_2d_tokens:]), code

    # --- decoder -------------------------------------------------------------------------------
    def decode_tokens(self, latents: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct from latents (B,T,latent_dim); tokens where ``keep`` is False are dropped
        from the computation entirely, so their values cannot affect the output (for an ordered code,
        whose positions follow earlier values, when ``keep`` is a prefix, as ``kept`` makes it).
        Below ``token_step`` tokens (a 1-token budget) the rest of the first step enters as zero
        codes: a decoder trained on budgets of at least ``token_step`` tokens, given the first token
        alone, threw some flat colours off by 0.2 in L1."""
        latents, keep = self._fill_first_step(latents, keep)
        cfg = self.config
        b, t, _ = latents.shape
        n = cfg.num_2d_tokens
        z = self.unbottleneck(latents) + self.dec_latent_pos[:, :t]
        queries = self.mask_token.expand(b, n, -1) + self.dec_pos_2d
        # Halted tokens are zeros for the linear paths below (the attention path drops them instead).
        if self.direct is not None:
            kept = latents if keep is None else torch.where(keep.unsqueeze(-1), latents, torch.zeros_like(latents))
            queries = queries + self.direct.spread(kept)
        linear = None
        if self.spectral is not None:
            # The linear reconstruction of the kept tokens, refined by everything below.
            linear = self.spectral.synthesise(latents, keep)
            queries = queries + self.recon_embed(linear.to(queries.dtype) * 2.0 - 1.0).flatten(2).transpose(1, 2)
        attn_mask = None
        if keep is not None and not bool(keep.all()):
            counts = keep.sum(1)
            k = int(counts.max())
            # Kept tokens first, in their order; the rest of each row is padding, masked out.
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :k]
            z = torch.gather(z, 1, order.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
            real = torch.arange(k, device=z.device).unsqueeze(0) < counts.unsqueeze(1)
            if not bool(real.all()):
                key_ok = torch.cat([torch.ones(b, n, dtype=torch.bool, device=z.device), real], dim=1)
                attn_mask = key_ok[:, None, None, :]
        x = torch.cat([queries, z], dim=1)
        for blk in self.decoder:
            x = blk(x, attn_mask)
        h = self.dec_norm(x[:, :n])
        if linear is None:
            return self.base.pixels(h, cfg.grid) + 0.5
        return self.base.pixels(h, cfg.grid, skip=linear * 2.0 - 1.0) + linear

    def forward(self, images: torch.Tensor, eps_idx: torch.Tensor, num_tokens: int | None = None,
                halting: bool = False) -> ForwardOutput:
        """Training pass. With ``halting`` the decoder sees only tokens with p_halt <= threshold."""
        t = num_tokens or self.config.max_tokens
        latents, p_halt = self.encode_tokens(images, eps_idx, t)
        if halting:
            keep = self.kept(p_halt.detach())
        else:
            keep = torch.ones_like(p_halt, dtype=torch.bool)
        return ForwardOutput(self.decode_tokens(latents, keep), p_halt, keep)

    def kept(self, p_halt: torch.Tensor) -> torch.Tensor:
        """Tokens kept: p_halt <= threshold, and always those of the smallest budget (the least the
        search baselines can pick; without them a flat image could halt every token)."""
        keep = p_halt <= self.config.halt_threshold
        keep[:, : self.config.budgets[0]] = True
        if self.spectral is not None and self.spectral.ordered:   # positions follow earlier tokens
            keep = keep.cumprod(dim=1).bool()
        return keep

    # --- inference API -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: torch.Tensor, eps: float, num_tokens: int | None = None) -> Encoding:
        """One encoder pass at T_max (or ``num_tokens``) conditioned on ε: tokens, p_halt and kc."""
        images = images.to(self.device, self.dtype)
        idx = torch.full((images.shape[0],), eps_to_bin(eps), dtype=torch.long, device=images.device)
        latents, p_halt = self.encode_tokens(images, idx, num_tokens or self.config.max_tokens)
        return Encoding(latents.float(), p_halt, self.kept(p_halt), float(eps))

    @torch.inference_mode()
    def decode(self, encoding: Encoding) -> torch.Tensor:
        """One decoder pass over the kept tokens: images (B,3,R,R) in [0,1]."""
        lat = encoding.latents.to(self.device, self.dtype)
        return self.decode_tokens(lat, encoding.keep.to(self.device)).float().clamp_(0.0, 1.0)

    @torch.inference_mode()
    def complexity(self, images: torch.Tensor, eps: float) -> torch.Tensor:
        """Approximate Kolmogorov complexity at ε: the number of kept tokens per image."""
        return self.encode(images, eps).kc

    # --- the search baselines on the same model (search.py) -----------------------------------------
    def search_tokens(self, images: torch.Tensor, method: str = "search") -> TokenSource:
        """Tokens at growing budgets, conditioned on the smallest ε bin (phase 1 trains every budget
        under it), all kept: ``search`` re-encodes at every budget, ``prefix`` encodes once at T_max
        and slices (the encoder is causal in its latents, so both give the same tokens)."""
        idx0 = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        if method == "search":
            def reencode(rows: torch.Tensor, t: int) -> torch.Tensor:
                return self.encode_latents(images.index_select(0, rows), idx0[: len(rows)], t)

            return TokenSource(reencode, encoder_run_per_budget=True)
        if method == "prefix":
            full = self.encode_latents(images, idx0, self.config.max_tokens)
            return TokenSource(lambda rows, t: full.index_select(0, rows)[:, :t], encoder_run_per_budget=False)
        raise ValueError(f"unknown search method {method!r}; choose 'search' or 'prefix'")

    @torch.inference_mode()
    def search(self, images: torch.Tensor, eps: float, method: str = "search") -> SearchResult:
        """The search baseline on this model: the smallest budget whose reconstruction (all tokens,
        smallest ε bin) reaches pixel L1 <= ε, per image; ``search`` re-encodes at every budget (k
        encoder + k decoder runs), ``prefix`` decodes prefixes of one T_max encoding (1 + k)."""
        return sweep(self, images, eps, method, keep_recon=True).result(0)

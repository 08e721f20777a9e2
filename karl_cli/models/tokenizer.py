"""What every model shares: the 2D base, the learned 1D latent table, encoder blocks, the 12-d
bottleneck and the decoder, plus the records an encoding returns (docs/design.md §2).

``KARL`` (models/karl.py) and ``ALIT`` (models/alit.py) build on ``Tokenizer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from karl_cli.models.config import MODELS, KARLConfig
from karl_cli.models.dct import DCTCode
from karl_cli.models.layers import Block, ConvBase, DirectPaths, conv_stem
from karl_cli.models.pca import PCACode
from karl_cli.models.pretrained import Pretrained
from karl_cli.models.wavelet import WaveletCode


@dataclass
class ForwardOutput:
    """A training pass."""

    recon: torch.Tensor      # (B, 3, R, R), unclamped
    p_halt: torch.Tensor     # (B, T) float32
    keep: torch.Tensor       # (B, T) bool: the tokens the decoder saw


@dataclass
class Encoding:
    """What one encoder pass says about a batch of images at one ε.

    ``latents`` holds all T_max tokens; only those with ``keep`` are the image's representation
    (halted tokens have no effect on ``decode``).
    """

    latents: torch.Tensor    # (B, T_max, latent_dim)
    p_halt: torch.Tensor     # (B, T_max) in [0, 1]
    keep: torch.Tensor       # (B, T_max) bool
    eps: float

    @property
    def kc(self) -> torch.Tensor:
        """Token count (B,) long: T_max minus the halted tokens."""
        return self.keep.sum(1)

    @property
    def kc_soft(self) -> torch.Tensor:
        """A continuous companion of kc (B,) float: sum of (1 - p_halt)."""
        return (1.0 - self.p_halt).sum(1)

    def tokens(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image i's kept tokens (kc, latent_dim) and their positions (kc,)."""
        pos = self.keep[i].nonzero().squeeze(1)
        return self.latents[i, pos], pos


@dataclass
class TokenSource:
    """Tokens of a batch at growing budgets, for the oracle's search (``scoring/oracle.py``).
    ``tokens(rows, t)`` gives (len(rows), t, latent_dim) for the batch rows ``rows`` (ascending; a
    subset of the previous call's rows) at budget ``t``; it is called with t = T_1, T_2, … in order.
    ``encoder_run_per_budget``: whether each call costs an encoder run (re-encoding, ALIT iterations)
    or the encoder ran once up front (prefixes)."""

    tokens: Callable[[torch.Tensor, int], torch.Tensor]
    encoder_run_per_budget: bool


CODES = {"wavelet": WaveletCode, "dct": DCTCode, "pca": PCACode}
# Rows per decoder run on a CPU (``Tokenizer.decode``): 19 -> 12 ms per image on 256 Savoias images
# at ε 0.05 against the whole batch of 64 (docs/design.md §6).
CPU_DECODE_GROUP = 16


class Tokenizer(Pretrained, nn.Module):
    """The shared parts. ``code`` is the model's linear code (``WaveletCode``, ``DCTCode``) or None
    for learned tokens."""

    arch = ""              # set by each model: the config's ``arch``
    single_pass = False    # whether one encoder pass predicts the token count (a halting head)

    def __init__(self, config: KARLConfig) -> None:
        super().__init__()
        if config.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch={self.arch!r}, the config says {config.arch!r}")
        self.config = cfg = config
        n, w, dw = cfg.num_2d_tokens, cfg.width, cfg.dec_width
        self.base = ConvBase(cfg)
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
        self.code = CODES[cfg.code](cfg) if cfg.has_code else None
        self.direct = DirectPaths(cfg) if self.code is None else None
        # An ordered code's tokens are the code itself: no correction to learn (models/wavelet.py).
        ordered = self.code is not None and self.code.ordered
        self.bottleneck = None if ordered else nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.latent_dim))
        if self.code is not None:
            self.code_embed = nn.Linear(cfg.latent_dim, w)        # each latent starts from its own code
            self.recon_embed = conv_stem(cfg, cfg.base_channels, dw)                  # the decoder sees the code's reconstruction
            if self.bottleneck is not None:
                nn.init.zeros_(self.bottleneck[-1].weight)         # tokens start as the code
                nn.init.zeros_(self.bottleneck[-1].bias)

    # --- encoder side --------------------------------------------------------------------------
    def checked_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the model's device and dtype, after checking they are what the model reads:
        a float tensor (B, 3, R, R), R the model's resolution. Raises ValueError otherwise (a uint8
        batch would otherwise be read as values up to 255 and keep every token)."""
        r = self.config.resolution
        if not torch.is_tensor(images) or not images.is_floating_point():
            what = images.dtype if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be a float tensor in [0, 1] (B, 3, {r}, {r}), got {what}; "
                             "uint8 pixels: divide by 255 (karl_cli.load_images reads files as the model needs)")
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, r, r):
            raise ValueError(f"images must have shape (B, 3, {r}, {r}) for this model, got {tuple(images.shape)}")
        return images.to(self.device, self.dtype)

    def analyse(self, images: torch.Tensor) -> torch.Tensor | None:
        """The images' linear code (B, T_max, latent_dim), or None for learned tokens."""
        return None if self.code is None else self.code.analyse(images)

    def latent_inputs(self, codes: torch.Tensor | None, first: int, last: int, batch: int) -> torch.Tensor:
        """The encoder's inputs for latent tokens first..last-1 (B, last - first, width): learned
        tokens, plus their codes' embedding."""
        lat = self.latent_tokens[:, first:last].expand(batch, -1, -1)
        return lat if codes is None else lat + self.code_embed(codes[:, first:last].to(lat.dtype))

    def to_tokens(self, h: torch.Tensor, codes: torch.Tensor | None) -> torch.Tensor:
        """Encoder outputs (B, T, width) -> 12-d tokens (B, T, latent_dim): the bottleneck, plus the
        code where there is one, except an ordered code, whose tokens are the code itself."""
        if self.bottleneck is None:
            return codes[:, : h.shape[1]]
        z = self.bottleneck(h)
        return z if codes is None else codes[:, : z.shape[1]].to(z.dtype) + z

    # --- decoder -------------------------------------------------------------------------------
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

    def decode_tokens(self, latents: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct images (B, 3, R, R), unclamped, from latents (B, T, latent_dim); tokens where
        ``keep`` (B, T) is False are dropped from the computation entirely, so their values cannot
        affect the output (for an ordered code, whose positions follow earlier values, when ``keep``
        is a prefix, as ``KARL.kept`` makes it). Below ``token_step`` tokens (the wavelet code's
        1-token budget) the rest of the first step enters as zero codes (docs/design.md §2)."""
        latents, keep = self._fill_first_step(latents, keep)
        cfg = self.config
        b, t, _ = latents.shape
        n = cfg.num_2d_tokens
        z = self.unbottleneck(latents) + self.dec_latent_pos[:, :t]
        queries = self.mask_token.expand(b, n, -1) + self.dec_pos_2d
        if self.direct is not None:   # halted tokens enter the linear path as zeros
            kept = latents if keep is None else torch.where(keep.unsqueeze(-1), latents, torch.zeros_like(latents))
            queries = queries + self.direct.spread(kept)
        linear = None
        if self.code is not None:
            # The code's reconstruction of the kept tokens, refined by everything below.
            linear = self.code.synthesise(latents, keep)
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
        for i, blk in enumerate(self.decoder):   # only the 2D positions' rows of the last block are read
            x = blk(x, attn_mask, slice(0, n) if i == len(self.decoder) - 1 else None)
        h = self.dec_norm(x)
        if linear is None:
            return self.base.pixels(h, cfg.grid) + 0.5
        return self.base.pixels(h, cfg.grid, skip=linear * 2.0 - 1.0) + linear

    @torch.inference_mode()
    def decode(self, encoding: Encoding) -> torch.Tensor:
        """One decoder pass over the kept tokens: images (B, 3, R, R) in [0, 1].

        On a CPU the rows run in groups of ``CPU_DECODE_GROUP`` with similar kept counts: the
        decoder's attention is as long as a batch's longest row, so one image that keeps every token
        would otherwise make every row pay for T_max. Dropped tokens are masked out either way, so
        grouping changes no value beyond float rounding. A GPU takes the batch at once."""
        lat = encoding.latents.to(self.device, self.dtype)
        keep = encoding.keep.to(self.device)
        if lat.device.type != "cpu" or lat.shape[0] <= CPU_DECODE_GROUP:
            return self.decode_tokens(lat, keep).float().clamp_(0.0, 1.0)
        out = torch.empty(lat.shape[0], 3, self.config.resolution, self.config.resolution)
        for rows in torch.argsort(keep.sum(1), stable=True).split(CPU_DECODE_GROUP):
            k = keep[rows]
            last = int(k.any(0).nonzero().max()) + 1 if bool(k.any()) else 1   # tokens past it are all dropped
            out[rows] = self.decode_tokens(lat[rows, :last], k[:, :last]).float()
        return out.clamp_(0.0, 1.0)

    @property
    def reconstructs_from_code(self) -> bool:
        """Whether the kept tokens are the model's code itself, so ``code_reconstruction`` is defined:
        a code whose token positions follow earlier values (``ordered``, the wavelet KARL)."""
        return self.code is not None and self.code.ordered

    @torch.inference_mode()
    def code_reconstruction(self, encoding: Encoding) -> torch.Tensor:
        """The code's own reconstruction of the kept tokens: images (B, 3, R, R) in [0, 1], float32.

        Defined where the tokens ARE the code (``reconstructs_from_code``: the wavelet KARL, whose
        ordered code takes no learned correction, models/wavelet.py): the kept prefix of Haar
        coefficients, rescaled and put back by the inverse transform and colour basis (Haar
        synthesis, no network), then clamped. That is exactly the image the kept tokens describe, the
        ``linear`` path ``decode_tokens`` starts from before its learned refinement; the decoder's
        reconstruction is a different (usually slightly closer) image. Tokens ``analyse`` just made
        are recalled, not replayed (``WaveletCode.positions``), so the cost is one scatter and an
        inverse transform (~0.1 ms per image on a CPU). Raises ValueError for a model whose tokens
        are not its code (learned tokens, the DCT or PCA start of a KARL, ALIT)."""
        if not self.reconstructs_from_code:
            what = MODELS.get((self.config.arch, self.config.code), type(self).__name__)
            raise ValueError(f"{what} has no code reconstruction of its tokens (only the wavelet "
                             "KARL's tokens are its code); check the tokens with the decoder instead")
        lat = encoding.latents.to(self.device)
        keep = encoding.keep.to(self.device)
        return self.code.synthesise(lat, keep).float().clamp_(0.0, 1.0)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

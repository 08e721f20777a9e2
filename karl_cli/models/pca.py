"""The linear start of KARL's learned tokens: a principal-component code fitted to training crops.

The KARL paper distils its 1D tokens from a frozen, pretrained 2D tokenizer (a VQGAN); no such base
can be trained on a 2-core CPU, so karl's learned tokens start from a fitted linear code instead
and learn a correction on top (docs/design.md §5):

    token_t = pca_t + bottleneck(encoder output_t)          (the correction starts at zero)
    image   = synthesise(kept tokens) + decoder refinement  (the refinement starts at zero)

Token t starts as principal components 12t .. 12t + 11 of the whole image (whitened: unit variance
on the training crops), so every prefix is the best linear reconstruction of its size on them.
The mean image, the orthonormal components and their scales are fitted once (``fit``,
deterministic: float64 on the CPU, each component's sign fixed) and stored with the weights as
buffers, frozen like the paper's 2D base.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from karl_cli.models.config import KARLConfig


class PCACode(nn.Module):
    """Analyse images into whitened principal-component codes (B, T_max, latent_dim), and back.

    Same interface as ``DCTCode``. Halted or missing tokens are zeros, which synthesise to nothing.
    """

    ordered = False          # token positions are fixed
    fit_crops = 12288        # crops ``training.trainer.fit_code`` fits on (a covariance of 3·R² dims)
    crops_per_image = 12

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        r = cfg.resolution
        self.resolution = r
        self.latent_dim = cfg.latent_dim
        self.size = cfg.max_tokens * cfg.latent_dim   # at most 3·R²: KARLConfig refuses more
        dims = 3 * r * r
        # Fitted (``fit``); these defaults (a grey mean and the first pixel axes) are a usable code.
        self.register_buffer("colour_mean", torch.full((3,), 0.5))
        self.register_buffer("mean", torch.full((dims,), 0.5))
        # Rows: orthonormal components, stored in float16 (half the weights file; every use computes
        # in float32 from the same rounded rows, so analysis and synthesis stay each other's transpose).
        self.register_buffer("basis", torch.eye(self.size, dims, dtype=torch.float16))
        self.register_buffer("scale", torch.ones(self.size))         # std of each component

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Fit the mean image, the leading principal components and their scales to training images
        (N, 3, R, R) in [0, 1]. Deterministic for given images: float64 on the CPU, and each
        component's sign set so its largest entry is positive."""
        x = images.detach().to("cpu", torch.float64).flatten(1)
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        var, vecs = torch.linalg.eigh(cov)
        var, vecs = var.flip(0)[: self.size], vecs.flip(1)[:, : self.size].T.contiguous()
        sign = torch.sign(vecs.gather(1, vecs.abs().argmax(1, keepdim=True)))
        vecs = vecs * sign
        dev = self.mean.device
        self.colour_mean.copy_(images.detach().float().mean(dim=(0, 2, 3)).to(dev))
        self.mean.copy_(mean.float().to(dev))
        self.basis.copy_(vecs.to(self.basis.dtype).to(dev))
        self.scale.copy_(var.clamp_min(1e-8).sqrt().float().clamp_min(1e-4).to(dev))

    def analyse(self, images: torch.Tensor) -> torch.Tensor:
        """Whitened codes of the images: (B, max_tokens, latent_dim), in float32."""
        with torch.autocast(images.device.type, enabled=False):   # a linear code needs full precision
            c = (images.float().flatten(1) - self.mean) @ self.basis.float().T / self.scale
        return c.view(images.shape[0], -1, self.latent_dim)

    def detail_left(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """log RMS pixel error of the code's prefix reconstructions (B, max_tokens): entry t is what
        tokens 0..t leave out. ``code`` is ``analyse(images)``; the components are orthonormal, so the
        error's energy is the images' energy about the mean image less that of the coefficients sent."""
        with torch.autocast(images.device.type, enabled=False):
            sent = (code.float().flatten(1) * self.scale).square().cumsum(1)[:, self.latent_dim - 1::self.latent_dim]
            total = (images.float().flatten(1) - self.mean).square().sum(1, keepdim=True)
            return 0.5 * torch.log((total - sent).clamp_min(0.0) / self.mean.numel() + 1e-6)

    def prefix_l1(self, images: torch.Tensor, code: torch.Tensor, ends: Sequence[int]) -> torch.Tensor:
        """Pixel L1 of the clamped linear reconstruction from the first ``ends[s]`` tokens of codes
        (B, T, 12), for each s (B, len(ends)); ``ends`` ascending, at most T."""
        b, d = images.shape[0], self.latent_dim
        with torch.autocast(images.device.type, enabled=False):
            a = code[:, : ends[-1]].float().flatten(1) * self.scale[: ends[-1] * d]
            x = images.float().flatten(1)
            recon = self.mean.expand(b, -1).clone()
            out = x.new_empty(b, len(ends))
            start = 0
            for s, end in enumerate(ends):
                recon.addmm_(a[:, start * d:end * d], self.basis[start * d:end * d].float())
                out[:, s] = (recon.clamp(0.0, 1.0) - x).abs().mean(1)
                start = end
            return out

    def synthesise(self, codes: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, R, R) from codes (B, T <= max_tokens, latent_dim); absent tokens, and those
        where ``keep`` (B, T) is False, count as 0."""
        b, r = codes.shape[0], self.resolution
        if keep is not None:
            codes = torch.where(keep.unsqueeze(-1), codes, torch.zeros_like(codes))
        with torch.autocast(codes.device.type, enabled=False):
            flat = codes.float().flatten(1)
            k = flat.shape[1]
            return (torch.addmm(self.mean, flat * self.scale[:k], self.basis[:k].float())).view(b, 3, r, r)

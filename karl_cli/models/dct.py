"""The DCT code ALIT's tokens start from: a fixed linear code between pixels and 1D tokens, which
the networks refine (why a code: docs/design.md §4).

Token t starts as 12 coefficients of the whole image's 2D DCT, taken in a decorrelated colour space,
in order of their variance on the training images: token 0 holds the largest-variance
(lowest-frequency, brightness) coefficients, later tokens finer detail. Every prefix is close to the
best linear reconstruction of its size for stationary images, so the model starts as a
coarse-to-fine tokenizer and its networks learn a correction on top:

    token_t   = code_t + bottleneck(encoder output_t)          (the correction starts at zero)
    image     = synthesise(kept tokens) + decoder refinement   (the refinement starts at zero)

The colour basis, coefficient order and scales are fitted once on training crops (``fit``) and
stored with the weights as buffers; the DCT matrix is recomputed.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from karl_cli.models.config import KARLConfig


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: ``dct_matrix(n) @ x`` transforms a length-n signal."""
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


@torch.no_grad()
def fit_colour(path: nn.Module, images: torch.Tensor) -> None:
    """Set a linear code's ``colour_mean`` and ``colour_basis`` (columns: principal colour axes,
    largest variance first) from training images in [0, 1]."""
    pixels = images.float().permute(0, 2, 3, 1).reshape(-1, 3)
    mean = pixels.mean(0)
    _, vecs = torch.linalg.eigh(torch.cov((pixels - mean).T))
    path.colour_mean.copy_(mean)
    path.colour_basis.copy_(vecs.flip(1))


def log_rms_left(images: torch.Tensor, colour_mean: torch.Tensor, sent: torch.Tensor) -> torch.Tensor:
    """log RMS pixel error left after each token (B, T), given the energy (B, T) of the coefficients
    sent up to each token of an orthonormal code about ``colour_mean``: by Parseval, the images'
    energy about that mean less what was sent."""
    x = images.float() - colour_mean.view(1, 3, 1, 1)
    total = x.square().flatten(1).sum(1, keepdim=True)
    return 0.5 * torch.log((total - sent).clamp_min(0.0) / x[0].numel() + 1e-6)


class DCTCode(nn.Module):
    """Analyse images into ordered, unit-variance DCT codes (B, T, latent_dim), and synthesise back.

    Halted or missing tokens are zeros, which synthesise to nothing: the code is linear.
    """

    ordered = False   # token positions are fixed (wavelet.py's are not)

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        r = cfg.resolution
        self.resolution = r
        self.latent_dim = cfg.latent_dim
        self.size = cfg.max_tokens * cfg.latent_dim   # at most 3·R²: KARLConfig refuses more
        self.register_buffer("dct", dct_matrix(r), persistent=False)
        # Fitted statistics (``fit``); these defaults are a usable code before fitting.
        self.register_buffer("colour_mean", torch.full((3,), 0.5))
        self.register_buffer("colour_basis", torch.eye(3))          # columns: colour axes
        self.register_buffer("order", torch.arange(self.size))      # coefficient index per code slot
        self.register_buffer("scale", torch.ones(self.size))        # std of each coded coefficient

    def _coefficients(self, images: torch.Tensor) -> torch.Tensor:
        """All 3·R² DCT coefficients of the images in the colour basis, flattened (B, 3·R²)."""
        x = images.float() - self.colour_mean.view(1, 3, 1, 1)
        x = torch.einsum("bchw,cd->bdhw", x, self.colour_basis)
        return (self.dct @ x @ self.dct.T).flatten(1)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Fit the colour basis, coefficient order and scales to a batch of training images in [0, 1]."""
        fit_colour(self, images)
        var = self._coefficients(images).var(0)
        top = torch.argsort(var, descending=True)[: self.size]
        self.order.copy_(top)
        self.scale.copy_(var[top].sqrt().clamp_min(1e-4))

    def analyse(self, images: torch.Tensor) -> torch.Tensor:
        """Ordered, scaled codes of the images: (B, max_tokens, latent_dim), in float32."""
        with torch.autocast(images.device.type, enabled=False):   # a linear code needs full precision
            c = self._coefficients(images).index_select(1, self.order) / self.scale
        return c.view(images.shape[0], -1, self.latent_dim)

    def detail_left(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """log RMS pixel error of the linear code's prefix reconstructions (B, max_tokens): entry t is
        what tokens 0..t leave out. A cheap, exact hint for the halting head of how much detail
        remains after each token. ``code`` is ``analyse(images)``; the transforms are orthonormal, so
        (Parseval) the images' total energy about the colour mean is that of all their coefficients,
        and no second transform is needed."""
        with torch.autocast(images.device.type, enabled=False):
            coded = (code.float().flatten(1) * self.scale).square().cumsum(1)[:, self.latent_dim - 1::self.latent_dim]
            return log_rms_left(images, self.colour_mean, coded)

    def prefix_l1(self, images: torch.Tensor, code: torch.Tensor, ends: Sequence[int]) -> torch.Tensor:
        """Pixel L1 of the clamped linear reconstruction from the first ``ends[s]`` tokens of codes
        (B, T, 12), for each s (B, len(ends)); ``ends`` ascending, at most T. That is the quantity ε
        bounds; the RMS of ``detail_left`` tells it only loosely (edges and texture share an RMS but
        not an L1).

        Each segment adds a sum of separable basis images, one per coefficient: colour axis x row
        cosine x column cosine; adding them segment by segment into one running image costs about as
        much as a small conv layer, and no (coefficients x pixels) basis matrix is stored."""
        r = self.resolution
        b = images.shape[0]
        d = self.latent_dim
        with torch.autocast(images.device.type, enabled=False):
            slots = ends[-1] * d
            order = self.order[:slots]
            colour = self.colour_basis.T[order // (r * r)]                   # per slot: colour axis,
            rows = self.dct[(order // r) % r]                                # row cosine,
            cols = self.dct[order % r]                                       # column cosine
            a = code[:, : ends[-1]].float().flatten(1) * self.scale[:slots]
            x = images.float()
            recon = self.colour_mean.view(1, 3, 1, 1).expand(b, 3, r, r).reshape(b * 3 * r, r).clone()
            out = x.new_empty(b, len(ends))
            start = 0
            for s, end in enumerate(ends):
                seg = slice(start * d, end * d)
                # (b, 3, R, K): coefficient x colour x row cosine, then one matmul with the column cosines
                w = a[:, None, None, seg] * colour[seg].T[None, :, None, :] * rows[seg].T[None, None, :, :]
                recon.addmm_(w.reshape(b * 3 * r, -1), cols[seg])
                out[:, s] = (recon.view(b, 3, r, r).clamp(0.0, 1.0) - x).abs().mean(dim=(1, 2, 3))
                start = end
            return out

    def synthesise(self, codes: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, R, R) from codes (B, T <= max_tokens, latent_dim); absent tokens, and those
        where ``keep`` (B, T) is False, count as 0."""
        b = codes.shape[0]
        r = self.resolution
        if keep is not None:
            codes = torch.where(keep.unsqueeze(-1), codes, torch.zeros_like(codes))
        with torch.autocast(codes.device.type, enabled=False):
            flat = codes.float().flatten(1)
            k = flat.shape[1]
            full = flat.new_zeros(b, 3 * r * r).index_copy(1, self.order[:k], flat * self.scale[:k])
            x = self.dct.T @ full.view(b, 3, r, r) @ self.dct
            return torch.einsum("bdhw,cd->bchw", x, self.colour_basis) + self.colour_mean.view(1, 3, 1, 1)

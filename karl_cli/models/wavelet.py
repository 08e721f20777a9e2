"""The wavelet code of the default KARL model: a Haar wavelet code whose order adapts to each
image, and that the decoder can replay from the tokens alone (why: docs/design.md §4).

Natural images are sparse in a wavelet basis, and where a coefficient is large its children (the
same place and orientation one scale finer) tend to be large too; that is what zerotree coders
(EZW, SPIHT) exploit. Here:

- The image, in a decorrelated colour space, is split by an orthonormal 2D Haar transform into a
  tree: each coefficient has four children one scale finer (the coarsest ones hang off the
  colour means).
- Token t holds the 12 coefficients of highest *priority* not yet sent, divided by their standard
  deviation on training crops. A coefficient's priority is its training variance, scaled by how
  strong its parent turned out: var x (parent² + κ) / (1 + κ) in units of the parent's deviation;
  one whose parent has not been sent yet waits (it ranks below every available one, in a fixed
  order). The first token holds the 12 tree roots.
- Priorities depend only on values already sent, so the decoder replays the same choices from the
  tokens and needs no positions: the code is a 1D token sequence like the DCT's, every prefix
  decodes, and the count needed to reach ε follows where an image's detail actually is.

Because positions follow from earlier values, a token's value may not be changed after the fact:
KARL adds no learned correction to this code (``ordered``), and a model keeps tokens as a prefix.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

import karl_cli.models.wavelet_kernels as kernels
from karl_cli.models.config import KARLConfig
from karl_cli.models.dct import fit_colour, log_rms_left

# Open from the first token: the colour means and the coarsest details (3 channels x (1 + 3)).
ROOTS = 12


def haar_forward(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal multi-level 2D Haar transform of (B, C, R, R), R a power of two, flattened
    coarse to fine: [colour means (C), coarsest details (C x 3 x 1 x 1), ..., finest (C x 3 x R/2 x R/2)]
    with the detail blocks laid out (channel, orientation, row, column)."""
    parts = []
    a = x
    while a.shape[-1] > 1:
        p, q, r, s = a[..., 0::2, 0::2], a[..., 0::2, 1::2], a[..., 1::2, 0::2], a[..., 1::2, 1::2]
        parts.append(torch.stack([(p - q + r - s), (p + q - r - s), (p - q - r + s)], dim=2).flatten(1) / 2)
        a = (p + q + r + s) / 2
    parts.append(a.flatten(1))
    return torch.cat(parts[::-1], dim=1)


def haar_inverse(c: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """Inverse of ``haar_forward``: (B, C·R²) -> (B, C, R, R)."""
    b = c.shape[0]
    a = c[:, :channels].view(b, channels, 1, 1)
    i = channels
    s = 1
    while s < resolution:
        n = channels * 3 * s * s
        d = c[:, i:i + n].view(b, channels, 3, s, s)
        i += n
        h, v, g = d[:, :, 0], d[:, :, 1], d[:, :, 2]
        top = torch.stack([a + h + v + g, a - h + v - g], dim=-1)            # (B, C, s, s, 2): even rows
        bottom = torch.stack([a + h - v - g, a - h - v + g], dim=-1)         # odd rows
        a = torch.stack([top, bottom], dim=-3).reshape(b, channels, 2 * s, 2 * s) / 2
        s *= 2
    return a


def haar_tree(channels: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Parent (N,) and children (N, 4) indices of the ``haar_forward`` layout. Roots (the colour
    means and the coarsest details) have parent -1; the coarsest details hang off their channel's
    mean in the tree but are sent with it. Missing children point at N (a padding slot)."""
    n = channels * resolution * resolution
    parent = torch.full((n,), -1, dtype=torch.long)
    children = torch.full((n, 4), n, dtype=torch.long)
    start = {}                                 # first index of the details at each side length
    s, i = 1, channels
    while s < resolution:
        start[s] = i
        i += channels * 3 * s * s
        s *= 2
    s = 2
    while s < resolution:
        ch, o, y, x = torch.meshgrid(torch.arange(channels), torch.arange(3), torch.arange(s), torch.arange(s),
                                     indexing="ij")
        idx = start[s] + ((ch * 3 + o) * s + y) * s + x
        up = start[s // 2] + ((ch * 3 + o) * (s // 2) + y // 2) * (s // 2) + x // 2
        parent[idx.flatten()] = up.flatten()
        children[up.flatten(), ((y % 2) * 2 + x % 2).flatten()] = idx.flatten()
        s *= 2
    return parent, children


def haar_layout(channels: int, resolution: int) -> tuple[np.ndarray, ...]:
    """Where each coefficient of the ``haar_forward`` layout sits: (channel, side, orientation, row,
    column), each (C·R²,) int64. Side is the detail grid's side length (1 .. R/2), 0 for a colour mean."""
    parts: list[np.ndarray] = [np.stack([np.arange(channels), np.zeros(channels, np.int64),
                                         np.zeros(channels, np.int64), np.zeros(channels, np.int64),
                                         np.zeros(channels, np.int64)], axis=1)]
    s = 1
    while s < resolution:
        ch, o, y, x = np.meshgrid(np.arange(channels), np.arange(3), np.arange(s), np.arange(s), indexing="ij")
        parts.append(np.stack([ch.ravel(), np.full(ch.size, s), o.ravel(), y.ravel(), x.ravel()], axis=1))
        s *= 2
    table = np.concatenate(parts).astype(np.int64)
    return tuple(np.ascontiguousarray(table[:, i]) for i in range(5))


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` (3, 3) applied to the colour of every pixel of x (B, 3, H, W): one batched matmul,
    an order of magnitude faster on CPU than the equivalent einsum (``prefix_l1`` runs it per step)."""
    b, c, h, w = x.shape
    return (matrix @ x.reshape(b, c, h * w)).view(b, c, h, w)


class WaveletCode(nn.Module):
    """Analyse images into adaptively ordered, unit-variance Haar codes (B, T, latent_dim), and
    synthesise back. Same interface as ``DCTCode``; ``ordered``: token positions depend on
    the values of earlier tokens, so tokens are kept as a prefix and never corrected."""

    ordered = True

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        r = cfg.resolution
        if r & (r - 1):
            raise ValueError(f"a wavelet code needs a power-of-two resolution, not {r}")
        self.resolution = r
        self.latent_dim = cfg.latent_dim
        self.max_tokens = cfg.max_tokens
        self.size = 3 * r * r   # the tokens' values fit in it: KARLConfig refuses more
        self.register_buffer("kids", haar_tree(3, r)[1], persistent=False)   # children of each coefficient
        # Fitted statistics (``fit``); these defaults are a usable code before fitting.
        self.register_buffer("colour_mean", torch.full((3,), 0.5))
        self.register_buffer("colour_basis", torch.eye(3))          # columns: colour axes
        self.register_buffer("scale", torch.ones(self.size))        # std of each coefficient
        # The last codes ``analyse`` made (a private copy) and their positions. The halting hints, the
        # decoder and the searches ask for the order of those codes again, or of some of their rows
        # or prefixes, and replaying it costs as much as making it: ``_recall`` finds them by content.
        self._memo: tuple[torch.Tensor, torch.Tensor] | None = None
        self._kernel_tables: tuple | None = None
        self._haar_layout: tuple[np.ndarray, ...] | None = None

    def _coefficients(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() - self.colour_mean.view(1, 3, 1, 1)
        return haar_forward(_mix(self.colour_basis.T, x))

    def _pixels(self, coefficients: torch.Tensor) -> torch.Tensor:
        x = haar_inverse(coefficients, 3, self.resolution)
        return _mix(self.colour_basis, x) + self.colour_mean.view(1, 3, 1, 1)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Fit the colour basis and coefficient scales to a batch of training images in [0, 1]."""
        fit_colour(self, images)
        self.scale.copy_(self._coefficients(images).var(0).sqrt().clamp_min(1e-4))

    def _tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """numpy views the kernels need: priors (n,) float32, children (n, 4) int64, and the
        coefficients by descending prior (n,) int64; rebuilt when ``scale`` changes (fit, load)."""
        key = (self.scale._version, self.scale.data_ptr())
        if self._kernel_tables is None or self._kernel_tables[0] != key:
            var = self.scale.detach().float().cpu().square().numpy()
            by_prior = np.argsort(-var, kind="stable").astype(np.int64)
            self._kernel_tables = (key, (var, self.kids.cpu().numpy(), by_prior))
        return self._kernel_tables[1]

    def _order(self, values: torch.Tensor, from_tokens: bool, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, tokens, latent_dim) long and normalised values (B, tokens, latent_dim) float32
        of the adaptive order (``wavelet_kernels.order``), from coefficients (B, n) or tokens."""
        var, kids, by_prior = self._tables()
        kernels.use_threads(torch.get_num_threads())
        arr = values.detach().float().cpu().numpy()
        arr = np.ascontiguousarray(arr if from_tokens else arr[:, None, :])
        pos, vals = kernels.order(arr, from_tokens,
                                  var, kids, by_prior, ROOTS, tokens, self.latent_dim)
        return torch.from_numpy(pos).to(values.device), torch.from_numpy(vals).to(values.device)

    def analyse(self, images: torch.Tensor) -> torch.Tensor:
        """Adaptively ordered, scaled codes of the images: (B, max_tokens, latent_dim), float32."""
        with torch.autocast(images.device.type, enabled=False):
            z = self._coefficients(images) / self.scale
            if self._memo is not None:
                made, pos = self._memo
                rows = self._recall(z.gather(1, pos[:1, 0].expand(z.shape[0], -1)))
                # Same values at the remembered positions means the same choices at every step.
                if rows is not None and torch.equal(z.gather(1, pos[rows].flatten(1)).view_as(made[rows]), made[rows]):
                    return made[rows]
            pos, out = self._order(z, False, self.max_tokens)
            self._memo = (out.clone(), pos)
            return out

    def _recall(self, first: torch.Tensor) -> torch.Tensor | None:
        """For first tokens (B, latent_dim), the rows of the remembered codes that start alike, or
        None if some row has no such match (the caller checks the rest of each row)."""
        made = self._memo[0]
        if first.device != made.device:
            return None
        same = (first[:, None, :] == made[None, :, 0, :]).all(-1)
        if not bool(same.any(1).all()):
            return None
        return same.to(torch.int8).argmax(1)

    def positions(self, codes: torch.Tensor) -> torch.Tensor:
        """The coefficient index of every code value (B, T, latent_dim), replayed from the codes (or
        recalled, for codes ``analyse`` just made)."""
        b, t, _ = codes.shape
        codes = codes.float()
        if self._memo is not None and 0 < t <= self._memo[0].shape[1]:
            made, pos = self._memo
            rows = self._recall(codes[:, 0])
            if rows is not None and torch.equal(made[rows, :t], codes):
                return pos[rows, :t]
        return self._order(codes, True, t)[0]

    def detail_left(self, images: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """log RMS pixel error left after each token (B, T): by Parseval, the images' energy about
        the colour mean less that of the coefficients sent so far."""
        with torch.autocast(images.device.type, enabled=False):
            sent = (code.float() * self.scale[self.positions(code)]).square().sum(2).cumsum(1)
            return log_rms_left(images, self.colour_mean, sent)

    def prefix_l1(self, images: torch.Tensor, code: torch.Tensor, ends: Sequence[int]) -> torch.Tensor:
        """Pixel L1 of the clamped reconstruction from the first ``ends[s]`` tokens, for each s
        (B, len(ends)) float32; ``ends`` ascending, at most the tokens in ``code``. One sweep per
        image that adds tokens in order and re-scores only the pixels each touches
        (``wavelet_kernels.prefix_l1``)."""
        with torch.autocast(images.device.type, enabled=False):
            code = code[:, : ends[-1]].float()
            pos = self.positions(code)
            values = code * self.scale[pos]
            layout = self._layout()
            kernels.use_threads(torch.get_num_threads())
            out = kernels.prefix_l1(
                np.ascontiguousarray(images.detach().float().cpu().numpy()),
                np.ascontiguousarray(values.detach().cpu().numpy()), np.ascontiguousarray(pos.cpu().numpy()),
                np.asarray(list(ends), dtype=np.int64),
                self.colour_basis.detach().double().cpu().numpy(), self.colour_mean.detach().double().cpu().numpy(),
                *layout)
            return torch.from_numpy(out).to(images.device, torch.float32)

    def _layout(self) -> tuple[np.ndarray, ...]:
        """(channel, side, orientation, row, column) of each position of the ``haar_forward`` layout,
        (n,) int64 each; side 0 marks a colour mean."""
        if self._haar_layout is None:
            self._haar_layout = haar_layout(3, self.resolution)
        return self._haar_layout

    def synthesise(self, codes: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, R, R) from codes (B, T <= max_tokens, latent_dim); absent tokens, and those
        where ``keep`` (B, T) is False, count as 0. Positions are replayed from all the codes given,
        so with ``keep`` a prefix the result is that of the kept tokens alone, and the codes
        ``analyse`` just made need no replay."""
        with torch.autocast(codes.device.type, enabled=False):
            codes = codes.float()
            pos = self.positions(codes)
            values = codes * self.scale[pos]
            if keep is not None:
                values = torch.where(keep.unsqueeze(-1), values, torch.zeros_like(values))
            coef = codes.new_zeros(codes.shape[0], self.size).scatter_(1, pos.flatten(1), values.flatten(1))
            return self._pixels(coef)

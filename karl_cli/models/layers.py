"""The building blocks every model shares: a pre-LN transformer block, the conv 2D base, and the
halting head (docs/design.md §2)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from karl_cli.models.config import KARLConfig


def at_position(table: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` (n, ...) at positions ``pos`` (B,): a long tensor indexes rows; a float
    tensor interpolates linearly between neighbouring rows (an integral position gives the row
    itself, exactly). How a model is conditioned on an ε between its trained bins."""
    if not pos.is_floating_point():
        return table[pos]
    lo = pos.detach().floor().long().clamp_(0, table.shape[0] - 1)
    hi = (lo + 1).clamp_(max=table.shape[0] - 1)
    w = (pos - lo).to(table.dtype).view(-1, *([1] * (table.dim() - 1)))
    return table[lo] + w * (table[hi] - table[lo])


class Block(nn.Module):
    """Pre-LN transformer block; attention through SDPA (flash/efficient kernels on CUDA).

    ``forward(x (B, N, width), mask)`` -> (B, N, width); ``mask`` is a boolean attention mask
    broadcastable to (B, heads, N, N), True where attention is allowed.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
        """``rows``: compute the outputs of these rows only (every row still serves as a key and value):
        (B, len(rows), width). A last block whose other rows nobody reads skips their work."""
        b, n, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if rows is not None:
            x, q = x[:, rows], q[:, :, rows]
            if mask is not None:
                mask = mask[..., rows, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(b, q.shape[2], c))
        return x + self.mlp(self.ln2(x))


def conv_stem(cfg: KARLConfig, channels: int, out_channels: int) -> nn.Sequential:
    """Pixels (B, 3, R, R) in [-1, 1] -> a (B, out_channels, grid, grid) feature map: strided convs,
    ``channels`` wide at full resolution, doubling per 2x downsampling."""
    stages = int(math.log2(cfg.patch_size))
    chans = [channels * 2**i for i in range(stages)]
    down: list[nn.Module] = [nn.Conv2d(3, chans[0], 3, padding=1), nn.GELU()]
    for i in range(stages):
        out = chans[i + 1] if i + 1 < stages else out_channels
        down.append(nn.Conv2d(chans[i], out, 4, stride=2, padding=1))
        if i + 1 < stages:
            down.append(nn.GELU())
    return nn.Sequential(*down)


class ConvBase(nn.Module):
    """The 2D tokenizer: a small conv stem makes the 2D tokens, a conv head turns the decoder's
    outputs at the 2D positions back into pixels. Convolutions do the local pixel work, which a CPU
    learns far faster than a linear patch map (docs/design.md §5).

    With a linear code (wavelet, DCT) the head also sees the code's reconstruction at full
    resolution (``skip``) and its last layer starts at zero, so the decoder starts as the code and
    learns a correction."""

    def __init__(self, cfg: KARLConfig) -> None:
        super().__init__()
        stages = int(math.log2(cfg.patch_size))
        chans = [cfg.base_channels * 2**i for i in range(stages)]
        self.stem = conv_stem(cfg, cfg.stem_channels, cfg.width)
        up: list[nn.Module] = [nn.Conv2d(cfg.dec_width, chans[-1], 3, padding=1), nn.GELU()]
        prev = chans[-1]
        for c in reversed(chans):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, c, 3, padding=1), nn.GELU()]
            prev = c
        final = nn.Conv2d(prev + (3 if cfg.has_code else 0), 3, 3, padding=1)
        if cfg.has_code:
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)
        self.head = nn.Sequential(*up, final)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, R, R) in [-1, 1] -> 2D tokens (B, grid², width)."""
        return self.stem(x).flatten(2).transpose(1, 2)

    def pixels(self, h: torch.Tensor, grid: int, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder outputs (B, grid², dec_width) (+ the code's reconstruction (B, 3, R, R) in [-1, 1])
        -> pixels (B, 3, R, R), a residual about 0."""
        b, _, c = h.shape
        x = h.transpose(1, 2).reshape(b, c, grid, grid)
        if skip is None:
            return self.head(x)
        y = self.head[:-1](x)
        return self.head[-1](torch.cat([y, skip.to(y.dtype)], dim=1))


class DirectPaths(nn.Module):
    """Linear shortcuts between the 2D grid and learned 1D tokens, beside attention.

    read: each latent token starts from its own linear read-out of the (channel-reduced) 2D grid;
    spread: each 2D position starts from a linear map of the kept 12-d tokens (halted ones are zero,
    so they still cannot affect the output). Without them attention must learn from scratch which
    token talks to which position, which kept learned models at the mean image for thousands of CPU
    steps (docs/design.md §5). Causality holds: token t depends on the image and tokens <= t.
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
        """2D tokens (B, grid², width) -> a start for every latent token (B, T_max, width)."""
        b = x2d.shape[0]
        return self.read_up(self.read_map(self.reduce(x2d).flatten(1)).view(b, self.t, self.d))

    def spread(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, T <= T_max, latent_dim), halted ones already zero -> 2D-position features
        (B, grid², dec_width)."""
        b, t, c = latents.shape
        if t < self.t:
            latents = torch.cat([latents, latents.new_zeros(b, self.t - t, c)], dim=1)
        return self.spread_up(self.spread_map(latents.flatten(1)).view(b, self.n, self.d))


class HaltingHead(nn.Module):
    """LN -> Linear (+ ε-bin bias, + detail) -> Tanh -> Linear -> sigmoid: p_halt for each 1D token
    (paper §3.2, with two additions; docs/design.md §2 says why).

    - A per-bin bias hands the head ε directly, not only through the encoder's ε token.
    - With a linear code (``detail`` > 0) the head also reads, per token, the code's exact errors:
      the log RMS error left after the token, and the log pixel L1 at the budgets below and above
      it, taken relative to ε as log(error / ε) x ``RELATIVE_GAIN`` (the weights start divided by
      the gain, which only multiplies their learning rate). A token should halt once the error
      before its step is below ε.

    ``forward(h (B, T, width), eps_pos (B,), detail (B, T, detail))`` -> p_halt (B, T) float32;
    ``eps_pos`` is ε's bin index (long) or position between bins (float, ``config.eps_position``).
    """

    RELATIVE_GAIN = 8.0

    def __init__(self, width: int, hidden: int, eps_bins: tuple[float, ...], detail: int = 0) -> None:
        super().__init__()
        self.register_buffer("log_eps", torch.log(torch.tensor(eps_bins, dtype=torch.float32)), persistent=False)
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, hidden)
        self.eps_bias = nn.Embedding(len(eps_bins), hidden)
        nn.init.zeros_(self.eps_bias.weight)
        self.detail_in = nn.Linear(detail, hidden) if detail else None
        if self.detail_in is not None:
            with torch.no_grad():   # the gain speeds learning; it must not saturate the tanh at the start
                self.detail_in.weight.div_(self.RELATIVE_GAIN)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor, eps_pos: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        return self.at_offset(self.features(h, detail), self.eps_offset(eps_pos))

    # The head is affine in its ε inputs before the tanh: z = features(h, detail) + eps_offset(ε). The
    # split lets inference evaluate many ε on one set of features (KARL.halting_at).
    def features(self, h: torch.Tensor, detail: torch.Tensor | None = None) -> torch.Tensor:
        """The part of the pre-activation that does not depend on ε: (B, T, hidden)."""
        z = self.fc1(self.norm(h))
        if self.detail_in is not None:
            if detail is None:
                raise ValueError("this halting head needs the per-token detail of the model's code")
            z = z + self.detail_in((detail * self.RELATIVE_GAIN).to(z.dtype))
        return z

    def eps_offset(self, eps_pos: torch.Tensor) -> torch.Tensor:
        """The part that does: the ε-bin bias minus the detail weights times log ε (B, hidden)."""
        off = at_position(self.eps_bias.weight, eps_pos)
        if self.detail_in is not None:
            log_eps = at_position(self.log_eps, eps_pos).view(-1, 1)
            off = off - self.RELATIVE_GAIN * log_eps * self.detail_in.weight.sum(dim=1)
        return off

    def at_offset(self, features: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """p_halt (B, T) float32 from ``features`` (B, T, hidden) and one ``eps_offset`` (B, hidden)."""
        z = features + offset.unsqueeze(1).to(features.dtype)
        return torch.sigmoid(self.fc2(torch.tanh(z)).squeeze(-1).float())

    # Rows of features per step of ``running_max_logits``: a chunk's pre-activations stay in a core's
    # cache across its grid points (64 rows x 384 tokens x 64 hidden is 6 MiB; 8 rows about 0.8 MiB).
    GRID_CHUNK = 8

    @torch.inference_mode()
    def running_max_logits(self, features: torch.Tensor, offsets: torch.Tensor,
                           start: torch.Tensor | None = None) -> torch.Tensor:
        """The running maximum over ``offsets`` (G, hidden) — ``eps_offset`` at G grid points, in order —
        of the halting logits (the head's output before the sigmoid) for ``features`` (B, T, hidden):
        (G, B, T) float32, entry g the largest logit at offsets 0..g (and ``start`` (B, T), a running
        maximum carried in from earlier grid points). The same values as ``at_offset``'s logits, computed
        for inference with tanh(z) = 2·sigmoid(2z) − 1 (a CPU evaluates sigmoid several times faster
        than tanh) and chunked so each chunk's features stay in cache across the grid."""
        w = self.fc2.weight.reshape(-1).to(features.dtype)
        w2, c = 2.0 * w, self.fc2.bias.to(features.dtype) - w.sum()
        f2, off2 = 2.0 * features, 2.0 * offsets.to(features.dtype)
        b, t, _ = features.shape
        out = features.new_empty(len(offsets), b, t)
        for rows in range(0, b, self.GRID_CHUNK):
            f = f2[rows:rows + self.GRID_CHUNK]
            buf = torch.empty_like(f)
            best = None if start is None else start[rows:rows + self.GRID_CHUNK].to(features.dtype)
            for g in range(len(offsets)):
                torch.sigmoid(torch.add(f, off2[g], out=buf), out=buf)
                s = torch.matmul(buf, w2).add_(c)
                dest = out[g, rows:rows + self.GRID_CHUNK]
                best = dest.copy_(s) if best is None else torch.maximum(best, s, out=dest)
        return out.float()

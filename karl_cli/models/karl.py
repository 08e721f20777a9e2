"""KARL: the single-pass adaptive image tokenizer (arXiv 2507.07995, §3).

One forward pass (docs/design.md §2):

    image -> base 2D tokens (+pos) ─┐
    ε-bin token ────────────────────┼-> encoder -> latents -> halting head -> p_halt per token
    learned 1D latent tokens[:T] ───┘                     -> 12-d tokens (bottleneck, or the code)
    kept 12-d tokens -> decoder (mask tokens at the 2D positions) -> base head -> image

Inside the encoder the context (ε token + 2D tokens) does not attend to the latents, and latent t
attends only to latents <= t. So encoding at budget T is exactly the first T tokens of encoding at
T_max: every prefix is a valid encoding, and the oracle's searches run on the same model.

Two codes: ``wavelet`` (the shipped default; tokens are the image's Haar code in an adaptive
order and the networks refine the reconstruction and predict halting) and ``learned`` (the
papers' tokenizer: tokens come from the bottleneck alone).
"""
from __future__ import annotations

import bisect

import torch
import torch.nn as nn

from karl_cli.models.config import EPS_BINS, KARLConfig, eps_position
from karl_cli.models.pretrained import register
from karl_cli.models.tokenizer import Encoding, ForwardOutput, TokenSource, Tokenizer
from karl_cli.models.layers import HaltingHead, at_position


# The ε a coded model's encoder is conditioned on for the halting features at inference
# (KARL.halting_at): its head reads ε directly, and the shipped model barely uses the encoder's ε token
# (features at one ε changed 0.5 % of its counts). One set of features lets every ε share a pass and
# makes the monotone rule exact; 0.05 (the default ε) moved the fewest counts.
HALT_FEATURES_EPS = 0.05
# Grid points per interval between two trained ε bins at which the halting rule reads the head.
HALT_GRID_STEPS = 4
# Between two grid points p_halt is blended in logits, each clamped to ±logit(1 − 1e-6).
HALT_LOGIT_LIMIT = 13.815510557964274


@register
class KARL(Tokenizer):
    """Single-pass adaptive image tokenizer (arXiv 2507.07995)."""

    arch = "karl"
    single_pass = True

    def __init__(self, config: KARLConfig) -> None:
        super().__init__(config)
        w = config.width
        self.eps_embed = nn.Embedding(len(EPS_BINS), w)
        # The head reads the code's per-token errors where there is a code and the config says so
        # (the paper's head reads the encoder's outputs only: ``halt_reads_code`` false).
        self.reads_code = self.code is not None and config.halt_reads_code
        self.halting_head = HaltingHead(w, config.halt_hidden, EPS_BINS, detail=3 if self.reads_code else 0)
        self._enc_masks: dict[tuple[int, str], torch.Tensor] = {}
        # The last halting detail, with a copy of the images it was made for: it does not depend on
        # ε, and scoring several ε runs the encoder on the same batch once per ε. Comparing the
        # images costs one pass over them, a small part of making the detail.
        self._detail_memo: tuple[torch.Tensor, int, torch.Tensor] | None = None
        self._halt_memo: tuple[torch.Tensor, tuple, tuple] | None = None   # see _halting_features
        self._halt_maxima: list[torch.Tensor] = []                           # see halting_at

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

    def _encode(self, images: torch.Tensor, eps_pos: torch.Tensor, num_tokens: int
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder outputs at the latent tokens (B, T, width), normalised, and the images' code."""
        cfg = self.config
        if not 1 <= num_tokens <= cfg.max_tokens:
            raise ValueError(f"num_tokens must lie in 1..{cfg.max_tokens}, got {num_tokens}")
        b = images.shape[0]
        codes = self.analyse(images)
        x2d = self.base.tokens(images * 2.0 - 1.0) + self.pos_2d
        eps_tok = at_position(self.eps_embed.weight, eps_pos.to(images.device)).unsqueeze(1)
        lat = self.latent_inputs(codes, 0, num_tokens, b)
        if self.direct is not None:
            lat = lat + self.direct.read(x2d)[:, :num_tokens]
        x = torch.cat([eps_tok, x2d, lat], dim=1)
        mask = self._encoder_mask(num_tokens, images.device)
        latent_rows = slice(1 + cfg.num_2d_tokens, None)
        for i, blk in enumerate(self.encoder):   # only the latents' rows of the last block are read
            x = blk(x, mask, latent_rows if i == len(self.encoder) - 1 else None)
        return self.enc_norm(x), codes

    def encode_tokens(self, images: torch.Tensor, eps_pos: torch.Tensor, num_tokens: int,
                      halt_grad: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder pass at budget ``num_tokens`` for images (B, 3, R, R) in [0, 1] conditioned on ε:
        ``eps_pos`` (B,) is each image's ε bin index (long) or position between bins (float;
        ``config.eps_position``). Returns (latents (B, T, latent_dim), p_halt (B, T)).
        ``halt_grad``: share of the halting loss's gradient that reaches the encoder (default: the
        config's ``halt_grad_scale``; training passes 0 during its reconstruction warm-up)."""
        eps_pos = eps_pos.to(images.device)
        h, codes = self._encode(images, eps_pos, num_tokens)
        # How much of the halting loss's gradient reaches the shared encoder (docs/design.md §3).
        g = self.config.halt_grad_scale if halt_grad is None else halt_grad
        h_halt = h if g == 1.0 else h.detach() + g * (h - h.detach())
        detail = self.halting_detail(images, num_tokens, codes)
        return self.to_tokens(h, codes), self.halting_head(h_halt, eps_pos, detail)

    def encode_latents(self, images: torch.Tensor, eps_pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """``encode_tokens`` without the halting head: latents (B, T, latent_dim) for the searches,
        which keep every token."""
        return self.to_tokens(*self._encode(images, eps_pos.to(images.device), num_tokens))

    def latent_features(self, images: torch.Tensor, eps_pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The encoder's normalised outputs at the latent tokens (B, T, width): what the bottleneck
        and the halting head read (calibration retrains the head on them)."""
        return self._encode(images, eps_pos, num_tokens)[0]

    def halting_detail(self, images: torch.Tensor, num_tokens: int, codes: torch.Tensor | None = None
                       ) -> torch.Tensor | None:
        """The halting head's per-token detail input (B, num_tokens, 3), or None where the head reads
        only the encoder (learned tokens without a code, ``halt_reads_code`` false):
        the log RMS error left after each token, and the log pixel L1 of the code at the budget
        below the token and at the smallest budget that includes it. ``codes``: the images' code
        (all T_max tokens) when the caller has it already."""
        if not self.reads_code:
            return None
        memo = self._detail_memo
        if memo is not None and memo[1] == num_tokens and memo[0].shape == images.shape \
                and memo[0].device == images.device and torch.equal(memo[0], images):
            return memo[2]
        codes = self.code.analyse(images) if codes is None else codes
        rms = self.code.detail_left(images, codes)[:, :num_tokens, None]
        # A token halts when the budgets below it already meet ε: the head reads the L1 of the budget
        # below the token and of the one that includes it (below the first: the colour mean alone).
        budgets = self.config.budgets
        ends = budgets[: bisect.bisect_left(budgets, num_tokens) + 1]
        after = self.code.prefix_l1(images, codes, ends)
        none = (self.code.colour_mean.view(1, 3, 1, 1).clamp(0, 1) - images.float()).abs().mean(dim=(1, 2, 3))
        before = torch.cat([none[:, None], after[:, :-1]], dim=1)
        l1 = torch.log(torch.stack([before, after], dim=-1) + 1e-4)
        detail = torch.cat([rms, l1[:, self._budget_of_token(num_tokens, images.device)]], dim=-1)
        self._detail_memo = (images.detach().clone(), num_tokens, detail)
        return detail

    def _budget_of_token(self, num_tokens: int, device: torch.device) -> torch.Tensor:
        """Index into ``config.budgets`` of the smallest budget that includes each token (num_tokens,)."""
        budgets = torch.tensor(self.config.budgets, device=device)
        return torch.searchsorted(budgets, torch.arange(1, num_tokens + 1, device=device))

    def kept(self, p_halt: torch.Tensor) -> torch.Tensor:
        """Tokens kept (B, T) bool from p_halt (B, T): p_halt <= threshold, and always those of the
        smallest budget (the least a search can pick; without them a flat image could halt every
        token). An ordered code keeps a prefix, since its positions follow earlier tokens."""
        keep = p_halt <= self.config.halt_threshold
        keep[:, : self.config.budgets[0]] = True
        if self.code is not None and self.code.ordered:
            keep = keep.cumprod(dim=1).bool()
        return keep

    def forward(self, images: torch.Tensor, eps_pos: torch.Tensor, num_tokens: int | None = None,
                halting: bool = False, halt_grad: float | None = None) -> ForwardOutput:
        """Training pass. With ``halting`` the decoder sees only the tokens ``kept`` keeps;
        ``halt_grad`` as in ``encode_tokens``."""
        t = num_tokens or self.config.max_tokens
        latents, p_halt = self.encode_tokens(images, eps_pos, t, halt_grad)
        keep = self.kept(p_halt.detach()) if halting else torch.ones_like(p_halt, dtype=torch.bool)
        return ForwardOutput(self.decode_tokens(latents, keep), p_halt, keep)

    # --- inference API -------------------------------------------------------------------------
    def _features_eps(self, eps: float) -> float:
        """The ε the encoder is conditioned on for the halting features at ε: ``HALT_FEATURES_EPS`` for
        a coded model (its head reads ε itself, through the code's errors relative to ε), ε itself
        for the learned code (its head has only the ε-bin bias; the encoder's ε token matters)."""
        return HALT_FEATURES_EPS if self.code is not None else float(eps)

    def _halting_features(self, images: torch.Tensor, num_tokens: int, eps: float
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The halting head's ε-free features (B, T, hidden) from one encoder pass conditioned on
        ``eps``, that pass's outputs (B, T, width) and the images' code. Kept for the last batch,
        ε and weights (parameter versions), so scoring several ε of a coded model runs it once."""
        key = (num_tokens, eps, tuple(p._version for p in self.parameters()))
        memo = self._halt_memo
        if memo is not None and memo[1] == key and memo[0].shape == images.shape \
                and memo[0].device == images.device and torch.equal(memo[0], images):
            return memo[2]
        pos = torch.full((images.shape[0],), eps_position(eps), dtype=torch.float32, device=images.device)
        h, codes = self._encode(images, pos, num_tokens)
        out = (self.halting_head.features(h, self.halting_detail(images, num_tokens, codes)), h, codes)
        self._halt_memo = (images.detach().clone(), key, out)
        self._halt_maxima = []
        return out

    @torch.inference_mode()
    def halting_at(self, images: torch.Tensor, eps: float, num_tokens: int | None = None) -> torch.Tensor:
        """p_halt (B, T) at ε by the monotone halting rule (docs/design.md §2). The head is read on
        one set of encoder features (``_features_eps``) at a fixed grid of ε positions
        (``HALT_GRID_STEPS`` per interval between trained bins, conditioned between bins as
        ``eps_position`` does), from the strictest up, keeping the running maximum: a token halted
        for a stricter ε' <= ε stays halted at ε (tokens enough for ε' are enough for ε). At ε itself
        p_halt is the blend (in logits) of the two grid maxima around ε's position. So p_halt never
        falls and KC never rises as ε loosens: for any two ε with a coded model (one set of
        features), and as far as the head goes with the learned code (its features are encoded at
        each ε)."""
        t = num_tokens or self.config.max_tokens
        grid = eps_position(eps) * HALT_GRID_STEPS
        j, w = int(grid), grid - int(grid)
        feats = self._halting_features(images, t, self._features_eps(eps))[0]
        maxima = self._halt_maxima   # running maxima of the logits at grid points 0, 1, ... for these features
        n = min(j + (2 if w > 0 else 1), (len(EPS_BINS) - 1) * HALT_GRID_STEPS + 1)
        if len(maxima) < n:
            offsets = self.halting_head.eps_offset(torch.arange(len(maxima), n, device=images.device)
                                                   / HALT_GRID_STEPS)
            maxima.extend(self.halting_head.running_max_logits(feats, offsets, maxima[-1] if maxima else None))
        if w == 0:
            return torch.sigmoid(maxima[j])
        # Logits clamped where a float32 p_halt of exactly 0 or 1 would be (logit with eps 1e-6).
        lo = maxima[j].clamp(-HALT_LOGIT_LIMIT, HALT_LOGIT_LIMIT)
        hi = maxima[j + 1].clamp(-HALT_LOGIT_LIMIT, HALT_LOGIT_LIMIT)
        return torch.sigmoid(lo + w * (hi - lo))

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, eps: float, num_tokens: int | None = None) -> Encoding:
        """One encoder pass at T_max (or ``num_tokens``) for images (B, 3, R, R) in [0, 1]: tokens,
        p_halt and kc at ε. Any ε in ``EPS_RANGE`` (0.005–0.38) is honoured. Halting follows the
        monotone rule of ``halting_at``, so KC is non-increasing in ε; a coded model's pass is shared
        by every ε of the same images (its tokens are the code), the learned code encodes at ε itself
        (between the trained bins, at ε's position). Raises ValueError for ε outside that range, or
        for images that are not a float (B, 3, R, R) tensor."""
        images = self.checked_images(images)
        t = num_tokens or self.config.max_tokens
        p_halt = self.halting_at(images, eps, t)
        latents = self.to_tokens(*self._halting_features(images, t, self._features_eps(eps))[1:])
        return Encoding(latents.float(), p_halt, self.kept(p_halt), float(eps))

    @torch.inference_mode()
    def complexity(self, images: torch.Tensor, eps: float) -> torch.Tensor:
        """Approximate Kolmogorov complexity at ε: the number of kept tokens per image (B,) long."""
        return self.encode(images, eps).kc

    def search_tokens(self, images: torch.Tensor, method: str = "search") -> TokenSource:
        """Tokens at growing budgets for the oracle (``scoring/oracle.py``), conditioned on the
        smallest ε bin (phase 1 trains every budget under it), all kept: ``search`` re-encodes at
        every budget, ``prefix`` encodes once at T_max and slices (the encoder is causal in its
        latents, so both give the same tokens)."""
        idx0 = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        if method == "search":
            def reencode(rows: torch.Tensor, t: int) -> torch.Tensor:
                return self.encode_latents(images.index_select(0, rows), idx0[: len(rows)], t)

            return TokenSource(reencode, encoder_run_per_budget=True)
        if method == "prefix":
            full = self.encode_latents(images, idx0, self.config.max_tokens)
            return TokenSource(lambda rows, t: full.index_select(0, rows)[:, :t], encoder_run_per_budget=False)
        raise ValueError(f"unknown search method {method!r}; choose 'search' or 'prefix'")

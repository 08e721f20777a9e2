"""ALIT: an adaptive-length image tokenizer by recurrent allocation (arXiv 2411.02393), the peer KARL
is compared with (KARL paper, Table 2).

One recurrent rollout over the 2D tokens; iteration k (1-based) adds ``token_step`` new learned 1D
latent tokens and runs the (weight-shared) encoder over all of them together:

    iteration 1:  [2D tokens (+pos),                    new latents[0:s]]          -> encoder
    iteration k:  [2D tokens from k-1, latents from k-1, new latents[(k-1)s:ks]]   -> encoder

The 2D tokens and the old latents are carried from iteration to iteration (ALIT's "adaptive
memory": each iteration refines the 2D tokens, updates the old latents and adds capacity). After
iteration k the k·s latents pass the same continuous bottleneck as KARL's (LN -> Linear(w -> 12))
and KARL's decoder (mask tokens at the 2D positions + the latents) reconstructs the image from them.

How it differs from KARL in this package:

- **No ε conditioning, no halting head.** ALIT's tokens do not depend on ε; ``Encoding.p_halt`` is
  all zeros and ``Encoding.keep`` all True. The token count an image needs at ε comes only from a
  **search**: roll out iteration by iteration, decode after each, stop at the first iteration whose
  reconstruction meets ε (``scoring/oracle.py``). ``single_pass = False`` says so to scoring code:
  ``--method single`` is not available for ALIT.
- **Tokens are not prefixes.** The old latents change in every iteration, so the 8 tokens after
  iteration 2 are not the first 8 of the 16 after iteration 4. ``encode(..., num_tokens=T)`` runs T/s
  iterations from scratch (T/s encoder iterations); the incremental ``rollout`` (``search_tokens``)
  costs one encoder iteration and one decoder pass per step instead. For the same reason
  ``--method prefix`` (decode prefixes of one T_max encoding) is meaningless for ALIT and scoring
  refuses it. Every search runs the oracle's loop (``scoring/oracle.py``) over ``search_tokens``,
  the incremental rollout, so their encoder runs are
  iterations. ``encode_tokens`` and ``forward`` take KARL's signatures (trainer, tests).
- **Cost.** One "encoder run" below is one recurrent iteration: ``enc_depth`` blocks over
  (2D tokens + k·s latents).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from karl_cli.models.config import one_eps
from karl_cli.models.pretrained import register
from karl_cli.models.tokenizer import Encoding, ForwardOutput, TokenSource, Tokenizer


@dataclass
class ALITState:
    """The recurrent state after some iterations: encoder residual streams, not yet bottlenecked."""

    x2d: torch.Tensor        # (B, N_2d, width)
    latents: torch.Tensor    # (B, k*s, width)
    iterations: int
    code: torch.Tensor | None = None   # the DCT code (B, T_max, latent_dim)

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[1]


@register
class ALIT(Tokenizer):
    """Adaptive-length tokenizer by recurrent allocation (arXiv 2411.02393). See the module docstring.
    Everything but the encoder's recurrence is shared with KARL (``Tokenizer``); ALIT has no ε token
    and no halting head, so KC needs a search (``single_pass = False``)."""

    arch = "alit"

    @property
    def iterations(self) -> int:
        """Iterations of a full rollout: T_max / token_step."""
        return self.config.max_tokens // self.config.token_step

    def iterations_for(self, num_tokens: int) -> int:
        """Iterations that produce ``num_tokens`` tokens; it must be a multiple of token_step."""
        cfg = self.config
        if not 1 <= num_tokens <= cfg.max_tokens or num_tokens % cfg.token_step:
            raise ValueError(f"ALIT makes {cfg.token_step} tokens per iteration: num_tokens must be a multiple of "
                             f"{cfg.token_step} in {cfg.token_step}..{cfg.max_tokens}, got {num_tokens}")
        return num_tokens // cfg.token_step

    # --- encoder -------------------------------------------------------------------------------
    def start(self, images: torch.Tensor) -> ALITState:
        """The state before iteration 1: 2D tokens (+pos), no latents."""
        x2d = self.base.tokens(images * 2.0 - 1.0) + self.pos_2d
        return ALITState(x2d, x2d.new_zeros(x2d.shape[0], 0, x2d.shape[2]), 0, self.analyse(images))

    def step(self, state: ALITState) -> ALITState:
        """One recurrent iteration: add token_step new latents, run the encoder over everything."""
        s, k = self.config.token_step, state.iterations
        if k >= self.iterations:
            raise ValueError(f"the rollout is complete after {self.iterations} iterations")
        b, n = state.x2d.shape[:2]
        new = self.latent_inputs(state.code, k * s, (k + 1) * s, b).to(state.x2d.dtype)
        x = torch.cat([state.x2d, state.latents, new], dim=1)
        for blk in self.encoder:
            x = blk(x)
        return ALITState(x[:, :n], x[:, n:], k + 1, state.code)

    def tokens(self, state: ALITState) -> torch.Tensor:
        """The state's latents through the continuous bottleneck: (B, k*s, latent_dim)."""
        return self.to_tokens(self.enc_norm(state.latents), state.code)

    def rollout(self, images: torch.Tensor, iterations: int | None = None) -> Iterator[torch.Tensor]:
        """Bottlenecked tokens after each iteration 1..``iterations`` (default all): one encoder
        iteration per item, so a search can stop early."""
        state = self.start(images)
        for _ in range(iterations or self.iterations):
            state = self.step(state)
            yield self.tokens(state)

    def rollout_to(self, images: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Tokens after iteration num_tokens / token_step: (B, num_tokens, latent_dim)."""
        k = self.iterations_for(num_tokens)
        state = self.start(images)
        for _ in range(k):
            state = self.step(state)
        return self.tokens(state)

    def encode_tokens(self, images: torch.Tensor, eps_pos: torch.Tensor | None, num_tokens: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """KARL's signature, so code written for KARL (the trainer, tests) runs on ALIT:
        (tokens after iteration num_tokens/token_step, p_halt = zeros). ``eps_pos`` is ignored."""
        latents = self.rollout_to(images, num_tokens)
        return latents, torch.zeros(latents.shape[:2], device=latents.device)

    def forward(self, images: torch.Tensor, eps_pos: torch.Tensor | None = None, num_tokens: int | None = None,
                halting: bool = False) -> ForwardOutput:
        """KARL's training-pass signature: reconstruction (unclamped) from the tokens after
        num_tokens/token_step iterations; ``eps_pos`` and ``halting`` are ignored (all tokens kept)."""
        latents, p_halt = self.encode_tokens(images, eps_pos, num_tokens or self.config.max_tokens)
        return ForwardOutput(self.decode_tokens(latents), p_halt, torch.ones_like(p_halt, dtype=torch.bool))

    # --- inference API (the same as KARL's) ----------------------------------------------------
    @torch.inference_mode()
    def encode(self, images: torch.Tensor, eps: float, num_tokens: int | None = None) -> Encoding:
        """Tokens after iteration num_tokens / token_step (default: the full rollout), all kept.

        ``eps`` does not change ALIT's tokens (there is no ε conditioning); it is recorded in the
        Encoding. ``p_halt`` is zeros and ``keep`` all True: ALIT has no halting head, so
        ``Encoding.kc`` is just ``num_tokens``. For the token count an image needs, use the oracle's search.
        Raises ValueError for images that are not a float (B, 3, R, R) tensor, or ``eps`` that is not one number.
        """
        eps = one_eps(eps)
        images = self.checked_images(images)
        latents = self.rollout_to(images, num_tokens or self.config.max_tokens)
        b, t = latents.shape[:2]
        zeros = torch.zeros(b, t, device=latents.device)
        return Encoding(latents.float(), zeros, torch.ones(b, t, dtype=torch.bool, device=latents.device), float(eps))

    def search_tokens(self, images: torch.Tensor, method: str = "search") -> TokenSource:
        """The incremental rollout for the oracle (``scoring/oracle.py``): each call runs one more encoder iteration
        (on the rows still searching) and returns the bottlenecked tokens after it. ALIT's tokens
        are not prefixes, so ``prefix`` is refused."""
        if method != "search":
            raise ValueError(f"ALIT supports only the 'search' method (its tokens are not prefixes), not {method!r}")
        state = self.start(images)
        rows_now = torch.arange(images.shape[0], device=images.device)

        def tokens(rows: torch.Tensor, t: int) -> torch.Tensor:
            nonlocal state, rows_now
            if rows.numel() != rows_now.numel():     # images done drop out of the rollout
                keep = torch.searchsorted(rows_now, rows)
                state = ALITState(state.x2d.index_select(0, keep), state.latents.index_select(0, keep),
                                  state.iterations, None if state.code is None else state.code.index_select(0, keep))
                rows_now = rows
            state = self.step(state)
            if state.num_tokens != t:
                raise ValueError(f"the rollout is at {state.num_tokens} tokens, asked for {t}")
            return self.tokens(state)

        return TokenSource(tokens, encoder_run_per_budget=True)

"""The search baselines' loop, one for every model and method: try budgets T_1 < T_2 < … (the
model's ``config.budgets``), decode after each, and stop each (image, ε) at the first budget whose
reconstruction reaches pixel L1 <= ε. The minimal budget is the oracle KC the single pass is
measured against (T_max when no budget reaches ε). This module is the one place that rule lives:
``sweep`` / ``search`` (scoring, ``karl compare``), ``budget_reconstructions`` / ``budget_l1`` with
``smallest_budget`` (halting calibration, ``karl show``, benchmarks/quality.py).

Where the tokens at each budget come from is the model's business (``model.search_tokens``):

- KARL ``search`` (ALIT-style): re-encode at every budget, conditioned on the smallest ε bin (the
  setting phase 1 of training covers every budget under): k encoder runs, k decoder runs.
- KARL ``prefix`` (One-D-Piece-style): one encoder run at T_max, then decode prefixes: 1 / k runs.
  The encoder is causal in its latents, so both find the same budgets.
- ALIT ``search``: its incremental rollout, one recurrent encoder iteration per budget: k / k runs.

Images drop out of the batch once all their ε are met; the runs reported for an (image, ε) are the
ones a search for that ε alone would have needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from karl_cli.scoring.methods import oracle_method


@dataclass
class SearchResult:
    """Per image: the search's token count, reconstruction, L1 and the runs spent to find them."""

    kc: torch.Tensor            # (B,) long: the smallest budget meeting ε (T_max if none did)
    recon: torch.Tensor         # (B, 3, R, R) in [0, 1]: the reconstruction at kc tokens
    l1: torch.Tensor            # (B,) float: its pixel L1
    met: torch.Tensor           # (B,) bool: l1 <= ε
    encoder_runs: torch.Tensor  # (B,) long: encoder runs (ALIT: iterations) until this image was done
    decoder_runs: torch.Tensor  # (B,) long: decoder passes until this image was done


@dataclass
class Sweep:
    """A search for several ε at once: (B, E) tensors, column j for ``eps[j]``. Pairs left out by
    ``need`` keep kc = T_max, l1 = NaN and 0 runs."""

    eps: list[float]
    kc: torch.Tensor            # (B, E) long
    l1: torch.Tensor            # (B, E) float32
    met: torch.Tensor           # (B, E) bool
    encoder_runs: torch.Tensor  # (B, E) long
    decoder_runs: torch.Tensor  # (B, E) long
    recon: torch.Tensor | None  # (B, E, 3, R, R) with keep_recon, else None

    def result(self, j: int = 0) -> SearchResult:
        """Column j as a SearchResult (needs ``keep_recon``)."""
        if self.recon is None:
            raise ValueError("this sweep kept no reconstructions (keep_recon=False)")
        return SearchResult(self.kc[:, j], self.recon[:, j], self.l1[:, j], self.met[:, j],
                            self.encoder_runs[:, j], self.decoder_runs[:, j])


def sweep(model: torch.nn.Module, images: torch.Tensor, eps: float | Sequence[float], method: str = "search",
          need: torch.Tensor | None = None, keep_recon: bool = False) -> Sweep:
    """The minimal budget meeting each ε for a batch of model inputs (float (B,3,R,R) in [0,1]).

    ``method``: ``search`` or ``prefix`` (what ``model.search_tokens`` accepts). ``need`` (B, E) bool
    marks the (image, ε) pairs wanted (default: all). Call under ``torch.inference_mode()``.
    """
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if not eps_list or not all(e > 0 for e in eps_list):
        raise ValueError(f"eps must be positive, got {eps!r}")
    cfg = model.config
    x = images.to(model.device, model.dtype)
    target = x.float()
    b, n_eps, dev = x.shape[0], len(eps_list), x.device
    need = (torch.ones(b, n_eps, dtype=torch.bool) if need is None else need.clone()).to(dev)
    if need.shape != (b, n_eps):
        raise ValueError(f"need must have shape {(b, n_eps)}, got {tuple(need.shape)}")
    eps_t = torch.tensor(eps_list, dtype=torch.float64, device=dev).unsqueeze(0)
    kc = torch.full((b, n_eps), cfg.max_tokens, dtype=torch.long, device=dev)
    l1 = torch.full((b, n_eps), float("nan"), device=dev)
    met = torch.zeros(b, n_eps, dtype=torch.bool, device=dev)
    runs = torch.zeros(b, n_eps, dtype=torch.long, device=dev)
    recon = torch.zeros(b, n_eps, *target.shape[1:], device=dev) if keep_recon else None
    active = need.any(1).nonzero().squeeze(1)
    source = model.search_tokens(x, method) if active.numel() else None
    for step, t in enumerate(cfg.budgets, start=1):
        if active.numel() == 0:
            break
        out = model.decode_tokens(source.tokens(active, t)).float().clamp_(0.0, 1.0)
        err = (out - target.index_select(0, active)).abs().mean(dim=(1, 2, 3))
        open_ = need[active]                                   # (a, E): still searching
        runs[active] = torch.where(open_, step, runs[active])
        l1[active] = torch.where(open_, err.unsqueeze(1), l1[active])
        if recon is not None:
            recon[active] = torch.where(open_[:, :, None, None, None], out.unsqueeze(1), recon[active])
        hit = open_ & meets(err.unsqueeze(1), eps_t)
        kc[active] = torch.where(hit, t, kc[active])
        met[active] |= hit
        need[active] = open_ & ~hit
        active = active[need[active].any(1)]
    enc_runs = runs if source is None or source.encoder_run_per_budget else (runs > 0).long()
    return Sweep(eps_list, kc, l1, met, enc_runs, runs.clone(), recon)


def meets(l1: torch.Tensor, eps: torch.Tensor | float) -> torch.Tensor:
    """Whether a pixel L1 meets ε: ``l1 <= ε``, compared in float64 (so a float32 L1 is judged
    against ε itself, not against ε rounded to float32). Broadcasts; returns bool."""
    return l1.double() <= (eps.double() if isinstance(eps, torch.Tensor) else float(eps))


def smallest_budget(l1: torch.Tensor, budgets: Sequence[int], eps: float | Sequence[float]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle on known errors: ``l1`` (B, K) is the pixel L1 at each of the K ``budgets``
    (ascending). Returns (kc (B, E) long: the smallest budget meeting each ε, T_max = budgets[-1]
    where none does; met (B, E) bool)."""
    eps_list = [float(eps)] if isinstance(eps, (int, float)) else [float(e) for e in eps]
    if l1.ndim != 2 or l1.shape[1] != len(budgets):
        raise ValueError(f"l1 must have shape (B, {len(budgets)}), got {tuple(l1.shape)}")
    eps_t = torch.tensor(eps_list, dtype=torch.float64, device=l1.device)
    ok = meets(l1.unsqueeze(1), eps_t.view(1, -1, 1))                      # (B, E, K)
    met = ok.any(-1)
    first = torch.where(met, ok.long().argmax(-1), torch.full_like(met, len(budgets) - 1, dtype=torch.long))
    return torch.tensor(list(budgets), dtype=torch.long, device=l1.device)[first], met


def budget_reconstructions(model: torch.nn.Module, images: torch.Tensor, budgets: Sequence[int] | None = None
                           ) -> Iterator[tuple[int, torch.Tensor]]:
    """(t, reconstruction (B, 3, R, R) float32 in [0, 1]) at each budget t of ``budgets`` (default:
    all of ``config.budgets``; ascending), with every token kept. The tokens are the oracle's:
    prefixes of one T_max encoding under the smallest ε bin where the model has prefix tokens
    (KARL), else its search (ALIT: one recurrent iteration per budget). ``images``: float (B,3,R,R)
    in [0, 1] on the model's device. Call under ``torch.no_grad()`` or ``inference_mode()``."""
    cfg = model.config
    wanted = list(cfg.budgets) if budgets is None else list(budgets)
    unknown = sorted(set(wanted) - set(cfg.budgets))
    if unknown:
        raise ValueError(f"budgets {unknown} are not among the model's budgets")
    x = images.to(model.device, model.dtype)
    source = model.search_tokens(x, oracle_method(model))
    rows = torch.arange(x.shape[0], device=x.device)
    last = max(wanted, default=0)
    for t in cfg.budgets:
        if t > last:
            break
        tokens = source.tokens(rows, t)        # a search source must see every budget in order
        if t in wanted:
            yield t, model.decode_tokens(tokens).float().clamp_(0.0, 1.0)


def budget_l1(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pixel L1 of ``budget_reconstructions`` at every budget: (B, K) float32."""
    target = images.to(model.device, model.dtype).float()
    return torch.stack([(rec - target).abs().mean(dim=(1, 2, 3))
                        for _, rec in budget_reconstructions(model, images)], dim=1)


def oracle_budgets(model: torch.nn.Module, images: torch.Tensor, eps: float | Sequence[float]) -> torch.Tensor:
    """The oracle KC of each image at each ε, for the whole batch at once: (B, E) long, T_max where
    no budget meets ε. Equals ``sweep(model, images, eps, "prefix").kc`` for models with prefixes."""
    return smallest_budget(budget_l1(model, images), model.config.budgets, eps)[0]


@torch.inference_mode()
def search(model: torch.nn.Module, images: torch.Tensor, eps: float, method: str = "search") -> SearchResult:
    """The search baseline for one ε: per image the smallest budget whose reconstruction (all tokens,
    smallest ε bin) reaches pixel L1 <= ε, with that reconstruction and the runs spent. ``search``
    re-encodes at every budget (KARL: k encoder + k decoder runs; ALIT: k iterations), ``prefix``
    decodes prefixes of one T_max encoding (1 + k). ``images``: float (B,3,R,R) in [0, 1]."""
    return sweep(model, images, eps, method, keep_recon=True).result(0)

"""The training objectives: KARL's two-phase, loss-conditioned step (paper §3.3, the "upside-down
RL" trick; docs/design.md §3) and ALIT's recurrent objective.

Each KARL step:
1. Phase 1 estimates complexity: a random budget T, a small ε, no halting. The per-image pixel L1
   of that reconstruction is ε₀ (no grad); halting targets are 0 for all T tokens.
2. Phase 2 learns to stop: budget T_max, conditioned on bin(ε₀) (rounded up), decoding only the
   tokens the halting head keeps. Targets: the first T tokens 0, the other T_max - T tokens 1 (they
   were not needed to reach ε₀).
Loss = L1 reconstruction in both phases + BCE halting loss.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from karl_cli.models import ALIT
from karl_cli.models.config import SMALL_EPS_BINS, KARLConfig, eps_to_bin


# --- the step ------------------------------------------------------------------------------------
def halting_targets(budget: int, max_tokens: int, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Phase 2 targets: 0 for the first ``budget`` tokens (needed for ε₀), 1 for the rest."""
    t = torch.zeros(batch, max_tokens, device=device)
    t[:, budget:] = 1.0
    return t


def halting_bce(p_halt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE of p_halt (B, T) in [0, 1] against targets (B, T) in {0, 1}, in fp32 outside
    autocast: CUDA autocast refuses ``F.binary_cross_entropy`` on probabilities (unsafe in half
    precision), and the halting head's p_halt is float32 already."""
    with torch.autocast(p_halt.device.type, enabled=False):
        return F.binary_cross_entropy(p_halt.float(), target.float())


class TwoPhaseLoss(nn.Module):
    """Both phases in one forward, so DDP sees one forward per backward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, budget: int, eps_small: torch.Tensor, halt_weight: float
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg: KARLConfig = self.model.config
        b = images.shape[0]
        # Phase 1: reconstruct with `budget` tokens under a small ε; ε₀ = what that achieved.
        out1 = self.model(images, eps_small, num_tokens=budget, halting=False)
        l1_1 = (out1.recon.float() - images).abs().mean(dim=(1, 2, 3))
        eps0 = l1_1.detach()
        halt1 = halting_bce(out1.p_halt, torch.zeros_like(out1.p_halt))
        # Phase 2: all T_max tokens conditioned on bin(ε₀); learn that the extra ones were not needed.
        out2 = self.model(images, eps_to_bin(eps0), num_tokens=cfg.max_tokens, halting=True)
        l1_2 = (out2.recon.float() - images).abs().mean(dim=(1, 2, 3))
        target = halting_targets(budget, cfg.max_tokens, b, images.device)
        halt2 = halting_bce(out2.p_halt, target)
        loss = l1_1.mean() + l1_2.mean() + halt_weight * (halt1 + halt2)
        stats = {"rec1": l1_1.mean().detach(), "rec2": l1_2.mean().detach(), "halt": (halt1 + halt2).detach() / 2,
                 "kept2": out2.keep.float().sum(1).mean()}
        return loss, stats


def training_objective(model: nn.Module) -> nn.Module:
    """The loss module for an architecture: KARL's two phases, or ALIT's recurrent objective."""
    return ALITLoss(model) if isinstance(model, ALIT) else TwoPhaseLoss(model)


def sample_phase1(cfg: KARLConfig, batch: int, step: int, seed: int) -> tuple[int, torch.Tensor]:
    """Budget and small-ε bins for a step: a function of (seed, step), identical on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_033 + step)
    budgets = cfg.budgets
    budget = budgets[int(torch.randint(0, len(budgets), (), generator=g))]
    eps_small = torch.randint(0, SMALL_EPS_BINS, (batch,), generator=g)
    return budget, eps_small


def two_phase_step(loss_module: nn.Module, images: torch.Tensor, step: int, seed: int, halt_weight: float,
                   autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward of one training step; returns (loss, stats). The caller does backward + optimiser."""
    inner = loss_module.module if hasattr(loss_module, "module") else loss_module
    budget, eps_small = sample_phase1(inner.model.config, images.shape[0], step, seed)
    with torch.autocast(images.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss, stats = loss_module(images, budget, eps_small.to(images.device), halt_weight)
    stats["budget"] = torch.tensor(float(budget))
    return loss, stats


class ALITLoss(nn.Module):
    """ALIT's training objective for the shared trainer: one rollout to T_max, L1 reconstruction
    from the tokens of iteration budget/token_step (``rec1``) and of the last iteration (``rec2``).

    Returns the same stats as KARL's two-phase loss: 'halt' is 0 (no halting head) and 'kept2' is
    the tokens the full-budget reconstruction used (T_max). ``eps_small`` and ``halt_weight`` are
    accepted for the trainer's call signature and unused.
    """

    def __init__(self, model: ALIT) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, budget: int, eps_small: torch.Tensor, halt_weight: float
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model = self.model
        k_budget = model.iterations_for(budget)
        mid = None
        state = model.start(images)
        for k in range(1, model.iterations + 1):
            state = model.step(state)
            if k == k_budget:
                mid = model.tokens(state)
        full = model.tokens(state)
        if k_budget == model.iterations:
            # Budget = T_max: decode once and count it for both terms.
            l1_1 = l1_2 = (model.decode_tokens(full).float() - images).abs().mean(dim=(1, 2, 3))
            loss = 2 * l1_2.mean()
        else:
            l1_1 = (model.decode_tokens(mid).float() - images).abs().mean(dim=(1, 2, 3))
            l1_2 = (model.decode_tokens(full).float() - images).abs().mean(dim=(1, 2, 3))
            loss = l1_1.mean() + l1_2.mean()
        zero = torch.zeros((), device=images.device)
        stats = {"rec1": l1_1.mean().detach(), "rec2": l1_2.mean().detach(), "halt": zero,
                 "kept2": torch.tensor(float(full.shape[1]), device=images.device)}
        return loss, stats

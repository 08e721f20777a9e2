"""The training objectives: KARL's two-phase, loss-conditioned step (paper §3.3, the "upside-down
RL" trick; docs/design.md §3) and ALIT's recurrent objective.

Each KARL step:
1. Phase 1 estimates complexity: a random budget T, a small ε, no halting. The per-image pixel L1
   of that reconstruction is ε₀ (no grad). The same encoding is also decoded at up to
   ``label_decodes`` - 1 smaller budgets (its prefixes: the encoder is causal in its latents), and
   each image's label budget T* is the smallest of those budgets whose L1 already meets bin(ε₀).
   Halting targets are 0 for all T tokens.
2. Phase 2 learns to stop: budget T_max, conditioned on bin(ε₀) (rounded up), decoding only the
   tokens the halting head keeps. Targets: the first T* tokens 0, the rest 1 (they were not needed
   to reach ε₀).
Loss = L1 reconstruction in both phases (phase 1: the mean over its decoded budgets) + halting BCE,
class-balanced: the halted and the active targets are averaged separately (as the reference
implementation does), so the head is not pulled toward whichever class the budgets sample more.

Why T* and not T (the paper's targets): with T, wherever an image's L1 does not fall between two
budgets, the targets at those positions are 0 or 1 by the draw of T alone, so the loss's optimum at
position t is the share of sampled budgets below t — the same for every image. With T* a token is
labelled "not needed" whenever a smaller prefix met the same ε, so the optimum follows each image's
own curve (tests/training/test_objectives.py shows both).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from karl_cli.models import ALIT
from karl_cli.models.config import EPS_BINS, SMALL_EPS_BINS, KARLConfig, eps_to_bin


# --- the step ------------------------------------------------------------------------------------
def halting_targets(budget: int | torch.Tensor, max_tokens: int, batch: int, device: torch.device | str = "cpu"
                    ) -> torch.Tensor:
    """Phase 2 targets (batch, max_tokens): 0 for the first ``budget`` tokens (needed for ε₀), 1
    for the rest. ``budget``: one count for the batch, or one per image (batch,) long."""
    pos = torch.arange(max_tokens, device=device).unsqueeze(0)
    budget = torch.as_tensor(budget, device=device).reshape(-1, 1)
    return (pos >= budget).float().expand(batch, -1).contiguous()


def label_budgets(budgets: list[int], budget: int, count: int) -> list[int]:
    """The phase-1 decodes of a step at ``budget``: up to ``count`` budgets <= ``budget``, evenly
    spread over ``budgets`` (ascending) from the smallest, always ending at ``budget`` itself."""
    below = [b for b in budgets if b <= budget]
    if count >= len(below):
        return below
    if count <= 1:
        return [budget]
    idx = sorted({round(i * (len(below) - 1) / (count - 1)) for i in range(count)})
    return [below[i] for i in idx]


def needed_budget(l1: torch.Tensor, ends: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """From phase 1's per-image L1 (B, len(ends)) at budgets ``ends`` (ascending, the last the sampled
    one): ε₀'s bin (B,) long (the L1 at the last budget, rounded up to a bin) and T* (B,) long, the
    smallest budget whose L1 already meets that bin's ε."""
    eps_bin = eps_to_bin(l1[:, -1].detach())
    bound = torch.tensor(EPS_BINS, device=l1.device)[eps_bin.to(l1.device)]
    meets = l1.detach() <= bound.unsqueeze(1) + 1e-9
    meets[:, -1] = True
    first = meets.float().argmax(1)
    return eps_bin, torch.tensor(ends, device=l1.device)[first]


def halting_bce(p_halt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE of p_halt (B, T) in [0, 1] against targets (B, T) in {0, 1}: the mean over
    the halted targets plus the mean over the active ones (a class with no entries adds 0). In fp32
    outside autocast: CUDA autocast refuses ``F.binary_cross_entropy`` on probabilities (unsafe in
    half precision), and the halting head's p_halt is float32 already."""
    with torch.autocast(p_halt.device.type, enabled=False):
        target = target.float()
        bce = F.binary_cross_entropy(p_halt.float(), target, reduction="none")
        halted = (bce * target).sum() / target.sum().clamp_min(1.0)
        active = (bce * (1.0 - target)).sum() / (1.0 - target).sum().clamp_min(1.0)
        return halted + active


class TwoPhaseLoss(nn.Module):
    """Both phases in one forward, so DDP sees one forward per backward. ``label_decodes``: how many
    budgets phase 1 decodes to find each image's T* (1: the paper's targets, T* = T)."""

    def __init__(self, model: nn.Module, label_decodes: int = 4) -> None:
        super().__init__()
        self.model = model
        self.label_decodes = label_decodes

    def forward(self, images: torch.Tensor, budget: int, eps_small: torch.Tensor, halt_weight: float,
                halt_grad: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg: KARLConfig = self.model.config
        b = images.shape[0]
        # Phase 1: encode at `budget` under a small ε, decode it and smaller prefixes; ε₀ = L1 at `budget`.
        ends = label_budgets(cfg.budgets, budget, self.label_decodes)
        latents, p1 = self.model.encode_tokens(images, eps_small, budget, halt_grad=0.0)
        rows = len(ends)
        keep = (torch.arange(budget, device=images.device)[None, :]
                < torch.tensor(ends, device=images.device)[:, None])            # (rows, budget)
        keep = keep.repeat_interleave(b, 0)
        recon = self.model.decode_tokens(latents.repeat(rows, 1, 1), keep if rows > 1 or ends[0] < budget else None)
        l1_all = (recon.float() - images.repeat(rows, 1, 1, 1)).abs().mean(dim=(1, 2, 3)).view(rows, b).T
        eps_bin, needed = needed_budget(l1_all, ends)
        halt1 = halting_bce(p1, torch.zeros_like(p1))
        # Phase 2: all T_max tokens conditioned on bin(ε₀); learn that tokens past T* were not needed.
        out2 = self.model(images, eps_bin, num_tokens=cfg.max_tokens, halting=True,
                          halt_grad=None if halt_grad else 0.0)
        l1_2 = (out2.recon.float() - images).abs().mean(dim=(1, 2, 3))
        target = halting_targets(needed, cfg.max_tokens, b, images.device)
        halt2 = halting_bce(out2.p_halt, target)
        loss = l1_all.mean() + l1_2.mean() + halt_weight * (halt1 + halt2)
        stats = {"rec1": l1_all[:, -1].mean().detach(), "rec2": l1_2.mean().detach(),
                 "halt": (halt1 + halt2).detach() / 2, "kept2": out2.keep.float().sum(1).mean(),
                 "needed": needed.float().mean()}
        return loss, stats


def training_objective(model: nn.Module, label_decodes: int = 4) -> nn.Module:
    """The loss module for an architecture: KARL's two phases, or ALIT's recurrent objective."""
    return ALITLoss(model) if isinstance(model, ALIT) else TwoPhaseLoss(model, label_decodes)


def sample_phase1(cfg: KARLConfig, batch: int, step: int, seed: int) -> tuple[int, torch.Tensor]:
    """Budget and small-ε bins for a step: a function of (seed, step), identical on every rank."""
    g = torch.Generator().manual_seed(seed * 1_000_033 + step)
    budgets = cfg.budgets
    budget = budgets[int(torch.randint(0, len(budgets), (), generator=g))]
    eps_small = torch.randint(0, SMALL_EPS_BINS, (batch,), generator=g)
    return budget, eps_small


def two_phase_step(loss_module: nn.Module, images: torch.Tensor, step: int, seed: int, halt_weight: float,
                   autocast_dtype: torch.dtype | None, halt_warmup: int = 0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward of one training step; returns (loss, stats). The caller does backward + optimiser.
    For the first ``halt_warmup`` steps (reconstruction warm-up) no halting gradient reaches the
    encoder; after them the model's ``halt_grad_scale`` share does (docs/design.md §3)."""
    inner = loss_module.module if hasattr(loss_module, "module") else loss_module
    budget, eps_small = sample_phase1(inner.model.config, images.shape[0], step, seed)
    with torch.autocast(images.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss, stats = loss_module(images, budget, eps_small.to(images.device), halt_weight, step >= halt_warmup)
    stats["budget"] = torch.tensor(float(budget))
    return loss, stats


class ALITLoss(nn.Module):
    """ALIT's training objective for the shared trainer: one rollout to T_max, L1 reconstruction
    from the tokens of iteration budget/token_step (``rec1``) and of the last iteration (``rec2``).

    Returns the same stats as KARL's two-phase loss: 'halt' is 0 (no halting head) and 'kept2' is
    the tokens the full-budget reconstruction used (T_max). ``eps_small``, ``halt_weight`` and
    ``halt_grad`` are accepted for the trainer's call signature and unused.
    """

    def __init__(self, model: ALIT) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, budget: int, eps_small: torch.Tensor, halt_weight: float,
                halt_grad: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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

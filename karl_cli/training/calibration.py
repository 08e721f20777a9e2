"""Calibrating the halting head against the search oracle, after two-phase training.

Two-phase training labels halting with a *random* budget T and the error ε₀ it reached. When a
model's error falls slowly with T (a small model trained briefly on a CPU), many budgets land in the
same ε bin, the labels for that bin contradict each other, and the head learns their spread instead
of the image: single-pass KC then hardly depends on the image or on ε.

Calibration gives the head the labels the two phases approximate: for an image and an ε bin, the
*smallest* budget whose prefix reconstruction meets the bin (``oracle.oracle_budgets``: the oracle
KC that ``--method prefix`` finds); tokens before it are targets 0, the rest 1. The encoder and decoder are frozen, so
reconstructions and tokens do not change; only ``halting_head`` is trained, on encoder features
computed once. The result is a single pass that predicts the oracle's budget.

A head trained this closely sits on the oracle's boundary, so at the paper's threshold 0.75 some
images halt one step early and miss ε. Calibration therefore also picks the halting threshold: the
smallest of ``HALT_THRESHOLDS`` at which few held-out pairs keep fewer tokens than the oracle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from karl_cli.defaults import HALT_THRESHOLDS, MAX_UNDERCUT, SYNTHETIC_SHARE
from karl_cli.models.config import EPS_BINS
from karl_cli.models.karl import KARL
from karl_cli.scoring.oracle import oracle_budgets
from karl_cli.training.data import sample_crops
from karl_cli.training.trainer import lr_factor


def check_settings(samples: int, steps: int, synthetic: float, max_undercut: float, eps_per_image: int = 1) -> None:
    """The settings ``calibrate_halting`` and ``distil.distil_halting`` share, checked before any work:
    ValueError naming the first that is out of range (and its command-line flag)."""
    if samples < 10:
        raise ValueError(f"samples (--samples) must be >= 10, got {samples}")
    if steps < 1:
        raise ValueError(f"steps (--steps) must be >= 1, got {steps}")
    if eps_per_image < 1:
        raise ValueError(f"eps_per_image (--eps-per-image) must be >= 1, got {eps_per_image}")
    if not 0.0 <= synthetic < 1.0:
        raise ValueError(f"synthetic (--synthetic) must be a share in [0, 1), got {synthetic!r}")
    if not 0.0 <= max_undercut <= 1.0:
        raise ValueError(f"max_undercut (--max-undercut) must be a share in [0, 1], got {max_undercut!r}")


def fit(params: list[torch.nn.Parameter], steps: int, lr: float, loss_at: Callable[[], torch.Tensor],
        warmup: int = 0, clip: float | None = None, progress: Callable[[str, int, int], None] | None = None,
        stage: str = "", every: int = 10) -> None:
    """Train ``params`` for ``steps`` AdamW steps (no weight decay) on the cosine schedule of
    ``trainer.lr_factor`` (``warmup`` steps, down to 0): each step minimises ``loss_at()`` (which draws
    its own batch), its gradient norm clipped to ``clip``; ``progress(stage, step, steps)`` every
    ``every`` steps. The one optimiser loop of calibration and distillation."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup, 0.0))
    for step in range(steps):
        loss = loss_at()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        if progress and (step + 1) % every == 0:
            progress(stage, step + 1, steps)


def pick_threshold(model: KARL, p_halt: torch.Tensor, reference: torch.Tensor, max_undercut: float
                   ) -> tuple[torch.Tensor, float]:
    """Set ``model.config.halt_threshold`` to the smallest of ``HALT_THRESHOLDS`` at which at most
    ``max_undercut`` of the pairs keep fewer tokens than ``reference`` (the oracle's or a teacher's KC,
    (N,)), the largest if none does. ``p_halt`` (N, T_max). Returns (KC (N,) float at that threshold,
    the share below ``reference``)."""
    for threshold in HALT_THRESHOLDS:
        model.config.halt_threshold = threshold
        kc = model.kept(p_halt).sum(1).float()
        undercut = float((kc < reference).float().mean())
        if undercut <= max_undercut:
            break
    return kc, undercut


@dataclass
class CalibrationReport:
    samples: int             # (image, ε-bin) pairs used for training
    held_out: int            # pairs used only for measuring
    error_before: float      # mean |single-pass KC - oracle KC| on the held-out pairs, before
    error_after: float       # ... and after calibration (at the chosen threshold)
    ratio_before: float      # mean single-pass KC / mean oracle KC, before
    ratio_after: float
    threshold: float         # the halting threshold chosen (written to the model's config)
    undercut: float          # share of held-out pairs with single-pass KC < oracle KC at that threshold


def calibrate_halting(model: KARL, data: list[str], samples: int = 2048, bins_per_image: int = 8,
                      steps: int = 1500, lr: float = 2e-3, batch_size: int = 256, seed: int = 0,
                      held_out: float = 0.1, synthetic: float = SYNTHETIC_SHARE, max_undercut: float = MAX_UNDERCUT,
                      progress: Callable[[str, int, int], None] | None = None) -> CalibrationReport:
    """Retrain ``model.halting_head`` in place on oracle budgets of ``samples`` crops from ``data``,
    then set ``model.config.halt_threshold`` to the smallest of ``HALT_THRESHOLDS`` at which at most
    ``max_undercut`` of the held-out pairs keep fewer tokens than the oracle (the largest if none).

    A ``synthetic`` share of the samples are procedural images (``synthetic.py``): flat colours to
    noise, the extremes of complexity that crops of photos rarely show.
    """
    check_settings(samples, steps, synthetic, max_undercut)
    cfg = model.config
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    feats, details, eps_ids, targets = [], [], [], []
    with torch.no_grad():
        for done, x in sample_crops(data, cfg.resolution, samples, synthetic, seed, model.device):
            oracle = oracle_budgets(model, x, EPS_BINS)                             # (B, n_bins)
            detail = model.halting_detail(x, cfg.max_tokens)
            for _ in range(bins_per_image):
                b = torch.randint(0, len(EPS_BINS), (x.shape[0],), generator=g).to(x.device)
                feats.append(model.latent_features(x, b, cfg.max_tokens).half().cpu())
                if detail is not None:
                    details.append(detail.cpu())
                eps_ids.append(b.cpu())
                budget = oracle.gather(1, b.unsqueeze(1)).squeeze(1).cpu()
                targets.append((torch.arange(cfg.max_tokens).unsqueeze(0) >= budget.unsqueeze(1)).float())
            if progress:
                progress("oracle", done, samples)
    h, e, y = torch.cat(feats), torch.cat(eps_ids), torch.cat(targets)
    d = torch.cat(details) if details else None

    def detail_at(rows: torch.Tensor) -> torch.Tensor | None:
        return None if d is None else d[rows].to(model.device)

    n = h.shape[0]
    perm = torch.randperm(n, generator=g)
    n_test = max(1, int(n * held_out))
    test, train = perm[:n_test], perm[n_test:]
    oracle_test = cfg.max_tokens - y[test].sum(1)

    def held_out_p_halt() -> torch.Tensor:
        """The head's p_halt on the held-out pairs (n_test, T_max)."""
        with torch.no_grad():
            return torch.cat([model.halting_head(h[rows].to(model.device).float(), e[rows].to(model.device),
                                                 detail_at(rows)).cpu() for rows in test.split(1024)])

    def against_oracle(kc: torch.Tensor) -> tuple[float, float]:
        """|KC - oracle| and KC / oracle on the held-out pairs."""
        return float((kc - oracle_test).abs().mean()), float(kc.mean() / oracle_test.mean().clamp(min=1e-9))

    err_before, ratio_before = against_oracle(model.kept(held_out_p_halt()).sum(1).float())
    head = model.halting_head
    for p in head.parameters():
        p.requires_grad_(True)
    head.train()

    def loss_at() -> torch.Tensor:
        pick = train[torch.randint(0, len(train), (batch_size,), generator=g)]
        p_halt = head(h[pick].to(model.device).float(), e[pick].to(model.device), detail_at(pick))
        return F.binary_cross_entropy(p_halt, y[pick].to(model.device))

    fit(list(head.parameters()), steps, lr, loss_at, progress=progress, stage="head", every=50)
    head.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    # A threshold only changes which tokens are kept: one p_halt serves every candidate.
    kc, undercut = pick_threshold(model, held_out_p_halt(), oracle_test, max_undercut)
    err_after, ratio_after = against_oracle(kc)
    return CalibrationReport(len(train), n_test, err_before, err_after, ratio_before, ratio_after,
                             cfg.halt_threshold, undercut)

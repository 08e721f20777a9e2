"""The two-phase objective's halting targets: where their optimum lies (issue #26).

The best p_halt at position t under BCE is the mean target at t over the draws of the phase-1
budget. These tests compute that optimum for given L1-versus-tokens curves and read off the KC it
implies at threshold 0.75, for the paper's targets (T* = T, ``label_decodes`` 1) and karl's (T*).
"""
from __future__ import annotations

import pytest
import torch

from karl_cli.models.config import EPS_BINS, eps_to_bin
from karl_cli.training.objectives import (halting_bce, halting_targets, label_budgets, needed_budget)

BUDGETS = list(range(8, 97, 8))          # pca-small: T_max 96 in budgets of 8
T_MAX = BUDGETS[-1]


def optimum_kc(curve: dict[int, float], decodes: int, threshold: float = 0.75) -> dict[int, int]:
    """For one image's L1 curve (budget -> L1): per conditioning bin, the KC of the BCE-optimal head
    (mean target over the phase-1 budgets that lead to that bin, then tokens with p <= threshold)."""
    targets: dict[int, list[torch.Tensor]] = {}
    for t in BUDGETS:
        ends = label_budgets(BUDGETS, t, decodes)
        l1 = torch.tensor([[curve[e] for e in ends]])
        eps_bin, needed = needed_budget(l1, ends)
        targets.setdefault(int(eps_bin), []).append(halting_targets(needed, T_MAX, 1)[0])
    out = {}
    for b, rows in targets.items():
        p = torch.stack(rows).mean(0)
        keep = p <= threshold
        keep[: BUDGETS[0]] = True
        out[b] = int(keep.sum())
    return out


def test_flat_curve_no_longer_pins_kc_to_the_budget_draw():
    flat = {t: 0.08 for t in BUDGETS}                       # no token improves the reconstruction
    paper = optimum_kc(flat, decodes=1)
    ours = optimum_kc(flat, decodes=len(BUDGETS))
    (bin_,) = paper
    # The paper's targets: KC set by the share of sampled budgets below each position, not the image.
    assert paper[bin_] == 80            # 10 of the 12 budgets lie below token 81: p 0.83 > 0.75
    # T*: the smallest budget meets ε₀ already, so the optimum keeps only it.
    assert ours[bin_] == BUDGETS[0]
    # And a second flat image at another level gets its own answer, not the same position profile.
    assert optimum_kc({t: 0.02 for t in BUDGETS}, decodes=len(BUDGETS)) == {eps_to_bin(0.02): BUDGETS[0]}


def test_image_dependent_curves_separate_flat_from_noise():
    flat = {t: 0.004 for t in BUDGETS}                                  # a flat image: nothing to send
    noise = {t: 0.30 * (1 - t / 120) for t in BUDGETS}                  # noise: every token helps a little
    kc_flat = optimum_kc(flat, decodes=6)
    kc_noise = optimum_kc(noise, decodes=6)
    # Below ε 0.2 the noise image needs several budgets, where the flat one needs the first at ε 0.005.
    assert kc_flat == {0: BUDGETS[0]}
    assert all(kc > 3 * BUDGETS[0] for b, kc in kc_noise.items() if EPS_BINS[b] <= 0.2)
    # The noise image's KC falls as its ε grows (the curve decides, not the budget draw).
    ordered = [kc_noise[b] for b in sorted(kc_noise)]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) > 3


def test_label_budgets_spread_and_end_at_the_sampled_budget():
    assert label_budgets(BUDGETS, 40, 10) == [8, 16, 24, 32, 40]
    assert label_budgets(BUDGETS, 96, 4) == [8, 40, 64, 96]
    assert label_budgets(BUDGETS, 56, 1) == [56]


def test_needed_budget_takes_smallest_prefix_meeting_the_bin():
    l1 = torch.tensor([[0.30, 0.10, 0.045, 0.044],        # bin(0.044) = 0.05: 0.045 already meets it
                       [0.30, 0.20, 0.10, 0.03]])          # only the last meets 0.03
    eps_bin, needed = needed_budget(l1, [8, 16, 24, 32])
    assert [EPS_BINS[int(b)] for b in eps_bin] == [0.05, 0.03]
    assert needed.tolist() == [24, 32]


def test_balanced_bce_weighs_halted_and_active_alike():
    target = torch.tensor([[0.0] * 9 + [1.0]])              # one halted target among ten
    p = torch.full_like(target, 0.3)
    bce = torch.nn.functional.binary_cross_entropy
    want = bce(torch.tensor(0.3), torch.tensor(1.0)) + bce(torch.tensor(0.3), torch.tensor(0.0))
    assert float(halting_bce(p, target)) == pytest.approx(float(want), rel=1e-6)
    # With one class only, the other term is 0 (not NaN).
    assert float(halting_bce(p, torch.zeros_like(p))) == pytest.approx(float(bce(p, torch.zeros_like(p))), rel=1e-6)

"""A lighter halting encoder, distilled from a trained KARL (docs/design.md §6).

For the wavelet model the encoder serves only the halting head: the tokens are the code itself and
the decoder reads nothing the encoder makes. So the encoder's size sets the cost of a single pass
and nothing else, and a narrower, shallower one can take its place if it predicts the same halting.
``distil_halting`` trains such a *student* to reproduce the *teacher*'s p_halt on crops of training
images at ε spread over the whole range (between the bins too): binary cross-entropy against the
teacher's probabilities, the student reading the same exact errors of the code. Every weight the two
share by name and shape is copied from the teacher; the decoder's are frozen, so reconstructions, the
``l1`` column and the oracle do not change. The halting threshold is then the smallest of
``defaults.HALT_THRESHOLDS`` at which at most ``max_undercut`` of held-out pairs keep fewer tokens than
the teacher (fewer tokens than a calibrated teacher means missing ε).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from karl_cli.models.config import EPS_BINS
from karl_cli.models.karl import KARL
from karl_cli.defaults import MAX_UNDERCUT, SYNTHETIC_SHARE
from karl_cli.training.calibration import check_settings, fit, pick_threshold
from karl_cli.training.data import sample_crops

# The encoder's sizes a student may change; everything else is the teacher's.
ENCODER_FIELDS = ("width", "enc_depth", "enc_heads", "stem_channels", "halt_hidden")


@dataclass
class DistilReport:
    samples: int             # (crop, ε) pairs trained on
    held_out: int            # pairs used only for measuring
    teacher_params: int      # parameters on the encoder path (stem, encoder, halting head)
    student_params: int
    error: float             # held-out mean |student KC - teacher KC| at the chosen threshold
    ratio: float             # held-out mean student KC / mean teacher KC
    undercut: float          # held-out share of pairs with student KC < teacher KC
    threshold: float         # the student's halting threshold (written to its config)


def student_of(teacher: KARL, **sizes: Any) -> KARL:
    """A KARL with the teacher's config except the encoder ``sizes`` (``ENCODER_FIELDS``), holding
    every teacher weight of the same name and shape (the decoder, the code's statistics, and any
    encoder part whose size did not change). Raises ValueError for a field outside ENCODER_FIELDS,
    or for a teacher without a code (learned tokens come from the encoder, so it cannot be swapped)."""
    bad = sorted(set(sizes) - set(ENCODER_FIELDS))
    if bad:
        raise ValueError(f"a student may change only {', '.join(ENCODER_FIELDS)}, not {', '.join(bad)}")
    if teacher.code is None or not teacher.code.ordered:
        raise ValueError("only a model whose tokens are its code (the wavelet model) can swap its encoder")
    student = KARL(dataclasses.replace(teacher.config, **sizes)).to(teacher.device)
    own = student.state_dict()
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if k in own and own[k].shape == v.shape},
                            strict=False)
    return student


def encoder_parameters(model: KARL) -> list[torch.nn.Parameter]:
    """The parameters p_halt depends on (found by differentiating one tiny single pass)."""
    x = torch.rand(1, 3, model.config.resolution, model.config.resolution, device=model.device)
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        model.encode_tokens(x, torch.zeros(1, device=model.device), model.config.budgets[0] + 1)[1].sum().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return params


def distil_halting(student: KARL, teacher: KARL, data: list[str], samples: int = 1024, eps_per_image: int = 4,
                   steps: int = 1500, lr: float = 2e-3, batch_size: int = 32, seed: int = 0, held_out: float = 0.1,
                   synthetic: float = SYNTHETIC_SHARE, max_undercut: float = MAX_UNDERCUT,
                   progress: Callable[[str, int, int], None] | None = None) -> DistilReport:
    """Train ``student``'s encoder and halting head in place to reproduce ``teacher``'s p_halt on
    ``samples`` crops of the images in ``data`` (a ``synthetic`` share procedural, flat to noise),
    each at ``eps_per_image`` ε drawn log-uniformly over the trained range; then set the student's
    threshold (module docstring). Raises ValueError if the two differ outside the encoder."""
    check_settings(samples, steps, synthetic, max_undercut, eps_per_image)
    cfg = student.config
    same = {f: getattr(teacher.config, f) for f in dataclasses.asdict(cfg) if f not in (*ENCODER_FIELDS, "halt_threshold")}
    if any(getattr(cfg, f) != v for f, v in same.items()):
        raise ValueError("student and teacher must share every size outside the encoder (use student_of)")
    teacher.eval()
    g = torch.Generator().manual_seed(seed)
    crops, positions, targets = [], [], []
    with torch.no_grad():
        for done, x in sample_crops(data, cfg.resolution, samples, synthetic, seed, teacher.device):
            for _ in range(eps_per_image):
                pos = torch.rand(x.shape[0], generator=g) * (len(EPS_BINS) - 1)
                crops.append(x.cpu())
                positions.append(pos)
                targets.append(teacher.encode_tokens(x, pos.to(x.device), cfg.max_tokens)[1].half().cpu())
            if progress:
                progress("teacher", done, samples)
    x_all, e_all, y_all = torch.cat(crops), torch.cat(positions), torch.cat(targets)
    n = x_all.shape[0]
    perm = torch.randperm(n, generator=g)
    n_test = max(1, int(n * held_out))
    test, train = perm[:n_test], perm[n_test:]
    # Only the teacher's first halt decides KC (kept tokens are a prefix), so a batch trains on the
    # tokens up to a little past it: pairs of similar teacher KC together, the encoder run that far
    # (it is causal, so those tokens are exactly those of a full pass).
    kc_teacher_all = teacher.kept(y_all.float()).sum(1)
    train = train[torch.argsort(kc_teacher_all[train], stable=True)]
    margin = 2 * cfg.token_step

    params = encoder_parameters(student)
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    student.train()
    size = min(batch_size, len(train))

    def loss_at() -> torch.Tensor:
        first = int(torch.randint(0, len(train) - size + 1, (1,), generator=g))
        pick = train[first:first + size]
        t = min(cfg.max_tokens, int(kc_teacher_all[pick].max()) + margin)
        p_halt = student.encode_tokens(x_all[pick].to(student.device), e_all[pick].to(student.device), t)[1]
        return F.binary_cross_entropy(p_halt, y_all[pick, :t].float().to(student.device))

    fit(params, steps, lr, loss_at, warmup=max(1, steps // 20), clip=1.0, progress=progress, stage="student")
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)

    with torch.no_grad():
        p_student = torch.cat([student.encode_tokens(x_all[rows].to(student.device), e_all[rows].to(student.device),
                                                     cfg.max_tokens)[1].cpu() for rows in test.split(64)])
    kc_teacher = teacher.kept(y_all[test].float()).sum(1).float()
    kc, undercut = pick_threshold(student, p_student, kc_teacher, max_undercut)
    return DistilReport(len(train), n_test, sum(p.numel() for p in encoder_parameters(teacher)),
                        sum(p.numel() for p in params), float((kc - kc_teacher).abs().mean()),
                        float(kc.mean() / kc_teacher.mean().clamp(min=1e-9)), undercut, cfg.halt_threshold)

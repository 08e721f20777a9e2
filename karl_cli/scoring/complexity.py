"""Scoring images: the KC of every (image, ε), streamed as rows (written by ``io/rows.py``).

    from karl_cli.scoring.complexity import score, write_csv
    rows = score(["imgs/"], model, [0.03, 0.05], baselines="all")
    write_csv(rows, "out.csv")

Each row is a dict with ``io.rows.ROW_FIELDS`` (+ one column per chosen baseline, see ``baselines.REGISTRY``):

- ``path``, ``eps``: the image and the requested ε (the model conditions on the ε bin it rounds up to).
- ``kc``: token count at ε. ``single`` = KARL's one-pass estimate (T_max - halted tokens);
  ``search`` / ``prefix`` = the smallest budget (of the model's ``config.budgets``) whose reconstruction
  reaches l1 <= ε, or T_max when none does.
- ``kc_soft``: Σ(1 - p_halt) for ``single``; for ``search`` / ``prefix`` it equals ``kc``.
- ``max_tokens``: T_max of the model.
- ``l1``: mean absolute pixel error (0-1 scale) of the **decoder's** reconstruction from the kept
  tokens, at the model resolution; empty unless the decoder checked the row (``check="decoder"``,
  the default of models whose tokens are not their code, and always for ``search`` / ``prefix``).
- ``code_l1``: the same error of the **code's own** reconstruction of the kept tokens
  (``Tokenizer.code_reconstruction``: exact Haar synthesis of the kept prefix, no network); filled
  for a single pass of the wavelet KARL unless ``check="none"``. It is a different image from the
  decoder's (the decoder refines it): on karl-small the decoder's L1 is the smaller on ~98 % of
  Savoias images, by at most ~0.001. Which check ran: ``methods.resolve_check``; ``check="auto"``
  (the default) takes ``code`` where the model has it, since the decoder costs ~9 of the ~14 ms an
  image costs on a CPU.
- ``status`` (``ok`` / ``error``) and ``error`` (the reason; None when ok). Unreadable files are
  error rows, never exceptions.
- ``encoder_runs``, ``decoder_runs``: model passes needed for this (image, ε): single 1/1 with the
  decoder check, 1/0 with ``code`` or ``none``;
  search k/k and prefix 1/k, where k = budgets tried (kc / step, or every budget when ε is never met).
  With several ε, search/prefix share one sweep over the budgets (``search.sweep``) and report, per
  ε, the runs a search for that ε alone would need. Which model supports which method: ``methods.py``
  (ALIT, with no halting head, only ``search``); it continues one rollout, so an encoder run is one iteration.
- ``model_id``: the id of the model that scored the row (``models.pretrained.model_id``: a hash of its
  config and weights), ``method``: ``single``, ``search`` or ``prefix``. ``--resume`` and ``merge`` use
  them to refuse mixing rows of different models or methods.
- baselines (``baselines=True``: ``jpeg_bpp``, ``png_bpp``; ``"all"`` or a list: any of ``baselines.REGISTRY``):
  the classic complexity measures of the same model-resolution pixels, computed in the loader's workers
  beside the model (``baselines.py``).

What a count can be: ``single`` gives any whole number from the smallest budget (``config.budgets[0]``:
1 for the wavelet code, else ``token_step``) to T_max (the halting head decides per token, so the
kept prefix need not end on a budget); ``search`` / ``prefix`` give one of
``config.budgets`` (1 for the wavelet code, then the multiples of ``token_step``); ``kc_soft`` is
continuous and may fall below 1 (Σ(1 - p_halt) over tokens whose p_halt is near 1).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Iterator, Sequence

import torch

from karl_cli.defaults import BATCH_SIZE
from karl_cli.io.images import Found
from karl_cli.io.rows import INT_FIELDS, row_key, write_csv
from karl_cli.models.pretrained import model_id
from karl_cli.runtime import prepare_model, resolve_device
from karl_cli.scoring.baselines import DEFAULT_BASELINES, parse_baselines
from karl_cli.scoring.measure import (Measurement, Progress, apply_shard, collect_inputs, image_batches, measure,
                                      parse_shard)
from karl_cli.scoring.methods import check_eps, check_method, resolve_check, validate_eps

BASELINE_FIELDS = list(DEFAULT_BASELINES)     # the columns of baselines=True
# write_csv lives in io/rows.py; it stays importable from here, beside score, as karl 0.1 documented it.
__all__ = ["BASELINE_FIELDS", "score", "write_csv"]


# --- the rows ------------------------------------------------------------------------------------
def _fmt(v: float, digits: int) -> float | None:
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def score(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found], model: torch.nn.Module,
          eps_list: float | Iterable[float], method: str = "single", baselines: bool | str | Iterable[str] = False,
          batch_size: int = BATCH_SIZE, workers: int = 0, device: str | torch.device | None = None,
          shard: str | Sequence[int] | None = None, skip: Iterable[tuple[str, float]] | None = None,
          progress: Progress | None = None, l1: bool = True, check: str = "auto") -> Iterator[dict[str, Any]]:
    """Yield one row per (image, ε), image by image in sorted path order (see the module docstring).

    Arguments are checked before the first row (a bad ε, method, shard or device raises UsageError
    at the call, not at iteration). ``device=None`` keeps the model where it is, ``"auto"`` picks CUDA
    when available; the model is moved in place. ``skip`` holds (path, ε) pairs already done: they
    yield no row, and images with every ε done are not even read. ``progress(done, total)`` is called
    with image counts after every batch. ``check`` (``methods.resolve_check``): how each KC is
    checked, ``auto`` (default: ``code`` for the wavelet KARL, else ``decoder``), ``code`` (the
    ``code_l1`` column, no decoder pass), ``decoder`` (the ``l1`` column, one decoder pass; plus
    ``code_l1`` where the model has it) or ``none`` (KC from the encoder alone: both empty,
    ``decoder_runs`` 0); ``l1=False`` is ``check="none"``. ``baselines``: ``True`` (JPEG, PNG), ``"all"``, or names
    (``baselines.parse_baselines``); an unknown name raises UsageError.
    """
    eps_list = validate_eps(eps_list)
    check_method(model, method)
    check_eps(model, method, eps_list)
    names = parse_baselines(baselines)
    dev = resolve_device(device, model)
    check = resolve_check(model, method, check, l1)
    items, done = pending(paths_or_found, eps_list, shard, skip)
    prepare_model(model, dev)
    return _score_rows(items, model, eps_list, method, names, batch_size, workers, dev, done, progress, check)


def pending(paths_or_found: str | os.PathLike | Iterable[str | os.PathLike | Found], eps_list: Sequence[float],
            shard: str | Sequence[int] | None = None, skip: Iterable[tuple[str, float]] | None = None
            ) -> tuple[list[Found], set[tuple[str, float]]]:
    """The input entries a run scores (``collect_inputs``, then ``shard``), less those whose every ε
    is in ``skip`` (rows already written), and the ``row_key``s of ``skip``."""
    items = apply_shard(collect_inputs(paths_or_found), parse_shard(shard))
    done = {row_key(p, e) for p, e in (skip or ())}
    if done:
        items = [f for f in items if not all(row_key(f.path, e) in done for e in eps_list)]
    return items, done


def _score_rows(items: list[Found], model: torch.nn.Module, eps_list: list[float], method: str, baselines: tuple[str, ...],
                batch_size: int, workers: int, dev: torch.device, done: set[tuple[str, float]],
                progress: Progress | None, check: str = "auto") -> Iterator[dict[str, Any]]:
    cfg = model.config
    mid = model_id(model)
    total, n_done = len(items), 0
    if progress:
        progress(0, total)
    batches = image_batches(items, cfg.resolution, batch_size, workers, baselines, pin_memory=dev.type == "cuda")
    for batch in batches:
        paths, errors = batch["paths"], batch["errors"]
        todo = [[row_key(p, e) not in done for e in eps_list] for p in paths]
        ok_pos = [k for k, err in enumerate(errors) if err is None]
        m = None
        if ok_pos:
            need = torch.tensor([todo[k] for k in ok_pos], dtype=torch.bool)
            m = measure(model, batch["images"], eps_list, method, check=check, need=need)
        yield from batch_rows(batch, m, eps_list, method, baselines, cfg.max_tokens, mid, todo)
        n_done += len(paths)
        if progress:
            progress(n_done, total)


def batch_rows(batch: dict[str, Any], m: Measurement | None, eps_list: Sequence[float], method: str,
               baselines: Sequence[str], max_tokens: int, mid: str, todo: list[list[bool]] | None = None
               ) -> Iterator[dict[str, Any]]:
    """The rows of one batch (``measure.collate_images``: ``paths``, ``errors``, ``baselines``), image
    by image, ε by ε; ``m`` is ``measure``'s result for the batch's readable images in order (None when
    there are none). ``todo[k][j]`` False leaves out the row of image k at ``eps_list[j]`` (default:
    every row). The one place a row is built: the single process and the Ray actors
    (``karl_cli.distributed``) both call it, so their rows are the same."""
    paths, errors = batch["paths"], batch["errors"]
    res = {} if m is None else {k: getattr(m, k).tolist() for k in ("kc", "kc_soft", "l1", "code_l1",
                                                                     "encoder_runs", "decoder_runs")}
    slot = {k: j for j, k in enumerate(kk for kk, err in enumerate(errors) if err is None)}
    for k, path in enumerate(paths):
        for ei, e in enumerate(eps_list):
            if todo is not None and not todo[k][ei]:
                continue
            row: dict[str, Any] = {"path": path, "eps": e, "kc": None, "kc_soft": None,
                                   "max_tokens": max_tokens, "l1": None, "code_l1": None, "status": "error",
                                   "error": errors[k], "encoder_runs": 0, "decoder_runs": 0,
                                   "model_id": mid, "method": method}
            if k in slot and res:
                j = slot[k]
                row.update(kc=int(res["kc"][j][ei]), kc_soft=_fmt(res["kc_soft"][j][ei], 4),
                           l1=_fmt(res["l1"][j][ei], 6), code_l1=_fmt(res["code_l1"][j][ei], 6),
                           status="ok", error=None,
                           encoder_runs=int(res["encoder_runs"][j][ei]),
                           decoder_runs=int(res["decoder_runs"][j][ei]))
            b = batch["baselines"][k]
            for j, name in enumerate(baselines):
                v = _fmt(b[j], 6) if b else None
                row[name] = int(v) if v is not None and name in INT_FIELDS else v
            yield row

"""Which model supports which way of counting tokens: the one table every command consults.

- ``single``: one encoder pass; the halting head decides which tokens to keep (KARL, arXiv
  2507.07995 §3). Needs a halting head.
- ``search``: the smallest budget whose reconstruction meets ε, re-encoding at every budget tried
  (ALIT-style, arXiv 2411.02393; ``oracle.sweep``).
- ``prefix``: the same smallest budget from prefixes of one T_max encoding (One-D-Piece-style). Needs
  tokens that are prefixes of each other (KARL's encoder is causal in its latents; ALIT's tokens at a
  budget come from its own recurrent iteration, so they are not).

A model says which kind it is with its ``single_pass`` attribute (KARL True, ALIT False).

How a single pass's KC is checked (``CHECKS``, ``resolve_check``): ``code`` takes the pixel L1 of the
code's own reconstruction of the kept tokens (``Tokenizer.code_reconstruction``: exact Haar
synthesis, no network, ~0.1 ms per image; only where the tokens are the code, the wavelet KARL),
``decoder`` decodes the kept tokens with the learned decoder (~9 of the ~14 ms an image costs on a
CPU), ``none`` checks nothing (KC alone), ``auto`` is ``code`` where the model has it, else
``decoder``. The searches find their budget with the decoder's L1, so they always use ``decoder``.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from karl_cli.errors import UsageError
from karl_cli.models.config import EPS_RANGE

METHODS = ("single", "search", "prefix")

# The table: methods per kind of model, the default first.
_SUPPORTED = {
    True: ("single", "search", "prefix"),   # single-pass models (KARL): halting head, prefix tokens
    False: ("search",),                     # search-only models (ALIT): no halting head, no prefixes
}


def validate_eps(eps_list: float | Iterable[float]) -> list[float]:
    """ε values as floats, duplicates dropped (order kept); <= 0, NaN or inf raise UsageError."""
    if isinstance(eps_list, (int, float, str)):
        eps_list = [eps_list]
    out: list[float] = []
    for e in eps_list:
        try:
            v = float(e)
        except (TypeError, ValueError):
            raise UsageError(f"ε must be a number, got {e!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"ε must be a positive finite number, got {e!r}")
        if v not in out:
            out.append(v)
    if not out:
        raise UsageError("give at least one ε (e.g. --eps 0.05)")
    return out


def methods_for(model: torch.nn.Module) -> tuple[str, ...]:
    """The methods ``model`` supports, its default first."""
    return _SUPPORTED[bool(getattr(model, "single_pass", True))]


def default_method(model: torch.nn.Module) -> str:
    """``single`` for single-pass models (KARL), ``search`` for the others (ALIT)."""
    return methods_for(model)[0]


def oracle_method(model: torch.nn.Module) -> str:
    """Where the oracle's tokens at each budget come from (rate–distortion curves, token maps, the
    halting targets): ``prefix`` (prefixes of one T_max encoding) where the model has prefix tokens
    (KARL), else ``search`` (ALIT's rollout)."""
    return "prefix" if "prefix" in methods_for(model) else "search"


def method_name(method: str) -> str:
    """``method`` if it is one of ``METHODS``; UsageError naming the choices otherwise."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    return method


def check_method(model: torch.nn.Module, method: str | None) -> str:
    """``method`` (None: the model's default) if the model supports it; UsageError otherwise."""
    if method is None:
        return default_method(model)
    method_name(method)
    if method not in methods_for(model):
        raise UsageError(f"{type(model).__name__} has no halting head; use --method search "
                         f"(method {method!r} needs a single-pass model such as KARL)")
    return method


def check_eps(model: torch.nn.Module, method: str, eps_list: Sequence[float]) -> None:
    """Refuse an ε the method cannot honour on this model (UsageError naming the range): a single
    pass is conditioned on ε and honours any ε in the trained range (``EPS_RANGE``, interpolated
    between bins); the searches test the reconstruction against ε and honour any ε > 0."""
    if method != "single" or "single" not in methods_for(model):
        return
    lo, hi = EPS_RANGE
    outside = [e for e in eps_list if not lo - 1e-12 <= e <= hi + 1e-12]
    if outside:
        raise UsageError(f"ε {', '.join(f'{e:g}' for e in outside)} is outside what the single pass can honour "
                         f"({lo:g} to {hi:g}, the ε range the halting head was trained on); "
                         f"--method search or prefix takes any ε > 0")


CHECKS = ("auto", "code", "decoder", "none")


def resolve_check(model: torch.nn.Module, method: str, check: str = "auto", l1: bool = True) -> str:
    """The check a run of ``method`` makes of each KC: ``code``, ``decoder`` or ``none`` (see the
    module docstring). ``check``: one of ``CHECKS``; ``auto`` is ``code`` for a single pass of a
    model whose tokens are its code (``reconstructs_from_code``), else ``decoder``. ``l1=False``
    (the older ``--no-l1``) means ``none``. Raises UsageError for an unknown check, ``l1=False``
    beside another explicit check, ``code`` on a model without it, and ``code`` or ``none`` with a
    search (the searches need the decoder's L1 to find the budget)."""
    if check not in CHECKS:
        raise UsageError(f"unknown check {check!r}; choose one of: {', '.join(CHECKS)}")
    if not l1:
        if check not in ("auto", "none"):
            raise UsageError(f"--no-l1 (l1=False) means --check none; it cannot go with --check {check}")
        check = "none"
    if method != "single":
        if check in ("code", "none"):
            raise UsageError(f"--check {check} works only with --method single ({method!r} finds its budget "
                             "with the decoder's l1)")
        return "decoder"
    has_code = bool(getattr(model, "reconstructs_from_code", False))
    if check == "auto":
        return "code" if has_code else "decoder"
    if check == "code" and not has_code:
        raise UsageError(f"--check code needs a model whose tokens are its code (the wavelet KARL); "
                         f"{type(model).__name__} with the {model.config.code} code has none: use --check decoder")
    return check

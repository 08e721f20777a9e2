"""Which model supports which way of counting tokens: the one table every command consults.

- ``single``: one encoder pass; the halting head decides which tokens to keep (KARL, arXiv
  2507.07995 §3). Needs a halting head.
- ``search``: the smallest budget whose reconstruction meets ε, re-encoding at every budget tried
  (ALIT-style, arXiv 2411.02393; ``oracle.sweep``).
- ``prefix``: the same smallest budget from prefixes of one T_max encoding (One-D-Piece-style). Needs
  tokens that are prefixes of each other (KARL's encoder is causal in its latents; ALIT's tokens at a
  budget come from its own recurrent iteration, so they are not).

A model says which kind it is with its ``single_pass`` attribute (KARL True, ALIT False).
"""
from __future__ import annotations

import torch

from karl_cli.errors import UsageError

METHODS = ("single", "search", "prefix")

# The table: methods per kind of model, the default first.
_SUPPORTED = {
    True: ("single", "search", "prefix"),   # single-pass models (KARL): halting head, prefix tokens
    False: ("search",),                     # search-only models (ALIT): no halting head, no prefixes
}


def methods_for(model: torch.nn.Module) -> tuple[str, ...]:
    """The methods ``model`` supports, its default first."""
    return _SUPPORTED[bool(getattr(model, "single_pass", True))]


def default_method(model: torch.nn.Module) -> str:
    """``single`` for single-pass models (KARL), ``search`` for the others (ALIT)."""
    return methods_for(model)[0]


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

"""Every model name karl knows, in one table: the shipped weights (``--weights NAME``) and the
training presets (``karl train --preset NAME``). ``karl models`` lists it (like ``timm.list_models``),
and the help texts naming models are formatted from it.

    from karl_cli.registry import list_models
    list_models()                 # every name
    list_models("shipped")        # ['karl-small', 'alit-small', 'karl-learned-small']
    list_models("preset", "learned*")
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass



@dataclass(frozen=True)
class ModelEntry:
    """A model name: ``kind`` "shipped" (weights in the package) or "preset" (a config to train)."""

    name: str
    kind: str
    summary: str


KINDS = ("shipped", "preset")

# The shipped weights first, the default first of them; then the presets, the default preset first.
ENTRIES: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("karl-small", "shipped", "KARL on a Haar wavelet code, 64 px, 384 tokens, halting encoder distilled"),
    ModelEntry("alit-small", "shipped", "ALIT peer (DCT code, recurrent rollout): KC by search only"),
    ModelEntry("karl-learned-small", "shipped", "KARL with learned tokens over a fitted PCA start, 32 px, 48 "
               "tokens; its halting head also reads the code's per-token errors"),
    ModelEntry("small", "preset", "the shipped wavelet model: 64 px, 384 tokens, 2.0 M parameters, its halting "
               "encoder distilled"),
    ModelEntry("small-teacher", "preset", "the same with the encoder it was trained with, 2.8 M: train this, "
               "then `karl calibrate` and `karl distil`"),
    ModelEntry("tiny", "preset", "32 px, 16 tokens: tests and trying the pipeline"),
    ModelEntry("learned-64", "preset", "the papers' learned tokens, CPU-sized: 64 px, 64 tokens"),
    ModelEntry("learned-128", "preset", "the GPU recipe: learned tokens, 128 px, 256 tokens, 7.5 M parameters"),
    ModelEntry("learned-tiny", "preset", "learned tokens, 32 px, 16 tokens: tests"),
    ModelEntry("pca-small", "preset", "karl-learned-small: learned tokens over a PCA start, 32 px, 48 tokens, "
               "head reads the code's errors"),
    ModelEntry("pca-small-paper", "preset", "the same with the paper's halting head (encoder outputs only)"),
    ModelEntry("pca-tiny", "preset", "learned tokens over a PCA start, 16 px: tests and the GPU run's smoke rehearsal"),
)}
DEFAULT_MODEL = "karl-small"
DEFAULT_PRESET = "small"


def list_models(kind: str | None = None, pattern: str = "*") -> list[str]:
    """Model names of ``kind`` ("shipped", "preset"; None: both) matching the shell ``pattern``, in
    table order. ValueError for an unknown kind."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of: {', '.join(KINDS)}")
    return [n for n, e in ENTRIES.items() if (kind is None or e.kind == kind) and fnmatch.fnmatchcase(n, pattern)]


def shipped_models() -> tuple[str, ...]:
    """The names of the shipped weights."""
    return tuple(list_models("shipped"))


def names_help(kind: str) -> str:
    """"a (what), b (what) or c (what)": the entries of ``kind`` for a help text, the default first."""
    parts = [f"{e.name} ({e.summary})" for e in ENTRIES.values() if e.kind == kind]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)

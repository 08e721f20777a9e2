"""Model cards of weights made from other weights (``karl calibrate``, ``karl distil``): one writer.

``trainer.model_card`` writes a trained model's card; a step that changes trained weights keeps that
card, brings its config block up to date (``trainer.card_with_config``) and adds a section saying what
it did.
"""
from __future__ import annotations

import os

from karl_cli.models.config import KARLConfig
from karl_cli.models.pretrained import CARD_NAME, weights_path
from karl_cli.training.trainer import card_with_config

BARE_CARD = "# karl tokenizer\n"   # the card of source weights that have none


def derived_card(source: str | os.PathLike, cfg: KARLConfig, heading: str, text: str) -> str:
    """The card for weights derived from ``source`` (a weights folder or shipped name): its card (or
    ``BARE_CARD``), the config block showing ``cfg``, and a section ``## heading`` holding ``text``."""
    path = weights_path(source) / CARD_NAME
    card = path.read_text(encoding="utf-8") if path.is_file() else BARE_CARD
    return card_with_config(card, cfg) + f"\n## {heading}\n\n{text}\n"

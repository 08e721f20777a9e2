"""Helpers for the complexity / token-store / plot tests."""
from __future__ import annotations

import math

import pytest
import torch

from karl_cli import KARL


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine two threads run these tiny models ~20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def spread_halting(model: KARL) -> KARL:
    """Make p_halt vary enough that some tokens halt and kc differs between images and ε."""
    torch.manual_seed(1)
    x = torch.rand(8, 3, model.config.resolution, model.config.resolution)
    with torch.no_grad():
        last = model.halting_head.net[-1]
        last.weight.mul_(40.0)
        p = model.encode(x, 0.05).p_halt
        last.bias.add_(math.log(0.75 / 0.25) - torch.logit(p.clamp(1e-6, 1 - 1e-6)).median())
    return model

"""Shared fixtures: tiny models and generated images, so the suite runs in minutes on 2 CPU cores."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from karl_cli import KARL, preset

# One thread: on this busy 2-core machine two threads run these tiny models many times slower.
torch.set_num_threads(1)


def as_if_trained(model):
    """Give a coded model's zero-initialised corrections (token correction, last decoder conv)
    small random values, as training does, so tests see tokens and images that are not the bare code."""
    head = model.base.head
    last = head[-1] if isinstance(head, torch.nn.Sequential) else head
    with torch.no_grad():
        corrections = [] if model.bottleneck is None else [*model.bottleneck[-1].parameters()]
        for p in (*corrections, *last.parameters()):
            p.normal_(0.0, 0.05)
    return model


@pytest.fixture
def tiny_model() -> KARL:
    torch.manual_seed(0)
    return as_if_trained(KARL(preset("tiny"))).eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A saved tiny KARL (seed 0): config.json + model.safetensors. Shared: copy it before changing it."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("weights") / "tiny"
    as_if_trained(KARL(preset("tiny"))).save_pretrained(d)
    return d


def make_images(folder, n: int, size: int = 40, seed: int = 0) -> list:
    """``n`` PNGs of flat colour with 0-5 rectangles: simple, varied, deterministic."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        a = np.zeros((size, size, 3), np.uint8) + rng.integers(0, 256, 3, dtype=np.uint8)
        for _ in range(i % 6):
            x, y = rng.integers(0, size - 8, 2)
            a[y:y + 8, x:x + 8] = rng.integers(0, 256, 3)
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path):
    make_images(tmp_path / "imgs", 24)
    return tmp_path / "imgs"


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script that is not part of the package (benchmarks/, examples/) by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

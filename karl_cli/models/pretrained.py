"""Weights on disk: a directory with ``config.json`` + ``model.safetensors`` (+ ``model_card.md``).

Only safetensors is ever read from a user's path: nothing is unpickled, nothing executed.

Models are named by a directory or by a shipped name (``SHIPPED_MODELS``): ``load("karl-small")``,
``load("runs/mine")``. Shipped weights are the package data ``karl_cli.weights`` (pyproject maps the
repository's top-level ``weights/`` folder there), so an ordinary ``pip install`` carries them; a
source checkout that is not installed reads ``weights/`` directly.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from karl_cli.io.atomic import atomic_path, atomic_write_text
from karl_cli.models.config import KARLConfig
from karl_cli.registry import DEFAULT_MODEL, shipped_models
from karl_cli.errors import EXIT_FAILED, EXIT_USAGE, KarlError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model_card.md"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
SHIPPED_MODELS = shipped_models()   # the names of registry.py's shipped entries


class WeightsError(KarlError, ValueError):
    """A weights directory that cannot be loaded, with the reason in words (exit code 3 in the CLI)."""

    exit_code = EXIT_FAILED


# arch -> model class; each model module registers its class (``@register``), and the package
# (models/__init__.py) imports every model module, so the table is full once karl_cli.models is.
ARCHITECTURES: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: the model class for configs whose ``arch`` is ``cls.arch``."""
    ARCHITECTURES[cls.arch] = cls
    return cls


class WeightsNotFound(WeightsError):
    """No directory at the path given and no shipped model of that name: a usage error (exit code 2)."""

    exit_code = EXIT_USAGE


def shipped_root() -> Path:
    """The folder holding the shipped models: the installed package data ``karl_cli.weights``, else
    (a source checkout run without installing) the repository's ``weights/``."""
    try:
        return Path(os.fspath(importlib.resources.files("karl_cli.weights") / ""))
    except (ModuleNotFoundError, TypeError):
        return Path(__file__).resolve().parents[2] / "weights"


def weights_path(name_or_dir: str | os.PathLike | None = None) -> Path:
    """The weights directory a model name or path stands for: an existing path as given, else the
    shipped model of that name (``SHIPPED_MODELS``), None for ``DEFAULT_MODEL``.

    Raises ``WeightsNotFound`` (a usage error) for a path that does not exist and a name that is not
    shipped, naming the shipped models, and when a shipped model is missing from the installation.
    """
    name = DEFAULT_MODEL if name_or_dir is None else os.fspath(name_or_dir)
    path = Path(name)
    if path.exists():
        return path
    if name in SHIPPED_MODELS:
        shipped = shipped_root() / name
        if not shipped.is_dir():
            raise WeightsNotFound(f"the shipped model {name} is missing from this installation (looked in "
                                  f"{shipped}); pass --weights DIR (a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
        return shipped
    if len(path.parts) == 1 and not path.suffix:
        raise WeightsNotFound(f"unknown model {name!r}: no such directory, and not a shipped model "
                              f"(shipped: {', '.join(SHIPPED_MODELS)})")
    raise WeightsNotFound(f"weights directory {path} does not exist")


def build_model(config: KARLConfig) -> torch.nn.Module:
    """A new (untrained) model of the class ``config.arch`` names."""
    return ARCHITECTURES[config.arch](config)


class Pretrained:
    """``save_pretrained`` / ``from_pretrained`` for a model class (mixed into ``Tokenizer``)."""

    def save_pretrained(self, directory: str | Path, card: str | None = None) -> None:
        """Write config.json, model.safetensors (and model_card.md) atomically into ``directory``."""
        save_pretrained(self, directory, card=card)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
        """Load a weights directory; raises WeightsError if it is unreadable, and TypeError if it
        holds another model class than ``cls`` (``Tokenizer.from_pretrained`` takes any)."""
        model = load_pretrained(directory, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def model_id(model: torch.nn.Module) -> str:
    """A short, stable hash of a model's config and weights (12 hex digits).

    Computed from the tensors (as float32 on the CPU), not the file, so a model in memory and the
    same model loaded from disk (or on another device) share an id. Token folders (``karl encode``)
    and the ``karl correlate`` score cache are keyed by it.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def save_pretrained(model: torch.nn.Module, directory: str | Path, card: str | None = None) -> None:
    """Write config, weights (and a model card) atomically into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": model.config.arch})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2) + "\n")
    if card is not None:
        atomic_write_text(directory / CARD_NAME, card)


def read_config(directory: str | Path) -> KARLConfig:
    directory = Path(directory)
    if not directory.exists():
        raise WeightsNotFound(f"weights directory {directory} does not exist")
    if directory.is_file():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise WeightsError(f"{directory} looks like a pickled checkpoint; karl loads only a directory with "
                               f"{CONFIG_NAME} + {WEIGHTS_NAME} (pickles can execute code and are refused)")
        raise WeightsError(f"{directory} is a file; pass the directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise WeightsError(f"{directory} has no {CONFIG_NAME}")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{cfg_path} is not readable JSON: {e}") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{cfg_path} must hold a JSON object")
    try:
        return KARLConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{cfg_path}: {e}") from None


def read_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights directory's safetensors file (never a pickle)."""
    directory = Path(directory)
    if directory.is_file() or not directory.exists():
        read_config(directory)  # raises the clear error for files, pickles and missing paths
    w_path = directory / WEIGHTS_NAME
    if not w_path.is_file():
        pickles = [p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        hint = f" (found {', '.join(pickles)}: pickles are refused)" if pickles else ""
        raise WeightsError(f"{directory} has no {WEIGHTS_NAME}{hint}")
    try:
        state = load_file(str(w_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{w_path} is not a valid safetensors file: {e}") from None
    # karl <= 0.1 named the model's linear code "spectral"
    return {("code." + k[len("spectral."):] if k.startswith("spectral.") else k): v for k, v in state.items()}


def load_pretrained(directory: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model a weights directory (or shipped model name, see ``weights_path``) describes and
    load its tensors, checking every name and shape. Raises ``WeightsError`` (``WeightsNotFound`` for
    a missing path or unknown name)."""
    directory = weights_path(directory)
    config = read_config(directory)
    state = read_state(directory)
    w_path = directory / WEIGHTS_NAME
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"config wants {tuple(expected[k].shape)})")
        raise WeightsError(f"{w_path} does not match {CONFIG_NAME}: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.to(device).eval()


def load(name_or_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The one model loader of every command: a shipped model name (``SHIPPED_MODELS``) or a weights
    directory; None loads ``DEFAULT_MODEL``. In eval mode on ``device``."""
    return load_pretrained(weights_path(name_or_dir), device=device)

"""One table of model names: the shipped weights load, every preset builds, and nothing is missing."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from karl_cli.cli import app
from karl_cli.models.config import PRESETS
from karl_cli.models.pretrained import SHIPPED_MODELS, shipped_root
from karl_cli.registry import DEFAULT_MODEL, DEFAULT_PRESET, list_models


def test_every_preset_and_shipped_model_has_one_entry():
    assert list_models("preset") and set(list_models("preset")) == set(PRESETS)
    assert tuple(list_models("shipped")) == SHIPPED_MODELS
    assert all((shipped_root() / name / "config.json").is_file() for name in SHIPPED_MODELS)
    assert DEFAULT_MODEL == list_models("shipped")[0] and DEFAULT_PRESET == list_models("preset")[0]


def test_list_models_filters_by_kind_and_pattern():
    assert list_models(pattern="learned*") == ["learned-64", "learned-128", "learned-tiny"]
    assert list_models("shipped", "*alit*") == ["alit-small"]
    with pytest.raises(ValueError, match="unknown kind"):
        list_models("zoo")


def test_karl_models_lists_every_name_and_its_kind():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in list_models():
        assert name in result.output
    assert "shipped" in result.output and "preset" in result.output


def test_karl_models_marks_one_default_model_and_trains_default_preset():
    from karl_cli.registry import DEFAULT_MODEL, DEFAULT_PRESET

    out = CliRunner().invoke(app, ["models"], terminal_width=300).output
    assert out.count("(default)") == 1 and f"{DEFAULT_MODEL} (default)" in out
    assert f"{DEFAULT_PRESET} (train's default)" in out

import json

import pytest
import torch
from safetensors.torch import save_file

from karl_cli import KARL, WeightsError, load_pretrained


def test_save_load_roundtrip_gives_identical_outputs(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "w", card="# card\n")
    loaded = KARL.from_pretrained(tmp_path / "w")
    x = torch.rand(2, 3, 32, 32)
    a, b = tiny_model.encode(x, 0.05), loaded.encode(x, 0.05)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.p_halt, b.p_halt)
    assert torch.equal(tiny_model.decode(a), loaded.decode(b))
    assert (tmp_path / "w" / "model_card.md").read_text() == "# card\n"
    assert not list((tmp_path / "w").glob("*.tmp"))


def test_missing_files_are_named(tiny_model, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        load_pretrained(tmp_path / "empty")
    tiny_model.save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").unlink()
    torch.save({"x": 1}, tmp_path / "w" / "model.pt")
    with pytest.raises(WeightsError, match="pickles are refused"):
        load_pretrained(tmp_path / "w")


def test_pickle_file_refused_without_loading(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(Evil(), tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="pickle"):
        load_pretrained(tmp_path / "evil.pt")
    assert not marker.exists()


def test_mismatched_shapes_and_config(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["width"] = 64
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_pretrained(tmp_path / "w")
    cfg["width"] = 33
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="divisible"):
        load_pretrained(tmp_path / "w")
    (tmp_path / "w" / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="JSON"):
        load_pretrained(tmp_path / "w")


def test_corrupt_safetensors_and_extra_tensors(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "w")
    (tmp_path / "w" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        load_pretrained(tmp_path / "w")
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "w" / "model.safetensors"))
    with pytest.raises(WeightsError, match="unexpected"):
        load_pretrained(tmp_path / "w")


def test_saved_files_get_ordinary_permissions(tiny_model, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        tiny_model.save_pretrained(tmp_path / "w", card="# card\n")
    finally:
        os.umask(umask)
    for name in ("config.json", "model.safetensors", "model_card.md"):
        assert stat.S_IMODE((tmp_path / "w" / name).stat().st_mode) == 0o644, name


# --- one loader: shipped names or directories -------------------------------------------------------
def test_shipped_names_load_from_the_package_data_or_the_checkout():
    from pathlib import Path

    from karl_cli.models.alit import ALIT
    from karl_cli.models.pretrained import SHIPPED_MODELS, load, weights_path

    repo = Path(__file__).resolve().parents[2]
    for name in SHIPPED_MODELS:
        d = weights_path(name)
        assert d.name == name and (d / "config.json").is_file()
        assert (d / "config.json").read_bytes() == (repo / "weights" / name / "config.json").read_bytes()
    assert weights_path(None) == weights_path("karl-small")
    assert isinstance(KARL.from_pretrained("karl-small"), KARL)
    assert isinstance(load("alit-small"), ALIT)


def test_shipped_root_falls_back_to_the_checkout(monkeypatch):
    import importlib.resources
    from pathlib import Path

    from karl_cli.models import pretrained

    def missing(_):
        raise ModuleNotFoundError("No module named 'karl_cli.weights'")

    monkeypatch.setattr(importlib.resources, "files", missing)
    assert pretrained.shipped_root() == Path(__file__).resolve().parents[2] / "weights"


def test_a_directory_wins_and_unknown_names_list_the_shipped_ones(tiny_model, tmp_path, monkeypatch):
    from karl_cli.errors import EXIT_USAGE
    from karl_cli.models.pretrained import WeightsNotFound, load

    monkeypatch.chdir(tmp_path)
    tiny_model.save_pretrained(tmp_path / "karl-small")        # a local folder of a shipped name is used
    assert load("karl-small").config.resolution == tiny_model.config.resolution == 32
    with pytest.raises(WeightsNotFound, match=r"unknown model 'karl-huge'.*shipped: karl-small, alit-small") as e:
        load("karl-huge")
    assert e.value.exit_code == EXIT_USAGE
    with pytest.raises(WeightsNotFound, match="does not exist"):
        load(tmp_path / "runs" / "nope")


def test_cli_weights_by_name(image_folder, tmp_path):
    from typer.testing import CliRunner

    from karl_cli.cli import app

    img = str(sorted(image_folder.iterdir())[0])
    res = CliRunner().invoke(app, ["complexity", img, "--weights", "karl-huge", "--csv", str(tmp_path / "o.csv")])
    assert res.exit_code == 2 and "karl-small, alit-small" in res.output and len(res.output.strip().splitlines()) <= 2
    res = CliRunner().invoke(app, ["complexity", img, "--weights", "alit-small", "--csv", str(tmp_path / "a.csv"),
                                   "--eps", "0.2", "--device", "cpu", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "search" in res.output and (tmp_path / "a.csv").read_text().count("\n") == 2


def test_a_config_from_before_stem_channels_gets_a_stem_as_wide_as_the_head(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg.pop("stem_channels") == 16
    cfg["base_channels"] = 16
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    loaded = KARL.from_pretrained(tmp_path / "w")
    assert loaded.config.stem_channels == 16 and loaded.base.stem[0].out_channels == 16

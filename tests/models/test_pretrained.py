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

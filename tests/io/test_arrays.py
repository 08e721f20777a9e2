"""In-memory images (PIL, NumPy, torch) reach the model as the same pixels as the same image read
from a lossless file, and anything else is one ValueError line (issue 29)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from karl_cli.io.arrays import memory_pixels
from karl_cli.io.images import load_for_model

R = 32


def _picture(h: int = 45, w: int = 70, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus a few blocks: resampling has real work to do."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.uint8)
    for _ in range(4):
        r, c = rng.integers(0, h - 8), rng.integers(0, w - 8)
        a[r:r + 8, c:c + 8] = rng.integers(0, 256, 3)
    return a


@pytest.fixture
def saved(tmp_path):
    a = _picture()
    path = tmp_path / "p.png"
    Image.fromarray(a).save(path)
    return a, load_for_model(path, R)


def test_pil_numpy_and_tensor_give_the_pixels_of_the_png(saved):
    a, from_file = saved
    t = torch.from_numpy(a).permute(2, 0, 1)
    inputs = {"PIL": Image.fromarray(a), "uint8 array": a, "float array": a / 255.0,
              "float32 tensor (3,H,W)": t.float() / 255, "uint8 tensor": t, "batch tensor": (t.float() / 255)[None]}
    for name, x in inputs.items():
        got = memory_pixels(x, R)
        assert got.shape == (1, R, R, 3) and got.dtype == np.uint8, name
        assert np.array_equal(got[0], from_file), name


def test_a_pil_image_of_another_mode_converts_as_its_file_does(tmp_path):
    rgba = np.dstack([_picture(), np.linspace(0, 255, 45 * 70).reshape(45, 70).astype(np.uint8)])
    img = Image.fromarray(rgba, "RGBA")
    img.save(tmp_path / "a.png")
    assert np.array_equal(memory_pixels(img, R)[0], load_for_model(tmp_path / "a.png", R))
    grey = Image.fromarray(_picture()[..., 0], "L")
    grey.save(tmp_path / "g.png")
    assert np.array_equal(memory_pixels(grey, R)[0], load_for_model(tmp_path / "g.png", R))


def test_a_batch_and_a_list_keep_their_order():
    a, b = _picture(seed=1), _picture(seed=2)
    one = memory_pixels([Image.fromarray(a), b], R)
    batch = memory_pixels(np.stack([a, b]), R)
    assert one.shape == (2, R, R, 3) and np.array_equal(one, batch)
    assert not np.array_equal(one[0], one[1])


def test_a_float_tensor_on_the_model_grid_is_only_rounded_to_8_bits():
    t = torch.rand(2, 3, R, R, generator=torch.Generator().manual_seed(0))
    got = memory_pixels(t, R)
    assert np.array_equal(got, np.floor(t.double().numpy() * 255 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1))


@pytest.mark.parametrize("bad, words", [
    (3, "a int"), ("not-a-path-object", "a str"), (np.zeros((10, 10)), "(H, W, 3)"),
    (np.zeros((3, 10, 10), np.uint8), "transpose to (H, W, 3)"), (np.zeros((10, 10, 3), bool), "dtype bool"),
    (np.full((10, 10, 3), 2.0), "(0-255 pixels"), (np.full((10, 10, 3), np.nan), "NaN"),
    (torch.zeros(10, 10, 3), "permute to (B, 3, H, W)"), (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "int32"),
    (np.zeros((0, 10, 3), np.uint8), "(H, W, 3)"), ([], "no images given"),
])
def test_anything_else_is_one_value_error_line(bad, words):
    with pytest.raises(ValueError) as e:
        memory_pixels(bad, R)
    msg = str(e.value)
    assert words in msg and "\n" not in msg


def test_encode_refuses_a_list_of_eps_with_a_value_error(tiny_model):
    x = torch.rand(1, 3, tiny_model.config.resolution, tiny_model.config.resolution)
    with pytest.raises(ValueError, match="ε must be one number.*list of 2"):
        tiny_model.encode(x, [0.03, 0.05])
    assert tiny_model.encode(x, torch.tensor(0.05)).kc.shape == (1,)

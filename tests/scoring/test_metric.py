"""karl_cli.create_metric: KC as a metric object (pyiqa/timm style) that takes paths, PIL images, NumPy
arrays and tensors and gives each the KC of the same pixels scored from a file (issue 29)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from karl_cli import KCMetric, create_metric, list_metrics
from karl_cli.models.pretrained import load
from karl_cli.scoring.complexity import score


@pytest.fixture(scope="module")
def metric():
    return create_metric("karl-small", device="cpu")


@pytest.fixture
def photo(tmp_path):
    """A PNG with structure at several scales, and its pixels."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:90, 0:120]
    a = np.stack([x * 2, y * 2, (x * y) % 256], axis=-1).astype(np.uint8)
    a[20:50, 30:70] = rng.integers(0, 256, (30, 40, 3))
    Image.fromarray(a).save(tmp_path / "photo.png")
    return tmp_path / "photo.png", a


def test_pil_array_and_tensor_score_as_the_file_does(metric, photo):
    path, a = photo
    (row,) = score([path], load("karl-small"), [0.05])
    t = torch.from_numpy(a).permute(2, 0, 1).float() / 255
    for x in (path, str(path), Image.fromarray(a), a, a / 255.0, t, t[None]):
        kc = metric(x)
        assert kc.shape == (1,) and kc.dtype == torch.long
        assert kc.item() == row["kc"]
    assert metric([Image.fromarray(a), a, path]).tolist() == [row["kc"]] * 3


def test_several_eps_and_everything_on_request(metric, photo):
    path, a = photo
    rows = list(score([path], load("karl-small"), [0.03, 0.09]))
    kc = metric(a, eps=[0.03, 0.09])
    assert kc.shape == (1, 2) and kc[0].tolist() == [r["kc"] for r in rows]
    r = metric(a, eps=[0.03, 0.09], full=True)
    assert r.kc.tolist() == kc.tolist()
    assert [round(v, 4) for v in r.kc_soft[0].tolist()] == [row["kc_soft"] for row in rows]
    # The check's L1: the code's own reconstruction for the wavelet KARL (no decoder pass).
    assert r.check == "code" and [round(v, 6) for v in r.l1[0].tolist()] == [row["code_l1"] for row in rows]
    decoded = create_metric("karl-small", device="cpu", check="decoder")(a, eps=[0.03, 0.09], full=True)
    by_decoder = list(score([path], load("karl-small"), [0.03, 0.09], check="decoder"))
    assert decoded.check == "decoder" and [round(v, 6) for v in decoded.l1[0].tolist()] == [row["l1"] for row in by_decoder]
    assert r.p_halt.shape == (1, 2, 384) and bool(((r.p_halt >= 0) & (r.p_halt <= 1)).all())
    assert metric.lower_better is True and isinstance(metric, KCMetric)


def test_a_search_only_model_and_the_registry():
    assert {"karl-small", "alit-small"} <= set(list_metrics())
    alit = create_metric("alit-small", device="cpu")
    assert alit.method == "search" and alit(np.zeros((16, 16, 3), np.uint8)).item() >= 1


@pytest.mark.parametrize("call, words", [
    (lambda: create_metric("no-such-model"), "shipped"),
    (lambda: create_metric("karl-small", eps=-1), "positive"),
    (lambda: create_metric("karl-small", eps=0.9), "outside"),
    (lambda: create_metric("karl-small", device="cuda:7"), "cuda"),
    (lambda: create_metric("karl-small", device="cpu")(object()), "cannot read a object"),
    (lambda: create_metric("karl-small", device="cpu")([]), "no images"),
    (lambda: create_metric("alit-small", device="cpu", check="code"), "--check code"),
    (lambda: create_metric("karl-small", device="cpu", check="none"), "full=True"),
])
def test_what_it_cannot_take_is_one_value_error_line(call, words):
    with pytest.raises(ValueError) as e:
        call()
    assert words in str(e.value) and "\n" not in str(e.value)

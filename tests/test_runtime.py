"""karl_cli.runtime: device choice and model placement."""
from __future__ import annotations

import os

import pytest
import torch

from karl_cli.errors import UsageError
from karl_cli.runtime import inference, prepare_model, resolve_device, to_model_input


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(UsageError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(UsageError, match="CUDA is not available"):
                resolve_device(name)


def test_prepare_and_inference(tiny_model):
    tiny_model.train()
    m = prepare_model(tiny_model, None)
    assert m is tiny_model and not m.training
    x = to_model_input(torch.full((2, 3, 32, 32), 255, dtype=torch.uint8), "cpu")
    assert x.dtype == torch.float32 and float(x.min()) == 1.0
    with inference("cpu"):
        y = m.decode_tokens(m.encode_tokens(x, torch.zeros(2, dtype=torch.long), 8)[0])
    assert y.shape == (2, 3, 32, 32) and torch.is_inference(y)


def test_importing_karl_first_makes_openmp_waiters_sleep_unless_the_user_chose():
    import subprocess
    import sys

    code = "import karl_cli, torch, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"

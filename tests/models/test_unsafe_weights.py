"""Weights: only safetensors + config.json are read; pickles are refused and never run, bad weight
folders are refused with the reason."""
from __future__ import annotations

import json
import os

from safetensors.torch import save_file
import pytest
import torch

from karl_cli.errors import EXIT_FAILED, EXIT_USAGE

from faults import invoke, job, weights, wide_console  # noqa: F401 - fixtures


# --- weights: only safetensors + config, checked ----------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


WEIGHT_COMMANDS = {
    "complexity": lambda d, w: ["complexity", d / "imgs", "--weights", w, "--csv", d / "o.csv", "--workers", "0"],
    "encode": lambda d, w: ["encode", d / "imgs", "--weights", w, "--out", d / "tok", "--workers", "0"],
    "decode": lambda d, w: ["decode", d / "tok", "--weights", w, "--out", d / "dec"],
    "show": lambda d, w: ["show", d / "imgs" / "img_000.png", "--weights", w, "--out", d / "s.png"],
    "correlate": lambda d, w: ["correlate", "--ratings", d / "ratings.csv", "--weights", w, "--no-cache"],
    "compare": lambda d, w: ["compare", d / "imgs", "--weights", w],
}


@pytest.mark.parametrize("command", sorted(WEIGHT_COMMANDS))
def test_pickled_weights_are_refused_and_never_run(job, command):
    marker = job / "pwned"
    torch.save(_Evil(marker), job / "evil.pt")
    res = invoke(*WEIGHT_COMMANDS[command](job, job / "evil.pt"), ok_codes=[EXIT_FAILED])
    assert "pickle" in res.output and "refused" in res.output
    assert not marker.exists()


def test_bad_weight_directories_are_refused(job, weights):
    import shutil

    cases = {}
    d = job / "only_pickle"
    shutil.copytree(weights, d)
    (d / "model.safetensors").unlink()
    torch.save(_Evil(job / "pwned"), d / "model.pt")
    cases[d] = "pickles are refused"
    d = job / "wrong_shapes"
    shutil.copytree(weights, d)
    state = {k: torch.zeros(3) for k in ("a", "b")}
    save_file(state, str(d / "model.safetensors"))
    cases[d] = "does not match"
    d = job / "other_config"
    shutil.copytree(weights, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["width"] = cfg["width"] * 2
    (d / "config.json").write_text(json.dumps(cfg))
    cases[d] = "wrong shape"
    d = job / "bad_config"
    shutil.copytree(weights, d)
    (d / "config.json").write_text('{"width": "wide"}')
    cases[d] = "config.json"
    d = job / "garbage"
    shutil.copytree(weights, d)
    (d / "model.safetensors").write_bytes(os.urandom(256))
    cases[d] = "not a valid safetensors"
    for d, why in cases.items():
        res = invoke(*WEIGHT_COMMANDS["complexity"](job, d), ok_codes=[EXIT_FAILED])
        assert why in res.output, (d.name, res.output)
    assert not (job / "pwned").exists()
    res = invoke(*WEIGHT_COMMANDS["complexity"](job, job / "nope"), ok_codes=[EXIT_USAGE])
    assert "does not exist" in res.output


def test_train_resume_refuses_a_foreign_checkpoint(job):
    run = job / "run"
    run.mkdir()
    torch.save(_Evil(job / "pwned"), run / "checkpoint.pt")
    res = invoke("train", job / "imgs", "--out", run, "--resume", ok_codes=[EXIT_FAILED])
    assert "not a readable karl checkpoint" in res.output
    assert not (job / "pwned").exists()

"""Distilling a lighter halting encoder from a wavelet KARL: same decoder and tokens, the teacher's halting."""
import json

import pytest
import torch
from typer.testing import CliRunner

from karl_cli import KARL, preset
from karl_cli.cli import app
from karl_cli.defaults import HALT_THRESHOLDS as THRESHOLDS
from karl_cli.training.distil import distil_halting, encoder_parameters, student_of


def test_a_student_keeps_the_teachers_decoder_and_tokens(tiny_model):
    student = student_of(tiny_model, width=16, enc_heads=1, stem_channels=4)
    assert student.config.width == 16 and student.config.dec_width == tiny_model.config.dec_width
    assert torch.equal(student.decoder[0].qkv.weight, tiny_model.decoder[0].qkv.weight)
    assert torch.equal(student.base.head[-1].weight, tiny_model.base.head[-1].weight)
    assert student.base.stem[0].out_channels == 4 and tiny_model.base.stem[0].out_channels == 16
    x = torch.rand(3, 3, 32, 32)
    a, b = tiny_model.encode(x, 0.05), student.encode(x, 0.05)
    assert torch.equal(a.latents, b.latents)                       # the tokens are the code
    keep = torch.ones_like(a.keep)
    assert torch.allclose(tiny_model.decode_tokens(a.latents, keep), student.decode_tokens(b.latents, keep))
    with pytest.raises(ValueError, match="dec_width"):
        student_of(tiny_model, dec_width=64)
    with pytest.raises(ValueError, match="wavelet"):
        student_of(KARL(preset("learned-tiny")), width=16)


def test_the_encoder_parameters_are_what_halting_reads(tiny_model):
    names = {n for n, p in tiny_model.named_parameters() if any(p is q for q in encoder_parameters(tiny_model))}
    assert any(n.startswith("halting_head.") for n in names) and any(n.startswith("encoder.") for n in names)
    assert any(n.startswith("base.stem.") for n in names)
    assert not any(n.startswith(("decoder.", "base.head.", "recon_embed.", "dec_")) for n in names)


def test_distilling_brings_the_students_halting_to_the_teachers(tiny_model, image_folder):
    with torch.no_grad():   # a teacher that halts on its own schedule, not 0.5 everywhere
        tiny_model.halting_head.fc2.bias.fill_(-1.0)
        tiny_model.halting_head.fc2.weight.normal_(0.0, 2.0)
    torch.manual_seed(1)
    student = student_of(tiny_model, width=16, enc_heads=1, stem_channels=4)
    decoder = {k: v.clone() for k, v in student.state_dict().items() if k.startswith("decoder.")}
    x = torch.rand(8, 3, 32, 32)
    pos = torch.linspace(0, 18, 8)

    def gap() -> float:
        with torch.no_grad():
            return float((student.encode_tokens(x, pos, 16)[1] - tiny_model.encode_tokens(x, pos, 16)[1]).abs().mean())

    before = gap()
    report = distil_halting(student, tiny_model, [str(image_folder)], samples=48, eps_per_image=2, steps=150,
                            lr=1e-2, batch_size=16, seed=0)
    assert gap() < 0.5 * before
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in decoder.items())
    assert report.samples + report.held_out == 48 * 2
    assert student.config.halt_threshold == report.threshold in THRESHOLDS
    assert report.undercut <= 0.01 or report.threshold == THRESHOLDS[-1]
    assert report.student_params < report.teacher_params


def test_cli_distil_writes_a_loadable_student(tiny_weights, image_folder, tmp_path):
    res = CliRunner().invoke(app, ["distil", str(image_folder), "--weights", str(tiny_weights), "--out",
                                   str(tmp_path / "s"), "--width", "16", "--enc-heads", "1", "--stem-channels", "4",
                                   "--samples", "16", "--steps", "5"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["width"] == 16 and cfg["stem_channels"] == 4 and cfg["dec_width"] == preset("tiny").dec_width
    assert KARL.from_pretrained(tmp_path / "s").config.width == 16
    assert "Halting encoder distilled" in (tmp_path / "s" / "model_card.md").read_text()
    bad = CliRunner().invoke(app, ["distil", str(image_folder), "--weights", str(tiny_weights), "--out",
                                   str(tmp_path / "x"), "--width", "15", "--enc-heads", "2"])
    assert bad.exit_code == 2 and not (tmp_path / "x").exists()
    before = (tmp_path / "s" / "model.safetensors").read_bytes()
    for taken in (tmp_path / "s", tiny_weights):            # an earlier student, the teacher itself
        bad = CliRunner().invoke(app, ["distil", str(image_folder), "--weights", str(tiny_weights), "--out",
                                       str(taken), "--samples", "16", "--steps", "5"])
        assert bad.exit_code == 2 and "already exists" in bad.output
    assert (tmp_path / "s" / "model.safetensors").read_bytes() == before


def test_an_interrupted_distil_does_not_promise_a_resume(tiny_weights, image_folder, tmp_path, monkeypatch):
    import karl_cli.training.distil as distil

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(distil, "distil_halting", stop)
    res = CliRunner().invoke(app, ["distil", str(image_folder), "--weights", str(tiny_weights), "--out",
                                   str(tmp_path / "s"), "--samples", "16"])
    assert res.exit_code == 130 and "interrupted" in res.output and "--resume" not in res.output
    assert not (tmp_path / "s").exists()

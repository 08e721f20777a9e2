import json

import numpy as np
import pytest
import torch
from PIL import Image

from karl_cli import ALIT, KARL, preset
from karl_cli.models.config import SMALL_EPS_BINS, eps_to_bin
from karl_cli.training.data import epoch_indices
from karl_cli.errors import UsageError
from karl_cli.training.objectives import TwoPhaseLoss, halting_targets, sample_phase1
from karl_cli.training.trainer import TrainConfig, TrainingError, TrainingInterrupted, lr_factor, train


def test_halting_targets_phase2():
    t = halting_targets(4, 16, 2)
    assert t.shape == (2, 16)
    assert t[:, :4].sum() == 0 and bool((t[:, 4:] == 1).all())
    assert halting_targets(16, 16, 1).sum() == 0


def test_phase1_samples_budgets_and_small_eps_deterministically():
    cfg = preset("tiny")
    seen = set()
    for step in range(50):
        budget, eps = sample_phase1(cfg, 8, step, seed=3)
        assert budget in cfg.budgets
        assert int(eps.max()) < SMALL_EPS_BINS
        b2, e2 = sample_phase1(cfg, 8, step, seed=3)
        assert b2 == budget and torch.equal(eps, e2)
        seen.add(budget)
    assert len(seen) == len(cfg.budgets)


def test_phase2_is_conditioned_on_bin_of_phase1_error(tiny_model):
    calls = []
    original = tiny_model.forward

    def spy(images, eps_idx, num_tokens=None, halting=False, halt_grad=None):
        out = original(images, eps_idx, num_tokens, halting, halt_grad)
        calls.append((eps_idx.clone(), num_tokens, halting))
        return out

    tiny_model.forward = spy
    x = torch.rand(4, 3, 32, 32)
    loss, stats = TwoPhaseLoss(tiny_model, label_decodes=1)(x, 8, torch.zeros(4, dtype=torch.long), 1.0)
    ((e2, t2, h2),) = calls                                   # phase 1 encodes and decodes directly
    assert (t2, h2) == (16, True)
    with torch.no_grad():                                     # phase 1's ε₀: the L1 at budget 8
        lat, _ = tiny_model.encode_tokens(x, torch.zeros(4, dtype=torch.long), 8)
        eps0 = (tiny_model.decode_tokens(lat) - x).abs().mean(dim=(1, 2, 3))
    assert torch.equal(e2, eps_to_bin(eps0))
    assert torch.isfinite(loss) and set(stats) >= {"rec1", "rec2", "halt", "kept2", "needed"}
    assert float(stats["needed"]) == 8.0                      # one decode: T* is the sampled budget


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.55, abs=0.01)


def test_epoch_indices_shard_the_data():
    a, b = epoch_indices(10, 0, 0, 0, 2), epoch_indices(10, 0, 0, 1, 2)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10))
    assert epoch_indices(10, 0, 1) != epoch_indices(10, 0, 0)


def _tc(**kw):
    base = dict(steps=20, batch_size=8, lr=3e-3, warmup_steps=5, checkpoint_every=5, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases(image_folder, tmp_path):
    # Learned tokens, from scratch (no code), so the loss has far to fall.
    cfg = preset("tiny", code="learned")
    train([str(image_folder)], tmp_path / "run", cfg, _tc(steps=100), device="cpu")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 100
    first = sum(r["rec2"] for r in rows[:10]) / 10
    last = sum(r["rec2"] for r in rows[-10:]) / 10
    assert last < 0.85 * first
    model = KARL.from_pretrained(tmp_path / "run")
    assert model.config == cfg
    assert "step 100 of 100" in (tmp_path / "run" / "model_card.md").read_text()


def test_dct_model_is_fitted_then_refines_its_code(image_folder, tmp_path):
    # ALIT's tokens start as the DCT code and the bottleneck learns a correction to them.
    train([str(image_folder)], tmp_path / "run", preset("tiny", arch="alit"), _tc(steps=100), device="cpu")
    model = ALIT.from_pretrained(tmp_path / "run").eval()
    # The fit found the data's colour axes (not the identity it starts from) and kept them on disk.
    assert not torch.allclose(model.code.colour_basis, torch.eye(3))
    assert model.code.scale[0] > model.code.scale[-1]
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((32, 32)))).permute(2, 0, 1)
                     for p in sorted(image_folder.iterdir())]).float() / 255
    with torch.no_grad():
        tokens, _ = model.encode_tokens(x, torch.zeros(len(x), dtype=torch.long), model.config.max_tokens)
        code_l1 = (model.code.synthesise(model.code.analyse(x)).clamp(0, 1) - x).abs().mean()
        model_l1 = (model.decode_tokens(tokens).clamp(0, 1) - x).abs().mean()
    # Training taught the networks a correction that beats the bare linear code.
    assert model_l1 < code_l1


def test_wavelet_model_trains_its_decoder_and_halting_encoder_not_its_tokens(image_folder, tmp_path):
    cfg = preset("tiny", halt_grad_scale=1.0)
    torch.manual_seed(0)
    start = KARL(cfg).state_dict()
    train([str(image_folder)], tmp_path / "run", cfg, _tc(steps=60), device="cpu")
    model = KARL.from_pretrained(tmp_path / "run").eval()
    assert model.config.code == "wavelet" and model.bottleneck is None
    assert not torch.allclose(model.code.colour_basis, torch.eye(3))
    # The halting loss reached the encoder (halt_grad_scale 1): its blocks moved.
    moved = model.state_dict()["encoder.0.qkv.weight"] - start["encoder.0.qkv.weight"]
    assert float(moved.abs().max()) > 1e-3
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((32, 32)))).permute(2, 0, 1)
                     for p in sorted(image_folder.iterdir())]).float() / 255
    with torch.no_grad():
        tokens, _ = model.encode_tokens(x, torch.zeros(len(x), dtype=torch.long), model.config.max_tokens)
        assert torch.equal(tokens, model.code.analyse(x))          # tokens are the code, uncorrected
        bare = model.code.synthesise(tokens).clamp(0, 1)
        refined = model.decode_tokens(tokens).clamp(0, 1)
    # The decoder's refinement (zero at the start) learned something, and did not cost accuracy: in
    # 60 tiny steps it stays within a few per cent of the Haar image (the shipped model gains ~1 %).
    assert float((refined - bare).abs().max()) > 1e-3
    assert (refined - x).abs().mean() < 1.05 * (bare - x).abs().mean()


@pytest.mark.slow
def test_interrupt_and_resume_continue_the_same_run(image_folder, tmp_path):
    straight = train([str(image_folder)], tmp_path / "a", preset("tiny"), _tc(), device="cpu")

    def stop_at_7(report):
        if report.step == 7:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="step 7"):
        train([str(image_folder)], tmp_path / "b", preset("tiny"), _tc(), device="cpu", on_step=stop_at_7)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 7
    resumed = train([str(image_folder)], tmp_path / "b", resume=True, device="cpu")
    assert resumed.step == straight.step == 20
    for (k, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k
    ema_a = KARL.from_pretrained(tmp_path / "a").state_dict()
    ema_b = KARL.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.allclose(ema_a[k], ema_b[k], atol=1e-6) for k in ema_a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))


def test_refuses_to_overwrite_a_run_and_resume_without_checkpoint(image_folder, tmp_path):
    lines = []
    train([str(image_folder)], tmp_path / "r", preset("tiny"), _tc(steps=2), device="cpu", on_log=lines.append)
    # Reading the code's crops (minutes on large photos) reports progress before the first step.
    assert "fitting the wavelet code: 48/48 training crops read" in lines
    assert sum(line.startswith("fitting the wavelet code:") for line in lines) == 10
    with pytest.raises(UsageError, match="--resume"):
        train([str(image_folder)], tmp_path / "r", preset("tiny"), _tc(steps=2), device="cpu")
    with pytest.raises(UsageError, match="nothing to resume"):
        train([str(image_folder)], tmp_path / "none", resume=True, device="cpu")


def test_nan_loss_stops_and_keeps_last_checkpoint(image_folder, tmp_path, monkeypatch):
    import karl_cli.training.trainer as trainer

    real = trainer.two_phase_step

    def poisoned(loss_module, images, step, *a):
        loss, stats = real(loss_module, images, step, *a)
        return (loss * float("nan") if step >= 6 else loss), stats

    monkeypatch.setattr(trainer, "two_phase_step", poisoned)
    with pytest.raises(TrainingError, match="nan"):
        train([str(image_folder)], tmp_path / "n", preset("tiny"), _tc(), device="cpu")
    assert torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=True)["step"] == 5
    assert torch.isfinite(torch.cat([p.flatten() for p in KARL.from_pretrained(tmp_path / "n").parameters()])).all()


def test_bad_data_and_devices(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        train([str(tmp_path / "empty")], tmp_path / "o", preset("tiny"), _tc(), device="cpu")
    with pytest.raises(UsageError, match="no such"):
        train([str(tmp_path / "missing")], tmp_path / "o", preset("tiny"), _tc(), device="cpu")
    with pytest.raises(UsageError, match="device"):
        train([str(tmp_path / "empty")], tmp_path / "o", preset("tiny"), _tc(), device="tpu")


def test_init_from_weights_starts_a_new_run_from_them(image_folder, tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "base")
    res = train([str(image_folder)], tmp_path / "ft", preset("tiny"), _tc(steps=1, lr=1e-9, warmup_steps=1),
                device="cpu", init_from=tmp_path / "base")
    base = tiny_model.state_dict()
    assert all(torch.allclose(base[k], v, atol=1e-5) for k, v in res.model.state_dict().items())
    with pytest.raises(Exception, match="shape mismatch"):
        train([str(image_folder)], tmp_path / "ft2", preset("tiny", width=64), _tc(steps=1), device="cpu",
              init_from=tmp_path / "base")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_like_ctrl_c(image_folder, tmp_path):
    import os
    import signal

    def term_at_4(report):
        if report.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="step 4"):
        train([str(image_folder)], tmp_path / "t", preset("tiny"), _tc(), device="cpu", on_step=term_at_4)
    assert torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# --- `karl train`: resume must not contradict the run, short runs and warm-up, interrupts -----------
def _karl(*args):
    from typer.testing import CliRunner

    from karl_cli import cli
    cli.console.width = 1000          # one unwrapped line per message
    return CliRunner().invoke(cli.app, [str(a) for a in args])


def test_cli_resume_refuses_flags_that_contradict_the_run(image_folder, tmp_path):
    """Issue 22.1: `--resume` with another preset, size, code, arch or recipe flag names the flag."""
    run = tmp_path / "run"
    base = ["train", image_folder, "--out", run, "--batch-size", 4]
    res = _karl(*base, "--preset", "tiny", "--steps", 2)
    assert res.exit_code == 0, res.output
    before = (run / "checkpoint.pt").read_bytes()
    for flags, named in ((["--preset", "small"], "--preset small (the run's model differs from it in"),
                         (["--code", "learned"], "--code learned (the run has wavelet)"),
                         (["--arch", "alit"], "--arch alit (the run has karl)"),
                         (["--max-tokens", 32], "--max-tokens 32 (the run has 16)"),
                         (["--lr", 0.5], "--lr 0.5 (the run has 0.001)"),
                         (["--seed", 3], "--seed 3 (the run has 0)"),
                         (["--no-cache"], "--cache/--no-cache false (the run has true)"),
                         (["--init-from", run], "--init-from starts a new run")):
        res = _karl(*base, "--resume", "--steps", 3, *flags)
        assert res.exit_code == 2 and named in res.output, (flags, res.output)
        assert (run / "checkpoint.pt").read_bytes() == before
    # Flags that agree with the run, a longer run and another worker count are fine.
    res = _karl(*base, "--resume", "--steps", 3, "--preset", "tiny", "--lr", "0.001", "--workers", 0)
    assert res.exit_code == 0, res.output
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 3


def test_resume_rule_is_one_statement_for_check_error_and_help(image_folder, tmp_path):
    """Issue 28.15: the flags a resumed run may change are stated once (flags.RESUME_RULE); the
    refusal and --help print that statement, and every flag it names is accepted by the check."""
    import dataclasses
    import re

    from karl_cli.training.flags import RECIPE_FLAGS, RESUME_MAY_CHANGE, RESUME_MAY_CHANGE_FLAGS, RESUME_RULE
    from karl_cli.training.trainer import TrainConfig, resume_conflicts

    def flat(text: str) -> str:
        return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())

    assert set(RESUME_MAY_CHANGE_FLAGS) >= {"--steps", "--epochs", "--max-minutes", "--workers", "--compile",
                                            "--device"}
    # Every TrainConfig field is either kept (the recipe, by flag or fixed) or named by the rule.
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(RESUME_MAY_CHANGE) <= fields and not set(RESUME_MAY_CHANGE) & set(RECIPE_FLAGS)
    assert flat(RESUME_RULE) in flat(_karl("train", "--help").output)
    run = tmp_path / "run"
    assert _karl("train", image_folder, "--out", run, "--batch-size", 4, "--preset", "tiny", "--steps", 2).exit_code == 0
    res = _karl("train", image_folder, "--out", run, "--resume", "--lr", 0.5)
    assert res.exit_code == 2 and RESUME_RULE in res.output, res.output
    changed = {"steps": 9, "epochs": 3.0, "max_minutes": 5.0, "workers": 1, "compile": True}
    assert resume_conflicts(run, recipe={k: changed[k] for k in RESUME_MAY_CHANGE}) == []
    res = _karl("train", image_folder, "--out", run, "--resume", "--steps", 3, "--max-minutes", 10, "--workers", 0)
    assert res.exit_code == 0, res.output


def test_warmup_fits_short_runs_or_warns(image_folder, tmp_path):
    """Issue 22.8: by default the warm-up is at most a fifth of the run, so a short run reaches its
    peak learning rate; a --warmup longer than the run is kept but warned about."""
    res = _karl("train", image_folder, "--out", tmp_path / "a", "--preset", "tiny", "--steps", 5, "--batch-size", 4)
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["train_config"]["warmup_steps"] == 1
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) == pytest.approx(1e-3, rel=0.01), "the peak learning rate is reached"
    res = _karl("train", image_folder, "--out", tmp_path / "b", "--preset", "tiny", "--steps", 2, "--batch-size", 4,
                "--warmup", 50)
    assert res.exit_code == 0, res.output
    assert "warning: --warmup 50 is longer than the run (2 steps): the learning rate reaches only 4% of --lr" \
        in res.output


def test_cli_training_interrupt_is_reported_as_interrupted(image_folder, tmp_path, monkeypatch):
    import karl_cli.training.trainer as trainer

    real = trainer.two_phase_step

    def interrupt_at_2(loss_module, images, step, *a, **k):
        if step == 2:
            raise KeyboardInterrupt
        return real(loss_module, images, step, *a, **k)

    monkeypatch.setattr(trainer, "two_phase_step", interrupt_at_2)
    res = _karl("train", image_folder, "--out", tmp_path / "r", "--preset", "tiny", "--steps", 5, "--batch-size", 4)
    assert res.exit_code == 130
    assert "interrupted at step 2; checkpoint saved" in res.output and "error" not in res.output, res.output

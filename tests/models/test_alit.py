"""ALIT (arXiv 2411.02393), the recurrent-allocation peer of KARL: shapes, the recurrence, the search,
weights on disk and training through the shared trainer. Tiny preset throughout."""
import json

import pytest
import torch

from karl_cli import KARL, build_model, load_pretrained, preset
from karl_cli.models.alit import ALIT
from karl_cli.scoring.oracle import search
from karl_cli.training.objectives import ALITLoss
from karl_cli.training.trainer import TrainConfig, train

from conftest import as_if_trained, make_images


@pytest.fixture
def alit() -> ALIT:
    torch.manual_seed(0)
    return as_if_trained(ALIT(preset("tiny", arch="alit"))).eval()


def test_build_model_dispatches_and_arch_is_checked():
    assert isinstance(build_model(preset("tiny", arch="alit")), ALIT)
    assert ALIT.single_pass is False
    with pytest.raises(ValueError, match="arch='alit'"):
        ALIT(preset("tiny"))


def test_encode_decode_shapes_at_every_iteration(alit):
    cfg = alit.config
    x = torch.rand(3, 3, 32, 32)
    assert alit.iterations == cfg.max_tokens // cfg.token_step == 4
    for t in cfg.budgets:
        enc = alit.encode(x, 0.05, num_tokens=t)
        assert enc.latents.shape == (3, t, cfg.latent_dim)
        assert enc.kc.tolist() == [t] * 3 and bool(enc.keep.all())
        assert torch.equal(enc.p_halt, torch.zeros(3, t)) and enc.eps == 0.05
        rec = alit.decode(enc)
        assert rec.shape == x.shape and float(rec.min()) >= 0 and float(rec.max()) <= 1
    assert alit.encode(x, 0.05).latents.shape[1] == cfg.max_tokens
    for bad in (5, cfg.max_tokens + cfg.token_step):
        with pytest.raises(ValueError, match="multiple of"):
            alit.encode(x, 0.05, num_tokens=bad)


def test_tokens_of_iteration_k_drive_the_reconstruction(alit):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        steps = list(alit.rollout(x))
    assert [s.shape[1] for s in steps] == alit.config.budgets
    enc = alit.encode(x, 0.05, num_tokens=8)
    # encode(num_tokens=8) is the state after iteration 2 of the rollout.
    assert torch.allclose(enc.latents, steps[1], atol=1e-5)
    # The recurrence updates old tokens: iteration 4's first 8 tokens are not iteration 2's.
    assert not torch.allclose(steps[3][:, :8], steps[1], atol=1e-3)
    # The decoder reads every one of the 8 tokens: changing any one changes the image.
    base = alit.decode(enc)
    for i in range(8):
        enc2 = alit.encode(x, 0.05, num_tokens=8)
        enc2.latents = enc2.latents.clone()
        enc2.latents[:, i] += 1.0
        assert (alit.decode(enc2) - base).abs().max() > 1e-4, f"token {i} has no effect"
    # ε does not change ALIT's tokens (no ε conditioning).
    assert torch.equal(alit.encode(x, 0.01, num_tokens=8).latents, enc.latents)


def test_search_finds_first_iteration_meeting_eps(alit):
    x = torch.rand(4, 3, 32, 32)
    x[0] = 0.5  # a flat image is easier
    errs = torch.stack([(alit.decode(alit.encode(x, 0.1, num_tokens=t)) - x).abs().mean(dim=(1, 2, 3))
                        for t in alit.config.budgets], 1)       # (B, iterations)
    eps = float(errs[:, 1].median())                              # some images meet it at iteration <= 2
    r = search(alit, x, eps)
    for i in range(4):
        met = (errs[i] <= eps).nonzero()
        k = int(met[0]) + 1 if len(met) else alit.iterations
        assert int(r.kc[i]) == k * alit.config.token_step
        assert int(r.encoder_runs[i]) == int(r.decoder_runs[i]) == k
        assert float(r.l1[i]) == pytest.approx(float(errs[i, k - 1]), abs=1e-5)
        assert bool(r.met[i]) == bool(len(met))
    assert torch.equal(search(alit, x, eps).kc, r.kc)
    assert int((r.kc <= 8).sum()) >= 2    # ε is the median error at iteration 2


def test_score_search_runs_unchanged_on_alit(alit, image_folder):
    """complexity.score(method='search') uses the KARL signatures; on ALIT it must give ALIT's search KC."""
    from karl_cli.scoring.complexity import score
    from karl_cli.io.images import load_for_model

    rows = list(score([image_folder], alit, [0.2], method="search", batch_size=8))
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows)
    x = torch.stack([torch.from_numpy(load_for_model(r["path"], 32)).permute(2, 0, 1) for r in rows]).float() / 255
    assert [r["kc"] for r in rows] == search(alit, x, 0.2).kc.tolist()


def test_save_load_round_trip_identical(alit, tmp_path):
    x = torch.rand(2, 3, 32, 32)
    alit.save_pretrained(str(tmp_path / "w"))
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["arch"] == "alit"
    loaded = ALIT.from_pretrained(str(tmp_path / "w"))
    assert isinstance(loaded, ALIT) and isinstance(load_pretrained(tmp_path / "w"), ALIT)
    for t in (4, 16):
        assert torch.equal(alit.decode(alit.encode(x, 0.05, t)), loaded.decode(loaded.encode(x, 0.05, t)))
    assert torch.equal(search(alit, x, 0.1).recon, search(loaded, x, 0.1).recon)
    with pytest.raises(TypeError):
        KARL.from_pretrained(str(tmp_path / "w"))


def test_loss_stats_and_gradients(alit):
    x = torch.rand(4, 3, 32, 32)
    loss_fn = ALITLoss(alit.train())
    loss, stats = loss_fn(x, 8, torch.zeros(4, dtype=torch.long), 1.0)
    assert set(stats) >= {"rec1", "rec2", "halt", "kept2"}
    assert float(stats["halt"]) == 0.0 and float(stats["kept2"]) == 16.0
    assert float(loss.detach()) == pytest.approx(float(stats["rec1"] + stats["rec2"]), rel=1e-5)
    loss.backward()
    # Every parameter takes part (DDP needs that): all get a gradient.
    missing = [n for n, p in alit.named_parameters() if p.grad is None]
    assert not missing, missing


def test_loss_decreases_over_60_steps(tmp_path):
    from karl_cli.training.data import CropDataset

    torch.manual_seed(0)
    model = ALIT(preset("tiny", arch="alit", resolution=16))   # 2x2 2D tokens: fast
    files = [str(p) for p in make_images(tmp_path / "imgs", 8, size=32)]
    x = torch.stack([CropDataset(files, 16, scale=(1.0, 1.0))[i] for i in range(8)])
    loss_fn = ALITLoss(model.train())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        budget = model.config.budgets[step % 4]
        loss, stats = loss_fn(x, budget, torch.zeros(8, dtype=torch.long), 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(stats["rec2"]))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


def test_train_alit_writes_loadable_weights(tmp_path):
    make_images(tmp_path / "data", 64, size=40)
    out = tmp_path / "run"
    train([str(tmp_path / "data")], out, preset("tiny", arch="alit"),
          TrainConfig(steps=4, batch_size=16, warmup_steps=2, checkpoint_every=2), device="cpu")
    model = load_pretrained(out)
    assert isinstance(model, ALIT) and model.config.arch == "alit"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["halt"] == 0.0 and r["kept2"] == 16.0 and r["rec2"] > 0 for r in rows)
    assert "alit" in (out / "model_card.md").read_text()
    x = torch.rand(2, 3, 32, 32)
    assert model.decode(model.encode(x, 0.05)).shape == x.shape


def test_score_refuses_single_and_prefix_and_counts_iterations(alit, image_folder):
    """ALIT has no halting head: score() refuses single/prefix; its search continues one rollout,
    so encoder runs are iterations (k for kc = k * token_step), not from-scratch re-encodings."""
    from karl_cli.scoring.complexity import score
    from karl_cli.scoring.methods import default_method
    from karl_cli.errors import UsageError
    from karl_cli.io.images import load_for_model

    for method in ("single", "prefix"):
        with pytest.raises(UsageError, match="no halting head; use --method search"):
            score([image_folder], alit, [0.1], method=method)
    assert default_method(alit) == "search" and default_method(KARL(preset("tiny"))) == "single"
    rows = list(score([image_folder], alit, [0.1, 0.3], method="search", batch_size=8))
    step = alit.config.token_step
    for r in rows:
        assert r["encoder_runs"] == r["decoder_runs"] == r["kc"] // step    # T_max when never met: every iteration
    x = torch.stack([torch.from_numpy(load_for_model(r["path"], 32)).permute(2, 0, 1) for r in rows[::2]]).float() / 255
    s = search(alit, x, 0.1)
    assert s.kc.tolist() == [r["kc"] for r in rows[::2]]
    assert s.encoder_runs.tolist() == [r["encoder_runs"] for r in rows[::2]]


def test_cli_complexity_defaults_to_search_for_alit(alit, image_folder, tmp_path):
    from typer.testing import CliRunner

    from karl_cli.cli import app
    from karl_cli.io.rows import read_rows
    from karl_cli.errors import EXIT_USAGE

    alit.save_pretrained(str(tmp_path / "w"))
    out = tmp_path / "o.csv"
    base = ["complexity", str(image_folder), "--weights", str(tmp_path / "w"), "--workers", "0", "--eps", "0.2"]
    res = CliRunner().invoke(app, base + ["--csv", str(out)])
    assert res.exit_code == 0, res.output
    assert "method: search" in res.output
    rows = read_rows(out)
    assert len(rows) == 24 and all(r["encoder_runs"] >= 1 for r in rows)
    res = CliRunner().invoke(app, base + ["--csv", str(out), "--method", "single"])
    assert res.exit_code == EXIT_USAGE and "no halting head" in res.output


def test_cli_train_sets_sizes_beyond_the_preset(tmp_path):
    from typer.testing import CliRunner

    from karl_cli.cli import app

    make_images(tmp_path / "data", 16, size=40)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
                                   "--arch", "alit", "--token-step", "8", "--steps", "2", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (cfg["arch"], cfg["token_step"], cfg["max_tokens"]) == ("alit", 8, 16)
    assert load_pretrained(tmp_path / "run").iterations == 2
    res = CliRunner().invoke(app, ["train", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--resume",
                                   "--token-step", "4"])
    assert res.exit_code == 2 and "--token-step 4 (the run has 8)" in " ".join(res.output.split())

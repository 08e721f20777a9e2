"""``karl compare``: the Table-2 comparison of KARL single pass, KARL search and ALIT search."""
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from karl_cli import KARL, preset
from karl_cli.models.alit import ALIT
from karl_cli.scoring.compare import COLUMNS, SEARCH, SINGLE, compare, psnr, ssim
from karl_cli.scoring.oracle import search as oracle_search


@pytest.fixture
def models():
    torch.manual_seed(0)
    return {"karl": KARL(preset("tiny")).eval(), "alit": ALIT(preset("tiny", arch="alit")).eval()}


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 40, generator=g)
    y = (x + 0.15 * torch.randn(2, 3, 32, 40, generator=g)).clamp(0, 1)
    y[1] = y[1] * 0.5 + 0.2   # a contrast/brightness change, not only noise
    ours = ssim(x, y)
    for i in range(2):
        ref = structural_similarity(x[i].permute(1, 2, 0).double().numpy(), y[i].permute(1, 2, 0).double().numpy(),
                                    data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False)
        assert float(ours[i]) == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError):
        ssim(x[:, :, :8, :8], y[:, :, :8, :8])


def test_psnr():
    x = torch.zeros(1, 3, 8, 8)
    assert float(psnr(x, x + 0.1)) == pytest.approx(20.0, abs=1e-4)


def test_karl_search_matches_score_search(models, image_folder):
    from karl_cli.scoring.complexity import score
    from karl_cli.io.images import load_for_model

    karl = models["karl"]
    rows = list(score([image_folder], karl, [0.25], method="search", batch_size=8))
    x = torch.stack([torch.from_numpy(load_for_model(r["path"], 32)).permute(2, 0, 1) for r in rows]).float() / 255
    assert KARL.single_pass is True
    r = oracle_search(karl, x, 0.25)
    assert r.kc.tolist() == [row["kc"] for row in rows]
    assert r.encoder_runs.tolist() == [row["encoder_runs"] for row in rows]
    assert np.allclose(r.l1.numpy(), [row["l1"] for row in rows], atol=1e-5)
    assert np.allclose(r.l1.numpy(), (r.recon - x).abs().mean(dim=(1, 2, 3)).numpy(), atol=1e-6)
    # Prefix decoding finds the same budgets with one encoder run.
    p = oracle_search(karl, x, 0.25, method="prefix")
    assert p.kc.tolist() == r.kc.tolist() and set(p.encoder_runs.tolist()) == {1}
    assert p.decoder_runs.tolist() == r.decoder_runs.tolist()


def test_compare_table(models, image_folder):
    df = compare([image_folder], models, [0.1, 0.3], batch_size=10)
    assert list(df.columns) == COLUMNS
    # KARL: single pass + search; ALIT: search only (no halting head).
    assert list(zip(df.eps, df.model, df.method)) == [
        (0.1, "karl", SINGLE), (0.1, "karl", SEARCH), (0.1, "alit", SEARCH),
        (0.3, "karl", SINGLE), (0.3, "karl", SEARCH), (0.3, "alit", SEARCH)]
    assert (df.images == 24).all()
    single = df[df.method == SINGLE]
    assert (single.encoder_runs == 1).all() and (single.decoder_runs == 1).all()
    search = df[df.method == SEARCH]
    # At most one run per budget: KARL's 1, 4, 8, 12, 16 (its 1-token budget), ALIT's 4 iterations.
    assert ((search.encoder_runs >= 1) & (search.encoder_runs <= 5)).all()
    assert (search[search.model == "alit"].encoder_runs <= 4).all()
    assert (search.tokens <= 16).all() and (search.tokens >= 1).all()
    assert df.over_target.between(0, 1).all() and df.ssim.between(-1, 1).all() and (df.sec_per_image > 0).all()
    # A search only misses ε when even T_max misses it; a looser ε never needs more tokens.
    for name in ("karl", "alit"):
        s = search[search.model == name].set_index("eps")
        assert s.loc[0.3, "tokens"] <= s.loc[0.1, "tokens"]
        assert s.loc[0.3, "over_target"] <= s.loc[0.1, "over_target"]
    # ALIT's search KC is its own complexity().
    from karl_cli.io.images import load_for_model
    from karl_cli.scoring.measure import collect_inputs
    x = torch.stack([torch.from_numpy(load_for_model(f.path, 32)).permute(2, 0, 1)
                     for f in collect_inputs([image_folder])]).float() / 255
    alit_row = df[(df.model == "alit") & (df.eps == 0.3)].iloc[0]
    assert alit_row.tokens == pytest.approx(float(oracle_search(models["alit"], x, 0.3).kc.float().mean()))


def test_compare_reports_progress(models, image_folder):
    seen = []
    compare([image_folder], models, [0.1, 0.3], batch_size=10, progress=lambda d, t, s: seen.append((d, t, s)))
    total = 24 * 2 * 3       # images x ε x (karl single, karl search, alit search)
    assert {t for _, t, _ in seen} == {total} and seen[-1][0] == total
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert {s for _, _, s in seen} == {f"{m} {meth} ε={e:g}" for e in (0.1, 0.3)
                                       for m, meth in (("karl", SINGLE), ("karl", SEARCH), ("alit", SEARCH))}


def test_cli_compare(models, image_folder, tmp_path):
    from karl_cli.cli import app

    for name, m in models.items():
        m.save_pretrained(str(tmp_path / name))
    (image_folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "table.csv"
    res = CliRunner().invoke(app, ["compare", str(image_folder), "--weights", str(tmp_path / "karl"),
                                   "--weights", str(tmp_path / "alit"), "--eps", "0.2", "--csv", str(out),
                                   "--device", "cpu"])
    assert res.exit_code == 1, res.output    # the broken image is reported, the rest compared
    assert "single" in res.output and "alit" in res.output and "could not be read" in res.output
    df = pd.read_csv(out)
    assert len(df) == 3 and set(df.model) == {"karl", "alit"} and (df.images == 24).all()
    # Off a terminal, progress is a plain line per stage and tenth, ending at every image of every pass.
    assert "comparing karl single ε=0.2: 0/72 (0 %)" in res.output
    assert "comparing alit search ε=0.2: 72/72 (100 %)" in res.output
    res = CliRunner().invoke(app, ["compare", str(image_folder), "--weights", str(tmp_path / "nope")])
    assert res.exit_code != 0

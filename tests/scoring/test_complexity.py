"""karl_cli.scoring.complexity: rows, error rows, the three methods, resume, shards, writers, and `karl complexity`."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from karl_cli.scoring.baselines import jpeg_bpp, png_bpp
from karl_cli.cli import app
from karl_cli.scoring.complexity import BASELINE_FIELDS, score
from karl_cli.io.rows import ROW_FIELDS, RowWriter, merge_csv, read_rows, row_key, summarize, write_csv
from karl_cli.scoring.measure import apply_shard, collect_inputs, parse_shard
from karl_cli.scoring.methods import validate_eps
from karl_cli.errors import EXIT_SOME_FAILED, EXIT_USAGE, UsageError
from karl_cli.io.images import load_for_model
from karl_cli.runtime import resolve_device, to_model_input

from conftest import make_images
from karl_helpers import spread_halting


@pytest.fixture
def model(tiny_model):
    return spread_halting(tiny_model)


@pytest.fixture
def mixed_folder(tmp_path):
    """6 good images, a truncated PNG, an empty file and a text file named .jpg."""
    folder = tmp_path / "mixed"
    make_images(folder, 6)
    good = (folder / "img_000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image\n")
    return folder


def _ok(rows):
    return [r for r in rows if r["status"] == "ok"]


def test_rows_schema_and_values(model, image_folder):
    rows = list(score([image_folder], model, [0.05, 0.2], baselines=True, batch_size=7, check="decoder"))
    assert len(rows) == 24 * 2
    assert [list(r) for r in rows[:1]] == [ROW_FIELDS + BASELINE_FIELDS]
    assert ROW_FIELDS.index("code_l1") == ROW_FIELDS.index("l1") + 1
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None
        assert all(r[k] is not None for k in ROW_FIELDS if k != "error")
        assert 0 <= r["kc"] <= r["max_tokens"] == model.config.max_tokens
        assert 0.0 <= r["l1"] <= 1.0 and 0.0 <= r["code_l1"] <= 1.0 and r["jpeg_bpp"] > 0 and r["png_bpp"] > 0
        assert (r["encoder_runs"], r["decoder_runs"]) == (1, 1)
    assert len({r["kc"] for r in rows}) > 1, "the halting spread should give varied token counts"
    # Rows come in sorted path order, ε order within an image.
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)
    assert [r["eps"] for r in rows[:2]] == [0.05, 0.2]
    # kc, kc_soft and l1 match the model run by hand on one batch.
    paths = sorted({r["path"] for r in rows})
    x = torch.stack([torch.from_numpy(load_for_model(p, 32).transpose(2, 0, 1).copy()) for p in paths])
    x = to_model_input(x, "cpu")
    enc = model.encode(x, 0.2)
    l1 = (model.decode(enc) - x).abs().mean((1, 2, 3))
    got = [r for r in rows if r["eps"] == 0.2]
    assert [r["kc"] for r in got] == enc.kc.tolist()
    assert np.allclose([r["kc_soft"] for r in got], enc.kc_soft.numpy(), atol=1e-3)
    assert np.allclose([r["l1"] for r in got], l1.numpy(), atol=1e-5)
    code_l1 = (model.code_reconstruction(enc) - x).abs().mean((1, 2, 3))
    assert np.allclose([r["code_l1"] for r in got], code_l1.numpy(), atol=1e-5)
    # The default check (the wavelet KARL's tokens are its code): the same KC and code_l1, no decoder.
    auto = list(score([image_folder], model, [0.05, 0.2], baselines=True, batch_size=7))
    assert [(r["kc"], r["code_l1"]) for r in auto] == [(r["kc"], r["code_l1"]) for r in rows]
    assert all(r["l1"] is None and (r["encoder_runs"], r["decoder_runs"]) == (1, 0) for r in auto)


def test_error_rows_for_unreadable_files(model, mixed_folder, tmp_path):
    txt = tmp_path / "readme.txt"
    txt.write_text("hello")
    rows = list(score([mixed_folder, txt], model, [0.05], batch_size=4))
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == 10
    bad = {p: r for p, r in by_path.items() if r["status"] == "error"}
    assert {p.rsplit("/", 1)[-1] for p in bad} == {"truncated.png", "empty.png", "notes.jpg", "readme.txt"}
    assert "empty" in bad[str(mixed_folder / "empty.png")]["error"]
    assert "not an image" in bad[str(txt)]["error"]
    for r in bad.values():
        assert r["kc"] is None and r["l1"] is None and r["code_l1"] is None and r["encoder_runs"] == 0 and r["error"]
    assert len(_ok(rows)) == 6 and all(r["kc"] is not None for r in _ok(rows))


def test_workers_match_in_process_loading(model, mixed_folder):
    a = list(score([mixed_folder], model, [0.05], batch_size=3, workers=0))
    b = list(score([mixed_folder], model, [0.05], batch_size=3, workers=1))
    assert [(r["path"], r["status"], r["kc"]) for r in a] == [(r["path"], r["status"], r["kc"]) for r in b]


def test_method_run_counts(model, image_folder):
    files = sorted(image_folder.iterdir())[:5]
    n_budgets = len(model.config.budgets)
    never, always = 1e-4, 1.0
    single = list(score(files, model, [0.005, 0.38], method="single"))   # the range a single pass honours
    assert {(r["encoder_runs"], r["decoder_runs"]) for r in single} == {(1, 0)}   # checked by the code
    decoded = list(score(files, model, [0.005, 0.38], method="single", check="decoder"))
    assert {(r["encoder_runs"], r["decoder_runs"]) for r in decoded} == {(1, 1)}
    search = list(score(files, model, [never, always], method="search"))
    prefix = list(score(files, model, [never, always], method="prefix"))
    for rows, enc_never in ((search, n_budgets), (prefix, 1)):
        miss = [r for r in rows if r["eps"] == never]
        hit = [r for r in rows if r["eps"] == always]
        assert all((r["encoder_runs"], r["decoder_runs"], r["kc"]) == (enc_never, n_budgets, 16) for r in miss)
        assert all(r["l1"] > never for r in miss)
        assert all((r["encoder_runs"], r["decoder_runs"], r["kc"]) == (1, 1, model.config.budgets[0]) for r in hit)
        assert all(r["kc_soft"] == r["kc"] for r in rows)
    # The encoder is causal in its latents: search and prefix find the same budgets.
    assert [r["kc"] for r in search] == [r["kc"] for r in prefix]


def test_search_stops_per_image(model, image_folder):
    """An ε between the images' errors: each image stops at its own budget."""
    files = sorted(image_folder.iterdir())[:6]
    full = list(score(files, model, [1.0], method="prefix"))
    # l1 at the first budget per image; pick ε so some images meet it at that budget and some do not.
    l1s = sorted(r["l1"] for r in full)
    eps = (l1s[2] + l1s[3]) / 2
    rows = list(score(files, model, [eps], method="search"))
    first_l1 = {r["path"]: r["l1"] for r in full}
    for r in rows:
        assert (r["encoder_runs"] == 1) == (first_l1[r["path"]] <= eps)
        assert r["kc"] == model.config.budgets[r["encoder_runs"] - 1] and r["decoder_runs"] == r["encoder_runs"]
        if r["kc"] < 16:
            assert r["l1"] <= eps
    assert sum(r["encoder_runs"] == 1 for r in rows) == 3


def test_score_streams_batches(model, image_folder):
    seen = []
    rows = score([image_folder], model, [0.05], batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [], "nothing runs before the first row is asked for"
    first = next(rows)
    assert first["status"] == "ok" and seen == [(0, 24)]
    for _ in range(5):   # the rest of the first batch, then the first row of the second
        next(rows)
    assert seen == [(0, 24), (5, 24)], "one batch at a time"
    rest = list(rows)
    assert len(rest) == 18 and seen[-1] == (24, 24)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "x"])
def test_bad_eps_is_a_usage_error(model, image_folder, bad):
    with pytest.raises(UsageError):
        score([image_folder], model, [0.05, bad])
    with pytest.raises(UsageError):
        validate_eps([bad])


@pytest.mark.parametrize("eps", [0.004, 0.39, 0.5])
def test_eps_the_single_pass_cannot_honour_is_refused_not_snapped(model, image_folder, tmp_path, eps):
    with pytest.raises(UsageError, match="0.005 to 0.38"):
        score([image_folder], model, [0.05, eps])
    # The searches test the reconstruction against ε itself: any ε > 0 is theirs.
    rows = list(score([image_folder], model, [eps], method="prefix"))
    assert {r["eps"] for r in rows} == {eps} and all(r["status"] == "ok" for r in rows)


def test_eps_between_bins_is_scored_as_asked(model, image_folder):
    rows = {(r["path"], r["eps"]): r for r in score([image_folder], model, [0.03, 0.035, 0.04])}
    paths = {p for p, _ in rows}
    # The row records the ε asked for, and its KC is its own (not the 0.04 bin's for every image).
    assert {e for _, e in rows} == {0.03, 0.035, 0.04}
    assert any(rows[p, 0.035]["kc_soft"] != rows[p, 0.04]["kc_soft"] for p in paths)


def test_bad_arguments(model, image_folder, tmp_path):
    with pytest.raises(UsageError, match="method"):
        score([image_folder], model, [0.05], method="bisect")
    with pytest.raises(UsageError, match="no such file"):
        score([tmp_path / "missing"], model, [0.05])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        score([tmp_path / "empty"], model, [0.05])
    with pytest.raises(UsageError, match="unknown device"):
        score([image_folder], model, [0.05], device="tpu9")
    for bad in ("2/2", "1", "a/b", "-1/3"):
        with pytest.raises(UsageError):
            parse_shard(bad)


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_shards_partition_the_inputs(model, image_folder):
    found = collect_inputs([image_folder])
    parts = [apply_shard(found, f"{k}/3") for k in range(3)]
    flat = [f.path for p in parts for f in p]
    assert sorted(flat) == [f.path for f in found] and len(flat) == len(set(flat))
    assert [len(p) for p in parts] == [8, 8, 8]
    assert [f.path for f in parts[1]] == [found[i].path for i in range(1, 24, 3)]
    rows = [r for k in range(3) for r in score([image_folder], model, [0.05], shard=(k, 3))]
    whole = list(score([image_folder], model, [0.05]))
    assert sorted((r["path"], r["kc"]) for r in rows) == sorted((r["path"], r["kc"]) for r in whole)


def test_resume_skips_done_rows(model, image_folder, tmp_path):
    out = tmp_path / "out.csv"
    write_csv(score([image_folder], model, [0.05, 0.1], shard="0/2"), out)
    before = out.read_text().splitlines()
    assert len(before) == 1 + 12 * 2
    totals = []
    with RowWriter(out, resume=True) as w:
        assert len(w.existing) == 24 and len(w.done) == 24
        for row in score([image_folder], model, [0.05, 0.1], skip=w.done, progress=lambda d, t: totals.append(t)):
            w.write(row)
    assert totals[-1] == 12, "images with every ε done are not read again"
    after = out.read_text().splitlines()
    assert after[: len(before)] == before, "earlier rows are kept verbatim"
    keys = [row_key(r["path"], r["eps"]) for r in read_rows(out)]
    assert len(keys) == 48 and len(set(keys)) == 48
    # A partly done image (one ε of two) is scored for the missing ε only.
    rows = list(score([image_folder], model, [0.05, 0.1], skip={(k[0], 0.05) for k in keys}))
    assert len(rows) == 24 and {r["eps"] for r in rows} == {0.1}


def test_resume_refuses_other_columns(model, image_folder, tmp_path):
    out = tmp_path / "out.csv"
    write_csv(score([image_folder], model, [0.05], shard="0/4"), out)
    with pytest.raises(UsageError, match="columns"):
        RowWriter(out, ROW_FIELDS + BASELINE_FIELDS, resume=True)


def test_row_writer_is_atomic_and_keeps_rows_on_interrupt(tmp_path):
    out = tmp_path / "rows.csv"
    out.write_text("old\n")
    row = {"path": "a.png", "eps": 0.05, "kc": 3, "status": "ok"}
    with pytest.raises(KeyboardInterrupt):
        with RowWriter(out) as w:
            w.write(row)
            assert out.read_text() == "old\n", "the target changes only at the end"
            raise KeyboardInterrupt
    rows = read_rows(out)
    assert len(rows) == 1 and rows[0]["kc"] == 3 and rows[0]["l1"] is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_json_records(model, image_folder, tmp_path):
    rows = list(score([image_folder], model, [0.05], baselines=True, shard="0/6"))
    n = write_csv(rows, tmp_path / "rows.json")
    data = json.loads((tmp_path / "rows.json").read_text())
    assert n == 4 and data == rows


def _merge_inputs(tmp_path, b_rows):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_csv([{"path": "x", "eps": 0.05, "kc": 1, "status": "error", "error": "boom", "model_id": "m1"},
               {"path": "y", "eps": 0.05, "kc": 2, "status": "ok", "model_id": "m1"},
               {"path": "z", "eps": 0.05, "kc": 4, "status": "ok", "model_id": "m1"}], a, ROW_FIELDS)
    write_csv(b_rows, b, ROW_FIELDS)
    return a, b


def test_merge_identical_quietly_ok_beats_error(tmp_path):
    a, b = _merge_inputs(tmp_path, [{"path": "x", "eps": 0.05, "kc": 5, "status": "ok", "model_id": "m1"},
                                    {"path": "z", "eps": 0.05, "kc": 4, "status": "ok", "model_id": "m1"},
                                    {"path": "a", "eps": 0.1, "kc": 7, "status": "ok", "model_id": "m1"}])
    counts = merge_csv(tmp_path / "m.csv", [a, b])
    rows = read_rows(tmp_path / "m.csv")
    assert counts == {"files": 2, "rows": 4, "duplicates": 1, "errors_replaced": 1, "conflicts": 0}
    assert [(r["path"], r["kc"]) for r in rows] == [("a", 7), ("x", 5), ("y", 2), ("z", 4)]


def test_merge_refuses_disagreeing_rows_unless_a_side_is_picked(tmp_path):
    a, b = _merge_inputs(tmp_path, [{"path": "y", "eps": 0.05, "kc": 9, "status": "ok", "model_id": "m1"}])
    with pytest.raises(UsageError, match=r"1 \(path, ε\) rows disagree.*y at ε 0.05 \(a.csv vs b.csv: kc 2 vs 9\)"):
        merge_csv(tmp_path / "m.csv", [a, b])
    assert not (tmp_path / "m.csv").exists()
    for prefer, kc in (("first", 2), ("last", 9)):
        counts = merge_csv(tmp_path / "m.csv", [a, b], prefer=prefer)
        assert counts["conflicts"] == 1
        assert {r["path"]: r["kc"] for r in read_rows(tmp_path / "m.csv")}["y"] == kc
    with pytest.raises(UsageError, match="prefer"):
        merge_csv(tmp_path / "m.csv", [a, b], prefer="newest")


def test_merge_refuses_rows_of_different_models(tmp_path):
    a, b = _merge_inputs(tmp_path, [{"path": "w", "eps": 0.05, "kc": 9, "status": "ok", "model_id": "m2"}])
    with pytest.raises(UsageError, match="2 models.*m1 in a.csv, m2 in b.csv.*--mixed-models"):
        merge_csv(tmp_path / "m.csv", [a, b])
    assert merge_csv(tmp_path / "m.csv", [a, b], mixed_models=True)["rows"] == 4
    res = _run(["merge", tmp_path / "m2.csv", a, b])
    assert res.exit_code == EXIT_USAGE and "--mixed-models" in res.output
    assert _run(["merge", tmp_path / "m2.csv", a, b, "--mixed-models"]).exit_code == 0


def test_rows_record_model_and_method(model, image_folder):
    from karl_cli.models.pretrained import model_id

    for method in ("single", "prefix"):
        rows = list(score([image_folder], model, [0.05], method=method, shard="0/12"))
        assert rows and all(r["model_id"] == model_id(model) and r["method"] == method for r in rows)


def test_resume_refuses_rows_of_another_model_method_or_check(model, weights_dir, image_folder, tmp_path, monkeypatch):
    """A file started with one model / method / check cannot be continued by another (issue 22.1)."""
    from karl_cli import cli
    monkeypatch.setattr(cli.console, "width", 1000)   # one line, unwrapped
    torch.manual_seed(1)
    from karl_cli import KARL, preset
    other = tmp_path / "other"
    KARL(preset("tiny")).save_pretrained(str(other))
    out = tmp_path / "o.csv"
    base = ["complexity", image_folder, "--csv", out, "--workers", 0]
    assert _run(base + ["--weights", weights_dir, "--shard", "0/3"]).exit_code == 0
    before = out.read_bytes()
    for args, why in ((["--weights", other], "came from model"), (["--weights", weights_dir, "--method", "search"],
                      "came from --method single, this run uses --method search"),
                      (["--weights", weights_dir, "--no-l1"],
                       "scored with the code's l1 check (--check code), this run has no l1 check"),
                      (["--weights", weights_dir, "--check", "decoder"],
                       "scored with the code's l1 check (--check code), this run has the decoder's"),
                      (["--weights", weights_dir, "--baselines"], "columns")):
        res = _run(base + args + ["--resume"])
        assert res.exit_code == EXIT_USAGE and why in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert out.read_bytes() == before, "a refused resume leaves the file as it was"
    res = _run(base + ["--weights", weights_dir, "--resume"])
    assert res.exit_code == 0 and len(read_rows(out)) == 24
    # The library refuses the same way.
    with pytest.raises(UsageError, match="--method"):
        write_csv(score([image_folder], model, [0.05], method="prefix"), out, resume=True)


def test_complexity_without_outputs_prints_the_table(weights_dir, image_folder):
    res = _run(["complexity", image_folder, "--weights", weights_dir, "--workers", 0])
    assert res.exit_code == 0, res.output
    assert "KC per ε" in res.output and "wrote" not in res.output
    res = _run(["complexity", image_folder, "--weights", weights_dir, "--resume"])
    assert res.exit_code == EXIT_USAGE and "--resume needs an output file" in res.output


def test_one_image_prints_its_own_kc_per_eps(weights_dir, image_folder, tmp_path):
    one = image_folder / "img_003.png"
    res = CliRunner().invoke(app, ["complexity", str(one), "--eps", "0.05", "--eps", "0.1", "--weights",
                                   str(weights_dir), "--workers", "0", "--csv", str(tmp_path / "o.csv")],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "o.csv")
    assert "img_003.png" in res.output and "KC mean" not in res.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in res.output.splitlines() if "│" in line]
    assert len(rows) == 2 and len(cells) == 2
    for r in rows:      # each ε's line: ε, the row's own KC, T_max, soft KC, the check's L1 (the code's)
        assert r["l1"] is None
        assert [f"{r['eps']:g}", str(r["kc"]), str(r["max_tokens"]), f"{r['kc_soft']:.2f}", f"{r['code_l1']:.4f}"] in cells
    assert "code's reconstruction of the kept tokens (code_l1)" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["complexity", str(one), "--eps", "0.05", "--weights", str(weights_dir),
                                   "--workers", "0", "--check", "decoder", "--csv", str(tmp_path / "d.csv")],
                             terminal_width=200)
    (r,) = read_rows(tmp_path / "d.csv")
    assert res.exit_code == 0 and r["l1"] is not None and r["code_l1"] is not None, res.output
    assert f"{r['l1']:.4f}" in res.output
    assert "decoder's reconstruction of the kept tokens (l1)" in " ".join(res.output.split())


def test_summary():
    rows = [{"path": "a", "eps": 0.05, "kc": k, "l1": l, "status": "ok"} for k, l in [(2, 0.01), (4, 0.09), (6, 0.02)]]
    rows.append({"path": "b", "eps": 0.05, "status": "error"})
    (s,) = summarize(rows)
    assert (s["ok"], s["error"], s["kc_mean"], s["kc_median"]) == (3, 1, 4.0, 4.0)
    assert s["miss"] == pytest.approx(1 / 3) and s["l1_from"] == "l1"
    # Rows checked by the code alone: their code_l1; a row with both: its (decoder's) l1.
    code_rows = [{"path": "a", "eps": 0.05, "kc": 2, "l1": None, "code_l1": l, "status": "ok"} for l in (0.01, 0.06)]
    (c,) = summarize(code_rows)
    assert c["miss"] == 0.5 and c["l1_mean"] == pytest.approx(0.035) and c["l1_from"] == "code_l1"
    (both,) = summarize([{**code_rows[1], "l1": 0.04}, code_rows[0]])
    assert both["miss"] == 0 and both["l1_from"] == "l1+code_l1"
    (none,) = summarize([{"path": "a", "eps": 0.05, "kc": 2, "status": "ok"}])
    assert none["miss"] is None and none["l1_from"] is None


def test_baselines_order_simple_below_complex():
    flat = np.full((64, 64, 3), 120, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert jpeg_bpp(flat) < jpeg_bpp(noise) and png_bpp(flat) < png_bpp(noise)
    assert png_bpp(noise) > 3.0  # incompressible: ~3 bytes per RGB pixel
    assert jpeg_bpp(noise, quality=95) > jpeg_bpp(noise, quality=30)
    with pytest.raises(TypeError):
        jpeg_bpp(noise.astype(np.float32))


# --- the CLI -------------------------------------------------------------------------------------------
@pytest.fixture
def weights_dir(model, tmp_path):
    d = tmp_path / "weights"
    model.save_pretrained(str(d))
    return d


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_complexity_error_rows_exit_1(weights_dir, mixed_folder, tmp_path):
    out, js, fig = tmp_path / "o.csv", tmp_path / "o.json", tmp_path / "kc.png"
    res = _run(["complexity", mixed_folder, "--eps", 0.05, "--eps", 0.1, "--csv", out, "--json", js, "--baselines",
                "--weights", weights_dir, "--workers", 0, "--batch-size", 4, "--plot", fig])
    assert res.exit_code == EXIT_SOME_FAILED, res.output
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ROW_FIELDS + BASELINE_FIELDS
        rows = list(reader)
    assert len(rows) == 9 * 2
    for r in rows:
        if r["status"] == "ok":     # the default check (the code's) leaves the decoder's l1 empty
            assert all(r[k] != "" for k in reader.fieldnames if k not in ("error", "l1")) and r["l1"] == ""
        else:
            assert r["error"] and r["kc"] == ""
    assert sum(r["status"] == "error" for r in rows) == 6
    assert len(json.loads(js.read_text())) == 18
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "KC per ε" in res.output and "unreadable" in res.output


def test_cli_complexity_ok_resume_and_methods(weights_dir, image_folder, tmp_path):
    out = tmp_path / "o.csv"
    base = ["complexity", image_folder, "--csv", out, "--weights", weights_dir, "--workers", 0]
    assert _run(base + ["--shard", "1/3"]).exit_code == 0
    assert len(read_rows(out)) == 8
    res = _run(base + ["--resume"])
    assert res.exit_code == 0, res.output
    keys = [(r["path"], r["eps"]) for r in read_rows(out)]
    assert len(keys) == 24 == len(set(keys))
    res = _run(["complexity", image_folder, "--csv", tmp_path / "s.csv", "--weights", weights_dir, "--method",
                "prefix", "--eps", 1e-4, "--workers", 0])
    assert res.exit_code == 0
    assert {(r["encoder_runs"], r["decoder_runs"]) for r in read_rows(tmp_path / "s.csv")} == {(1, 5)}


def test_cli_usage_errors(weights_dir, image_folder, tmp_path, monkeypatch):
    out = tmp_path / "o.csv"
    for args in (["--eps", "nan"], ["--eps", "0"], ["--method", "bogus"], ["--shard", "5/2"], ["--device", "nope"]):
        res = _run(["complexity", image_folder, "--csv", out, "--weights", weights_dir] + args)
        assert res.exit_code == EXIT_USAGE, (args, res.output)
    res = _run(["complexity", tmp_path / "nope", "--csv", out, "--weights", weights_dir])
    assert res.exit_code == EXIT_USAGE and "no such file" in res.output
    import karl_cli.models.pretrained as pretrained
    monkeypatch.setattr(pretrained, "shipped_root", lambda: tmp_path / "no-weights")
    res = _run(["complexity", image_folder, "--csv", out])
    assert res.exit_code == EXIT_USAGE and "--weights" in res.output
    assert not out.exists()


def test_cli_merge(weights_dir, image_folder, tmp_path):
    parts = []
    for k in range(2):
        p = tmp_path / f"part{k}.csv"
        assert _run(["complexity", image_folder, "--csv", p, "--weights", weights_dir, "--workers", 0,
                     "--shard", f"{k}/2"]).exit_code == 0
        parts.append(p)
    res = _run(["merge", tmp_path / "all.csv", *parts, parts[0]])
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "all.csv")
    assert len(rows) == 24 and [r["path"] for r in rows] == sorted(r["path"] for r in rows)


def test_merge_never_replaces_an_existing_file_unless_told(tmp_path):
    """`karl merge a.csv b.csv` reads as "join a and b" but writes b's rows over a: an existing OUT is
    refused (the file left byte for byte), and replaced only with --replace."""
    a, b = _merge_inputs(tmp_path, [{"path": "w", "eps": 0.05, "kc": 9, "status": "ok", "model_id": "m1"}])
    before = a.read_bytes()
    res = _run(["merge", a, b])
    assert res.exit_code == EXIT_USAGE and "already exists" in res.output and "--replace" in res.output
    assert a.read_bytes() == before
    out = tmp_path / "all.csv"
    out.write_text("mine\n")
    assert _run(["merge", out, a, b]).exit_code == EXIT_USAGE and out.read_text() == "mine\n"
    assert _run(["merge", out, a, b, "--replace"]).exit_code == 0 and "mine" not in out.read_text()

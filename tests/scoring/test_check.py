"""How KC is checked (``--check``): the code_l1 column in every format, resuming and merging files of
other checks and of karl versions without the column, and the CLI's flags."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from karl_cli import ALIT, preset
from karl_cli.cli import app
from karl_cli.errors import EXIT_USAGE, UsageError
from karl_cli.io.rows import ROW_FIELDS, RowWriter, merge_csv, read_rows, write_csv
from karl_cli.models.pretrained import load
from karl_cli.scoring.complexity import score

from conftest import as_if_trained, make_images

OLD_FIELDS = [f for f in ROW_FIELDS if f != "code_l1"]     # the columns of karl before code_l1


@pytest.fixture
def folder(tmp_path):
    make_images(tmp_path / "imgs", 6)
    return tmp_path / "imgs"


def _run(args):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=1000)


def _write_old(path, rows):
    """Rows as a karl without the code_l1 column wrote them."""
    with RowWriter(path, OLD_FIELDS) as w:
        for r in rows:
            w.write({k: v for k, v in r.items() if k != "code_l1"})


def test_every_format_carries_code_l1(tiny_weights, folder, tmp_path):
    outs = [tmp_path / "o.csv", tmp_path / "o.json", tmp_path / "o.parquet"]
    res = _run(["complexity", folder, "--weights", tiny_weights, "--workers", 0, "--eps", 0.05, "--eps", 0.1,
                "--csv", outs[0], "--json", outs[1], "--parquet", outs[2]])
    assert res.exit_code == 0, res.output
    rows = [read_rows(p) for p in outs]
    assert rows[0] == rows[1] == rows[2] and len(rows[0]) == 12
    assert all(r["l1"] is None and 0 <= r["code_l1"] <= 1 and r["decoder_runs"] == 0 for r in rows[0])
    frame = pd.read_parquet(outs[2])
    assert list(frame.columns) == ROW_FIELDS and frame["code_l1"].dtype == "float64" and frame["l1"].isna().all()
    assert pd.read_csv(outs[0])["code_l1"].notna().all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_file_without_code_l1_resumes_with_its_own_check(tiny_weights, folder, tmp_path, suffix):
    model = load(tiny_weights)
    old = tmp_path / f"old{suffix}"
    _write_old(old, list(score([folder], model, [0.05], check="decoder", shard="0/2")))
    base = ["complexity", folder, "--weights", tiny_weights, "--workers", 0, "--eps", 0.05, "--parquet" if
            suffix == ".parquet" else "--csv", old, "--resume"]
    before = old.read_bytes()
    res = _run(base)             # the default check of a wavelet KARL is the code's: not the file's
    assert res.exit_code == EXIT_USAGE and "scored with the decoder's l1 check" in res.output, res.output
    assert old.read_bytes() == before
    res = _run(base + ["--check", "decoder"])
    assert res.exit_code == 0 and "wrote 3 new rows" in res.output, res.output
    rows = read_rows(old)
    assert len(rows) == 6 and all(r["l1"] is not None for r in rows)
    kept = {r["path"] for r in score([folder], model, [0.05], shard="0/2")}
    assert all((r["code_l1"] is None) == (r["path"] in kept) for r in rows), "old rows: empty; new rows: filled"


def test_an_old_no_l1_file_resumes_with_check_none_only(tiny_weights, folder, tmp_path):
    model = load(tiny_weights)
    old = tmp_path / "old.csv"
    _write_old(old, list(score([folder], model, [0.05], l1=False, shard="0/2")))
    base = ["complexity", folder, "--weights", tiny_weights, "--workers", 0, "--eps", 0.05, "--csv", old, "--resume"]
    res = _run(base)
    assert res.exit_code == EXIT_USAGE and "scored with no l1 check" in res.output, res.output
    assert _run(base + ["--no-l1"]).exit_code == 0
    assert all(r["l1"] is None and r["code_l1"] is None for r in read_rows(old)) and len(read_rows(old)) == 6


def test_the_library_refuses_to_resume_another_check(tiny_weights, folder, tmp_path):
    model = load(tiny_weights)
    out = tmp_path / "o.csv"
    write_csv(score([folder], model, [0.05], shard="0/2"), out)           # the code's check
    with pytest.raises(UsageError, match="code's l1 check .* this run has the decoder's"):
        write_csv(score([folder], model, [0.05], check="decoder"), out, resume=True)
    with pytest.raises(UsageError, match="this run has no l1 check"):
        write_csv(score([folder], model, [0.05], check="none"), out, resume=True)
    assert write_csv(score([folder], model, [0.05]), out, resume=True) == 3


def test_merge_joins_old_and_new_files(tiny_weights, folder, tmp_path):
    model = load(tiny_weights)
    old, new, out = tmp_path / "old.csv", tmp_path / "new.csv", tmp_path / "all.csv"
    _write_old(old, list(score([folder], model, [0.05], check="decoder", shard="0/2")))
    write_csv(score([folder], model, [0.05], check="decoder", shard="1/2"), new)
    counts = merge_csv(out, [old, new])
    rows = read_rows(out)
    assert counts["rows"] == 6 and list(rows[0]) == ROW_FIELDS
    assert sum(r["code_l1"] is None for r in rows) == 3 and all(r["l1"] is not None for r in rows)
    res = _run(["merge", tmp_path / "cli.csv", new, old])
    assert res.exit_code == 0 and read_rows(tmp_path / "cli.csv") == rows, res.output


def test_the_library_guard_reads_the_check_past_leading_error_rows(tiny_weights, folder, tmp_path):
    model = load(tiny_weights)
    (folder / "0_empty.png").write_bytes(b"")                   # sorts first: the first row is an error
    out = tmp_path / "o.csv"
    write_csv(score([folder], model, [0.05], check="decoder", shard="0/2"), out)
    assert read_rows(out)[0]["status"] == "error"
    before = out.read_bytes()
    with pytest.raises(UsageError, match="decoder's l1 check .* this run has the code's"):
        write_csv(score([folder], model, [0.05]), out, resume=True)
    assert out.read_bytes() == before


def test_merge_refuses_rows_of_one_model_checked_two_ways(tiny_weights, folder, tmp_path):
    model = load(tiny_weights)
    dec, code, old = tmp_path / "dec.csv", tmp_path / "code.csv", tmp_path / "old.csv"
    write_csv(score([folder], model, [0.05], check="decoder", shard="0/2"), dec)
    write_csv(score([folder], model, [0.05], shard="1/2"), code)
    _write_old(old, list(score([folder], model, [0.05], check="decoder", shard="0/2")))
    for inputs in ([dec, code], [old, code]):
        with pytest.raises(UsageError, match="2 checks .*decoder's l1 check.*code's l1 check"):
            merge_csv(tmp_path / "m.csv", inputs)
    assert not (tmp_path / "m.csv").exists()
    res = _run(["merge", tmp_path / "m.csv", code, dec])
    assert res.exit_code == EXIT_USAGE and "2 checks" in res.output and not (tmp_path / "m.csv").exists()


def test_cli_check_flags(tiny_weights, folder, tmp_path):
    base = ["complexity", folder, "--weights", tiny_weights, "--workers", 0, "--eps", 0.05]
    for args, rows_want in ((["--check", "decoder"], (True, True, 1)), (["--check", "none"], (False, False, 0)),
                            (["--no-l1"], (False, False, 0)), (["--check", "code"], (False, True, 0)),
                            (["--no-l1", "--check", "none"], (False, False, 0))):
        out = tmp_path / f"{'_'.join(args)}.csv"
        res = _run(base + args + ["--csv", out])
        assert res.exit_code == 0, (args, res.output)
        assert {(r["l1"] is not None, r["code_l1"] is not None, r["decoder_runs"]) for r in read_rows(out)} == {rows_want}
    torch.manual_seed(0)
    alit = tmp_path / "alit"
    as_if_trained(ALIT(preset("tiny", arch="alit"))).save_pretrained(str(alit))
    for args, why in ((["--check", "fast"], "unknown --check 'fast'"),
                      (["--no-l1", "--check", "decoder"], "--no-l1 (l1=False) means --check none"),
                      (["--check", "code", "--method", "search"], "--check code works only with --method single"),
                      (["--no-l1", "--method", "prefix"], "--check none works only with --method single"),
                      (["--check", "code", "--weights", alit], "--check code works only with --method single")):
        res = _run(base + args + ["--csv", tmp_path / "refused.csv"])
        assert res.exit_code == EXIT_USAGE and why in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "refused.csv").exists()
    res = _run(["complexity", "--help"])
    assert "--check" in res.output and "--no-l1" in res.output

"""io/outputs.py: an output never replaces an input, images are not written among the inputs without
--allow-inside-inputs, a weights folder is new, and one process writes an output at a time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from karl_cli.cli import app
from karl_cli.errors import EXIT_OK, EXIT_USAGE, UsageError
from karl_cli.io.outputs import Output, OutputBusy, OutputLock, check_new_weights_folder, check_outputs, lock_file
from karl_cli.io.rows import RowWriter, read_rows
from conftest import make_images


def invoke(*args):
    return CliRunner().invoke(app, [os.fspath(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def inputs(tmp_path):
    """Two PNGs, a JPEG, a file list naming them, a tar shard and a folder of three PNGs."""
    make_images(tmp_path, 2)
    make_images(tmp_path / "d", 3)
    from PIL import Image
    Image.open(tmp_path / "img_000.png").convert("RGB").save(tmp_path / "b.jpg")
    (tmp_path / "list.txt").write_text("img_000.png\nimg_001.png\n", encoding="utf-8")
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(tmp_path / "img_000.png", arcname="000001.png")
    return tmp_path


# --- rule 1: an output is never an input --------------------------------------------------------------
@pytest.mark.parametrize("args, flag_path", [
    (["img_000.png", "b.jpg", "--csv", "img_000.png"], "img_000.png"),
    (["img_000.png", "b.jpg", "--json", "b.jpg"], "b.jpg"),
    (["img_000.png", "--parquet", "./d/../img_000.png"], "img_000.png"),
    (["--files-from", "list.txt", "--csv", "list.txt"], "list.txt"),
    (["--files-from", "list.txt", "--json", "img_001.png"], "img_001.png"),
    (["d", "--csv", "d/img_002.png"], "d/img_002.png"),
    (["shard.tar/000001.png", "--csv", "shard.tar"], "shard.tar"),
    (["shard.tar", "--json", "shard.tar"], "shard.tar"),
    (["img_000.png", "--csv", "out.csv", "--plot", "img_000.png"], "img_000.png"),
])
def test_complexity_refuses_an_output_that_is_an_input(inputs, monkeypatch, args, flag_path):
    monkeypatch.chdir(inputs)
    before = snapshot(inputs)
    res = invoke("complexity", *args, "--no-l1")
    assert res.exit_code == EXIT_USAGE, res.output
    assert "would replace" in res.output and len(res.output.strip().splitlines()) == 1
    assert snapshot(inputs) == before    # nothing written, nothing replaced, no lock file left


def test_two_outputs_are_two_files(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    res = invoke("complexity", "img_000.png", "--csv", "rows.csv", "--json", "./rows.csv", "--no-l1")
    assert res.exit_code == EXIT_USAGE and "--csv and --json name the same file" in res.output
    assert not (inputs / "rows.csv").exists()


def test_a_symlinked_input_is_its_target(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    os.symlink("img_001.png", "link.png")
    before = (inputs / "img_001.png").read_bytes()
    res = invoke("complexity", "link.png", "--csv", "img_001.png", "--no-l1")
    assert res.exit_code == EXIT_USAGE and "link.png" in res.output
    assert (inputs / "img_001.png").read_bytes() == before


@pytest.mark.parametrize("cmd", [
    ["show", "img_000.png", "--out", "img_000.png"],
    ["merge", "a.csv", "a.csv", "b.csv"],
    ["compare", "d", "-w", "karl-small", "--csv", "d/img_000.png"],
    ["analyze", "profile", "img_000.png", "--csv", "img_000.png"],
    ["analyze", "map", "img_000.png", "b.jpg", "--json", "b.jpg"],
])
def test_every_command_that_writes_refuses_an_input_as_output(inputs, monkeypatch, cmd):
    monkeypatch.chdir(inputs)
    for name in ("a.csv", "b.csv"):
        (inputs / name).write_text("path,eps,kc\nx.png,0.05,3\n", encoding="utf-8")
    before = snapshot(inputs)
    res = invoke(*cmd)
    assert res.exit_code == EXIT_USAGE and "would replace" in res.output, res.output
    assert snapshot(inputs) == before


def test_correlate_refuses_to_write_over_its_ratings(inputs, monkeypatch):
    monkeypatch.chdir(inputs)
    (inputs / "ratings.csv").write_text("path,rating\nimg_000.png,1\nimg_001.png,2\nb.jpg,3\n", encoding="utf-8")
    before = snapshot(inputs)
    for flag in ("--out", "--per-image"):
        res = invoke("correlate", "--ratings", "ratings.csv", flag, "ratings.csv")
        assert res.exit_code == EXIT_USAGE and "would replace the input ratings.csv" in res.output, res.output
    assert snapshot(inputs) == before


def test_a_new_output_beside_the_inputs_is_fine(inputs):
    check_outputs([Output("--csv", inputs / "rows.csv"), Output("--json", inputs / "d" / "rows.json")],
                  inputs=[inputs / "d", inputs / "img_000.png"])


# --- rule 2: no images among the inputs without the flag ----------------------------------------------
def test_encode_refuses_recon_into_its_input_folder(inputs, tiny_weights):
    d = inputs / "d"
    before = snapshot(d)
    for flags in (["--recon", d], ["--recon", d / "r"], ["--out", d / "tok"]):
        out = ["--out", inputs / "tok"] if flags[0] == "--recon" else []
        res = invoke("encode", d, *out, *flags, "--weights", tiny_weights)
        assert res.exit_code == EXIT_USAGE, res.output
        assert "--allow-inside-inputs" in res.output or "would replace" in res.output
    assert snapshot(d) == before


def test_encode_inside_inputs_with_the_flag(inputs, tiny_weights):
    d = inputs / "d"
    before = snapshot(d)
    res = invoke("encode", d, "--out", inputs / "tok", "--recon", d / "r", "--weights", tiny_weights,
                 "--allow-inside-inputs")
    assert res.exit_code == EXIT_OK, res.output
    assert sorted(p.name for p in (d / "r").iterdir()) == ["img_000.png", "img_001.png", "img_002.png"]
    assert {k: v for k, v in snapshot(d).items() if not k.startswith("r/")} == before
    # Even with the flag, a reconstruction never replaces its original (inputs named as files).
    res = invoke("encode", d / "img_000.png", d / "img_001.png", "--out", inputs / "tok2", "--recon", d,
                 "--weights", tiny_weights, "--allow-inside-inputs")
    assert res.exit_code == EXIT_USAGE and "would replace the input" in res.output
    assert {k: v for k, v in snapshot(d).items() if not k.startswith("r/")} == before


def test_figures_inside_an_input_folder_need_the_flag(inputs):
    d = inputs / "d"
    for out in (Output("--plot", d / "h.png", "figure"), Output("--plot", d, "folder"),
                Output("--plot", d / "figs", "folder")):
        with pytest.raises(UsageError, match="--allow-inside-inputs"):
            check_outputs([out], inputs=[d])
        check_outputs([out], inputs=[d], allow_inside_inputs=True)
    check_outputs([Output("--csv", d / "rows.csv")], inputs=[d])        # a table there is not an image
    check_outputs([Output("--plot", inputs / "figs", "folder")], inputs=[d])


# --- rule 3: a weights folder is new ---------------------------------------------------------------------
def test_calibrate_refuses_to_replace_the_model_it_reads(tiny_weights, tmp_path):
    import shutil
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)
    before = snapshot(w)
    res = invoke("calibrate", tmp_path, "-w", w, "--out", w, "--samples", "10", "--steps", "1")
    assert res.exit_code == EXIT_USAGE and "is not empty" in res.output, res.output
    assert snapshot(w) == before


def test_weights_folder_rule(tmp_path):
    check_new_weights_folder(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_new_weights_folder(tmp_path / "empty")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="pass --resume"):
        check_new_weights_folder(tmp_path / "run", resume_hint=True)
    with pytest.raises(UsageError, match="choose a new"):
        check_new_weights_folder(tmp_path / "run")
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        check_new_weights_folder(tmp_path / "f")


def test_train_refuses_a_folder_holding_other_weights(tiny_weights, tmp_path):
    import shutil
    from karl_cli.training.trainer import train
    w = tmp_path / "w"
    shutil.copytree(tiny_weights, w)        # e.g. calibrated weights: no checkpoint.pt
    before = snapshot(w)
    with pytest.raises(UsageError, match="not empty"):
        train([str(tmp_path)], w)
    assert snapshot(w) == before


# --- rule 4: one writer per output ----------------------------------------------------------------------
HOLD = """
import sys, time
from karl_cli.io.rows import RowWriter
w = RowWriter(sys.argv[1], ["path", "eps"])
print("holding", flush=True)
time.sleep(120)
"""


def _holder(target: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert p.stdout.readline().strip() == "holding"
    return p


def test_a_second_process_is_refused_naming_the_first(tmp_path, image_folder):
    out = tmp_path / "same.csv"
    holder = _holder(out)
    try:
        res = subprocess.run([sys.executable, "-m", "karl_cli", "complexity", str(image_folder), "--csv", str(out),
                              "--resume", "--shard", "1/2", "--no-l1"], capture_output=True, text=True, timeout=300)
        assert res.returncode == EXIT_USAGE, res.stdout + res.stderr
        assert f"PID {holder.pid}" in res.stdout + res.stderr
        assert not out.exists()         # the holder has not published yet; the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # A killed holder leaves its lock file, which blocks no one: the kernel dropped its flock.
    assert lock_file(out).exists()
    with RowWriter(out, ["path", "eps"]) as w:
        w.write({"path": "a.png", "eps": 0.05})
    assert read_rows(out) == [{"path": "a.png", "eps": 0.05}]
    assert not lock_file(out).exists()


def test_lock_is_reentrant_in_a_process_and_exclusive_across(tmp_path):
    target = tmp_path / "x.csv"
    with OutputLock(target), OutputLock(tmp_path / "." / "x.csv"):
        code = ("import sys\nfrom karl_cli.io.outputs import OutputLock, OutputBusy\ntry:\n OutputLock(sys.argv[1])"
                ".acquire()\nexcept OutputBusy as e:\n print(e); sys.exit(2)\n")
        res = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2])
        assert res.returncode == 2 and f"PID {os.getpid()}" in res.stdout
    assert not lock_file(target).exists()
    with OutputLock(target):     # free again
        pass


def test_two_shard_runs_into_one_file_lose_no_rows_silently(tmp_path, image_folder, tiny_weights):
    """The issue's race: both shard runs with --resume into one CSV. Started together, either one is
    refused (exit 2, naming the other) or they ran one after the other; every reported row is there."""
    out = tmp_path / "same.csv"
    env = dict(os.environ, KARL_CHECKPOINT_SECONDS="0")
    runs = [subprocess.Popen([sys.executable, "-m", "karl_cli", "complexity", str(image_folder), "--csv", str(out),
                              "--resume", "--shard", f"{k}/2", "--weights", str(tiny_weights), "--workers", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for k in (0, 1)]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in runs]
    ok = [r for r in results if r[0] == EXIT_OK]
    refused = [r for r in results if r[0] == EXIT_USAGE]
    assert len(ok) + len(refused) == 2 and ok, results
    for _, text in refused:
        assert "being written by another karl run (PID" in text
    rows = read_rows(out)
    assert len(rows) == 12 * len(ok)      # 24 images, half per shard

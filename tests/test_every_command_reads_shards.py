"""Every command reads its images through the measuring core, so a tar shard, one of its members
(``shard.tar/KEY.EXT``, as rows name them) and a file list work wherever a folder does."""
from __future__ import annotations

import tarfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from karl_cli.cli import app

from conftest import make_images

runner = CliRunner()


@pytest.fixture
def shard(tmp_path):
    """shard.tar holding four PNGs (with a caption each), and the same PNGs as files."""
    imgs = make_images(tmp_path / "files", 4, size=36)
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tf:
        for i, p in enumerate(imgs):
            tf.add(p, arcname=f"{i:06d}.png")
            cap = tmp_path / f"{i}.txt"
            cap.write_text("a caption")
            tf.add(cap, arcname=f"{i:06d}.txt")
    return path


def _ok(result) -> None:
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [
    ["complexity", "{shard}", "--csv", "{tmp}/rows.csv"],
    ["encode", "{shard}", "--out", "{tmp}/tokens"],
    ["compare", "{shard}", "--eps", "0.2"],
    ["show", "{shard}/000002.png", "--out", "{tmp}/show.png", "--eps", "0.2"],
    ["analyze", "profile", "{shard}", "--no-curve", "--eps", "0.1", "--eps", "0.2", "--csv", "{tmp}/rows.csv"],
    ["analyze", "noise", "{shard}", "--sigma", "0.1", "--sp", "0.1", "--eps", "0.2", "--size", "32",
     "--csv", "{tmp}/rows.csv"],
    ["analyze", "structure", "{shard}", "--grid", "2", "--eps", "0.2", "--csv", "{tmp}/rows.csv"],
    ["analyze", "familiarity", "{shard}", "--control", "flip", "--eps", "0.2", "--bootstrap", "0",
     "--csv", "{tmp}/rows.csv"],
    ["analyze", "map", "{shard}", "--patch", "8", "--eps", "0.2", "--csv", "{tmp}/rows.csv"],
], ids=lambda c: " ".join(c[:2]) if c[0] == "analyze" else c[0])
def test_every_command_reads_a_tar_shard_in_place(command, shard, tmp_path, tiny_weights):
    args = [a.format(shard=shard, tmp=tmp_path) for a in command] + ["--weights", str(tiny_weights), "--device", "cpu"]
    result = runner.invoke(app, args)
    _ok(result)
    assert "Not a directory" not in result.output
    rows = tmp_path / "rows.csv"
    if rows.exists():
        paths = set(pd.read_csv(rows)["path" if "path" in pd.read_csv(rows) else "source"])
        assert {f"{shard}/{i:06d}.png" for i in range(4)} <= paths


def test_a_file_list_may_name_tar_members_and_files(shard, tmp_path, tiny_weights):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{shard}/000001.png\n{shard}/000009.png\n{tmp_path}/files/img_003.png\n")
    result = runner.invoke(app, ["complexity", "--files-from", str(lst), "--csv", str(tmp_path / "rows.csv"),
                                 "--weights", str(tiny_weights), "--device", "cpu", "--eps", "0.2"])
    rows = pd.read_csv(tmp_path / "rows.csv").set_index("path")
    assert rows.loc[f"{shard}/000001.png", "status"] == "ok"
    assert rows.loc[f"{tmp_path}/files/img_003.png", "status"] == "ok"
    assert "no such member" in rows.loc[f"{shard}/000009.png", "error"]
    assert result.exit_code != 0        # the missing member is an error row, and the exit code says so


def test_a_member_scores_as_its_file(shard, tmp_path, tiny_weights):
    out = []
    for name, target in (("member", f"{shard}/000002.png"), ("file", f"{tmp_path}/files/img_002.png")):
        _ok(runner.invoke(app, ["complexity", target, "--csv", str(tmp_path / f"{name}.csv"), "--eps", "0.2",
                                "--weights", str(tiny_weights), "--device", "cpu"]))
        out.append(pd.read_csv(tmp_path / f"{name}.csv")[["kc", "kc_soft", "l1"]])
    pd.testing.assert_frame_equal(*out)


def test_correlate_reads_ratings_of_tar_members(shard, tmp_path, tiny_weights):
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame({"path": [f"shard.tar/{i:06d}.png" for i in range(4)], "rating": [10, 40, 20, 30]}).to_csv(
        ratings, index=False)
    result = runner.invoke(app, ["correlate", "--ratings", str(ratings), "--eps", "0.2", "--bootstrap", "0",
                                 "--no-cache", "--weights", str(tiny_weights), "--device", "cpu",
                                 "--per-image", str(tmp_path / "per.csv")])
    _ok(result)
    assert len(pd.read_csv(tmp_path / "per.csv")) == 4


def test_show_refuses_a_shard_of_several_images(shard, tmp_path, tiny_weights):
    result = runner.invoke(app, ["show", str(shard), "--out", str(tmp_path / "f.png"), "--weights", str(tiny_weights),
                                 "--device", "cpu"])
    assert result.exit_code == 2 and "holds 4" in result.output

"""Inputs at scale (karl_cli.io.sources, io.tables): file lists, tar shards read in place, Parquet rows."""
from __future__ import annotations

import io
import os
import tarfile

import pandas as pd
import pytest
from typer.testing import CliRunner

from karl_cli.cli import app
from karl_cli.errors import EXIT_SOME_FAILED, UsageError
from karl_cli.io.images import ImageLoadError, load_for_model
from karl_cli.io.sources import TarMember, gather, load_found, read_files_list, scan_tar
from karl_cli.scoring.complexity import score
from karl_cli.io.rows import RowWriter, merge_csv, read_rows, row_key
from karl_cli.scoring.measure import collect_inputs

from conftest import make_images
from karl_helpers import spread_halting

pytest.importorskip("pyarrow")


@pytest.fixture
def model(tiny_model):
    return spread_halting(tiny_model)


def _add(tf: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "000000.png"
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.fixture
def shard(tmp_path):
    """A WebDataset-style shard: 5 samples (png + txt caption + cls), one truncated png, one text
    member named .jpg, a macOS ._ file and a symlink member named .png."""
    imgs = make_images(tmp_path / "src", 5)
    path = tmp_path / "shard-000.tar"
    with tarfile.open(path, "w") as tf:
        for i, p in enumerate(imgs):
            _add(tf, f"{i:06d}.png", p.read_bytes())
            _add(tf, f"{i:06d}.txt", b"a caption")
            _add(tf, f"{i:06d}.cls", b"3")
        good = imgs[0].read_bytes()
        _add(tf, "000005.png", good[: len(good) // 2])
        _add(tf, "000006.jpg", b"not an image at all")
        _add(tf, "._000000.png", b"\x00\x05\x16\x07 apple double")
        _add(tf, "000007.png", b"", tarfile.SYMTYPE)
    return path, imgs


def test_scan_tar_lists_image_members_and_counts_the_rest(shard):
    path, _ = shard
    scan = scan_tar(path)
    names = [f.path for f in scan]
    assert names == [f"{path}/{i:06d}.{ext}" for i, ext in
                     [(0, "png"), (1, "png"), (2, "png"), (3, "png"), (4, "png"), (5, "png"), (6, "jpg"), (7, "png")]]
    assert (scan.hidden, scan.other) == (1, 10)   # ._ file; 5 captions + 5 labels
    assert all(isinstance(f, TarMember) for f in scan[:7]) and scan[7].error and "link" in scan[7].error


def test_tar_members_decode_like_the_files(shard):
    path, imgs = shard
    scan = scan_tar(path)
    assert (load_found(scan[2], 32) == load_for_model(imgs[2], 32)).all()


def test_damaged_shard_keeps_members_before_the_damage(shard, tmp_path):
    path, _ = shard
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2 + 100])   # ends inside a member
    scan = scan_tar(cut)
    assert scan[-1].path == str(cut) and "tar shard" in scan[-1].error
    assert 0 < len(scan) - 1 < 8


def test_score_tar_rows_and_error_rows(model, shard):
    path, _ = shard
    rows = list(score([path], model, [0.05, 0.1], batch_size=3))
    by = {(r["path"], r["eps"]): r for r in rows}
    assert len(rows) == 8 * 2
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["path"] for r in ok} == {f"{path}/{i:06d}.png" for i in range(5)}
    assert "truncated" in by[(f"{path}/000005.png", 0.05)]["error"]
    assert by[(f"{path}/000006.jpg", 0.05)]["error"].startswith("not an image")
    # The same images as files give the same KC: members are read, not approximated.
    files = {os.path.basename(r["path"]): r["kc"] for r in score([shard[1][0].parent], model, [0.05], batch_size=3)}
    assert [by[(f"{path}/{i:06d}.png", 0.05)]["kc"] for i in range(5)] == [files[f"img_{i:03d}.png"] for i in range(5)]


def test_files_list_relative_to_its_folder_missing_entry_is_an_error_row(model, tmp_path, monkeypatch):
    imgs = make_images(tmp_path / "data" / "imgs", 3)
    lst = tmp_path / "data" / "list.txt"
    lst.write_bytes(b"imgs/img_000.png\r\n\nimgs/img_002.png\n" + str(imgs[1]).encode() + b"\nimgs/gone.png\n")
    monkeypatch.chdir(tmp_path)
    assert read_files_list(lst)[0] == os.path.join(str(lst.parent), "imgs/img_000.png")
    found = collect_inputs([], files_from=lst)
    assert len(found) == 4
    rows = list(score(found, model, [0.05]))
    errors = {r["path"]: r["error"] for r in rows if r["status"] == "error"}
    assert list(errors) == [os.path.join(str(lst.parent), "imgs/gone.png")]
    assert "no such file" in next(iter(errors.values()))
    # From stdin, relative paths are relative to the current folder.
    assert [f.path for f in gather(files_from="-", stdin=io.BytesIO(b"data/imgs/img_001.png\n"))] == \
           ["data/imgs/img_001.png"]


def test_folder_scan_expands_shards_and_empty_list_refused(shard, tmp_path):
    path, _ = shard
    found = collect_inputs([path.parent])
    assert any(isinstance(f, TarMember) for f in found)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(UsageError):
        collect_inputs([], files_from=empty)


def test_parquet_rows_equal_csv_rows_in_pandas(model, shard, tmp_path):
    path, _ = shard
    rows = list(score([path, shard[1][0].parent], model, [0.05, 0.1], baselines=True, batch_size=4))
    fields = list(rows[0])
    for out in ("rows.csv", "rows.parquet"):
        with RowWriter(tmp_path / out, fields) as w:
            for r in rows:
                w.write(r)
    a = pd.read_csv(tmp_path / "rows.csv")
    b = pd.read_parquet(tmp_path / "rows.parquet")
    assert list(b.columns) == fields and len(b) == len(rows) == 26
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert read_rows(tmp_path / "rows.parquet") == read_rows(tmp_path / "rows.csv")


def test_parquet_streams_in_row_groups_and_checkpoints(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    import karl_cli.io.tables as tables

    monkeypatch.setattr(tables, "ROW_GROUP_ROWS", 5)
    out = tmp_path / "t.parquet"
    with RowWriter(out, ["path", "eps", "kc"], checkpoint_s=0) as w:
        for i in range(12):
            w.write({"path": f"p{i:02d}", "eps": 0.05, "kc": i})
            assert len(pd.read_parquet(out)) == i + 1   # every checkpoint is a complete file
    assert pq.ParquetFile(out).num_row_groups >= 3
    assert list(pd.read_parquet(out)["kc"]) == list(range(12))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_tar_list_parquet_shard_resume_merge(tiny_weights, shard, tmp_path):
    path, imgs = shard
    lst = tmp_path / "list.txt"
    lst.write_text(f"{imgs[0]}\n{imgs[1]}\n{tmp_path / 'missing.png'}\n")
    runner = CliRunner()
    base = ["complexity", str(path), "--files-from", str(lst), "--weights", str(tiny_weights), "--eps", "0.05",
            "--workers", "0"]
    outs = []
    for k in range(2):
        pq_out = tmp_path / f"s{k}.parquet"
        r = runner.invoke(app, base + ["--shard", f"{k}/2", "--parquet", str(pq_out), "--csv", str(tmp_path / f"s{k}.csv")])
        assert r.exit_code == EXIT_SOME_FAILED, r.output
        assert read_rows(pq_out) == read_rows(tmp_path / f"s{k}.csv")
        outs.append(pq_out)
    # Resume from the parquet output: drop half of its rows and score again; only those come back.
    full = read_rows(outs[0])
    with RowWriter(outs[0], list(full[0])) as w:
        for row in full[: len(full) // 2]:
            w.write(row)
    r = runner.invoke(app, base + ["--shard", "0/2", "--parquet", str(outs[0]), "--resume"])
    assert f"{len(full) // 2} rows already" in r.output, r.output
    assert read_rows(outs[0]) == full
    # Merge a parquet and a CSV shard into parquet: every input once, 11 inputs (8 members, 3 listed).
    counts = merge_csv(tmp_path / "all.parquet", [outs[0], tmp_path / "s1.csv"])
    merged = read_rows(tmp_path / "all.parquet")
    assert counts["rows"] == len(merged) == 11 and counts["duplicates"] == 0
    assert [row_key(m["path"], m["eps"]) for m in merged] == sorted(row_key(m["path"], m["eps"]) for m in merged)
    r = runner.invoke(app, ["merge", str(tmp_path / "all.csv"), str(outs[0]), str(outs[1])])
    assert r.exit_code == 0 and read_rows(tmp_path / "all.csv") == merged


# --- issue 28: member names as tar -x writes them, repeated names, bounded reads ------------------
def test_shard_made_with_tar_dot_is_read_with_normalised_names(tmp_path):
    """Issue 28.6: `tar -C src -cf shard.tar .` stores ./000001.jpg (and the folder ./): '.' and
    '..' parts are not hidden; rows read shard.tar/000001.jpg."""
    imgs = make_images(tmp_path / "src", 2)
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tf:
        tf.add(tmp_path / "src", arcname=".")                       # ./, ./img_000.png, ./img_001.png
        _add(tf, "./sub/../img_002.png", imgs[0].read_bytes())      # -> img_002.png
        _add(tf, "../img_003.png", imgs[1].read_bytes())            # leading ../ dropped, as tar -x does
        _add(tf, "./.hidden/img_004.png", imgs[1].read_bytes())     # still hidden
    scan = scan_tar(path)
    assert [f.path for f in scan] == [f"{path}/img_00{i}.png" for i in (0, 1, 2, 3)]
    assert all(isinstance(f, TarMember) for f in scan) and scan.hidden == 1
    assert (load_found(scan[0], 32) == load_for_model(imgs[0], 32)).all()


def test_repeated_member_name_keeps_the_last_copy_like_tar_x(tmp_path):
    """Issue 28.7: two members of one name (also ./a.png and a.png) are one input, the last one, as
    `tar -x` leaves it; the earlier copy is counted as replaced, never called a link."""
    imgs = make_images(tmp_path / "src", 3)
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tf:
        _add(tf, "a.png", imgs[0].read_bytes())
        _add(tf, "b.png", imgs[2].read_bytes())
        _add(tf, "./a.png", imgs[1].read_bytes())
    scan = scan_tar(path)
    assert [f.path for f in scan] == [f"{path}/b.png", f"{path}/a.png"] and scan.replaced == 1
    assert (load_found(scan[1], 32) == load_for_model(imgs[1], 32)).all()
    found = collect_inputs([path])
    assert len(found) == 2 and found.replaced == 1 and found.aliases == 0
    assert "1 tar member replaced by a later member of the same name" in found.summary()
    assert "link" not in found.summary()


def test_paths_listed_twice_are_repeats_not_links(tmp_path):
    """Issue 28.17: a file list naming a path twice (or a/./x.png and a/x.png) says so; a symbolic
    link to a listed file is still a link."""
    imgs = make_images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "ln.png").symlink_to(imgs[0])
    lst = tmp_path / "list.txt"
    lst.write_text("imgs/img_000.png\nimgs/./img_000.png\nimgs/img_001.png\nimgs/img_001.png\nimgs/ln.png\n"
                   "gone.png\ngone.png\n")
    found = collect_inputs([], files_from=lst)
    assert len(found) == 3 and found.repeated == 3 and found.aliases == 1
    assert "3 paths named more than once (each scored once)" in found.summary()
    assert "1 link to an image or folder already listed" in found.summary()


def test_huge_member_header_checked_before_its_data_is_read(tmp_path):
    """Issue 28.11: a 256 MiB member (sparse on disk) whose PNG header declares too many pixels is
    refused after a bounded read; a valid image followed by a long tail reads only what it needs."""
    import tracemalloc
    import zlib

    def png_header(w: int, h: int) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0]))
                + (200 << 20).to_bytes(4, "big") + b"IDAT")   # the pixel data follows (zeros here)

    small = io.BytesIO()
    from PIL import Image
    Image.new("RGB", (8, 8), (200, 30, 10)).save(small, "PNG")
    big = 256 << 20
    path = tmp_path / "big.tar"
    with open(path, "wb") as f:
        for name, head in (("bomb.png", png_header(10_000, 10_000)), ("tail.png", small.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = big
            f.write(info.tobuf(format=tarfile.GNU_FORMAT))
            f.write(head)
            f.seek(big - len(head), os.SEEK_CUR)   # a hole: no disk used, zeros read back
        f.write(b"\0" * 1024)
    f_size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(f_size + (-f_size) % 10240)
    scan = scan_tar(path)
    assert [os.path.basename(m.path) for m in scan] == ["bomb.png", "tail.png"] and all(m.size == big for m in scan)
    tracemalloc.start()
    try:
        with pytest.raises(ImageLoadError, match="too large"):
            load_found(scan[0], 32)
        arr = load_found(scan[1], 8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tuple(arr[0, 0]) == (200, 30, 10)
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB for two 256 MiB members"

"""A Parquet file list (``--files-from LIST.parquet``, column ``path``) reads like a text list (issue 29)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from karl_cli.errors import UsageError
from karl_cli.io.sources import gather, read_files_list

from conftest import make_images


def test_a_parquet_list_names_its_paths_relative_to_its_folder(tmp_path):
    imgs = make_images(tmp_path / "imgs", 3)
    pq.write_table(pa.table({"path": ["imgs/img_000.png", None, "", str(imgs[2]), "imgs/gone.png"],
                             "label": [1, 2, 3, 4, 5]}), tmp_path / "list.parquet")
    listed = read_files_list(tmp_path / "list.parquet")
    assert listed == [str(tmp_path / "imgs/img_000.png"), str(imgs[2]), str(tmp_path / "imgs/gone.png")]
    scan = gather(files_from=tmp_path / "list.parquet")
    assert [(f.path, f.error is None) for f in scan] == [(str(tmp_path / "imgs/gone.png"), False),
                                                         (str(imgs[0]), True), (str(imgs[2]), True)]


def test_a_parquet_list_without_a_text_path_column_is_refused_in_one_line(tmp_path):
    pq.write_table(pa.table({"file": ["a.png"]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"path": [1, 2]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_text("not parquet")
    for name, words in (("a", "needs a text column 'path' (it has: file)"), ("b", "needs a text column 'path'"),
                        ("c", "is not a readable Parquet file list")):
        with pytest.raises(UsageError, match=words.replace("(", r"\(").replace(")", r"\)")):
            read_files_list(tmp_path / f"{name}.parquet")
    with pytest.raises(FileNotFoundError):
        read_files_list(tmp_path / "none.parquet")

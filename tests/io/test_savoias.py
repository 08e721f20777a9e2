"""Savoias layout and ratings-CSV parsing: ratings matched by index, never shifted; gaps reported."""
import pandas as pd
import pytest
from PIL import Image

from karl_cli.errors import UsageError
from karl_cli.io.savoias import load_ratings, read_ratings_xlsx
from savoias_fixture import LAYOUT, make_savoias, write_xlsx


@pytest.fixture
def savoias(tmp_path):
    return make_savoias(tmp_path / "savoias")


def test_ratings_matched_by_index_never_shifted(savoias):
    rs = load_ratings(savoias)
    t = rs.table
    assert list(t.columns) == ["path", "rating", "category", "index"]
    assert rs.categories == ["Scenes", "Interior Design", "Art"]  # Savoias order, name with a space
    for key, (folder, ratings, present) in LAYOUT.items():
        sub = t[t.category == folder].sort_values("index")
        assert sub["index"].tolist() == present
        assert sub["rating"].tolist() == [ratings[i] for i in present]  # row i -> image i, even after a gap
        for p, i in zip(sub["path"], sub["index"]):
            assert p.replace("\\", "/").split("/")[-2:-1] == [folder] and p.rsplit("/", 1)[-1].split(".")[0] == str(i)
    miss = rs.missing.sort_values("category")
    assert list(zip(miss.category, miss["index"], miss.rating)) == [("Interior Design", 2, 45.0), ("Scenes", 2, 35.0)]
    assert [p.rsplit("/", 1)[-1] for p in rs.unrated] == ["99.jpg"]
    s = rs.summary()
    assert "18 rated images" in s and "2 ratings without an image" in s and "1 image files without a rating" in s


def test_xlsx_header_and_empty_cells_keep_positions(tmp_path):
    p = tmp_path / "g.xlsx"
    write_xlsx(p, [10, None, 30.5, "42"])
    assert read_ratings_xlsx(p) == [10.0, None, 30.5, 42.0]
    write_xlsx(p, [10, "lots"])
    with pytest.raises(UsageError, match="row 3"):
        read_ratings_xlsx(p)


def test_empty_rating_cell_does_not_shift_later_rows(savoias):
    ratings = list(LAYOUT["art"][1])
    ratings[1] = None
    write_xlsx(savoias / "Ground truth" / "xlsx" / "global_ranking_art.xlsx", ratings)
    t = load_ratings(savoias).table
    art = t[t.category == "Art"].set_index("index")["rating"]
    assert 1 not in art.index and art[2] == 85 and art[5] == 75


def test_root_without_layout_is_a_usage_error(tmp_path):
    (tmp_path / "pics").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "pics" / "a.png")
    with pytest.raises(UsageError, match="Savoias layout"):
        load_ratings(tmp_path / "pics")
    with pytest.raises(UsageError, match="no such folder"):
        load_ratings(tmp_path / "nope")
    with pytest.raises(UsageError):
        load_ratings()


def test_ratings_csv_relative_paths_and_missing(tmp_path):
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    for n in ("a", "b"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(d / "img" / f"{n}.png")
    other = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(other)
    csv = d / "ratings.csv"
    pd.DataFrame({"path": ["img/a.png", "img/b.png", "img/gone.png", str(other)],
                  "rating": [1.5, 2, 3, 4], "category": ["x", "y", "x", "y"]}).to_csv(csv, index=False)
    rs = load_ratings(ratings=csv)
    assert rs.table["path"].tolist() == [str(d / "img" / "a.png"), str(d / "img" / "b.png"), str(other)]
    assert rs.table["rating"].tolist() == [1.5, 2.0, 4.0]
    assert rs.categories == ["x", "y"]
    assert rs.missing["path"].tolist() == [str(d / "img" / "gone.png")] and rs.missing["index"].tolist() == [2]
    # A CSV without a category column is fine: one pooled group.
    pd.DataFrame({"Path": ["img/a.png", "img/b.png"], "Rating": [1, 2]}).to_csv(csv, index=False)
    assert load_ratings(ratings=csv).categories == []


@pytest.mark.parametrize("frame, match", [
    ({"file": ["a.png"], "rating": [1]}, "lacks the column"),
    ({"path": ["a.png"], "score": [1]}, "rating"),
    ({"path": ["a.png"], "rating": ["high"]}, "not a number"),
    ({"path": ["a.png", "./a.png"], "rating": [1, 2]}, "listed twice"),
])
def test_bad_ratings_csv_is_a_usage_error(tmp_path, frame, match):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    csv = tmp_path / "r.csv"
    pd.DataFrame(frame).to_csv(csv, index=False)
    with pytest.raises(UsageError, match=match):
        load_ratings(ratings=csv)


def test_ratings_come_from_the_sheet_headed_gt(tmp_path):
    """Issue 28.8: a workbook whose first sheet is a user's own kc column: the ratings are the 'gt'
    column of whichever sheet has it; none or several qualify -> refused naming the sheets."""
    import openpyxl

    def book(sheets: dict):
        wb = openpyxl.Workbook()
        wb.remove(wb.active)
        for title, rows in sheets.items():
            ws = wb.create_sheet(title)
            for r in rows:
                ws.append(r)
        p = tmp_path / f"b{len(list(tmp_path.iterdir()))}.xlsx"
        wb.save(p)
        return p

    mine = book({"kc": [["kc"], [301], [12]], "ratings": [["image", " GT "], ["0.jpg", 40], ["1.jpg", None], ["2.jpg", 7]]})
    assert read_ratings_xlsx(mine) == [40.0, None, 7.0]
    with pytest.raises(UsageError, match=r"no sheet has a column headed 'gt'.*sheets: 'kc', 'other'"):
        read_ratings_xlsx(book({"kc": [["kc"], [301]], "other": [[5], [6]]}))
    with pytest.raises(UsageError, match=r"several columns headed 'gt' \('a' column A, 'b' column B\)"):
        read_ratings_xlsx(book({"a": [["gt"], [1]], "b": [["x", "gt"], [0, 2]]}))
    with pytest.raises(UsageError, match="sheet 'a' row 3"):
        read_ratings_xlsx(book({"a": [["gt"], [1], ["lots"]]}))


def test_names_match_under_unicode_normalisation(tmp_path):
    """Issue 28.9: a ratings CSV (or file list) naming café.png in NFC finds the file stored in NFD
    (macOS), and the reverse; the row names the file as stored."""
    import unicodedata

    from karl_cli.io.sources import gather
    from PIL import Image

    nfc, nfd = (unicodedata.normalize(f, "café") for f in ("NFC", "NFD"))
    assert nfc != nfd
    (tmp_path / nfd).mkdir()
    stored = [tmp_path / nfd / f"{nfd}.png", tmp_path / nfd / "plain.png", tmp_path / f"{nfc}-2.png"]
    for p in stored:
        Image.new("RGB", (4, 4)).save(p)
    csv = tmp_path / "r.csv"
    csv.write_text(f"path,rating\n{nfc}/{nfc}.png,3\n{nfc}/plain.png,4\n{nfd}-2.png,5\n", encoding="utf-8")
    rs = load_ratings(ratings=csv)
    assert rs.table["path"].tolist() == [str(p) for p in stored] and len(rs.missing) == 0
    assert any("Unicode normalisation" in n for n in rs.notes)
    lst = tmp_path / "list.txt"
    lst.write_text(f"{nfc}/{nfc}.png\n{nfd}-2.png\n", encoding="utf-8")
    assert [f.path for f in gather(files_from=lst)] == sorted([str(stored[0]), str(stored[2])])

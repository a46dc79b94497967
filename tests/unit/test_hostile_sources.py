"""Hostile but real-world inputs: symlinked image folders, BOMs and Latin-1, shouted suffixes, pasted rows,
partial SugarCrepe downloads and files where nothing survives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_images

from compalign.extract.sources import SourceError, content_key, plan_source, text_key
from compalign.extract.sources.sugarcrepe import SUBSETS


def _sc_row(filename: str, i: int = 0) -> dict[str, str]:
    return {"filename": filename, "caption": f"a caption {i}", "negative_caption": f"a negative {i}"}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# 1. symlinks ---------------------------------------------------------------------------------------------

def test_sugarcrepe_image_folder_symlinked_outside_the_root_is_read(tmp_path):
    coco = tmp_path / "data" / "coco" / "val2017"
    make_images(coco, ["a.jpg", "b.jpg"])
    root = tmp_path / "sc"
    root.mkdir()
    (root / "val2017").symlink_to(coco, target_is_directory=True)
    (root / "swap_att.json").write_text(json.dumps({"0": _sc_row("a.jpg", 0), "1": _sc_row("b.jpg", 1)}))
    plan = plan_source("sugarcrepe", root)
    assert [i.error for i in plan.images] == [None, None]
    assert [Path(i.path) for i in plan.images] == [coco / "a.jpg", coco / "b.jpg"]
    assert plan.images[0].key == content_key((coco / "a.jpg").read_bytes())
    assert plan.problems == []


def test_pairs_subfolder_symlinked_outside_the_root_is_read(tmp_path):
    make_images(tmp_path / "elsewhere", ["a.png"])
    root = tmp_path / "root"
    root.mkdir()
    (root / "img").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _jsonl(root / "pairs.jsonl", [{"image": "img/a.png", "caption": "a picture"}])
    plan = plan_source("pairs", root)
    assert plan.images[0].error is None and Path(plan.images[0].path) == tmp_path / "elsewhere" / "a.png"


def test_root_itself_a_symlink_is_read(tmp_path):
    make_images(tmp_path / "real" / "img", ["a.png"])
    _jsonl(tmp_path / "real" / "pairs.jsonl", [{"image": "img/a.png", "caption": "a picture"}])
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    plan = plan_source("pairs", tmp_path / "link")
    assert plan.images[0].error is None


def test_dotdot_and_absolute_paths_still_escape_even_through_a_symlinked_folder(tmp_path):
    make_images(tmp_path / "coco" / "val2017", ["a.jpg"])
    make_images(tmp_path / "coco", ["secret.jpg"], seed=1)
    root = tmp_path / "sc"
    root.mkdir()
    (root / "val2017").symlink_to(tmp_path / "coco" / "val2017", target_is_directory=True)
    absolute = str(tmp_path / "coco" / "val2017" / "a.jpg")
    (root / "swap_obj.json").write_text(json.dumps({
        "0": _sc_row("a.jpg", 0), "1": _sc_row("../../secret.jpg", 1), "2": _sc_row(absolute, 2)}))
    plan = plan_source("sugarcrepe", root)
    errors = {i.origin: i.error for i in plan.images}
    assert errors["a.jpg"] is None
    assert "escapes the data root" in errors["../../secret.jpg"]
    assert "escapes the data root" in errors[absolute]


def test_a_symlinked_file_pointing_outside_the_dataset_is_refused_and_both_paths_named(tmp_path):
    make_images(tmp_path, ["outside.png"])
    root = tmp_path / "root"
    make_images(root / "img", ["a.png", "b.png"], seed=1)
    (root / "img" / "leak.png").symlink_to(tmp_path / "outside.png")
    (root / "img" / "alias.png").symlink_to(root / "img" / "a.png")  # inside the root: fine
    _jsonl(root / "pairs.jsonl", [{"image": f"img/{n}", "caption": n} for n in ("a.png", "leak.png", "alias.png")])
    plan = plan_source("pairs", root)
    errors = {i.origin: i.error for i in plan.images}
    assert set(errors) == {"img/a.png", "img/leak.png"}  # alias.png has a.png's bytes: one image
    assert errors["img/a.png"] is None
    msg = errors["img/leak.png"]
    assert "symlink pointing outside the data root" in msg
    assert str(root / "img" / "leak.png") in msg and str(tmp_path / "outside.png") in msg


def test_a_symlinked_file_inside_a_linked_folder_may_point_within_that_folder_only(tmp_path):
    coco = tmp_path / "coco"
    make_images(coco / "val2017", ["a.jpg"])
    make_images(coco / "train2017", ["t.jpg"], seed=1)
    (coco / "val2017" / "same.jpg").symlink_to(coco / "val2017" / "a.jpg")
    (coco / "val2017" / "other.jpg").symlink_to(coco / "train2017" / "t.jpg")
    root = tmp_path / "sc"
    root.mkdir()
    (root / "val2017").symlink_to(coco / "val2017", target_is_directory=True)
    (root / "add_att.json").write_text(json.dumps({str(i): _sc_row(n, i) for i, n in enumerate(("same.jpg", "other.jpg"))}))
    plan = plan_source("sugarcrepe", root)
    errors = {i.origin: i.error for i in plan.images}
    assert errors["same.jpg"] is None
    assert "symlink pointing outside the data root" in errors["other.jpg"]


# 2. encodings --------------------------------------------------------------------------------------------

def test_utf8_bom_keeps_the_first_jsonl_row_and_the_csv_header(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png"])
    rows = [{"image": "img/a.png", "caption": "first"}, {"image": "img/b.png", "caption": "second"}]
    (tmp_path / "pairs.jsonl").write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
    plan = plan_source("pairs", tmp_path / "pairs.jsonl")
    assert plan.texts == ["first", "second"] and plan.problems == []
    (tmp_path / "pairs.csv").write_bytes(b"\xef\xbb\xbfimage,caption\r\nimg/a.png,caf\xc3\xa9\r\n")
    plan = plan_source("pairs", tmp_path / "pairs.csv")
    assert plan.texts == ["café"] and plan.items["id"] == ["2"]


def test_utf8_bom_sugarcrepe_json_is_read(tmp_path):
    make_images(tmp_path / "val2017", ["a.jpg"])
    (tmp_path / "swap_att.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"0": _sc_row("a.jpg")}).encode())
    assert plan_source("sugarcrepe", tmp_path).items["id"] == ["swap_att/0"]


@pytest.mark.parametrize(("name", "body", "line"), [
    ("pairs.jsonl", '{"image": "img/a.png", "caption": "ok"}\n{"image": "img/a.png", "caption": "caf\xe9"}\n', 2),
    ("pairs.csv", "image,caption\r\nimg/a.png,ok\r\nimg/a.png,caf\xe9\r\n", 3),
])
def test_latin1_pairs_file_names_file_line_and_fix(tmp_path, name, body, line):
    make_images(tmp_path / "img", ["a.png"])
    (tmp_path / name).write_bytes(body.encode("latin-1"))
    with pytest.raises(SourceError) as e:
        plan_source("pairs", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / name}: not UTF-8 text (byte 0xe9 on line {line})")
    assert "Save it as UTF-8" in msg and "iconv -f latin1 -t utf-8" in msg


def test_latin1_sugarcrepe_json_names_file_line_and_fix(tmp_path):
    text = json.dumps({"0": _sc_row("a.jpg"), "1": {**_sc_row("a.jpg"), "caption": "caf\xe9"}}, ensure_ascii=False, indent=1)
    (tmp_path / "swap_att.json").write_bytes(text.encode("latin-1"))
    line = text.encode("latin-1")[: text.index("\xe9")].count(b"\n") + 1
    with pytest.raises(SourceError, match=rf"swap_att.json: not UTF-8 .*line {line}\b.*iconv -f latin1 -t utf-8"):
        plan_source("sugarcrepe", tmp_path)


def test_bom_then_latin1_counts_lines_from_the_file_start(tmp_path):
    (tmp_path / "pairs.jsonl").write_bytes(b"\xef\xbb\xbf\n\n\n{\"caption\": \"caf\xe9\"}\n")
    with pytest.raises(SourceError, match=r"line 4\b"):
        plan_source("pairs", tmp_path)


# 3. suffix case ------------------------------------------------------------------------------------------

def test_upper_case_suffix_as_root_file_is_parsed_by_its_format(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png"])
    (tmp_path / "PAIRS.CSV").write_text("image,caption\nimg/a.png,one\nimg/b.png,two\n")
    plan = plan_source("pairs", tmp_path / "PAIRS.CSV")
    assert plan.texts == ["one", "two"] and plan.problems == []


def test_mixed_case_names_are_found_in_a_root_folder(tmp_path):
    make_images(tmp_path / "img", ["a.png"])
    _jsonl(tmp_path / "Pairs.JSONL", [{"image": "img/a.png", "caption": "mixed case"}])
    plan = plan_source("pairs", tmp_path)
    assert plan.texts == ["mixed case"] and plan.items["id"] == ["1"]
    (tmp_path / "Pairs.JSONL").unlink()
    (tmp_path / "CAPTIONS.CSV").write_text("image,caption\nimg/a.png,shouted\n")
    assert plan_source("pairs", tmp_path).texts == ["shouted"]


def test_root_file_with_an_unknown_suffix_names_the_suffixes_read(tmp_path):
    (tmp_path / "pairs.tsv").write_text("image\tcaption\n")
    with pytest.raises(SourceError, match=r"pairs.tsv: pairs are read from \.jsonl / \.json / \.csv"):
        plan_source("pairs", tmp_path / "pairs.tsv")


# 4. duplicates -------------------------------------------------------------------------------------------

def test_pairs_duplicate_rows_and_ids_are_skipped_and_named(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png"])
    a = {"image": "img/a.png", "caption": "a red circle", "negatives": {"swap_att": "a circle red"}}
    rows = [a, {"image": "img/b.png", "caption": "b", "id": "x"}, dict(a),
            {"image": "img/a.png", "caption": "other", "id": "x"},
            {**a, "negatives": {"swap_att": "different"}},  # not identical: kept
            {**a, "id": "y"}]  # an explicit new id: a distinct item on purpose
    _jsonl(tmp_path / "pairs.jsonl", rows)
    plan = plan_source("pairs", tmp_path)
    assert plan.items["id"] == ["1", "x", "5", "y"]
    assert plan.problems == [
        "pairs.jsonl line 3: duplicate of line 1 (same image, caption and negatives); skipped",
        "pairs.jsonl line 4: duplicate of line 2 (same id 'x'); skipped",
    ]


def test_pairs_csv_duplicate_row_is_skipped(tmp_path):
    make_images(tmp_path / "img", ["a.png"])
    (tmp_path / "pairs.csv").write_text("image,caption\nimg/a.png,one\nimg/a.png,one\n")
    plan = plan_source("pairs", tmp_path / "pairs.csv")
    assert plan.items["id"] == ["2"]
    assert plan.problems == ["pairs.csv line 3: duplicate of line 2 (same image, caption and negatives); skipped"]


def test_sugarcrepe_plus_plus_list_with_a_repeated_id_keeps_the_first(tmp_path):
    make_images(tmp_path / "val2017", ["a.jpg", "b.jpg"])
    rows = [{**_sc_row("a.jpg", 0), "id": 7, "caption2": "p"}, {**_sc_row("b.jpg", 1), "id": 8, "caption2": "q"},
            {**_sc_row("b.jpg", 2), "id": 7, "caption2": "r"}]
    (tmp_path / "replace_rel.json").write_text(json.dumps(rows))
    plan = plan_source("sugarcrepe", tmp_path)
    assert plan.items["id"] == ["replace_rel/7", "replace_rel/8"]
    assert plan.items["caption"] == [text_key("a caption 0"), text_key("a caption 1")]
    assert plan.problems == ["replace_rel.json item 2: duplicate of item 0 (same id 7); skipped"]


# 5. partial SugarCrepe -----------------------------------------------------------------------------------

def test_partial_sugarcrepe_notes_the_absent_subsets(tmp_path, caplog):
    make_images(tmp_path / "val2017", ["a.jpg"])
    for s in ("swap_att", "add_obj"):
        (tmp_path / f"{s}.json").write_text(json.dumps({"0": _sc_row("a.jpg")}))
    with caplog.at_level(logging.WARNING, logger="compalign"):
        plan = plan_source("sugarcrepe", tmp_path)
    note = ("sugarcrepe: 5 of 7 subset files absent (add_att.json, replace_att.json, replace_obj.json, "
            "replace_rel.json, swap_obj.json): the macro mean covers only the subsets present")
    assert plan.notes == [note] and plan.problems == []
    assert note in caplog.messages  # `compalign extract` shows it
    assert sorted(set(plan.items["subset"])) == ["add_obj", "swap_att"]
    for s in SUBSETS:
        (tmp_path / f"{s}.json").write_text(json.dumps({"0": _sc_row("a.jpg")}))
    assert plan_source("sugarcrepe", tmp_path).notes == []


# 6. nothing usable ---------------------------------------------------------------------------------------

def test_empty_pairs_file_is_an_error_not_an_empty_plan(tmp_path):
    (tmp_path / "pairs.jsonl").write_text("\n\n")
    with pytest.raises(SourceError, match=r"pairs.jsonl: no usable pairs items \(no rows\)"):
        plan_source("pairs", tmp_path)
    (tmp_path / "pairs.csv").write_text("image,caption\n")
    with pytest.raises(SourceError, match=r"pairs.csv: no usable pairs items \(no rows\)"):
        plan_source("pairs", tmp_path / "pairs.csv")


def test_every_row_skipped_names_the_file_and_the_first_problems(tmp_path):
    rows = ["{bad json"] + [json.dumps({"caption": f"no image {i}"}) for i in range(5)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(SourceError) as e:
        plan_source("pairs", tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'pairs.jsonl'}: no usable pairs items (every row was skipped: ")
    assert "pairs.jsonl line 1: malformed JSON" in msg and "line 3: needs text fields" in msg
    assert "line 4" not in msg and "(3 more)" in msg and "--root" in msg


def test_sugarcrepe_and_bivlc_with_nothing_usable_are_errors(tmp_path):
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "swap_att.json").write_text(json.dumps({"0": {"filename": "a.jpg"}}))
    with pytest.raises(SourceError, match=r"sc: no usable sugarcrepe items .*swap_att.json item '0': missing"):
        plan_source("sugarcrepe", tmp_path / "sc")
    (tmp_path / "bv").mkdir()
    pq.write_table(pa.table({"image": [{"bytes": b"x", "path": "a"}], "caption": pa.array([None], pa.string()),
                             "negative_caption": ["n"], "negative_image": [{"bytes": b"y", "path": "b"}],
                             "type": ["swap"], "subtype": ["att"]}), tmp_path / "bv" / "test.parquet")
    with pytest.raises(SourceError, match=r"bv: no usable bivlc items .*test.parquet#0: caption or negative_caption"):
        plan_source("bivlc", tmp_path / "bv")

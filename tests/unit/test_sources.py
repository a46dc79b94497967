"""Data sources: pairs (JSONL and CSV, with negatives), dedup by content, items referencing keys."""

from __future__ import annotations

import json

from conftest import make_images

from compalign.extract.sources import content_key, plan_source, text_key


def test_pairs_csv_and_jsonl_with_negatives(tmp_path):
    make_images(tmp_path / "img", ["a.png", "b.png"])
    (tmp_path / "img" / "a_copy.png").write_bytes((tmp_path / "img" / "a.png").read_bytes())
    (tmp_path / "pairs.csv").write_text("image,caption,negative_caption\n"
                                        "img/a.png,a red circle,a blue circle\n"
                                        "img/a_copy.png,a red circle,\n"
                                        "img/b.png,a green square,a green circle\n")
    plan = plan_source("pairs", tmp_path / "pairs.csv")
    assert len(plan.images) == 2  # a.png and its byte-identical copy are one image
    assert plan.images[0].key == content_key((tmp_path / "img" / "a.png").read_bytes())
    assert plan.texts == ["a red circle", "a blue circle", "a green square", "a green circle"]
    assert plan.items["image"][0] == plan.items["image"][1]
    assert plan.items["neg:negative"] == [text_key("a blue circle"), "", text_key("a green circle")]

    rows = [{"image": "img/b.png", "caption": "x", "negatives": {"swap_att": "y", "add_obj": "z"}},
            {"image": "img/a.png", "caption": "y", "id": "second"}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    plan = plan_source("pairs", tmp_path)  # a folder: pairs.jsonl is found first
    assert plan.items["id"] == ["1", "second"]
    assert plan.items["neg:swap_att"] == [text_key("y"), ""] and plan.items["neg:add_obj"] == [text_key("z"), ""]
    assert plan.texts == ["x", "z", "y"]  # negatives in kind order; "y" is a negative and a caption: stored once
    assert plan.fingerprint != plan_source("pairs", tmp_path / "pairs.csv").fingerprint

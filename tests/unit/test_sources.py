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


def _dup_pairs(root):
    """20 images, two of them byte-for-byte copies under other names, and a caption each."""
    make_images(root / "img", [f"{i:02d}.png" for i in range(18)])
    for copy, of in (("18.png", "03.png"), ("19.png", "11.png")):
        (root / "img" / copy).write_bytes((root / "img" / of).read_bytes())
    rows = [{"image": f"img/{i:02d}.png", "caption": f"thing {i}"} for i in range(20)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def test_files_hashed_by_many_threads_plan_as_one_at_a_time(tmp_path, monkeypatch):
    import compalign.extract.sources.base as base

    root = _dup_pairs(tmp_path / "p")
    monkeypatch.setattr(base, "HASH_THREADS", 1)
    one = plan_source("pairs", root)
    monkeypatch.setattr(base, "HASH_THREADS", 8)
    many = plan_source("pairs", root)
    assert [(r.key, r.origin, r.path) for r in many.images] == [(r.key, r.origin, r.path) for r in one.images]
    assert many.items == one.items and len(many.images) == 18  # the two copies are the images they copy
    assert [r.key for r in one.images] == [content_key((root / r.origin).read_bytes()) for r in one.images]
    assert many.items["image"][18] == many.items["image"][3]


def test_a_file_gone_before_it_is_hashed_is_a_failed_row(tmp_path, monkeypatch):
    import compalign.extract.sources.base as base

    root = _dup_pairs(tmp_path / "p")
    real = base._hash_file

    def vanish(path):
        if path.name == "05.png":
            path.unlink()  # listed and checked while planning, removed before its bytes are read
        return real(path)

    monkeypatch.setattr(base, "_hash_file", vanish)
    plan = plan_source("pairs", root)
    [gone] = [r for r in plan.images if r.error]
    assert gone.origin == "img/05.png"
    assert gone.error == f"file not found: {(root / 'img' / '05.png').resolve()} (FileNotFoundError)"
    assert len(plan.items["image"]) == 20 and len(plan.images) == 18  # the row stays, as a failed image

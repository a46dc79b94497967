"""The synthetic shapes world: determinism, truth of every caption, held-out guarantees, file formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from compalign.cli.shapes import app
from compalign.shapes import (
    NEGATIVE_KINDS,
    Caption,
    Mention,
    Scene,
    SceneObject,
    WorldConfig,
    WorldExistsError,
    canonical,
    caption_is_false,
    caption_is_true,
    caption_text,
    choose_held_out,
    load_held_out,
    load_scenes,
    make_negative,
    named_pairs,
    parse_caption,
    render_png,
    sample_caption,
    sample_scene,
    write_world,
    writer,
)
from compalign.shapes.captions import LIST_TEMPLATES, REL_TEMPLATES
from compalign.shapes.scene import all_pairs, derive_rng

SMALL = dict(n_train=60, n_test_id=40, n_test_ood=40)
TEST_SPLITS = ("test_id", "test_ood")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def cfg() -> WorldConfig:
    return WorldConfig(seed=0, **SMALL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, cfg: WorldConfig) -> Path:
    out = tmp_path_factory.mktemp("world")
    assert write_world(cfg, out).status == "written"
    return out


@pytest.fixture(scope="module")
def leaky_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("leaky")
    write_world(WorldConfig(seed=0, leak_negatives=True, **SMALL), out)
    return out


# -- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes_other_seed_differs(world: Path, cfg: WorldConfig, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_world(cfg, again)
    a, b = _files(world), _files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []

    other = tmp_path / "other"
    write_world(WorldConfig(seed=1, **SMALL), other)
    c = _files(other)
    for name in (
        "train/pairs.jsonl",
        "train/scenes.jsonl",
        "train/images/000000.png",
        "test_ood/sugarcrepe/swap_att.json",
        "test_id/bivlc/test.parquet",
    ):
        assert a[name] != c[name], name



def test_workers_write_the_same_bytes(
    world: Path, cfg: WorldConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small chunks so every split is cut across processes, and bivlc rows / sugarcrepe ids must be renumbered
    monkeypatch.setattr(writer, "_CHUNK", 16)
    par = tmp_path / "par"
    write_world(cfg, par, workers=2)
    a, b = _files(world), _files(par)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []

def test_render_is_byte_stable_and_noise_is_seeded(cfg: WorldConfig) -> None:
    scene = sample_scene(cfg, derive_rng(3, 0), all_pairs(cfg))
    assert render_png(scene, cfg) == render_png(scene, cfg)
    noisy = WorldConfig(noise_std=3.0)
    assert render_png(scene, noisy) == render_png(scene, noisy)
    assert render_png(scene, noisy) != render_png(scene, cfg)
    img = np.asarray(Image.open(io.BytesIO(render_png(scene, cfg))))
    assert img.shape == (64, 64, 3)
    for o in scene.objects:  # each object's colour is at its box centre (all default shapes fill it)
        cx, cy = (int(v) for v in o.centre)
        assert tuple(img[cy, cx]) == cfg.colours[o.colour]


# -- truth of every caption in the files ---------------------------------------------------------


def test_train_positives_true_and_negatives_false(world: Path, cfg: WorldConfig) -> None:
    scenes = load_scenes(world / "train" / "scenes.jsonl")
    rows = _jsonl(world / "train" / "pairs.jsonl")
    assert len(scenes) == cfg.n_train and len(rows) >= 2 * cfg.n_train
    per_image: dict[str, int] = {}
    kinds_seen: set[str] = set()
    for row in rows:
        scene = scenes[row["image"]]
        per_image[row["image"]] = per_image.get(row["image"], 0) + 1
        assert caption_is_true(parse_caption(row["caption"], cfg), scene, cfg), row["caption"]
        assert set(row["negatives"]) <= set(NEGATIVE_KINDS)
        for kind, neg in row["negatives"].items():
            kinds_seen.add(kind)
            assert caption_is_false(parse_caption(neg, cfg), scene, cfg), (kind, row["caption"], neg)
    assert set(kinds_seen) == set(NEGATIVE_KINDS)
    assert max(per_image.values()) <= cfg.captions_per_train_scene[1]
    assert all((world / "train" / name).is_file() for name in scenes)


@pytest.mark.parametrize("split", TEST_SPLITS)
def test_sugarcrepe_items_true_positive_false_negative(world: Path, cfg: WorldConfig, split: str) -> None:
    scenes = load_scenes(world / split / "scenes.jsonl")
    for kind in NEGATIVE_KINDS:
        items = json.loads((world / split / "sugarcrepe" / f"{kind}.json").read_text())
        assert len(items) >= 0.6 * cfg.n_test_id, kind  # most scenes admit every kind
        for item in items.values():
            scene = scenes[item["filename"]]
            assert caption_is_true(parse_caption(item["caption"], cfg), scene, cfg)
            assert caption_is_false(parse_caption(item["negative_caption"], cfg), scene, cfg)


def test_sugarcrepe_layout(world: Path) -> None:
    for split in TEST_SPLITS:
        root = world / split / "sugarcrepe"
        assert sorted(p.name for p in root.glob("*.json")) == sorted(f"{k}.json" for k in NEGATIVE_KINDS)
        images = sorted(p.name for p in (root / "val2017").iterdir())
        assert len(images) == len(set(images)) == 40
        assert all(len(n) == len("000000000123.png") and n[:12].isdigit() for n in images)
        used: set[str] = set()
        for kind in NEGATIVE_KINDS:
            items = json.loads((root / f"{kind}.json").read_text())
            assert list(items) == [str(i) for i in range(len(items))]
            for item in items.values():
                assert set(item) == {"filename", "caption", "negative_caption"}
                assert item["caption"] != item["negative_caption"]
                used.add(item["filename"])
        assert used <= set(images) and len(used) > 1  # images shared across subsets, stored once


# -- held-out pairs ------------------------------------------------------------------------------


def test_held_out_pairs_keep_every_word_in_training(cfg: WorldConfig) -> None:
    held = choose_held_out(cfg)
    assert len(held) == round(0.2 * len(all_pairs(cfg)))
    seen = set(all_pairs(cfg)) - held
    for colour in cfg.colours:
        assert sum(c == colour for c, _ in seen) >= 2
    for shape in cfg.shapes:
        assert sum(s == shape for _, s in seen) >= 2


def test_no_training_text_names_a_held_out_pair(world: Path, cfg: WorldConfig) -> None:
    held = load_held_out(world)
    assert held == choose_held_out(cfg) and held
    for row in _jsonl(world / "train" / "pairs.jsonl"):
        for text in [row["caption"], *row["negatives"].values()]:
            assert not named_pairs(parse_caption(text, cfg)) & held, text
    for name in ("train", "test_id"):  # nor do in-distribution images render one
        for scene in load_scenes(world / name / "scenes.jsonl").values():
            assert not {o.pair for o in scene.objects} & held
    for kind in NEGATIVE_KINDS:  # test_id stays in-distribution, negatives included
        for item in json.loads((world / "test_id" / "sugarcrepe" / f"{kind}.json").read_text()).values():
            for text in (item["caption"], item["negative_caption"]):
                assert not named_pairs(parse_caption(text, cfg)) & held, text


def test_test_ood_positives_name_a_held_out_pair(world: Path, cfg: WorldConfig) -> None:
    held = load_held_out(world)
    for kind in NEGATIVE_KINDS:
        for item in json.loads((world / "test_ood" / "sugarcrepe" / f"{kind}.json").read_text()).values():
            assert named_pairs(parse_caption(item["caption"], cfg)) & held, item["caption"]
    table = pq.read_table(world / "test_ood" / "bivlc" / "test.parquet")
    assert all(named_pairs(parse_caption(c, cfg)) & held for c in table.column("caption").to_pylist())


def test_leak_negatives_lets_training_negatives_name_held_out_pairs(leaky_world: Path, cfg: WorldConfig) -> None:
    held = load_held_out(leaky_world)
    leaked = 0
    for row in _jsonl(leaky_world / "train" / "pairs.jsonl"):
        assert not named_pairs(parse_caption(row["caption"], cfg)) & held
        leaked += sum(bool(named_pairs(parse_caption(t, cfg)) & held) for t in row["negatives"].values())
    assert leaked > 10
    for scene in load_scenes(leaky_world / "train" / "scenes.jsonl").values():
        assert not {o.pair for o in scene.objects} & held


# -- BiVLC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", TEST_SPLITS)
def test_bivlc_schema_and_negative_images(world: Path, cfg: WorldConfig, split: str) -> None:
    table = pq.read_table(world / split / "bivlc" / "test.parquet")
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert table.schema.names == ["image", "caption", "negative_caption", "negative_image", "type", "subtype"]
    assert table.schema.field("image").type == image_type
    assert table.schema.field("negative_image").type == image_type
    for name in ("caption", "negative_caption", "type", "subtype"):
        assert table.schema.field(name).type == pa.string()
    assert b"huggingface" in table.schema.metadata
    rows = table.to_pylist()
    assert len(rows) > 3 * 40  # most (scene, kind) pairs get a rendered negative image
    # no "add" rows: an add negative entails its positive, so Ineg2T would have no right answer
    assert {r["type"] for r in rows} == {"replace", "swap"}
    assert {r["subtype"] for r in rows} == {"att", "obj", "rel"}

    scenes = load_scenes(world / split / "scenes.jsonl")
    neg_rows = _jsonl(world / split / "bivlc" / "negative_scenes.jsonl")
    held = load_held_out(world)
    assert [r["row"] for r in neg_rows] == list(range(len(rows)))
    for row, meta in zip(rows, neg_rows, strict=True):
        scene, neg_scene = scenes[row["image"]["path"]], Scene.from_json(meta["negative_scene"])
        assert row["image"]["bytes"] == render_png(scene, cfg)
        assert row["negative_image"]["bytes"] == render_png(neg_scene, cfg)  # the file's scene is the image's
        assert Image.open(io.BytesIO(row["negative_image"]["bytes"])).size == (64, 64)
        pos, neg = parse_caption(row["caption"], cfg), parse_caption(row["negative_caption"], cfg)
        assert caption_is_true(pos, scene, cfg) and caption_is_false(neg, scene, cfg)
        assert caption_is_true(neg, neg_scene, cfg)
        assert caption_is_false(pos, neg_scene, cfg), (row["caption"], row["negative_caption"])
        if split == "test_id":
            assert not {o.pair for o in neg_scene.objects} & held


# -- the evaluator on hand-made scenes ---------------------------------------------------------------


def _obj(shape: str, colour: str, size: str, x: int, y: int, side: int = 18) -> SceneObject:
    return SceneObject(shape, colour, size, (x, y, x + side, y + side))


def test_evaluator_needs_distinct_objects(cfg: WorldConfig) -> None:
    one = Scene(64, (_obj("circle", "red", "small", 2, 2), _obj("square", "blue", "small", 40, 40)), 0)
    two = Scene(64, (*one.objects, _obj("circle", "red", "large", 2, 40, 20)), 0)
    twice = Caption((Mention("circle", "red"), Mention("circle", "red")))
    assert not caption_is_true(twice, one, cfg) and caption_is_false(twice, one, cfg)
    assert caption_is_true(twice, two, cfg)
    assert caption_is_true(Caption((Mention("circle", "red", "large"),)), two, cfg)
    assert not caption_is_true(Caption((Mention("circle", "red", "large"),)), one, cfg)
    assert not caption_is_true(Caption((Mention("circle", "blue"),)), two, cfg)
    assert caption_is_true(Caption((Mention("square"), Mention("circle", size="small"))), two, cfg)
    # a colourless mention matches any colour, but still needs its own object
    assert not caption_is_true(Caption((Mention("square"), Mention("square", "blue"))), two, cfg)


def test_evaluator_relation_direction_and_ambiguity(cfg: WorldConfig) -> None:
    red, blue = _obj("circle", "red", "small", 2, 20), _obj("square", "blue", "small", 40, 24)
    scene = Scene(64, (red, blue), 0)
    m_red, m_blue = Mention("circle", "red"), Mention("square", "blue")
    assert caption_is_true(Caption((m_red, m_blue), "left_of"), scene, cfg)
    assert caption_is_true(Caption((m_blue, m_red), "right_of"), scene, cfg)
    for rel in ("right_of", "above"):  # clearly false: red is left of and above blue, weakly
        assert not caption_is_true(Caption((m_red, m_blue), rel), scene, cfg)
    assert caption_is_false(Caption((m_red, m_blue), "right_of"), scene, cfg)
    assert caption_is_false(Caption((m_red, m_blue), "below"), scene, cfg)
    # "above" is not asserted (x dominates) but not clearly false either (red is 4 px higher)
    assert not caption_is_false(Caption((m_red, m_blue), "above"), scene, cfg)
    # diagonal: neither axis dominates, so no relation is true
    diag = Scene(64, (red, _obj("square", "blue", "small", 30, 44)), 0)
    assert not any(caption_is_true(Caption((m_red, m_blue), r), diag, cfg) for r in ("left_of", "above"))
    # the relation binds to the right objects: a second blue square elsewhere does not help
    three = Scene(64, (red, blue, _obj("square", "green", "small", 2, 44)), 0)
    assert not caption_is_true(Caption((Mention("square", "green"), m_red), "left_of"), three, cfg)
    assert caption_is_true(Caption((Mention("square", "green"), m_red), "below"), three, cfg)


# -- captions: templates, parser, negatives --------------------------------------------------------


def test_templates_vary_word_order_and_parse_back(cfg: WorldConfig) -> None:
    a, b = Mention("circle", "red", "small"), Mention("square", "blue")
    list_texts = {caption_text(Caption(ms, None, t)) for ms in ((a, b), (b, a)) for t in range(len(LIST_TEMPLATES))}
    rel_texts = {caption_text(Caption((a, b), "left_of", t)) for t in range(len(REL_TEMPLATES))}
    assert len(list_texts) == 2 * len(LIST_TEMPLATES) and len(rel_texts) == len(REL_TEMPLATES)
    assert "a small red circle and a blue square" in list_texts
    assert "a blue square and a small red circle" in list_texts
    assert "a blue square is to the right of a small red circle" in rel_texts
    assert "there is a small red circle to the left of a blue square" in rel_texts
    for text in list_texts | rel_texts:
        assert caption_text(parse_caption(text, cfg)) == text
    assert len({canonical(parse_caption(t, cfg)) for t in rel_texts}) == 1
    with pytest.raises(ValueError):
        parse_caption("a red circle beside a blue square", cfg)

    # the sampler uses the variety: many templates and both orders of the same two objects
    texts, keys = set(), {}
    scene = Scene(64, (_obj("circle", "red", "small", 2, 20), _obj("square", "blue", "large", 36, 20, 26)), 0)
    for i in range(300):
        c = sample_caption(scene, cfg, derive_rng(0, 7, i))
        text = caption_text(c)
        assert caption_text(parse_caption(text, cfg)) == text
        texts.add(text)
        keys.setdefault(canonical(c), set()).add(text)
    assert len(texts) > 30
    assert max(len(v) for v in keys.values()) >= 4  # one meaning, several surface forms
    assert any(t.startswith("a blue square") for t in texts) and any(t.startswith("a red circle") for t in texts)


def test_each_negative_kind_edits_as_named(cfg: WorldConfig) -> None:
    scene = Scene(64, (_obj("circle", "red", "small", 2, 20), _obj("square", "blue", "large", 34, 18, 28)), 0)
    pos = Caption((Mention("circle", "red", "small"), Mention("square", "blue")), "left_of", 0)
    held: frozenset = frozenset()
    negs = {k: make_negative(k, pos, scene, cfg, derive_rng(0, 9), held) for k in NEGATIVE_KINDS}
    assert all(n is not None for n in negs.values())
    assert negs["swap_att"].mentions[0].colour == "blue" and negs["swap_att"].mentions[1].colour == "red"
    assert [m.shape for m in negs["swap_obj"].mentions] == ["square", "circle"]
    assert negs["swap_obj"].mentions[0].colour == "red"  # attributes stay in place
    assert negs["replace_rel"].relation in ("right_of", "above", "below")
    assert negs["add_att"].mentions[1].size == "small"  # the square is large: adding "small" is false
    assert len(negs["add_obj"].mentions) == 3
    assert negs["replace_obj"].mentions[0].shape != "circle" or negs["replace_obj"].mentions[1].shape != "square"
    for n in negs.values():
        assert caption_is_false(n, scene, cfg)
    # a single mention with every attribute admits no swap and no add_att
    lone = Caption((Mention("circle", "red", "small"),))
    assert make_negative("swap_att", lone, scene, cfg, derive_rng(0, 9)) is None
    assert make_negative("add_att", lone, scene, cfg, derive_rng(0, 9)) is None
    # forbidding the pair a replacement would need makes it pick another or give up
    only = frozenset((c, "circle") for c in cfg.colours if c != "red")
    n = make_negative("replace_att", Caption((Mention("circle", "red"),)), scene, cfg, derive_rng(0, 9), only)
    assert n is None


# -- config, caching, CLI ----------------------------------------------------------------------------


def test_config_round_trip_and_validation() -> None:
    cfg = WorldConfig(seed=5, n_train=7)
    assert WorldConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown option"):
        WorldConfig.from_dict({**cfg.to_dict(), "n_trian": 3})
    with pytest.raises(ValueError):
        WorldConfig(small_size_range=(20, 30), large_size_range=(26, 32))
    with pytest.raises(ValueError):
        WorldConfig(canvas_size=32)  # large objects do not fit: use for_canvas
    big = WorldConfig.for_canvas(128)
    assert big.small_size_range == (32, 44) and big.large_size_range == (52, 64)
    assert WorldConfig.for_canvas(64) == WorldConfig()


@pytest.mark.parametrize("grid", [1, 8])
def test_position_grid_puts_every_box_on_the_grid(grid: int) -> None:
    cfg = WorldConfig(position_grid=grid, **SMALL)
    starts = set()
    for i in range(200):
        scene = sample_scene(cfg, derive_rng(0, 9, i), all_pairs(cfg))
        for o in scene.objects:
            assert o.box[0] % grid == 0 and o.box[1] % grid == 0, (grid, o.box)
            starts.add(o.box[0] % 8)
    assert len(starts) == (1 if grid == 8 else 8)  # grid 1 still reaches every phase of an 8-px patch
    with pytest.raises(ValueError, match="position_grid"):
        WorldConfig(position_grid=0)


def test_write_world_caches_and_refuses_other_config(world: Path, cfg: WorldConfig) -> None:
    before = _files(world)
    assert write_world(cfg, world).status == "cached"
    assert _files(world) == before
    with pytest.raises(WorldExistsError, match="--force"):
        write_world(WorldConfig(seed=0, n_train=61, n_test_id=40, n_test_ood=40), world)


def test_cli_make(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["make", "--out", str(tmp_path / "w"), "--n-train", "8", "--n-test", "5", "--seed", "3"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "w" / "world.json").read_text())
    assert meta["config"]["seed"] == 3 and meta["counts"]["train"]["scenes"] == 8
    assert meta["held_out_pairs"] and meta["version"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "cached" in res.output
    res = runner.invoke(app, [*args[:-1], "4"])
    assert res.exit_code != 0 and "--force" in res.output
    res = runner.invoke(app, [*args[:-1], "4", "--force", "--leak-negatives"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "w" / "world.json").read_text())["config"]["leak_negatives"] is True


def test_swapped_words_names_the_exchanged_word_class(cfg: WorldConfig) -> None:
    from compalign.shapes.breakdown import swapped_words

    assert swapped_words("a red circle and a blue square", "a blue circle and a red square", cfg) == "colour"
    assert swapped_words("a small red circle and a large star", "a large red circle and a small star", cfg) == "size"
    assert swapped_words("a red circle and a blue square", "a red square and a blue circle", cfg) == "shape"
    assert swapped_words("a red circle", "a circle and a star", cfg) == "other"  # word counts differ


def test_breakdown_splits_a_score_file_by_swapped_words(world: Path, cfg: WorldConfig, tmp_path: Path) -> None:
    from compalign.cli.shapes import app as shapes_app
    from compalign.shapes.breakdown import breakdown, swapped_words

    root = world / "test_id" / "sugarcrepe"
    rows = json.loads((root / "swap_att.json").read_text())
    kinds = {k: swapped_words(r["caption"], r["negative_caption"], cfg) for k, r in rows.items()}
    assert {"colour", "size"} <= set(kinds.values())
    # a fake head that gets exactly the colour swaps right, plus one invalid item that must not count
    items = [
        {"id": f"swap_att/{k}", "subset": "swap_att", "correct": kind == "colour", "valid": True} for k, kind in kinds.items()
    ]
    items.append({"id": "swap_att/0", "subset": "swap_att", "correct": True, "valid": False})
    items.append({"id": "add_att/0", "subset": "add_att", "correct": True, "valid": True})  # not a swap: ignored
    scores = {"head": "fake", "items": items}
    out = breakdown(scores, root, cfg)["swap_att"]
    assert out["colour"] == [sum(v == "colour" for v in kinds.values())] * 2
    assert out["size"] == [0, sum(v == "size" for v in kinds.values())]
    assert sum(n for _, n in out.values()) == len(kinds)
    path = tmp_path / "fake.json"
    path.write_text(json.dumps(scores))
    res = CliRunner().invoke(shapes_app, ["breakdown", "--world", str(world), str(path)])
    assert res.exit_code == 0, res.output
    assert "100.0" in res.output and "0.0" in res.output
    bad = CliRunner().invoke(shapes_app, ["breakdown", "--world", str(world), "--split", "nowhere", str(path)])
    assert bad.exit_code == 2 and "missing" in bad.output

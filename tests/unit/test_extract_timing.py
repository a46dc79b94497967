"""Where an extraction's image stage spends its time (extract/timing.py): a delay put into one part is charged to it."""

from __future__ import annotations

import time

import pytest

import compalign.extract.runner as runner
import compalign.extract.shards as shards
from compalign.extract.image_rows import ImageRows
from compalign.extract.runner import ExtractConfig, extract
from compalign.extract.timing import Clock, StageTime

DELAY = 0.25  # seconds put into one part per batch (or per image shard)


def test_a_stage_time_says_each_part_largest_first():
    t = StageTime("images", rows=100, seconds=2.0, spent={"input": 1.0, "model": 0.5, "writers": 0.1})
    assert str(t) == ("image stage: 100 images in 2.0 s (50 img/s): waiting for decoded batches 50%, the model 25%, "
                      "the loop itself 20%, waiting for the writers 5%")
    assert str(StageTime()) == "image stage: 0 images in 0.0 s: nothing timed"
    t = StageTime("texts", 300, 1.0, {"input": 0.1, "model": 0.6, "writers": 0.0})
    assert str(t) == ("text stage: 300 captions in 1.0 s (300 captions/s): the model 60%, the loop itself 30%, "
                      "tokenising 10%, waiting for the writers 0%")


def test_the_clock_charges_each_wait_for_an_item_to_its_part():
    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    clock = Clock()
    assert list(clock.each(slow(), "input")) == [0, 1, 2]
    with clock.part("model"):
        time.sleep(0.1)
    t = clock.stop(3)
    assert t.spent["input"] >= 0.15 and t.spent["model"] >= 0.1 and t.spent["writers"] == 0
    assert t.seconds >= t.spent["input"] + t.spent["model"]
    # time spent on a part before the clock started counts in the part and in the stage
    t = Clock("texts", earlier={"input": 5.0}).stop(1)
    assert t.spent["input"] == 5.0 and 5.0 <= t.seconds < 6.0


class _Slow:
    """The backbone, with one of its methods DELAY seconds slower."""

    def __init__(self, bb, name: str):
        self.bb, self.name = bb, name

    def __getattr__(self, attr):
        f = getattr(self.bb, attr)
        if attr != self.name:
            return f
        return lambda *a, **k: (time.sleep(DELAY), f(*a, **k))[1]


def _extract(pairs_dir, out):
    # 12 images and 16 captions, batches of 4, shards of 4 rows: 3 image and 4 text batches, one writer thread
    return extract(ExtractConfig(model="tiny", data="pairs", root=str(pairs_dir), out=str(out), workers=0, writers=1,
                                 batch_size=4, shard_rows=4))


@pytest.mark.parametrize("slow", ["input", "model", "writers"])
def test_a_slow_part_of_the_image_stage_is_charged_to_it(slow, pairs_dir, tmp_path, monkeypatch):
    if slow == "input":  # workers 0: the main process decodes, inside the loader's next()
        rows = ImageRows.__getitems__
        monkeypatch.setattr(ImageRows, "__getitems__", lambda self, r: (time.sleep(DELAY), rows(self, r))[1])
    elif slow == "model":
        load = runner.load_backbone
        monkeypatch.setattr(runner, "load_backbone", lambda *a, **k: _Slow(load(*a, **k), "encode_images"))
    else:
        write = shards.write_shard
        monkeypatch.setattr(shards, "write_shard", lambda root, path, kind, *a, **k: (
            time.sleep(DELAY if kind == "images" else 0), write(root, path, kind, *a, **k))[1])
    summary = _extract(pairs_dir, tmp_path / "s.zarr")
    t = summary.image_time
    assert t is not None and t.kind == "images" and t.rows == 12
    # the writers: the last shard is written after the last hand-over, and the stage waits for it
    least = DELAY if slow == "writers" else 3 * DELAY
    assert t.spent[slow] >= least and max(t.spent, key=t.spent.get) == slow, t
    assert t.seconds >= sum(t.spent.values())
    again = _extract(pairs_dir, tmp_path / "s.zarr")
    assert again.image_time is None and again.text_time is None  # nothing left to encode: no stage to time


@pytest.mark.parametrize("slow, method", [("input", "tokenizer"), ("model", "encode_texts")])
def test_a_slow_part_of_the_text_stage_is_charged_to_it(slow, method, pairs_dir, tmp_path, monkeypatch):
    load = runner.load_backbone
    monkeypatch.setattr(runner, "load_backbone", lambda *a, **k: _Slow(load(*a, **k), method))
    t = _extract(pairs_dir, tmp_path / "s.zarr").text_time
    assert t is not None and t.kind == "texts" and t.rows == 16
    # 4 batches; 4 shards' ids, and the lengths measured before the store was made (one more call)
    assert t.spent[slow] >= (5 if slow == "input" else 4) * DELAY and max(t.spent, key=t.spent.get) == slow, t
    assert str(t).startswith("text stage: 16 captions in ")

"""Caption segments as texts of the store: every caption's objects, attribute phrases and relations.

The segments of each caption (compalign.text.segment) are appended to the plan's texts, each distinct string
once (a segment that is itself some caption shares its row), so the backbone encodes them in the same pass
and shards as the captions, and re-scoring with another aggregation costs no encoding. The store's
`segments` table maps each caption to its segments' text keys. On the synthetic world the rules return the
scene graph's own segments exactly (tests/unit/test_segments.py), so `rules` is the world's oracle too.
"""

from __future__ import annotations

import dataclasses

from ..text import segment
from .sources.base import Plan, text_key


def add_segments(plan: Plan) -> Plan:
    texts = list(plan.texts)
    seen = set(texts)
    table: dict[str, list[str]] = {"caption": [], "segment": [], "kind": []}
    fell_back = 0
    for caption in plan.texts:
        seg = segment(caption)
        fell_back += not seg.parsed
        for s in seg.segments:
            if s.text not in seen:
                seen.add(s.text)
                texts.append(s.text)
            table["caption"].append(text_key(caption))
            table["segment"].append(text_key(s.text))
            table["kind"].append(s.kind)
    note = (f"segments: {len(table['segment'])} segments of {len(plan.texts)} captions ({len(texts) - len(plan.texts)} "
            f"new strings to encode); {fell_back} captions the rules could not read are their own single segment")
    return dataclasses.replace(plan, texts=texts, segments=table, notes=[*plan.notes, note])

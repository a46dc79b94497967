"""The synthetic compositional world: seeded scenes of coloured shapes, captions, negatives.

``write_world(WorldConfig(...), out_dir)`` writes train pairs plus SugarCrepe- and BiVLC-format
test splits (in-distribution and with held-out colour-shape pairs); the caption evaluator
(``parse_caption`` + ``caption_is_true``) re-checks any caption against a scene graph.
"""

from compalign.shapes.captions import (
    NEGATIVE_KINDS,
    Caption,
    Mention,
    NegativeKind,
    canonical,
    caption_is_false,
    caption_is_true,
    caption_text,
    find_witness,
    list_negative_kinds,
    make_negative,
    named_pairs,
    parse_caption,
    sample_caption,
)
from compalign.shapes.config import WorldConfig
from compalign.shapes.load import load_held_out, load_scenes, load_world_config
from compalign.shapes.negative_image import negative_scene
from compalign.shapes.render import list_shapes, render_png, render_scene
from compalign.shapes.scene import (
    RELATIONS,
    SPLITS,
    PlacementError,
    Relation,
    Scene,
    SceneObject,
    Split,
    choose_held_out,
    clear_relation,
    relation_holds,
    sample_scene,
)
from compalign.shapes.writer import WorldExistsError, WorldResult, write_world

__all__ = [
    "NEGATIVE_KINDS",
    "RELATIONS",
    "SPLITS",
    "Caption",
    "Mention",
    "NegativeKind",
    "PlacementError",
    "Relation",
    "Scene",
    "SceneObject",
    "Split",
    "WorldConfig",
    "WorldExistsError",
    "WorldResult",
    "canonical",
    "caption_is_false",
    "caption_is_true",
    "caption_text",
    "choose_held_out",
    "clear_relation",
    "find_witness",
    "list_negative_kinds",
    "list_shapes",
    "load_held_out",
    "load_scenes",
    "load_world_config",
    "make_negative",
    "named_pairs",
    "negative_scene",
    "parse_caption",
    "relation_holds",
    "render_png",
    "render_scene",
    "sample_caption",
    "sample_scene",
    "write_world",
]

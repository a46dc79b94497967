"""Caption text: rule-based segments (objects, attribute-object phrases, relations) for region alignment."""

from compalign.text.segments import SEGMENT_KINDS, Segment, Segmentation, SegmentKind, segment, tokenize

__all__ = ["SEGMENT_KINDS", "Segment", "SegmentKind", "Segmentation", "segment", "tokenize"]

"""Captions to token ids, a chunk at a time, in DataLoader worker processes beside the text tower.

open_clip's tokenisers are pure Python (ftfy, a regex, BPE merges): one core tokenises ViT-B-16's captions
at ~18k/s, so COCO's 590k captions, measured once for their lengths and tokenised again shard by shard,
would keep the GPU waiting for a minute or more. Each chunk is independent (a tokeniser treats each caption
alone), so `--workers` processes tokenise chunks ahead, in order, while this process runs the model; a
single chunk, or `--workers 0`, is tokenised in this process.
The functions sent to the workers hold the tokeniser only, never the model (a spawned worker pickles them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["Chunks", "in_chunks", "measure", "measurer"]


def content_lengths(ids: torch.Tensor) -> torch.Tensor:
    """Tokens up to and including the last non-pad token (pad id is 0 for both tokenizer families)."""
    nonpad = ids != 0
    pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    last = torch.where(nonpad, pos, torch.full_like(pos, -1)).max(dim=1).values
    return last + 1


def measure(tokenizer: Any, context: int, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(lengths (M,) int64 at `context`, truncated (M,) bool) with one tokeniser pass at context + 1.

    A caption whose content is shorter than `context` at context + 1 fits `context` as it is, with the same
    ids; only the few near the limit are tokenised again at `context` (a truncating tokeniser may end them with
    its own EOT or drop a separator, so their length there is not the longer pass's). A caption is truncated
    when its content needs more than `context` tokens, or when its ids at `context` are not the first ones of
    its ids at context + 1: a tokeniser that strips its separator (open_clip's CLIPA towers) never shows the
    first, only the second."""
    ids = tokenizer(list(texts), context_length=context + 1)  # (M, C + 1)
    longer = content_lengths(ids).numpy()
    lengths, truncated = longer.astype(np.int64), longer > context
    near = np.flatnonzero(longer >= context)
    if len(near):
        cut = tokenizer([texts[i] for i in near], context_length=context)  # (n, C)
        lengths[near] = content_lengths(cut).numpy()
        truncated[near] |= (cut != ids[near, :context]).any(dim=1).numpy()
    return lengths, truncated


def measurer(tokenizer: Any, context: int) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    return partial(measure, tokenizer, context)


class Chunks(Dataset):
    """Item i: `fn` of the captions `chunks[i]` (row numbers into `texts`)."""

    def __init__(self, fn: Callable[[list[str]], Any], texts: Sequence[str], chunks: Sequence[Sequence[int]]):
        self.fn, self.texts, self.chunks = fn, texts, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> Any:
        return self.fn([self.texts[j] for j in self.chunks[i]])


def _as_is(item: Any) -> Any:  # the default collate would turn numpy arrays into tensors
    return item


def in_chunks(fn: Callable[[list[str]], Any], texts: Sequence[str], chunks: Sequence[Sequence[int]],
              workers: int) -> Iterator[Any]:
    """`fn` of each chunk of captions, in order; with `workers` > 0 and more than one chunk, in that many
    processes, each running up to two chunks ahead."""
    ds = Chunks(fn, texts, chunks)
    if workers == 0 or len(chunks) < 2:
        yield from (ds[i] for i in range(len(ds)))
        return
    yield from DataLoader(ds, batch_size=None, shuffle=False, num_workers=min(workers, len(chunks)),
                          collate_fn=_as_is, prefetch_factor=2)

"""Splitting a batch into requests under a size limit, and joining the answers again."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from contract.names import IGNORE_LABEL

# Padding of segment_encoded's class_ids (the project's 'ignore' label).
PAD_CLASS_ID = IGNORE_LABEL
# Room for the request's own framing (model spec, tensor shapes, field tags).
REQUEST_OVERHEAD_BYTES = 4096


def chunk_slices(item_sizes: Sequence[int], limit: int,
                 overhead: int = REQUEST_OVERHEAD_BYTES) -> list[slice]:
    """Consecutive slices whose item sizes add up to at most `limit` bytes less `overhead`
    (what a request carries besides the items; 0 where `limit` counts the items only).

    An item larger than the limit on its own goes alone in its slice: it cannot be split,
    and the channel is opened with room for it.
    """
    slices, start, total = [], 0, 0
    budget = max(1, limit - overhead)
    for i, size in enumerate(item_sizes):
        if i > start and total + size > budget:
            slices.append(slice(start, i))
            start, total = i, 0
        total += size
    if start < len(item_sizes):
        slices.append(slice(start, len(item_sizes)))
    return slices


def concat_outputs(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-chunk outputs along the batch axis.

    Chunks of different image sizes give arrays of different spatial shapes (segment_encoded
    pads each request's class_ids to its own largest image); they are padded with
    PAD_CLASS_ID (uint8) or 0 to the largest before joining.
    """
    if len(parts) == 1:
        return parts[0]
    joined = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        shape = np.max([a.shape for a in arrays], axis=0)
        if any(a.shape[1:] != tuple(shape[1:]) for a in arrays):
            fill = PAD_CLASS_ID if arrays[0].dtype == np.uint8 else 0
            arrays = [np.pad(a, [(0, 0)] + [(0, int(s) - d) for s, d in
                                            zip(shape[1:], a.shape[1:])],
                             constant_values=fill) for a in arrays]
        joined[name] = np.concatenate(arrays, axis=0)
    return joined

"""`--batch-size auto`: the images per model call chosen by measurement on the machine that
runs them, once per process.

On a CPU a bigger batch is not always faster per image (on a 2-core machine FCN-8s ran 15 %
slower per image at batch 8 than at 1: see docs/benchmarks.md), and what wins depends on the
CPU, its cores and the runtime, so it is measured where the work runs, not assumed.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Callable, Sequence

AUTO = "auto"
CANDIDATES = (1, 2, 4, 8)
# A bigger batch must be this much faster per image to be chosen over a smaller one: below
# that the difference is noise, and a smaller batch has the lower latency and memory.
MIN_GAIN = 0.03

_LOGGER = logging.getLogger(__name__)


def batch_size_or_auto(text: str) -> int | str:
    """'auto' or a positive int (an argparse type: its error is the flag's message)."""
    if text == AUTO:
        return AUTO
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or {AUTO!r}, got {text!r}")
    return int(text)


def probe(call: Callable[[int], object], candidates: Sequence[int] = CANDIDATES,
          repeats: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time `call(n)` (one model call on n images) for each candidate n, after one untimed
    call at that size (graph tracing, memory); the best of `repeats` timed calls counts, the
    least disturbed by other work. Returns {"batch_size": chosen, "seconds_per_image":
    {n: s}}; the chosen size is the smallest whose time per image no bigger size beats by
    more than MIN_GAIN."""
    per_image = {}
    for n in sorted(candidates):
        call(n)
        best = float("inf")
        for _ in range(repeats):
            start = clock()
            call(n)
            best = min(best, clock() - start)
        per_image[n] = best / n
    sizes = sorted(per_image)
    chosen = next(n for n in sizes if all(per_image[m] >= per_image[n] * (1.0 - MIN_GAIN)
                                          for m in sizes if m > n))
    figures = ", ".join(f"{n}: {s * 1e3:.1f} ms" for n, s in per_image.items())
    _LOGGER.info("batch size probe, time per image at batch %s -> batch size %d", figures,
                 chosen)
    return {"batch_size": chosen, "seconds_per_image": per_image}

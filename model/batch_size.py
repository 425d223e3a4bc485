"""`--batch-size auto`: the images per model call chosen by measurement on the machine that
runs them, once per process, on the job's own images.

On a CPU a bigger batch is not always faster per image (on a 2-core machine FCN-8s ran 15 %
slower per image at batch 8 than at 1: see docs/benchmarks.md), and what wins depends on the
CPU, its cores and the runtime, so it is measured where the work runs, not assumed.

A `Probe` makes a process's first calls at each candidate size in turn, on the images the job
hands it, and keeps their results: the measurement costs only what the slower sizes lose
against the chosen one, not extra calls (about 1 s at full size on 2 cores; docs/results.md).
"""
from __future__ import annotations

import argparse
import collections
import logging
import threading
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


def choose(seconds_per_image: dict[int, float]) -> int:
    """The smallest size whose time per image no bigger size beats by more than MIN_GAIN."""
    sizes = sorted(seconds_per_image)
    return next(n for n in sizes if all(
        seconds_per_image[m] >= seconds_per_image[n] * (1.0 - MIN_GAIN) for m in sizes if m > n))


class Probe:
    """Chooses the batch size while work goes through it.

    `run(items, run_part)` runs consecutive parts of `items` and returns their results in
    order. Until the size is chosen, the parts follow the plan: for each candidate size, one
    untimed call (graph tracing, memory) and `repeats` timed ones, the best of which counts
    (the one least disturbed by other work); items left over when the plan's next size does
    not fit go in one untimed call. Then every part has the chosen size. The threads of a
    process share one probe and take turns while it measures, so no two timed calls share the
    cores.
    """

    def __init__(self, candidates: Sequence[int] = CANDIDATES, repeats: int = 2,
                 clock: Callable[[], float] = time.perf_counter):
        self._plan = collections.deque((n, timed) for n in sorted(set(candidates))
                                       for timed in (False,) + (True,) * repeats)
        self._best: dict[int, float] = {}
        self._clock = clock
        self._lock = threading.Lock()
        self.result: dict | None = None  # {"batch_size", "seconds_per_image"} once chosen

    @property
    def batch_size(self) -> int | None:
        return self.result["batch_size"] if self.result else None

    @property
    def next_size(self) -> int | None:
        """The size of the plan's next call (None once chosen)."""
        return self._plan[0][0] if self._plan else None

    def run(self, items: Sequence, run_part: Callable[[list], tuple[list, bool]]) -> list:
        """run_part(part) -> (one result per item of part, whether the part ran as one call:
        a part split after a failure says nothing of its size's speed and is not timed)."""
        items = list(items)
        if self.result is None:
            with self._lock:
                if self.result is None:
                    return self._measure(items, run_part)
        return _in_parts(items, self.result["batch_size"], run_part)

    def _measure(self, items: list, run_part) -> list:
        results, i = [], 0
        while self._plan and self._plan[0][0] <= len(items) - i:
            n, timed = self._plan[0]
            start = self._clock()
            part_results, whole = run_part(items[i:i + n])
            seconds = self._clock() - start
            results += part_results
            i += n
            if whole:  # else this step of the plan is made again on later images
                self._plan.popleft()
                if timed:
                    self._best[n] = min(self._best.get(n, float("inf")), seconds)
        if not self._plan:
            per_image = {n: s / n for n, s in sorted(self._best.items())}
            self.result = {"batch_size": choose(per_image), "seconds_per_image": per_image}
            figures = ", ".join(f"{n}: {s * 1e3:.1f} ms" for n, s in per_image.items())
            _LOGGER.info("batch size probe, time per image at batch %s -> batch size %d",
                         figures, self.result["batch_size"])
        rest = items[i:]
        return results + _in_parts(rest, self.batch_size or max(len(rest), 1), run_part)


def _in_parts(items: list, size: int, run_part) -> list:
    results = []
    for i in range(0, len(items), size):
        results += run_part(items[i:i + size])[0]
    return results


def probe(call: Callable[[int], object], candidates: Sequence[int] = CANDIDATES,
          repeats: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict:
    """What a Probe chooses for `call(n)` (one model call on n images), measured now with
    exactly the plan's calls. Returns {"batch_size": chosen, "seconds_per_image": {n: s}}."""
    def run_part(part: list) -> tuple[list, bool]:
        call(len(part))
        return [None] * len(part), True

    measuring = Probe(candidates, repeats, clock)
    while measuring.result is None:
        measuring.run(range(measuring.next_size), run_part)
    return measuring.result

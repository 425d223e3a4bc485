"""`--batch-size auto`: the probe picks the size a fake model is fastest at, known by
construction (a fake clock advanced by the fake model's cost; no real timing), and the Beam
handler splits its batches into calls of that size, probing once per loaded model."""
from __future__ import annotations

import argparse

import pytest

from model import batch_size


class FakeModel:
    """A call on n images costs `fixed + n * per_image` seconds of a fake clock, plus
    `first` extra on the first call at each size (tracing)."""

    def __init__(self, fixed: float, per_image: float, first: float = 10.0):
        self.now, self.fixed, self.per_image, self.first = 0.0, fixed, per_image, first
        self.sizes: list[int] = []

    def clock(self) -> float:
        return self.now

    def call(self, n: int) -> None:
        self.now += self.fixed + n * self.per_image + (self.first if n not in self.sizes
                                                       else 0.0)
        self.sizes.append(n)


class SlowerWhenBatched(FakeModel):
    """A CPU where each image costs 15 % more in a batch of 8 than alone (a 2-core EPYC)."""

    def call(self, n: int) -> None:
        self.now += n * (1.0 + 0.15 * (n - 1) / 7) + (self.first if n not in self.sizes
                                                      else 0.0)
        self.sizes.append(n)


def test_a_fixed_cost_per_call_makes_the_biggest_batch_win():
    # per image: 1 + 1/n s -> 2.0, 1.5, 1.25, 1.125 for n = 1, 2, 4, 8
    fake = FakeModel(fixed=1.0, per_image=1.0)
    result = batch_size.probe(fake.call, clock=fake.clock)
    assert result["batch_size"] == 8
    assert result["seconds_per_image"] == {1: 2.0, 2: 1.5, 4: 1.25, 8: 1.125}


def test_when_batching_costs_per_image_batch_1_wins():
    fake = SlowerWhenBatched(0.0, 0.0)
    result = batch_size.probe(fake.call, clock=fake.clock)
    assert result["batch_size"] == 1
    assert result["seconds_per_image"][8] == pytest.approx(1.15)


def test_a_gain_below_the_noise_margin_keeps_the_smaller_batch():
    # per image 1 + 0.02/n: batch 8 is 1.75 % faster than 1, under MIN_GAIN (3 %)
    fake = FakeModel(fixed=0.02, per_image=1.0)
    assert batch_size.probe(fake.call, clock=fake.clock)["batch_size"] == 1
    # 1 + 0.1/n: 1.1, 1.05, 1.025, 1.0125; batch 8 beats 1 by 8 % and 2 by 3.6 %, but 4
    # by 1.2 % only: 4 is the smallest size no bigger one beats by MIN_GAIN.
    fake = FakeModel(fixed=0.1, per_image=1.0)
    assert batch_size.probe(fake.call, clock=fake.clock)["batch_size"] == 4


def test_the_untimed_first_call_at_each_size_is_not_counted():
    fake = FakeModel(fixed=0.0, per_image=1.0, first=100.0)
    result = batch_size.probe(fake.call, candidates=(1, 2), repeats=3, clock=fake.clock)
    assert result["seconds_per_image"] == {1: 1.0, 2: 1.0}
    assert fake.sizes == [1, 1, 1, 1, 2, 2, 2, 2]


def test_flag_values():
    assert batch_size.batch_size_or_auto("auto") == "auto"
    assert batch_size.batch_size_or_auto("4") == 4
    for bad in ("0", "-2", "many"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer or 'auto'"):
            batch_size.batch_size_or_auto(bad)


class FakeSegmenter:
    """Stands in for SavedModelSegmenter: records each call's size; batch 1 is fastest."""

    def __init__(self):
        self.calls: list[int] = []
        self.probes = 0

    def describe(self):
        return "fake", 1

    def segment(self, images):
        import numpy as np

        self.calls.append(len(images))
        n = len(images)
        return {"mask_png_bytes": [b"m"] * n, "confidence_png_bytes": [b"c"] * n,
                "heights": np.ones(n, np.int32), "widths": np.ones(n, np.int32),
                "class_ids": np.zeros((n, 1, 1), np.uint8)}

    def probed_batch_size(self, sample):
        self.probes += 1
        return 3


def test_the_handler_splits_batches_into_calls_of_the_probed_size():
    from beam_jobs.handlers import SavedModelHandler
    from beam_jobs.sources import ImageItem

    handler = SavedModelHandler("unused", max_batch_size=8, call_size="auto")
    model = FakeSegmenter()
    items = [ImageItem(path=f"k{i}", data=b"x") for i in range(8)]
    results = handler.run_inference(items, model)
    assert model.calls == [3, 3, 2] and len(results) == 8
    assert [r.example.path for r in results] == [f"k{i}" for i in range(8)]
    assert model.probes == 1


def test_beam_flags(tmp_path):
    from beam_jobs import segment

    parser = segment.build_parser()
    common = ["--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "o")]
    args = parser.parse_args([*common, "--model-dir", "m", "--batch-size", "auto",
                              "--backend", "openvino"])
    segment._check_args(args, parser)
    assert (args.call_size, args.batch_size, args.min_batch_size) == ("auto", 8, 8)
    handler = segment.make_handler(args)
    assert handler._call_size == "auto" and handler._backend == "openvino"
    args = parser.parse_args([*common, "--mode", "grpc", "--server", "h:1", "--model-name",
                              "m", "--batch-size", "auto"])
    from common.cli import UserError

    with pytest.raises(UserError, match="--batch-size auto is for --mode inprocess"):
        segment._check_args(args, parser)


def test_the_segmenter_probes_once_and_retries_after_a_bad_sample():
    import threading

    from beam_jobs.handlers import SavedModelSegmenter

    calls = []

    def segment(images):
        calls.append(len(images))
        if b"bad" in images:
            raise ValueError("cannot decode")
        return {}

    segmenter = SavedModelSegmenter.__new__(SavedModelSegmenter)  # no model to load
    segmenter._batch_size, segmenter._probe_lock = None, threading.Lock()
    segmenter.segment = segment
    assert segmenter.probed_batch_size([b"bad", b"ok"]) == 1  # failed: calls of 1 for now
    assert calls == [1]
    calls.clear()
    chosen = segmenter.probed_batch_size([b"ok"])
    assert chosen in batch_size.CANDIDATES
    # one untimed and two timed calls at each candidate size, then never again
    assert calls == [n for n in batch_size.CANDIDATES for _ in range(3)]
    assert segmenter.probed_batch_size([b"ok"]) == chosen and len(calls) == 12

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
    """Stands in for SavedModelSegmenter: records each call's size and advances a fake clock
    by the call's cost (SlowerWhenBatched's: batch 1 is fastest); the mask it returns is the
    image's own bytes, so a result can be matched to its image. It refuses images b"bad"."""

    def __init__(self):
        self.calls: list[int] = []
        self.fake = SlowerWhenBatched(0.0, 0.0)  # a first call at each size costs 10 s more

    def describe(self):
        return "fake", 1

    def segment(self, images):
        import numpy as np

        self.calls.append(len(images))
        if b"bad" in images:
            raise ValueError("cannot decode")
        self.fake.call(len(images))
        n = len(images)
        return {"mask_png_bytes": list(images), "confidence_png_bytes": [b"c"] * n,
                "heights": np.ones(n, np.int32), "widths": np.ones(n, np.int32),
                "class_ids": np.zeros((n, 1, 1), np.uint8)}


def _batches(n_batches: int, size: int = 8, bad=()):
    from beam_jobs.sources import ImageItem

    return [[ImageItem(path=f"k{b}_{i}", data=b"bad" if (b, i) in bad else f"{b}_{i}".encode())
             for i in range(size)] for b in range(n_batches)]


def _handler_with_probe(model, probe):
    from beam_jobs import handlers

    handler = handlers.SavedModelHandler("unused", max_batch_size=8, call_size="auto")
    handlers._PROBES[model] = probe  # what handler._probe(model) would make, on a fake clock
    return handler


def test_the_handler_splits_batches_into_calls_of_the_probed_size():
    model = FakeSegmenter()
    probe = batch_size.Probe()
    probe.result = {"batch_size": 3, "seconds_per_image": {}}
    handler = _handler_with_probe(model, probe)
    results = handler.run_inference(_batches(1)[0], model)
    assert model.calls == [3, 3, 2] and len(results) == 8
    assert [r.example.path for r in results] == [f"k0_{i}" for i in range(8)]
    assert all(r.inference.mask_png == r.example.data for r in results)


def test_the_probe_measures_on_the_jobs_own_images_and_keeps_their_results():
    model = FakeSegmenter()
    probe = batch_size.Probe(clock=model.fake.clock)
    handler = _handler_with_probe(model, probe)
    results = [r for batch in _batches(7) for r in handler.run_inference(batch, model)]
    # The plan (1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8; the first of each size untimed) over
    # batches of 8: what does not fit a batch's rest goes in one untimed call. Batch 1 costs
    # least per image on this fake, so the seventh batch runs image by image.
    assert model.calls == [1, 1, 1, 2, 2, 1,  2, 4, 2,  4, 4,  8,  8,  8,
                           1, 1, 1, 1, 1, 1, 1, 1]
    assert probe.batch_size == 1
    assert probe.result["seconds_per_image"] == pytest.approx({1: 1.0, 2: 1 + 0.15 / 7,
                                                               4: 1 + 0.45 / 7, 8: 1.15})
    # every image was segmented exactly once, and its result is its own
    assert [r.example.path for r in results] == [f"k{b}_{i}" for b in range(7) for i in range(8)]
    assert all(r.inference.mask_png == r.example.data for r in results)


def test_a_bad_image_while_probing_fails_alone_and_its_call_is_not_timed():
    from beam_jobs.handlers import InferenceFailure

    model = FakeSegmenter()
    probe = batch_size.Probe(candidates=(1, 2), repeats=1, clock=model.fake.clock)
    handler = _handler_with_probe(model, probe)
    # plan: 1 untimed, 1 timed, 2 untimed, 2 timed; the timed 2 meets the bad image
    batch = _batches(1, size=8, bad={(0, 4)})[0]
    results = handler.run_inference(batch, model)
    # 1, 1, 2, then the 2 holding the bad image fails and is retried image by image; the
    # step is made again on the last two images.
    assert model.calls == [1, 1, 2, 2, 1, 1, 2]
    assert probe.batch_size in (1, 2) and probe.result["seconds_per_image"][2] == \
        pytest.approx(1 + 0.15 / 7)
    assert [isinstance(r.inference, InferenceFailure) for r in results] == \
        [False, False, False, False, True, False, False, False]
    assert all(r.inference.mask_png == r.example.data for i, r in enumerate(results) if i != 4)


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

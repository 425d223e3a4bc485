"""What every section shares: timing with warm-up and percentiles, progress lines, the model
under test (its SavedModel, metadata and a Keras twin with the same weights) and the images."""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import pathlib
import sys
import time
from typing import Callable

import numpy as np
from PIL import Image

from model.data.image_io import read_image
from model.data.synthetic import render_scene

KITTI_SIZE = (375, 1242)  # (H, W) of most KITTI road images; every benchmark image has it
REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("FCNSEG_DATA", REPO.parent / "shared" / "data"))


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the final table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- timing

def percentiles(seconds) -> dict:
    """Latency summary in milliseconds. With few samples p95/p99 are close to the maximum."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"n": int(a.size), "p50_ms": float(np.percentile(a, 50)),
            "p95_ms": float(np.percentile(a, 95)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "max_ms": float(a.max())}


def measure(fn: Callable[[], object], warmup: int = 1, repeats: int = 5,
            min_seconds: float = 0.0, max_repeats: int | None = None) -> list[float]:
    """Seconds per call of fn after `warmup` untimed calls: at least `repeats` calls, more
    (up to max_repeats) until `min_seconds` of timed work have passed."""
    return measure_in_turns({0: fn}, warmup, repeats, min_seconds, max_repeats)[0]


def measure_in_turns(fns: dict, warmup: int = 1, repeats: int = 5, min_seconds: float = 0.0,
                     max_repeats: int | None = None) -> dict:
    """measure() for several functions at once, one call of each per round, so that a clock
    that climbs during a section (as a VM's does) or a busy moment favours none of them.
    Each gets at least `repeats` calls, more (up to max_repeats) until `min_seconds` of its
    own timed work; {name: seconds per call}."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict = {name: [] for name in fns}
    cap = max_repeats or repeats

    def wants_more(name) -> bool:
        t = times[name]
        return len(t) < repeats or (sum(t) < min_seconds and len(t) < cap)
    while any(wants_more(name) for name in fns):
        for name, fn in fns.items():
            if wants_more(name):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def throughput(times, images_per_call: int) -> dict:
    """images/s from the median call time, plus the latency percentiles of the calls."""
    median = float(np.median(times))
    return {"images_per_s": images_per_call / median if median > 0 else None,
            "ms_per_image": median * 1e3 / images_per_call, **percentiles(times)}


# --------------------------------------------------------------------------- the model

@dataclasses.dataclass
class ModelUnderTest:
    """An exported version: path, metadata, geometry; loaded and rebuilt lazily."""
    path: pathlib.Path
    metadata: dict

    @property
    def name(self) -> str:
        return str(self.metadata.get("model_name") or self.path.parent.name or "fcn8s")

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.metadata["image_size"]
        return int(h), int(w)

    @property
    def num_classes(self) -> int:
        return int(self.metadata.get("num_classes") or len(self.metadata["class_names"]))

    @property
    def fc_width(self) -> int:
        return int(self.metadata.get("fc_width") or 4096)

    @functools.cached_property
    def loaded(self):
        from model.exported import load_exported
        return load_exported(self.path)

    def runtime(self, backend: str = "tensorflow"):
        """The export loaded for `backend` (model.backends), once per run."""
        from model.exported import load_exported

        if backend == "tensorflow":
            return self.loaded
        cache = self.__dict__.setdefault("_runtimes", {})
        if backend not in cache:
            start = time.perf_counter()
            cache[backend] = load_exported(self.path, backend=backend)
            log(f"loaded for {backend} in {time.perf_counter() - start:.1f} s (conversion "
                f"included)")
        return cache[backend]

    def keras_model(self, input_shape=None):
        """The FCN-8s with this version's weights (read from the SavedModel's variables), at
        `input_shape` (default: the training geometry). Used where the serving graph's fixed
        resize would hide the network's own cost (FLOPs, image-size scaling, training)."""
        from model.fcn8s import build_fcn8s

        shape = tuple(input_shape or (*self.image_size, 3))
        model = build_fcn8s(self.num_classes, shape, fc_width=self.fc_width,
                            normalization=self.metadata.get("normalization") or "caffe")
        saved = list(self.loaded.module.model_variables)
        if len(saved) != len(model.variables) or any(
                tuple(a.shape) != tuple(b.shape) for a, b in zip(model.variables, saved)):
            raise ValueError(f"{self.path}: its variables do not match build_fcn8s("
                             f"{self.num_classes}, fc_width={self.fc_width}); was it exported "
                             f"from a model.fcn8s model?")
        for target, source in zip(model.variables, saved):
            target.assign(source)
        return model

    def config(self) -> dict:
        """A run config to re-export this model with (export_saved_model's `config`)."""
        keys = ("dataset", "task", "categories", "class_names", "colours", "label_format",
                "normalization", "fc_width", "num_classes", "encoder_weights")
        return {**{k: self.metadata.get(k) for k in keys}, "image_size": list(self.image_size)}


def resolve_version(model_dir) -> pathlib.Path:
    """A version folder as is; a model folder (models/fcn8s): its newest version."""
    from contract.layout import resolve_version_dir

    try:
        return resolve_version_dir(model_dir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. Run `make train export` first, or pass --full-size or "
                                f"--model-dir.") from None


def open_model(model_dir) -> ModelUnderTest:
    import json

    from contract.layout import METADATA_PATH

    path = resolve_version(model_dir)
    meta_path = path / METADATA_PATH
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: missing; the benchmark needs the metadata that "
                                f"`python -m export` writes (geometry, classes, fc_width)")
    return ModelUnderTest(path, json.loads(meta_path.read_text()))


def export_random_model(model_base, image_size=(160, 576), fc_width: int = 4096,
                        num_classes: int = 2, seed: int = 0) -> pathlib.Path:
    """Build an FCN-8s with random weights and export it (for --full-size). Its score layers
    get random weights too (FCN starts them at zero, which would make every mask one class)."""
    import keras

    from export.savedmodel import export_saved_model
    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(seed)
    model = build_fcn8s(num_classes, (*image_size, 3), fc_width=fc_width)
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.startswith("score_"):
            value = np.asarray(weight)
            weight.assign(rng.normal(0.0, 0.01, value.shape).astype(value.dtype))
    names = ["non-road", "road"] if num_classes == 2 else [f"class_{i}" for i in
                                                            range(num_classes)]
    config = {"dataset": "synthetic", "task": "road", "class_names": names,
              "colours": [[0, 0, 0], [255, 0, 255]][:num_classes] if num_classes == 2 else None,
              "label_format": "ids", "normalization": "caffe", "fc_width": fc_width,
              "num_classes": num_classes, "encoder_weights": None,
              "image_size": list(image_size)}
    return export_saved_model(model, config, model_base, "fcn8s", version=1,
                              source="random weights (benchmarks --full-size)")


# --------------------------------------------------------------------------- images

@dataclasses.dataclass
class BenchImages:
    """Benchmark inputs, all KITTI_SIZE: decoded arrays and their PNG files' bytes."""
    arrays: list          # uint8 [H, W, 3]
    blobs: list           # encoded PNG bytes of the same images
    source: str           # where they came from, for the report

    def batch(self, n: int, start: int = 0) -> np.ndarray:
        return np.stack([self.arrays[(start + i) % len(self.arrays)] for i in range(n)])

    def blob_batch(self, n: int, start: int = 0) -> list:
        return [self.blobs[(start + i) % len(self.blobs)] for i in range(n)]


def kitti_images_dir() -> pathlib.Path | None:
    folder = SHARED_DATA / "kitti_road" / "training" / "image_2"
    return folder if folder.is_dir() and any(folder.glob("*.png")) else None


def load_images(limit: int = 36) -> BenchImages:
    """The KITTI road training images (resized to exactly 1242x375 where they differ, and
    re-encoded then), else synthetic road scenes of that size."""
    folder = kitti_images_dir()
    arrays, blobs = [], []
    if folder is not None:
        for path in sorted(folder.glob("*.png"))[:limit]:
            image = read_image(path)
            if image.shape[:2] == KITTI_SIZE:
                blob = path.read_bytes()
            else:
                image = np.asarray(Image.fromarray(image).resize(KITTI_SIZE[::-1],
                                                                 Image.BILINEAR))
                buffer = io.BytesIO()
                Image.fromarray(image).save(buffer, format="PNG")
                blob = buffer.getvalue()
            arrays.append(image)
            blobs.append(blob)
        return BenchImages(arrays, blobs, f"KITTI road training images ({len(arrays)}, "
                                          f"{folder})")
    for i in range(min(limit, 8)):
        image, _ = render_scene(np.random.default_rng([7, i]), *KITTI_SIZE)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        arrays.append(image)
        blobs.append(buffer.getvalue())
    return BenchImages(arrays, blobs, f"synthetic road scenes ({len(arrays)}; no KITTI "
                                      f"samples at {SHARED_DATA})")

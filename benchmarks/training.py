"""Training: images/s of Keras training steps at the training geometry (random data, the
project's optimizer and loss) and of the tf.data input pipeline alone (model.data.pipeline),
which must be several times faster so that it never starves the model."""
from __future__ import annotations

import tempfile
import time

import numpy as np

from benchmarks.common import KITTI_SIZE, SHARED_DATA, log, measure, throughput
from model.data.kitti import list_pairs
from model.data.pipeline import make_dataset
from model.data.synthetic import generate
from model.train import compile_for_training, make_optimizer


def training_steps(mut, args) -> dict:
    # The training recipe's defaults (Adam 1e-4, clip norm 1.0; L2 lives in the model).
    model = compile_for_training(mut.keras_model(), mut.num_classes,
                                 make_optimizer("adam", 1e-4, "constant", 1, clip_norm=1.0))
    rng = np.random.default_rng(0)
    b, (h, w) = args.train_batch, mut.image_size
    x = rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32)
    y = rng.integers(0, mut.num_classes, (b, h, w)).astype(np.uint8)
    # The first step traces and compiles the train function: it is the warm-up.
    times = measure(lambda: model.train_on_batch(x, y), warmup=max(args.warmup, 1),
                    repeats=args.train_steps)
    return {"batch": b, "image_size": [h, w], "steps": len(times), **throughput(times, b)}


def _pairs(tmp: str):
    kitti = SHARED_DATA / "kitti_road"
    if (kitti / "training" / "image_2").is_dir():
        return list_pairs(kitti), "kitti", f"KITTI road training pairs ({kitti})"
    pairs = generate(tmp, 8, *KITTI_SIZE, progress=False)
    return pairs, "ids", "synthetic road scenes (no KITTI samples)"


def pipeline_rate(mut, args) -> dict:
    """Batches of make_dataset(training=True): decode, scale-crop, flip, colour jitter."""
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-data-") as tmp:
        pairs, label_format, source = _pairs(tmp)
        ds = make_dataset(pairs, label_format, mut.image_size, args.train_batch, training=True)
        batches_per_pass = -(-len(pairs) // args.train_batch)
        it = iter(ds.repeat())
        start = time.perf_counter()
        for _ in range(batches_per_pass):  # the first pass decodes the files and fills the cache
            next(it)
        first_pass = time.perf_counter() - start
        n_batches = max(args.pipeline_batches, 1)
        start = time.perf_counter()
        images = 0
        for _ in range(n_batches):
            images += int(next(it)[0].shape[0])
        wall = time.perf_counter() - start
    return {"source": source, "pairs": len(pairs), "batch": args.train_batch,
            "first_pass_images_per_s": len(pairs) / first_pass,
            "images_per_s": images / wall, "batches": n_batches}


def run(mut, args) -> dict:
    log(f"training: {args.train_steps} Keras train steps of batch {args.train_batch} at "
        f"{mut.image_size[0]}x{mut.image_size[1]}")
    steps = training_steps(mut, args)
    log(f"training: {steps['images_per_s']:.2f} images/s; now the tf.data pipeline alone")
    data = pipeline_rate(mut, args)
    ratio = data["images_per_s"] / steps["images_per_s"]
    log(f"training: input pipeline {data['images_per_s']:.1f} images/s = {ratio:.1f}x training")
    return {"train_step": steps, "input_pipeline": data, "pipeline_vs_training": ratio}

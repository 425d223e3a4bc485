"""Training: the KITTI recipe's training step against the floor, and the tf.data input
pipeline alone (model.data.pipeline), which must be several times faster so that it never
starves the model.

The step is measured at the recipe's geometry (FCN-8s, fc width 512, 160x576, the project's
optimizer, loss and L2; random weights and data), whatever model is under test, with XLA on and
off, interleaved (model.train's --jit-compile auto picks one per machine), and the float32 floor measured in the same section.
FLOPs of a step: 3x the forward FLOPs of every Conv2D and Conv2DTranspose (benchmarks.floor,
2 FLOPs per multiply-add) times the batch; one for the forward pass, one for the gradient
with respect to each layer's input and one for the gradient of its kernel. Element-wise work
(ReLU, pooling, softmax, Adam) is not counted.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from benchmarks import floor
from benchmarks.common import KITTI_SIZE, SHARED_DATA, log, throughput
from model.data.kitti import list_pairs
from model.data.pipeline import make_dataset
from model.data.synthetic import generate
from model.train import compile_for_training, make_optimizer, resolve_jit_compile

# The KITTI recipe's geometry (Makefile KITTI_ARGS, docs/training.md).
RECIPE_SIZE = (160, 576)
RECIPE_FC_WIDTH = 512
BACKWARD_FACTOR = 3  # forward + gradient of the inputs + gradient of the kernels


def _recipe_model(jit_compile: bool, weights=None):
    import keras

    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(0)
    model = build_fcn8s(2, (*RECIPE_SIZE, 3), fc_width=RECIPE_FC_WIDTH, encoder_weights=None,
                        weight_decay=5e-4)
    if weights is not None:
        model.set_weights(weights)
    # The recipe's optimizer: Adam 3e-4, poly schedule, clip norm 1.0 (L2 lives in the model).
    train_model = compile_for_training(model, 2,
                                       make_optimizer("adam", 3e-4, "poly", 140, clip_norm=1.0),
                                       jit_compile=jit_compile)
    return model, train_model


def training_steps(args) -> dict:
    """Seconds per step with XLA on and off, interleaved (on, off, on, off ...) so that both
    meet the same load on a shared machine; the first step of each traces and compiles."""
    base, xla = _recipe_model(jit_compile=True)
    _, plain = _recipe_model(jit_compile=False, weights=base.get_weights())
    step_flops = BACKWARD_FACTOR * args.train_batch * sum(floor.layer_flops(base).values())
    rng = np.random.default_rng(0)
    b, (h, w) = args.train_batch, RECIPE_SIZE
    x = rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32)
    y = (rng.uniform(size=(b, h, w)) < 0.3).astype(np.uint8)
    runs = {"xla": xla, "no_xla": plain}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(max(args.warmup, 1) + args.train_steps):
        for name, train_model in runs.items():
            start = time.perf_counter()
            train_model.train_on_batch(x, y)
            if i >= max(args.warmup, 1):
                times[name].append(time.perf_counter() - start)
    out = {"batch": b, "image_size": [h, w], "fc_width": RECIPE_FC_WIDTH,
           "step_gflop": step_flops / 1e9, "load_average": list(os.getloadavg())}
    for name, t in times.items():
        median = float(np.median(t))
        out[name] = {"steps": len(t), "seconds_per_step": median, "best_seconds": min(t),
                     "gflop_per_s": step_flops / median / 1e9, **throughput(t, b)}
    out["xla_speedup"] = out["no_xla"]["seconds_per_step"] / out["xla"]["seconds_per_step"]
    return out


def _against_floor(steps: dict, args) -> None:
    """The float32 floor (best matmul or convolution rate, benchmarks.floor) measured right
    after the steps, and each configuration's share of it."""
    rate = max(floor.matmul_rate(args.matmul_size, "float32")["best_flops_per_s"],
               floor.conv_rate("float32")["best_flops_per_s"])
    steps["floor_gflop_per_s"] = rate / 1e9
    for name in ("xla", "no_xla"):
        steps[name]["share_of_floor"] = steps[name]["gflop_per_s"] * 1e9 / rate


def _pairs(tmp: str):
    kitti = SHARED_DATA / "kitti_road"
    if (kitti / "training" / "image_2").is_dir():
        return list_pairs(kitti), "kitti", f"KITTI road training pairs ({kitti})"
    pairs = generate(tmp, 8, *KITTI_SIZE, progress=False)
    return pairs, "ids", "synthetic road scenes (no KITTI samples)"


def pipeline_rate(args) -> dict:
    """Batches of make_dataset(training=True): decode, scale-crop, flip, colour jitter."""
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-data-") as tmp:
        pairs, label_format, source = _pairs(tmp)
        ds = make_dataset(pairs, label_format, RECIPE_SIZE, args.train_batch, training=True)
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
    h, w = RECIPE_SIZE
    log(f"training: {args.train_steps} train steps of batch {args.train_batch} at {h}x{w}, "
        f"fc width {RECIPE_FC_WIDTH}, XLA on and off interleaved")
    steps = training_steps(args)
    _against_floor(steps, args)
    for name in ("xla", "no_xla"):
        r = steps[name]
        log(f"training ({name}): {r['seconds_per_step']:.2f} s per step of "
            f"{steps['step_gflop']:.0f} GFLOP = {r['gflop_per_s']:.1f} GFLOP/s = "
            f"{r['share_of_floor'] * 100:.0f} % of the float32 floor "
            f"({steps['floor_gflop_per_s']:.1f} GFLOP/s)")
    # The headline is the configuration model.train picks on this machine.
    steps["default"] = "xla" if resolve_jit_compile("auto", mixed_precision=False) else "no_xla"
    default = steps[steps["default"]]
    steps.update({k: default[k] for k in ("steps", "images_per_s", "ms_per_image", "p50_ms",
                                          "p95_ms", "p99_ms")})
    log(f"training: {default['images_per_s']:.2f} images/s; now the tf.data pipeline alone")
    data = pipeline_rate(args)
    ratio = data["images_per_s"] / default["images_per_s"]
    log(f"training: input pipeline {data['images_per_s']:.1f} images/s = {ratio:.1f}x training")
    return {"train_step": steps, "input_pipeline": data, "pipeline_vs_training": ratio}

"""Training: the KITTI recipe's training step against the floor, and the tf.data input
pipeline alone (model.data.pipeline), which must be several times faster so that it never
starves the model.

The step is measured at the recipe's geometry (`make train-kitti`: FCN-8s, fc width 512, random
288x960 windows of 384x1248 images, batch 2, the project's optimizer, loss and L2; random
weights and data), whatever model is under test: in float32 with XLA on and off and, where
model.train's `--mixed-precision auto` picks it (AMX or AVX512-BF16), in bfloat16, all
interleaved so that they meet the same load; each against the floor of its own precision,
measured in the same section. FLOPs of a step: 3x the forward FLOPs of every Conv2D and
Conv2DTranspose (benchmarks.floor, 2 FLOPs per multiply-add) times the batch; one for the
forward pass, one for the gradient with respect to each layer's input and one for the gradient
of its kernel. Element-wise work (ReLU, pooling, softmax, Adam) is not counted.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from benchmarks import floor
from benchmarks.common import KITTI_SIZE, SHARED_DATA, log, measure_in_turns, throughput
from model.data.kitti import list_pairs
from model.data.pipeline import make_dataset
from model.data.synthetic import generate
from model.train import (compile_for_training, make_optimizer, resolve_jit_compile,
                         resolve_mixed_precision)

# The KITTI recipe's geometry (Makefile KITTI_ARGS, docs/training.md): whole images at
# RECIPE_SIZE, training windows of RECIPE_CROP.
RECIPE_SIZE = (384, 1248)
RECIPE_CROP = (288, 960)
RECIPE_FC_WIDTH = 512
BACKWARD_FACTOR = 3  # forward + gradient of the inputs + gradient of the kernels
# The configurations timed, in the order they step, and the precision each computes in.
DTYPES = {"xla": "float32", "no_xla": "float32", "bfloat16": "bfloat16"}


def _recipe_model(jit_compile: bool, bfloat16: bool = False, weights=None):
    import keras

    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(0)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bfloat16 else "float32")
    try:
        model = build_fcn8s(2, (*RECIPE_CROP, 3), fc_width=RECIPE_FC_WIDTH,
                            encoder_weights=None, weight_decay=5e-4)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    if weights is not None:
        model.set_weights(weights)
    # The recipe's optimizer: Adam 3e-4, poly schedule, clip norm 1.0 (L2 lives in the model).
    train_model = compile_for_training(model, 2,
                                       make_optimizer("adam", 3e-4, "poly", 2500, clip_norm=1.0),
                                       jit_compile=jit_compile)
    return model, train_model


def default_configuration() -> str:
    """The step model.train runs here with --mixed-precision auto and --jit-compile auto."""
    if resolve_mixed_precision("auto", on_gpu=False):
        return "bfloat16"
    return "xla" if resolve_jit_compile("auto", mixed_precision=False) else "no_xla"


def training_steps(args) -> dict:
    """Seconds per step of each configuration, interleaved (xla, no_xla, bfloat16, xla ...)
    so that all meet the same load on a shared machine; the first step of each traces and
    compiles and is not timed."""
    default = default_configuration()
    base, xla = _recipe_model(jit_compile=True)
    weights = base.get_weights()
    runs = {"xla": xla, "no_xla": _recipe_model(jit_compile=False, weights=weights)[1]}
    if default == "bfloat16":
        runs["bfloat16"] = _recipe_model(jit_compile=False, bfloat16=True, weights=weights)[1]
    step_flops = BACKWARD_FACTOR * args.train_batch * sum(floor.layer_flops(base).values())
    rng = np.random.default_rng(0)
    b, (h, w) = args.train_batch, RECIPE_CROP
    x = rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32)
    y = (rng.uniform(size=(b, h, w)) < 0.3).astype(np.uint8)
    times = measure_in_turns({name: (lambda m=m: m.train_on_batch(x, y))
                              for name, m in runs.items()},
                             warmup=max(args.warmup, 1), repeats=args.train_steps)
    out = {"batch": b, "image_size": [h, w], "whole_image_size": list(RECIPE_SIZE),
           "fc_width": RECIPE_FC_WIDTH, "step_gflop": step_flops / 1e9,
           "load_average": list(os.getloadavg()), "default": default}
    for name, t in times.items():
        median = float(np.median(t))
        out[name] = {"steps": len(t), "seconds_per_step": median, "best_seconds": min(t),
                     "dtype": DTYPES[name],
                     "gflop_per_s": step_flops / median / 1e9, **throughput(t, b)}
    out["xla_speedup"] = out["no_xla"]["seconds_per_step"] / out["xla"]["seconds_per_step"]
    return out


def _against_floor(steps: dict, args) -> None:
    """The floor of each precision (best matmul or convolution rate, benchmarks.floor)
    measured right after the steps, and each configuration's share of its own."""
    timed = [name for name in DTYPES if name in steps]
    for dtype in sorted({DTYPES[name] for name in timed}):
        rate = max(floor.matmul_rate(args.matmul_size, dtype)["best_flops_per_s"],
                   floor.conv_rate(dtype)["best_flops_per_s"])
        steps[f"floor_{dtype}_gflop_per_s"] = rate / 1e9
    for name in timed:
        r = steps[name]
        r["floor_gflop_per_s"] = steps[f"floor_{r['dtype']}_gflop_per_s"]
        r["share_of_floor"] = r["gflop_per_s"] / r["floor_gflop_per_s"]


def _pairs(tmp: str):
    kitti = SHARED_DATA / "kitti_road"
    if (kitti / "training" / "image_2").is_dir():
        return list_pairs(kitti), "kitti", f"KITTI road training pairs ({kitti})"
    pairs = generate(tmp, 8, *KITTI_SIZE, progress=False)
    return pairs, "ids", "synthetic road scenes (no KITTI samples)"


def pipeline_rate(args) -> dict:
    """Batches of make_dataset(training=True) as the recipe makes them: decode, scale, crop,
    flip, colour jitter."""
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-data-") as tmp:
        pairs, label_format, source = _pairs(tmp)
        ds = make_dataset(pairs, label_format, RECIPE_SIZE, args.train_batch, training=True,
                          crop_size=RECIPE_CROP)
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
    h, w = RECIPE_CROP
    log(f"training: {args.train_steps} train steps of batch {args.train_batch} at {h}x{w}, "
        f"fc width {RECIPE_FC_WIDTH}: float32 with XLA on and off"
        f"{' and bfloat16' if default_configuration() == 'bfloat16' else ''}, interleaved")
    steps = training_steps(args)
    _against_floor(steps, args)
    for name in (n for n in DTYPES if n in steps):
        r = steps[name]
        log(f"training ({name}): {r['seconds_per_step']:.2f} s per step of "
            f"{steps['step_gflop']:.0f} GFLOP = {r['gflop_per_s']:.1f} GFLOP/s = "
            f"{r['share_of_floor'] * 100:.0f} % of the {r['dtype']} floor "
            f"({r['floor_gflop_per_s']:.1f} GFLOP/s)")
    # The headline is the configuration model.train picks on this machine.
    default = steps[steps["default"]]
    steps.update({k: default[k] for k in ("steps", "images_per_s", "ms_per_image", "p50_ms",
                                          "p95_ms", "p99_ms", "dtype")})
    log(f"training: {default['images_per_s']:.2f} images/s ({steps['default']}, model.train's "
        f"choice here); now the tf.data pipeline alone")
    data = pipeline_rate(args)
    ratio = data["images_per_s"] / default["images_per_s"]
    log(f"training: input pipeline {data['images_per_s']:.1f} images/s = {ratio:.1f}x training")
    return {"train_step": steps, "input_pipeline": data, "pipeline_vs_training": ratio}

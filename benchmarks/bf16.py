"""bfloat16: the export option --compute-dtype bfloat16 (export.precision) against float32 on
the same weights: speed ratio of serving_default and the share of pixels whose class agrees.
The model's weights are re-exported twice (float32 and bfloat16) into a temporary folder."""
from __future__ import annotations

import tempfile

import numpy as np

from benchmarks.common import log, measure_in_turns, throughput
from common.cpu import bfloat16_advice, this_machine
from export.savedmodel import export_saved_model
from model.exported import load_exported

TARGET_SPEEDUP = 1.8
TARGET_AGREEMENT = 0.995


def run(mut, images, args) -> dict:
    cpu = this_machine()
    if cpu.bfloat16_capped_away:
        reason = f"oneDNN is capped at {cpu.isa_cap}, below this CPU's bfloat16 unit"
        log(f"bfloat16: not measured: {reason}")
        return {"skipped": reason}
    keras_model = mut.keras_model()
    config = mut.config()
    batch = args.bf16_batch
    n_images = min(len(images.arrays), args.bf16_images)
    out = {"batch": batch, "images_compared": n_images}
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-bf16-") as tmp:
        loaded, class_ids = {}, {}
        for dtype in ("float32", "bfloat16"):
            log(f"bfloat16: exporting the model with --compute-dtype {dtype}")
            path = export_saved_model(keras_model, config, tmp, f"fcn8s_{dtype}",
                                      version=1, compute_dtype=dtype)
            loaded[dtype] = load_exported(path)
        # The two are timed in turns, so that both see the same machine load.
        def caller(model):
            counter = iter(range(10**9))
            return lambda: model.segment(images.batch(batch, next(counter) * batch))
        samples = measure_in_turns({dtype: caller(m) for dtype, m in loaded.items()},
                                   warmup=args.warmup, repeats=args.repeats,
                                   min_seconds=args.min_seconds, max_repeats=args.max_repeats)
        for dtype, model in loaded.items():
            out[dtype] = throughput(samples[dtype], batch)
            log(f"bfloat16: {dtype} {out[dtype]['images_per_s']:.2f} images/s")
            class_ids[dtype] = np.concatenate([
                model.segment(images.batch(min(batch, n_images - i), i))["class_ids"]
                for i in range(0, n_images, batch)])
    agree = float(np.mean(class_ids["float32"] == class_ids["bfloat16"]))
    speedup = out["bfloat16"]["images_per_s"] / out["float32"]["images_per_s"]
    log(f"bfloat16: {speedup:.2f}x float32, {agree * 100:.2f}% of pixels agree")
    unit = this_machine().bfloat16_unit()
    # Said plainly: the flags predict it (no unit), and the measurement confirms it.
    verdict = bfloat16_advice() or (
        f"bfloat16 is SLOWER than float32 here ({speedup:.2f}x) although the CPU has {unit}: "
        f"export float32 for this machine" if speedup < 1 else
        f"bfloat16 is {speedup:.2f}x float32 on this CPU ({unit})")
    log(f"bfloat16: {verdict}")
    return {**out, "speedup": speedup, "pixel_agreement": agree,
            "bfloat16_unit": unit, "verdict": verdict, "slower_than_float32": speedup < 1,
            "target_speedup": TARGET_SPEEDUP, "target_agreement": TARGET_AGREEMENT,
            "meets_speed_target": speedup >= TARGET_SPEEDUP,
            "meets_agreement_target": agree >= TARGET_AGREEMENT}

"""Scaling: how cost grows with work.

- With the number of images: the Beam job (in-process mode) at 1x, 4x, 16x N images; a line
  fit splits its time into a fixed start-up cost and a marginal cost per image, which is what
  sizing a cluster needs.
- With the image size: the network at 0.5x, 1x, 2x its geometry (sides rounded to multiples
  of 32). The serving signatures resize every image to the training geometry, so there the
  network's cost does not depend on the input size; this shows what a model exported at
  another geometry would cost. FLOPs grow with the pixel count (exactly, for sides that are
  multiples of 32).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from benchmarks import beam
from benchmarks.common import log, measure, throughput


def scaled_size(size, scale: float) -> tuple[int, int]:
    return tuple(max(32, int(round(s * scale / 32)) * 32) for s in size)


def by_images(mut, images, args) -> dict:
    rows = []
    for factor in args.scaling_factors:
        n = args.scaling_images * factor
        log(f"scaling: Beam in-process over {n} images")
        rows.append({"factor": factor, **beam.run_job(mut, images, n, "inprocess",
                                                       args.beam_batch)})
        log(f"scaling: {n} images in {rows[-1]['wall_s']:.1f} s")
    fit = beam.fit_line([r["images"] for r in rows], [r["wall_s"] for r in rows]) \
        if len(rows) >= 2 else {}
    return {"results": rows, "fit": fit}


def by_image_size(mut, args, flops_at_geometry: int | None) -> dict:
    model = mut.keras_model((None, None, 3))
    forward = tf.function(lambda x: model(x, training=False))
    base = mut.image_size
    rows = []
    rng = np.random.default_rng(0)
    for scale in args.scales:
        h, w = scaled_size(base, scale)
        x = tf.constant(rng.uniform(0, 255, (1, h, w, 3)).astype(np.float32))
        times = measure(lambda: forward(x).numpy(), warmup=args.warmup, repeats=args.repeats,
                        min_seconds=args.min_seconds, max_repeats=args.max_repeats)
        row = {"scale": scale, "image_size": [h, w], "pixels": h * w, **throughput(times, 1)}
        if flops_at_geometry:
            row["flops_per_image"] = flops_at_geometry * (h * w) / (base[0] * base[1])
            row["achieved_flops_per_s"] = row["flops_per_image"] * row["images_per_s"]
        rows.append(row)
        log(f"scaling: network at {h}x{w}: {row['ms_per_image']:.0f} ms per image")
    return {"results": rows}


def run(mut, images, args, flops_at_geometry: int | None) -> dict:
    return {"by_images": by_images(mut, images, args),
            "by_image_size": by_image_size(mut, args, flops_at_geometry)}

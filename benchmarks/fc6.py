"""fc6 in the serving graph: TensorFlow's 7x7 convolution against one matmul of its patches
(export.precision.PatchConv2D, what the export uses). The network alone (no decode or resize)
at the model's geometry, both copies from the same weights, called alternately at each batch
size so that both meet the same load; and how far apart their probabilities are."""
from __future__ import annotations

import numpy as np

from benchmarks.common import log, measure_in_turns, throughput


def run(mut, args) -> dict:
    import tensorflow as tf

    from export.precision import serving_copy

    keras_model = mut.keras_model()
    copies = {"convolution": serving_copy(keras_model, matmul_layers=()),
              "matmul": serving_copy(keras_model)}
    h, w = mut.image_size
    spec = tf.TensorSpec([None, h, w, 3], tf.float32)
    calls = {name: tf.function(lambda x, m=m: m(x, training=False), input_signature=[spec])
             for name, m in copies.items()}
    rng = np.random.default_rng(0)
    results = []
    for batch in args.batch_sizes:
        x = tf.constant(rng.uniform(0, 255, (batch, h, w, 3)).astype(np.float32))
        outputs = {name: f(x).numpy() for name, f in calls.items()}  # traces, warms up
        times = measure_in_turns({name: (lambda f=f: f(x).numpy()) for name, f in calls.items()},
                                 warmup=0, repeats=max(args.repeats, 2))
        row = {"batch": batch,
               "max_probability_difference": float(np.abs(outputs["convolution"] -
                                                          outputs["matmul"]).max())}
        for name, t in times.items():
            row[name] = throughput(t, batch)
        row["speedup"] = row["convolution"]["ms_per_image"] / row["matmul"]["ms_per_image"]
        results.append(row)
        log(f"fc6: batch {batch}: convolution {row['convolution']['ms_per_image']:.0f}, matmul "
            f"{row['matmul']['ms_per_image']:.0f} ms per image ({row['speedup']:.2f}x)")
    return {"image_size": [h, w], "fc_width": mut.fc_width, "results": results}

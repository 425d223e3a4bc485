"""The floor: FLOPs per image at the model's geometry and this machine's matmul rate.

FLOPs are counted twice: from the Keras layers' shapes (every Conv2D and Conv2DTranspose,
2 FLOPs per multiply-add) and from the traced graph with TensorFlow's profiler, which counts
Conv2D but has no FLOP statistics for the transposed convolutions, so the two must agree on
the Conv2D part. The best time per image is FLOPs / float32 rate: no path should beat it
on this hardware, and each path's efficiency is that floor divided by its time per image.
The rate is the best of a large matmul and a VGG-like convolution (TensorFlow runs them with
different kernels, and on some CPUs the convolution is the faster one).

A measured floor is only as good as the best kernel TensorFlow has on this machine: on a
2-core AMD Zen 3 its float32 matmul ran at one core's peak. So beside it stands the machine's
peak from its CPU flags (common.cpu: cores x FLOPs per cycle of the vector units x clock),
and every path is given as a share of both: the floor says how close a path is to what
TensorFlow can do here, the peak how close it is to what the hardware can do.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from benchmarks.common import log, measure
from common.cpu import this_machine


def layer_flops(keras_model) -> dict:
    """{layer name: FLOPs for one image} of the convolutions, from their output shapes."""
    flops = {}
    for layer in keras_model.layers:
        if isinstance(layer, keras.layers.Conv2DTranspose):
            kh, kw, out_ch, in_ch = layer.kernel.shape
            _, h, w, _ = layer.input.shape  # each input pixel scatters a kernel
            flops[layer.name] = 2 * h * w * kh * kw * in_ch * out_ch
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, in_ch, out_ch = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            flops[layer.name] = 2 * h * w * kh * kw * in_ch * out_ch
    return {k: int(v) for k, v in flops.items()}


def graph_conv_flops(keras_model, image_size) -> int | None:
    """Conv2D FLOPs of one image counted by tf.compat.v1.profiler on the traced graph."""
    fn = tf.function(lambda x: keras_model(x, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec([1, *image_size, 3], tf.float32)).graph
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    info = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
    return int(info.total_float_ops) if info is not None else None


def flops_per_image(keras_model, image_size) -> dict:
    """Analytic FLOPs (total, per kind, per layer) with the graph cross-check."""
    per_layer = layer_flops(keras_model)
    transposed = {l.name for l in keras_model.layers
                  if isinstance(l, keras.layers.Conv2DTranspose)}
    conv = sum(v for k, v in per_layer.items() if k not in transposed)
    graph = graph_conv_flops(keras_model, image_size)
    return {"flops_per_image": sum(per_layer.values()), "conv2d_flops": conv,
            "conv2d_transpose_flops": sum(v for k, v in per_layer.items() if k in transposed),
            "graph_conv2d_flops": graph,
            # The profiler's Conv2D statistic differs slightly from 2*MACs (about 0.1 %).
            "graph_difference": (graph - conv) / conv if graph and conv else None,
            "graph_agrees": graph is not None and abs(graph - conv) <= 0.01 * conv,
            "per_layer": per_layer}


def matmul_rate(n: int, dtype: str, repeats: int = 3) -> dict:
    """FLOP/s of one n x n @ n x n tf.matmul in `dtype` (best and median of `repeats`)."""
    rng = np.random.default_rng(0)
    a = tf.constant(rng.standard_normal((n, n), dtype=np.float32), dtype=dtype)
    b = tf.constant(rng.standard_normal((n, n), dtype=np.float32), dtype=dtype)
    # .numpy() of one element forces the kernel to finish without copying n*n values.
    # At least 5 calls and a second of timing: the best call is the floor, and on a shared
    # machine a quiet moment must have a chance to occur.
    times = measure(lambda: tf.matmul(a, b)[0, 0].numpy(), warmup=1,
                    repeats=max(repeats, 5), min_seconds=1.0, max_repeats=100)
    flops = 2.0 * n ** 3
    return {"n": n, "dtype": dtype, "flops_per_s": flops / float(np.median(times)),
            "best_flops_per_s": flops / min(times), "seconds": [round(t, 4) for t in times]}


def conv_rate(dtype: str, repeats: int = 3) -> dict:
    """FLOP/s of a VGG-like 3x3 convolution (256 -> 256 channels on 64x64) in `dtype`:
    convolutions go through other kernels (oneDNN) than matmul and can run faster."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((1, 64, 64, 256), dtype=np.float32), dtype=dtype)
    k = tf.constant(rng.standard_normal((3, 3, 256, 256), dtype=np.float32), dtype=dtype)
    conv = tf.function(lambda: tf.nn.conv2d(x, k, 1, "SAME")[0, 0, 0, 0])
    times = measure(lambda: conv().numpy(), warmup=2, repeats=max(repeats, 5),
                    min_seconds=1.0, max_repeats=200)
    flops = 2.0 * 64 * 64 * 9 * 256 * 256
    return {"shape": "3x3 conv, 256->256 channels, 64x64", "dtype": dtype,
            "flops_per_s": flops / float(np.median(times)), "best_flops_per_s": flops / min(times)}


def kernel_rates(args) -> dict:
    """Matmul and convolution rates in float32, and in bfloat16 where it can be measured."""
    rates = {"matmul_float32": matmul_rate(args.matmul_size, "float32", args.repeats),
             "conv_float32": conv_rate("float32", args.repeats)}
    cpu = this_machine()
    if cpu.bfloat16_capped_away:
        log(f"floor: bfloat16 kernels not measured: oneDNN is capped at {cpu.isa_cap}, below "
            f"this CPU's bfloat16 unit (it would abort)")
    else:
        rates.update(matmul_bfloat16=matmul_rate(args.matmul_size, "bfloat16", args.repeats),
                     conv_bfloat16=conv_rate("bfloat16", args.repeats))
    return rates


def float32_rate(measurements: list[dict]) -> float:
    """FLOP/s of the floor: the best repetition of the faster float32 kernel over
    `measurements` (kernel_rates results)."""
    return max(m[f"{kind}_float32"]["best_flops_per_s"]
               for m in measurements for kind in ("matmul", "conv"))


def _floor(flops: int, measurements: list[dict]) -> dict:
    """The floor from every measurement of the kernels: the best repetition of the fastest
    kernel, in whichever measurement the machine was quietest."""
    def best(kind, dtype):
        return max(m[f"{kind}_{dtype}"]["best_flops_per_s"] for m in measurements)
    rate32 = float32_rate(measurements)
    out = {"float32_flops_per_s": rate32,
           "floor_ms_per_image": flops / rate32 * 1e3, "floor_images_per_s": rate32 / flops}
    if all("matmul_bfloat16" in m for m in measurements):
        rate16 = max(best("matmul", "bfloat16"), best("conv", "bfloat16"))
        out.update(bfloat16_flops_per_s=rate16, bf16_speedup=rate16 / rate32,
                   bf16_matmul_speedup=best("matmul", "bfloat16") / best("matmul", "float32"),
                   floor_bf16_ms_per_image=flops / rate16 * 1e3)
    out.update(_against_peak(flops, rate32, out.get("bfloat16_flops_per_s")))
    return out


def _against_peak(flops: int, rate32: float, rate16: float | None) -> dict:
    """The machine's peak (from its CPU flags), the time per image it allows, and the best
    measured kernel's share of it (how much of the hardware TensorFlow reaches here)."""
    cpu = this_machine()
    peak32, peak16 = cpu.peak_flops("float32"), cpu.peak_flops("bfloat16")
    return {"machine": cpu.as_dict(),
            "peak_float32_flops_per_s": peak32, "peak_bfloat16_flops_per_s": peak16,
            "peak_ms_per_image": flops / peak32 * 1e3 if peak32 else None,
            "peak_bf16_ms_per_image": flops / peak16 * 1e3 if peak16 else None,
            "kernel_share_of_peak": rate32 / peak32 if peak32 else None,
            "bf16_kernel_share_of_peak": rate16 / peak16 if peak16 and rate16 else None}


def run(mut, args) -> dict:
    h, w = mut.image_size
    log(f"floor: counting FLOPs of the model at {h}x{w}")
    counted = flops_per_image(mut.keras_model(), mut.image_size)
    log(f"floor: {counted['flops_per_image'] / 1e9:.2f} GFLOP per image; matmul "
        f"{args.matmul_size}^2 and 3x3 convolution")
    rates = kernel_rates(args)
    floor = _floor(counted["flops_per_image"], [rates])
    log(f"floor: {_rates(floor)} GFLOP/s -> best {floor['floor_ms_per_image']:.1f} ms "
        f"per image")
    _log_peak(floor)
    return {"image_size": [h, w], **counted, **rates, **floor}


def remeasure(section: dict, args) -> None:
    """Measure the kernels again at the end of the run and keep the better floor: on a shared
    machine the first measurement may have met a busy moment, and a floor set too low would
    make every path look more efficient than it is."""
    log("floor: measuring the kernels again at the end of the run")
    again = kernel_rates(args)
    first = {k: section[k] for k in again}
    section["first_measurement"] = first
    section["second_measurement"] = again
    section.update(_floor(section["flops_per_image"], [first, again]))
    log(f"floor: {_rates(section)} GFLOP/s (best of both) -> best "
        f"{section['floor_ms_per_image']:.1f} ms per image")


def _rates(floor: dict) -> str:
    rate16 = floor.get("bfloat16_flops_per_s")
    return (f"float32 {floor['float32_flops_per_s'] / 1e9:.1f}"
            + (f", bfloat16 {rate16 / 1e9:.1f}" if rate16 else ""))


def _log_peak(floor: dict) -> None:
    m = floor["machine"]
    if not floor["peak_float32_flops_per_s"]:
        log("floor: the machine's peak is unknown (no CPU flags or clock)")
        return
    log(f"floor: machine peak {m['cores']} cores x {m['float32_flops_per_cycle']} FLOP/cycle "
        f"x {m['clock_ghz']:.2f} GHz = {floor['peak_float32_flops_per_s'] / 1e9:.0f} GFLOP/s "
        f"float32; the best kernel reaches {floor['kernel_share_of_peak'] * 100:.0f} % of it")

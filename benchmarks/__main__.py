"""python -m benchmarks --model-dir models/fcn8s --output bench_out [options]

Runs every section (or those named with --sections), prints progress on stderr and the
summary table on stdout, and writes bench_out/bench.json, bench_out/bench.md and plots.
"""
from __future__ import annotations

import sys

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below loads TensorFlow

import argparse
import os
import pathlib
import tempfile
import time
import traceback

from benchmarks import (beam, bf16, breakdown, export_cost, fc6, floor, grpc_serving, inprocess,
                        report, scaling, training)
from benchmarks.common import export_random_model, load_images, log, open_model
from model import backends
from model.batch_size import AUTO, batch_size_or_auto

SECTIONS = ("floor", "inprocess", "fc6", "grpc", "beam", "training", "scaling", "export", "bf16",
            "profile")


def parse_args(argv=None) -> argparse.Namespace:
    p = cli.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the exported FCN-8s in process, behind gRPC and in the Beam "
                    "job, against the hardware's floor; see docs/benchmarks.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-dir", default="models/fcn8s",
                   help="exported version folder, or model folder (newest version)")
    p.add_argument("--full-size", action="store_true",
                   help="instead: a fc_width=4096 FCN-8s at 160x576 with random weights, "
                        "exported to a temporary folder")
    p.add_argument("--output", default="bench_out", type=pathlib.Path, help="output folder")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    g = p.add_argument_group("repetitions")
    g.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    g.add_argument("--repeats", type=int, default=3, help="timed calls at least")
    g.add_argument("--min-seconds", type=float, default=1.5,
                   help="keep timing a configuration until this much time has passed")
    g.add_argument("--max-repeats", type=int, default=20)
    g.add_argument("--images", type=int, default=36, help="benchmark images to load at most")
    g = p.add_argument_group("sizes")
    g.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    g.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4],
                   help="concurrent gRPC clients")
    g.add_argument("--grpc-requests", type=int, default=3, help="requests per gRPC client")
    g.add_argument("--grpc-batch", type=int, default=1, help="images per gRPC request")
    g.add_argument("--beam-images", type=int, default=216,
                   help="N images for the Beam job (the KITTI images repeated)")
    g.add_argument("--beam-batch", type=batch_size_or_auto, default=8,
                   help="Beam job --batch-size (a number, or auto: probed on this machine)")
    g.add_argument("--backends", nargs="+", choices=backends.BACKENDS,
                   default=[backends.TENSORFLOW],
                   help="runtimes timed in process (model.backends); the Beam job uses the "
                        "first")
    g.add_argument("--scaling-images", type=int, default=2,
                   help="base number of images for the Beam scaling runs")
    g.add_argument("--scaling-factors", type=int, nargs="+", default=[1, 4, 16])
    g.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                   help="image-size factors of the geometry for the network scaling")
    g.add_argument("--train-batch", type=int, default=2,
                   help="the KITTI recipe's batch (make train-kitti)")
    g.add_argument("--train-steps", type=int, default=3, help="timed Keras training steps")
    g.add_argument("--pipeline-batches", type=int, default=20,
                   help="timed batches of the tf.data input pipeline")
    g.add_argument("--matmul-size", type=int, default=4096, help="n of the n x n matmul")
    g.add_argument("--bf16-batch", type=int, default=4)
    g.add_argument("--bf16-images", type=int, default=8,
                   help="images whose pixels are compared float32 vs bfloat16")
    g.add_argument("--no-profile-beam", dest="profile_beam", action="store_false",
                   help="skip the cProfile run of the Beam job")
    args = p.parse_args(argv)
    for flag in ("images", "repeats", "max_repeats", "batch_sizes", "clients", "grpc_requests",
                 "grpc_batch", "beam_images", "beam_batch", "train_batch", "train_steps"):
        values = getattr(args, flag)
        if values == AUTO:
            continue
        if any(v < 1 for v in (values if isinstance(values, list) else [values])):
            raise cli.UserError(f"--{flag.replace('_', '-')}",
                                f"must be 1 or more, got {values}")
    for backend in args.backends:
        if not backends.available(backend):
            raise cli.UserError("--backends", f"{backend} is not installed here")
    args.sections = [s for s in SECTIONS if s in args.sections]  # run in the usual order
    return args


def run_sections(mut, images, args) -> dict:
    def flops():
        return sections.get("floor", {}).get("flops_per_image")

    runners = {
        "floor": lambda: floor.run(mut, args),
        "inprocess": lambda: inprocess.run(mut, images, args),
        "fc6": lambda: fc6.run(mut, args),
        "grpc": lambda: grpc_serving.run(mut, images, args),
        "beam": lambda: beam.run(mut, images, args),
        "training": lambda: training.run(mut, args),
        "scaling": lambda: scaling.run(mut, images, args, flops()),
        "export": lambda: export_cost.run(mut, images, args),
        "bf16": lambda: bf16.run(mut, images, args),
        "profile": lambda: breakdown.run(mut, images, args, sections),
    }
    sections: dict = {}
    for i, name in enumerate(args.sections, start=1):
        log(f"section {i}/{len(args.sections)}: {name}")
        start, load = time.perf_counter(), os.getloadavg()[0]
        try:
            sections[name] = runners[name]()
        except Exception as err:  # noqa: BLE001 - one broken section must not lose the rest
            traceback.print_exc()
            sections[name] = {"error": f"{type(err).__name__}: {err}"}
            log(f"section {name} FAILED: {err}")
        # The machine's load average around the section: other work makes timings noisy.
        sections[name]["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
        sections[name]["section_seconds"] = round(time.perf_counter() - start, 1)
    # Timed again next to the floor's second measurement: the efficiency at the end of the
    # run, at one clock; and the yardstick that gRPC and Beam, measured late, can be held to.
    later = {"floor", "grpc", "beam"} & set(sections)
    if later and "results" in sections.get("inprocess", {}):
        try:
            inprocess.remeasure_best(mut, images, sections["inprocess"], args)
        except Exception:  # noqa: BLE001 - the first timing stands
            traceback.print_exc()
    if "error" not in sections.get("floor", {"error": None}) and len(args.sections) > 1:
        try:
            floor.remeasure(sections["floor"], args)
        except Exception:  # noqa: BLE001 - the first measurement stands
            traceback.print_exc()
    return sections


def _main(argv=None) -> int:
    args = parse_args(argv)

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-model-") as tmp:
        if args.full_size:
            log("exporting a full-size FCN-8s (fc_width=4096, 160x576, random weights)")
            model_dir = export_random_model(tmp)
        else:
            model_dir = args.model_dir
        try:
            mut = open_model(model_dir)
        except (FileNotFoundError, ValueError) as err:  # "<path>: <why>"
            what, _, why = str(err).partition(": ")
            raise cli.UserError(what, why) from None
        images = load_images(args.images)
        log(f"model {mut.path} ({mut.image_size[0]}x{mut.image_size[1]}, fc_width "
            f"{mut.fc_width}, {mut.num_classes} classes); images: {images.source}")
        sections = run_sections(mut, images, args)
        result = report.build(mut, images, args, sections, started)
    paths = report.write(result, args.output)
    print(report.summary_markdown(result))
    log(f"wrote {', '.join(str(p) for p in paths)}")
    return 1 if any("error" in s for s in sections.values()) else 0


def main(argv=None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())

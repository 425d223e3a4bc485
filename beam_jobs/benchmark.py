"""Throughput of the Beam job (in process and through TF Serving) next to the raw SavedModel.

    python -m beam_jobs.benchmark --model-dir models/fcn8s/1 \\
        --input '../shared/data/kitti_road/training/image_2/*.png' --batch-size 8

raw: `segment_encoded` called directly in a loop over the same encoded images and batch size
(after one warm-up call). Job: `python -m beam_jobs.segment` on DirectRunner, wall time of
the whole run (TensorFlow import and model load included) and the model-call time only (sum
of the batch latencies in results-*.jsonl). gRPC uses serving.test_server in this process.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time


def raw_images_per_s(model_dir: str, files: list[str], batch_size: int) -> float:
    from beam_jobs.handlers import SavedModelSegmenter

    model = SavedModelSegmenter(model_dir)
    blobs = [open(f, "rb").read() for f in files]
    model.segment(blobs[:batch_size])  # warm-up: first call builds kernels
    start = time.perf_counter()
    for i in range(0, len(blobs), batch_size):
        model.segment(blobs[i:i + batch_size])
    return len(blobs) / (time.perf_counter() - start)


def job(args, extra: list[str]) -> dict:
    from beam_jobs import segment

    with tempfile.TemporaryDirectory() as out:
        summary = segment.run(["--input", args.input, "--output", out, "--dataset",
                               args.dataset, "--batch-size", str(args.batch_size),
                               "--no-evaluate", *extra])
        model_s = 0.0
        for name in glob.glob(os.path.join(out, "results-*.jsonl")):
            for line in open(name):
                # latency_ms is the image's share of its batch's model call.
                model_s += json.loads(line)["latency_ms"] / 1000.0
    return {"images": summary["ok"], "failed": summary["failed"],
            "wall_s": summary["wall_time_s"], "images_per_s_wall": summary["images_per_s"],
            "images_per_s_model_calls": round(summary["ok"] / model_s, 3) if model_s else None}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m beam_jobs.benchmark", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="exported version folder")
    p.add_argument("--input", required=True, help="image file pattern")
    p.add_argument("--dataset", default="kitti")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--modes", default="raw,inprocess,grpc")
    args = p.parse_args(argv)
    from beam_jobs.handlers import resolve_model_dir

    version_dir = resolve_model_dir(args.model_dir)
    files = sorted(glob.glob(args.input))
    result: dict = {"model": version_dir, "images": len(files), "batch_size": args.batch_size}
    modes = args.modes.split(",")
    if "raw" in modes:
        result["raw_images_per_s"] = round(raw_images_per_s(version_dir, files,
                                                            args.batch_size), 3)
    if "inprocess" in modes:
        result["inprocess"] = job(args, ["--model-dir", version_dir])
    if "grpc" in modes:
        from serving.test_server import start_test_server

        name = os.path.basename(os.path.dirname(version_dir))
        server = start_test_server(os.path.dirname(version_dir), name)
        try:
            result["grpc"] = job(args, ["--mode", "grpc", "--server", server.address,
                                        "--model-name", name])
        finally:
            server.stop()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

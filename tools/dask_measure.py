"""The segmentation job on the local runner and on a fresh local Dask cluster, same inputs.

    python tools/dask_measure.py --kitti-root ../shared/data/kitti_road --images 216 \\
        --model-dir models/fcn8s --workers 2 --output runs/dask-measure

Builds a KITTI layout of N images in a temporary folder (copies: the shared training pairs
repeated under new numbers, each with its calibration and ground truth; the job opens no
symlink that leaves its input folder), runs the job on the local runner, then starts
`tools/dask_cluster.py` (N workers, one thread each) and runs it twice with `--runner
DaskRunner` (cold: the workers import TensorFlow; warm); prints one JSON line per run:
images/s, peak resident memory per process (the launcher for the local runner, each worker
for Dask) and SavedModel loads per process (calls of tf.saved_model.load, counted by wrapping
it). Checks that both runners wrote the same masks.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def kitti_copies(root: pathlib.Path, n: int, dest: pathlib.Path) -> pathlib.Path:
    """dest/training/{image_2,calib,gt_image_2}: n images, the root's pairs repeated."""

    src = root / "training"
    images = sorted((src / "image_2").glob("u*_*.png"))
    for sub in ("image_2", "calib", "gt_image_2"):
        (dest / "training" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = images[i % len(images)]
        cat, num = re.match(r"(u\w+)_(\d{6})\.png", image.name).groups()
        new = f"{i:06d}"
        links = [(image, dest / "training/image_2" / f"{cat}_{new}.png"),
                 (src / "calib" / f"{cat}_{num}.txt",
                  dest / "training/calib" / f"{cat}_{new}.txt"),
                 (src / "gt_image_2" / f"{cat}_road_{num}.png",
                  dest / "training/gt_image_2" / f"{cat}_road_{new}.png")]
        for target, copy in links:
            if target.exists() and not copy.exists():
                shutil.copyfile(target, copy)
    return dest


def _count_model_loads() -> None:
    """Wrap tf.saved_model.load in this process to count its calls (idempotent)."""
    import tensorflow as tf

    if hasattr(tf.saved_model, "_measured_loads"):
        return
    original = tf.saved_model.load
    tf.saved_model._measured_loads = [0]

    def load(*args, **kwargs):
        tf.saved_model._measured_loads[0] += 1
        return original(*args, **kwargs)

    tf.saved_model.load = load


def _process_stats() -> dict:
    import resource

    import tensorflow as tf

    return {"pid": os.getpid(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "model_loads": getattr(tf.saved_model, "_measured_loads", [0])[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kitti-root", required=True, type=pathlib.Path)
    p.add_argument("--images", type=int, default=216)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="6GiB")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--output", type=pathlib.Path, default=REPO / "runs" / "dask-measure")
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from beam_jobs import segment

    import tempfile
    data = kitti_copies(args.kitti_root, args.images,
                        pathlib.Path(tempfile.mkdtemp(prefix="fcnseg-dask-measure-")))
    job = ["--input", str(data), "--dataset", "kitti", "--model-dir", args.model_dir,
           "--batch-size", args.batch_size]
    figures = {}

    _count_model_loads()
    start = time.perf_counter()
    local = segment.run(job + ["--output", str(args.output / "local")])
    wall = time.perf_counter() - start
    figures["local"] = {"runner": "DirectRunner", "images": local["ok"] + local["failed"],
                        "wall_s": round(wall, 1), "images_per_s": round(local["ok"] / wall, 2),
                        "processes": [_process_stats()]}
    print(json.dumps(figures["local"]), flush=True)

    spec = importlib.util.spec_from_file_location("dask_cluster",
                                                  REPO / "tools" / "dask_cluster.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    state = args.output / "cluster" / "cluster.json"
    info = tool.start(workers=args.workers, threads=1, memory_limit=args.memory_limit,
                      state=state)
    try:
        from distributed import Client

        with Client(info["address"]) as client:
            client.run(_count_model_loads)
            # The first run includes the workers' TensorFlow import; the second finds it done
            # (the model is loaded again: a run tears its DoFns down at the end).
            for attempt in ("cold", "warm"):
                start = time.perf_counter()
                dask = segment.run(job + ["--output", str(args.output / "dask"), "--runner",
                                          "DaskRunner", "--dask_client_address",
                                          info["address"]])
                wall = time.perf_counter() - start
                workers = sorted(client.run(_process_stats).values(), key=lambda s: s["pid"])
                figures[f"dask_{attempt}"] = {
                    "runner": f"DaskRunner, {args.workers} workers x 1 thread, {attempt}",
                    "images": dask["ok"] + dask["failed"], "wall_s": round(wall, 1),
                    "images_per_s": round(dask["ok"] / wall, 2),
                    "processes (model_loads cumulative)": workers}
                print(json.dumps(figures[f"dask_{attempt}"]), flush=True)
    finally:
        tool.stop(state)

    masks = lambda s: {q.name: q.read_bytes()  # noqa: E731
                       for q in (pathlib.Path(s["run_dir"]) / "masks").iterdir()}
    same = masks(local) == masks(dask) and len(masks(local)) == args.images
    shutil.rmtree(data)
    print(json.dumps({"same_masks": same, "images": args.images}))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""Export: SavedModel size against the weights' size, load time, and first-request time with
and without the warm-up records (assets.extra/tf_serving_warmup_requests).

A server replays the warm-up records while it loads a version, before it reports the version
AVAILABLE, so their effect cannot be seen from a client; this is measured in process, in fresh
Python processes (a second load in one process would reuse
its kernel caches): load the SavedModel, optionally replay the warm-up records the way TF
Serving does, then time the first and the second request of each signature.

    python -m benchmarks.export_cost VERSION_DIR IMAGE_PNG [--replay-warmup]   (one child)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, log


def _child(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_cost")
    p.add_argument("version_dir")
    p.add_argument("image_png")
    p.add_argument("--replay-warmup", action="store_true")
    args = p.parse_args(argv)
    # Every import that loads TensorFlow is inside the functions: the child times that load.
    start = time.perf_counter()
    import tensorflow as tf
    out = {"import_s": time.perf_counter() - start, "replay_warmup": args.replay_warmup}

    from model.exported import load_exported

    start = time.perf_counter()
    loaded = load_exported(args.version_dir)
    out["load_s"] = time.perf_counter() - start
    if args.replay_warmup:
        from contract.layout import WARMUP_PATH
        from export.warmup import read_warmup_file
        start = time.perf_counter()
        logs = read_warmup_file(Path(args.version_dir) / WARMUP_PATH)
        for record in logs:  # what TF Serving does with each PredictionLog on load
            request = record.predict_log.request
            loaded.call(request.model_spec.signature_name or "serving_default",
                        **{k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        out["warmup_records"] = len(logs)
        out["warmup_replay_s"] = time.perf_counter() - start

    blob = Path(args.image_png).read_bytes()
    image = tf.io.decode_png(blob, channels=3)[None].numpy()
    calls = {"serving_default": lambda: loaded.segment(image),
             "segment_encoded": lambda: loaded.segment_encoded([blob])}
    for name, call in calls.items():
        for which in ("first", "second"):
            start = time.perf_counter()
            call()
            out[f"{name}_{which}_ms"] = (time.perf_counter() - start) * 1e3
    return out


def child_run(version_dir: Path, image_png: Path, replay_warmup: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.export_cost", str(version_dir), str(image_png)]
    if replay_warmup:
        command.append("--replay-warmup")
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(mut, images, args) -> dict:
    from export.savedmodel import saved_model_sizes

    sizes = saved_model_sizes(mut.path)
    weights = mut.metadata.get("weights_bytes") or int(sum(
        v.numpy().nbytes for v in mut.loaded.module.model_variables))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-export-") as tmp:
        png = Path(tmp) / "image.png"
        png.write_bytes(images.blobs[0])
        for replay in (False, True):
            log(f"export: fresh process, load + first requests "
                f"({'with' if replay else 'without'} warm-up replay)")
            rows.append(child_run(mut.path, png, replay))
    cold, warm = rows
    return {**sizes, "weights_bytes": weights,
            "size_vs_weights": sizes["total_bytes"] / weights if weights else None,
            "warmup_replayed_by": "benchmark (in process); TF Serving and tfserving_dev replay "
                                  "the records themselves on load",
            "without_warmup": cold, "with_warmup": warm,
            "first_request_speedup": {
                k: cold[f"{k}_first_ms"] / warm[f"{k}_first_ms"]
                for k in ("serving_default", "segment_encoded")}}


if __name__ == "__main__":
    print(json.dumps(_child()))

"""Beam: the batch job (beam_jobs.segment) end to end on the local runner, in both modes, over
N images (the KITTI samples repeated to N), against the in-process signature on the same
images. End to end includes pipeline start-up, model loading (every run loads the model: Beam
shares a loaded model between the threads of one pipeline, not between pipelines), the first
call's warm-up, reading and writing files.

CPU seconds beside wall time: on a shared machine the wall clock also counts other people's
work, while the CPU time this process (and its children) spent is the job's own cost. The
job's ratio to the bare model in CPU seconds says what Beam, validation and the writes cost
on top of the model; the goal is 0.95x or better (at most ~5 % more CPU than the model).
The bare model is the SavedModel's segment_encoded over the same encoded images in the
same batches, model already loaded."""
from __future__ import annotations

import logging
import pathlib
import resource
import tempfile
import time

import numpy as np

from beam_jobs import segment
from benchmarks.common import log
from benchmarks.grpc_serving import serve
from model.batch_size import AUTO, CANDIDATES, probe
from serving.grpc_client import PredictionClient

CPU_RATIO_GOAL = 0.95


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_inputs(folder: pathlib.Path, images, n: int) -> pathlib.Path:
    """n PNG files (the benchmark images in turn) in folder/images."""
    target = folder / "images"
    target.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (target / f"img_{i:05d}.png").write_bytes(images.blobs[i % len(images.blobs)])
    return target


def run_job(mut, images, n: int, mode: str, batch, address: str | None = None,
            backend: str = "tensorflow") -> dict:
    """One run of the job over n images; its summary plus our own wall clock. Batch 'auto'
    is the job's own probe in process; gRPC mode, which has none, then sends batches of 8."""
    if batch == AUTO and mode != "inprocess":
        batch = max(CANDIDATES)
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-beam-") as tmp:
        tmp = pathlib.Path(tmp)
        inputs = write_inputs(tmp, images, n)
        argv = ["--input", str(inputs), "--output", str(tmp / "out"), "--dataset", "folder",
                "--mode", mode, "--batch-size", str(batch), "--no-evaluate"]
        argv += (["--model-dir", str(mut.path), "--backend", backend] if mode == "inprocess"
                 else ["--server", address, "--model-name", mut.name])
        logging.getLogger("apache_beam").setLevel(logging.ERROR)
        start, cpu = time.perf_counter(), cpu_seconds()
        summary = segment.run(argv)
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if summary.get("ok") != n:
        raise RuntimeError(f"Beam job ({mode}) segmented {summary.get('ok')} of {n} images: "
                           f"{summary.get('failed_by_stage')}")
    return {"mode": mode, "runtime": backend if mode == "inprocess" else None,
            "images": n, "batch": batch, "wall_s": wall, "cpu_s": cpu,
            "pipeline_wall_s": summary.get("wall_time_s"), "images_per_s": n / wall,
            "ms_per_image": wall * 1e3 / n, "cpu_ms_per_image": cpu * 1e3 / n}


def inprocess_same_images(mut, images, n: int, batch, backend: str = "tensorflow") -> dict:
    """segment_encoded over the same n images in batches, the model already loaded; for
    batch 'auto', in calls of the size the job's probe (model.batch_size) picks here."""
    model = mut.runtime(backend)
    if batch == AUTO:
        batch = probed_batch(mut, images, backend)
    model.segment_encoded(images.blob_batch(batch))  # warm-up
    start, cpu = time.perf_counter(), cpu_seconds()
    for first in range(0, n, batch):
        model.segment_encoded(images.blob_batch(min(batch, n - first), first))
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    return {"mode": "in-process segment_encoded (model loaded)", "images": n, "batch": batch,
            "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall,
            "ms_per_image": wall * 1e3 / n, "cpu_ms_per_image": cpu * 1e3 / n}


def probed_batch(mut, images, backend: str) -> int:
    """What the job's --batch-size auto picks on this machine (model.batch_size.probe)."""
    model = mut.runtime(backend)
    size = probe(lambda k: model.segment_encoded(images.blob_batch(k)))["batch_size"]
    log(f"batch size {size} by the probe ({backend})")
    return size


def at_two_lengths(job, n: int) -> dict:
    """job(k) -> a run_job row, run over n / 4 and over n images: the row of n, plus what a
    line through both says of a long job ("at_scale": the fixed start-up seconds and the
    marginal images/s and CPU ms per image, which is what millions of images cost)."""
    short = job(max(n // 4, 1))
    row = job(n)
    ns = [short["images"], row["images"]]
    wall, cpu = (fit_line(ns, [short[k], row[k]]) for k in ("wall_s", "cpu_s"))
    row["short_run"] = {k: short[k] for k in ("images", "wall_s", "cpu_s", "images_per_s")}
    row["at_scale"] = {"from_images": ns, "fixed_s": wall["fixed_s"],
                       "images_per_s": wall["marginal_images_per_s"],
                       "ms_per_image": wall["per_image_s"] * 1e3,
                       "cpu_ms_per_image": cpu["per_image_s"] * 1e3}
    return row


def run(mut, images, args) -> dict:
    n, batch = args.beam_images, args.beam_batch
    runtime = args.backends[0] if getattr(args, "backends", None) else "tensorflow"
    log(f"Beam: in-process mode ({runtime}) over {max(n // 4, 1)} and {n} images")
    rows = [at_two_lengths(lambda k: run_job(mut, images, k, "inprocess", batch,
                                             backend=runtime), n)]
    log(f"Beam in-process: {rows[-1]['images_per_s']:.2f} images/s end to end, "
        f"{_at_scale(rows[-1])}")
    # gRPC mode has no probe (the server runs the calls): with auto it sends the job's batches
    # of 8, since each request also pays the transport and the server's own work.
    grpc_batch = max(CANDIDATES) if batch == AUTO else batch
    with serve(mut) as backend:
        with PredictionClient(backend.address, mut.name, timeout=600) as client:
            client.segment_encoded(images.blob_batch(1))  # the server's first-call warm-up
        log(f"Beam: gRPC mode over {max(n // 4, 1)} and {n} images ({backend.kind})")
        rows.append(at_two_lengths(lambda k: run_job(mut, images, k, "grpc", grpc_batch,
                                                     backend.address), n))
        backend_name = backend.description
    log(f"Beam gRPC: {rows[-1]['images_per_s']:.2f} images/s end to end, "
        f"{_at_scale(rows[-1])}")
    reference = inprocess_same_images(mut, images, n, batch, runtime)
    for row in rows:
        row["vs_inprocess"] = row["images_per_s"] / reference["images_per_s"]
        row["cpu_vs_inprocess"] = reference["cpu_s"] / row["cpu_s"] if row["cpu_s"] else None
        scale = row["at_scale"]
        scale["vs_inprocess"] = (scale["images_per_s"] / reference["images_per_s"]
                                 if scale["images_per_s"] else None)
        scale["cpu_vs_inprocess"] = (reference["cpu_ms_per_image"] / scale["cpu_ms_per_image"]
                                     if scale["cpu_ms_per_image"] > 0 else None)
    job = rows[0]  # in-process mode: the same model in the same process, so comparable
    log(f"Beam in-process vs the bare model: {job['cpu_vs_inprocess']:.2f}x in CPU seconds "
        f"({job['cpu_s']:.1f} vs {reference['cpu_s']:.1f} s), {job['vs_inprocess']:.2f}x in "
        f"wall time")
    return {"images": n, "batch": batch, "backend": backend_name, "results": rows,
            "inprocess_reference": reference, "cpu_ratio": job["cpu_vs_inprocess"],
            "wall_ratio": job["vs_inprocess"], "cpu_ratio_goal": CPU_RATIO_GOAL,
            "meets_cpu_ratio_goal": (job["cpu_vs_inprocess"] or 0) >= CPU_RATIO_GOAL}


def _at_scale(row: dict) -> str:
    scale = row["at_scale"]
    rate = scale["images_per_s"]
    return (f"{rate:.2f} images/s at scale" if rate else "no marginal rate") + \
        f" (start-up {scale['fixed_s']:.1f} s)"


def fit_line(ns, seconds) -> dict:
    """seconds = fixed + per_image * n (least squares): start-up cost and marginal cost."""
    per_image, fixed = np.polyfit(np.asarray(ns, float), np.asarray(seconds, float), 1)
    return {"fixed_s": float(fixed), "per_image_s": float(per_image),
            "marginal_images_per_s": 1.0 / per_image if per_image > 0 else None}

"""Files the job writes, all through Beam's FileSystems (local paths, gs:// and s3:// alike).

Every run writes into its own folder and becomes the published one only when it succeeds:

    <output>/runs/<run id>/     masks/, confidence/, kitti_submission/, overlays/,
                                results-*.jsonl, dead_letter-*.jsonl, summary.json,
                                metrics.json, image_scores-*.jsonl, image_overlays/,
                                report.html (with ground truth: model/report.py), ...
    <output>/LATEST             the run id of the last run that finished (one small object)
    <output>/latest             local filesystems only: a symlink to runs/<that id>

So a rerun can never mix its maps with a previous run's (each run's folder holds only its
own), and a run killed midway leaves the previous run published and whole: nothing of it
is touched before the new run has finished. Publishing rewrites LATEST, then deletes the
run folders older than the one published (killed runs' leftovers included).

Per-image files: on object stores (gs://, s3://) an object appears only when its upload
completes, so they are written in place (one operation); elsewhere (local disks, HDFS) a
temporary name in the same folder is renamed into place, so a retried or duplicated bundle
never leaves half a PNG.

Names inside a run folder are deterministic: masks/<stem>.png, overlays/<stem>.png; KITTI:
confidence/<cat>_<task>_<n>.png (the perspective confidence map) and
kitti_submission/<cat>_<task>_<n>.png (the same map in the benchmark's bird's-eye view, the
files the benchmark wants uploaded).
"""
from __future__ import annotations

import datetime
import io
import json
import os
import posixpath
import tempfile
import uuid
from typing import Optional

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from contract.kitti import submission_zip_bytes

MASKS = "masks"
SUBMISSION = "kitti_submission"       # bird's-eye-view maps, named as the benchmark wants
CONFIDENCE_MAPS = "confidence"         # perspective confidence maps, same names
SUBMISSION_ZIP = "kitti_submission.zip"
OVERLAYS = "overlays"
RESULTS = "results"
DEAD_LETTERS = "dead_letter"
IMAGE_SCORES = "image_scores"          # model.image_scores records, read by model.report
SUMMARY = "summary.json"
METRICS = "metrics.json"
PR_CURVE = "pr_curve.png"
PR_CURVE_BEV = "pr_curve_bev.png"
CONFUSION = "confusion_matrix.png"
RUNS = "runs"
LATEST = "LATEST"          # the pointer object, readable on every filesystem
LATEST_LINK = "latest"     # the local convenience symlink

# Object stores whose object creation is atomic: a reader sees the whole object or none.
_ATOMIC_CREATE_SCHEMES = ("gs", "s3")


def _scheme(path: str) -> Optional[str]:
    return path.split("://", 1)[0].lower() if "://" in path else None


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that no reader ever sees half of it.

    I/O errors propagate: the runner retries the bundle (Dataflow, Flink, Spark; locally the
    BundleBasedDirectRunner), instead of the image being dropped as if it were bad input.
    """
    if _scheme(path) in _ATOMIC_CREATE_SCHEMES:
        with FileSystems.create(path, compression_type="uncompressed") as f:
            f.write(data)
        return
    folder, name = FileSystems.split(path)
    tmp = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    with FileSystems.create(tmp, compression_type="uncompressed") as f:
        f.write(data)
    try:
        FileSystems.rename([tmp], [path])
    except Exception:
        FileSystems.delete([tmp])
        raise


def write_json(path: str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode())


def read_json(path: str):
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read().decode("utf-8"))


def png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG of a uint8 array. Level 1: photo-like overlays encode ~5x faster than at Pillow's
    default 6, for files ~20% larger."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG",
                                                            compress_level=compress_level)
    return buf.getvalue()


def write_figure(path: str, save_fn, *args, **kwargs) -> None:
    """Run a model.plots `save_*(local_path, ...)` and copy its PNG to `path` (maybe remote)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "figure.png")
        save_fn(local, *args, **kwargs)
        with open(local, "rb") as f:
            write_bytes(path, f.read())


# --- runs -------------------------------------------------------------------------------

def new_run_id(now: Optional[datetime.datetime] = None) -> str:
    """A UTC timestamp (sorts in launch order) and a random suffix (two launches in the same
    second stay apart)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def run_folder(output: str, run_id: str) -> str:
    return FileSystems.join(output, RUNS, run_id)


def published_run(output: str) -> Optional[str]:
    """The folder of the last run that finished, or None when no run has been published."""
    pointer = FileSystems.join(output, LATEST)
    if not FileSystems.exists(pointer):
        return None
    with FileSystems.open(pointer, compression_type="uncompressed") as f:
        run_id = f.read().decode("utf-8").strip()
    return run_folder(output, run_id) if run_id else None


def _run_ids(output: str) -> list[str]:
    """Every run folder under <output>/runs, finished or not (from one listing of their
    files: object stores have no folders to list)."""
    runs = FileSystems.join(output, RUNS).rstrip("/") + "/"
    found = FileSystems.match([runs + "**"])[0].metadata_list
    return sorted({m.path[len(runs):].split("/", 1)[0] for m in found
                   if m.path.startswith(runs)})


def publish(output: str, run_id: str) -> list[str]:
    """Make `run_id` the published run, then delete the runs launched before it.

    Returns the deleted run ids. Runs launched after it (a concurrent job) are left alone.
    """
    write_bytes(FileSystems.join(output, LATEST), (run_id + "\n").encode())
    if _scheme(output) is None:
        _point_link(output, run_id)
    older = [r for r in _run_ids(output) if r < run_id]
    if older:
        # Folders are deleted recursively; object stores name them with a trailing "/"
        # (Beam's local filesystem would match nothing with it, and delete nothing).
        slash = "/" if _scheme(output) else ""
        FileSystems.delete([run_folder(output, r) + slash for r in older])
    return older


def _point_link(output: str, run_id: str) -> None:
    """<output>/latest -> runs/<run_id>, replaced atomically (a new link renamed over it)."""
    link = os.path.join(output, LATEST_LINK)
    if os.path.exists(link) and not os.path.islink(link):
        return  # not ours (a folder someone made): leave it; LATEST is the pointer
    tmp = os.path.join(output, f".{LATEST_LINK}.{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.join(RUNS, run_id), tmp)
    os.replace(tmp, link)


def write_submission_zip(path: str, files: list[str]) -> dict:
    """Zip the bird's-eye-view maps for upload (contract.kitti.submission_zip_bytes: flat,
    named as the benchmark expects). Returns {"path", "files"}."""
    maps: dict[str, bytes] = {}
    for f in sorted(files):
        name = posixpath.basename(f)
        if name in maps:
            raise ValueError(f"two submission maps named {name} (one is {f})")
        with FileSystems.open(f, compression_type="uncompressed") as src:
            maps[name] = src.read()
    write_bytes(path, submission_zip_bytes(maps))
    return {"path": path, "files": len(maps)}

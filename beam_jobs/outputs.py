"""Files the job writes, all through Beam's FileSystems (local paths and gs:// alike).

Per-image files are written to a temporary name and renamed into place, so a retried or
duplicated bundle never leaves a half-written PNG, and a rerun replaces the files of the
previous one (names are deterministic: masks/<stem>.png, overlays/<stem>.png; KITTI:
confidence/<cat>_<task>_<n>.png, the perspective confidence map, and
kitti_submission/<cat>_<task>_<n>.png, the same map in the benchmark's bird's-eye view, the
files the benchmark wants uploaded).
"""
from __future__ import annotations

import io
import json
import uuid

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image

MASKS = "masks"
SUBMISSION = "kitti_submission"       # bird's-eye-view maps, named as the benchmark wants
CONFIDENCE_MAPS = "confidence"         # perspective confidence maps, same names
SUBMISSION_ZIP = "kitti_submission.zip"
OVERLAYS = "overlays"
RESULTS = "results"
DEAD_LETTERS = "dead_letter"
SUMMARY = "summary.json"
METRICS = "metrics.json"
PR_CURVE = "pr_curve.png"
PR_CURVE_BEV = "pr_curve_bev.png"
CONFUSION = "confusion_matrix.png"


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically: temp name in the same folder, then rename."""
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
    """Run a model.plots `save_*(local_path, ...)` and copy its PNG to `path` (maybe gs://)."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "figure.png")
        save_fn(local, *args, **kwargs)
        with open(local, "rb") as f:
            write_bytes(path, f.read())


def remove_previous_shards(output: str) -> None:
    """Delete results-*/dead_letter-* of an earlier run so a rerun replaces them."""
    patterns = [FileSystems.join(output, f"{RESULTS}-*"), FileSystems.join(output, f"{DEAD_LETTERS}-*")]
    old = [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]
    if old:
        FileSystems.delete(old)


def write_submission_zip(path: str, files: list[str]) -> dict:
    """Zip the bird's-eye-view maps for upload: each file at the archive's root under its
    own name (um_road_000000.png, ...), as the devkit's instructions ask ("zip the contents of
    the directory"). PNGs are already compressed, so they are stored. Returns
    {"path", "files"}."""
    import posixpath
    import zipfile

    names = sorted(files, key=posixpath.basename)
    seen = {}
    for f in names:
        name = posixpath.basename(f)
        if name in seen:
            raise ValueError(f"two submission maps named {name}: {seen[name]} and {f}")
        seen[name] = f
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, f in seen.items():
            with FileSystems.open(f, compression_type="uncompressed") as src:
                archive.writestr(name, src.read())
    write_bytes(path, buf.getvalue())
    return {"path": path, "files": len(seen)}

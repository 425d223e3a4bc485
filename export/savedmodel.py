"""Export a Keras FCN-8s to a versioned TF Serving SavedModel (model.exported loads one back).

Layout of `<model_base>/<model_name>/<version>/`:
    saved_model.pb, variables/             the graph and the weights (stored once)
    assets/labels.txt                      class names, one per line, in class-id order
    assets.extra/fcnseg_metadata.json      dataset, classes, geometry, metrics, provenance
    assets.extra/tf_serving_warmup_requests  PredictionLog records TF Serving replays on load
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from contract.layout import (LABELS_FILE, METADATA_PATH, TEMP_PREFIX, WARMUP_PATH,
                             next_version)
from contract.names import NATIVE
from export.metadata import build_metadata, write_labels, write_metadata
from export.precision import serving_copy
from export.signatures import ServingModule, describe, geometry_of
from export.warmup import write_warmup_file

def weights_nbytes(keras_model) -> int:
    return int(sum(np.asarray(w).nbytes for w in keras_model.weights))


def dir_nbytes(path) -> int:
    """Bytes of a file, or of all files under a folder (0 if absent)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def saved_model_sizes(path) -> dict:
    path = Path(path)
    return {"total_bytes": dir_nbytes(path),
            "variables_bytes": dir_nbytes(path / "variables"),
            "saved_model_pb_bytes": (path / "saved_model.pb").stat().st_size,
            "warmup_bytes": dir_nbytes(path / WARMUP_PATH)}


def _check_inputs(keras_model, config: dict) -> tuple[tuple[int, int], list[str]]:
    if "image_size" not in config or len(config["image_size"]) != 2:
        raise ValueError(f"config needs image_size [H, W], got {config.get('image_size')!r}")
    image_size = (int(config["image_size"][0]), int(config["image_size"][1]))
    model_hw = tuple(keras_model.input_shape[1:3])
    if any(m is not None and m != s for m, s in zip(model_hw, image_size)):
        raise ValueError(f"config image_size {list(image_size)} does not match the model's "
                         f"input {list(model_hw)}")
    num_classes = int(keras_model.output_shape[-1])
    class_names = [str(c) for c in config.get("class_names") or []]
    if len(class_names) != num_classes:
        raise ValueError(f"config has {len(class_names)} class_names but the model outputs "
                         f"{num_classes} classes")
    if num_classes > 255:
        raise ValueError(f"class ids are uint8 with 255 = ignore: at most 255 classes, "
                         f"got {num_classes}")
    return image_size, class_names


def export_saved_model(keras_model, config: dict, model_base, model_name: str,
                       version: int | None = None, metrics=None, source=None,
                       compute_dtype: str = "float32", *, run_dir=None,
                       overwrite: bool = False, inference_size=None) -> Path:
    """Write `<model_base>/<model_name>/<version>/` and return its path.

    inference_size: the geometry the graph infers at, [H, W] or 'native' (see
    export.signatures); None: the training size. Recorded in the metadata.

    version: None picks the next free number. The version is written to a hidden temporary
    folder beside it and renamed into place, so a TF Serving instance watching the model
    folder never sees half a model. An existing version is replaced only with overwrite=True
    (a server that already loaded that version will not reload it: prefer a new version).
    """
    image_size, class_names = _check_inputs(keras_model, config)
    geometry = geometry_of(image_size if inference_size is None else inference_size)
    model_dir = Path(model_base) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    if int(version) < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    version = int(version)
    final = model_dir / str(version)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: already exists (pass overwrite=True / --overwrite "
                              f"to replace it, or choose another version)")

    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{version}-", dir=model_dir))
    try:
        with tempfile.TemporaryDirectory() as staging:
            labels = write_labels(Path(staging) / LABELS_FILE, class_names)
            module = ServingModule(serving_copy(keras_model, compute_dtype), geometry,
                                   len(class_names), str(labels))
            signatures = module.signatures()
            tf.saved_model.save(module, str(tmp), signatures=signatures)
        metadata = build_metadata(config, model_name=model_name, version=version,
                                  compute_dtype=compute_dtype, signatures=describe(signatures),
                                  metrics=metrics, source=source, run_dir=run_dir,
                                  weights_bytes=weights_nbytes(keras_model),
                                  inference_size=geometry if geometry == NATIVE
                                  else list(geometry))
        write_metadata(tmp / METADATA_PATH, metadata)
        # A native export is warmed up at the training size: real request sizes are unknown.
        write_warmup_file(tmp / WARMUP_PATH, model_name,
                          image_size if geometry == NATIVE else geometry)
        make_world_readable(tmp)
        _move_into_place(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def make_world_readable(folder: Path) -> None:
    """Folders 0755, files 0644. mkdtemp makes the version folder 0700, and TF Serving
    usually runs as another user (the container's, or a service account) that must read
    the SavedModel; nothing in an export is secret or executable."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _move_into_place(tmp: Path, final: Path, overwrite: bool) -> None:
    if not final.exists():
        os.rename(tmp, final)  # atomic on one file system; fails if someone else got there
        return
    if not overwrite:
        raise FileExistsError(f"{final}: appeared while exporting; the export is discarded")
    old = final.with_name(f"{TEMP_PREFIX}old-{final.name}-{tmp.name[-8:]}")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)

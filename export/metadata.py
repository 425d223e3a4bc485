"""Files that travel with an exported version: assets/labels.txt and
assets.extra/fcnseg_metadata.json."""
from __future__ import annotations

import datetime
import importlib.metadata
from pathlib import Path

import keras
import tensorflow as tf

from contract.names import EXPORT_FORMAT, IGNORE_LABEL
from contract.records import ExportMetadata


def fcnseg_version() -> str:
    try:
        return importlib.metadata.version("fcnseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def write_labels(path, class_names) -> Path:
    """Class names, one per line, in class-id order (the format TF Serving users expect)."""
    for name in class_names:
        if "\n" in str(name):
            raise ValueError(f"class name {name!r} contains a newline")
    path = Path(path)
    path.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    return path


def build_metadata(config: dict, *, model_name: str, version: int, compute_dtype: str,
                   signatures: dict, metrics=None, source=None, run_dir=None,
                   weights_bytes: int | None = None, inference_size=None) -> dict:
    keys = ("dataset", "task", "categories", "coco_protocol", "class_names", "colours",
            "label_format", "normalization", "fc_width", "num_classes", "encoder_weights",
            "variant")
    return ExportMetadata.from_dict({
        "model_name": model_name,
        "version": version,
        **{key: config.get(key) for key in keys},
        "image_size": [int(s) for s in config["image_size"]],
        "inference_size": inference_size,
        "ignore_label": IGNORE_LABEL,
        # 2: string outputs named *_bytes, probabilities in segment_probabilities.
        "export_format": EXPORT_FORMAT,
        "compute_dtype": compute_dtype,
        "metrics": metrics,
        "source_checkpoint": None if source is None else str(source),
        "run_dir": None if run_dir is None else str(run_dir),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fcnseg_version": fcnseg_version(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "weights_bytes": weights_bytes,
        "signatures": signatures,
    }, f"metadata of {model_name} version {version}").to_dict()


def write_metadata(path, metadata: dict) -> Path:
    return ExportMetadata.from_dict(metadata, str(path)).write(path)

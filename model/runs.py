"""The training run directory: what `model.train` writes and everything downstream reads.

    runs/<name>/config.json        dataset, classes, geometry, model settings
    runs/<name>/split.json         {"train": [[image, label], ...], "val": [...]}
    runs/<name>/checkpoints/       best.keras (by validation IoU), last.keras, state.json
    runs/<name>/history.csv        one row per epoch (Keras CSVLogger)
    runs/<name>/metrics.json       final validation metrics
    runs/<name>/curves.png         training curves
    runs/<name>/tensorboard/       TensorBoard logs
"""
from __future__ import annotations

import json
import pathlib

from common.cli import UserError
from common.files import atomic_write_text
from contract.records import RunConfig

CONFIG = RunConfig.FILE
SPLIT = "split.json"
CHECKPOINTS = "checkpoints"
BEST = "best.keras"
LAST = "last.keras"
STATE = "state.json"


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise UserError(path.parent, "no such run directory")
    if not path.is_file():
        raise UserError(path, "not found (is this a run directory of model.train?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_run_config(run_dir) -> dict:
    """config.json of a run, checked by contract.records.RunConfig (classes, geometry)."""
    path = pathlib.Path(run_dir) / CONFIG
    return RunConfig.from_dict(read_json(path), str(path)).to_dict()


def write_run_config(run_dir, config: dict) -> None:
    path = pathlib.Path(run_dir) / CONFIG
    RunConfig.from_dict(config, str(path)).write(path)


def load_split(run_dir) -> dict:
    return read_json(pathlib.Path(run_dir) / SPLIT)


def checkpoint_path(run_dir, which: str = "best") -> pathlib.Path:
    return pathlib.Path(run_dir) / CHECKPOINTS / (BEST if which == "best" else LAST)


def run_dir_of(checkpoint) -> pathlib.Path:
    """runs/X/checkpoints/best.keras -> runs/X."""
    checkpoint = pathlib.Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def load_checkpoint(path, compile: bool = False):
    """Load a Keras checkpoint written by model.train (custom layers registered on import)."""
    path = pathlib.Path(path)
    if not path.is_file():  # before Keras is imported: a wrong path is answered at once
        raise UserError(path, "checkpoint not found")
    import keras

    # Importing registers the custom layers, initializer and (for compile=True) metrics.
    from model import fcn8s, keras_metrics  # noqa: F401

    return keras.saving.load_model(path, compile=compile)

"""Datasets for fcnseg: the registry (model/data/registry.py) finds a dataset by name, and
`load_dataset` returns its file pairs and class info.

Importing this package is light (numpy, Pillow, tqdm; no TensorFlow, pycocotools only when
COCO is used). The tf.data pipeline (model/data/pipeline.py) reads the returned pairs.
"""
from __future__ import annotations

import dataclasses
import os

from model.data.registry import (ROAD_COLOURS, Dataset, Options, SegmentationData,
                                 colours_for, dataset_names, get_dataset, palette,
                                 random_split, register)

__all__ = ["ROAD_COLOURS", "Dataset", "Options", "SegmentationData", "colours_for",
           "dataset_names", "get_dataset", "load_dataset", "palette", "random_split",
           "register"]


def load_dataset(name: str, root: str | os.PathLike | None = None, **options) -> SegmentationData:
    """The training and validation pairs of dataset `name` under `root` (see docs/data.md);
    `options` are `Options` fields (task, categories, coco_protocol, val_fraction, seed,
    cache_dir, image_size, num_synthetic, min_area_fraction, progress)."""
    known = {f.name for f in dataclasses.fields(Options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"load_dataset got unknown options {unknown}")
    return get_dataset(name).load(root, Options(**options))

"""Evaluation inside the job: every scored image goes into one model.scoreboard.Scoreboard
through `ScoreboardFn`, the same accumulator model.evaluate fills, so the job's scores are
model.evaluate's.

A binary model's road confidence is the confidence PNG's 0..255 values (exactly what the
devkit scores); KITTI images with calibration are also scored in the bird's-eye view the
benchmark ranks (the submission map, and the ground truth resampled by the same table).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs import outputs
from beam_jobs.sources import GroundTruth
from model.scoreboard import Scoreboard


class GroundTruthError(ValueError):
    pass


@contextlib.contextmanager
def _local(path: str):
    """A local path for `path`: itself, or a temporary copy of a remote (gs://) file."""
    if "://" not in path:
        yield path
        return
    with FileSystems.open(path, compression_type="uncompressed") as f:
        data = f.read()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        with open(local, "wb") as out:
            out.write(data)
        yield local


def load_label(gt: GroundTruth, coco_categories: Optional[dict] = None) -> np.ndarray:
    """uint8 [H, W] labels (255 ignored) of one image, or GroundTruthError naming the reason."""
    from model.data import get_dataset, image_io

    try:
        if gt.annotations is not None:
            return _coco_label(gt, coco_categories or {})
        with _local(gt.path) as p:
            return get_dataset(gt.dataset).read_label(p)
    except image_io.ImageReadError as exc:
        raise GroundTruthError(str(exc)) from None


def _coco_label(gt: GroundTruth, categories: dict) -> np.ndarray:
    """model.data.coco.semantic_mask over a one-image COCO index (same label rules, of the
    job's protocol; torchvision filters only training sets, so no image is dropped here)."""
    from pycocotools.coco import COCO

    from model.data.coco import semantic_mask

    info = {"id": 0, "height": gt.height, "width": gt.width}
    anns = [{**a, "image_id": 0, "id": i + 1} for i, a in enumerate(gt.annotations or [])]
    coco = COCO()
    coco.dataset = {"images": [info], "annotations": anns,
                    "categories": categories.get("categories", [])}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return semantic_mask(coco, info, categories["cat_id_to_label"],
                         categories.get("protocol", "fcnseg"))


class ScoredImage(NamedTuple):
    """One image's input to Scoreboard.add (model.scoreboard)."""
    prediction: np.ndarray          # uint8 [H, W] class ids
    label: np.ndarray               # uint8 [H, W] ground truth, 255 ignored
    road_confidence: Optional[np.ndarray] = None  # binary model: the decoded confidence PNG
    category: Optional[str] = None  # KITTI um/umm/uu
    bev_table: object = None        # KITTI with calibration: its bird's-eye-view lookup


def decode_confidence(png: bytes) -> np.ndarray:
    """uint8 [H, W] of a confidence PNG (v / 255, the values the devkit scores)."""
    from PIL import Image
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img, dtype=np.uint8)


class ScoreboardFn(beam.CombineFn):
    """A thin shell over model.scoreboard.Scoreboard: ScoredImage elements in, the board of
    all of them out."""

    def __init__(self, class_names: list[str], by_category: bool):
        self.class_names = list(class_names)
        self.by_category = by_category

    def create_accumulator(self) -> Scoreboard:
        return Scoreboard(self.class_names, by_category=self.by_category)

    def add_input(self, board: Scoreboard, image: ScoredImage) -> Scoreboard:
        return board.add(*image)

    def merge_accumulators(self, boards) -> Scoreboard:
        boards = iter(boards)
        return next(boards).merge(boards)

    def extract_output(self, board: Scoreboard) -> Scoreboard:
        return board


def write_evaluation(board: Scoreboard, output: str, **fields) -> dict:
    """Write metrics.json and the board's figures (PR curves, or the confusion matrix);
    returns the metrics. Nothing is written when no image was scored."""
    if not board.num_images:
        return {}
    result = board.result(**fields)
    outputs.write_json(FileSystems.join(output, outputs.METRICS), result)
    for name, draw, draw_args, draw_kwargs in board.figures():
        outputs.write_figure(FileSystems.join(output, name), draw, *draw_args, **draw_kwargs)
    return result

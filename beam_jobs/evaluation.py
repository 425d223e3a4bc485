"""Evaluation inside the job: per-image statistics from model.metrics, summed by a CombineFn.

Every image adds its confusion matrix (argmax class ids); KITTI road images also add the
`RoadCounts` of their road confidence (the submission PNG's 0..255 values, exactly what the
devkit scores) per category um/umm/uu and overall.
The scores at the end are `model.metrics.kitti_scores` / `segmentation_scores` of the sums,
i.e. the same numbers as evaluating all images at once.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_jobs import outputs
from beam_jobs.sources import GroundTruth
from model import metrics

CONFUSION = "confusion_matrix"
ROAD = "road"
IMAGES = "images"
OVERALL = metrics.OVERALL


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
    from model.data import image_io, kitti

    try:
        if gt.kind == "kitti":
            with _local(gt.path) as p:
                return kitti.read_gt(p)
        if gt.kind == "ids":
            with _local(gt.path) as p:
                return image_io.read_label_png(p)
        if gt.kind == "coco":
            return _coco_label(gt, coco_categories or {})
    except image_io.ImageReadError as exc:
        raise GroundTruthError(str(exc)) from None
    raise ValueError(f"unknown ground-truth kind {gt.kind!r}")


def _coco_label(gt: GroundTruth, categories: dict) -> np.ndarray:
    """model.data.coco.semantic_mask over a one-image COCO index (same label rules)."""
    from pycocotools.coco import COCO

    from model.data.coco import semantic_mask

    info = {"id": 0, "height": gt.height, "width": gt.width}
    anns = [{**a, "image_id": 0, "id": i + 1} for i, a in enumerate(gt.annotations or [])]
    coco = COCO()
    coco.dataset = {"images": [info], "annotations": anns,
                    "categories": categories.get("categories", [])}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return semantic_mask(coco, info, categories["cat_id_to_label"])


def image_stats(dataset: str, category: Optional[str], seg, label: np.ndarray,
                num_classes: int) -> list[tuple[str, object]]:
    """[(key, statistic)] of one image: its confusion matrix, and for KITTI its RoadCounts
    and image count under its category and OVERALL (as model.evaluate groups them)."""
    stats: list[tuple[str, object]] = [
        (CONFUSION, metrics.confusion_matrix(seg.class_ids, label, num_classes))]
    if dataset == "kitti":
        from PIL import Image
        with Image.open(io.BytesIO(seg.confidence_png)) as img:
            road = np.asarray(img, dtype=np.uint8)  # v / 255, the submission PNG's values
        counts = metrics.road_counts(road, label)
        for group in (category or "other", OVERALL):
            stats += [(f"{ROAD}/{group}", counts), (f"{IMAGES}/{group}", 1)]
    return stats


class SumFn(beam.CombineFn):
    """Sum of additive statistics (RoadCounts, numpy confusion matrices)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, stat):
        return stat if acc is None else acc + stat

    def merge_accumulators(self, accs):
        total = None
        for acc in accs:
            if acc is not None:
                total = acc if total is None else total + acc
        return total

    def extract_output(self, acc):
        return acc


def scores(totals: dict, class_names: list[str], images: int) -> dict:
    """metrics.json content: model.metrics.metrics_record of the job's sums."""
    road = {k.split("/", 1)[1]: v for k, v in totals.items() if k.startswith(ROAD + "/")}
    per_group = {k.split("/", 1)[1]: v for k, v in totals.items() if k.startswith(IMAGES + "/")}
    return metrics.metrics_record(totals[CONFUSION], class_names, images, road, per_group)


def write_evaluation(totals: dict, output: str, class_names: list[str], images: int) -> dict:
    """Write metrics.json and pr_curve.png / confusion_matrix.png; returns the metrics."""
    from model import plots

    if not totals:
        return {}
    result = scores(totals, class_names, images)
    outputs.write_json(FileSystems.join(output, outputs.METRICS), result)
    road = {k.split("/", 1)[1]: v for k, v in sorted(totals.items()) if k.startswith(ROAD + "/")}
    if road:
        outputs.write_figure(FileSystems.join(output, outputs.PR_CURVE), plots.save_pr_curve,
                             road)
    else:
        outputs.write_figure(FileSystems.join(output, outputs.CONFUSION),
                             plots.save_confusion_matrix, totals[CONFUSION], class_names)
    return result

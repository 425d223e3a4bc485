"""Evaluation inside the job: per-image statistics from model.metrics, summed by a CombineFn.

Every image adds its confusion matrix (argmax class ids); KITTI images also add the
`RoadCounts` of their road (or lane) confidence per category um/umm/uu and overall, twice: in
the perspective view (the confidence PNG's 0..255 values, exactly what the devkit scores) and
in the bird's-eye view the benchmark ranks (the submission map, and the ground truth resampled
by the same table).
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
ROAD_BEV = "road_bev"
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


def image_stats(dataset: str, category: Optional[str], seg, label: np.ndarray,
                num_classes: int, confidence: Optional[np.ndarray] = None,
                bev_table=None) -> list[tuple[str, object]]:
    """[(key, statistic)] of one image: its confusion matrix, and for every binary model its
    RoadCounts (the devkit's road scores, as model.evaluate gives them) and image count:
    KITTI under its category and OVERALL (and in the bird's-eye view when `bev_table` is
    given), other datasets under OVERALL. `confidence`: the decoded confidence PNG (v / 255,
    the probability of class 1), decoded here when not given."""
    stats: list[tuple[str, object]] = [
        (CONFUSION, metrics.confusion_matrix(seg.class_ids, label, num_classes))]
    if dataset == "kitti" or num_classes == 2:
        road = decode_confidence(seg.confidence_png) if confidence is None else confidence
        counts = metrics.road_counts(road, label)
        bev = metrics.bev_road_counts(road, label, bev_table) if bev_table is not None else None
        groups = (category or "other", OVERALL) if dataset == "kitti" else (OVERALL,)
        for group in groups:
            stats += [(f"{ROAD}/{group}", counts), (f"{IMAGES}/{group}", 1)]
            if bev is not None:
                stats.append((f"{ROAD_BEV}/{group}", bev))
    return stats


def decode_confidence(png: bytes) -> np.ndarray:
    """uint8 [H, W] of a confidence PNG (v / 255, the values the devkit scores)."""
    from PIL import Image
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img, dtype=np.uint8)


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


def _group(totals: dict, prefix: str) -> dict:
    return {k.split("/", 1)[1]: v for k, v in sorted(totals.items())
            if k.startswith(prefix + "/")}


def scores(totals: dict, class_names: list[str], images: int, **fields) -> dict:
    """metrics.json content: model.metrics.metrics_record of the job's sums; `fields` say
    what was scored (task, COCO protocol)."""
    return metrics.metrics_record(totals[CONFUSION], class_names, images, _group(totals, ROAD),
                                  _group(totals, IMAGES), road_bev=_group(totals, ROAD_BEV),
                                  **fields)


def write_evaluation(totals: dict, output: str, class_names: list[str], images: int,
                     **fields) -> dict:
    """Write metrics.json and pr_curve.png (+ pr_curve_bev.png) / confusion_matrix.png;
    returns the metrics."""
    from model import plots

    if not totals:
        return {}
    result = scores(totals, class_names, images, **fields)
    outputs.write_json(FileSystems.join(output, outputs.METRICS), result)
    road = _group(totals, ROAD)
    if road:
        outputs.write_figure(FileSystems.join(output, outputs.PR_CURVE), plots.save_pr_curve,
                             road)
        road_bev = _group(totals, ROAD_BEV)
        if road_bev:
            outputs.write_figure(FileSystems.join(output, outputs.PR_CURVE_BEV),
                                 plots.save_pr_curve, road_bev,
                                 title="KITTI road: precision-recall, bird's-eye view")
    else:
        outputs.write_figure(FileSystems.join(output, outputs.CONFUSION),
                             plots.save_confusion_matrix, totals[CONFUSION], class_names)
    return result

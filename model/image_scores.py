"""Per-image scores and error overlays: what the report's gallery sorts and shows.

One JSON object per scored image, one line each, in `image_scores*.jsonl` of a run folder
(model.evaluate writes `image_scores.jsonl`, the Beam job `image_scores-NNNNN-of-MMMMM.jsonl`
shards). Both call `score_image`, so both give the same numbers for the same model output.

Rules (hand-checkable; pixels whose label is 255 are not counted):

* Binary models (KITTI road/lane, any two-class model): the road decision is the devkit's
  quantised confidence v >= 128 (p >= 0.5, the threshold of metrics.road_iou). With TP, FP,
  FN the pixel counts at that decision: PRE = TP / (TP + FP), REC = TP / (TP + FN),
  F = 2 TP / (2 TP + FP + FN), IoU = TP / (TP + FP + FN); a ratio whose denominator is 0 is
  null. The score is F. KITTI with calibration: the same in the bird's-eye view (`*_bev`).
* Multi-class models: the image's confusion matrix of the arg-max class ids; mIoU is the mean
  IoU over the classes present in the ground truth or the prediction; the score is mIoU.

Worst first means ascending score, images without a score (null) last, ties by image name.
Overlays: true positive, false positive, false negative in three colours over the image
(multi-class: a correct non-background pixel, a wrong non-background prediction, a labelled
non-background pixel predicted as background), downscaled JPEGs for the page.
"""
from __future__ import annotations

import glob
import io
import json
import math
import os
import pathlib
import time
from typing import Iterable, Optional

import numpy as np

from common.files import atomic_write_bytes
from contract.names import IGNORE_LABEL
from model import metrics

RECORDS_GLOB = "image_scores*.jsonl"
RECORDS_FILE = "image_scores.jsonl"   # model.evaluate's single file
OVERLAY_DIR = "image_overlays"
DECISION = metrics.IOU_THRESHOLD_INDEX  # v >= 128 of 255: road
# Outcome ids drawn by plots.overlay; true negatives and unscored pixels keep the image.
TP, FP, FN = 0, 1, 2
OUTCOME_COLOURS = ((0, 190, 60), (235, 40, 40), (40, 110, 255))  # green, red, blue
OVERLAY_MAX_WIDTH = 640
BEV_MAX_WIDTH = 200
JPEG_QUALITY = 90


def _ratio(num: int, den: int) -> Optional[float]:
    return num / den if den > 0 else None


# Pixel code label * 2 + road, label 0 (not road), 1 (road) or 2 (not counted: 255) ->
# outcome: 0 true negative, 1 false positive, 2 false negative, 3 true positive.
_CODE_OUTCOME = np.array([IGNORE_LABEL, FP, FN, TP, IGNORE_LABEL, IGNORE_LABEL], np.uint8)


def binary_scores(confidence: np.ndarray, label: np.ndarray) -> tuple[dict, np.ndarray]:
    """({tp, fp, fn, PRE, REC, F, IoU}, outcome map) of a uint8 road confidence and its label."""
    # One pass: a small code per pixel, counted by bincount (a few ms for a KITTI image).
    code = np.minimum(np.asarray(label), 2) * np.uint8(2)
    code += np.asarray(confidence) >= DECISION
    _, fp, fn, tp = (int(n) for n in np.bincount(code.ravel(), minlength=6)[:4])
    return {"tp": tp, "fp": fp, "fn": fn, "PRE": _ratio(tp, tp + fp), "REC": _ratio(tp, tp + fn),
            "F": _ratio(2 * tp, 2 * tp + fp + fn), "IoU": _ratio(tp, tp + fp + fn)
            }, _CODE_OUTCOME[code]


def class_scores(class_ids: np.ndarray, label: np.ndarray,
                 class_names) -> tuple[dict, np.ndarray]:
    """({mIoU, pixel_accuracy, class_iou}, outcome map) of arg-max class ids and their label."""
    cm = metrics.confusion_matrix(class_ids, label, len(class_names))
    iou = metrics.per_class_iou(cm)  # NaN where a class is in neither
    present = np.isfinite(iou)
    total = int(cm.sum())
    pred, label = np.asarray(class_ids), np.asarray(label)
    valid = label != IGNORE_LABEL
    outcome = np.full(label.shape, IGNORE_LABEL, np.uint8)
    outcome[valid & (pred == label) & (label != 0)] = TP
    outcome[valid & (pred != label) & (pred != 0)] = FP
    outcome[valid & (pred == 0) & (label != 0)] = FN
    return {"mIoU": float(iou[present].mean()) if present.any() else None,
            "pixel_accuracy": _ratio(int(np.trace(cm)), total),
            "class_iou": {name: float(v) for name, v, p in zip(class_names, iou, present) if p}
            }, outcome


def _factor(width: int, max_width: int) -> int:
    return max(1, math.ceil(width / max_width))


def overlay_picture(image: np.ndarray, outcome: np.ndarray, max_width: int) -> np.ndarray:
    """The outcome colours over the image (plots.overlay), both first reduced by an integer
    factor to at most `max_width` columns (the image by box averaging, the outcome by
    taking every factor-th pixel): a thumbnail costs a fraction of a full-size overlay."""
    from PIL import Image

    from model import plots

    factor = _factor(image.shape[1], max_width)
    if factor > 1:
        image = np.asarray(Image.fromarray(image).reduce(factor))
        outcome = outcome[::factor, ::factor][:image.shape[0], :image.shape[1]]
        image = image[:outcome.shape[0], :outcome.shape[1]]
    return plots.overlay(image, outcome, OUTCOME_COLOURS)


def _image_to_bev(image: np.ndarray, table) -> np.ndarray:
    """kitti_bev.to_bev of an RGB image, its pixels packed in one uint32 each: one gather of
    words instead of rows of three bytes (several times faster)."""
    from model.data import kitti_bev

    rgba = np.zeros((*image.shape[:2], 4), np.uint8)
    rgba[..., :3] = image
    packed = kitti_bev.to_bev(rgba.view(np.uint32)[..., 0], table, 0)
    return packed[..., None].view(np.uint8)[..., :3]


def _jpeg(picture: np.ndarray) -> bytes:
    # JPEG: ~30x faster to encode than PNG for these photos and ~7x smaller, which keeps a
    # report of thousands of images cheap (docs/results.md).
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def score_image(name: str, image: np.ndarray, label: np.ndarray, class_names,
                confidence: Optional[np.ndarray] = None,
                class_ids: Optional[np.ndarray] = None, bev_table=None,
                category: Optional[str] = None, path: Optional[str] = None,
                ) -> tuple[dict, dict[str, bytes]]:
    """(record, {relative overlay path: PNG bytes}) of one scored image.

    name: the image's stem (unique in a run; compare pages match images by it).
    Binary models need `confidence` (uint8 0..255, the probability of class 1 as the devkit
    reads it: metrics.quantize_probability of a float map); others need `class_ids`.
    `bev_table` (kitti_bev.lookup of the image's calibration) adds the bird's-eye view.
    """
    from model.data import kitti_bev

    record: dict = {"image": name, "path": path, "category": category}
    files: dict[str, bytes] = {}
    overlay = f"{OVERLAY_DIR}/{name}.jpg"
    if len(class_names) == 2:
        if confidence is None:
            raise ValueError(f"{name}: a binary model's image needs its road confidence")
        confidence = metrics.quantize_probability(confidence)
        scores, outcome = binary_scores(confidence, label)
        record.update(score_name="F", score=scores["F"], **scores)
        files[overlay] = _jpeg(overlay_picture(image, outcome, OVERLAY_MAX_WIDTH))
        if bev_table is not None:
            bev_scores, bev_outcome = binary_scores(
                kitti_bev.confidence_to_bev(confidence, bev_table),
                kitti_bev.label_to_bev(np.asarray(label), bev_table))
            record.update({f"{k}_bev": v for k, v in bev_scores.items()})
            record["overlay_bev"] = f"{OVERLAY_DIR}/{name}_bev.jpg"
            files[record["overlay_bev"]] = _jpeg(overlay_picture(
                _image_to_bev(image, bev_table), bev_outcome, BEV_MAX_WIDTH))
    else:
        if class_ids is None:
            raise ValueError(f"{name}: a multi-class model's image needs its class ids")
        scores, outcome = class_scores(class_ids, label, class_names)
        record.update(score_name="mIoU", score=scores["mIoU"], **scores)
        files[overlay] = _jpeg(overlay_picture(image, outcome, OVERLAY_MAX_WIDTH))
    record["overlay"] = overlay
    return record, files


def to_json_line(record: dict) -> str:
    return json.dumps(metrics.json_safe(record), sort_keys=True)


def _write_file(path: pathlib.Path, data: bytes) -> None:
    """A temporary name renamed into place (no half file), without common.files' fsync:
    thumbnails are rebuilt by rerunning, and an fsync per file would dominate their cost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Writer:
    """model.evaluate's side: records to <folder>/image_scores.jsonl, overlays beside it.

    It keeps the time it spends (`seconds`) and the time since it was made (`run_seconds`),
    so a run can say what its report cost."""

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self._lines: list[str] = []
        self._started = time.perf_counter()
        self.seconds = 0.0

    def score(self, *args, **kwargs) -> dict:
        """`score_image(*args, **kwargs)`, written; returns the record."""
        start = time.perf_counter()
        record, files = score_image(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.add(record, files)
        return record

    def add(self, record: dict, files: dict[str, bytes]) -> None:
        """Write a record scored elsewhere and its overlay files."""
        start = time.perf_counter()
        for relative, data in files.items():
            _write_file(self.folder / relative, data)
        self._lines.append(to_json_line(record))
        self.seconds += time.perf_counter() - start

    def close(self) -> None:
        start = time.perf_counter()
        atomic_write_bytes(self.folder / RECORDS_FILE,
                           "".join(line + "\n" for line in self._lines).encode())
        self.seconds += time.perf_counter() - start

    @property
    def run_seconds(self) -> float:
        return time.perf_counter() - self._started


def read_records(folder) -> list[dict]:
    """Every record of a run folder's image_scores*.jsonl files, in file then line order."""
    records = []
    for path in sorted(glob.glob(os.path.join(str(folder), RECORDS_GLOB))):
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def worst_first(records: Iterable[dict]) -> list[dict]:
    """Ascending score, records without a score last, ties by image name."""
    return sorted(records, key=lambda r: (r.get("score") is None, r.get("score") or 0.0,
                                          r["image"]))

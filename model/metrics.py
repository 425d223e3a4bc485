"""Segmentation metrics as additive counts: KITTI road devkit scores and confusion matrices.

Everything here is numpy only and streaming: per-image statistics (`RoadCounts`, confusion
matrices) are plain sums, so they can be added image by image, across workers, or inside an
Apache Beam CombineFn, and the scores are computed once at the end from the totals.

KITTI road (perspective view), equivalent to the official devkit (`evaluateRoad.py` with
`helper.evalExp` and `helper.pxEval_maximizeFMeasure`):

* The devkit reads an 8-bit probability PNG and uses p = v / 255. It scores 256 thresholds
  t_k = k / 255 (k = 0..255); a pixel is road at threshold k when p >= t_k, i.e. v >= k.
* Only valid pixels count (ground truth red channel > 0); road is blue channel > 0.
* FN[k], FP[k], and the numbers of positive/negative pixels are summed over all images of a
  category before any score is computed (pixel-level pooling, not a mean of per-image scores).
* precision = TP / (TP + FP + 1e-10), recall = TP / P; thresholds where both are 0 are
  dropped; F = 2PR / (P + R + 1e-10); MaxF is its maximum (the first one on ties).
* AP is the 11-point interpolated (Pascal VOC 2007 style) average precision: the mean over
  r in np.arange(0, 1.1, 0.1) of the highest precision among thresholds with recall >= r.
* PRE, REC, FPR, FNR are taken at the MaxF threshold.

The benchmark ranks the same scores in the bird's-eye view (BEV): model.scoreboard resamples
the map and the ground truth onto the devkit's metric grid first (model/data/kitti_bev.py).

Scores here are fractions in [0, 1]; the devkit prints them multiplied by 100.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from contract.names import IGNORE_LABEL

NUM_THRESHOLDS = 256
# The devkit's thresholds: np.array(range(0, 256)) / 255.0.
THRESHOLDS = np.arange(NUM_THRESHOLDS, dtype=np.float64) / 255.0
# The devkit's AP recall levels, with its floating-point values (0.30000000000000004, ...).
AP_RECALL_LEVELS = np.arange(0.0, 1.1, 0.1)
# Threshold index used for the binary IoU: 128/255 ~ 0.502, i.e. "road probability >= 0.5"
# after quantisation (round(0.5 * 255) = 128).
IOU_THRESHOLD_INDEX = 128
_EPS = 1e-10

KITTI_SCORE_KEYS = ("MaxF", "AP", "PRE", "REC", "FPR", "FNR", "threshold")


def quantize_probability(prob: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 0..255, as written to a KITTI submission PNG.

    v = round(clip(p, 0, 1) * 255) in float32, halves to even: the same rule as `tf.round` in
    the exported SavedModel's confidence output, so a float map, the exported confidence and
    the PNG written from either get identical scores. uint8 input is returned unchanged
    (v already means v / 255).
    """
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob
    if not np.issubdtype(prob.dtype, np.floating):
        raise ValueError(f"road probabilities must be float in [0, 1] or uint8, got {prob.dtype}")
    return np.rint(np.clip(prob.astype(np.float32), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


@dataclasses.dataclass
class RoadCounts:
    """Additive KITTI statistics: FN/FP at each of the 256 thresholds, and P/N pixel totals."""

    fn: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(NUM_THRESHOLDS, np.int64))
    fp: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(NUM_THRESHOLDS, np.int64))
    pos: int = 0
    neg: int = 0

    def __post_init__(self):
        self.fn = np.asarray(self.fn, dtype=np.int64)
        self.fp = np.asarray(self.fp, dtype=np.int64)
        if self.fn.shape != (NUM_THRESHOLDS,) or self.fp.shape != (NUM_THRESHOLDS,):
            raise ValueError(f"fn and fp must have {NUM_THRESHOLDS} entries, "
                             f"got {self.fn.shape} and {self.fp.shape}")
        self.pos = int(self.pos)
        self.neg = int(self.neg)

    def __add__(self, other: "RoadCounts") -> "RoadCounts":
        if not isinstance(other, RoadCounts):
            return NotImplemented
        return RoadCounts(self.fn + other.fn, self.fp + other.fp,
                          self.pos + other.pos, self.neg + other.neg)

    def __radd__(self, other):
        # Lets sum(list_of_counts) start from 0.
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def __eq__(self, other) -> bool:
        return (isinstance(other, RoadCounts) and self.pos == other.pos
                and self.neg == other.neg and np.array_equal(self.fn, other.fn)
                and np.array_equal(self.fp, other.fp))

    @property
    def tp(self) -> np.ndarray:
        return self.pos - self.fn

    @property
    def tn(self) -> np.ndarray:
        return self.neg - self.fp

    def to_dict(self) -> dict:
        return {"fn": self.fn.tolist(), "fp": self.fp.tolist(), "pos": self.pos, "neg": self.neg}

    @classmethod
    def from_dict(cls, data: Mapping) -> "RoadCounts":
        return cls(data["fn"], data["fp"], data["pos"], data["neg"])


def road_counts(road_prob: np.ndarray, label: np.ndarray) -> RoadCounts:
    """Devkit FN/FP histograms of one image.

    road_prob: [H, W] road probability, float in [0, 1] (quantised with
    `quantize_probability`) or uint8 0..255 meaning v / 255.
    label: [H, W] uint8, 1 road, 0 non-road, 255 ignored (outside the evaluated area).
    """
    values = quantize_probability(road_prob)
    label = np.asarray(label)
    if values.shape != label.shape or values.ndim != 2:
        raise ValueError(f"road_prob {values.shape} and label {label.shape} must be the same "
                         f"[H, W] shape")
    bad = (label != 0) & (label != 1) & (label != IGNORE_LABEL)
    if bad.any():
        raise ValueError(f"road labels must be 0, 1 or {IGNORE_LABEL}, "
                         f"found {np.unique(label[bad])[:5].tolist()}")
    pos_hist = np.bincount(values[label == 1], minlength=NUM_THRESHOLDS)
    neg_hist = np.bincount(values[label == 0], minlength=NUM_THRESHOLDS)
    # Road at threshold k iff v >= k: FN[k] = positives with v < k, FP[k] = negatives with v >= k.
    fn = np.concatenate(([0], np.cumsum(pos_hist)[:-1]))
    fp = np.cumsum(neg_hist[::-1])[::-1]
    return RoadCounts(fn, fp, int(pos_hist.sum()), int(neg_hist.sum()))


def pr_curve(counts: RoadCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, thresholds) at the devkit's thresholds, minus those where both are 0."""
    if counts.pos == 0:
        empty = np.zeros(0)
        return empty, empty, empty
    tp = counts.tp.astype(np.float64)
    recall = tp / float(counts.pos)
    precision = tp / (tp + counts.fp + _EPS)
    keep = ~((recall == 0) & (precision == 0))
    return recall[keep], precision[keep], THRESHOLDS[keep]


def kitti_scores(counts: RoadCounts) -> dict:
    """MaxF, AP, and PRE/REC/FPR/FNR at the MaxF threshold, as fractions in [0, 1].

    With no road pixel in the ground truth every score is NaN (the devkit fails there).
    """
    recall, precision, thresholds = pr_curve(counts)
    if counts.pos == 0 or recall.size == 0:
        return {key: float("nan") for key in KITTI_SCORE_KEYS}
    ap = 0.0
    for level in AP_RECALL_LEVELS:
        reached = recall >= level
        ap += float(precision[reached].max()) if reached.any() else 0.0
    ap /= len(AP_RECALL_LEVELS)
    f_measure = 2.0 * precision * recall / (precision + recall + _EPS)
    best = int(np.argmax(f_measure))
    # Dropped thresholds (TP = 0) are a suffix, so `best` also indexes the unfiltered arrays.
    tp = float(counts.tp[best])
    fp = float(counts.fp[best])
    fn = float(counts.fn[best])
    return {
        "MaxF": float(f_measure[best]),
        "AP": ap,
        "PRE": tp / (tp + fp) if tp + fp > 0 else float("nan"),
        "REC": tp / counts.pos,
        "FPR": fp / counts.neg if counts.neg > 0 else float("nan"),
        "FNR": fn / counts.pos,
        "threshold": float(thresholds[best]),
    }


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_LABEL) -> np.ndarray:
    """int64 [C, C] pixel counts, rows = ground truth, columns = prediction.

    Pixels whose label is `ignore_index` are skipped. Other labels and all predictions must be
    in [0, num_classes).
    """
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    if label.dtype == np.uint8 and num_classes <= ignore_index <= 255:
        return _confusion_matrix_uint8(pred, label, num_classes, ignore_index)
    valid = label != ignore_index
    gt = label[valid].astype(np.int64)
    pr = pred[valid].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}, "
                         f"found {gt.min()}..{gt.max()}")
    if pr.size and (pr.min() < 0 or pr.max() >= num_classes):
        raise ValueError(f"predicted class ids must be in [0, {num_classes}), "
                         f"found {pr.min()}..{pr.max()}")
    flat = np.bincount(gt * num_classes + pr, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _confusion_matrix_uint8(pred, label, num_classes, ignore_index):
    # Fast path for uint8 labels (the usual case): one bincount over all 256 possible label
    # rows, no boolean masking; the ignore row is dropped and other stray rows are errors.
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class ids must be in [0, {num_classes}), "
                         f"found {pred.min()}..{pred.max()}")
    index = label.astype(np.int64) * num_classes + pred.astype(np.int64)
    rows = np.bincount(index.ravel(), minlength=256 * num_classes).reshape(256, num_classes)
    stray = rows.sum(axis=1) > 0
    stray[:num_classes] = False
    stray[ignore_index] = False
    if stray.any():
        found = np.flatnonzero(stray)
        raise ValueError(f"label values must be in [0, {num_classes}) or {ignore_index}, "
                         f"found {found[:5].tolist()}")
    return rows[:num_classes].astype(np.int64)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN for a class absent from both ground truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def segmentation_scores(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Mean IoU, pixel accuracy, per-class IoU, mean accuracy, frequency-weighted IoU.

    Classes absent from both ground truth and prediction get NaN IoU and are left out of the
    mean; classes absent from the ground truth are left out of mean_accuracy.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix {cm.shape} does not match "
                         f"{len(class_names)} class names")
    iou = per_class_iou(cm)
    total = cm.sum()
    gt_pixels = cm.sum(axis=1)
    nan = float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        class_acc = np.where(gt_pixels > 0, np.diag(cm) / gt_pixels, np.nan)
    present = gt_pixels > 0
    return {
        "mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else nan,
        "pixel_accuracy": float(np.trace(cm) / total) if total > 0 else nan,
        "mean_accuracy": float(np.nanmean(class_acc)) if present.any() else nan,
        "frequency_weighted_iou": (float(np.sum(gt_pixels[present] / total * iou[present]))
                                   if total > 0 else nan),
        "per_class_iou": {name: float(value) for name, value in zip(class_names, iou)},
    }


def road_iou(stats: RoadCounts | np.ndarray, road_class: int = 1) -> float:
    """IoU of the road class: from RoadCounts at threshold 128/255 (p >= 0.5), or from a
    confusion matrix (class `road_class`, argmax predictions). NaN when road never occurs."""
    if isinstance(stats, RoadCounts):
        k = IOU_THRESHOLD_INDEX
        tp = int(stats.tp[k])
        union = tp + int(stats.fp[k]) + int(stats.fn[k])
        return tp / union if union > 0 else float("nan")
    return float(per_class_iou(stats)[road_class])


OVERALL = "overall"


def json_safe(value):
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return value


def _road_table(road: Mapping[str, RoadCounts], images_per_group: Mapping[str, int]) -> dict:
    """Scores per group, categories sorted and OVERALL last."""
    groups = sorted(g for g in road if g != OVERALL) + [g for g in road if g == OVERALL]
    return {g: {**kitti_scores(road[g]), "IoU": road_iou(road[g]),
                "num_images": int(images_per_group.get(g, 0))} for g in groups}


def metrics_record(cm: np.ndarray, class_names: Sequence[str], num_images: int,
                   road: Mapping[str, RoadCounts] | None = None,
                   images_per_group: Mapping[str, int] | None = None,
                   road_bev: Mapping[str, RoadCounts] | None = None, **fields) -> dict:
    """The content of metrics.json, the one layout model.evaluate and the Beam job write.

    cm: summed confusion matrix; road: summed RoadCounts per group (KITTI categories and
    OVERALL, or only OVERALL for other binary models) with images_per_group beside it;
    road_bev: the same counts in the bird's-eye view (KITTI), written as "kitti_bev";
    fields: where the numbers come from (checkpoint, saved_model, split, protocol, ...).
    """
    result: dict = {"split_size": int(num_images), "class_names": list(class_names), **fields}
    result.update(segmentation_scores(cm, class_names))
    counts = dict(images_per_group or {})
    if road:
        result["kitti"] = _road_table(road, counts)
    if road_bev:
        result["kitti_bev"] = _road_table(road_bev, counts)
    result["confusion_matrix"] = np.asarray(cm).tolist()
    return json_safe(result)

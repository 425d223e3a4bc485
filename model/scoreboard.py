"""One accumulator of every evaluation score: model.evaluate adds images to it directly, the
Beam job's CombineFn is a thin shell over it (add, merge, result).

A Scoreboard holds only additive counts (model.metrics): the confusion matrix of argmax class
ids, and for a binary model the devkit's `RoadCounts` of the road confidence, in the
perspective view and (given an image's bird's-eye-view table) in the bird's-eye view, under
"overall" and, for datasets grouped by KITTI category, under the image's category too. Adding
images one by one, or merging boards filled from any partition of them in any order, gives
the same counts, so `result()` is the same as scoring all images at once.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from contract.names import IGNORE_LABEL
from model import metrics
from model.data import kitti_bev

OTHER_CATEGORY = "other"  # a KITTI-grouped image whose name has no um/umm/uu category


def bev_road_counts(road_prob: np.ndarray, label: np.ndarray, table) -> metrics.RoadCounts:
    """Devkit counts in the benchmark's bird's-eye view (model.data.kitti_bev).

    The confidence is quantised first (the perspective PNG a submission starts from), then
    it and the ground truth are resampled by the same `table` (`kitti_bev.lookup` of the
    image's calibration): cells out of view are 0 in the map and not evaluated in the truth,
    as when the devkit's transform2BEV is run on both.
    """
    values = metrics.quantize_probability(road_prob)
    return metrics.road_counts(kitti_bev.confidence_to_bev(values, table),
                               kitti_bev.label_to_bev(np.asarray(label), table))


class Scoreboard:
    """Counts of images scored so far (pattern: torchvision's ConfusionMatrix update/compute/
    reduce, torcheval's merge_state).

    class_names: the model's classes, in class-id order.
    by_category: group road scores by KITTI category (um, umm, uu) as well as overall.
    """

    def __init__(self, class_names: Sequence[str], by_category: bool = False):
        self.class_names = list(class_names)
        self.by_category = bool(by_category)
        n = len(self.class_names)
        self.confusion = np.zeros((n, n), np.int64)
        self.road: dict[str, metrics.RoadCounts] = {}
        self.road_bev: dict[str, metrics.RoadCounts] = {}
        self.images: dict[str, int] = {}
        self.num_images = 0

    @property
    def road_scores(self) -> bool:
        """Any binary model gets the devkit's road scores, class 1 positive."""
        return len(self.class_names) == 2

    def check_label(self, label: np.ndarray) -> None:
        """ValueError when `label` has a value outside the model's classes that is not the
        ignore label (what `add` would refuse), for callers that check before other work."""
        found = np.unique(np.asarray(label))
        stray = found[(found < 0) | ((found >= len(self.class_names)) & (found != IGNORE_LABEL))]
        if stray.size:
            raise ValueError(f"label values must be in [0, {len(self.class_names)}) or "
                             f"{IGNORE_LABEL}, found {stray[:5].tolist()}")

    def add(self, prediction: np.ndarray, label: np.ndarray,
            road_confidence: Optional[np.ndarray] = None, category: Optional[str] = None,
            bev_table=None) -> "Scoreboard":
        """Add one image: `prediction` its uint8 [H, W] class ids, `label` its ground truth
        (255 ignored); for a binary model `road_confidence` its [H, W] probability of class 1
        (float in [0, 1], or uint8 v meaning v / 255 as in a confidence PNG), `category` its
        KITTI category, `bev_table` its kitti_bev lookup (bird's-eye-view scores). Returns
        self. Raises ValueError (and adds nothing) for a label the model's classes do not
        cover or arrays of different shapes."""
        confusion = metrics.confusion_matrix(prediction, label, len(self.class_names))
        groups, counts, bev = (), None, None
        if self.road_scores:
            if road_confidence is None:
                raise ValueError("a binary model's image needs its road confidence")
            counts = metrics.road_counts(road_confidence, label)
            if bev_table is not None:
                bev = bev_road_counts(road_confidence, label, bev_table)
            groups = ((category or OTHER_CATEGORY, metrics.OVERALL) if self.by_category
                      else (metrics.OVERALL,))
        # Everything is computed before anything is added: a bad label leaves the board as it was.
        self.confusion += confusion
        self.num_images += 1
        for group in groups:
            self.road[group] = self.road.get(group, metrics.RoadCounts()) + counts
            self.images[group] = self.images.get(group, 0) + 1
            if bev is not None:
                self.road_bev[group] = self.road_bev.get(group, metrics.RoadCounts()) + bev
        return self

    def merge(self, others: Iterable["Scoreboard"]) -> "Scoreboard":
        """Add the counts of other boards (of the same classes) into this one; returns self."""
        for other in others:
            if (other.class_names != self.class_names
                    or other.by_category != self.by_category):
                raise ValueError(f"cannot merge a board of {other.class_names} "
                                 f"(by_category={other.by_category}) into one of "
                                 f"{self.class_names} (by_category={self.by_category})")
            self.confusion += other.confusion
            self.num_images += other.num_images
            for mine, theirs in ((self.road, other.road), (self.road_bev, other.road_bev),
                                 (self.images, other.images)):
                for group, value in theirs.items():
                    mine[group] = mine[group] + value if group in mine else value
        return self

    def __eq__(self, other) -> bool:
        return (isinstance(other, Scoreboard) and self.class_names == other.class_names
                and self.by_category == other.by_category
                and self.num_images == other.num_images
                and np.array_equal(self.confusion, other.confusion)
                and self.road == other.road and self.road_bev == other.road_bev
                and self.images == other.images)

    def result(self, **fields) -> dict:
        """metrics.json content (model.metrics.metrics_record); `fields` say what was scored
        (task, COCO protocol, checkpoint, split, ...)."""
        return metrics.metrics_record(self.confusion, self.class_names, self.num_images,
                                      self.road, self.images, road_bev=self.road_bev, **fields)

    def figures(self) -> list[tuple[str, object, tuple, dict]]:
        """The figures of these scores as (file name, model.plots function, args, kwargs):
        the PR curves of a binary model (perspective, and bird's-eye view when scored), else
        the confusion matrix. Call `function(path, *args, **kwargs)` to draw one."""
        from model import plots  # matplotlib only where figures are drawn

        if self.road:
            figures = [(PR_CURVE, plots.save_pr_curve, (_ordered(self.road),), {})]
            if self.road_bev:
                figures.append((PR_CURVE_BEV, plots.save_pr_curve, (_ordered(self.road_bev),),
                                {"title": "KITTI road: precision-recall, bird's-eye view"}))
            return figures
        return [(CONFUSION_FIGURE, plots.save_confusion_matrix,
                 (self.confusion, self.class_names), {})]


PR_CURVE = "pr_curve.png"
PR_CURVE_BEV = "pr_curve_bev.png"
CONFUSION_FIGURE = "confusion_matrix.png"


def _ordered(groups: dict) -> dict:
    """Categories sorted, overall last (the order of the tables and the curves' legend)."""
    return {g: groups[g] for g in sorted(g for g in groups if g != metrics.OVERALL)
            + [g for g in groups if g == metrics.OVERALL]}

"""The dataset registry: one object per dataset, found by name (pattern: torchvision's
references/segmentation `get_dataset`, a dict name -> entry).

Every caller that used to branch on a dataset's name (model.train, model.evaluate, the Beam
sources and job, serving.client) asks the entry instead: which (image, ground truth) pairs a
root holds, how a label is read, the class names, tasks and label protocols, whether scores
group by KITTI category and whether a bird's-eye view exists, and, for the Beam job (which
lists files itself through Beam's FileSystems), where an image's ground truth and
calibration lie, as pure path arithmetic. No code outside model/data compares a dataset
name. A new dataset is a `Dataset` subclass passed to `register` (tests register toys).
"""
from __future__ import annotations

import os
import pathlib
import posixpath
import random
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import numpy as np

from common.cli import UserError
from contract import kitti as contract_kitti
from contract.names import COCO_PROTOCOLS
from model.data import coco, folder, image_io, kitti, synthetic  # light: no TF, no pycocotools

ROAD_COLOURS = [(0, 0, 0), (255, 0, 255)]  # not road: black (left undrawn), road: magenta


def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (0 black, 1 maroon, 2 green, ...): distinct, well known."""
    colours = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def colours_for(class_names) -> list[tuple[int, int, int]]:
    """Road colours for a binary model, the VOC palette otherwise."""
    return list(ROAD_COLOURS) if len(class_names) == 2 else palette(len(class_names))


@dataclass
class SegmentationData:
    """What the trainer needs: class names/colours, label file format and the split."""
    name: str
    class_names: list[str]
    colours: list[tuple[int, int, int]]
    label_format: str  # 'kitti' (RGB gt decoded devkit-style) or 'ids' (uint8 PNG of ids)
    train: list[tuple[str, str]] = field(default_factory=list)
    val: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def random_split(pairs, val_fraction: float = 0.2, seed: int = 0):
    """Seeded random (train, val) split, independent of the input order."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = sorted(tuple(p) for p in pairs)
    random.Random(seed).shuffle(items)
    n_val = int(round(len(items) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(items) >= 2:
        n_val = 1
    return sorted(items[n_val:]), sorted(items[:n_val])


@dataclass
class Options:
    """What a caller may ask of a dataset; each entry reads the fields it has a use for."""
    task: str = "road"
    categories: object = "all"
    coco_protocol: str = "fcnseg"
    val_fraction: float = 0.2
    seed: int = 0
    cache_dir: str | os.PathLike = "cache"
    image_size: tuple = (160, 576)
    num_synthetic: int = 300
    min_area_fraction: float = 0.0
    progress: bool = True
    annotations: Optional[str] = None  # COCO: an instances JSON instead of <root>/annotations


class Dataset:
    """One dataset. Subclasses set the class attributes and implement `list_pairs`,
    `class_names` and `read_label` (or override `load` / `labelled_pairs`)."""

    name: ClassVar[str]
    label_format: ClassVar[str] = "ids"     # 'kitti' colour PNGs or 'ids' class-id PNGs
    tasks: ClassVar[tuple[str, ...]] = ()   # KITTI: road, lane; others have none
    protocols: ClassVar[tuple[str, ...]] = ()  # COCO: label rules (contract.names)
    by_category: ClassVar[bool] = False     # road scores also per KITTI category
    bird_eye_view: ClassVar[bool] = False   # the benchmark's BEV scores exist (calibration)
    needs_root: ClassVar[bool] = True       # synthetic scenes are generated, no folder
    has_categories: ClassVar[bool] = False  # COCO: the classes are chosen categories
    default_image_size: ClassVar[tuple[int, int]] = (320, 320)
    # Beam job: folders under an input root where the images lie (first that exists)
    image_folders: ClassVar[tuple[str, ...]] = ()
    # Beam job: the images come from an annotation file (COCO), not from a file listing
    lists_annotations: ClassVar[bool] = False

    # --- what training and evaluation read -------------------------------------------------

    def list_pairs(self, root: pathlib.Path, options: Options) -> list[tuple[str, str]]:
        raise NotImplementedError

    def class_names(self, root: Optional[pathlib.Path], options: Options,
                    pairs=None) -> list[str]:
        raise NotImplementedError

    def read_label(self, path) -> np.ndarray:
        """uint8 [H, W] class ids (255 ignored) of one ground-truth file."""
        return image_io.read_label_png(path)

    def split(self, pairs, options: Options):
        return random_split(pairs, options.val_fraction, options.seed)

    def check_root(self, root) -> Optional[pathlib.Path]:
        if not self.needs_root:
            return None
        if root is None:
            raise UserError("--data-root", f"dataset {self.name!r} needs a root folder")
        root = pathlib.Path(root)
        if not root.is_dir():
            raise UserError(root, f"{self.name} dataset folder not found")
        return root

    def load(self, root, options: Options) -> SegmentationData:
        """The training and validation pairs and the class names (model.train)."""
        root = self.check_root(root)
        pairs = self.list_pairs(root, options)
        train, val = self.split(pairs, options)
        names = self.class_names(root, options, pairs)
        return SegmentationData(self.name, names, colours_for(names), self.label_format,
                                train, val)

    def labelled_pairs(self, root, split: str, options: Options,
                       num_classes: Optional[int] = None) -> list[tuple[str, str]]:
        """Pairs of `split` ('all', 'train' or 'val', split as `load` splits) under `root`
        (model.evaluate --dataset); `num_classes` is the model's, checked against the
        labels where the dataset can tell."""
        root = self.check_root(root)
        pairs = self.list_pairs(root, options)
        if split == "all":
            return pairs
        return self.split(pairs, options)[split == "val"]

    def task_of(self, recorded_task: Optional[str], task: Optional[str]) -> Optional[str]:
        """The task to score: the one asked for, else the model's, else the first."""
        if not self.tasks:
            return None
        return task or recorded_task or self.tasks[0]

    # --- what the Beam job asks, as path arithmetic (it checks existence itself) ---------

    def category_of(self, image_path: str) -> Optional[str]:
        """The group an image's road scores fall under besides OVERALL (by_category)."""
        return None

    def ground_truth_path(self, image_path: str, task: Optional[str],
                          labels_dir: Optional[str]) -> Optional[str]:
        """Where an image's ground truth would be (None: it has none)."""
        if labels_dir:
            return posixpath.join(labels_dir.rstrip("/"),
                                  posixpath.splitext(posixpath.basename(image_path))[0]
                                  + ".png")
        return None

    def calibration_path(self, image_path: str, task: Optional[str]) -> Optional[str]:
        """The bird's-eye-view calibration file of an image the task covers, else None."""
        return None

    def submission_name(self, image_path: str, task: Optional[str]) -> Optional[str]:
        """The benchmark's result file name of an image (KITTI), else None."""
        return None

    def image_glob(self, task: Optional[str]) -> str:
        return "*"

    def default_class_names(self, task: Optional[str]) -> list[str]:
        """Class names when the model does not say (grpc without --model-dir)."""
        return []


class Kitti(Dataset):
    """KITTI road `data_road`: tasks road and lane, devkit ground truth, split stratified by
    um/umm/uu, bird's-eye view from each image's calibration."""
    name = "kitti"
    label_format = "kitti"
    tasks = ("road", "lane")
    by_category = True
    bird_eye_view = True
    default_image_size = (160, 576)
    image_folders = ("training/image_2", "image_2")

    def list_pairs(self, root, options):
        return kitti.list_pairs(root, task=options.task)

    def split(self, pairs, options):
        return kitti.stratified_split(pairs, options.val_fraction, options.seed)

    def class_names(self, root, options, pairs=None):
        return self.default_class_names(options.task)

    def default_class_names(self, task):
        task = task or self.tasks[0]
        return [f"not {task}", task]

    def read_label(self, path):
        return kitti.read_gt(path)

    def image_glob(self, task):
        return "um_*.png" if task == "lane" else "*.png"

    def category_of(self, image_path):
        try:
            return contract_kitti.category_of(posixpath.basename(str(image_path)))
        except contract_kitti.NotAKittiName:
            return None

    def submission_name(self, image_path, task):
        try:
            return contract_kitti.submission_name(posixpath.basename(image_path), task or "road")
        except contract_kitti.NotAKittiName:
            return None

    def ground_truth_path(self, image_path, task, labels_dir):
        if not self.submission_name(image_path, task):  # not KITTI, or not the task's
            return None
        name = contract_kitti.gt_name(posixpath.basename(image_path), task or "road")
        return posixpath.join(posixpath.dirname(posixpath.dirname(image_path)), "gt_image_2",
                              name)

    def calibration_path(self, image_path, task):
        if not self.submission_name(image_path, task):
            return None
        name = contract_kitti.calib_name(posixpath.basename(image_path))
        return posixpath.join(posixpath.dirname(posixpath.dirname(image_path)), "calib", name)


class Coco(Dataset):
    """COCO through pycocotools: masks of the chosen categories rendered by a label protocol;
    train = train2017, val = val2017."""
    name = "coco"
    protocols = COCO_PROTOCOLS
    has_categories = True
    lists_annotations = True

    def _split_folder(self, split: str) -> str:
        return "train2017" if split == "train" else "val2017"

    def _render(self, root, split: str, options: Options, annotations=None):
        folder = self._split_folder(split)
        ann = pathlib.Path(annotations) if annotations else coco.find_annotation_file(root, folder)
        image_dir = root if annotations else root / folder
        return coco.render_masks(ann, image_dir, pathlib.Path(options.cache_dir),
                                 categories=options.categories,
                                 min_area_fraction=options.min_area_fraction,
                                 progress=options.progress, protocol=options.coco_protocol,
                                 train=split == "train")

    def load(self, root, options):
        root = self.check_root(root)
        train = self._render(root, "train", options)
        val = self._render(root, "val", options)
        names = coco.cached_class_names(coco.find_annotation_file(root, "train2017"),
                                        pathlib.Path(options.cache_dir), options.categories,
                                        options.coco_protocol)
        return SegmentationData(self.name, names, palette(len(names)), self.label_format,
                                train, val)

    def labelled_pairs(self, root, split, options, num_classes=None):
        names = options.categories
        if num_classes is not None and not isinstance(names, str) and \
                len(names) + 1 != num_classes:
            raise ValueError(f"--categories names {len(names)} classes; the model has "
                             f"{num_classes} (background + {num_classes - 1})")
        root = self.check_root(root)
        return self._render(root, split, options, options.annotations)


class Folder(Dataset):
    """Any folder with images/ and labels/ (class-id PNGs, 255 = ignore), optional
    classes.txt; seeded random split."""
    name = "folder"

    def list_pairs(self, root, options):
        return self._scan(root, options)[0]

    def _scan(self, root, options):
        pairs = folder.list_pairs(root / "images", root / "labels")
        # Reads every label once: finds the class count, and rewrites palette/16-bit PNGs
        # as plain 8-bit ones (the 'ids' format the tf.data pipeline decodes).
        return folder.scan_labels(pairs, pathlib.Path(options.cache_dir),
                                  progress=options.progress)

    def load(self, root, options):
        root = self.check_root(root)
        pairs, top, top_file = self._scan(root, options)
        classes_txt = root / "classes.txt"
        if classes_txt.is_file():
            names = folder.read_class_names(classes_txt)
            check_class_ids(top, len(names), top_file, f"{classes_txt} names")
        else:
            names = [f"class_{i}" for i in range(max(top, 1) + 1)]
        train, val = self.split(pairs, options)
        return SegmentationData(self.name, names, palette(len(names)), self.label_format,
                                train, val)

    def labelled_pairs(self, root, split, options, num_classes=None):
        root = self.check_root(root)
        pairs, top, top_file = self._scan(root, options)
        if num_classes is not None:
            check_class_ids(top, num_classes, top_file, "the model has")
        if split == "all":
            return pairs
        return self.split(pairs, options)[split == "val"]


class Synthetic(Dataset):
    """Road scenes generated in code (no download): binary, seeded."""
    name = "synthetic"
    needs_root = False
    default_image_size = (160, 576)

    def list_pairs(self, root, options):
        h, w = (int(v) for v in options.image_size)
        out = pathlib.Path(options.cache_dir) / f"synthetic_{h}x{w}_seed{options.seed}"
        return synthetic.generate(out, options.num_synthetic, height=h, width=w,
                                  seed=options.seed, progress=options.progress)

    def class_names(self, root, options, pairs=None):
        return ["not road", "road"]


def check_class_ids(top: int, num_classes: int, source, whose: str) -> None:
    """The one class-count check: the highest class id found in `source` must be below
    `num_classes` (255, the ignore label, is never counted as a class)."""
    if top >= num_classes:
        raise ValueError(f"{source}: class id {top}, but {whose} only {num_classes} classes "
                         f"(ids 0..{num_classes - 1}, 255 = ignore)")


DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Add (or replace) a dataset under its name; returns it."""
    DATASETS[dataset.name] = dataset
    return dataset


def unregister(name: str) -> None:
    DATASETS.pop(name, None)


def get_dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose one of "
                         f"{', '.join(DATASETS)}") from None


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


for _entry in (Synthetic(), Kitti(), Coco(), Folder()):
    register(_entry)

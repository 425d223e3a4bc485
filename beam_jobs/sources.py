"""Inputs of the Beam job per dataset: which files to read and where their ground truth is.

Every input becomes one `ImageItem` (path, encoded bytes, optional ground-truth reference;
its size is filled in by `validate.py`) or one dead letter; nothing is decoded here. Paths go through Beam's FileSystems, so local paths and gs:// work.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import posixpath
from typing import Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from common.files import OutsideRootError, resolve_inside
from contract.files import is_image_name
from model.data import dataset_names, get_dataset


def datasets() -> tuple[str, ...]:
    """The registered datasets the job can read: those that live in files."""
    return tuple(name for name in dataset_names() if get_dataset(name).needs_root)


@dataclasses.dataclass
class GroundTruth:
    """Where an image's labels come from: `path`, a ground-truth file read by the dataset's
    registry entry (model.data), or `annotations`, the image's COCO annotation dicts."""
    dataset: str
    path: Optional[str] = None
    annotations: Optional[list] = None
    height: Optional[int] = None  # COCO: the size the annotations were drawn at
    width: Optional[int] = None


@dataclasses.dataclass
class ImageItem:
    path: str
    data: bytes = b""
    width: int = 0
    height: int = 0
    format: str = ""
    category: Optional[str] = None  # KITTI um/umm/uu, used to key the evaluation
    gt: Optional[GroundTruth] = None
    calib_path: Optional[str] = None  # KITTI: <split>/calib/<cat>_<n>.txt
    calib: Optional[str] = None       # its text (1 KB), for the bird's-eye view


@dataclasses.dataclass
class DeadLetter:
    path: str
    stage: str  # read | calibration | validate | inference | ground_truth | write
    reason: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def stem_of(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def expand_input(input_path: str, dataset: str, task: str = "road") -> str:
    """A directory becomes a glob over its files; a dataset root resolves to its image
    folder (KITTI: training/image_2, only um_*.png for the lane task, which exists for um
    only)."""
    if any(c in input_path for c in "*?["):
        return input_path
    base = input_path.rstrip("/")
    entry = get_dataset(dataset)
    images = entry.image_glob(task)
    for sub in entry.image_folders:
        candidate = FileSystems.join(base, sub)
        if _is_dir(candidate):
            return FileSystems.join(candidate, images)
    if images != "*" and _is_dir(base):  # the image folder itself
        return FileSystems.join(base, images)
    if _is_dir(base):
        return FileSystems.join(base, "*")
    return input_path


def _is_dir(path: str) -> bool:
    # FileSystems has no isdir; a directory is something with files under it.
    try:
        return bool(FileSystems.match([FileSystems.join(path, "*")], limits=[1])[0].metadata_list)
    except Exception:  # noqa: BLE001 - unreachable bucket, bad scheme: not a directory
        return False


def pattern_root(pattern: str) -> str:
    """The folder a file pattern lists: its leading folders without wildcards.

    Whatever the pattern matches must resolve inside it (a symlink out of it is refused)."""
    parts = pattern.split("/")[:-1]
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            parts = parts[:i]
            break
    return "/".join(parts) or "."


def outside_root(root: str, path: str) -> Optional[str]:
    """None when `path` resolves inside `root`, else the reason (no I/O on remote paths;
    local paths are resolved through symlinks, so a link out of the folder is caught)."""
    if "://" in root:
        relative = posixpath.relpath(path.split("://", 1)[-1], root.split("://", 1)[-1])
    else:
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    try:
        resolve_inside(root, relative)
    except OutsideRootError as exc:
        return f"{exc}; not opened"
    return None


class _ReadFile(beam.DoFn):
    """ReadableFile (or (path, gt) from COCO) -> ImageItem with bytes, or a dead letter."""

    def __init__(self, dataset: str, labels_dir: Optional[str] = None,
                 root: Optional[str] = None, task: str = "road"):
        self.dataset = dataset
        self.labels_dir = labels_dir
        self.task = task  # kitti: whose ground truth scores the model (road or lane)
        self.root = root  # listed files must resolve inside it (COCO entries come checked)
        self.read_errors = beam.metrics.Metrics.counter("fcnseg", "failed_read")
        self.images_in = beam.metrics.Metrics.counter("fcnseg", "images_in")

    def process(self, element):
        self.images_in.inc()
        if isinstance(element, DeadLetter):  # a COCO file_name refused by load_coco_index
            self.read_errors.inc()
            yield beam.pvalue.TaggedOutput("dead", element)
            return
        if isinstance(element, fileio.ReadableFile):
            path, gt = element.metadata.path, None
        else:
            path, gt = element
        outside = self.root and outside_root(self.root, path)
        if outside:
            self.read_errors.inc()
            yield beam.pvalue.TaggedOutput("dead", DeadLetter(path, "read", outside))
            return
        try:
            with FileSystems.open(path, compression_type="uncompressed") as f:
                data = f.read()
        except Exception as exc:  # noqa: BLE001 - any I/O failure is this file's dead letter
            self.read_errors.inc()
            reason = "file not found" if not _exists(path) else f"cannot read file ({exc})"
            yield beam.pvalue.TaggedOutput("dead", DeadLetter(path, "read", reason))
            return
        item = ImageItem(path=path, data=data, gt=gt)
        entry = get_dataset(self.dataset)
        item.category = entry.category_of(path)
        if item.gt is None:
            gt_path = entry.ground_truth_path(path, self.task, self.labels_dir)
            if gt_path and FileSystems.exists(gt_path):
                item.gt = GroundTruth(self.dataset, path=gt_path)
        item.calib_path = entry.calibration_path(path, self.task)
        if item.calib_path:
            try:  # read now: without it there is no submission map, so no work is done
                with FileSystems.open(item.calib_path, compression_type="uncompressed") as f:
                    item.calib = f.read().decode("utf-8", errors="replace")
            except Exception as exc:  # noqa: BLE001 - this image's dead letter
                reason = (f"calibration file {item.calib_path} not found"
                          if not _exists(item.calib_path)
                          else f"cannot read calibration file {item.calib_path} ({exc})")
                yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                    path, "calibration", reason + " (the bird's-eye-view submission "
                    "map needs P2, R0_rect and Tr_cam_to_road)"))
                return
        if item.gt is not None and item.gt.path:
            outside = outside_root(posixpath.dirname(item.gt.path), item.gt.path)
            if outside:
                yield beam.pvalue.TaggedOutput("dead", DeadLetter(
                    path, "ground_truth", f"ground truth {item.gt.path}: {outside}"))
                return
        yield item


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:  # noqa: BLE001
        return False


def load_coco_index(annotations: str, pattern: str) -> tuple[list[tuple[str, GroundTruth]], dict]:
    """The images of a COCO annotation file that match `pattern`, with their annotations.

    Returns ([(image_path, GroundTruth('coco', annotations=[...])), ...], coco_json_without
    'images'/'annotations') - the rest (categories) is what the masks need. Images are looked
    for in the pattern's directory by their `file_name`; listed images absent on disk become
    dead letters when read, so every listed image is accounted for.
    """
    with FileSystems.open(annotations, compression_type="uncompressed") as f:
        try:
            coco = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{annotations}: not a valid COCO JSON ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise ValueError(f"{annotations}: COCO annotation file lacks '{key}'")
    image_dir = posixpath.dirname(pattern) if any(c in pattern for c in "*?[") else pattern
    by_image: dict[int, list] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    entries: list = []
    for img in sorted(coco["images"], key=lambda i: i["file_name"]):
        path = FileSystems.join(image_dir, img["file_name"])
        if image_dir != pattern and not fnmatch.fnmatch(path, pattern):
            continue
        try:  # a file_name such as ../../etc/passwd is refused before anything is opened
            resolve_inside(image_dir, img["file_name"])
        except OutsideRootError as exc:
            entries.append(DeadLetter(path, "read", f"{annotations}: COCO file_name {exc}; "
                                                    f"not opened"))
            continue
        gt = GroundTruth("coco", annotations=by_image.get(img["id"], []),
                         height=img["height"], width=img["width"])
        entries.append((path, gt))
    meta = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    return entries, meta


class ReadImages(beam.PTransform):
    """PBegin -> (ImageItem, dead letters 'dead') for one dataset's inputs."""

    def __init__(self, dataset: str, pattern: str, annotations: Optional[str] = None,
                 labels_dir: Optional[str] = None, task: str = "road"):
        super().__init__()
        get_dataset(dataset)  # an unknown name fails here, naming the known ones
        self.dataset = dataset
        self.pattern = pattern
        self.annotation_file = annotations  # not .annotations: PTransform has that method
        self.labels_dir = labels_dir
        self.task = task

    def expand(self, pbegin):
        # Listing happens in one place; Reshuffle spreads the files over the workers before
        # they are read (otherwise fusion keeps them all on the worker that listed them).
        lists_annotations = get_dataset(self.dataset).lists_annotations
        if lists_annotations:
            files = (pbegin
                     | "AnnotationFile" >> beam.Create([self.annotation_file])
                     | "ListCocoImages" >> beam.FlatMap(
                         lambda ann, pattern: load_coco_index(ann, pattern)[0], self.pattern)
                     | "Spread" >> beam.Reshuffle())
        else:
            files = (pbegin
                     | "MatchFiles" >> fileio.MatchFiles(self.pattern)
                     | "ImagesOnly" >> beam.Filter(_looks_like_input, self.pattern)
                     | "Spread" >> beam.Reshuffle()
                     | "ReadMatches" >> fileio.ReadMatches())
        root = None if lists_annotations else pattern_root(self.pattern)
        return files | "ReadBytes" >> beam.ParDo(
            _ReadFile(self.dataset, self.labels_dir, root, self.task)).with_outputs("dead", main="items")


def _looks_like_input(metadata, pattern: str) -> bool:
    # An explicit pattern takes what it matches (a .png that is not an image must come out as
    # a dead letter); a directory's glob skips files that are not images (README, .json).
    if not pattern.endswith("/*"):
        return True
    return is_image_name(metadata.path)

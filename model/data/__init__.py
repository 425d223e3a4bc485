"""Datasets for fcnseg: one entry point, `load_dataset`, returning file pairs and class info.

Importing this package is light (numpy, Pillow, tqdm; no TensorFlow, pycocotools only when
COCO is used). The tf.data pipeline (model/data/pipeline.py) reads the returned pairs.
"""
from __future__ import annotations

import os
import pathlib
import random
from dataclasses import dataclass, field

__all__ = ["DATASETS", "SegmentationData", "load_dataset", "palette", "random_split"]

DATASETS = ("synthetic", "kitti", "coco", "folder")

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


def load_dataset(name: str, root: str | os.PathLike | None = None, *, task: str = "road",
                 categories="all", val_fraction: float = 0.2, seed: int = 0,
                 cache_dir: str | os.PathLike = "cache", image_size=(160, 576),
                 num_synthetic: int = 300, min_area_fraction: float = 0.0,
                 progress: bool = True, coco_protocol: str = "fcnseg") -> SegmentationData:
    """Build the file lists of a dataset (see docs/data.md).

    - 'synthetic': root unused; `num_synthetic` scenes of `image_size` generated into
      cache_dir (reused), seeded random split.
    - 'kitti': root = data_road folder; task 'road' or 'lane'; split stratified by um/umm/uu.
    - 'coco': root with annotations/ train2017/ val2017/; masks of `categories` ('all',
      'voc' or a list of names) rendered into cache_dir by `coco_protocol` ('fcnseg' or
      'torchvision', model/data/coco.py); train = train2017, val = val2017.
    - 'folder': root with images/ labels/ [classes.txt]; seeded random split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name != "synthetic":
        if root is None:
            raise ValueError(f"dataset {name!r} needs a root folder")
        root = pathlib.Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: {name} dataset folder not found")

    if name == "synthetic":
        from model.data import synthetic

        h, w = (int(v) for v in image_size)
        out = pathlib.Path(cache_dir) / f"synthetic_{h}x{w}_seed{seed}"
        pairs = synthetic.generate(out, num_synthetic, height=h, width=w, seed=seed,
                                   progress=progress)
        train, val = random_split(pairs, val_fraction, seed)
        return SegmentationData("synthetic", ["not road", "road"], list(ROAD_COLOURS), "ids",
                                train, val)

    if name == "kitti":
        from model.data import kitti

        pairs = kitti.list_pairs(root, task=task)
        train, val = kitti.stratified_split(pairs, val_fraction, seed)
        return SegmentationData("kitti", [f"not {task}", task], list(ROAD_COLOURS), "kitti",
                                train, val)

    if name == "coco":
        from model.data import coco

        splits = {}
        for split in ("train2017", "val2017"):
            ann = coco.find_annotation_file(root, split)
            image_dir = root / split
            splits[split] = coco.render_masks(ann, image_dir, pathlib.Path(cache_dir),
                                              categories=categories,
                                              min_area_fraction=min_area_fraction,
                                              progress=progress, protocol=coco_protocol,
                                              train=split == "train2017")
        class_names = coco.cached_class_names(coco.find_annotation_file(root, "train2017"),
                                              pathlib.Path(cache_dir), categories,
                                              coco_protocol)
        return SegmentationData("coco", class_names, palette(len(class_names)), "ids",
                                splits["train2017"], splits["val2017"])

    from model.data import folder  # name == 'folder'

    pairs = folder.list_pairs(root / "images", root / "labels")
    # Reads every label once: finds the class count, and rewrites palette/16-bit PNGs as
    # plain 8-bit ones (the 'ids' format the tf.data pipeline decodes) into cache_dir.
    pairs, top, top_file = folder.scan_labels(pairs, pathlib.Path(cache_dir), progress=progress)
    classes_txt = root / "classes.txt"
    if classes_txt.is_file():
        class_names = folder.read_class_names(classes_txt)
        if top >= len(class_names):
            raise ValueError(f"{top_file}: class id {top} but {classes_txt} names only "
                             f"{len(class_names)} classes (ids 0..{len(class_names) - 1}, "
                             f"255 = ignore)")
    else:
        class_names = [f"class_{i}" for i in range(max(top, 1) + 1)]
    train, val = random_split(pairs, val_fraction, seed)
    return SegmentationData("folder", class_names, palette(len(class_names)), "ids", train, val)

"""KITTI road benchmark (`data_road`): file pairing, devkit-exact ground truth, split, calib.

Layout::

    <root>/training/image_2/um_000000.png
    <root>/training/gt_image_2/um_road_000000.png   (um_lane_000000.png for um only)
    <root>/training/calib/um_000000.txt
    <root>/testing/image_2/um_000000.png             (no ground truth)
"""
from __future__ import annotations

import os
import pathlib
import random

import numpy as np

from contract import kitti as contract_kitti
from contract.names import IGNORE_LABEL
from model.data.image_io import read_image

__all__ = ["CATEGORIES", "TASKS", "category_of", "gt_path_for", "decode_gt", "read_gt",
           "list_pairs", "stratified_split", "parse_calib", "read_calib", "calib_path_for"]

CATEGORIES = ("um", "umm", "uu")
TASKS = ("road", "lane")
CALIB_REQUIRED = ("P2", "R0_rect", "Tr_cam_to_road")
_IMAGE_RE = contract_kitti.IMAGE_RE  # the file-name rules live in contract.kitti
_GT_RE = contract_kitti.GT_RE


def category_of(path: str | os.PathLike) -> str:
    """'um' | 'umm' | 'uu' from an image or gt file name (um_000000.png, umm_road_000012.png)."""
    name = pathlib.Path(path).name
    m = _IMAGE_RE.match(name) or _GT_RE.match(name)
    if not m:
        raise ValueError(f"{path}: not a KITTI road file name (expected e.g. um_000000.png "
                         f"or um_road_000000.png)")
    return m.group(1)


def gt_path_for(image_path: str | os.PathLike, task: str = "road") -> str | None:
    """The ground-truth path of a training image (training/gt_image_2/<cat>_<task>_<n>.png).

    Returns None when the file does not exist (testing images, or lane for umm/uu).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    p = pathlib.Path(image_path)
    m = _IMAGE_RE.match(p.name)
    if not m:
        raise ValueError(f"{image_path}: not a KITTI road image name (expected e.g. um_000000.png)")
    gt = p.parent.parent / "gt_image_2" / f"{m.group(1)}_{task}_{m.group(2)}.png"
    return str(gt) if gt.is_file() else None


def decode_gt(rgb: np.ndarray) -> np.ndarray:
    """KITTI gt colours -> uint8 labels, exactly as the devkit's getGroundTruth decides.

    The devkit reads road from the blue channel (> 0) and the evaluated area from the red
    channel (> 0). So magenta (255,0,255) is road, red (255,0,0) non-road, black don't care,
    and the rare pure blue (0,0,255) is road inside a don't-care area, i.e. not evaluated.
    Result: 1 road, 0 non-road, 255 not valid.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"decode_gt expects RGB [H,W,3], got shape {rgb.shape}")
    road = rgb[..., 2] > 0
    valid = rgb[..., 0] > 0
    label = road.astype(np.uint8)
    label[~valid] = IGNORE_LABEL
    return label


def read_gt(path: str | os.PathLike) -> np.ndarray:
    """Read and decode a KITTI gt PNG; raises ImageReadError naming the file when unreadable."""
    rgb = read_image(path)
    return decode_gt(rgb)


def _images(root: pathlib.Path, split: str) -> list[pathlib.Path]:
    image_dir = root / split / "image_2"
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: KITTI image folder not found (expected the "
                                f"data_road layout <root>/{split}/image_2)")
    images = sorted(p for p in image_dir.iterdir() if _IMAGE_RE.match(p.name))
    if not images:
        raise FileNotFoundError(f"{image_dir}: no KITTI images (um_/umm_/uu_NNNNNN.png)")
    return images


def list_pairs(root: str | os.PathLike, task: str = "road",
               split: str = "training") -> list[tuple[str, str | None]]:
    """(image, gt) pairs sorted by name; for split='testing' the gt is None.

    task='lane' exists for um only, so umm/uu images are left out for it. A training image
    whose gt file is missing is an error listing the missing files (a partial download).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if split not in ("training", "testing"):
        raise ValueError(f"split must be 'training' or 'testing', got {split!r}")
    root = pathlib.Path(root)
    images = _images(root, split)
    if task == "lane":
        images = [p for p in images if category_of(p) == "um"]
        if not images:
            raise FileNotFoundError(f"{root / split / 'image_2'}: no um_ images for task 'lane'")
    if split == "testing":
        return [(str(p), None) for p in images]
    pairs, missing = [], []
    for p in images:
        gt = gt_path_for(p, task)
        if gt is None:
            m = _IMAGE_RE.match(p.name)
            missing.append(f"{m.group(1)}_{task}_{m.group(2)}.png")
        else:
            pairs.append((str(p), gt))
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise FileNotFoundError(f"{root / split / 'gt_image_2'}: ground truth missing for "
                                f"{len(missing)} of {len(images)} images: {shown}")
    return pairs


def stratified_split(pairs, val_fraction: float = 0.2, seed: int = 0):
    """Split pairs into (train, val), the same fraction of each category um/umm/uu in val.

    Deterministic for a given seed and set of pairs (independent of input order). Every
    category with at least 2 images gets at least one validation image when val_fraction > 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_cat: dict[str, list] = {}
    for pair in sorted(pairs, key=lambda p: p[0]):
        by_cat.setdefault(category_of(pair[0]), []).append(tuple(pair))
    train, val = [], []
    for cat in sorted(by_cat):
        items = by_cat[cat]
        # A per-category generator: adding images of one category leaves the others' split alone.
        random.Random(f"{seed}:{cat}").shuffle(items)
        n_val = int(round(len(items) * val_fraction))
        if val_fraction > 0 and n_val == 0 and len(items) >= 2:
            n_val = 1
        val.extend(items[:n_val])
        train.extend(items[n_val:])
    return sorted(train), sorted(val)


def parse_calib(text: str, source: str = "calibration") -> dict[str, np.ndarray]:
    """Parse KITTI road calib text: 12 numbers -> [3,4], 9 -> [3,3] (float64).

    Holds P0..P3, R0_rect, Tr_velo_to_cam, Tr_imu_to_velo and Tr_cam_to_road. The benchmark's
    bird's-eye view (model.data.kitti_bev) needs P2, R0_rect and Tr_cam_to_road, so those
    are required; Tr_velo_to_cam (LiDAR) is read when present but not needed. Lines starting
    with '#' are comments, as in the devkit's reader.
    """
    calib: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, rest = line.partition(":")
        try:
            values = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            raise ValueError(f"{source}:{lineno}: non-numeric calibration values") from None
        if not sep or values.size not in (9, 12):
            raise ValueError(f"{source}:{lineno}: expected 'KEY: 9 or 12 numbers', "
                             f"got {line[:60]!r}")
        calib[key.strip()] = values.reshape(3, 3) if values.size == 9 else values.reshape(3, 4)
    missing = [k for k in CALIB_REQUIRED if k not in calib]
    if missing:
        raise ValueError(f"{source}: calibration lacks {', '.join(missing)} (the bird's-eye "
                         f"view needs {', '.join(CALIB_REQUIRED)})")
    return calib


def read_calib(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """`parse_calib` of a file; a missing or bad file is an error naming it."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: calibration file not found")
    return parse_calib(p.read_text(), str(p))


def calib_path_for(image_path: str | os.PathLike) -> pathlib.Path:
    """<split>/calib/<cat>_<n>.txt of <split>/image_2/<cat>_<n>.png (it may not exist)."""
    p = pathlib.Path(image_path)
    return p.parent.parent / "calib" / contract_kitti.calib_name(p.name)

"""KITTI road benchmark file names (the devkit's and the submission's conventions).

    training/image_2/<cat>_<n>.png           cat in um, umm, uu; n six digits
    training/gt_image_2/<cat>_road_<n>.png   and um_lane_<n>.png (ego-lane, um only)
    training/calib/<cat>_<n>.txt
    submission: <cat>_<task>_<n>.png (bird's-eye view confidence maps), zipped flat
"""
from __future__ import annotations

import io
import posixpath
import re
import zipfile
from typing import Mapping

CATEGORIES = ("um", "umm", "uu")
IMAGE_RE = re.compile(r"^(um|umm|uu)_(\d+)\.png$")
GT_RE = re.compile(r"^(um|umm|uu)_(road|lane)_(\d+)\.png$")
LANE_CATEGORIES = ("um",)  # the ego-lane task exists for um only


class NotAKittiName(ValueError):
    pass


def parse_image_name(name: str) -> tuple[str, str]:
    """'um_000012.png' -> ('um', '000012'); anything else raises NotAKittiName."""
    m = IMAGE_RE.match(posixpath.basename(str(name)))
    if not m:
        raise NotAKittiName(f"{name}: not a KITTI road image name (<um|umm|uu>_<n>.png)")
    return m.group(1), m.group(2)


def category_of(name: str) -> str:
    """Category of an image or ground-truth file name."""
    base = posixpath.basename(str(name))
    m = IMAGE_RE.match(base) or GT_RE.match(base)
    if not m:
        raise NotAKittiName(f"{name}: not a KITTI road file name")
    return m.group(1)


def task_applies(category: str, task: str) -> bool:
    return task == "road" or category in LANE_CATEGORIES


def gt_name(image_name: str, task: str = "road") -> str:
    category, number = parse_image_name(image_name)
    if not task_applies(category, task):
        raise NotAKittiName(f"{image_name}: the {task} task has no ground truth for {category}")
    return f"{category}_{task}_{number}.png"


def submission_name(image_name: str, task: str = "road") -> str:
    """The benchmark's result file name for an image: um_000012.png -> um_road_000012.png."""
    return gt_name(image_name, task)


def calib_name(image_name: str) -> str:
    category, number = parse_image_name(image_name)
    return f"{category}_{number}.txt"


def submission_zip_bytes(maps: Mapping[str, bytes]) -> bytes:
    """The archive to upload: each map at the root under its own name (um_road_000000.png),
    as the devkit asks ("zip the contents of the directory"). PNGs are already compressed,
    so they are stored; entries are sorted so the same maps give the same listing."""
    for name in maps:
        if posixpath.basename(name) != name or not GT_RE.match(name):
            raise NotAKittiName(f"{name}: not a submission file name (<cat>_<task>_<n>.png)")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(maps):
            archive.writestr(name, maps[name])
    return buffer.getvalue()

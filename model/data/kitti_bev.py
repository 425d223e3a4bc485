"""KITTI road bird's-eye view (BEV): the metric grid the benchmark ranks results in.

The benchmark scores road and lane results in BEV, not in the camera image: the devkit's
`BirdsEyeView` (devkit_road/python/BirdsEyeView.py, used by transform2BEV.py) resamples a
perspective map onto a metric grid of the road plane. This module is our own implementation
of that definition (numpy only, no TensorFlow, so Beam workers and clients can use it):

* Road frame: the calibration's `Tr_cam_to_road` maps rectified-camera coordinates to a frame
  whose plane Y = 0 is the road; X points right, Z forward. A road point (X, 0, Z) lands in
  the image at the projective point  H @ [X, Z, 1]  with  H = columns (0, 2, 3) of
  P2 @ R0_rect @ inv(Tr_cam_to_road)  (R0_rect and Tr_cam_to_road extended to 4x4).
* Grid: X in [-10, 10) m, Z in [6, 46) m, 0.05 m cells -> 800 rows x 400 columns. Cells are
  sampled at their centres: column c at X = -9.975 + 0.05 c, row r at Z = 45.975 - 0.05 r,
  so row 0 is the far edge (46 m), the last row the near edge (6 m), column 0 the left edge.
  The devkit builds these centres in float64 with numpy's arange and rounds them to float32
  before projecting; we do the same so that cells on a pixel border go the same way.
* Sampling: nearest, by truncation, with the devkit's 1-based bounds: a cell is inside the
  image when 1 <= u <= W and 1 <= v <= H (u = column, v = row of the projected centre), and
  it takes image pixel [trunc(v) - 1, trunc(u) - 1]. Cells outside get 0 in a confidence map
  (the devkit's np.zeros) and "not evaluated" in a ground truth (the devkit transforms the
  colour PNG, and black is outside the evaluated area).

Every calibration of KITTI road carries Tr_cam_to_road; Tr_velo_to_cam is not used here.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from contract.names import IGNORE_LABEL
from model.data.kitti import read_calib
from model.metrics import quantize_probability

RESOLUTION = 0.05          # metres per BEV cell
X_LIMITS = (-10.0, 10.0)   # metres, left to right
Z_LIMITS = (6.0, 46.0)     # metres, distance ahead of the camera
BEV_SHAPE = (int(round((Z_LIMITS[1] - Z_LIMITS[0]) / RESOLUTION)),
             int(round((X_LIMITS[1] - X_LIMITS[0]) / RESOLUTION)))  # (800, 400): rows, cols
CALIB_KEYS = ("P2", "R0_rect", "Tr_cam_to_road")


class CalibrationError(ValueError):
    pass


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """[3, 3] or [3, 4] -> [4, 4] with a 1 in the corner."""
    out = np.eye(4, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    out[:3, :matrix.shape[1]] = matrix
    return out


def road_homography(calib: dict) -> np.ndarray:
    """[3, 3] map from road-plane points [X, Z, 1] to projective image points [u w, v w, w]."""
    missing = [k for k in CALIB_KEYS if k not in calib]
    if missing:
        raise CalibrationError(f"calibration lacks {', '.join(missing)} (the bird's-eye view "
                               f"needs {', '.join(CALIB_KEYS)})")
    p2 = np.asarray(calib["P2"], dtype=np.float64).reshape(3, 4)
    rect = _homogeneous(np.asarray(calib["R0_rect"]).reshape(3, 3))
    cam_to_road = _homogeneous(np.asarray(calib["Tr_cam_to_road"]).reshape(3, 4))
    road_to_image = p2 @ rect @ np.linalg.inv(cam_to_road)  # [3, 4]
    return road_to_image[:, [0, 2, 3]]  # the road plane is Y = 0: drop the Y column


def cell_centres() -> tuple[np.ndarray, np.ndarray]:
    """(X of each column [400], Z of each row [800]) in float32, as the devkit samples them."""
    half = RESOLUTION / 2
    x = np.arange(X_LIMITS[0] + half, X_LIMITS[1], RESOLUTION)
    z = np.arange(Z_LIMITS[1] - half, Z_LIMITS[0], -RESOLUTION)
    if (z.size, x.size) != BEV_SHAPE:  # numpy's arange length rule, checked once
        raise AssertionError(f"grid {z.size}x{x.size} != {BEV_SHAPE}")
    return x.astype(np.float32), z.astype(np.float32)


def project(homography: np.ndarray, x, z) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (u, v) of road points (X, 0, Z), in the devkit's convention."""
    x = np.asarray(x)
    z = np.asarray(z)
    points = np.stack([x.ravel(), z.ravel(), np.ones(x.size, dtype=x.dtype)])
    projected = homography @ points  # float64
    u = projected[0] / projected[2]
    v = projected[1] / projected[2]
    return u.reshape(x.shape), v.reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class BevLookup:
    """Which image pixel each BEV cell inside the image takes (flat indices)."""
    image_shape: tuple[int, int]
    cells: np.ndarray    # int64 flat indices into the [800, 400] grid
    pixels: np.ndarray   # int64 flat indices into the [H, W] image

    @property
    def valid(self) -> np.ndarray:
        """bool [800, 400]: cells that see the image."""
        mask = np.zeros(BEV_SHAPE[0] * BEV_SHAPE[1], dtype=bool)
        mask[self.cells] = True
        return mask.reshape(BEV_SHAPE)


def lookup(calib: dict, image_shape) -> BevLookup:
    """The BEV sampling table of one calibration and image size (H, W)."""
    height, width = int(image_shape[0]), int(image_shape[1])
    x, z = cell_centres()
    xx, zz = np.meshgrid(x, z)  # [800, 400]: row = Z (far first), column = X (left first)
    u, v = project(road_homography(calib), xx, zz)
    inside = (v >= 1) & (u >= 1) & (v <= height) & (u <= width)
    cells = np.flatnonzero(inside)
    rows = v.ravel()[cells].astype(np.int64) - 1  # truncation: u, v >= 1 here
    cols = u.ravel()[cells].astype(np.int64) - 1
    return BevLookup((height, width), cells, rows * width + cols)


def to_bev(array: np.ndarray, table: BevLookup, fill) -> np.ndarray:
    """[H, W] or [H, W, C] perspective array -> [800, 400] (or [800, 400, C]) BEV array."""
    array = np.asarray(array)
    if array.shape[:2] != table.image_shape:
        raise ValueError(f"array is {array.shape[1]}x{array.shape[0]} but the BEV table was "
                         f"made for a {table.image_shape[1]}x{table.image_shape[0]} image")
    channels = array.shape[2:]
    out = np.full((BEV_SHAPE[0] * BEV_SHAPE[1], *channels), fill, dtype=array.dtype)
    out[table.cells] = array.reshape(-1, *channels)[table.pixels]
    return out.reshape(*BEV_SHAPE, *channels)


def confidence_to_bev(confidence: np.ndarray, table: BevLookup) -> np.ndarray:
    """A road confidence map (uint8 0..255 or float) in BEV; cells out of view are 0."""
    return to_bev(confidence, table, 0)


def label_to_bev(label: np.ndarray, table: BevLookup) -> np.ndarray:
    """Decoded ground truth (1 road, 0 not, 255 not evaluated) in BEV; out of view is 255."""
    return to_bev(label, table, IGNORE_LABEL)


def lookup_for_file(calib_path: str | os.PathLike, image_shape) -> BevLookup:
    """`lookup` of a calibration file; errors name the file."""
    calib = read_calib(calib_path)
    try:
        return lookup(calib, image_shape)
    except CalibrationError as exc:
        raise CalibrationError(f"{calib_path}: {exc}") from None


def submission_map(confidence: np.ndarray, calib: dict) -> np.ndarray:
    """uint8 [800, 400]: a perspective confidence map (uint8 v / 255, or float) as the
    benchmark wants it uploaded, resampled by the image's calibration."""
    values = quantize_probability(confidence)
    return confidence_to_bev(values, lookup(calib, values.shape[:2]))

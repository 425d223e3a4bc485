"""Reading and writing images and label PNGs with Pillow.

Every reader returns plain numpy arrays (uint8 RGB [H,W,3] or uint8 ids [H,W]) and turns any
failure into `ImageReadError`, whose message names the file and the reason, so a bad file in
a dataset of thousands is easy to find.
"""
from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.files import atomic_write_bytes, png_bytes

__all__ = ["ImageReadError", "read_image", "decode_image_bytes", "read_label_png", "write_png",
           "to_rgb_uint8"]


class ImageReadError(ValueError):
    """An image or label file could not be read; the message names the file and why."""

    def __init__(self, name: str | os.PathLike, reason: str):
        self.name = str(name)
        self.reason = reason
        super().__init__(f"{self.name}: {reason}")


def _open(data: bytes, name: str) -> Image.Image:
    if len(data) == 0:
        raise ImageReadError(name, "empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        # load() forces the full decode here; Pillow is lazy and would otherwise fail later.
        img.load()
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"image too large ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports short files as "image file is truncated" / "broken data stream".
        msg = str(exc)
        if any(w in msg.lower() for w in ("truncated", "broken", "incomplete")):
            raise ImageReadError(name, f"truncated or corrupt image ({msg})") from None
        raise ImageReadError(name, f"cannot decode image ({msg})") from None
    return img


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = pathlib.Path(path)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ImageReadError(p, f"cannot read file ({exc.strerror or exc})") from None


def _scale_16bit(arr: np.ndarray) -> np.ndarray:
    # Full 16-bit range onto 8 bits (65535 -> 255) with rounding; clipping would saturate
    # almost every pixel of a real 16-bit image.
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def to_rgb_uint8(img: Image.Image, name: str = "<image>") -> np.ndarray:
    """Convert a loaded Pillow image of any common mode to uint8 RGB [H,W,3].

    EXIF orientation is deliberately not applied: annotations (COCO's included) refer to
    the stored pixel grid.
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit grayscale PNGs open as I;16 (or I, 32-bit); scale rather than clip.
        arr = np.asarray(img)
        if mode == "I" and arr.size and arr.max() > 65535:
            raise ImageReadError(name, f"unsupported 32-bit integer image (max {arr.max()})")
        gray = _scale_16bit(np.clip(arr, 0, 65535))
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise ImageReadError(name, "unsupported mode F (floating-point image)")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Drop alpha: keep the colour values rather than compositing on a background,
        # since labels and photos alike should not change colour because of alpha.
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3].copy()
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise ImageReadError(name, f"unsupported mode {mode} ({exc})") from None


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode PNG/JPEG/... bytes to uint8 RGB [H,W,3]; `name` is used in error messages."""
    return to_rgb_uint8(_open(data, name), name)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB [H,W,3] (grayscale/palette/RGBA/16-bit converted)."""
    return decode_image_bytes(_read_bytes(path), str(path))


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel PNG of class ids as uint8 [H,W].

    Palette ('P') PNGs give their indices (the VOC convention), 'L' its values. Colour or
    16-bit files are refused: converting them to ids would silently invent labels.
    """
    name = str(path)
    img = _open(_read_bytes(path), name)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageReadError(name, f"label values outside 0..255 (mode {img.mode}, "
                                       f"max {int(arr.max())})")
        return arr.astype(np.uint8)
    raise ImageReadError(name, f"expected a single-channel label PNG (mode L or P), "
                               f"got mode {img.mode}")


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 6) -> None:
    """Write uint8 [H,W] (ids / gray) or [H,W,3] (RGB) as PNG, atomically (temp + rename).

    compress_level 0..9 trades file size for speed (1 is several times faster on photos).
    """
    try:
        data = png_bytes(array, compress_level=compress_level)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    atomic_write_bytes(path, data)

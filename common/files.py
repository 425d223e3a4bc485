"""File utilities every layer uses: writes that never leave half a file, PNG bytes, and
keeping paths taken from data files inside their root."""
from __future__ import annotations

import io
import os
import pathlib
import posixpath
import tempfile

import numpy as np
from PIL import Image


class OutsideRootError(ValueError):
    """A path taken from a data file (COCO file_name, a folder entry, a label path) that
    resolves outside the folder it must stay in."""


def resolve_inside(root, relative) -> str:
    """`root` joined with `relative`, refusing anything that escapes `root`.

    Works on local paths and on URLs such as gs://bucket/x (string normalisation, no I/O),
    so nothing outside the root is ever opened. Absolute `relative` paths are refused too.
    """
    root = str(root)
    relative = str(relative)
    if "://" in root:
        scheme, rest = root.split("://", 1)
        base = posixpath.normpath("/" + rest)
        joined = posixpath.normpath(posixpath.join(base, relative))
        if relative.startswith("/") or not (joined == base or joined.startswith(base.rstrip("/") + "/")):
            raise OutsideRootError(f"{relative!r} resolves outside {root}")
        return f"{scheme}://{joined.lstrip('/')}"
    base = os.path.realpath(root)
    if os.path.isabs(relative):
        raise OutsideRootError(f"{relative!r} is an absolute path; it must be relative to {root}")
    joined = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, joined]) != base:
        raise OutsideRootError(f"{relative!r} resolves outside {root} (to {joined})")
    return joined


def atomic_write_bytes(path, data: bytes) -> pathlib.Path:
    """Write a local file so a reader sees the old content or the new, never half of it:
    a temporary file in the same folder, fsync'ed, then renamed over the target."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers (TF Serving, other users) need r
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> pathlib.Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(array: np.ndarray, palette=None, compress_level: int = 6) -> bytes:
    """uint8 [H, W] (grey, or palette-indexed with `palette` = [[r, g, b], ...]) or
    [H, W, 3|4] -> PNG bytes. compress_level 0..9 trades size for speed: level 1 encodes
    photo-like images several times faster than 6, for files ~20 % larger."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"PNG arrays must be uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"PNG arrays must be [H, W] or [H, W, 3|4], got {array.shape}")
    image = Image.fromarray(array)
    if palette is not None:
        if array.ndim != 2:
            raise ValueError("a palette needs a single-channel array of ids")
        image = image.convert("P")
        flat = [int(c) for colour in palette for c in colour][:768]
        image.putpalette(flat + [0] * (768 - len(flat)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()

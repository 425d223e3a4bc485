"""A custom dataset as two folders: images and single-channel class-id label PNGs.

Layout::

    <root>/images/<stem>.jpg|.png|...   any format Pillow reads
    <root>/labels/<stem>.png            uint8 class ids (mode L or P), 255 = ignore
    <root>/classes.txt                  optional, one class name per line, id 0 first
"""
from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.files import OutsideRootError, resolve_inside
from contract.files import IMAGE_EXTENSIONS
from model.data.image_io import read_label_png, write_png

__all__ = ["list_pairs", "read_class_names", "scan_labels"]


def _by_stem(folder: pathlib.Path, extensions, what: str) -> dict[str, pathlib.Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found")
    found: dict[str, pathlib.Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in extensions:
            continue
        try:  # a symlink out of the folder is refused before it is opened (or even stat'ed)
            resolve_inside(folder, p.name)
        except OutsideRootError as exc:
            raise OutsideRootError(f"{folder}: {what} entry {exc}; not opened") from None
        if not p.is_file():
            continue
        if p.stem in found:
            raise ValueError(f"{folder}: two {what} files share the name {p.stem!r}: "
                             f"{found[p.stem].name} and {p.name}")
        found[p.stem] = p
    if not found:
        raise FileNotFoundError(f"{folder}: no {what} files ({', '.join(extensions)})")
    return found


def list_pairs(images_dir: str | os.PathLike, labels_dir: str | os.PathLike,
               allow_unlabelled: bool = False) -> list[tuple[str, str]]:
    """(image, label) pairs matched by file stem, sorted.

    An image without a label is an error listing them (unless allow_unlabelled, which
    leaves them out); a label without an image is always an error (likely a typo or a
    wrong folder).
    """
    images = _by_stem(pathlib.Path(images_dir), IMAGE_EXTENSIONS, "image")
    labels = _by_stem(pathlib.Path(labels_dir), (".png",), "label PNG")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise ValueError(f"{labels_dir}: {len(orphans)} label files have no image in "
                         f"{images_dir}: {_names(orphans, labels)}")
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled and not allow_unlabelled:
        raise ValueError(f"{images_dir}: {len(unlabelled)} images have no label PNG in "
                         f"{labels_dir}: {_names(unlabelled, images)}")
    return [(str(images[s]), str(labels[s])) for s in sorted(set(images) & set(labels))]


def _names(stems, files, limit=10) -> str:
    shown = ", ".join(files[s].name for s in stems[:limit])
    return shown + (f" ... ({len(stems)} in all)" if len(stems) > limit else "")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from classes.txt: one per line, line i = class id i; blank lines and
    lines starting with # are skipped."""
    p = pathlib.Path(path)
    names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise ValueError(f"{p}: no class names")
    if len(set(names)) != len(names):
        raise ValueError(f"{p}: duplicate class names")
    if len(names) > 255:
        raise ValueError(f"{p}: {len(names)} classes do not fit uint8 ids with 255 = ignore")
    return names


def scan_labels(pairs, cache_dir, progress: bool = True):
    """Check every label once; returns (pairs, largest id != 255, a file holding it).

    Labels already stored as 8-bit grayscale PNGs (mode L) are used as they are. Palette
    PNGs (the VOC convention: the palette index is the id) and 16-bit PNGs are rewritten
    as mode L into cache_dir, because a PNG decoder asked for one channel (tf.io.decode_png
    included) turns a palette image into luminance, not indices. Unreadable labels raise
    ImageReadError naming the file.
    """
    out, top, top_file = [], 0, None
    cache = None
    for image_path, label_path in tqdm(pairs, desc="checking labels", unit="file",
                                       disable=not progress):
        try:
            with Image.open(label_path) as im:
                mode = im.mode
        except (OSError, ValueError):
            mode = None  # read_label_png below raises the precise error
        ids = read_label_png(label_path)
        source = str(label_path)
        if mode != "L":
            if cache is None:
                key = hashlib.sha1(str(pathlib.Path(label_path).resolve().parent).encode())
                cache = pathlib.Path(cache_dir) / f"folder_labels_{key.hexdigest()[:12]}"
            target = cache / (pathlib.Path(label_path).stem + ".png")
            if not target.is_file() or target.stat().st_mtime < os.stat(label_path).st_mtime:
                write_png(target, ids)
            label_path = str(target)
        present = np.unique(ids)
        present = present[present != 255]
        if present.size and int(present.max()) > top:
            top, top_file = int(present.max()), source
        out.append((image_path, label_path))
    return out, top, top_file

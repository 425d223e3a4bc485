"""COCO instance annotations -> semantic class-id masks (pycocotools), cached as PNGs.

Two label protocols (see docs/data.md). Both: background and every category not selected
-> 0, selected categories -> 1..K in the order of `select_categories`.

'fcnseg' (the default, this project's rules):
- pixels covered by instances of DIFFERENT selected classes -> 255 (ambiguous); same-class
  overlaps keep their class;
- crowd regions (iscrowd=1) -> 255 where no ordinary instance covers them: the class is known
  but the region mixes object and background pixels, so it is neither a clean positive nor
  a clean negative;
- no image is dropped unless asked (`min_area_fraction`).

'torchvision' (exactly torchvision's references/segmentation/coco_utils.py, so mIoU can be
compared with its published figures):
- every instance of a selected category is drawn, crowds included, as its class;
- pixels covered by two or more of them -> 255, whatever their classes;
- training images only are filtered as `_coco_remove_images_without_annotations` does: kept
  when they hold an annotation of a selected category and those annotations' `area` fields
  sum to more than 1000; validation images are never dropped.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import json
import os
import pathlib
import warnings

import numpy as np
from tqdm import tqdm

from common.files import OutsideRootError, resolve_inside
from contract.names import COCO_PROTOCOLS
from contract.names import IGNORE_LABEL
from model.data.image_io import read_label_png, write_png

__all__ = ["VOC_CATEGORIES", "VOC_CATEGORY_IDS", "load_coco", "select_categories",
           "semantic_mask", "render_masks", "cached_class_names", "find_annotation_file"]

# The 20 PASCAL VOC classes as COCO category names, in VOC label order (aeroplane, bicycle,
# ..., tvmonitor), the same selection and order as torchvision's references/segmentation
# (CAT_LIST = [0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]).
VOC_CATEGORIES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
    "train", "tv",
)
VOC_CATEGORY_IDS = (5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)

_CACHE_VERSION = 1  # bump when the label rules change, so old caches are not reused

PROTOCOLS = COCO_PROTOCOLS
DEFAULT_PROTOCOL = "fcnseg"
TORCHVISION_MIN_AREA = 1000  # coco_utils._has_valid_annotation: sum of areas > 1000


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"COCO protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def load_coco(annotation_file: str | os.PathLike):
    """A pycocotools COCO index, without its chatter; clear errors for missing/bad files."""
    from pycocotools.coco import COCO

    p = pathlib.Path(annotation_file)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: COCO annotation file not found")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(p))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not a valid COCO annotation JSON ({exc})") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise ValueError(f"{p}: not a COCO instances file ({type(exc).__name__}: {exc})") from None
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise ValueError(f"{p}: not a COCO instances file (no '{key}')")
    return coco


def select_categories(coco, names="all") -> tuple[list[int], list[str]]:
    """(COCO category ids in label order, class names with 'background' first).

    names: 'all' (every category, by id), 'voc' (the 20 VOC classes, VOC order), or a list
    of COCO category names (labels 1..K follow the list's order).
    """
    by_name = {c["name"]: c["id"] for c in coco.dataset["categories"]}
    if isinstance(names, str):
        if names == "all":
            cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
            return [c["id"] for c in cats], ["background"] + [c["name"] for c in cats]
        if names == "voc":
            names = list(VOC_CATEGORIES)
        else:
            names = [names]
    names = list(names)
    if not names:
        raise ValueError("no categories selected")
    if len(set(names)) != len(names):
        raise ValueError(f"categories listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    unknown = [n for n in names if n not in by_name]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, list(by_name), n=3)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise ValueError(f"unknown COCO categories: {'; '.join(hints)}. "
                         f"Known: {', '.join(sorted(by_name))}")
    return [by_name[n] for n in names], ["background"] + names


def _instance_masks(coco, image_info: dict, cat_id_to_label: dict[int, int]):
    """(label, is_crowd, bool mask) of each annotation of a selected category."""
    ann_ids = coco.getAnnIds(imgIds=image_info["id"], iscrowd=None)
    for ann in coco.loadAnns(ann_ids):
        lab = cat_id_to_label.get(ann["category_id"])
        if lab is None:
            continue
        try:
            m = coco.annToMask(ann).astype(bool)
        except Exception as exc:  # pycocotools raises bare Exceptions on malformed polygons
            # One broken annotation should not stop rendering 118k images: skip, say which.
            warnings.warn(f"annotation {ann.get('id')} of {image_info.get('file_name')}: "
                          f"unusable segmentation ({exc}); skipped", stacklevel=3)
            continue
        yield lab, bool(ann.get("iscrowd", 0)), m


def semantic_mask(coco, image_info: dict, cat_id_to_label: dict[int, int],
                  protocol: str = DEFAULT_PROTOCOL) -> np.ndarray:
    """uint8 [H,W] class ids of one image (rules of `protocol` in the module docstring)."""
    h, w = int(image_info["height"]), int(image_info["width"])
    if check_protocol(protocol) == "torchvision":
        return _torchvision_mask(coco, image_info, cat_id_to_label, h, w)
    label = np.zeros((h, w), dtype=np.uint8)
    conflict = np.zeros((h, w), dtype=bool)
    crowd = np.zeros((h, w), dtype=bool)
    for lab, is_crowd, m in _instance_masks(coco, image_info, cat_id_to_label):
        if is_crowd:
            crowd |= m
            continue
        existing = label[m]
        conflict[m] |= (existing != 0) & (existing != lab)
        label[m & (label == 0)] = lab
    label[conflict] = IGNORE_LABEL
    label[crowd & (label == 0)] = IGNORE_LABEL
    return label


def _torchvision_mask(coco, image_info, cat_id_to_label, h, w) -> np.ndarray:
    # ConvertCocoPolysToMask: the largest label over the instances covering a pixel, then
    # 255 where two or more instances cover it (crowds are instances like any other).
    label = np.zeros((h, w), dtype=np.uint8)
    count = np.zeros((h, w), dtype=np.int32)
    for lab, _is_crowd, m in _instance_masks(coco, image_info, cat_id_to_label):
        np.maximum(label, np.where(m, np.uint8(lab), np.uint8(0)), out=label)
        count += m
    label[count > 1] = IGNORE_LABEL
    return label


def torchvision_keeps(coco, image_info: dict, cat_ids) -> bool:
    """`_coco_remove_images_without_annotations` for one training image: it holds an
    annotation of a selected category, and their `area` fields sum to > 1000."""
    wanted = set(cat_ids)
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_info["id"], iscrowd=None))
            if a["category_id"] in wanted]
    return bool(anns) and sum(a["area"] for a in anns) > TORCHVISION_MIN_AREA


def find_annotation_file(coco_root: str | os.PathLike, split: str) -> pathlib.Path:
    """<root>/annotations/instances_<split>*.json (the official file or a *_sample.json)."""
    ann_dir = pathlib.Path(coco_root) / "annotations"
    found = sorted(ann_dir.glob(f"instances_{split}*.json"))
    if not found:
        raise FileNotFoundError(f"{ann_dir}: no instances_{split}*.json (download with "
                                f"`python -m model.data.download coco --output {coco_root}`)")
    # Prefer the official full file over samples/variants when both are present.
    exact = ann_dir / f"instances_{split}.json"
    return exact if exact in found else found[0]


def _cache_dir(annotation_file: pathlib.Path, cache_dir, categories,
               protocol: str = DEFAULT_PROTOCOL) -> pathlib.Path:
    # Keyed by the category *request* (not the resolved ids) so a complete cache is found
    # without parsing the annotation JSON (about 450 MB for train2017), and by the protocol
    # (left out for the default, so caches written before protocols existed stay valid).
    spec = categories if isinstance(categories, str) else list(categories)
    st = annotation_file.stat()
    key_parts = [_CACHE_VERSION, str(annotation_file.resolve()), st.st_size, st.st_mtime_ns,
                 spec]
    if check_protocol(protocol) != DEFAULT_PROTOCOL:
        key_parts.append(protocol)
    ident = json.dumps(key_parts)
    key = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return pathlib.Path(cache_dir) / f"coco_{annotation_file.stem}_{key}"


def render_masks(annotation_file, image_dir, cache_dir, categories="all",
                 min_area_fraction: float = 0.0, progress: bool = True,
                 protocol: str = DEFAULT_PROTOCOL, train: bool = False) -> list[tuple[str, str]]:
    """Write one class-id PNG per image into a cache and return (image_path, mask_path) pairs.

    protocol: 'fcnseg' or 'torchvision' label rules (module docstring); with 'torchvision'
    and train=True, images are filtered as torchvision filters its training set (never for
    validation, train=False), and min_area_fraction must stay 0.

    The cache folder is keyed by the annotation file (path, size, mtime) and the category
    selection, so a rerun reuses it without even parsing the JSON; an interrupted run
    resumes. Images listed in the JSON but missing in image_dir are skipped with a warning
    naming them. Images whose labelled area (pixels != 0: objects, crowd and overlaps) is
    below min_area_fraction of the image are dropped (with min_area_fraction > 0, images
    with no labelled pixel at all are always dropped).
    """
    annotation_file = pathlib.Path(annotation_file)
    image_dir = pathlib.Path(image_dir)
    torchvision = check_protocol(protocol) == "torchvision"
    if torchvision and min_area_fraction > 0:
        raise ValueError("min_area_fraction belongs to the fcnseg protocol; the torchvision "
                         "protocol filters training images by its own rule (area sum > "
                         f"{TORCHVISION_MIN_AREA})")
    if not annotation_file.is_file():
        raise FileNotFoundError(f"{annotation_file}: COCO annotation file not found")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"{image_dir}: COCO image folder not found")
    out_dir = _cache_dir(annotation_file, cache_dir, categories, protocol)
    manifest = _read_manifest(out_dir)

    file_names = manifest["file_names"] if manifest else None
    coco = None
    if file_names is None:
        coco = load_coco(annotation_file)
        file_names = sorted(i["file_name"] for i in coco.dataset["images"])
    _check_inside(annotation_file, image_dir, file_names)
    present = [f for f in file_names if (image_dir / f).is_file()]
    missing = len(file_names) - len(present)
    if missing:
        names = [f for f in file_names if not (image_dir / f).is_file()]
        shown = ", ".join(names[:10]) + (f" ... ({missing} in all)" if missing > 10 else "")
        warnings.warn(f"{annotation_file.name}: {missing} of {len(file_names)} images are "
                      f"missing in {image_dir} and are skipped: {shown}", stacklevel=2)

    areas: dict[str, float] = dict(manifest["labelled_fraction"]) if manifest else {}
    keeps: dict[str, bool] = dict(manifest.get("torchvision_keep") or {}) if manifest else {}
    todo = [f for f in present if f not in areas or not (out_dir / _mask_name(f)).is_file()
            or (torchvision and f not in keeps)]
    if todo or not manifest:
        if coco is None:
            coco = load_coco(annotation_file)
        cat_ids, class_names = select_categories(coco, categories)
        if len(cat_ids) > 254:
            raise ValueError(f"{len(cat_ids)} categories do not fit uint8 labels with 255 = ignore")
        cat_id_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        info_by_name = {i["file_name"]: i for i in coco.dataset["images"]}
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in tqdm(todo, desc=f"COCO masks {annotation_file.name}", unit="img",
                      disable=not progress or not todo):
            mask_path = out_dir / _mask_name(f)
            if mask_path.is_file():  # written by an interrupted run (writes are atomic)
                mask = read_label_png(mask_path)
            else:
                mask = semantic_mask(coco, info_by_name[f], cat_id_to_label, protocol)
                write_png(mask_path, mask)
            areas[f] = float(np.count_nonzero(mask)) / mask.size
            if torchvision:
                keeps[f] = torchvision_keeps(coco, info_by_name[f], cat_ids)
        tmp = out_dir / "manifest.json.tmp"
        tmp.write_text(json.dumps({"annotation_file": str(annotation_file.resolve()),
                                   "categories": categories if isinstance(categories, str)
                                   else list(categories),
                                   "category_ids": cat_ids, "class_names": class_names,
                                   "file_names": file_names, "labelled_fraction": areas,
                                   "protocol": protocol,
                                   **({"torchvision_keep": keeps} if torchvision else {})}))
        os.replace(tmp, out_dir / "manifest.json")

    keep = [f for f in present
            if areas[f] >= min_area_fraction and (min_area_fraction <= 0 or areas[f] > 0)
            and (not (torchvision and train) or keeps[f])]
    return [(str(image_dir / f), str(out_dir / _mask_name(f))) for f in keep]


def _check_inside(annotation_file, image_dir, file_names) -> None:
    """Every file_name must stay inside image_dir: ../../etc/passwd is refused before any
    file is looked at (and before a cache is written)."""
    outside = []
    for name in file_names:
        try:
            resolve_inside(image_dir, name)
        except OutsideRootError as exc:
            outside.append(str(exc))
    if outside:
        shown = "; ".join(outside[:5]) + (f" ... ({len(outside)} in all)" if len(outside) > 5 else "")
        raise OutsideRootError(f"{annotation_file}: {len(outside)} image file_name(s) resolve "
                               f"outside the image folder and were not opened: {shown}")


def cached_class_names(annotation_file, cache_dir, categories="all",
                       protocol: str = DEFAULT_PROTOCOL) -> list[str]:
    """Class names ('background' first) recorded by `render_masks` for this selection."""
    out_dir = _cache_dir(pathlib.Path(annotation_file), cache_dir, categories, protocol)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{out_dir}: no mask cache; run render_masks first")
    return list(manifest["class_names"])


def _read_manifest(out_dir: pathlib.Path) -> dict | None:
    path = out_dir / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # damaged: rebuild it
    needed = ("file_names", "labelled_fraction", "class_names")
    return manifest if all(k in manifest for k in needed) else None


def _mask_name(file_name: str) -> str:
    return pathlib.Path(file_name).stem + ".png"

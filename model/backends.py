"""Runtimes that can execute an exported model on a CPU: TensorFlow (the default) or
OpenVINO's CPU runtime, fed from the same SavedModel (converted on load).

`model.exported.load_exported(path, backend=...)` is the only caller: a backend is a way of
running the one loaded export, not a second loader.

OpenVINO converts the SavedModel's `serving_default` signature (uint8 images -> class_ids,
confidence; the resizes, argmax and rounding included) with `openvino.convert_model`, keeps
the converted model (OpenVINO IR, float32) in the machine's temporary folder for the next
process that loads the same export, and compiles it for the CPU in float32 (`INFERENCE_PRECISION_HINT`: on CPUs with bfloat16 units
OpenVINO would otherwise compute in bfloat16 and masks would drift from TensorFlow's).
`segment_encoded` is served on top of it: images decoded and masks PNG-encoded with the same
TensorFlow ops the signature uses, images of one size run as one batch.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import tempfile
import time
import uuid
from typing import Callable, Optional

import numpy as np

from contract import layout, names

TENSORFLOW = "tensorflow"
OPENVINO = "openvino"
BACKENDS = (TENSORFLOW, OPENVINO)


def available(backend: str) -> bool:
    """Whether `backend`'s runtime is installed here."""
    if backend == TENSORFLOW:
        return True
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _ir_path(version_dir, cache_root: Optional[str]) -> pathlib.Path:
    """Where the converted model of this export is kept on this machine: keyed by the
    version folder and its saved_model.pb's size and time, so a re-export converts again."""
    version_dir = pathlib.Path(version_dir).resolve()
    stat = (version_dir / layout.SAVED_MODEL_FILE).stat()
    key = hashlib.sha256(f"{version_dir}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    root = pathlib.Path(cache_root or os.path.join(tempfile.gettempdir(), "fcnseg-openvino"))
    return root / key.hexdigest()[:16] / "model.xml"


def _save_ir(ov, model, target: pathlib.Path) -> None:
    """Save under a temporary folder and rename it into place: worker processes of one
    machine that convert at once end with one complete copy."""
    staging = target.parent.with_name(f"{target.parent.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        ov.save_model(model, str(staging / target.name), compress_to_fp16=False)
        os.rename(staging, target.parent)
    except OSError:  # another process finished first, or no room: the model is in memory
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class OpenVinoRunner:
    """The export's serving_default compiled by OpenVINO; `segment_encoded` built on it."""

    SIGNATURES = (names.SERVING_DEFAULT, names.SEGMENT_ENCODED)

    def __init__(self, version_dir, decode: Callable, encode_png: Callable,
                 cache_root: Optional[str] = None):
        import openvino as ov

        start = time.perf_counter()
        core = ov.Core()
        cached = _ir_path(version_dir, cache_root)
        self.from_cache = cached.is_file()
        if self.from_cache:
            model = core.read_model(str(cached))
        else:
            model = ov.convert_model(str(version_dir))  # its serving_default signature
            _save_ir(ov, model, cached)
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        self.load_seconds = time.perf_counter() - start
        self._outputs = [port.get_any_name() for port in self.compiled.outputs]
        self._decode = decode
        self._encode_png = encode_png
        self._threads = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1)

    def serving_default(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"serving_default wants uint8 images [N>0, H, W, 3], "
                             f"got shape {images.shape}")
        result = self.compiled(images)
        return {name: np.asarray(value) for name, value in zip(self._outputs, result.values())}

    def segment_encoded(self, image_bytes) -> dict[str, np.ndarray]:
        """What the signature answers: PNG masks and confidences, class_ids padded with
        the ignore label to the batch's largest image, heights, widths."""
        blobs = [bytes(b) for b in image_bytes]
        if not blobs:
            raise ValueError("empty batch: a request must hold at least one image")
        # Decoding and PNG encoding are TensorFlow kernels that release the GIL: spread over
        # the cores, as segment_encoded's map_fn does, instead of one after the other.
        images = list(self._threads.map(self._decode, blobs))
        by_size: dict[tuple, list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(image.shape[:2], []).append(i)
        ids, conf = [None] * len(images), [None] * len(images)
        for indices in by_size.values():  # one model call per image size
            out = self.serving_default(np.stack([images[i] for i in indices]))
            for j, i in enumerate(indices):
                ids[i], conf[i] = out[names.CLASS_IDS][j], out[names.CONFIDENCE][j]
        heights = np.array([a.shape[0] for a in ids], dtype=np.int32)
        widths = np.array([a.shape[1] for a in ids], dtype=np.int32)
        padded = np.full((len(ids), heights.max(), widths.max()), names.IGNORE_LABEL, np.uint8)
        for i, a in enumerate(ids):
            padded[i, : a.shape[0], : a.shape[1]] = a
        pngs = list(self._threads.map(self._encode_png, ids + conf))
        return {names.MASK_PNG_BYTES: np.array(pngs[:len(ids)], object),
                names.CONFIDENCE_PNG_BYTES: np.array(pngs[len(ids):], object),
                names.CLASS_IDS: padded, names.HEIGHTS: heights, names.WIDTHS: widths}

    def call(self, name: str, **inputs) -> dict[str, np.ndarray]:
        if name == names.SERVING_DEFAULT:
            return self.serving_default(inputs[names.IMAGES])
        if name == names.SEGMENT_ENCODED:
            return self.segment_encoded(inputs[names.IMAGE_BYTES])
        raise ValueError(f"the {OPENVINO} backend runs {list(self.SIGNATURES)}, not {name!r}; "
                         f"use --backend {TENSORFLOW}")

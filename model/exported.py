"""The one loader of an exported model: resolve the version (contract.layout, TF Serving's
rule), load the SavedModel, call a signature by name.

    exported = load_exported("models/fcn8s")          # its newest version
    outputs = exported.call(names.SEGMENT_ENCODED, image_bytes=[png, png])
    fast = load_exported("models/fcn8s", backend="openvino")  # OpenVINO's CPU runtime

Every in-process reader (model.evaluate --model-dir, model.streams, the Beam in-process
handler, the benchmarks, the export parity tests) goes through here, so they cannot disagree
about which version a folder means or how a signature is fed. A `backend`
(model.backends) other than TensorFlow runs the signatures it supports from the same export.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from common.cli import UserError
from contract import layout, names
from contract.records import ExportMetadata
from model import backends


@dataclasses.dataclass
class ExportedModel:
    """An exported version loaded in process: its signatures and what it says about itself."""
    path: pathlib.Path               # the version folder
    module: object = dataclasses.field(repr=False)  # what tf.saved_model.load returned
    metadata: ExportMetadata
    runner: object = dataclasses.field(default=None, repr=False)  # a non-TF backend's
    backend: str = backends.TENSORFLOW

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.class_names)

    @property
    def signatures(self):
        return self.module.signatures

    def signature(self, name: str):
        """The concrete function of signature `name`; ValueError naming the ones there are."""
        if name not in self.module.signatures:
            raise ValueError(f"{self.path}: the SavedModel has no {name!r} signature (has "
                             f"{sorted(self.module.signatures)}); re-export it with "
                             f"`python -m export`")
        return self.module.signatures[name]

    def call(self, name: str, device: Optional[str] = None, **inputs) -> dict[str, np.ndarray]:
        """Call signature `name` with its named inputs (arrays or lists, converted to tensors
        of the signature's dtypes); returns its outputs as numpy arrays. On a backend other
        than TensorFlow, its runner answers (`device` is TensorFlow's)."""
        if self.runner is not None:
            return self.runner.call(name, **inputs)
        function = self.signature(name)
        specs = function.structured_input_signature[1]
        tensors = {key: tf.constant(value, dtype=specs[key].dtype) if key in specs
                   else tf.constant(value) for key, value in inputs.items()}
        if device:
            with tf.device(device):
                out = function(**tensors)
        else:
            out = function(**tensors)
        return {key: value.numpy() for key, value in out.items()}

    def segment(self, images: np.ndarray) -> dict:
        """serving_default on uint8 images [N, H, W, 3]."""
        return self.call(names.SERVING_DEFAULT, **{names.IMAGES: images})

    def probabilities(self, images: np.ndarray) -> dict:
        """segment_probabilities on uint8 images [N, H, W, 3]: {"probabilities": float32}."""
        return self.call(names.SEGMENT_PROBABILITIES, **{names.IMAGES: images})

    def segment_encoded(self, blobs) -> dict:
        """segment_encoded on a list of PNG/JPEG bytes."""
        return self.call(names.SEGMENT_ENCODED, **{names.IMAGE_BYTES: list(blobs)})


def _decode_rgb(blob: bytes) -> np.ndarray:
    from model.data import pipeline
    return pipeline.decode_rgb(tf.constant(blob)).numpy()


def _encode_png(array: np.ndarray) -> bytes:
    return tf.io.encode_png(array[..., None], compression=names.PNG_COMPRESSION).numpy()


def load_exported(path, version: Optional[int] = None,
                  backend: str = backends.TENSORFLOW) -> ExportedModel:
    """A local model folder (its newest version, or `version`) or version folder, loaded.
    UserError when there is no export there, or when `backend`'s runtime is not installed."""
    if backend not in backends.BACKENDS:
        raise UserError("backend", f"{backend!r} is not one of {list(backends.BACKENDS)}")
    if not backends.available(backend):
        raise UserError("backend", f"{backend} is not installed here (pip install -r "
                                   f"requirements.txt)")
    try:
        version_dir = layout.resolve_version_dir(path, version)
    except FileNotFoundError as exc:
        raise UserError(path, f"no exported model here ({exc})") from None
    metadata = ExportMetadata.of_version(version_dir)
    module = tf.saved_model.load(str(version_dir))
    runner = None
    if backend == backends.OPENVINO:
        # The same decode and PNG encode as segment_encoded, so masks are byte-equal.
        runner = backends.OpenVinoRunner(version_dir, _decode_rgb, _encode_png)
    return ExportedModel(version_dir, module, metadata, runner, backend)

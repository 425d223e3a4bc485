"""The one loader of an exported model: resolve the version (contract.layout, TF Serving's
rule), load the SavedModel, call a signature by name.

    exported = load_exported("models/fcn8s")          # its newest version
    outputs = exported.call(names.SEGMENT_ENCODED, image_bytes=[png, png])

Every in-process reader (model.evaluate --model-dir, model.streams, the Beam in-process
handler, the benchmarks, the export parity tests) goes through here, so they cannot disagree
about which version a folder means or how a signature is fed.
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


@dataclasses.dataclass
class ExportedModel:
    """An exported version loaded in process: its signatures and what it says about itself."""
    path: pathlib.Path               # the version folder
    module: object = dataclasses.field(repr=False)  # what tf.saved_model.load returned
    metadata: ExportMetadata

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
        of the signature's dtypes); returns its outputs as numpy arrays."""
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


def load_exported(path, version: Optional[int] = None) -> ExportedModel:
    """A local model folder (its newest version, or `version`) or version folder, loaded.
    UserError when there is no export there."""
    try:
        version_dir = layout.resolve_version_dir(path, version)
    except FileNotFoundError as exc:
        raise UserError(path, f"no exported model here ({exc})") from None
    metadata = ExportMetadata.of_version(version_dir)
    return ExportedModel(version_dir, tf.saved_model.load(str(version_dir)), metadata)

"""What the gRPC and REST clients share: the segmentation calls and batches split into
requests under the size limit, on top of each client's own `predict`."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from contract import names
from serving.chunking import chunk_slices, concat_outputs

SERVING_DEFAULT = names.SERVING_DEFAULT
SEGMENT_ENCODED = names.SEGMENT_ENCODED
SEGMENT_PROBABILITIES = names.SEGMENT_PROBABILITIES
DEFAULT_IMAGE_OUTPUTS = names.DEFAULT_OUTPUT_FILTER
DEFAULT_MAX_REQUEST_BYTES = names.GRPC_DEFAULT_MAX_MESSAGE_BYTES


def row_nbytes(row) -> int:
    """Payload bytes of one batch element (an array, or encoded image bytes)."""
    if isinstance(row, (bytes, bytearray)):
        return len(row)
    row = np.asarray(row)
    if row.dtype == object:
        return sum(len(x) for x in row.ravel())
    return row.nbytes


class SegmentationClient:
    """Base of PredictionClient (gRPC) and RestPredictionClient (REST)."""

    def __init__(self, model_name: str, version: int | None, version_label: str | None,
                 timeout: float, max_request_bytes: int):
        if version is not None and version_label is not None:
            raise ValueError("give version or version_label, not both")
        self.model_name = model_name
        self.version = version
        self.version_label = version_label
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes

    def get_model_metadata(self, timeout: float | None = None) -> dict:
        raise NotImplementedError

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = SERVING_DEFAULT,
                output_filter: Iterable[str] | None = None, timeout: float | None = None,
                *, _pin: int | None = None) -> tuple[dict[str, np.ndarray], int | None]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request_bytes(self, value: np.ndarray) -> list[int]:
        """Bytes each batch element of one input adds to a request."""
        return [row_nbytes(row) for row in value]

    def predict_batched(self, inputs: Mapping[str, np.ndarray], signature_name: str,
                        output_filter: Iterable[str] | None = None,
                        timeout: float | None = None) -> tuple[dict[str, np.ndarray], int | None]:
        """Predict, split along the batch axis so that each request stays under
        max_request_bytes; outputs are joined again. When no version is pinned, the chunks
        after the first ask for the version that answered the first, so one batch is never
        answered by two versions while a new one is being rolled out."""
        lengths = {len(v) for v in inputs.values()}
        if len(lengths) != 1:
            raise ValueError(f"inputs must have the same batch size, got {sorted(lengths)}")
        (n,) = lengths
        if n == 0:  # nothing to split: the server answers INVALID_ARGUMENT 'empty batch'
            return self.predict(inputs, signature_name, output_filter, timeout)
        sizes = np.zeros(n, dtype=np.int64)
        for value in inputs.values():
            sizes += self._request_bytes(np.asarray(value))
        parts, first_version, version = [], None, None
        for part in chunk_slices(sizes.tolist(), self.max_request_bytes):
            outputs, version = self.predict({k: np.asarray(v)[part] for k, v in inputs.items()},
                                            signature_name, output_filter, timeout,
                                            _pin=first_version)
            first_version = first_version or version
            parts.append(outputs)
        return concat_outputs(parts), version

    def segment_images(self, images: np.ndarray,
                       outputs: Sequence[str] | None = DEFAULT_IMAGE_OUTPUTS,
                       timeout: float | None = None) -> dict:
        """uint8 [N,H,W,3] (or one [H,W,3]) -> {"class_ids": uint8 [N,H,W], "confidence":
        uint8 [N,H,W], "model_version"}. outputs=None returns every output of the signature
        (the same two for exports of format 2; float probabilities: `segment_probabilities`)."""
        result, version = self.predict_batched({names.IMAGES: _check_images(images)},
                                               SERVING_DEFAULT, outputs, timeout)
        return {**result, "model_version": version}

    def segment_probabilities(self, images: np.ndarray, timeout: float | None = None) -> dict:
        """uint8 [N,H,W,3] (or one [H,W,3]) -> {"probabilities": float32 [N,H,W,C],
        "model_version"}. 4*C bytes a pixel: one binary 1242x375 image is 3.7 MB of reply."""
        result, version = self.predict_batched({names.IMAGES: _check_images(images)},
                                               SEGMENT_PROBABILITIES, None, timeout)
        return {**result, "model_version": version}

    def segment_encoded(self, encoded: Sequence[bytes],
                        outputs: Sequence[str] | None = None,
                        timeout: float | None = None) -> dict:
        """PNG/JPEG bytes (mixed sizes) -> {"mask_png_bytes", "confidence_png_bytes": object
        [N] of PNG bytes, "class_ids": uint8 [N,Hmax,Wmax] padded with 255, "heights",
        "widths": int32 [N], "model_version"} (the names of export format 2, also when the
        server runs an older export)."""
        encoded = list(encoded)
        if not all(isinstance(e, (bytes, bytearray)) for e in encoded):
            raise ValueError("segment_encoded takes a list of bytes (encoded PNG/JPEG files)")
        array = np.array([bytes(e) for e in encoded], dtype=object)
        result, version = self.predict_batched({names.IMAGE_BYTES: array}, SEGMENT_ENCODED,
                                               outputs, timeout)
        return {**result, "model_version": version}


def _check_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N,H,W,3] (or [H,W,3]), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB, got {images.dtype}")
    return images

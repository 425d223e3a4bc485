"""Class probabilities at each image's original size, from a Keras model or a SavedModel.

Both predictors take a list of uint8 RGB images of any sizes and return one float32 [H, W, C]
array per image at that image's own size, so scores (KITTI is scored at original resolution)
and overlays never depend on the training geometry.

Geometry (`image_size`): [H, W] resizes every image to it and the probabilities back;
'native' (contract.names.NATIVE) pads each image at its bottom/right with zeros to a multiple
of 32, runs the fully convolutional model there and crops the padding off: no resize at all.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from contract import names
from contract.names import NATIVE, SIZE_MULTIPLE
from model.exported import load_exported

Predictor = Callable[[Sequence[np.ndarray]], list]


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 RGB [H, W, 3], "
                             f"got {image.dtype} {image.shape}")


def padded_size(height: int, width: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The smallest sides >= (height, width) that are multiples of `multiple`."""
    return (-(-int(height) // multiple) * multiple, -(-int(width) // multiple) * multiple)


def predict_probabilities(keras_model, images: Sequence[np.ndarray], image_size,
                          batch_size: int = 4) -> list[np.ndarray]:
    """Probabilities at each image's own size, computed at `image_size`.

    [H, W]: resize each image (bilinear), predict, resize the probabilities back (bilinear;
    interpolated probabilities still sum to 1), so the model sees its training geometry.
    'native': pad to a multiple of 32, predict, crop (images of equal size share a batch).
    """
    _check_images(images)
    if image_size == NATIVE:
        return _predict_native(keras_model, images, batch_size)
    height, width = (int(s) for s in image_size)
    results: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = tf.stack([tf.image.resize(tf.convert_to_tensor(img, tf.float32),
                                          (height, width), method="bilinear")
                          for img in chunk])
        probs = keras_model.predict_on_batch(batch)
        for img, prob in zip(chunk, probs):
            if prob.shape[:2] != img.shape[:2]:
                prob = tf.image.resize(prob, img.shape[:2], method="bilinear").numpy()
            results.append(np.asarray(prob, dtype=np.float32))
    return results


def _predict_native(keras_model, images, batch_size):
    from model.fcn8s import with_free_size

    keras_model = with_free_size(keras_model)  # trained at a fixed size; runs at any
    results: list[np.ndarray] = []
    for start, end in same_size_runs(images, batch_size):
        h, w = images[start].shape[:2]
        ph, pw = padded_size(h, w)
        batch = np.stack([np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)))
                          for img in images[start:end]]).astype(np.float32)
        probs = keras_model.predict_on_batch(batch)
        results.extend(np.asarray(p[:h, :w], dtype=np.float32) for p in probs)
    return results


def same_size_runs(images: Sequence[np.ndarray], batch_size: int):
    """(start, end) of runs of consecutive images of one size, at most batch_size long: a
    batch of raw arrays must share one shape."""
    start = 0
    while start < len(images):
        end = start + 1
        while (end < len(images) and end - start < batch_size
               and images[end].shape == images[start].shape):
            end += 1
        yield start, end
        start = end


def keras_predictor(keras_model, image_size, batch_size: int = 4) -> Predictor:
    if image_size == NATIVE:
        from model.fcn8s import with_free_size

        keras_model = with_free_size(keras_model)  # once, not per batch
    return lambda images: predict_probabilities(keras_model, images, image_size, batch_size)


def saved_model_predictor(saved_model_dir, batch_size: int = 4) -> Predictor:
    """Predictor calling the SavedModel's float-probabilities signature with uint8 images.

    The signature resizes internally and returns `probabilities` at the input size. Images of
    equal size are sent together (up to `batch_size`); a batch must share one size.
    """
    exported = load_exported(saved_model_dir)
    # Export format 2 serves float maps through their own signature; format 1 through
    # serving_default.
    name = next((n for n in (names.SEGMENT_PROBABILITIES, names.SERVING_DEFAULT)
                 if n in exported.signatures), names.SEGMENT_PROBABILITIES)

    def predict(images: Sequence[np.ndarray]) -> list[np.ndarray]:
        _check_images(images)
        results: list[np.ndarray] = []
        for start, end in same_size_runs(images, batch_size):
            probs = exported.call(name, **{names.IMAGES: np.stack(images[start:end])})[
                names.PROBABILITIES]
            results.extend(np.asarray(p, dtype=np.float32) for p in probs)
        return results

    predict.exported = exported  # what was loaded, for callers that want its metadata
    return predict

"""Class probabilities at each image's original size, from a Keras model or a SavedModel.

Both predictors take a list of uint8 RGB images of any sizes and return one float32 [H, W, C]
array per image at that image's own size, so scores (KITTI is scored at original resolution)
and overlays never depend on the training geometry.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from contract import names
from export.layout import METADATA_PATH

Predictor = Callable[[Sequence[np.ndarray]], list]


def _check_images(images: Sequence[np.ndarray]) -> None:
    for i, image in enumerate(images):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 RGB [H, W, 3], "
                             f"got {image.dtype} {image.shape}")


def predict_probabilities(keras_model, images: Sequence[np.ndarray], image_size,
                          batch_size: int = 4) -> list[np.ndarray]:
    """Resize each image to `image_size` [H, W] (bilinear), predict, and resize the
    probabilities back to the image's original size (bilinear).

    The model sees exactly the geometry it was trained at; bilinear interpolation of
    probabilities keeps them summing to 1.
    """
    _check_images(images)
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


def keras_predictor(keras_model, image_size, batch_size: int = 4) -> Predictor:
    return lambda images: predict_probabilities(keras_model, images, image_size, batch_size)


def read_saved_model_metadata(saved_model_dir) -> dict:
    """The fcnseg metadata JSON written next to an exported SavedModel ({} when absent)."""
    path = pathlib.Path(saved_model_dir) / METADATA_PATH
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def saved_model_predictor(saved_model_dir, batch_size: int = 4) -> Predictor:
    """Predictor calling the SavedModel's `segment_probabilities` signature with uint8
    images (`serving_default` in exports before format 2, which returned probabilities too).

    The signature resizes internally and returns `probabilities` at the input size. Images of
    equal size are sent together (up to `batch_size`); a batch must share one size.
    """
    path = pathlib.Path(saved_model_dir)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path}: not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(str(path))
    name = next((n for n in (names.SEGMENT_PROBABILITIES, names.SERVING_DEFAULT)
                 if n in loaded.signatures), None)
    if name is None:
        raise ValueError(f"{path}: SavedModel has neither a 'segment_probabilities' nor a "
                         f"'serving_default' signature (has {sorted(loaded.signatures)})")
    signature = loaded.signatures[name]

    def predict(images: Sequence[np.ndarray]) -> list[np.ndarray]:
        _check_images(images)
        results: list[np.ndarray] = []
        start = 0
        while start < len(images):
            end = start + 1
            while (end < len(images) and end - start < batch_size
                   and images[end].shape == images[start].shape):
                end += 1
            batch = tf.constant(np.stack(images[start:end]))
            probs = signature(images=batch)[names.PROBABILITIES].numpy()
            results.extend(np.asarray(p, dtype=np.float32) for p in probs)
            start = end
        return results

    predict.saved_model = loaded  # keep the loaded object (and its variables) alive
    return predict

"""Fakes whose answers are known by construction, so tests can state them without asking the
code under test.

- **Threshold models** (`threshold_model`, `export_threshold_model`): Keras models with no
  weights whose answer per pixel is a rule on its brightness b = (R + G + B) / 3:
  binary: class 1 (road) when b > t, road probability p = clip((b - t) / 255 + 0.5, 0, 1),
  so with the default t = 127.5 the exported confidence (round(255 p)) is round(b), and for
  a gray pixel its gray value; multi-class: class = number of band edges below b, one-hot
  probabilities (confidence 255). `export_threshold_model` writes them through the project's
  own exporter (export.savedmodel, format 2 signatures, native inference size, so no resize
  touches a pixel), so the Beam in-process handler, the development server and the clients
  load them like any model. `rule_class_ids` / `rule_confidence` give the same answers in
  numpy, from the rule, for expected values.
- **FakeHandler**: a Beam ModelHandler answering with the binary rule (decoded with
  Pillow), told to refuse chosen images (an InferenceFailure, the handler's "this image is
  bad") or to raise on chosen images (the whole batch fails, as a model or server error).
- **write_hand_threshold_model**: a hand-written SavedModel (tf.Module, no Keras, no
  exporter) with the export's signature names and dtypes, class 1 where the red channel
  exceeds a threshold: the development server's version-manager tests (versions told apart
  by their threshold).
"""
from __future__ import annotations

import io
import pathlib
from typing import Optional, Sequence

import numpy as np

DEFAULT_THRESHOLD = 127.5
KITTI_ROAD_CONFIG = {"dataset": "kitti", "task": "road", "class_names": ["non-road", "road"],
                     "colours": [[0, 0, 0], [255, 0, 255]], "image_size": [32, 32],
                     "num_classes": 2, "label_format": "kitti", "normalization": "none"}


def _check_threshold(t: float) -> float:
    # b = (R+G+B)/3 is a multiple of 1/3, never k + 1/2: no pixel sits on such a threshold,
    # and round(b - t + 127.5) never lands on .5, so float error cannot flip an answer.
    if (t - 0.5) != int(t - 0.5):
        raise ValueError(f"threshold must be an integer + 0.5, got {t}")
    return float(t)


# --- the rule in numpy (expected values) ------------------------------------------------

def brightness(rgb: np.ndarray) -> np.ndarray:
    """(R + G + B) / 3 as float64, [H, W] of an [H, W, 3] uint8 image."""
    return np.asarray(rgb, np.float64)[..., :3].sum(-1) / 3.0


def rule_class_ids(rgb: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                   bands: Optional[Sequence[float]] = None) -> np.ndarray:
    """uint8 [H, W] class ids the threshold model answers (binary, or by bands)."""
    b = brightness(rgb)
    edges = [threshold] if bands is None else list(bands)
    return sum((b > e).astype(np.uint8) for e in edges).astype(np.uint8)


def rule_confidence(rgb: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                    bands: Optional[Sequence[float]] = None) -> np.ndarray:
    """uint8 [H, W] confidence: round(b - t + 127.5) clipped to 0..255 (binary), 255 (bands)."""
    if bands is not None:
        return np.full(np.shape(rgb)[:2], 255, np.uint8)
    return np.clip(np.round(brightness(rgb) - threshold + 127.5), 0, 255).astype(np.uint8)


def gray(value_map: np.ndarray) -> np.ndarray:
    """An RGB image whose brightness is `value_map` (uint8 [H, W]) exactly."""
    v = np.asarray(value_map, np.uint8)
    return np.dstack([v, v, v])


# --- the Keras model and its export -----------------------------------------------------

def _brightness_rule_class():
    """The rule as a Keras layer, registered so that the exporter's copy (rebuilt from the
    model's config) finds it again; defined on first use so that importing this module does
    not import Keras."""
    import keras
    from keras import ops

    registered = keras.saving.get_registered_object("fcnseg_tests>BrightnessRule")
    if registered is not None:
        return registered

    @keras.saving.register_keras_serializable(package="fcnseg_tests")
    class BrightnessRule(keras.layers.Layer):
        def __init__(self, threshold=DEFAULT_THRESHOLD, bands=None, **kwargs):
            super().__init__(**kwargs)
            self.threshold = _check_threshold(threshold)
            self.bands = None if bands is None else [_check_threshold(e) for e in bands]

        def call(self, x):
            b = ops.mean(ops.cast(x, "float32"), axis=-1, keepdims=True)
            if self.bands is None:
                p = ops.clip((b - self.threshold) / 255.0 + 0.5, 0.0, 1.0)
                return ops.concatenate([1.0 - p, p], axis=-1)
            ids = sum(ops.cast(b[..., 0] > e, "int32") for e in self.bands)
            return ops.one_hot(ids, len(self.bands) + 1)

        def get_config(self):
            return {**super().get_config(), "threshold": self.threshold, "bands": self.bands}

    return BrightnessRule


def threshold_model(threshold: float = DEFAULT_THRESHOLD,
                    bands: Optional[Sequence[float]] = None):
    """A weightless Keras model: RGB 0..255 [N, H, W, 3] -> probabilities [N, H, W, C]."""
    import keras

    rule = _brightness_rule_class()(threshold, bands, name="brightness_rule")
    images = keras.Input((None, None, 3), name="images")
    return keras.Model(images, rule(images), name="threshold_model")


def export_threshold_model(model_base, config: Optional[dict] = None,
                           threshold: float = DEFAULT_THRESHOLD,
                           bands: Optional[Sequence[float]] = None,
                           model_name: str = "fcn8s", version: int = 1) -> pathlib.Path:
    """<model_base>/<model_name>/<version>/ through export.savedmodel (format 2), native
    inference size. config: the training config recorded in the metadata (default: a KITTI
    road model); a bands model needs len(bands) + 1 class names."""
    from export.savedmodel import export_saved_model

    config = dict(config or KITTI_ROAD_CONFIG)
    return export_saved_model(threshold_model(threshold, bands), config, model_base,
                              model_name, version=version, inference_size="native")


# --- a Beam ModelHandler with known answers ---------------------------------------------

def _png(array: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def make_fake_handler(refuse: Optional[dict] = None, raise_on: Sequence[str] = (),
                      threshold: float = DEFAULT_THRESHOLD, batch_size: int = 8):
    """A FakeHandler (built here so that importing this module does not import Beam).

    refuse: {file name: reason}: those images get InferenceFailure(reason), the others their
    answer; raise_on: file names whose batch raises RuntimeError("fake failure on <name>")
    (RunInference then dead-letters the whole batch)."""
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    from beam_jobs.handlers import InferenceFailure, Segmentation

    class FakeModel:
        pass

    class FakeHandler(ModelHandler):
        def __init__(self):
            super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
            self.refuse = dict(refuse or {})
            self.raise_on = set(raise_on)

        def load_model(self):
            return FakeModel()  # Beam keeps a weak reference to the model: not a str

        def run_inference(self, batch, model, inference_args=None):
            from PIL import Image

            names = [_name(item.path) for item in batch]
            bad = sorted(self.raise_on.intersection(names))
            if bad:
                raise RuntimeError(f"fake failure on {bad[0]}")
            out = []
            for item, name in zip(batch, names):
                if name in self.refuse:
                    inference = InferenceFailure(self.refuse[name])
                else:
                    with Image.open(io.BytesIO(item.data)) as img:
                        rgb = np.asarray(img.convert("RGB"))
                    ids = rule_class_ids(rgb, threshold)
                    inference = Segmentation(ids, _png(ids), _png(rule_confidence(rgb, threshold)),
                                             "fake", 0, 0.0, len(batch))
                out.append(PredictionResult(item, inference, model_id="fake/0"))
            return out

    return FakeHandler()


# --- a hand-written SavedModel, for the development server -------------------------------

def write_hand_threshold_model(path: pathlib.Path, threshold: int) -> None:
    """A SavedModel with the export's signature names and dtypes but no network:
    class 1 where the red channel exceeds `threshold` (so versions are told apart)."""
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                    name="images")])
        def serving_default(self, images):
            ids = tf.cast(images[..., 0] > threshold, tf.uint8)
            probs = tf.stack([1.0 - tf.cast(ids, tf.float32), tf.cast(ids, tf.float32)], -1)
            return {"class_ids": ids, "confidence": images[..., 1], "probabilities": probs}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def segment_encoded(self, image_bytes):
            def one(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                ids = tf.cast(image[..., :1] > threshold, tf.uint8)
                return tf.io.encode_png(ids), tf.shape(image)[0], tf.shape(image)[1]
            png, h, w = tf.map_fn(one, image_bytes,
                                  fn_output_signature=(tf.string, tf.int32, tf.int32))
            return {"mask_png_bytes": png, "heights": h, "widths": w}

    module = Tiny()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serving_default.get_concrete_function(),
        "segment_encoded": module.segment_encoded.get_concrete_function()})

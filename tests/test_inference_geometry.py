"""Inference geometry chosen at export (--inference-size H W | native) and in model.inference.

Reference for 'native': the Keras model run directly on the image zero-padded at its bottom
and right to a multiple of 32, probabilities cropped back; no resize anywhere."""
import numpy as np
import pytest
import tensorflow as tf

from contract import names
from contract.names import NATIVE
from common.cli import UserError
from export.__main__ import parse_args as export_args
from export.savedmodel import export_saved_model
from model.exported import load_exported
from model.fcn8s import with_free_size
from model.inference import keras_predictor, padded_size
from model.data.synthetic import render_scene
from tests.tiny_models import balance_road, tiny_fcn

TRAIN_SIZE = (64, 128)
CONFIG = {"dataset": "kitti", "task": "road", "class_names": ["non-road", "road"],
          "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(TRAIN_SIZE),
          "normalization": "caffe", "fc_width": 16, "num_classes": 2, "variant": "fcn8s"}


def _image(h, w, seed):
    return render_scene(np.random.default_rng(seed), h, w)[0]


def _padded_reference(model, image):
    """Keras model on the zero-padded image, cropped: what 'native' must give."""
    h, w = image.shape[:2]
    ph, pw = padded_size(h, w)
    padded = np.zeros((ph, pw, 3), np.float32)
    padded[:h, :w] = image
    return np.asarray(with_free_size(model)(padded[None], training=False))[0, :h, :w]


@pytest.fixture(scope="module")
def model():
    """Random score layers; a random encoder's features are all positive, which puts every
    pixel in one class, so the pool3 bias is shifted by the median road-vs-not-road logit
    of a scene: the masks then split, and a wrong geometry shows."""
    model = tiny_fcn(2, TRAIN_SIZE, seed=3)
    return balance_road(model, _image(64, 128, 1).astype(np.float32))


@pytest.fixture(scope="module")
def native(model, tmp_path_factory):
    path = export_saved_model(model, CONFIG, tmp_path_factory.mktemp("m"), "road",
                              inference_size=NATIVE)
    return load_exported(path)


def test_padded_size_by_hand():
    assert padded_size(375, 1242) == (384, 1248)
    assert padded_size(64, 128) == (64, 128)
    assert padded_size(1, 33) == (32, 64)


def test_native_export_masks_at_image_size_without_resize(model, native):
    assert native.metadata.inference_size == NATIVE
    image = _image(75, 150, 1)  # neither side a multiple of 32, nor the training size
    # Export format 2: probabilities come from segment_probabilities.
    out = native.segment(image[None])
    ref = _padded_reference(model, image)
    assert out["class_ids"].shape == (1, 75, 150)
    np.testing.assert_allclose(native.probabilities(image[None])["probabilities"][0], ref,
                               atol=1e-5)
    np.testing.assert_array_equal(out["class_ids"][0], np.argmax(ref, axis=-1))
    assert 0.05 < out["class_ids"].mean() < 0.95  # a non-trivial mask


def test_native_segment_encoded_runs_each_image_at_its_size(model, native):
    images = [_image(75, 150, 1), _image(40, 70, 2)]
    blobs = [tf.io.encode_png(img).numpy() for img in images]
    out = native.segment_encoded(blobs)
    assert list(out["heights"]) == [75, 40] and list(out["widths"]) == [150, 70]
    for i, img in enumerate(images):
        mask = tf.io.decode_png(out[names.MASK_PNG_BYTES][i]).numpy()[..., 0]
        ref = np.argmax(_padded_reference(model, img), axis=-1)
        # Equal except where the two classes are within float rounding of each other.
        assert (mask == ref).mean() > 0.999
        h, w = img.shape[:2]
        np.testing.assert_array_equal(out["class_ids"][i][:h, :w], mask)
        assert (out["class_ids"][i][h:] == 255).all() and (out["class_ids"][i][:, w:] == 255).all()


def test_native_differs_from_the_resizing_default(model, native, tmp_path):
    resized = load_exported(export_saved_model(model, CONFIG, tmp_path, "road"))
    assert resized.metadata.inference_size == list(TRAIN_SIZE)
    image = _image(75, 150, 1)
    a = native.probabilities(image[None])["probabilities"]
    b = resized.probabilities(image[None])["probabilities"]
    assert a.shape == b.shape and np.abs(a - b).max() > 1e-3


def test_keras_predictor_native_matches_export(model, native):
    image = _image(75, 150, 1)
    (prob,) = keras_predictor(model, NATIVE)([image])
    np.testing.assert_allclose(prob, native.probabilities(image[None])["probabilities"][0],
                               atol=1e-5)


def test_fixed_inference_size_and_cli_parsing(model, tmp_path):
    path = export_saved_model(model, CONFIG, tmp_path, "road", inference_size=[96, 192])
    loaded = load_exported(path)
    assert loaded.metadata.inference_size == [96, 192]
    assert loaded.segment(_image(50, 60, 4)[None])["class_ids"].shape == (1, 50, 60)
    base = ["--run-dir", "r", "--model-dir", "m/n"]
    assert export_args(base + ["--inference-size", "native"]).inference_size == NATIVE
    assert export_args(base + ["--inference-size", "384", "1248"]).inference_size == [384, 1248]
    assert export_args(base).inference_size is None
    with pytest.raises(UserError, match="--inference-size: takes H W"):
        export_args(base + ["--inference-size", "100", "200"])
    with pytest.raises(ValueError, match="multiples of 32"):
        export_saved_model(model, CONFIG, tmp_path, "bad", inference_size=[100, 200])

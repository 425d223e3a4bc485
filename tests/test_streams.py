"""The skips of a trained FCN-8s really contribute (model.streams), and the diagnostic's
stream decomposition is exact."""
import numpy as np
import pytest

from model.data.synthetic import render_scene
from model.fcn8s import build_fcn8s
from model.streams import STREAMS, contributions, measure, run as streams_run, stream_logits
from model.train import compile_for_training, make_optimizer

SIZE = (64, 128)


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    images, labels = zip(*(render_scene(rng, *SIZE) for _ in range(n)))
    return np.stack(images).astype(np.float32), np.stack(labels).astype(np.uint8)


@pytest.fixture(scope="module")
def trained():
    """A tiny FCN-8s after 40 Adam steps on synthetic road scenes (the project's recipe)."""
    import keras

    keras.utils.set_random_seed(0)
    model = build_fcn8s(2, (*SIZE, 3), fc_width=16, weight_decay=5e-4)
    train_model = compile_for_training(model, 2, make_optimizer("adam", 3e-4, "constant", 40,
                                                                clip_norm=1.0))
    x, y = _scenes(16)
    train_model.fit(x, y, batch_size=4, epochs=10, verbose=0, shuffle=True)  # 40 steps
    return model


@pytest.mark.parametrize("variant", ["fcn8s", "fcn16s", "fcn32s"])
def test_streams_sum_to_the_logits(variant):
    # Random (non-zero) score layers: every stream is non-trivial before training.
    model = build_fcn8s(2, (None, None, 3), fc_width=8, variant=variant)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    streams = stream_logits(model, x)
    assert list(streams) == [name for name, _ in STREAMS[variant]]
    import keras

    logits = keras.Model(model.input, model.get_layer("logits").output)(x)
    np.testing.assert_allclose(sum(streams.values()), np.asarray(logits), rtol=1e-4,
                               atol=1e-4 * float(np.abs(np.asarray(logits)).max()))


def test_contributions_by_hand():
    # Binary: the spread is the standard deviation of l1 - l0 over pixels.
    fc7 = np.array([[0.0, 2.0], [0.0, -2.0], [0.0, 2.0], [0.0, -2.0]])   # contrast +-2: std 2
    pool4 = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 5.0]])  # 0,0,0,5: std 2.165
    result = contributions({"score_fr": fc7, "score_pool4": pool4})
    assert result["streams"]["score_fr"]["spread"] == pytest.approx(2.0)
    assert result["streams"]["score_pool4"]["spread"] == pytest.approx(np.sqrt(75 / 16))
    assert result["streams"]["score_pool4"]["relative_to_fc7"] == pytest.approx(
        np.sqrt(75 / 16) / 2)
    # Only the last pixel flips: -2 + 5 > 0.
    assert result["pixels_changed_by_skips"] == pytest.approx(0.25)


def test_trained_skips_contribute(trained):
    x, _ = _scenes(4, seed=7)
    result = measure(trained, x.astype(np.uint8), list(SIZE))
    rel = {k: v["relative_to_fc7"] for k, v in result["streams"].items()}
    # The thresholds the skips must clear. With the old fixed 0.01 / 0.0001 input scaling these
    # were about 4e-4 and 6e-6 on a trained model.
    assert rel["score_pool4"] >= 0.05, rel
    assert rel["score_pool3"] >= 0.01, rel


def test_cli_on_checkpoint_and_native_geometry(trained, tmp_path, capsys):
    from PIL import Image

    ckpt = tmp_path / "m.keras"
    trained.save(ckpt)
    x, _ = _scenes(2, seed=3)
    for i, img in enumerate(x.astype(np.uint8)):
        Image.fromarray(img[:50, :100]).save(tmp_path / f"img{i}.png")  # not multiples of 32
    out = streams_run(["--checkpoint", str(ckpt), str(tmp_path), "--inference-size", "native",
                       "--output", str(tmp_path / "s.json")])
    assert out["images"] == 2 and out["num_pixels"] == 2 * 50 * 100
    printed = capsys.readouterr().out
    assert "pool3 skip (score_pool3)" in printed and "pixels whose class" in printed
    assert (tmp_path / "s.json").is_file()




def _old_fcn8s():
    """The earlier architecture: fixed 0.01 / 0.0001 input scaling of the skips, no
    `logits` layer (softmax straight after upscore8). Score layers random here."""
    import keras
    from keras import layers

    from model.fcn8s import InputNormalization, _upscore, _vgg16

    images = keras.Input((None, None, 3), name="images")
    pool3, pool4, pool5 = _vgg16(InputNormalization("caffe", name="normalize")(images))
    x = layers.Conv2D(8, 7, padding="same", activation="relu", name="fc6")(pool5)
    x = layers.Conv2D(8, 1, activation="relu", name="fc7")(x)
    x = _upscore(2, 2, "upscore2")(layers.Conv2D(2, 1, name="score_fr")(x))
    p4 = layers.Conv2D(2, 1, name="score_pool4")(layers.Rescaling(0.01, name="scale_pool4")(pool4))
    x = _upscore(2, 2, "upscore_pool4")(layers.Add(name="fuse_pool4")([x, p4]))
    p3 = layers.Conv2D(2, 1, name="score_pool3")(layers.Rescaling(1e-4, name="scale_pool3")(pool3))
    x = _upscore(2, 8, "upscore8")(layers.Add(name="fuse_pool3")([x, p3]))
    return keras.Model(images, layers.Softmax(name="probabilities")(x), name="fcn8s")


def test_old_checkpoints_load_and_fail_clearly_for_training(tmp_path):
    from model import runs
    from model.fcn8s import logits_model, variant_of

    path = tmp_path / "old.keras"
    _old_fcn8s().save(path)
    old = runs.load_checkpoint(path)
    assert variant_of(old) == "fcn8s"
    x, _ = _scenes(1)
    result = measure(old, x.astype(np.uint8), list(SIZE))  # the diagnostic still works
    assert set(result["streams"]) == {"score_fr", "score_pool4", "score_pool3"}
    with pytest.raises(ValueError, match="no 'logits' layer.*start a new run"):
        logits_model(old)

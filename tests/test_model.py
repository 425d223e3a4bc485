"""FCN-8s architecture, initialisation, normalisation and encoder weights."""
import functools
import hashlib
import http.server
import threading

import h5py
import numpy as np
import pytest

from model import encoder_weights
from model.encoder_weights import CONV_LAYERS, WeightsMismatchError
from model.fcn8s import CAFFE_BGR_MEAN, bilinear_kernel, build_fcn8s


@pytest.fixture(scope="module")
def small():
    return build_fcn8s(3, (None, None, 3), fc_width=16)


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (96, 320), (160, 576)])
def test_output_matches_input_size(small, size):
    x = np.random.default_rng(0).uniform(0, 255, (2, *size, 3)).astype("float32")
    y = np.asarray(small(x))
    assert y.shape == (2, *size, 3)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


def test_rejects_sides_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_fcn8s(2, (100, 320, 3), fc_width=8)


def test_has_fc_convolutions_and_three_skips(small):
    names = {layer.name for layer in small.layers}
    assert {"fc6", "fc7", "score_fr", "score_pool4", "score_pool3", "fuse_pool4",
            "fuse_pool3", "upscore2", "upscore_pool4", "upscore8"} <= names
    assert small.get_layer("fc6").kernel.shape == (7, 7, 512, 16)
    assert small.get_layer("fc7").kernel.shape == (1, 1, 16, 16)
    # The skips read pool4 and pool3 (no fixed scaling: they learn from a small init, as
    # KittiSeg), and each fuse adds one skip to the upsampled coarser stream.
    def inbound(name):
        layer = small.get_layer(name)
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        return {t._keras_history.operation.name for t in inputs}

    assert inbound("fuse_pool4") == {"upscore2", "score_pool4"}
    assert inbound("fuse_pool3") == {"upscore_pool4", "score_pool3"}
    assert inbound("score_pool4") == {"block4_pool"}
    assert inbound("score_pool3") == {"block3_pool"}
    assert not any(layer.name.startswith("scale_") for layer in small.layers)


def test_score_layers_start_small_and_random():
    # KittiSeg / tensorflow-fcn fcn8_vgg.py _score_layer: He stddev sqrt(2 / fan_in) for
    # score_fr, 1e-3 for score_pool4, 1e-4 for score_pool3 (truncated normal: std ~0.88x).
    m = build_fcn8s(2, (None, None, 3), fc_width=512)
    for name, stddev in (("score_fr", (2 / 512) ** 0.5), ("score_pool4", 1e-3),
                         ("score_pool3", 1e-4)):
        kernel = np.asarray(m.get_layer(name).kernel)
        assert 0.7 * stddev < kernel.std() < 1.0 * stddev, name


@pytest.mark.parametrize("variant,layers,absent", [
    ("fcn32s", {"score_fr", "upscore32"}, {"score_pool4", "score_pool3"}),
    ("fcn16s", {"score_fr", "score_pool4", "upscore2", "upscore16"}, {"score_pool3"}),
    ("fcn8s", {"score_fr", "score_pool4", "score_pool3", "upscore8"}, {"upscore32"}),
])
def test_variants(variant, layers, absent):
    from model.fcn8s import variant_of

    m = build_fcn8s(2, (None, None, 3), fc_width=8, variant=variant)
    names = {layer.name for layer in m.layers}
    assert layers <= names and not absent & names and m.name == variant
    assert variant_of(m) == variant
    assert m(np.zeros((1, 64, 96, 3), "float32")).shape == (1, 64, 96, 2)


def test_l2_on_conv_kernels_only():
    m = build_fcn8s(2, (None, None, 3), fc_width=8, weight_decay=5e-4)
    decayed = {layer.name for layer in m.layers
               if getattr(layer, "kernel_regularizer", None) is not None}
    assert decayed == set(CONV_LAYERS) | {"fc6", "fc7", "score_fr", "score_pool4", "score_pool3"}
    assert not any(getattr(layer, "bias_regularizer", None) for layer in m.layers)
    # KittiSeg: wd * tf.nn.l2_loss(w) = wd * sum(w^2) / 2 per kernel.
    kernel = np.asarray(m.get_layer("fc7").kernel)
    penalty = float(m.get_layer("fc7").kernel_regularizer(kernel))
    assert penalty == pytest.approx(5e-4 * (kernel.astype(np.float64) ** 2).sum() / 2, rel=1e-5)


def test_upsampling_initialised_bilinear(small):
    for name, factor in [("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)]:
        kernel = np.asarray(small.get_layer(name).kernel)
        assert kernel.shape == (2 * factor, 2 * factor, 3, 3)
        np.testing.assert_allclose(kernel, bilinear_kernel(kernel.shape))
    k = bilinear_kernel((4, 4, 1, 1))[:, :, 0, 0]
    np.testing.assert_allclose(k[0], [0.0625, 0.1875, 0.1875, 0.0625])
    # Off-diagonal class pairs are zero: class i only feeds class i.
    k8 = bilinear_kernel((16, 16, 3, 3))
    assert k8[:, :, 0, 1].sum() == 0 and k8[:, :, 2, 2].sum() > 0


def test_bilinear_upsampling_interpolates():
    import keras

    layer = keras.layers.Conv2DTranspose(1, 4, strides=2, padding="same", use_bias=False)
    layer.build((None, 4, 4, 1))
    layer.kernel.assign(bilinear_kernel((4, 4, 1, 1)))
    ramp = np.tile(np.arange(4, dtype="float32"), (4, 1))[None, :, :, None]
    up = np.asarray(layer(ramp))[0, 2:6, 1:7, 0]   # away from the zero-padded borders
    np.testing.assert_allclose(up[0], [0.25, 0.75, 1.25, 1.75, 2.25, 2.75], atol=1e-6)


def test_caffe_normalisation_is_bgr_minus_mean(small):
    norm = small.get_layer("normalize")
    x = np.array([[[[10.0, 20.0, 30.0]]]], "float32")
    expected = np.array([30.0, 20.0, 10.0]) - np.array(CAFFE_BGR_MEAN)
    np.testing.assert_allclose(np.asarray(norm(x))[0, 0, 0], expected, rtol=1e-6)


def test_torch_normalisation():
    m = build_fcn8s(2, (32, 32, 3), fc_width=8, normalization="torch")
    out = np.asarray(m.get_layer("normalize")(np.full((1, 1, 1, 3), 255.0, "float32")))
    np.testing.assert_allclose(out[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406]))
                               / np.array([0.229, 0.224, 0.225]), rtol=1e-5)


def _write_vgg_h5(path, model, with_fc=False, skip=(), reshape=None):
    """A weights file in the layout of Keras' published VGG16 files."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        layers = [n for n in CONV_LAYERS if n not in skip]
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for name in layers:
            g = f.create_group(name)
            shapes = [w.shape for w in model.get_layer(name).weights]
            if reshape and name in reshape:
                shapes = reshape[name]
            names = [f"{name}_W_1:0", f"{name}_b_1:0"]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, s in zip(names, shapes):
                g[n] = rng.normal(size=s).astype("float32")
        if with_fc:
            for name, shape in [("fc1", (25088, 4096)), ("fc2", (4096, 4096))]:
                g = f.create_group(name)
                g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
                g[f"{name}/kernel:0"] = np.full(shape, 0.001, "float32")
                g[f"{name}/bias:0"] = np.full(shape[1:], 0.5, "float32")
    return path


def test_local_weights_file_loads(tmp_path):
    m = build_fcn8s(2, (32, 32, 3), fc_width=8)
    path = _write_vgg_h5(tmp_path / "vgg.h5", m)
    loaded = build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(path))
    with h5py.File(path) as f:
        stored = np.asarray(f["block3_conv2"]["block3_conv2_W_1:0"])
    np.testing.assert_array_equal(np.asarray(loaded.get_layer("block3_conv2").kernel), stored)


def test_fc_layers_are_convolutionalised_when_present(tmp_path):
    ref = build_fcn8s(2, (32, 32, 3), fc_width=8)
    path = _write_vgg_h5(tmp_path / "vgg_top.h5", ref, with_fc=True)
    m = build_fcn8s(2, (32, 32, 3), fc_width=4096, encoder_weights=str(path))
    assert m.get_layer("fc6").kernel.shape == (7, 7, 512, 4096)
    np.testing.assert_allclose(np.asarray(m.get_layer("fc6").bias)[:3], 0.5)
    np.testing.assert_allclose(np.asarray(m.get_layer("fc7").kernel)[0, 0, :2, :2], 0.001)


def test_missing_layer_fails_clearly(tmp_path):
    m = build_fcn8s(2, (32, 32, 3), fc_width=8)
    path = _write_vgg_h5(tmp_path / "partial.h5", m, skip=("block5_conv3",))
    with pytest.raises(WeightsMismatchError, match=r"partial\.h5.*block5_conv3"):
        build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(path))


def test_shape_mismatch_fails_clearly(tmp_path):
    m = build_fcn8s(2, (32, 32, 3), fc_width=8)
    path = _write_vgg_h5(tmp_path / "bad.h5", m,
                         reshape={"block2_conv1": [(3, 3, 64, 64), (64,)]})
    with pytest.raises(WeightsMismatchError, match=r"bad\.h5.*block2_conv1.*\(3, 3, 64, 128\)"):
        build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(path))


def test_keras3_weights_h5_loads(tmp_path):
    import keras

    # Keras' own VGG16, saved by Keras 3 (layers keyed conv2d, conv2d_1, ...).
    ref = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16.weights.h5"
    ref.save_weights(path)
    m = build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(path))
    for name in CONV_LAYERS:
        for got, want in zip(m.get_layer(name).weights, ref.get_layer(name).weights):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    # And an fcnseg model's own weights file (more convolutions after the encoder's 13).
    own = build_fcn8s(2, (32, 32, 3), fc_width=8)
    own.save_weights(tmp_path / "own.weights.h5")
    m = build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(tmp_path / "own.weights.h5"))
    np.testing.assert_array_equal(np.asarray(m.get_layer("block5_conv3").kernel),
                                  np.asarray(own.get_layer("block5_conv3").kernel))


def test_offline_imagenet_is_one_clear_line(tmp_path):
    # A closed port stands in for no network.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(encoder_weights.WeightsDownloadError) as info:
        encoder_weights.download_imagenet_weights(False, base_url=url,
                                                  cache_dir=str(tmp_path / "keras"))
    message = str(info.value)
    assert "\n" not in message
    assert url + encoder_weights.IMAGENET_FILES["notop"][0] in message
    assert "--encoder-weights none" in message and ".h5" in message


def test_missing_or_corrupt_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(tmp_path / "nope.h5"))
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(WeightsMismatchError, match="junk.h5"):
        build_fcn8s(2, (32, 32, 3), fc_width=8, encoder_weights=str(junk))


@pytest.fixture()
def weights_server(tmp_path):
    """A local HTTP server standing in for Keras' weights bucket."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_imagenet_download_verifies_checksum(tmp_path, weights_server, monkeypatch):
    served, url = weights_server
    m = build_fcn8s(2, (32, 32, 3), fc_width=8)
    fname = encoder_weights.IMAGENET_FILES["notop"][0]
    _write_vgg_h5(served / fname, m)
    md5 = hashlib.md5((served / fname).read_bytes()).hexdigest()
    monkeypatch.setitem(encoder_weights.IMAGENET_FILES, "notop", (fname, md5))
    path = encoder_weights.download_imagenet_weights(False, base_url=url,
                                                      cache_dir=str(tmp_path / "keras"))
    assert hashlib.md5(open(path, "rb").read()).hexdigest() == md5

    bad = encoder_weights.IMAGENET_FILES["top"][0]
    (served / bad).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="(?i)hash|corrupt|incomplete"):
        encoder_weights.download_imagenet_weights(True, base_url=url,
                                                  cache_dir=str(tmp_path / "keras2"))

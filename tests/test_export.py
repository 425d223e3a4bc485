"""export/: SavedModel layout, sizes, signatures, warmup, parity with Keras, bf16, CLI."""
import json

import numpy as np
import pytest
import tensorflow as tf

from export import savedmodel
from contract.layout import LABELS_FILE, METADATA_FILE, WARMUP_FILE, versions
from export.savedmodel import export_saved_model, saved_model_sizes, weights_nbytes
from contract.names import (DEFAULT_OUTPUT_FILTER, GRPC_DEFAULT_MAX_MESSAGE_BYTES,
                            SEGMENT_ENCODED, SEGMENT_PROBABILITIES, SERVING_DEFAULT)
from export.warmup import read_warmup_file
from export.wire import predict_request, predict_response
from model.exported import load_exported
from model.fcn8s import build_fcn8s

IMAGE_SIZE = (64, 128)
CONFIG = {"dataset": "kitti", "task": "road", "class_names": ["non-road", "road"],
          "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(IMAGE_SIZE),
          "normalization": "caffe", "fc_width": 16, "num_classes": 2}
METRICS = {"MaxF": 0.5, "AP": 0.4}


def tiny_model(seed=0):
    """fc_width=16 FCN-8s whose score layers are random (they start at zero), compiled with a
    built optimizer like a loaded training checkpoint, whose slots must not be exported."""
    import keras
    keras.utils.set_random_seed(seed)
    model = build_fcn8s(2, (*IMAGE_SIZE, 3), fc_width=16)
    rng = np.random.default_rng(seed)
    for name, scale in (("score_fr", 1.0), ("score_pool4", 30.0), ("score_pool3", 300.0)):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([rng.normal(0, scale / np.sqrt(kernel.shape[2]), kernel.shape)
                           .astype("float32"), bias])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    return model


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    path = export_saved_model(model, CONFIG, base, "fcn8s", metrics=METRICS,
                              source="runs/x/checkpoints/best.keras", run_dir="runs/x")
    return path


@pytest.fixture(scope="module")
def loaded(exported):
    return load_exported(exported)


def test_variables_are_saved_once(model, exported):
    weights = weights_nbytes(model)
    variables = saved_model_sizes(exported)["variables_bytes"]
    # Tracking the Keras model itself would also save Adam's two slots per weight (3x).
    assert abs(variables - weights) / weights < 0.02, (variables, weights)


def test_layout_and_atomic_write(exported):
    assert exported.name == "1"
    for rel in ("saved_model.pb", "variables/variables.index", f"assets/{LABELS_FILE}",
                f"assets.extra/{METADATA_FILE}", f"assets.extra/{WARMUP_FILE}"):
        assert (exported / rel).is_file(), rel
    assert [p.name for p in exported.parent.iterdir()] == ["1"]  # no temporary folder left


def test_export_is_world_readable(exported):
    """TF Serving rarely runs as the exporting user: folders 0755, files 0644 (mkdtemp
    alone leaves the version folder 0700, unreadable to anyone else)."""
    import stat
    assert stat.S_IMODE(exported.stat().st_mode) == 0o755
    for path in exported.rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path


def test_labels_and_metadata(exported, loaded):
    assert (exported / "assets" / LABELS_FILE).read_text() == "non-road\nroad\n"
    assert loaded.class_names == ["non-road", "road"]
    meta = json.loads((exported / "assets.extra" / METADATA_FILE).read_text())
    assert meta["class_names"] == CONFIG["class_names"]
    assert meta["colours"] == CONFIG["colours"]
    assert meta["image_size"] == list(IMAGE_SIZE)
    assert meta["compute_dtype"] == "float32"
    assert meta["metrics"] == METRICS
    assert meta["source_checkpoint"] == "runs/x/checkpoints/best.keras"
    assert meta["run_dir"] == "runs/x" and meta["version"] == 1
    assert set(meta["signatures"]) == {SERVING_DEFAULT, SEGMENT_ENCODED, SEGMENT_PROBABILITIES}
    assert meta["export_format"] == 2
    assert meta["signatures"][SERVING_DEFAULT]["inputs"]["images"] == {
        "dtype": "uint8", "shape": [None, None, None, 3]}
    # The labels asset is part of the graph, so loading points it at the version's copy.
    assert loaded.module.labels.asset_path.numpy().decode().endswith(f"assets/{LABELS_FILE}")


def test_warmup_records_parse(exported):
    logs = read_warmup_file(exported / "assets.extra" / WARMUP_FILE)
    requests = [log.predict_log.request for log in logs]
    assert {r.model_spec.signature_name for r in requests} == {
        SERVING_DEFAULT, SEGMENT_ENCODED, SEGMENT_PROBABILITIES}
    for request in requests:
        key = "image_bytes" if request.model_spec.signature_name == SEGMENT_ENCODED else "images"
        value = tf.make_ndarray(request.inputs[key])
        if key == "images":
            assert value.dtype == np.uint8 and value.shape == (1, *IMAGE_SIZE, 3)
        else:
            assert tf.io.decode_image(value[0]).shape == (*IMAGE_SIZE, 3)


def test_signature_names_dtypes_shapes(loaded):
    sigs = loaded.signatures
    assert set(sigs) == {SERVING_DEFAULT, SEGMENT_ENCODED, SEGMENT_PROBABILITIES}
    for name in (SERVING_DEFAULT, SEGMENT_PROBABILITIES):
        _, inputs = sigs[name].structured_input_signature
        assert inputs["images"].dtype == tf.uint8
        assert inputs["images"].shape.as_list() == [None, None, None, 3]
    # serving_default: only the compact maps, so a client without output_filter (and REST,
    # which has none) gets a small reply; float maps from their own signature.
    outputs = sigs[SERVING_DEFAULT].structured_outputs
    assert {k: v.dtype for k, v in outputs.items()} == {
        "class_ids": tf.uint8, "confidence": tf.uint8}
    outputs = sigs[SEGMENT_PROBABILITIES].structured_outputs
    assert {k: v.dtype for k, v in outputs.items()} == {"probabilities": tf.float32}
    _, inputs = sigs[SEGMENT_ENCODED].structured_input_signature
    assert inputs["image_bytes"].dtype == tf.string
    assert inputs["image_bytes"].shape.as_list() == [None]
    outputs = sigs[SEGMENT_ENCODED].structured_outputs
    assert {k: v.dtype for k, v in outputs.items()} == {
        # `_bytes`: TF Serving's REST API sends these as {"b64": ...} (util/json_tensor.cc)
        "mask_png_bytes": tf.string, "confidence_png_bytes": tf.string, "class_ids": tf.uint8,
        "heights": tf.int32, "widths": tf.int32}


def test_serving_default_any_size(loaded):
    images = np.stack([random_image(50, 77, 1), random_image(50, 77, 2)])
    out = {**loaded.segment(images), **loaded.probabilities(images)}
    assert out["class_ids"].shape == out["confidence"].shape == (2, 50, 77)
    assert out["probabilities"].shape == (2, 50, 77, 2)
    np.testing.assert_array_equal(out["class_ids"], out["probabilities"].argmax(-1))
    expected_conf = np.round(out["probabilities"][..., 1] * 255)
    assert np.abs(out["confidence"].astype(int) - expected_conf).max() <= 1
    assert 0 < out["class_ids"].mean() < 1  # both classes appear: the checks above can fail


def test_session_fetch_with_output_filter(exported, loaded):
    """What TF Serving does: load the MetaGraph into a session and fetch only the outputs in
    output_filter, so probabilities are computed but never copied into the response."""
    image = random_image(45, 70, 10)[None]
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported))
        sig = meta_graph.signature_def[SERVING_DEFAULT]
        fetches = {k: sig.outputs[k].name for k in DEFAULT_OUTPUT_FILTER}
        out = sess.run(fetches, {sig.inputs["images"].name: image})
    assert set(out) == set(DEFAULT_OUTPUT_FILTER)
    expected = loaded.segment(image)
    for key in DEFAULT_OUTPUT_FILTER:
        np.testing.assert_array_equal(out[key], expected[key])


def test_segment_encoded_mixed_sizes_and_modes(loaded):
    rgb = random_image(40, 60, 3)
    gray = random_image(30, 90, 4)[..., :1]
    rgba = np.concatenate([random_image(70, 20, 5), np.full((70, 20, 1), 255, np.uint8)], -1)
    blobs = [tf.io.encode_png(rgb).numpy(), tf.io.encode_jpeg(random_image(50, 50, 6)).numpy(),
             tf.io.encode_png(gray).numpy(), tf.io.encode_png(rgba).numpy()]
    out = loaded.segment_encoded(blobs)
    assert out["heights"].tolist() == [40, 50, 30, 70]
    assert out["widths"].tolist() == [60, 50, 90, 20]
    assert out["class_ids"].shape == (4, 70, 90)
    for i, (h, w) in enumerate(zip(out["heights"], out["widths"])):
        ids = out["class_ids"][i]
        assert (ids[h:, :] == 255).all() and (ids[:, w:] == 255).all()
        assert ids[:h, :w].max() < 2
        mask = tf.io.decode_png(out["mask_png_bytes"][i]).numpy()
        np.testing.assert_array_equal(mask[..., 0], ids[:h, :w])  # PNG round trip
        assert tf.io.decode_png(out["confidence_png_bytes"][i]).shape == (h, w, 1)
    # A lossless image gives the same answer through either signature.
    direct = loaded.segment(rgb[None])
    np.testing.assert_array_equal(out["class_ids"][0, :40, :60], direct["class_ids"][0])
    np.testing.assert_array_equal(tf.io.decode_png(out["confidence_png_bytes"][0]).numpy()[..., 0],
                                  direct["confidence"][0])
    gray_rgb = loaded.segment(np.repeat(gray, 3, -1)[None])["class_ids"][0]
    np.testing.assert_array_equal(out["class_ids"][2, :30, :90], gray_rgb)


def test_empty_batches_are_invalid_arguments(loaded):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        loaded.segment(np.zeros((0, 30, 40, 3), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="empty batch"):
        loaded.segment_encoded([])


def test_segment_encoded_calls_the_model_once_per_batch(loaded):
    """The convolutions sit outside the per-image decode/encode loops (map_fn while bodies)."""
    library = loaded.signatures[SEGMENT_ENCODED].graph.as_graph_def().library.function
    convs = {f.signature.name: sum(n.op == "Conv2D" for n in f.node_def) for f in library}
    assert sum(convs.values()) > 0
    assert not any(count for name, count in convs.items() if "while_body" in name), convs


def test_multiclass_confidence_is_max_probability(tmp_path):
    import keras
    keras.utils.set_random_seed(1)
    model = build_fcn8s(3, (*IMAGE_SIZE, 3), fc_width=16)
    rng = np.random.default_rng(1)
    layer = model.get_layer("score_fr")
    kernel, bias = layer.get_weights()
    layer.set_weights([rng.normal(0, 1, kernel.shape).astype("float32"), bias])
    config = {**CONFIG, "task": None, "num_classes": 3, "class_names": ["sky", "car", "road"],
              "colours": [[0, 0, 255], [255, 0, 0], [255, 0, 255]]}
    served = load_exported(export_saved_model(model, config, tmp_path, "m"))
    assert served.class_names == ["sky", "car", "road"]
    image = random_image(33, 99, 11)[None]
    out = {**served.segment(image), **served.probabilities(image)}
    assert out["probabilities"].shape == (1, 33, 99, 3)
    expected = np.round(out["probabilities"].max(-1) * 255)
    assert np.abs(out["confidence"].astype(int) - expected).max() <= 1
    assert len(np.unique(out["class_ids"])) > 1


def test_undecodable_image_fails_the_request(loaded):
    good = tf.io.encode_png(random_image(20, 20)).numpy()
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.segment_encoded([good, b"not an image"])


def test_kitti_sized_messages_fit_grpc_default(loaded, tmp_path):
    image = random_image(375, 1242, 7)
    # No output_filter: what a stock client sends. The responses are encoded as TF Serving
    # encodes them by default (typed fields: uint8 as int_val varints, up to 2 bytes each).
    request = predict_request("fcn8s", SERVING_DEFAULT, {"images": image[None]})
    response = predict_response("fcn8s", SERVING_DEFAULT, loaded.segment(image[None]), 1)
    png = tf.io.encode_png(image).numpy()
    request2 = predict_request("fcn8s", SEGMENT_ENCODED,
                               {"image_bytes": np.array([png], dtype=object)})
    response2 = predict_response("fcn8s", SEGMENT_ENCODED, loaded.segment_encoded([png]), 1)
    for message in (request, response, request2, response2):
        assert message.ByteSize() < GRPC_DEFAULT_MAX_MESSAGE_BYTES


def test_parity_with_keras_on_kitti(model, loaded, kitti_root):
    from model.data.image_io import read_image
    from model.inference import predict_probabilities
    paths = sorted((kitti_root / "training" / "image_2").glob("*.png"))[::12][:3]
    images = [read_image(p) for p in paths]
    # At the training geometry: the graph's resize is the identity.
    small = [tf.cast(tf.image.resize(im, IMAGE_SIZE), tf.uint8).numpy() for im in images]
    keras_ids = np.asarray(model(np.stack(small).astype("float32"), training=False)).argmax(-1)
    np.testing.assert_array_equal(loaded.segment(np.stack(small))["class_ids"], keras_ids)
    # At original size, through the same resize path in both directions.
    for image, probs in zip(images, predict_probabilities(model, images, IMAGE_SIZE)):
        served = loaded.segment(image[None])["class_ids"][0]
        np.testing.assert_array_equal(served, probs.argmax(-1))
        assert 0 < served.mean() < 1


def test_versions_and_overwrite(model, tmp_path):
    base = tmp_path / "models"
    first = export_saved_model(model, CONFIG, base, "m")
    second = export_saved_model(model, CONFIG, base, "m")
    assert (first.name, second.name) == ("1", "2")
    (first / "marker").write_text("old export")
    with pytest.raises(FileExistsError, match="already exists"):
        export_saved_model(model, CONFIG, base, "m", version=1)
    assert (first / "marker").is_file()  # refused: left untouched
    replaced = export_saved_model(model, CONFIG, base, "m", version=1, overwrite=True)
    assert replaced == first and (first / "saved_model.pb").is_file()
    assert not (first / "marker").exists()  # replaced as a whole
    assert sorted(p.name for p in (base / "m").iterdir()) == ["1", "2"]  # no temp folders
    assert sorted(versions(base / "m")) == [1, 2]


def test_failed_export_leaves_nothing(model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(savedmodel, "write_warmup_file", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_saved_model(model, CONFIG, tmp_path, "m")
    assert list((tmp_path / "m").iterdir()) == []


def test_bad_config_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        export_saved_model(model, {**CONFIG, "class_names": ["a", "b", "c"]}, tmp_path, "m")
    with pytest.raises(ValueError, match="image_size"):
        export_saved_model(model, {**CONFIG, "image_size": [96, 128]}, tmp_path, "m")


def test_bfloat16_export(model, loaded, tmp_path):
    path = export_saved_model(model, CONFIG, tmp_path, "m", compute_dtype="bfloat16")
    bf16 = load_exported(path)
    assert bf16.metadata.compute_dtype == "bfloat16"
    # The graph really computes in bfloat16 (the variables stay float32) ...
    graph = bf16.signatures[SERVING_DEFAULT].graph
    types = {(n.op, n.attr["T"].type) for f in graph.as_graph_def().library.function
             for n in f.node_def if n.op == "Conv2D"}
    assert types and all(t == tf.bfloat16.as_datatype_enum for _, t in types)
    # ... while the outputs keep their dtypes and mostly agree with float32.
    images = np.stack([random_image(64, 128, 8), random_image(64, 128, 9)])
    out16, out32 = bf16.segment(images), loaded.segment(images)
    assert bf16.probabilities(images)["probabilities"].dtype == np.float32
    assert out16["class_ids"].dtype == np.uint8
    assert (out16["class_ids"] == out32["class_ids"]).mean() > 0.95


def test_cli(model, tmp_path, capsys):
    from export.__main__ import main
    run = tmp_path / "runs" / "x"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(CONFIG))
    (run / "metrics.json").write_text(json.dumps(METRICS))
    model.save(run / "checkpoints" / "best.keras")
    args = ["--run-dir", str(run), "--model-dir", str(tmp_path / "models" / "fcn8s")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "models" / "fcn8s" / "1"
    assert str(path) in printed and "variables_bytes" in printed
    meta = json.loads((path / "assets.extra" / METADATA_FILE).read_text())
    assert meta["metrics"] == METRICS
    assert meta["source_checkpoint"] == str(run / "checkpoints" / "best.keras")
    assert main(args + ["--model-version", "1"]) == 2
    assert capsys.readouterr().err == (f"error: {path}: already exists (pass --overwrite to "
                                       f"replace it, or choose another --model-version)\n")


@pytest.mark.parametrize("shape,padding", [((1, 2, 4, 8), "same"), ((3, 5, 18, 8), "same"),
                                           ((2, 12, 39, 4), "same"), ((2, 9, 11, 4), "valid")])
def test_patch_convolution_equals_tensorflows(shape, padding):
    # fc6 in the serving graph: 7x7 patches @ kernel; the reference is TF's own convolution,
    # including maps smaller than the kernel (the 2x4 pool5 of a 64x128 image).
    from export.precision import PatchConv2D

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    layer = PatchConv2D(6, 7, padding=padding, activation=None)
    got = layer(x).numpy()
    kernel, bias = (w.numpy() for w in layer.weights)
    want = tf.nn.conv2d(x, kernel, 1, padding.upper()).numpy() + bias
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_serving_graph_computes_fc6_as_a_matmul(model):
    from export.precision import PatchConv2D, serving_copy

    copy = serving_copy(model)
    assert isinstance(copy.get_layer("fc6"), PatchConv2D)
    assert not isinstance(copy.get_layer("fc7"), PatchConv2D)
    x = np.random.default_rng(1).uniform(0, 255, (2, 96, 160, 3)).astype(np.float32)
    from model.fcn8s import with_free_size

    np.testing.assert_allclose(copy.predict_on_batch(x),
                               with_free_size(model).predict_on_batch(x), atol=1e-5)

"""Clients against a running server (real TF Serving when available, else tfserving_dev):
signatures, parity with the SavedModel in-process, versions and labels, bad requests, hot
swap of a new version, restarts. Which backend ran is printed as 'serving backend: ...'."""
from __future__ import annotations

import io
import shutil
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from serving.errors import ServingError
from serving.grpc_client import PredictionClient
from tests.serving_fixtures import (MODEL_NAME, export_version, model_base,  # noqa: F401
                                    sample_images, serving_backend)

pytestmark = pytest.mark.timeout(300)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def in_process(model_base):  # noqa: F811
    """The exported versions loaded in this process: the reference for parity."""
    from model.exported import load_exported
    return {v: load_exported(model_base / MODEL_NAME / str(v)) for v in (1, 2)}


@pytest.fixture
def client(serving_backend):  # noqa: F811
    with PredictionClient(serving_backend.address, MODEL_NAME, timeout=60) as c:
        yield c


def test_status_and_metadata(client):
    status = {s["version"]: s["state"] for s in client.get_model_status()}
    assert status[1] == "AVAILABLE" and status[2] == "AVAILABLE"
    metadata = client.get_model_metadata()
    assert metadata["name"] == MODEL_NAME and metadata["version"] == 2  # newest by default
    signatures = metadata["signature_def"]
    images = signatures["serving_default"]["inputs"]["images"]
    assert images["dtype"] == "DT_UINT8"
    assert [int(d["size"]) for d in images["tensor_shape"]["dim"]] == [-1, -1, -1, 3]
    assert set(signatures["serving_default"]["outputs"]) == {"class_ids", "confidence"}
    assert set(signatures["segment_probabilities"]["outputs"]) == {"probabilities"}
    assert signatures["segment_encoded"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert {"mask_png_bytes", "confidence_png_bytes", "class_ids", "heights", "widths"} == set(
        signatures["segment_encoded"]["outputs"])


def test_segment_images_matches_in_process(client, in_process):
    images = np.stack([sample_images(1)[0], sample_images(2)[0]])
    result = client.segment_images(images)
    expected = in_process[2].segment(images)
    assert result["model_version"] == 2
    assert set(result) == {"class_ids", "confidence", "model_version"}  # no probabilities
    assert result["class_ids"].dtype == np.uint8 and result["class_ids"].shape == (2, 75, 124)
    assert set(np.unique(result["class_ids"])) == {0, 1}  # a mask worth comparing
    np.testing.assert_array_equal(result["class_ids"], expected["class_ids"])
    np.testing.assert_array_equal(result["confidence"], expected["confidence"])


def test_probabilities_from_their_own_signature(client, in_process):
    image = sample_images(3)[1]
    assert set(client.segment_images(image, outputs=None)) == {"class_ids", "confidence",
                                                               "model_version"}
    result = client.segment_probabilities(image)
    assert result["probabilities"].shape == (1, 48, 96, 2) and result["model_version"] == 2
    np.testing.assert_allclose(result["probabilities"].sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(result["probabilities"],
                               in_process[2].probabilities(image[None])["probabilities"],
                               atol=1e-6)


def test_segment_encoded_mixed_sizes(client, in_process):
    images = sample_images(4)
    blobs = [png(im) for im in images]
    result = client.segment_encoded(blobs)
    expected = in_process[2].segment_encoded(blobs)
    np.testing.assert_array_equal(result["class_ids"], expected["class_ids"])
    assert result["class_ids"].shape == (3, 100, 124)  # padded to the largest
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        assert (result["heights"][i], result["widths"][i]) == (h, w)
        mask = np.array(Image.open(io.BytesIO(result["mask_png_bytes"][i])))
        assert mask.shape == (h, w)
        np.testing.assert_array_equal(mask, result["class_ids"][i, :h, :w])
        assert (result["class_ids"][i, h:, :] == 255).all()


def test_real_kitti_images_match_in_process(client, in_process, kitti_root):
    """Server answer == loaded SavedModel on real samples (test_export checks SavedModel ==
    Keras on them), for both signatures, at the images' own sizes."""
    from model.data.image_io import read_image

    paths = sorted((kitti_root / "training" / "image_2").glob("*.png"))[::12][:3]
    for path in paths:
        image = read_image(path)
        got = client.segment_images(image)
        expected = in_process[2].segment(image[None])["class_ids"]
        np.testing.assert_array_equal(got["class_ids"], expected)
    blobs = [p.read_bytes() for p in paths]
    got = client.segment_encoded(blobs, outputs=["class_ids", "heights", "widths"])
    expected = in_process[2].segment_encoded(blobs)
    np.testing.assert_array_equal(got["class_ids"], expected["class_ids"])
    assert list(got["widths"]) == [read_image(p).shape[1] for p in paths]


def test_chunked_batch_equals_single_request(serving_backend, in_process):  # noqa: F811
    images = sample_images(5)
    blobs = [png(im) for im in images]
    limit = max(len(b) for b in blobs) + 4096 + 1  # one image per request
    with PredictionClient(serving_backend.address, MODEL_NAME, max_request_bytes=limit) as c:
        result = c.segment_encoded(blobs, outputs=["class_ids", "heights", "widths"])
    expected = in_process[2].segment_encoded(blobs)
    # Each chunk pads to its own largest image; the client pads the joined batch with 255.
    np.testing.assert_array_equal(result["class_ids"], expected["class_ids"])
    np.testing.assert_array_equal(result["heights"], expected["heights"])


@pytest.mark.parametrize("pin, expected_version", [
    ({"version": 1}, 1), ({"version": 2}, 2),
    ({"version_label": "stable"}, 1), ({"version_label": "canary"}, 2)])
def test_version_selection(serving_backend, in_process, pin, expected_version):  # noqa: F811
    images = sample_images(6)[0][None]
    with PredictionClient(serving_backend.address, MODEL_NAME, **pin) as c:
        result = c.segment_probabilities(images)
        if "version" in pin:  # GetModelStatus narrows to a version number, not to a label
            assert [s["version"] for s in c.get_model_status()] == [expected_version]
    assert result["model_version"] == expected_version
    reference = in_process[expected_version].probabilities(images)
    np.testing.assert_allclose(result["probabilities"], reference["probabilities"], atol=1e-6)
    other = in_process[3 - expected_version].probabilities(images)
    assert not np.allclose(result["probabilities"], other["probabilities"], atol=1e-3)


def _bad_requests():
    image = sample_images(7)[0][None]
    return {
        "not an image": dict(inputs={"image_bytes": np.array([b"this is no image"], object)},
                             signature_name="segment_encoded"),
        "wrong dtype": dict(inputs={"images": image.astype(np.float32)}),
        "wrong rank": dict(inputs={"images": image[0]}),
        "missing input": dict(inputs={"pixels": image}),
        "unknown output": dict(inputs={"images": image}, output_filter=["nope"]),
        "unknown signature": dict(inputs={"images": image}, signature_name="nope"),
    }


@pytest.mark.parametrize("case, code, words", [
    ("not an image", grpc.StatusCode.INVALID_ARGUMENT, "image"),
    ("wrong dtype", grpc.StatusCode.INVALID_ARGUMENT, "uint8"),
    ("wrong rank", grpc.StatusCode.INVALID_ARGUMENT, ""),
    # tensorflow/cc/saved_model/util.cc GetInputValues (called from TF Serving's
    # servables/tensorflow/predict_util.cc); the counts match, so VerifyRequestInputsSize
    # passes and "Missing but required" is never sent.
    ("missing input", grpc.StatusCode.INVALID_ARGUMENT,
     "Signature input alias: images(feed name: serving_default_images:0) not found in "
     "request and no default value provided."),
    # servables/tensorflow/predict_util.cc PreProcessPrediction, RunPredict
    ("unknown output", grpc.StatusCode.INVALID_ARGUMENT, "output tensor alias not found"),
    ("unknown signature", grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found'),
])
def test_bad_request_is_refused_and_server_keeps_serving(client, case, code, words):
    with pytest.raises(ServingError) as caught:
        client.predict(**_bad_requests()[case])
    assert caught.value.code == code, caught.value
    assert words in caught.value.message
    assert caught.value.attempts == 1  # never retried
    assert client.segment_images(sample_images(8)[1])["model_version"] == 2


def test_empty_batch_is_invalid_argument(client):
    for call in (lambda: client.segment_images(np.zeros((0, 48, 96, 3), np.uint8)),
                 lambda: client.segment_encoded([])):
        with pytest.raises(ServingError) as caught:
            call()
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "empty batch" in caught.value.message
        assert caught.value.attempts == 1  # never retried
    assert client.segment_images(sample_images(8)[1])["model_version"] == 2


@pytest.mark.parametrize("model, pin, code, words", [
    ("nope", {}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    (MODEL_NAME, {"version": 7}, grpc.StatusCode.NOT_FOUND,
     f"Servable not found for request: Specific({MODEL_NAME}, 7)"),
    (MODEL_NAME, {"version_label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
])
def test_unknown_model_or_version(serving_backend, model, pin, code, words):  # noqa: F811
    with PredictionClient(serving_backend.address, model, **pin) as c:
        with pytest.raises(ServingError) as caught:
            c.segment_images(sample_images(9)[1])
    assert caught.value.code == code and words in caught.value.message
    assert caught.value.attempts == 1


def test_status_of_unknown_model(serving_backend):  # noqa: F811
    with PredictionClient(serving_backend.address, "nope") as c:
        with pytest.raises(ServingError) as caught:
            c.get_model_status()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "Could not find any versions of model nope" in caught.value.message


def test_rest_client_matches_grpc(serving_backend, client):  # noqa: F811
    if not serving_backend.rest_address:
        pytest.skip("this backend has no REST address (set TFSERVING_REST_ADDRESS)")
    from serving.rest_client import RestPredictionClient
    images = sample_images(10)
    blobs = [png(im) for im in images[:2]]
    with RestPredictionClient(serving_backend.rest_address, MODEL_NAME) as rest:
        status = {s["version"]: s["state"] for s in rest.get_model_status()}
        assert status[1] == status[2] == "AVAILABLE"
        metadata = rest.get_model_metadata()
        assert metadata["version"] == 2
        assert metadata["signature_def"]["serving_default"]["inputs"]["images"]["dtype"] == \
            "DT_UINT8"
        got = rest.segment_encoded(blobs)
        pixels = rest.segment_images(images[1])
    want = client.segment_encoded(blobs)
    np.testing.assert_array_equal(got["class_ids"], want["class_ids"])
    assert [bytes(b) for b in got["mask_png_bytes"]] == [bytes(b) for b in want["mask_png_bytes"]]
    assert got["model_version"] == 2  # asked for first, then pinned
    np.testing.assert_array_equal(pixels["class_ids"],
                                  client.segment_images(images[1])["class_ids"])
    with RestPredictionClient(serving_backend.rest_address, MODEL_NAME, version=7) as rest:
        with pytest.raises(ServingError) as caught:
            rest.get_model_status()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_cli_segment_writes_masks_and_overlays(serving_backend, tmp_path):  # noqa: F811
    from serving.client import main
    paths = []
    for i, image in enumerate(sample_images(11)[:2]):
        paths.append(tmp_path / f"img{i}.png")
        paths[-1].write_bytes(png(image))
    out = tmp_path / "out"
    assert main(["segment", "--server", serving_backend.address, "--model-label", "stable",
                 *map(str, paths), "--output", str(out)]) == 0
    for i, image in enumerate(sample_images(11)[:2]):
        mask = np.array(Image.open(out / f"img{i}_mask.png"))
        overlay = np.array(Image.open(out / f"img{i}_overlay.png"))
        assert mask.shape == image.shape[:2] and overlay.shape == image.shape
        assert (out / f"img{i}_confidence.png").is_file()
    assert main(["status", "--server", serving_backend.address]) == 0

def test_cli_reports_a_missing_version_in_one_line(serving_backend, tmp_path, capsys):  # noqa: F811
    from serving.client import main
    image = tmp_path / "img.png"
    image.write_bytes(png(sample_images(11)[0]))
    assert main(["segment", "--server", serving_backend.address, "--model-version", "7",
                 str(image), "--output", str(tmp_path / "out")]) == 2
    # TF Serving's words for it (core/basic_manager.cc)
    assert capsys.readouterr().err == (f"error: {serving_backend.address}: NOT_FOUND: Servable "
                                       f"not found for request: Specific(fcn8s, 7)\n")


def test_never_answering_server_gives_deadline_error():
    # A socket that listens but never speaks: the call must end at its deadline, not hang.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        with PredictionClient(address, MODEL_NAME, timeout=1.5, max_retries=50) as c:
            with pytest.raises(ServingError) as caught:
                c.get_model_status()
    assert caught.value.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


def test_server_that_never_comes_back_gives_clear_error():
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with PredictionClient(f"127.0.0.1:{port}", MODEL_NAME, timeout=2.0, max_backoff=0.5) as c:
        start = time.monotonic()
        with pytest.raises(ServingError) as caught:
            c.segment_images(sample_images(12)[1])
    err = caught.value
    # waitForReady: the call waits for the server until its deadline, then says so.
    assert err.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.5 < time.monotonic() - start < 10 and f"127.0.0.1:{port}" in str(err)


class _Hammer:
    """Sends requests from a thread until stopped; records versions seen and errors."""

    def __init__(self, address: str, pause: float = 0.05, **client_args):
        self.client = PredictionClient(address, MODEL_NAME, **client_args)
        self.pause = pause
        self.versions: list[int] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.image = sample_images(13)[1]

    def _run(self):
        while not self._stop.is_set():
            try:
                self.versions.append(self.client.segment_images(self.image)["model_version"])
            except Exception as err:  # recorded, asserted on by the test
                self.errors.append(err)
            time.sleep(self.pause)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=120)
        self.client.close()

    def wait_for(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        pytest.fail(f"{what} not seen within {timeout} s; versions {self.versions[-5:]}, "
                    f"errors {self.errors[:3]}")


def test_restart_under_running_client(serving_backend):  # noqa: F811
    if not serving_backend.can_restart:
        pytest.skip(f"{serving_backend.kind} backend cannot be restarted by the tests")
    with _Hammer(serving_backend.address, timeout=120, max_backoff=1.0) as h:
        h.wait_for(lambda: len(h.versions) >= 2, 60, "first answers")
        serving_backend.stop()
        time.sleep(1.0)  # requests meanwhile fail over to retries
        before = len(h.versions)
        serving_backend.start()
        h.wait_for(lambda: len(h.versions) >= before + 3, 120, "answers after the restart")
    assert h.errors == []


def test_new_version_is_picked_up_without_failed_requests(serving_backend,  # noqa: F811
                                                          model_base):  # noqa: F811
    # Last in this module: it adds version 3 (removed again at the end).
    if not serving_backend.sees_model_base:
        pytest.skip(f"{serving_backend.kind} backend does not watch our model folder")
    with _Hammer(serving_backend.address, timeout=60) as h:
        h.wait_for(lambda: h.versions and h.versions[-1] == 2, 60, "version 2")
        export_version(model_base, 3, seed=5)  # the real export, while requests run
        try:
            h.wait_for(lambda: h.versions and h.versions[-1] == 3, 120, "version 3")
        finally:
            before = len(h.versions)
            shutil.rmtree(model_base / MODEL_NAME / "3")
            h.wait_for(lambda: len(h.versions) > before and h.versions[-1] == 2, 120,
                       "version 2 again after removing 3")
    assert h.errors == []
    assert 2 in h.versions and 3 in h.versions

"""Fixtures for the serving tests: exported model versions and one running server.

The server is real TF Serving when it can be had (see serving/backends.py: the binary on
PATH, a Docker engine, or TFSERVING_GRPC_ADDRESS), else serving.test_server. Which one ran is
printed in pytest's terminal summary: "serving backend: ...".
"""
from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest

MODEL_NAME = "fcn8s"
IMAGE_SIZE = (64, 128)
NUM_CLASSES = 2


def export_version(model_base: pathlib.Path, version: int, seed: int = 0) -> pathlib.Path:
    """Export a tiny FCN-8s (fc_width=16, 64x128) as <model_base>/fcn8s/<version>."""
    import keras
    from export.savedmodel import export_saved_model
    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(seed)
    model = build_fcn8s(NUM_CLASSES, (*IMAGE_SIZE, 3), fc_width=16)
    # FCN's score layers start at zero (every pixel 50/50, class 0): give them random
    # weights so that masks have both classes and versions differ.
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        value = np.asarray(weight)
        if value.ndim >= 2 and not value.any():
            weight.assign(rng.normal(0.0, 1.0, value.shape).astype(value.dtype))
    config = {"dataset": "synthetic", "task": "road", "class_names": ["background", "road"],
              "colours": [[0, 0, 0], [255, 0, 255]], "image_size": list(IMAGE_SIZE),
              "num_classes": NUM_CLASSES, "fc_width": 16, "normalization": "caffe",
              "label_format": "ids"}
    return export_saved_model(model, config, model_base, MODEL_NAME, version=version)


def copy_version(model_base: pathlib.Path, source: int, target: int) -> pathlib.Path:
    """Publish a copy of a version under a new number the way exports do: write next to the
    base path, then rename, so a polling server never sees half a version."""
    base = model_base / MODEL_NAME
    staging = model_base / f".staging-{target}"
    shutil.copytree(base / str(source), staging)
    final = base / str(target)
    os.rename(staging, final)
    return final


def sample_images(seed: int = 0) -> list[np.ndarray]:
    """Three RGB images of mixed sizes (none of them the model's geometry)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((75, 124), (48, 96), (100, 60))]


@pytest.fixture(scope="session")
def model_base(tmp_path_factory) -> pathlib.Path:
    """models/fcn8s/{1,2}: two tiny FCN versions with different random weights."""
    pytest.importorskip("export.savedmodel", reason="export/savedmodel.py not available")
    base = tmp_path_factory.mktemp("models")
    export_version(base, 1, seed=1)
    export_version(base, 2, seed=3)  # seeds whose masks have both classes
    return base


@pytest.fixture(scope="session")
def serving_backend(model_base, request):
    """A running server for MODEL_NAME with versions 1 and 2 (labels stable=1, canary=2)."""
    from serving.backends import start_backend

    backend = start_backend(model_base, MODEL_NAME, labels={"stable": 1, "canary": 2})
    line = f"serving backend: {backend.description}"
    request.config.pluginmanager.register(_SummaryLine(line), "serving-backend-summary")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\n" + line)
    yield backend
    backend.stop()


class _SummaryLine:
    """Repeats the backend line at the end of the run, whatever the -r flags."""

    def __init__(self, line: str):
        self.line = line

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.line)

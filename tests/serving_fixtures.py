"""Fixtures for the serving tests: exported model versions and one running server.

The server is real TF Serving when it can be had (see serving/backends.py: the binary on
PATH, a Docker engine, or TFSERVING_GRPC_ADDRESS), else tfserving_dev. Which one ran is
printed in pytest's terminal summary: "serving backend: ...".
"""
from __future__ import annotations

import os
import pathlib

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


def sample_images(seed: int = 0) -> list[np.ndarray]:
    """Three RGB images of mixed sizes (none of them the model's geometry)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((75, 124), (48, 96), (100, 60))]


def write_test_models(base: pathlib.Path, served_base: str | None = None) -> pathlib.Path:
    """<base>/fcn8s/{1,2} (two tiny FCNs, different random weights) and <base>/models.config
    (labels stable=1, canary=2; base_path `served_base`, e.g. /models/fcn8s in a container)."""
    from serving.backends import write_models_config
    export_version(base, 1, seed=1)
    export_version(base, 2, seed=3)  # seeds whose masks have both classes
    write_models_config(base / "models.config", MODEL_NAME,
                        served_base or str(base / MODEL_NAME), {"stable": 1, "canary": 2})
    return base


# The fixtures are imported into several test modules, and pytest makes each import its own
# fixture: the exported models and the server are kept on the pytest config, so a session
# exports once and starts one server whatever the modules.

@pytest.fixture(scope="session")
def model_base(tmp_path_factory, request) -> pathlib.Path:
    """The folder with fcn8s/1 and fcn8s/2: exported here, or $TFSERVING_MODEL_BASE (the
    models an external server at $TFSERVING_GRPC_ADDRESS serves, made by
    `python -m tests.serving_fixtures DIR`)."""
    pytest.importorskip("export.savedmodel", reason="export/savedmodel.py not available")
    cached = getattr(request.config, "_fcnseg_model_base", None)
    if cached is not None:
        return cached
    given = os.environ.get("TFSERVING_MODEL_BASE")
    if given:
        base = pathlib.Path(given)
        if not all((base / MODEL_NAME / v / "saved_model.pb").is_file() for v in ("1", "2")):
            pytest.fail(f"TFSERVING_MODEL_BASE={given} has no {MODEL_NAME}/1 and /2 "
                        "(make them with: python -m tests.serving_fixtures DIR)")
    else:
        base = write_test_models(tmp_path_factory.mktemp("models"))
    request.config._fcnseg_model_base = base
    return base


@pytest.fixture(scope="session")
def serving_backend(model_base, request):
    """A running server for MODEL_NAME with versions 1 and 2 (labels stable=1, canary=2)."""
    from serving.backends import start_backend

    backend = getattr(request.config, "_fcnseg_serving_backend", None)
    if backend is None:
        backend = start_backend(model_base, MODEL_NAME, labels={"stable": 1, "canary": 2})
        request.config._fcnseg_serving_backend = backend
        request.config.add_cleanup(backend.close)
        line = f"serving backend: {backend.description}"
        request.config.pluginmanager.register(_SummaryLine(line), "serving-backend-summary")
        reporter = request.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("\n" + line)
    return backend


class _SummaryLine:
    """Repeats the backend line at the end of the run, whatever the -r flags."""

    def __init__(self, line: str):
        self.line = line

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.line)


if __name__ == "__main__":
    # python -m tests.serving_fixtures DIR [SERVED_BASE_PATH]: the test models for a server
    # started by hand (then set TFSERVING_GRPC_ADDRESS and TFSERVING_MODEL_BASE=DIR).
    import sys
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m tests.serving_fixtures DIR [SERVED_BASE_PATH]")
    folder = write_test_models(pathlib.Path(sys.argv[1]),
                               sys.argv[2] if len(sys.argv) == 3 else None)
    print(f"wrote {folder}/{MODEL_NAME}/1, /2 and {folder}/models.config")

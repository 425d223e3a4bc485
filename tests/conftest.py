"""Shared fixtures: the real sample data in ../shared/data, the threshold model, quiet
TensorFlow."""
import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("FCNSEG_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real KITTI/COCO samples; tests that need them skip when the folder is absent."""
    if not (SHARED_DATA / "kitti_road").is_dir() or not (SHARED_DATA / "coco").is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set FCNSEG_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def road_model(tmp_path_factory) -> pathlib.Path:
    """models/fcn8s/1: the binary threshold model of tests/fakes.py (road where brightness >
    127.5), exported as a KITTI road model; shared by the Beam test files."""
    from tests import fakes
    return fakes.export_threshold_model(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def kitti_root(shared_data) -> pathlib.Path:
    return shared_data / "kitti_road"


@pytest.fixture(scope="session")
def coco_root(shared_data) -> pathlib.Path:
    return shared_data / "coco"

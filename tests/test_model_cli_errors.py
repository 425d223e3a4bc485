"""Every model CLI answers a missing folder and a bad flag value with one line,
`error: <what>: <why>`, on stderr and exit status 2 (common.cli), never a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from model import evaluate, streams, train
from model.data import coco_explore, download, synthetic


def _one_error_line(capsys, *fragments) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("not a folder\n")
    return path


def test_train(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert train.main(["--dataset", "folder", "--data-root", str(missing),
                       "--run-dir", str(tmp_path / "run")]) == 2
    _one_error_line(capsys, f"error: {missing}: folder dataset folder not found")
    assert train.main(["--batch-size", "0"]) == 2
    assert _one_error_line(capsys) == "error: --batch-size: must be >= 1, got 0"
    assert train.main(["--image-size", "100", "64"]) == 2
    assert _one_error_line(capsys) == ("error: --image-size: takes H W (positive multiples "
                                       "of 32), got 100 64")
    assert train.main(["--image-size", "64", "128", "--crop-size", "96", "64"]) == 2
    assert _one_error_line(capsys) == ("error: --crop-size: 96x64 is larger than --image-size "
                                       "64x128")
    assert train.main(["--crop-size", "32", "64", "--no-augment"]) == 2
    assert _one_error_line(capsys) == ("error: --crop-size: crops are an augmentation: drop "
                                       "--no-augment")
    assert train.main(["--crop-size", "30", "64"]) == 2
    assert _one_error_line(capsys).startswith("error: --crop-size: takes H W")


def test_evaluate(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert evaluate.main(["--model-dir", str(missing), "--dataset", "folder",
                          "--data-root", str(tmp_path)]) == 2
    _one_error_line(capsys, f"error: {missing}: no exported model here")
    assert evaluate.main(["--checkpoint", "x.keras", "--inference-size", "33", "64"]) == 2
    assert _one_error_line(capsys) == ("error: --inference-size: takes H W (positive "
                                       "multiples of 32) or 'native', got 33 64")


def test_run_dir_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert evaluate.main(["--checkpoint", str(missing / "checkpoints" / "best.keras")]) == 2
    assert _one_error_line(capsys) == f"error: {missing}: no such run directory"


def test_streams(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert streams.main(["--checkpoint", "x.keras", str(missing)]) == 2
    assert _one_error_line(capsys) == f"error: {missing}: no such image or folder"
    assert streams.main(["--checkpoint", "x.keras", str(tmp_path), "--inference-size",
                         "0", "0"]) == 2
    _one_error_line(capsys, "error: --inference-size: takes H W")


def test_download(a_file, capsys):
    # --output below a plain file: the folder cannot exist
    assert download.main(["kitti", "--output", str(a_file / "data"), "--base-url",
                          "http://127.0.0.1:9", "--no-progress"]) == 2
    _one_error_line(capsys, "error: ", "plain.txt")
    assert download.main(["coco", "--output", str(a_file.parent), "--only", "test2017"]) == 2
    _one_error_line(capsys, "error: --only: unknown archive(s) ['test2017'] for coco")


def test_coco_explore(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "instances.json"
    assert coco_explore.main(["counts", "--annotations", str(missing)]) == 2
    assert _one_error_line(capsys) == f"error: {missing}: COCO annotation file not found"
    assert coco_explore.main(["grid", "--annotations", str(missing), "--images",
                              str(tmp_path), "--output", str(tmp_path / "g.png"),
                              "--n", "0"]) == 2
    assert _one_error_line(capsys) == "error: --n: must be >= 1, got 0"


def test_synthetic(a_file, tmp_path, capsys):
    assert synthetic.main(["--output", str(a_file / "scenes"), "--n", "1"]) == 2
    _one_error_line(capsys, "error: ", "plain.txt")
    assert synthetic.main(["--output", str(tmp_path / "s"), "--n", "0"]) == 2
    assert _one_error_line(capsys) == "error: --n: must be >= 1, got 0"


def test_shell_run_is_one_line_without_tensorflow_log(tmp_path):
    """From a shell: TensorFlow's C++ start-up lines are quiet, the error is the only line."""
    done = subprocess.run([sys.executable, "-m", "model.evaluate", "--model-dir",
                           str(tmp_path / "nowhere"), "--dataset", "folder", "--data-root",
                           str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in __import__("os").environ.items()
                               if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'}: no exported model "
                                        f"here ({tmp_path / 'nowhere'}: neither a SavedModel "
                                        f"folder (no saved_model.pb) nor a model folder "
                                        f"holding numbered versions)"]

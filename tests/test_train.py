"""Training: the tf.data pipeline, a few steps that reduce the loss, resuming a run."""
import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from model import runs
from model.data import kitti
from contract.names import IGNORE_LABEL as IGNORE
from model.data.pipeline import check_pairs, decode_label, make_dataset
from model.train import mixed_precision_policy, run as train_run


def _pairs(tmp_path, n=6, size=(50, 70)):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        label = rng.integers(0, 3, size, dtype=np.uint8)
        label[:3] = IGNORE
        ip, lp = tmp_path / f"img{i}.png", tmp_path / f"lab{i}.png"
        Image.fromarray(image).save(ip)
        Image.fromarray(label).save(lp)
        out.append((str(ip), str(lp)))
    return out


def test_pipeline_shapes_and_ignore_preserved(tmp_path):
    pairs = _pairs(tmp_path)
    for training in (True, False):
        ds = make_dataset(pairs, "ids", (32, 64), batch_size=4, training=training)
        images, labels = next(iter(ds))
        assert images.shape == (4, 32, 64, 3) and images.dtype.name == "float32"
        assert labels.shape == (4, 32, 64) and labels.dtype.name == "uint8"
        values = set(np.unique(labels.numpy()))
        assert values <= {0, 1, 2, IGNORE}
        assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 255


def test_scale_crop_pads_with_ignore_not_background(tmp_path):
    pairs = _pairs(tmp_path, n=1)
    # Scale well below 1 forces padding: padded pixels must be ignored.
    ds = make_dataset(pairs, "ids", (64, 96), batch_size=1, training=True,
                      scale_range=(0.5, 0.5), hflip=False)
    _, labels = next(iter(ds))
    lab = labels.numpy()[0]
    assert (lab[32:, :] == IGNORE).all() and (lab[:, 48:] == IGNORE).all()
    assert (lab[3:30, :45] != IGNORE).any()


def test_tf_kitti_decoding_matches_devkit_rule(kitti_root):
    import tensorflow as tf

    for path in sorted((kitti_root / "training" / "gt_image_2").glob("*_road_*.png"))[:6]:
        tf_label = decode_label(tf.io.read_file(str(path)), "kitti").numpy()[..., 0]
        np.testing.assert_array_equal(tf_label, kitti.read_gt(path))


def test_check_pairs_names_bad_files(tmp_path):
    pairs = _pairs(tmp_path, n=2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match="broken.png"):
        check_pairs([(str(tmp_path / "broken.png"), pairs[0][1])])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        check_pairs([(pairs[0][0], str(tmp_path / "gone.png"))])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="small.png.*differs"):
        check_pairs([(pairs[0][0], str(tmp_path / "small.png"))])


def _history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


TINY = ["--dataset", "synthetic", "--encoder-weights", "none", "--image-size", "64", "128",
        "--num-synthetic", "12", "--fc-width", "16", "--batch-size", "4",
        "--learning-rate", "3e-4", "--eval-overlays", "1", "--verbose", "0"]


def test_few_steps_reduce_loss_and_resume(tmp_path):
    run_dir = tmp_path / "run"
    common = TINY + ["--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache")]
    train_run(common + ["--epochs", "3"])
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    # A constant 50/50 prediction has a cross-entropy of ln 2; training must get well below
    # it. (`loss` also holds the L2 term of the kernels; `xentropy` is the data term.)
    assert float(rows[-1]["xentropy"]) < math.log(2) - 0.1
    config = runs.load_run_config(run_dir)
    assert config["class_names"] == ["not road", "road"] and config["image_size"] == [64, 128]
    assert runs.checkpoint_path(run_dir, "best").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"mean_iou", "pixel_accuracy", "train_seconds"} <= set(metrics)
    # A binary model also gets the devkit's road scores, over the whole split.
    assert set(metrics["kitti"]) == {"overall"}
    split = runs.load_split(run_dir)
    assert metrics["kitti"]["overall"]["num_images"] == len(split["val"]) == 2  # 12 * 0.2
    assert (run_dir / "curves.png").is_file()

    steps_before = int(runs.load_checkpoint(runs.checkpoint_path(run_dir, "last"),
                                            compile=True).optimizer.iterations)
    train_run(common + ["--epochs", "5", "--resume"])
    rows = _history(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    state = runs.read_json(run_dir / "checkpoints" / "state.json")
    assert state["epoch"] == 5
    resumed = runs.load_checkpoint(runs.checkpoint_path(run_dir, "last"), compile=True)
    # Optimizer state carried over: step count continues instead of restarting at zero.
    assert int(resumed.optimizer.iterations) == steps_before * 5 // 3


def test_mixed_precision_run_keeps_float32_outputs(tmp_path):
    import keras

    run_dir = tmp_path / "mp"
    try:
        train_run(TINY + ["--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
                           "--epochs", "1", "--mixed-precision"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model = runs.load_checkpoint(runs.checkpoint_path(run_dir, "last"))
    import tensorflow as tf

    policy = mixed_precision_policy(bool(tf.config.list_physical_devices("GPU")))
    assert model.get_layer("fc6").dtype_policy.name == policy
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == "float32"


def test_mixed_precision_policy_per_device():
    assert mixed_precision_policy(on_gpu=True) == "mixed_float16"
    assert mixed_precision_policy(on_gpu=False) == "mixed_bfloat16"

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
from common.cpu import parse_cpuinfo
from model.train import (compile_for_training, make_optimizer, mixed_precision_policy,
                         resolve_jit_compile, resolve_mixed_precision, run as train_run)


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


def test_crops_are_windows_of_the_image_with_its_own_labels(tmp_path):
    # Grey blocks of 0 or 255 labelled 1 where 255: brightness (+-0.15), contrast (0.8-1.2),
    # saturation and hue keep 0 below 128 and 255 above, so a window whose labels were cut
    # from another place or flipped differently from its pixels breaks `bright == label`.
    rng = np.random.default_rng(1)
    pairs = []
    for i in range(3):
        blocks = rng.integers(0, 2, (8, 12), dtype=np.uint8)
        label = np.kron(blocks, np.ones((8, 8), np.uint8))  # 64x96
        image = np.repeat((label * 255)[..., None], 3, axis=-1)
        ip, lp = tmp_path / f"img{i}.png", tmp_path / f"lab{i}.png"
        Image.fromarray(image).save(ip)
        Image.fromarray(label).save(lp)
        pairs.append((str(ip), str(lp)))
    # scale 1: the image keeps its size, so both views are the stored pixels
    ds = make_dataset(pairs, "ids", (64, 96), batch_size=3, training=True,
                      scale_range=(1.0, 1.0), crop_size=(32, 64))
    for images, labels in ds.repeat(4):
        assert images.shape == (3, 32, 64, 3) and labels.shape == (3, 32, 64)
        bright = images.numpy()[..., 0] > 127.5
        np.testing.assert_array_equal(bright, labels.numpy() == 1)
    # validation keeps whole images at --image-size
    images, labels = next(iter(make_dataset(pairs, "ids", (64, 96), batch_size=3,
                                            training=False, crop_size=(32, 64))))
    assert images.shape == (3, 64, 96, 3)


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
        "--learning-rate", "3e-4", "--eval-overlays", "1", "--progress", "0"]


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
    # A constant 50/50 prediction has a cross-entropy of ln 2; training must get well below
    # it. (`loss` also holds the L2 term of the kernels; `xentropy` is the data term.) The
    # best of the five epochs: training is not deterministic (parallel augmentation) and one
    # epoch in several jumps back to ~0.7 before falling again.
    assert min(float(r["xentropy"]) for r in rows) < math.log(2) - 0.1
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


def test_mixed_precision_choice():
    amx = _cpu("avx512f avx512_bf16 amx_bf16 amx_tile")
    avx512_bf16, avx2 = _cpu("avx2 fma avx512f avx512_bf16"), _cpu("sse4_2 avx avx2 fma")
    assert resolve_mixed_precision("auto", False, amx) is True
    assert resolve_mixed_precision("auto", False, avx512_bf16) is True
    assert resolve_mixed_precision("auto", False, avx2) is False  # bfloat16 emulated there
    assert resolve_mixed_precision("auto", True, avx2) is True    # a GPU's float16
    assert resolve_mixed_precision("on", False, avx2) is True
    assert resolve_mixed_precision("off", True, amx) is False


def test_training_on_crops_validates_whole_images(tmp_path, capsys):
    run_dir = tmp_path / "crops"
    train_run(TINY + ["--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
                      "--epochs", "1", "--steps-per-epoch", "2", "--crop-size", "32", "64"])
    config = runs.load_run_config(run_dir)
    assert config["crop_size"] == [32, 64] and config["image_size"] == [64, 128]
    assert config["mixed_precision"] is False  # the flag's default, as resolved
    model = runs.load_checkpoint(runs.checkpoint_path(run_dir, "best"))
    assert model.input_shape[1:3] == (None, None)  # windows in training, images elsewhere
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["kitti"]["overall"]["num_images"] == 2
    assert math.isfinite(float(_history(run_dir)[-1]["val_loss"]))


def _tiny_train_model(jit_compile, weights=None):
    import keras

    from model.fcn8s import build_fcn8s

    keras.utils.set_random_seed(0)
    # No dropout: its random masks are drawn by different generators with and without XLA.
    model = build_fcn8s(2, (64, 128, 3), fc_width=16, dropout=0.0, encoder_weights=None,
                        weight_decay=5e-4)
    if weights is not None:
        model.set_weights(weights)
    train_model = compile_for_training(model, 2, make_optimizer("sgd", 1e-2, "constant", 3,
                                                                clip_norm=1.0),
                                       jit_compile=jit_compile)
    return model, train_model


def test_xla_training_step_matches_the_plain_step():
    model, xla = _tiny_train_model(True)
    _, plain = _tiny_train_model(False, weights=model.get_weights())
    assert xla.jit_compile is True and plain.jit_compile is False
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 64, 128, 3)).astype(np.float32)
    y = (rng.uniform(size=(4, 64, 128)) < 0.3).astype(np.uint8)
    y[:, :4] = IGNORE
    losses = {"xla": [], "plain": []}
    for _ in range(3):
        for name, train_model in (("xla", xla), ("plain", plain)):
            losses[name].append(float(train_model.train_on_batch(x, y, return_dict=True)["loss"]))
    # The first loss is the forward pass alone; the next two follow one and two SGD updates.
    # XLA and oneDNN sum the same float32 products in other orders: over the ~1e4 to 1e5
    # terms of a convolution or the mean loss, rounding moves a result by about
    # sqrt(n) * 2**-24 (~2e-5) relative; 1e-4 leaves room for two updates, while a step
    # that skipped the update, the clipping or the L2 term would be off by far more.
    np.testing.assert_allclose(losses["xla"], losses["plain"], rtol=1e-4)
    assert losses["plain"][2] < losses["plain"][0]  # the updates did something


def _cpu(flags):
    return parse_cpuinfo(f"processor : 0\nflags : {flags}\n", logical_cpus=2)


def test_jit_compile_choice():
    avx2, avx512 = _cpu("sse4_2 avx avx2 fma"), _cpu("avx avx2 fma avx512f avx512_bf16")
    assert resolve_jit_compile("auto", False, avx2) is True
    assert resolve_jit_compile("auto", False, avx512) is False
    assert resolve_jit_compile("auto", True, avx2) is False  # bfloat16 stays on oneDNN
    assert resolve_jit_compile("on", True, avx512) is True
    assert resolve_jit_compile("off", False, avx2) is False


def test_jit_compile_flag_reaches_the_training_step(tmp_path, capsys, monkeypatch):
    from model import train

    compiled = []

    def spy(*args, **kwargs):
        train_model = compile_for_training(*args, **kwargs)
        compiled.append(train_model.jit_compile)
        return train_model

    monkeypatch.setattr(train, "compile_for_training", spy)
    run_dir = tmp_path / "xla"
    train_run(TINY + ["--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
                      "--epochs", "1", "--steps-per-epoch", "2", "--jit-compile", "on"])
    assert compiled == [True]
    assert "XLA on" in capsys.readouterr().out
    assert math.isfinite(float(_history(run_dir)[-1]["loss"]))


def test_a_relative_data_root_is_recorded_absolute(tmp_path, monkeypatch):
    """split.json and config.json must name the same files from any working folder:
    model.evaluate joins relative split paths under the data root, so a root recorded as
    typed (../data) would be joined twice."""
    from model.train import parse_args

    (tmp_path / "data").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = parse_args(["--dataset", "folder", "--data-root", "../data", "--run-dir", "r"])
    assert args.data_root == str(tmp_path / "data")


def test_seeds_share_the_validation_pairs(tmp_path):
    # --seed moves weights, augmentation and batch order; the split follows --data-seed only,
    # so two seeds of one recipe are scored on the same images.
    splits = []
    for seed in ("0", "1"):
        run_dir = tmp_path / f"seed{seed}"
        train_run(TINY + ["--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
                          "--epochs", "1", "--steps-per-epoch", "1", "--seed", seed])
        splits.append(runs.load_split(run_dir))
        assert runs.load_run_config(run_dir)["data_seed"] == 0
    assert splits[0] == splits[1]

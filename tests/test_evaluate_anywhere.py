"""python -m model.evaluate --dataset kitti|coco|folder --data-root DIR: any model, any data.

Expected values by definition: a ground truth equal to the model's own arg-max mask scores
MaxF = 100 % (KITTI devkit: F at the best threshold) and IoU = 100 % on every present class."""
import json

import numpy as np
import pytest
from PIL import Image

from common.cli import UserError
from model import evaluate
from model.data.synthetic import render_scene

SIZE = (64, 128)
IMAGE_HW = (70, 150)  # not the training size: scored at the image's own size


def _tiny_checkpoint(run_dir, num_classes, config, scene):
    """A tiny FCN with random score layers whose class-1 logit is shifted by its median on
    `scene`, so that its masks hold both classes."""
    import keras

    from tests.tiny_models import tiny_fcn

    model = tiny_fcn(num_classes, SIZE, seed=1)
    logits = np.asarray(keras.Model(model.input, model.get_layer("logits").output)(
        np.asarray(Image.fromarray(scene).resize(SIZE[::-1]), np.float32)[None]))
    layer = model.get_layer("score_pool3")
    kernel, bias = layer.get_weights()
    others = np.delete(logits, 1, axis=-1).max(axis=-1)
    bias[1] -= np.median(logits[..., 1] - others)
    layer.set_weights([kernel, bias])
    path = run_dir / "checkpoints" / "best.keras"
    path.parent.mkdir(parents=True)
    model.save(path)
    (run_dir / "config.json").write_text(json.dumps(config))
    return model, path


def _kitti_root(tmp_path, predict, scenes):
    """A data_road folder: one scene per category, ground truth = the model's own mask."""
    root = tmp_path / "data_road"
    for folder in ("image_2", "gt_image_2"):
        (root / "training" / folder).mkdir(parents=True)
    for cat, scene in zip(("um", "umm", "uu"), scenes):
        Image.fromarray(scene).save(root / "training" / "image_2" / f"{cat}_000000.png")
        road = predict([scene])[0].argmax(-1) == 1
        gt = np.zeros((*scene.shape[:2], 3), np.uint8)
        gt[..., 0] = 255          # red: evaluated
        gt[road, 2] = 255         # + blue: road (magenta)
        Image.fromarray(gt).save(root / "training" / "gt_image_2" / f"{cat}_road_000000.png")
    return root


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(5)
    return [render_scene(rng, *IMAGE_HW)[0] for _ in range(3)]


@pytest.fixture(scope="module")
def road_model(tmp_path_factory, scenes):
    from model.inference import keras_predictor

    run_dir = tmp_path_factory.mktemp("run")
    config = {"dataset": "synthetic", "task": "road", "class_names": ["not road", "road"],
              "colours": [[0, 0, 0], [255, 0, 255]], "label_format": "ids",
              "image_size": list(SIZE), "normalization": "caffe", "fc_width": 16,
              "num_classes": 2, "variant": "fcn8s"}
    model, checkpoint = _tiny_checkpoint(run_dir, 2, config, scenes[0])
    root = _kitti_root(tmp_path_factory.mktemp("kitti"), keras_predictor(model, SIZE), scenes)
    return model, checkpoint, root, config


def test_checkpoint_on_any_kitti_root(road_model, tmp_path, capsys):
    _, checkpoint, root, _ = road_model
    result = evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "kitti",
                           "--data-root", str(root), "--no-bev", "--output", str(tmp_path)])
    assert result["split_size"] == 3 and result["label_format"] == "kitti"
    assert set(result["kitti"]) == {"um", "umm", "uu", "overall"}
    assert 0.05 < result["kitti"]["overall"]["REC"] <= 1.0  # both classes present
    assert result["kitti"]["overall"]["MaxF"] == pytest.approx(1.0)
    assert "Road scores" in capsys.readouterr().out
    # Split as model.train does: one image per category rounds to none in val at 0.2.
    train = evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "kitti", "--split",
                          "train", "--data-root", str(root), "--no-bev",
                          "--output", str(tmp_path)])
    assert train["split_size"] == 3
    with pytest.raises(UserError, match="no images"):
        evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "kitti", "--split", "val",
                      "--data-root", str(root), "--no-bev", "--output", str(tmp_path)])


def test_saved_model_without_run_dir_on_kitti_root(road_model, tmp_path):
    from export.savedmodel import export_saved_model

    model, _, root, config = road_model
    version = export_saved_model(model, config, tmp_path / "models", "road")  # no run_dir
    result = evaluate.run(["--model-dir", str(version.parent), "--dataset", "kitti",
                           "--data-root", str(root), "--no-bev", "--output", str(tmp_path / "e")])
    assert result["kitti"]["overall"]["MaxF"] == pytest.approx(1.0, abs=1e-3)
    assert result["inference_size"] == list(SIZE)


def test_task_and_arguments_are_checked(road_model, tmp_path):
    _, checkpoint, root, _ = road_model
    with pytest.raises(UserError, match="kitti needs --data-root"):
        evaluate.parse_args(["--checkpoint", "x", "--dataset", "kitti"])
    with pytest.raises(UserError, match="is for --checkpoint"):
        evaluate.parse_args(["--model-dir", "x", "--inference-size", "native"])
    with pytest.raises(UserError, match="nowhere: kitti dataset folder not found"):
        evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "kitti",
                      "--data-root", str(tmp_path / "nowhere"), "--no-bev"])


def test_folder_dataset(tmp_path, scenes):
    from model.inference import keras_predictor

    config = {"dataset": "folder", "class_names": ["a", "b", "c"], "label_format": "ids",
              "image_size": list(SIZE), "normalization": "caffe", "fc_width": 16,
              "num_classes": 3, "colours": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}
    model, checkpoint = _tiny_checkpoint(tmp_path / "run", 3, config, scenes[0])
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    predict = keras_predictor(model, SIZE)
    for i, scene in enumerate(scenes):
        Image.fromarray(scene).save(root / "images" / f"s{i}.png")
        Image.fromarray(predict([scene])[0].argmax(-1).astype(np.uint8)).save(
            root / "labels" / f"s{i}.png")
    result = evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "folder",
                           "--data-root", str(root), "--cache-dir", str(tmp_path / "cache"),
                           "--output", str(tmp_path / "e")])
    present = [v for v in result["per_class_iou"].values() if v is not None]
    assert len(present) >= 2 and all(v == pytest.approx(1.0) for v in present)


def test_coco_with_annotations(coco_root, tmp_path, scenes):
    config = {"dataset": "coco", "categories": ["person", "car"],
              "class_names": ["background", "person", "car"], "label_format": "ids",
              "image_size": list(SIZE), "normalization": "caffe", "fc_width": 16,
              "num_classes": 3, "colours": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}
    _, checkpoint = _tiny_checkpoint(tmp_path / "run", 3, config, scenes[0])
    ann = coco_root / "annotations" / "instances_val2017_sample.json"
    result = evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "coco",
                           "--data-root", str(coco_root / "val2017"), "--annotations",
                           str(ann), "--cache-dir", str(tmp_path / "cache"),
                           "--output", str(tmp_path / "e")])
    images = json.loads(ann.read_text())["images"]
    assert result["split_size"] == len(images)
    assert list(result["per_class_iou"]) == ["background", "person", "car"]
    with pytest.raises(UserError, match="the model has 3"):
        evaluate.run(["--checkpoint", str(checkpoint), "--dataset", "coco", "--data-root",
                      str(coco_root / "val2017"), "--annotations", str(ann),
                      "--categories", "person", "--cache-dir", str(tmp_path / "cache")])

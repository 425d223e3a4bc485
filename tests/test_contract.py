"""The contract layer: names, export layout and version rule, records, file rules.

Expected values come from TF Serving's source (cited), the KITTI benchmark's file naming
(devkit_road readme), and hand computation.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from common import files as common_files
from contract import files, kitti, layout, names
from contract.records import ExportMetadata, RecordError, RunConfig


def test_contract_imports_no_tensorflow():
    code = ("import sys, contract.names, contract.layout, contract.records, contract.files, "
            "contract.kitti, common.files, common.cli, common.cpu; print('tensorflow' in sys.modules or 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bytes_suffix_on_every_string_output():
    # tensorflow_serving/util/json_tensor.cc: a DT_STRING output is written as {"b64": ...}
    # only when its name ends in "_bytes".
    assert names.MASK_PNG_BYTES.endswith("_bytes")
    assert names.CONFIDENCE_PNG_BYTES.endswith("_bytes")
    assert names.IMAGE_BYTES.endswith("_bytes")
    assert names.IGNORE_LABEL == 255 and names.GRPC_DEFAULT_MAX_MESSAGE_BYTES == 4194304


@pytest.mark.parametrize("name, number", [("1", 1), ("12", 12), ("007", 7), ("0", 0),
                                          (".tmp-3", None), ("3.old", None), ("v2", None),
                                          ("", None), ("-1", None), ("٣", None)])
def test_version_number_follows_tf_servings_parse(name, number):
    # file_system_storage_path_source.cc parses names with safe_strto64 ("007" -> 7).
    assert layout.version_number(name) == number


def _version(base, name, complete=True):
    folder = base / name
    folder.mkdir(parents=True)
    if complete:
        (folder / layout.SAVED_MODEL_FILE).write_bytes(b"pb")
    return folder


def test_newest_version_skips_incomplete_and_temporary_folders(tmp_path):
    _version(tmp_path, "1")
    _version(tmp_path, "2")
    _version(tmp_path, "10")
    _version(tmp_path, "11", complete=False)         # still being written
    _version(tmp_path, ".tmp-12-abc")                # our exporter's staging name
    (tmp_path / "13").write_text("a file, not a folder")
    assert list(layout.versions(tmp_path)) == [1, 2, 10]   # numeric, not lexicographic
    assert layout.newest_version(tmp_path) == 10
    assert layout.next_version(tmp_path) == 14  # never lands on an existing numbered name
    assert layout.resolve_version_dir(tmp_path) == tmp_path / "10"
    assert layout.resolve_version_dir(tmp_path, 2) == tmp_path / "2"
    assert layout.resolve_version_dir(tmp_path / "2") == tmp_path / "2"
    with pytest.raises(FileNotFoundError, match="no version 11"):
        layout.resolve_version_dir(tmp_path, 11)
    with pytest.raises(ValueError, match="not version 1"):
        layout.resolve_version_dir(tmp_path / "2", 1)
    with pytest.raises(FileNotFoundError, match="neither a SavedModel"):
        layout.resolve_version_dir(tmp_path / "nothing")
    assert layout.versions_from_listing([("3", True), ("4", False), ("x", True)]) == [3]


def _metadata(**overrides):
    data = {"model_name": "m", "version": 1, "class_names": ["not road", "road"],
            "image_size": [96, 320], "dataset": "kitti", "task": "road",
            "export_format": 2, "future_field": {"kept": True}}
    data.update(overrides)
    return data


def test_export_metadata_round_trip_keeps_unknown_keys(tmp_path):
    path = tmp_path / "1" / layout.METADATA_PATH
    ExportMetadata.from_dict(_metadata()).write(path)
    back = ExportMetadata.read(path)
    assert back.class_names == ["not road", "road"] and back.num_classes == 2
    assert back.extra == {"future_field": {"kept": True}}
    assert json.loads(path.read_text())["future_field"] == {"kept": True}
    assert oct(path.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize("overrides, words", [
    ({"class_names": []}, "class_names is empty"),
    ({"class_names": [str(i) for i in range(256)]}, "256 classes do not fit"),
    ({"num_classes": 3}, "num_classes 3 but 2 class_names"),
    ({"image_size": [96]}, "image_size must be"),
    ({"task": "lanes"}, "task must be one of"),
    # fcnseg 0.1 wrote no export_format (PNG outputs without `_bytes`): refused, not guessed
    ({"export_format": None}, "export format 1, this fcnseg reads format 2 only"),
    ({"export_format": 3}, "export format 3, this fcnseg reads format 2 only"),
    ({"ignore_label": 0}, "ignore_label 0"),
])
def test_export_metadata_refuses_inconsistent_records(overrides, words):
    with pytest.raises(RecordError, match=words):
        ExportMetadata.from_dict(_metadata(**overrides), "x.json")


def test_task_mismatch_is_an_error():
    lane = ExportMetadata.from_dict(_metadata(task="lane"))
    lane.require_task("lane")
    lane.require_task(None)
    with pytest.raises(RecordError, match="trained for the KITTI 'lane' task, not 'road'"):
        lane.require_task("road")


def test_run_config_needs_dataset(tmp_path):
    with pytest.raises(RecordError, match="missing dataset"):
        RunConfig.from_dict({"class_names": ["a"], "image_size": [8, 8]}, "config.json")
    (tmp_path / "config.json").write_text(json.dumps(
        {"dataset": "folder", "class_names": ["a", "b", "c"], "image_size": [8, 16]}))
    assert RunConfig.of_run(tmp_path).num_classes == 3


def test_resolve_inside_refuses_escapes(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("x")
    assert common_files.resolve_inside(root, "a/b.jpg") == str(root / "a" / "b.jpg")
    for bad in ("../secret.txt", "../../../../etc/passwd", "/etc/passwd", "a/../../secret.txt"):
        with pytest.raises(common_files.OutsideRootError):
            common_files.resolve_inside(root, bad)
    (root / "link").symlink_to(tmp_path)                 # a link that leads out
    with pytest.raises(common_files.OutsideRootError):
        common_files.resolve_inside(root, "link/secret.txt")
    assert common_files.resolve_inside("gs://bucket/coco/val", "x/1.jpg") == "gs://bucket/coco/val/x/1.jpg"
    with pytest.raises(common_files.OutsideRootError):
        common_files.resolve_inside("gs://bucket/coco/val", "../train/1.jpg")


def test_atomic_write_and_png_bytes(tmp_path):
    ids = np.array([[0, 1], [255, 2]], np.uint8)
    path = common_files.atomic_write_bytes(tmp_path / "sub" / "m.png", common_files.png_bytes(ids))
    with Image.open(path) as img:
        assert img.mode == "L" and np.array_equal(np.asarray(img), ids)
    assert [p.name for p in path.parent.iterdir()] == ["m.png"]  # no temporary left
    indexed = common_files.atomic_write_bytes(tmp_path / "p.png",
                                       common_files.png_bytes(ids, palette=[[1, 2, 3], [4, 5, 6]]))
    with Image.open(indexed) as img:
        assert img.mode == "P" and img.getpalette()[:6] == [1, 2, 3, 4, 5, 6]
        assert np.array_equal(np.asarray(img), ids)
    with pytest.raises(ValueError, match="uint8"):
        common_files.png_bytes(ids.astype(np.int32))
    assert files.is_image_name("a/B.TIF") and not files.is_image_name("a.txt")


def test_kitti_names():
    # devkit_road readme: results are <cat>_<road|lane>_<n>.png, lane for um only.
    assert kitti.parse_image_name("um_000012.png") == ("um", "000012")
    assert kitti.submission_name("umm_000003.png") == "umm_road_000003.png"
    assert kitti.submission_name("um_000003.png", "lane") == "um_lane_000003.png"
    assert kitti.calib_name("uu_000098.png") == "uu_000098.txt"
    assert kitti.category_of("uu_road_000001.png") == "uu"
    with pytest.raises(kitti.NotAKittiName, match="no ground truth for uu"):
        kitti.submission_name("uu_000001.png", "lane")
    with pytest.raises(kitti.NotAKittiName):
        kitti.parse_image_name("um_12.jpg")

"""Where an export keeps its files, and the one rule for which version is the newest.

    <model_base>/<name>/                  a "model folder": TF Serving's --model_base_path
    <model_base>/<name>/<version>/        a "version folder": one SavedModel
        saved_model.pb, variables/
        assets/labels.txt
        assets.extra/fcnseg_metadata.json
        assets.extra/tf_serving_warmup_requests

A version is a folder whose name is a decimal number and which holds saved_model.pb:
TF Serving ignores other names, and a folder still being written (no saved_model.pb yet, or
a temporary name) is not a version. Every reader uses `versions` / `newest_version` /
`resolve_version_dir`, so no two layers disagree about which model is served.
"""
from __future__ import annotations

import pathlib
from typing import Iterable, Mapping

LABELS_FILE = "labels.txt"
METADATA_FILE = "fcnseg_metadata.json"
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for
SAVED_MODEL_FILE = "saved_model.pb"

LABELS_PATH = f"assets/{LABELS_FILE}"
METADATA_PATH = f"assets.extra/{METADATA_FILE}"
WARMUP_PATH = f"assets.extra/{WARMUP_FILE}"

TEMP_PREFIX = ".tmp-"  # not a number, so TF Serving never takes it for a version


def version_number(name: str) -> int | None:
    """The version a folder name stands for, or None.

    TF Serving parses a child of the base path with strings::safe_strto64
    (sources/storage_path/file_system_storage_path_source.cc, ParseVersionNumber), so "7"
    and "007" are version 7 and ".tmp-3" is no version. We accept plain decimal digits only:
    the signed and blank-padded names safe_strto64 would also take are never written by
    fcnseg and are refused here rather than guessed at.
    """
    if not name.isascii() or not name.isdigit() or len(name) > 18:
        return None
    return int(name)


def versions_from_listing(entries: Mapping[str, bool] | Iterable[tuple[str, bool]]) -> list[int]:
    """Versions from (folder name, holds saved_model.pb) pairs, ascending.

    For listings that do not come from the local filesystem (Beam's FileSystems, S3, GCS).
    """
    items = entries.items() if isinstance(entries, Mapping) else entries
    found = (version_number(name) for name, complete in items if complete)
    return sorted(v for v in found if v is not None)


def versions(model_dir) -> dict[int, pathlib.Path]:
    """The complete versions in a local model folder, ascending."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return {}
    found = {}
    for entry in model_dir.iterdir():
        number = version_number(entry.name)
        if number is not None and (entry / SAVED_MODEL_FILE).is_file():
            found[number] = entry
    return dict(sorted(found.items()))


def newest_version(model_dir) -> int | None:
    found = versions(model_dir)
    return max(found) if found else None


def next_version(model_dir) -> int:
    """One more than every numbered folder, complete or not, so a new export never lands on
    a folder that exists."""
    model_dir = pathlib.Path(model_dir)
    taken = [version_number(p.name) for p in model_dir.iterdir()] if model_dir.is_dir() else []
    taken = [v for v in taken if v is not None]
    return max(taken) + 1 if taken else 1


def is_version_dir(path) -> bool:
    path = pathlib.Path(path)
    return version_number(path.name) is not None and (path / SAVED_MODEL_FILE).is_file()


def resolve_version_dir(path, version: int | None = None) -> pathlib.Path:
    """A model folder (newest version, or `version`) or a version folder -> the version folder.

    The one meaning of every `--model` flag: either form is accepted.
    """
    path = pathlib.Path(path)
    if (path / SAVED_MODEL_FILE).is_file():
        if version is not None and version_number(path.name) != version:
            raise ValueError(f"{path} is version {path.name}, not version {version}")
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(
            f"{path}: neither a SavedModel folder (no {SAVED_MODEL_FILE}) nor a model folder "
            f"holding numbered versions")
    if version is None:
        return found[max(found)]
    if version not in found:
        raise FileNotFoundError(f"{path}: no version {version} (found {sorted(found)})")
    return found[version]

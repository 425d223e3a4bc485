"""The records that travel between layers, as typed objects that validate themselves.

RunConfig      runs/<name>/config.json, written by model.train, read by evaluate and export.
ExportMetadata <version>/assets.extra/fcnseg_metadata.json, written by export, read by
               clients, the Beam jobs, evaluate and the development server.

Unknown keys are kept (`extra`) and written back, so a newer writer's fields survive an
older reader.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, ClassVar

from common.cli import UserError
from common.files import atomic_write_text
from contract import layout, names


class RecordError(UserError, ValueError):
    """A record file that is missing a field or contradicts itself: "<file>: <why>", which a
    command prints as its one error line."""

    def __init__(self, message: str):
        what, _, why = message.partition(": ")
        super().__init__(what, why)


def _read_json(path) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclasses.dataclass
class _Record:
    extra: dict = dataclasses.field(default_factory=dict)

    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> "_Record":
        missing = [k for k in cls.REQUIRED if data.get(k) is None]
        if missing:
            raise RecordError(f"{source}: missing {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        record = cls(**{k: v for k, v in data.items() if k in known},
                     extra={k: v for k, v in data.items() if k not in known})
        record.validate(source)
        return record

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def read(cls, path):
        return cls.from_dict(_read_json(path), str(path))

    def write(self, path) -> pathlib.Path:
        self.validate(str(path))
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def validate(self, source: str) -> None:  # overridden
        pass

    def _check_classes(self, source: str) -> None:
        if not self.class_names:
            raise RecordError(f"{source}: class_names is empty")
        if len(self.class_names) > names.MAX_CLASSES:
            raise RecordError(f"{source}: {len(self.class_names)} classes do not fit uint8 ids "
                              f"with {names.IGNORE_LABEL} = ignore")
        if self.num_classes is not None and int(self.num_classes) != len(self.class_names):
            raise RecordError(f"{source}: num_classes {self.num_classes} but "
                              f"{len(self.class_names)} class_names")
        if self.image_size is None or len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise RecordError(f"{source}: image_size must be [H, W], got {self.image_size!r}")
        if self.task is not None and self.task not in names.KITTI_TASKS:
            raise RecordError(f"{source}: task must be one of {names.KITTI_TASKS}, got {self.task!r}")
        if self.coco_protocol is not None and self.coco_protocol not in names.COCO_PROTOCOLS:
            raise RecordError(f"{source}: coco_protocol must be one of {names.COCO_PROTOCOLS}, "
                              f"got {self.coco_protocol!r}")


def require_task(model_task: str | None, task: str | None, source: str = "model") -> None:
    """The one check that a KITTI task asked for is the task a model was trained for; a
    record without a task (not KITTI, or written before tasks were recorded) passes."""
    if task is not None and task not in names.KITTI_TASKS:
        raise RecordError(f"task {task!r}: must be one of {names.KITTI_TASKS}")
    if task is not None and model_task is not None and task != model_task:
        raise RecordError(f"{source}: trained for the KITTI {model_task!r} task, not {task!r}")


@dataclasses.dataclass
class RunConfig(_Record):
    """What model.train decided: dataset, classes, geometry and the recipe."""
    dataset: str = None
    class_names: list = None
    image_size: list = None
    data_root: str | None = None
    task: str | None = None
    categories: Any = None
    colours: list | None = None
    label_format: str | None = None
    num_classes: int | None = None
    coco_protocol: str | None = None        # COCO: 'fcnseg' or 'torchvision' label rules
    normalization: str = "caffe"
    fc_width: int = 4096
    encoder_weights: str | None = None

    REQUIRED: ClassVar[tuple[str, ...]] = ("dataset", "class_names", "image_size")
    FILE: ClassVar[str] = "config.json"

    def validate(self, source: str) -> None:
        self._check_classes(source)
        self.image_size = [int(s) for s in self.image_size]
        if self.num_classes is None:
            self.num_classes = len(self.class_names)

    @classmethod
    def of_run(cls, run_dir) -> "RunConfig":
        return cls.read(pathlib.Path(run_dir) / cls.FILE)


@dataclasses.dataclass
class ExportMetadata(_Record):
    """What an exported version says about itself."""
    model_name: str = None
    version: int = None
    class_names: list = None
    image_size: list = None                 # the training geometry [H, W]
    # The geometry the graph infers at: [H, W] (resize) or names.NATIVE (pad to a multiple
    # of 32, no resize). Exports written before it was recorded inferred at image_size.
    inference_size: Any = None
    variant: str | None = None              # fcn8s / fcn16s / fcn32s; None before recorded
    dataset: str | None = None
    task: str | None = None                 # KITTI road / lane; None for other datasets
    categories: Any = None                  # COCO: the category names the classes stand for
    coco_protocol: str | None = None        # COCO: 'fcnseg' or 'torchvision' label rules
    colours: list | None = None
    num_classes: int | None = None
    normalization: str | None = None
    fc_width: int | None = None
    compute_dtype: str = "float32"
    ignore_label: int = names.IGNORE_LABEL
    export_format: int = names.EXPORT_FORMAT
    signatures: dict = dataclasses.field(default_factory=dict)
    metrics: dict | None = None
    source_checkpoint: str | None = None
    run_dir: str | None = None

    REQUIRED: ClassVar[tuple[str, ...]] = ("class_names", "image_size")

    @classmethod
    def from_dict(cls, data: dict, source: str = "record") -> "ExportMetadata":
        # A file without the key was written by format 1 (fcnseg 0.1), not by this one.
        if data.get("export_format") is None:
            data = {**data, "export_format": 1}
        return super().from_dict(data, source)

    def validate(self, source: str) -> None:
        self._check_classes(source)
        self.image_size = [int(s) for s in self.image_size]
        if self.inference_size is None:
            self.inference_size = list(self.image_size)
        elif self.inference_size != names.NATIVE:
            try:
                self.inference_size = [int(s) for s in self.inference_size]
            except (TypeError, ValueError):
                raise RecordError(f"{source}: inference_size must be [H, W] or "
                                  f"{names.NATIVE!r}, got {self.inference_size!r}") from None
            if len(self.inference_size) != 2:
                raise RecordError(f"{source}: inference_size must be [H, W] or "
                                  f"{names.NATIVE!r}, got {self.inference_size!r}")
        if self.num_classes is None:
            self.num_classes = len(self.class_names)
        if self.export_format != names.EXPORT_FORMAT:
            raise RecordError(f"{source}: export format {self.export_format}, this fcnseg "
                              f"reads format {names.EXPORT_FORMAT} only: export the model again")
        if int(self.ignore_label) != names.IGNORE_LABEL:
            raise RecordError(f"{source}: ignore_label {self.ignore_label}, this fcnseg uses "
                              f"{names.IGNORE_LABEL}")

    def require_task(self, task: str | None, source: str = "model") -> None:
        """A KITTI lane model scored as road (or the reverse) is an error, not a wrong score."""
        require_task(self.task, task, source)

    @classmethod
    def of_version(cls, version_dir) -> "ExportMetadata":
        """The metadata of a version folder; an export without it is an error naming the file."""
        return cls.read(pathlib.Path(version_dir) / layout.METADATA_PATH)

    @classmethod
    def of_export(cls, path, version: int | None = None) -> "ExportMetadata":
        """A model folder (newest version) or a version folder."""
        return cls.of_version(layout.resolve_version_dir(path, version))

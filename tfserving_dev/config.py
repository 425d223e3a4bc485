"""Model configuration: models.config (text ModelServerConfig) and --model_name /
--model_base_path, read the way TF Serving reads them (model_servers/server.cc
BuildSingleModelConfig, server_core.cc)."""
from __future__ import annotations

import dataclasses
import os
import pathlib

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tfserving_dev.errors import RequestError, Code


@dataclasses.dataclass
class ModelConfig:
    """One entry of a model_config_list: where versions live and which ones to serve."""

    name: str
    base_path: str
    policy: str = "latest"          # 'latest' | 'all' | 'specific'
    num_versions: int = 1           # for 'latest'
    versions: tuple[int, ...] = ()  # for 'specific'
    labels: dict[str, int] = dataclasses.field(default_factory=dict)

    def aspired(self, on_disk: list[int]) -> list[int]:
        """The versions the source asks the manager for (file_system_storage_path_source)."""
        if self.policy == "all":
            return sorted(on_disk)
        if self.policy == "specific":
            return sorted(v for v in on_disk if v in self.versions)
        return sorted(on_disk)[-self.num_versions:]


def single_model(name: str, base_path: str) -> list[ModelConfig]:
    """--model_name + --model_base_path: one model, newest version (BuildSingleModelConfig)."""
    return [ModelConfig(name=name, base_path=os.path.abspath(base_path))]


def from_proto(config: model_server_config_pb2.ModelServerConfig,
               source: str = "config") -> list[ModelConfig]:
    if config.WhichOneof("config") != "model_config_list":
        # model_service_impl.cc HandleReloadConfigRequest
        raise RequestError(Code.INVALID_ARGUMENT,
                           "ServerModelConfig type not supported by HandleReloadConfigRequest."
                           " Only ModelConfigList is currently supported")
    models = []
    for entry in config.model_config_list.config:
        if entry.model_platform not in ("", "tensorflow"):
            raise RequestError(Code.INVALID_ARGUMENT,
                               f"{source}: model {entry.name}: platform "
                               f"{entry.model_platform!r} is not supported here (only "
                               f"'tensorflow')")
        # A relative base_path is taken from the working directory, as TF Serving does.
        model = ModelConfig(name=entry.name, base_path=os.path.abspath(entry.base_path),
                            labels=dict(entry.version_labels))
        policy = entry.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            model.policy = "all"
        elif choice == "specific":
            model.policy = "specific"
            model.versions = tuple(policy.specific.versions)
        elif choice == "latest":
            model.num_versions = max(1, policy.latest.num_versions)
        models.append(model)
    return models


def read_model_config_file(path) -> list[ModelConfig]:
    """Parse a TF Serving models.config (text ModelServerConfig) into ModelConfigs."""
    path = pathlib.Path(path)
    try:
        config = text_format.Parse(path.read_text(),
                                   model_server_config_pb2.ModelServerConfig())
    except (OSError, text_format.ParseError) as err:
        raise ValueError(f"{path}: cannot read model config: {err}") from err
    try:
        return from_proto(config, str(path))
    except RequestError as err:
        raise ValueError(err.message) from err

"""The version manager: which versions of which models are loaded, as TF Serving decides it.

  * Aspired versions come from the file system (numbered folders holding saved_model.pb,
    contract.layout) filtered by each model's version policy, polled every
    --file_system_poll_wait_seconds (file_system_storage_path_source.cc).
  * What to do next is core/availability_preserving_policy.cc GetNextAction (`next_action`):
    a new version is loaded before the old one is unloaded, and the old one is unloaded only
    once an aspired version is serving, so a broken new export never takes the model down.
  * A failed load is retried --max_num_load_retries times, --load_retry_interval_micros
    apart (core/loader_harness.cc); then the version stays in END with the error, and is
    not tried again.
  * GetModelStatus (model_servers/get_model_status_impl.cc) always sets `status`: OK, or the
    load error.
  * Labels (server_core.cc UpdateModelVersionLabelMap) are checked after each config is
    applied: a label on a version that is not AVAILABLE fails the config with
    FAILED_PRECONDITION, unless --allow_version_labels_for_unavailable_models is set and the
    label does not already point at another version.
  * ReloadConfig (server_core.cc) applies a new model list, loads what it asks for, and
    updates the labels; a failing config leaves the old one in force.

Readers get servables from immutable snapshots that are replaced as a whole, so a request
holds its servable until it is done, even when that version is unloaded meanwhile.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
import time

from tensorflow_serving.apis import get_model_status_pb2

from contract import layout
from tfserving_dev.config import ModelConfig, read_model_config_file
from tfserving_dev.errors import Code, RequestError
from tfserving_dev.servable import Servable

log = logging.getLogger("tfserving_dev")
State = get_model_status_pb2.ModelVersionStatus.State


@dataclasses.dataclass(frozen=True)
class VersionState:
    state: int              # State.START / LOADING / AVAILABLE / UNLOADING / END
    error: str = ""         # the load error, when it failed
    aspired: bool = True

    @property
    def ready(self) -> bool:
        return self.state == State.AVAILABLE


def next_action(versions: dict[int, VersionState]) -> tuple[str, int] | None:
    """availability_preserving_policy.cc GetNextAction: ("unload", v), ("load", v) or None.

    Unload the lowest non-aspired serving version if no version is aspired, an aspired one
    is serving, or more than one non-aspired version is serving; else load the highest
    aspired version not tried yet."""
    has_aspired = any(s.aspired for s in versions.values())
    has_aspired_serving = any(s.aspired and s.ready for s in versions.values())
    unaspired_serving = sorted(v for v, s in versions.items() if not s.aspired and s.ready)
    if (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1) \
            and unaspired_serving:
        return ("unload", unaspired_serving[0])
    new = [v for v, s in versions.items() if s.aspired and s.state == State.START]
    return ("load", max(new)) if new else None


class ModelManager:
    def __init__(self, models: list[ModelConfig], *, poll_interval: float = 1.0,
                 max_load_retries: int = 5, load_retry_interval: float = 60.0,
                 allow_labels_for_unavailable: bool = False, config_file: str | None = None,
                 config_poll_interval: float = 0.0):
        self._configs: dict[str, ModelConfig] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._servables: dict[str, dict[int, Servable]] = {}
        self._states: dict[str, dict[int, VersionState]] = {}
        self._poll_interval = poll_interval
        self._max_load_retries = max_load_retries
        self._load_retry_interval = load_retry_interval
        self._allow_unavailable_labels = allow_labels_for_unavailable
        self._config_file = config_file
        self._config_poll_interval = config_poll_interval
        self._last_config_check = time.monotonic()
        self._lock = threading.RLock()  # one writer at a time; readers never wait on it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reload_config(models)  # the first config: its failure stops the start

    # -- configuration
    def reload_config(self, models: list[ModelConfig]) -> None:
        """ServerCore::ReloadConfig: new models are loaded before this returns; labels are
        checked afterwards. Raises RequestError and keeps the old labels on failure."""
        with self._lock:
            configs = {m.name: m for m in models}
            servables = {n: self._servables.get(n, {}) for n in configs}
            states = {n: self._states.get(n, {}) for n in configs}
            for name in set(self._servables) - set(configs):
                # Not closed here: requests in flight keep their servable until they finish.
                log.info("model %s: removed from the config, unloaded", name)
            self._configs, self._servables, self._states = configs, servables, states
            self.poll()
            self._labels = self._checked_labels(configs)

    def _checked_labels(self, configs: dict[str, ModelConfig]) -> dict[str, dict[str, int]]:
        labels = {}
        for name, config in configs.items():
            for label, version in config.labels.items():
                allowed = self._allow_unavailable_labels and \
                    self._labels.get(name, {}).get(label, version) == version
                state = self._states.get(name, {}).get(version)
                if not allowed and not (state and state.ready):
                    raise RequestError(
                        Code.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {name}, "
                        f"which is not currently available for inference")
                labels.setdefault(name, {})[label] = version
        return labels

    # -- polling
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="version-manager", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        with self._lock:
            for versions in self._servables.values():
                for servable in versions.values():
                    servable.close()

    def _run(self) -> None:
        while not self._stop.wait(self._poll_interval):
            try:
                self._maybe_reload_config_file()
                self.poll()
            except Exception:  # keep serving what is loaded; say why polling failed
                log.exception("polling the model base paths failed")

    def _maybe_reload_config_file(self) -> None:
        """--model_config_file_poll_wait_seconds (server.cc PollFilesystemAndReloadConfig):
        re-read the file; a bad one is logged and the old config stays."""
        if not self._config_file or self._config_poll_interval <= 0:
            return
        if time.monotonic() - self._last_config_check < self._config_poll_interval:
            return
        self._last_config_check = time.monotonic()
        try:
            self.reload_config(read_model_config_file(self._config_file))
        except (ValueError, RequestError) as err:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", err)

    def poll(self) -> None:
        with self._lock:
            for name, config in list(self._configs.items()):
                self._poll_model(name, config)

    def _poll_model(self, name: str, config: ModelConfig) -> None:
        aspired = set(config.aspired(sorted(layout.versions(config.base_path))))
        states = {v: dataclasses.replace(s, aspired=v in aspired)
                  for v, s in self._states[name].items()}
        for version in aspired - set(states):
            states[version] = VersionState(State.START)
        self._set_states(name, states)
        while (action := next_action(self._states[name])) is not None:
            verb, version = action
            if verb == "load":
                self._load(name, version, pathlib.Path(config.base_path) / str(version))
            else:
                self._unload(name, version)
        # Forget versions that are gone from disk and were never served.
        states = {v: s for v, s in self._states[name].items()
                  if s.aspired or s.ready or s.state == State.END and s.error == ""}
        self._set_states(name, states)

    def _set_states(self, name: str, states: dict[int, VersionState]) -> None:
        self._states = {**self._states, name: dict(states)}  # replace, never mutate

    def _set_state(self, name: str, version: int, state: VersionState) -> None:
        self._set_states(name, {**self._states[name], version: state})

    def _load(self, name: str, version: int, path: pathlib.Path) -> None:
        self._set_state(name, version, VersionState(State.LOADING))
        attempts = 1 + self._max_load_retries
        for attempt in range(1, attempts + 1):
            try:
                servable = Servable(name, version, path)
            except Exception as err:  # noqa: BLE001 - reported in the version's status
                error = f"{path}: loading failed: {err}"
                log.error("model %s version %d: load attempt %d of %d failed: %s",
                          name, version, attempt, attempts, err)
                if attempt < attempts and not self._stop.wait(self._load_retry_interval):
                    continue
                self._set_state(name, version, VersionState(State.END, error))
                return
            break
        self._servables = {**self._servables,
                           name: {**self._servables.get(name, {}), version: servable}}
        self._set_state(name, version, VersionState(State.AVAILABLE))
        log.info("model %s: version %d loaded from %s (%d warm-up requests replayed)",
                 name, version, path, servable.warmup_count)

    def _unload(self, name: str, version: int) -> None:
        self._set_state(name, version, dataclasses.replace(self._states[name][version],
                                                           state=State.UNLOADING))
        remaining = dict(self._servables.get(name, {}))
        remaining.pop(version, None)  # in-flight requests keep their reference
        self._servables = {**self._servables, name: remaining}
        self._set_state(name, version, VersionState(State.END, aspired=False))
        log.info("model %s: version %d unloaded", name, version)

    # -- lookups (server_core.cc ServableRequestFromModelSpec, basic_manager.cc)
    def resolve(self, model_spec) -> Servable:
        name = model_spec.name
        if not name:
            raise RequestError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        servables = self._servables.get(name) or {}
        choice = model_spec.WhichOneof("version_choice")
        if choice is None:
            if not servables:
                raise RequestError(Code.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})")
            return servables[max(servables)]
        if choice == "version":
            version = model_spec.version.value
        else:
            label = model_spec.version_label
            version = self._labels.get(name, {}).get(label)
            if version is None:
                raise RequestError(Code.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {label}")
        if version not in servables:
            raise RequestError(Code.NOT_FOUND,
                               f"Servable not found for request: Specific({name}, {version})")
        return servables[version]

    def version_states(self, model_spec) -> dict[int, VersionState]:
        """get_model_status_impl.cc: a version number narrows the answer, a label does not;
        newest version first."""
        name = model_spec.name
        if not name:
            raise RequestError(Code.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        states = {v: s for v, s in self._states.get(name, {}).items()
                  if s.state != State.START}
        if model_spec.HasField("version"):
            version = model_spec.version.value
            if version not in states:
                raise RequestError(Code.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
            return {version: states[version]}
        if not states:
            raise RequestError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return dict(sorted(states.items(), reverse=True))

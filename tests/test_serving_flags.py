"""Every tensorflow_model_server command line this project writes (compose, backends,
Makefile, docs, README) passes the flag names of TF Serving's model_servers/main.cc and the
start-up rules of model_servers/server.cc (Server::BuildAndStart), as transcribed in
tfserving_dev/flags.py; the rules themselves are checked here against the messages in
server.cc."""
from __future__ import annotations

import pathlib
import re
import shlex

import pytest

from tfserving_dev import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEV_FLAGS = {"bind_address": str}


# --------------------------------------------------------------------------- the rules

@pytest.mark.parametrize("argv, message", [
    # server.cc BuildAndStart
    (["--port=8500", "--model_config_file=/m.config", "--batching_parameters_file=/b.config"],
     "server_options.batching_parameters_file is set without setting "
     "server_options.enable_batching to true."),
    (["--port=8500", "--model_config_file=/m.config", "--enable_batching=false",
      "--batching_parameters_file=/b.config"], "without setting"),
    (["--port=8500"], "Both server_options.model_base_path and "
                      "server_options.model_config_file are empty!"),
    (["--port=0", "--model_base_path=/m"], "At least one of server_options.grpc_port or "
                                            "server_options.grpc_socket_path must be set."),
    (["--model_base_path=/m", "--use_alts_credentials", "--ssl_config_file=/s"],
     "Either use_alts_credentials must be false or ssl_config_file must be empty."),
    # main.cc: what tensorflow::Flags::Parse leaves unparsed is an "unknown argument"
    (["--port", "8500", "--model_base_path=/m"], "unknown argument"),
    (["--model_base_path=/m", "--model_name", "fcn8s"], "unknown argument"),
    (["--model_base_path=/m", "--no_such_flag=1"], "unknown argument"),
    (["--model_base_path=/m", "--port=85OO"], "not a valid int"),
    (["--model_base_path=/m", "--enable_batching=yes"], "=true or =false"),
])
def test_rules_refuse_what_tensorflow_model_server_refuses(argv, message):
    with pytest.raises(flags.FlagError) as caught:
        flags.validate(argv)
    assert message in str(caught.value)


def test_rules_accept_the_documented_forms():
    # g3doc/serving_config.md and docker.md use these forms.
    command = flags.validate(["--port=8500", "--rest_api_port=8501", "--model_name=m",
                              "--model_base_path=/models/m", "--enable_batching",
                              "--batching_parameters_file=/b.config"])
    assert command.values["enable_batching"] is True and command.values["port"] == 8500


# --------------------------------------------------------------------------- our command lines

def _compose_commands():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "serving" / "docker-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        assert service["entrypoint"] == ["tensorflow_model_server"], name
        yield f"compose {name}", [str(arg) for arg in service["command"]]


def _backend_commands():
    from serving.backends import tfserving_args
    # The binary and the Docker backend both take these (serving/backends.py).
    yield "backends binary", tfserving_args("/tmp/models.config", 18500, 18501,
                                            extra=("--rest_api_num_threads=4",))
    yield "backends docker", tfserving_args("/models/models.config")


def _shell_commands(text: str, program: str):
    """Command lines in shell text (Makefile recipes, Markdown code blocks) that run
    `program`, continuation lines joined; make variables and $VARS stand in as words."""
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in re.split(r"[\n;&]", joined):
        line = line.split("#")[0]
        if program not in line:
            continue
        line = re.sub(r"\$\(abspath \$\(\w+\)\)|\$\(\w+\)|\$\{?\w+\}?", "X", line)
        words, tail = shlex.split(line), program.split()
        for i in range(len(words) - len(tail) + 1):
            # Only as the command itself: after a prompt, variables or the interpreter
            # (prose that names the program is not a command line).
            prefix_ok = all(re.fullmatch(r"\$|sudo|\w+=\S*|X|\S*python3?", w)
                            for w in words[:i])
            if prefix_ok and words[i].endswith(tail[0]) and \
                    words[i + 1:i + len(tail)] == tail[1:]:
                yield words[i + len(tail):]
                break


def _doc_commands():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
            for argv in _shell_commands(block, "tensorflow_model_server"):
                yield f"{path.name}: tensorflow_model_server", argv, None
            for argv in _shell_commands(block, "-m tfserving_dev"):
                yield f"{path.name}: python -m tfserving_dev", argv, DEV_FLAGS


def _makefile_commands():
    for argv in _shell_commands((ROOT / "Makefile").read_text(), "-m tfserving_dev"):
        yield "Makefile serve", argv, DEV_FLAGS


def _all_commands():
    yield from ((name, argv, None) for name, argv in _compose_commands())
    yield from ((name, argv, None) for name, argv in _backend_commands())
    yield from _makefile_commands()
    yield from _doc_commands()


def test_every_generated_command_line_passes_main_cc_and_server_cc():
    seen = []
    for name, argv, extra in _all_commands():
        try:
            flags.validate(argv, extra)
        except flags.FlagError as err:
            pytest.fail(f"{name}: {' '.join(argv)}\n  -> {err}")
        seen.append(name)
    # The places that must have been found (a regex that finds nothing proves nothing).
    for expected in ("compose tfserving", "compose tfserving-batching", "compose tfserving-gpu",
                     "backends binary", "backends docker", "Makefile serve"):
        assert expected in seen, (expected, seen)
    assert any(name.startswith("serving.md") for name in seen), seen


def test_labels_flag_wherever_labels_name_versions_not_exported_yet():
    """models.config labels versions 1 and 2, so every command line using a models.config
    allows labels on versions that are not loaded yet (server_core.cc
    UpdateModelVersionLabelMap fails the config otherwise)."""
    for name, argv, extra in _all_commands():
        command = flags.parse(argv, extra)
        if command.values["model_config_file"]:
            assert command.values["allow_version_labels_for_unavailable_models"], name

"""tensorflow_model_server's command line: its flags and the rules it starts by.

Transcribed from tensorflow/serving (model_servers/main.cc for the flag names and types,
server.h for the defaults, server.cc Server::BuildAndStart for the combinations it
refuses). Used by the development server's command line, so that it takes exactly what the
real binary takes, and by the tests, which check every command line this project writes
(compose, backends, Makefile, docs) against the same rules.

TensorFlow's flag parser (tensorflow/core/util/command_line_flags.cc) takes only
`--name=value` (a bool also as a bare `--name`); `--name value` leaves both words unparsed,
main.cc then prints "unknown argument" and the server starts without that setting, which
for --model_base_path means it does not start at all.
"""
from __future__ import annotations

import dataclasses

# name -> type, in main.cc's order. "int" covers int32 and int64.
FLAGS: dict[str, type] = {
    "port": int, "grpc_socket_path": str, "rest_api_port": int, "rest_api_num_threads": int,
    "rest_api_timeout_in_ms": int, "rest_api_enable_cors_support": bool,
    "enable_batching": bool, "allow_version_labels_for_unavailable_models": bool,
    "batching_parameters_file": str, "enable_per_model_batching_parameters": bool,
    "model_config_file": str, "model_config_file_poll_wait_seconds": int,
    "model_name": str, "model_base_path": str, "num_load_threads": int,
    "num_unload_threads": int, "max_num_load_retries": int,
    "load_retry_interval_micros": int, "file_system_poll_wait_seconds": int,
    "flush_filesystem_caches": bool, "tensorflow_session_parallelism": int,
    "tensorflow_session_config_file": str, "tensorflow_intra_op_parallelism": int,
    "tensorflow_inter_op_parallelism": int, "use_alts_credentials": bool,
    "ssl_config_file": str, "platform_config_file": str,
    "per_process_gpu_memory_fraction": float, "saved_model_tags": str,
    "grpc_channel_arguments": str, "grpc_max_threads": int, "enable_model_warmup": bool,
    "num_request_iterations_for_warmup": int, "version": bool,
    "monitoring_config_file": str, "remove_unused_fields_from_bundle_metagraph": bool,
    "prefer_tflite_model": bool, "num_tflite_pools": int,
    "num_tflite_interpreters_per_pool": int, "enable_signature_method_name_check": bool,
    "xla_cpu_compilation_enabled": bool, "xla_gpu_compilation_enabled": bool,
    "enable_profiler": bool, "thread_pool_factory_config_file": str,
    "mixed_precision": str, "skip_initialize_tpu": bool,
    "enable_grpc_healthcheck_service": bool, "enable_serialization_as_tensor_content": bool,
}

# Defaults that the rules below and the development server depend on (server.h Options).
DEFAULTS = {
    "port": 8500, "rest_api_port": 0, "model_name": "default", "model_base_path": "",
    "model_config_file": "", "model_config_file_poll_wait_seconds": 0,
    "file_system_poll_wait_seconds": 1, "max_num_load_retries": 5,
    "load_retry_interval_micros": 60 * 1000 * 1000, "enable_batching": False,
    "batching_parameters_file": "", "allow_version_labels_for_unavailable_models": False,
    "ssl_config_file": "", "use_alts_credentials": False, "grpc_socket_path": "",
    "tensorflow_session_parallelism": 0, "tensorflow_intra_op_parallelism": 0,
    "tensorflow_inter_op_parallelism": 0, "enable_model_warmup": True,
}


class FlagError(ValueError):
    """A command line tensorflow_model_server would not start with as meant."""


@dataclasses.dataclass
class CommandLine:
    values: dict            # every flag, defaults filled in
    given: set              # the flags the command line set


def _parse_value(name: str, kind: type, text: str | None):
    if kind is bool:
        # command_line_flags.cc: a bare --name, or =true / =false; nothing else.
        if text is None or text == "true":
            return True
        if text == "false":
            return False
        raise FlagError(f"--{name}: a bool flag takes =true or =false, not ={text}")
    if text is None:
        raise FlagError(f"unknown argument: --{name} (TF's flag parser takes a value only "
                        f"as --{name}=VALUE, never from the next word)")
    try:
        return kind(text)
    except ValueError:
        raise FlagError(f"--{name}={text}: not a valid {kind.__name__}") from None


def parse(argv: list[str], extra: dict[str, type] | None = None) -> CommandLine:
    """Parse like tensorflow::Flags::Parse; anything it would leave unparsed is an error
    (main.cc: "unknown argument"). `extra`: flags of the development server only."""
    known = {**FLAGS, **(extra or {})}
    values = {name: DEFAULTS.get(name, _zero(kind)) for name, kind in known.items()}
    given = set()
    for arg in argv:
        if not arg.startswith("--"):
            raise FlagError(f"unknown argument: {arg} (tensorflow_model_server takes only "
                            f"--name=value flags)")
        name, eq, text = arg[2:].partition("=")
        if name not in known:
            raise FlagError(f"unknown argument: {arg} (no flag --{name} in "
                            f"tensorflow_model_server's main.cc)")
        values[name] = _parse_value(name, known[name], text if eq else None)
        given.add(name)
    return CommandLine(values, given)


def _zero(kind: type):
    return {bool: False, int: 0, float: 0.0, str: ""}[kind]


def check(command: CommandLine) -> None:
    """server.cc BuildAndStart's refusals (and main.cc's port rule), as FlagError."""
    v = command.values
    if v["port"] == 0 and not v["grpc_socket_path"]:
        raise FlagError("At least one of server_options.grpc_port or "
                        "server_options.grpc_socket_path must be set.")
    if v["use_alts_credentials"] and v["ssl_config_file"]:
        raise FlagError("Either use_alts_credentials must be false or ssl_config_file must "
                        "be empty.")
    if not v["model_base_path"] and not v["model_config_file"]:
        raise FlagError("Both server_options.model_base_path and "
                        "server_options.model_config_file are empty!")
    if not v["enable_batching"] and v["batching_parameters_file"]:
        raise FlagError("server_options.batching_parameters_file is set without setting "
                        "server_options.enable_batching to true.")
    if (v["tensorflow_intra_op_parallelism"] > 0 and v["tensorflow_inter_op_parallelism"] > 0
            and v["tensorflow_session_parallelism"] > 0):
        raise FlagError("Either configure server_options.tensorflow_session_parallelism or "
                        "(server_options.tensorflow_intra_op_parallelism, "
                        "server_options.tensorflow_inter_op_parallelism) separately. "
                        "You cannot configure all.")
    if v["rest_api_port"] and v["rest_api_port"] == v["port"]:
        # server.cc logs this and starts without REST: for us a configuration error.
        raise FlagError("server_options.http_port cannot be same as grpc_port. Please use a "
                        "different port for HTTP/REST API.")


def validate(argv: list[str], extra: dict[str, type] | None = None) -> CommandLine:
    command = parse(argv, extra)
    check(command)
    return command

"""python -m tfserving_dev: the development server's command line, with
tensorflow_model_server's flags (`--name=value` only, see tfserving_dev/flags.py).

    python -m tfserving_dev --port=8500 --rest_api_port=8501 \\
        --model_name=fcn8s --model_base_path=$PWD/models/fcn8s
    python -m tfserving_dev --port=8500 --model_config_file=serving/models.config \\
        --allow_version_labels_for_unavailable_models=true

Implemented: port, rest_api_port, model_name, model_base_path, model_config_file,
model_config_file_poll_wait_seconds, file_system_poll_wait_seconds, max_num_load_retries,
load_retry_interval_micros, allow_version_labels_for_unavailable_models, ssl_config_file.
Every other flag of the real binary is accepted, checked by its rules, and ignored with a
warning. One flag is the development server's own: --bind_address (default 127.0.0.1).

Unlike the real binary, it refuses a --model_base_path that does not exist (one line and
exit status 2) instead of polling for it.
"""
from __future__ import annotations

import sys

from common import cli

if __name__ == "__main__":
    cli.quiet_tensorflow()  # before anything below loads TensorFlow

import logging
import pathlib
import signal
import threading

from tfserving_dev import flags
from tfserving_dev.server import start_dev_server

log = logging.getLogger("tfserving_dev")

IMPLEMENTED = {"port", "rest_api_port", "model_name", "model_base_path", "model_config_file",
               "model_config_file_poll_wait_seconds", "file_system_poll_wait_seconds",
               "max_num_load_retries", "load_retry_interval_micros",
               "allow_version_labels_for_unavailable_models", "ssl_config_file"}
DEV_FLAGS = {"bind_address": str}


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        command = flags.validate(argv, DEV_FLAGS)
    except flags.FlagError as err:  # "--flag=value: why", or a sentence of server.cc
        what, sep, why = str(err).partition(": ")
        raise cli.UserError(what, why) if sep else cli.UserError("tfserving_dev", str(err))
    v = command.values
    if v["model_base_path"] and not pathlib.Path(v["model_base_path"]).is_dir():
        raise cli.UserError(v["model_base_path"], "no such model folder (--model_base_path)")
    ignored = sorted(command.given - IMPLEMENTED - set(DEV_FLAGS))
    if ignored:
        log.warning("accepted but not implemented by the development server: %s",
                    " ".join(f"--{n}" for n in ignored))
    # TF's own logger repeats deprecation notes about the TF1 loader, which is used on
    # purpose (it is how TF Serving loads); keep the log to what this server says.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        server = start_dev_server(
            v["model_base_path"] or None, v["model_name"], v["port"],
            model_config_file=v["model_config_file"] or None,
            rest_api_port=v["rest_api_port"] or None, host=v["bind_address"] or "127.0.0.1",
            poll_interval=v["file_system_poll_wait_seconds"],
            config_poll_interval=v["model_config_file_poll_wait_seconds"],
            max_load_retries=v["max_num_load_retries"],
            load_retry_interval=v["load_retry_interval_micros"] / 1e6,
            allow_version_labels_for_unavailable_models=v[
                "allow_version_labels_for_unavailable_models"],
            ssl_config_file=v["ssl_config_file"] or None)
    except Exception as err:  # noqa: BLE001 - a start failure (a port in use, a bad config)
        # TF Serving's own words (main.cc), in the one-line form of every fcnseg command
        raise cli.UserError("tfserving_dev", f"Failed to start server. Error: {err}") from None
    log.info("gRPC on %s%s (tfserving_dev: for development and tests, not production)",
             server.address, f", REST on {server.rest_address}" if server.rest_address else "")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""One behaviour for every fcnseg command: what a user can fix is one line on stderr and exit
status 2 (never a traceback), and TensorFlow's C++ start-up log stays quiet unless asked for.

    def main(argv=None) -> int:
        return cli.run(_main, argv)

where `_main` raises `UserError(what, why)` for a problem the user can fix. Bugs still raise.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable, Optional, Sequence

USAGE_ERROR = 2  # argparse's status for a bad command line; ours for every user error


class UserError(Exception):
    """A problem the user can fix (a missing file, nothing listening, a bad flag value)."""

    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")
        self.what = str(what)
        self.why = str(why)


def quiet_tensorflow(argv: Optional[Sequence[str]] = None) -> None:
    """Load TensorFlow without its C++ start-up log (CUDA stubs, cpu_feature_guard, oneDNN
    notes, a failed cuInit on a machine without a GPU), for a command run from a shell.

    TensorFlow 2.21 writes those lines through absl before its logging is initialised, so
    TF_CPP_MIN_LOG_LEVEL does not hide them: the import and the device probe run with file
    descriptor 2 sent to a temporary file, which is replayed if the import fails. A
    TF_CPP_MIN_LOG_LEVEL set by the user, or `--verbose` on the command line, leaves the log
    as it is. Call it before anything imports TensorFlow.
    """
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" in argv or "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # what absl does honour once it is initialised
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()  # the GPU probe logs here, not at import
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def fail(what, why) -> int:
    print(f"error: {what}: {why}", file=sys.stderr)
    return USAGE_ERROR


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]],
        argv: Optional[Sequence[str]] = None) -> int:
    """Call `main(argv)`; a UserError (a bad flag included, with ArgumentParser) or a missing
    or unreadable file becomes one line and exit status 2."""
    try:
        status = main(argv)
    except SystemExit as exc:  # --help: argparse's own exit, returned as the int it is
        if isinstance(exc.code, str):  # a message, as Python prints it for sys.exit("...")
            print(exc.code, file=sys.stderr)
            return 1
        return 0 if exc.code is None else int(exc.code)
    except UserError as exc:
        return fail(exc.what, exc.why)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if exc.filename is not None:
            return fail(exc.filename, (exc.strerror or str(exc)).lower())
        # Raised with one message, "<path>: <why>" by this project's convention.
        what, sep, why = str(exc).partition(": ")
        return fail(what, why) if sep else fail(type(exc).__name__, str(exc))
    return 0 if status is None else int(status)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose command-line errors are the same one line: `error: --flag: why`
    (or `error: <prog>: why` when no flag is to blame) and exit status 2, through `run`;
    the usage stays in --help. Subcommand parsers made by add_subparsers are of this class too.
    Every one takes `--verbose`, which quiet_tensorflow reads from the command line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_argument("--verbose", action="store_true",
                          help="show TensorFlow's start-up log (hidden otherwise)")

    def error(self, message: str):
        what, sep, why = message.partition(": ")
        if sep and what.startswith("argument "):
            raise UserError(what[len("argument "):], why)
        raise UserError(self.prog, message)

"""One behaviour for every fcnseg command: what a user can fix is one line on stderr and exit
status 2 (never a traceback), and TensorFlow's C++ start-up log stays quiet unless asked for.

    def main(argv=None) -> int:
        return cli.run(_main, argv)

where `_main` raises `UserError(what, why)` for a problem the user can fix. Bugs still raise.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

USAGE_ERROR = 2  # argparse's status for a bad command line; ours for every user error


class UserError(Exception):
    """A problem the user can fix (a missing file, nothing listening, a bad flag value)."""

    def __init__(self, what, why):
        super().__init__(f"{what}: {why}")
        self.what = str(what)
        self.why = str(why)


def quiet_tensorflow(argv: Optional[Sequence[str]] = None) -> None:
    """Hide TensorFlow's C++ INFO/WARNING start-up lines (CUDA stubs, cpu_feature_guard,
    oneDNN notes) for a command run from a shell; errors still show. TensorFlow reads the
    variable once, when it loads, so call this before it is imported. A value the user set,
    or `--verbose` on the command line, leaves the log as it is."""
    argv = sys.argv[1:] if argv is None else argv
    if "--verbose" in argv:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fail(what, why) -> int:
    print(f"error: {what}: {why}", file=sys.stderr)
    return USAGE_ERROR


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]],
        argv: Optional[Sequence[str]] = None) -> int:
    """Call `main(argv)`; a UserError or a missing or unreadable file becomes one line and
    exit status 2."""
    try:
        status = main(argv)
    except UserError as exc:
        return fail(exc.what, exc.why)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        what = exc.filename if exc.filename is not None else type(exc).__name__
        return fail(what, (exc.strerror or str(exc)).lower())
    return 0 if status is None else int(status)

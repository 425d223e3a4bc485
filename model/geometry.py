"""The one parser of an inference geometry given on a command line (no TensorFlow).

`--inference-size H W` (positive multiples of 32: FCN's output stride) or
`--inference-size native` (each image padded to a multiple of 32, no resize).
"""
from __future__ import annotations

from typing import Sequence

from common.cli import UserError
from contract.names import NATIVE, SIZE_MULTIPLE


def parse_size(values: Sequence[str], flag: str = "--inference-size",
               allow_native: bool = True) -> list[int] | str:
    """[H, W] of two positive multiples of 32, or NATIVE; UserError naming `flag` otherwise."""
    values = [str(v) for v in values]
    if allow_native and values == [NATIVE]:
        return NATIVE
    if len(values) == 2 and all(v.isdigit() and int(v) > 0 and int(v) % SIZE_MULTIPLE == 0
                                for v in values):
        return [int(v) for v in values]
    expected = f"H W (positive multiples of {SIZE_MULTIPLE})" + (
        f" or '{NATIVE}'" if allow_native else "")
    raise UserError(flag, f"takes {expected}, got {' '.join(values) or 'nothing'}")

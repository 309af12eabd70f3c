"""Entry-point helper: the project's own input errors end the program with one clear line, not a traceback."""

from __future__ import annotations

import sys

from model_patches import UnsupportedModelError
from ptuning_v2.checkpoint import CheckpointError
from ptuning_v2.data import DataFormatError
from ptuning_v2.methods import MethodFlagError
from ptuning_v2.quantization import ModelPathError


class UserError(Exception):
    """Base of errors whose message says all the user needs (the trainer's and the converter's own)."""


USER_ERRORS = (DataFormatError, CheckpointError, UnsupportedModelError, ModelPathError, MethodFlagError, UserError)


def run(main) -> None:
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

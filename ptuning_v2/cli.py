"""Entry-point helper: the project's own input errors end the program with one clear line, not a traceback."""

from __future__ import annotations

import sys

from model_patches import UnsupportedModelError
from ptuning_v2.checkpoint import CheckpointError
from ptuning_v2.data import DataFormatError
from ptuning_v2.quantization import ModelPathError

USER_ERRORS = (DataFormatError, CheckpointError, UnsupportedModelError, ModelPathError)


def user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS, plus the trainer's NonFiniteTrainingError and the converter's ConvertError once their modules
    are loaded.

    The trainer module (the HF Trainer) is slow to import and chat/evaluate never need it, and the converter imports
    this module; their errors can only be raised after they were imported, so they are looked up, not imported here.
    """
    trainer = sys.modules.get("ptuning_v2.trainer")
    convert = sys.modules.get("ptuning_v2.convert")
    return (USER_ERRORS + ((trainer.NonFiniteTrainingError,) if trainer is not None else ())
            + ((convert.ConvertError,) if convert is not None else ()))


def run(main) -> None:
    try:
        main()
    except Exception as e:
        if not isinstance(e, user_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None

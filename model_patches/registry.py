"""The patch registry: one ``ModelPatch`` per ``config.model_type``.

A patch answers three questions about a loaded model:
  * ``kv_shape(config)``: the per-layer key/value shape a prefix must have, i.e. each layer's prefix key and
    value are (batch, num_kv_heads, pre_seq_len, head_dim);
  * ``decoder_layers(model)``: the decoder layer modules, in order;
  * ``prepare(model)``: any one-off change the architecture needs before a prefix can be injected
    (for the HF-native decoders: allow gradient checkpointing to keep the read-only prefix cache);
  * ``input_embeddings(model)``: the token embedding table (vocab, hidden) that input-level methods (prompt
    tuning, P-tuning v1) initialise soft prompts from and whose width they emit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


class UnsupportedModelError(ValueError):
    """Raised for a model_type that has no patch; the message lists the supported ones."""


@dataclass(frozen=True)
class KVShape:
    """Shape of the key/value cache of one model: the same for every layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_dim(self) -> int:
        """Width of one layer's key (or value) for one token: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class ModelPatch:
    model_type: str
    kv_shape: Callable[[object], KVShape]
    decoder_layers: Callable[[nn.Module], list[nn.Module]]
    prepare: Callable[[nn.Module], None]
    input_embeddings: Callable[[nn.Module], nn.Module] = lambda model: model.get_input_embeddings()


_REGISTRY: dict[str, ModelPatch] = {}
# model_types that are never loaded as they are, only after a conversion: model_type -> advice(path or None).
_FOREIGN: dict[str, Callable[[str | None], str]] = {}


def register(patch: ModelPatch) -> ModelPatch:
    _REGISTRY[patch.model_type] = patch
    return patch


def register_foreign(model_type: str, advice: Callable[[str | None], str]) -> None:
    """A checkpoint layout that must be converted before use; ``advice(path)`` says how (path None: unknown)."""
    _FOREIGN[model_type] = advice


def refuse_foreign_checkpoint(path: str) -> None:
    """Raise UnsupportedModelError with the conversion advice if ``path`` is a local model directory whose
    config.json names a foreign model_type; anything else (no directory, no or unreadable config) passes."""
    import json
    import os

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return
    try:
        with open(config_path, encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # left to transformers, which names the problem itself
    if model_type in _FOREIGN:
        raise UnsupportedModelError(_FOREIGN[model_type](path))


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_patch(config_or_type) -> ModelPatch:
    """The patch for a config (or a model_type string); a clear error for anything unsupported."""
    model_type = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    if model_type in _FOREIGN:
        path = None if isinstance(config_or_type, str) else getattr(config_or_type, "_name_or_path", None) or None
        raise UnsupportedModelError(_FOREIGN[model_type](path))
    try:
        return _REGISTRY[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported for P-tuning v2; supported model types: "
            f"{', '.join(supported_model_types())}"
        ) from None

"""Architecture-specific knowledge, keyed by ``config.model_type``.

Everything the rest of the project needs to know about an architecture lives here: how many decoder layers
it has, how many key/value heads each attention layer keeps (multi-head, grouped-query or multi-query),
their head dimension, and where the decoder layers are so gradient checkpointing can be told the prefix
cache is read-only. Patches change a loaded model object; they never edit files on disk.

    >>> patch = get_patch(model.config)       # raises UnsupportedModelError listing what is supported
    >>> patch.kv_shape(model.config)         # KVShape(num_layers=28, num_kv_heads=2, head_dim=128)

Foreign checkpoint layouts (THUDM's remote-code ``chatglm``) are not patched but converted once to a native
architecture (``model_patches.chatglm``, ``python -m ptuning_v2.convert``); loading one unconverted is refused
with the exact convert command.
"""

from model_patches.registry import (
    KVShape,
    ModelPatch,
    UnsupportedModelError,
    get_patch,
    refuse_foreign_checkpoint,
    register,
    supported_model_types,
)
from model_patches import hf_decoders  # noqa: F401  (registers glm, glm4, llama, qwen2)
from model_patches import chatglm  # noqa: F401  (chatglm: refused with the command that converts it to glm)

__all__ = [
    "KVShape",
    "ModelPatch",
    "UnsupportedModelError",
    "get_patch",
    "refuse_foreign_checkpoint",
    "register",
    "supported_model_types",
]

"""Patches for the decoder-only architectures transformers ships natively: glm, glm4, llama, qwen2.

ChatGLM's lineage in transformers is ``glm`` (GLM-4 / ChatGLM-style, partial rotary, GQA with 2 KV groups in
the 6B/9B models) and ``glm4`` (adds post-attention/post-MLP norms). Llama and Qwen2 share the layout.
They all keep decoder layers in ``model.model.layers`` and read per-layer caches through the ``Cache`` API,
so the same readers serve them; only where each config keeps ``head_dim`` differs (Qwen2 derives it).
"""

from __future__ import annotations

import torch.nn as nn

from model_patches.registry import KVShape, ModelPatch, register


def _kv_shape(config) -> KVShape:
    num_heads = config.num_attention_heads
    # Configs without num_key_value_heads are plain multi-head attention: one KV head per query head.
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    return KVShape(num_layers=config.num_hidden_layers, num_kv_heads=num_kv_heads, head_dim=head_dim)


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    # CausalLM wrappers keep the decoder in `.model`; a bare decoder model has `.layers` itself.
    decoder = getattr(model, "model", model)
    return list(decoder.layers)


def _allow_checkpointing_with_read_only_cache(model: nn.Module) -> None:
    # transformers drops past_key_values inside a checkpointed layer unless the layer says it only reads the
    # cache. Our prefix cache is read-only (update() returns prefix+new without storing), so recomputing a
    # layer in the backward pass sees exactly the same keys/values as the forward pass did.
    for layer in _decoder_layers(model):
        layer._can_checkpoint_with_cache = True


for _model_type in ("glm", "glm4", "llama", "qwen2"):
    register(
        ModelPatch(
            model_type=_model_type,
            kv_shape=_kv_shape,
            decoder_layers=_decoder_layers,
            prepare=_allow_checkpointing_with_read_only_cache,
        )
    )

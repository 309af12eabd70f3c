"""Input-level soft prompts as a prefix: run P prompt embeddings through the frozen base, keep their keys/values.

A soft prompt of P vectors in front of the input (prompt tuning, P-tuning v1) is attended to by every real token
and attends to nothing after it (causal attention). So its per-layer keys/values depend on the prompt alone, and
computing them once with a P-token forward, then handing them to the base as a prefix, is exactly the same model as
concatenating the embeddings to the input, with the gradient reaching the prompt through that P-token forward.
Everything built for deep prefixes (generation, scoring, gradient checkpointing, int8/int4, DeepSpeed) is reused.

Shapes: ``embeddings`` (P, hidden) fp32 -> a list of N pairs (key, value), each (B, num_kv_heads, P, head_dim)
in the base's compute dtype; the batch dimension is an expanded view (one P-token forward per step, not per
example). The prompt sits at positions -P .. -1 and real tokens start at 0, as with ``--prefix_init_text``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from model_patches import get_patch


@dataclass(frozen=True)
class InputPromptConfig:
    """What every input-level method records: the prompt length and width, and the base's key/value shape (so a
    checkpoint is checked against the base it is loaded onto). Methods subclass it with their own fields."""

    pre_seq_len: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int     # width of one prompt vector: the base's embedding width

    def __post_init__(self):
        from ptuning_v2.methods import MethodFlagError

        for name in ("pre_seq_len", "num_layers", "num_kv_heads", "head_dim", "hidden_size"):
            if getattr(self, name) <= 0:
                raise MethodFlagError(f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def shape_of(base_config, pre_seq_len: int) -> dict:
        """The InputPromptConfig fields for a base model's config."""
        shape = get_patch(base_config).kv_shape(base_config)
        return dict(pre_seq_len=pre_seq_len, num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                    head_dim=shape.head_dim, hidden_size=base_config.hidden_size)


@contextmanager
def checkpointing_paused(base: nn.Module):
    """Gradient checkpointing off for the P-token forward: that forward *writes* a cache, which a checkpointed
    layer would write twice (forward, then the backward replay). Its activations are P tokens of batch 1."""
    paused = [m for m in base.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for module in paused:
        module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module in paused:
            module.gradient_checkpointing = True


def input_prompt_kv(base: nn.Module, embeddings: torch.Tensor, batch_size: int):
    """Per-layer (key, value), each (B, H, P, D): the base's keys/values of ``embeddings`` (P, hidden) as inputs."""
    table = get_patch(base.config).input_embeddings(base)
    length = embeddings.shape[0]
    inputs = embeddings.to(table.weight.dtype).unsqueeze(0)                       # (1, P, hidden)
    positions = torch.arange(-length, 0, device=inputs.device).unsqueeze(0)
    with checkpointing_paused(base):
        out = base(inputs_embeds=inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
    return [(layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1))
            for layer in out.past_key_values.layers]


def embedding_table(base: nn.Module) -> torch.Tensor:
    """The base's token embedding weights (vocab, hidden), as an fp32 copy (asked of the model patch). Under
    DeepSpeed ZeRO-3 each process holds a slice of the table: it is gathered for the copy."""
    weight = get_patch(base.config).input_embeddings(base).weight
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            return weight.detach().float().clone()
    return weight.detach().float().clone()


def vocab_token_ids(tokenizer, length: int, seed: int, vocab_rows: int) -> list[int]:
    """``length`` distinct ordinary token ids drawn with ``seed`` (special tokens left out, and ids past the
    embedding table's ``vocab_rows``): prompt tuning's initialisation "from sampled vocabulary"."""
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(min(len(tokenizer), vocab_rows)) if i not in special]
    if len(pool) < length:
        raise ValueError(f"the vocabulary has {len(pool)} ordinary tokens, fewer than pre_seq_len {length}")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(pool), generator=generator)[:length].tolist()
    return [pool[i] for i in picks]

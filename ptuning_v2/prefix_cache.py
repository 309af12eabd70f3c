"""Turning per-layer prefix key/values into a transformers ``Cache`` the base model reads.

Shapes: ``prefix_kv`` is a list with one (key, value) pair per decoder layer, each
(batch, num_kv_heads, pre_seq_len, head_dim), already in the base model's compute dtype.

Two caches, one per use:
  * ``read_only_prefix_cache``: for training and scoring. Each layer's ``update(k, v)`` returns
    (prefix ++ k, prefix ++ v) *without storing*, so a gradient-checkpointed layer that is recomputed in the
    backward pass sees the same keys as in the forward pass, and the autograd graph reaches the prefix.
  * ``generation_prefix_cache``: for ``generate()``. An ordinary ``DynamicCache`` pre-filled with the prefix;
    it grows with every generated token as usual.

Both report a past length of pre_seq_len, so masks cover pre_seq_len + seq_len keys. Positions are not
taken from the cache: the prefix model numbers real tokens from 0 itself (the prefix has no position).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


class ReadOnlyPrefixLayer(DynamicLayer):
    """One layer's prefix: attended to by every query, never written to."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    def crop(self, tokens_to_remove: int) -> None:
        raise RuntimeError("a read-only prefix cache cannot be cropped")


def read_only_prefix_cache(prefix_kv: PrefixKV) -> Cache:
    return Cache(layers=[ReadOnlyPrefixLayer(k, v) for k, v in prefix_kv])


def generation_prefix_cache(prefix_kv: PrefixKV) -> DynamicCache:
    # The expanded (stride-0 batch) views from the encoder are copied so the cache owns contiguous storage.
    return DynamicCache(ddp_cache_data=[(k.contiguous(), v.contiguous()) for k, v in prefix_kv])

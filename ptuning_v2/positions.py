"""Positions and masks for a prefixed batch.

Shapes: ``attention_mask`` (B, L) with 1 for real tokens and 0 for padding, on either side.
  * ``real_token_positions`` -> (B, L): real tokens numbered 0, 1, 2, ... in order; padding gets 0
    (it is masked out, so its value only has to be a valid index).
  * ``with_prefix_mask`` -> (B, P + L): the prefix is always visible, then the token mask.
Training, scoring and ``generate()`` all use these, so a token has the same position in each.
"""

from __future__ import annotations

import torch


def real_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def with_prefix_mask(attention_mask: torch.Tensor, pre_seq_len: int) -> torch.Tensor:
    prefix = attention_mask.new_ones(attention_mask.shape[0], pre_seq_len)
    return torch.cat([prefix, attention_mask], dim=-1)

"""Prompt tuning (Lester et al., 2021): P trainable input embeddings in front of every input, nothing deeper.

Shapes: ``embedding.weight`` (P, hidden) fp32 is the soft prompt itself; ``prefix_kv(base, B)`` runs it through
the frozen base (methods/input_prompt.py) and returns N pairs (key, value), each (B, num_kv_heads, P, head_dim).

Initialisation (``--prompt_init``): ``random`` (normal, with the standard deviation of the base's own embedding
table, so the prompt has the scale of real tokens), ``vocab`` (the embeddings of P distinct tokens sampled from
the vocabulary with the run's seed) or ``text`` (the embeddings of ``--prompt_init_text``, repeated or cut to P
tokens: before training the model equals the base with that text in front of the input).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ptuning_v2.methods import MethodFlagError

from ptuning_v2.methods.input_prompt import InputPromptConfig, embedding_table, input_prompt_kv, vocab_token_ids
from ptuning_v2.prefix_init import prefix_token_ids

PROMPT_INITS = ("random", "vocab", "text")


@dataclass(frozen=True)
class SoftPromptConfig(InputPromptConfig):
    prompt_init: str = "random"

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_init not in PROMPT_INITS:
            raise MethodFlagError(f"--prompt_init must be one of {', '.join(PROMPT_INITS)}, got {self.prompt_init!r}")


class SoftPrompt(nn.Module):
    def __init__(self, config: SoftPromptConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.pre_seq_len, config.hidden_size)

    def prompt_embeddings(self) -> torch.Tensor:
        """(P, hidden) fp32."""
        return self.embedding.weight

    def prefix_kv(self, base: nn.Module, batch_size: int):
        return input_prompt_kv(base, self.prompt_embeddings(), batch_size)


def config_from_args(base_config, prefix_args) -> SoftPromptConfig:
    return SoftPromptConfig(**InputPromptConfig.shape_of(base_config, prefix_args.pre_seq_len),
                            prompt_init=prefix_args.prompt_init)


@torch.no_grad()
def initialize(model, tokenizer, prefix_args, seed: int) -> str | None:
    """Set the soft prompt as --prompt_init says; returns a line describing it."""
    encoder: SoftPrompt = model.prefix_encoder
    table = embedding_table(model.base)                                               # (vocab, hidden)
    length = encoder.config.pre_seq_len
    how = prefix_args.prompt_init
    if how == "text" and not prefix_args.prompt_init_text:
        raise MethodFlagError("--prompt_init text needs --prompt_init_text (e.g. the task's instruction)")
    if how != "text" and prefix_args.prompt_init_text:
        raise MethodFlagError("--prompt_init_text is used only with --prompt_init text")
    if how == "random":
        std = table.std().item()
        encoder.embedding.weight.normal_(0.0, std)
        return f"soft prompt initialized at random (std {std:.3g}, the embedding table's)"
    if how == "vocab":
        ids = vocab_token_ids(tokenizer, length, seed, table.shape[0])
    else:
        ids = prefix_token_ids(tokenizer, prefix_args.prompt_init_text, length)
    encoder.embedding.weight.copy_(table[torch.tensor(ids)])
    return f"soft prompt initialized from the embeddings of {len(ids)} tokens: {tokenizer.decode(ids)!r}"

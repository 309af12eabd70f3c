"""P-tuning v1 (Liu et al., 2021, "GPT Understands, Too"): pseudo tokens through a prompt encoder, at the input.

Shapes (P = pre_seq_len, E = hidden = the base's embedding width, M = --prompt_encoder_hidden_size):
  * ``embedding.weight`` (P, E): one trainable vector per pseudo token;
  * ``lstm`` (encoder type ``lstm``, the paper's): a 2-layer bidirectional LSTM, E/2 per direction, so its output
    (1, P, E) lets every pseudo token depend on all the others; then
  * ``mlp``: Linear(E, M) -> ReLU -> Linear(M, E), giving the prompt embeddings (P, E) fed to the base at the input
    (methods/input_prompt.py), which returns N pairs (key, value), each (B, num_kv_heads, P, head_dim).
With encoder type ``mlp`` the LSTM is left out. The paper's optional anchor words (real prompt tokens kept between
the pseudo tokens) are expressed here through the prompt template and ``--source_prefix``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ptuning_v2.methods import MethodFlagError

from ptuning_v2.methods.input_prompt import InputPromptConfig, embedding_table, input_prompt_kv

ENCODER_TYPES = ("lstm", "mlp")


@dataclass(frozen=True)
class PromptEncoderConfig(InputPromptConfig):
    encoder_type: str = "lstm"
    encoder_hidden_size: int = 0   # M: the MLP's hidden width (0: E, the hidden size)

    def __post_init__(self):
        super().__post_init__()
        if self.encoder_type not in ENCODER_TYPES:
            raise MethodFlagError(f"--prompt_encoder_type must be one of {', '.join(ENCODER_TYPES)}, "
                                  f"got {self.encoder_type!r}")
        if self.encoder_type == "lstm" and self.hidden_size % 2:
            raise MethodFlagError(f"the LSTM prompt encoder needs an even hidden size, got {self.hidden_size}")


class PromptEncoder(nn.Module):
    def __init__(self, config: PromptEncoderConfig):
        super().__init__()
        self.config = config
        width, hidden = config.hidden_size, config.encoder_hidden_size or config.hidden_size
        self.embedding = nn.Embedding(config.pre_seq_len, width)
        self.lstm = (nn.LSTM(width, width // 2, num_layers=2, bidirectional=True, batch_first=True)
                     if config.encoder_type == "lstm" else None)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def prompt_embeddings(self) -> torch.Tensor:
        """(P, E) fp32: the encoded pseudo tokens."""
        x = self.embedding.weight.unsqueeze(0)                                 # (1, P, E)
        if self.lstm is not None:
            x = self.lstm(x)[0]                                                # (1, P, E): both directions
        return self.mlp(x)[0]

    def prefix_kv(self, base: nn.Module, batch_size: int):
        return input_prompt_kv(base, self.prompt_embeddings(), batch_size)


def config_from_args(base_config, prefix_args) -> PromptEncoderConfig:
    return PromptEncoderConfig(**InputPromptConfig.shape_of(base_config, prefix_args.pre_seq_len),
                               encoder_type=prefix_args.prompt_encoder_type,
                               encoder_hidden_size=prefix_args.prompt_encoder_hidden_size or 0)


@torch.no_grad()
def initialize(model, tokenizer, prefix_args, seed: int) -> str | None:
    """The pseudo-token embeddings start at the scale of the base's own embeddings (the rest: PyTorch defaults)."""
    std = embedding_table(model.base).std().item()
    model.prefix_encoder.embedding.weight.normal_(0.0, std)
    return f"pseudo-token embeddings initialized at random (std {std:.3g}, the embedding table's)"

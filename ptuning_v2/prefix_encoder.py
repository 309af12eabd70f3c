"""PrefixEncoder: virtual-token ids -> per-layer key/value prefixes.

Shapes (B = batch, P = pre_seq_len, N = num_layers, H = num_kv_heads, D = head_dim, E = embed width):
  * without projection: Embedding(P, N*2*H*D); the prefix *is* the embedding table.
  * with projection:    Embedding(P, E) -> Linear(E, hidden) -> Tanh -> Linear(hidden, N*2*H*D),
    the MLP reparameterization of prefix-tuning (E and hidden default to the model's hidden size).
  * forward(batch_size) -> list of N pairs (key, value), each (B, H, P, D), after dropout.

The encoder is kept in fp32 whatever the base dtype; the prefix model casts its output once, where it enters
the base model. Using H KV heads (not the query heads) is what makes grouped- and multi-query attention work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class PrefixEncoderConfig:
    pre_seq_len: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    prefix_projection: bool = False
    embed_dim: int = 0            # width of the virtual-token embedding when projecting (0: unused)
    prefix_hidden_size: int = 0   # hidden width of the projection MLP (0: unused)
    prefix_dropout: float = 0.0

    def __post_init__(self):
        for name in ("pre_seq_len", "num_layers", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PrefixEncoderConfig.{name} must be positive, got {getattr(self, name)}")
        if self.prefix_projection and (self.embed_dim <= 0 or self.prefix_hidden_size <= 0):
            raise ValueError("prefix_projection needs positive embed_dim and prefix_hidden_size")

    @property
    def kv_width(self) -> int:
        """Per-token width of all layers' keys and values: num_layers * 2 (key, value) * H * D."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)


class PrefixEncoder(nn.Module):
    def __init__(self, config: PrefixEncoderConfig):
        super().__init__()
        self.config = config
        if config.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, config.embed_dim)
            self.trans = nn.Sequential(
                nn.Linear(config.embed_dim, config.prefix_hidden_size),
                nn.Tanh(),
                nn.Linear(config.prefix_hidden_size, config.kv_width),
            )
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, config.kv_width)
            self.trans = None
        self.dropout = nn.Dropout(config.prefix_dropout)
        self.register_buffer("prefix_ids", torch.arange(config.pre_seq_len), persistent=False)

    def flat_prefix(self) -> torch.Tensor:
        """(P, N*2*H*D): every layer's key and value for each virtual token, before dropout."""
        hidden = self.embedding(self.prefix_ids)
        return self.trans(hidden) if self.trans is not None else hidden

    def forward(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        flat = self.dropout(self.flat_prefix())
        # (P, N*2*H*D) -> (N*2, H, P, D): one row per layer-and-role, heads before positions like the KV cache.
        per_layer = flat.view(cfg.pre_seq_len, cfg.num_layers * 2, cfg.num_kv_heads, cfg.head_dim).permute(1, 2, 0, 3)
        per_layer = per_layer.unsqueeze(1).expand(-1, batch_size, -1, -1, -1)  # (N*2, B, H, P, D), no copy
        return [(per_layer[2 * i], per_layer[2 * i + 1]) for i in range(cfg.num_layers)]

    def prefix_kv(self, base: nn.Module, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The method interface (ptuning_v2/methods): a deep prefix needs nothing from the base."""
        return self(batch_size)

    @torch.no_grad()
    def projected(self) -> "PrefixEncoder":
        """An equivalent encoder without the MLP: its embedding table is this encoder's projected output.

        Inference then skips the MLP; the result is exact (the MLP only depends on the fixed virtual-token ids).
        """
        cfg = self.config
        flat_cfg = PrefixEncoderConfig(
            pre_seq_len=cfg.pre_seq_len,
            num_layers=cfg.num_layers,
            num_kv_heads=cfg.num_kv_heads,
            head_dim=cfg.head_dim,
            prefix_dropout=cfg.prefix_dropout,
        )
        flat = PrefixEncoder(flat_cfg).to(self.embedding.weight.device)
        flat.embedding.weight.copy_(self.flat_prefix().float())
        return flat

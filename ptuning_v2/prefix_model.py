"""PrefixModel: a frozen base causal LM plus a trainable encoder that makes its per-layer key/value prefix.

The encoder is the method's (ptuning_v2/methods: a deep PrefixEncoder for P-tuning v2 and prefix-tuning, an
input-level soft prompt for prompt tuning and P-tuning v1); it is kept as ``prefix_encoder`` whatever the method.

Shapes (B = batch, L = tokens, P = pre_seq_len, V = vocab):
  forward(input_ids (B, L), attention_mask (B, L))
      -> the base model's output: logits (B, L, V).
  forward(..., labels (B, L) with -100 for ignored positions)
      -> loss (mean over labelled tokens, or sum / num_items_in_batch), and logits (B, K, V) for the last K
         positions only, K = L - (first labelled position) + 1: the output layer (vocabulary-wide, ~40% of a
         small model's compute) runs only where a label is predicted. Answers sit at the end of the sequence, so
         with left padding K is about the answer length.
  generate(input_ids (B, L) left-padded, attention_mask (B, L), **generation kwargs)
      -> (B, L + new tokens), as the base model's generate() returns.

The prefix enters every layer as P extra keys/values (see prefix_cache.py). Real tokens are numbered from 0
whatever the padding side, in training and in generation alike (see positions.py).

"Trainable" has one definition, ``is_trainable(name)``: a parameter is trained if and only if it belongs to the
prefix encoder. It decides requires_grad (so the optimizer, which takes parameters requiring grad), what
``trainable_state_dict`` saves, and the parameter count that is printed.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

from model_patches import get_patch
from ptuning_v2.methods import method_of_config
from ptuning_v2.positions import real_token_positions, with_prefix_mask
from ptuning_v2.prefix_cache import PrefixKV, generation_prefix_cache, read_only_prefix_cache
from ptuning_v2.prefix_encoder import PrefixEncoderConfig

logger = logging.getLogger(__name__)

ENCODER_ATTR = "prefix_encoder"


def is_trainable(parameter_name: str) -> bool:
    return parameter_name.startswith(ENCODER_ATTR + ".")


def encoder_config_for(
    base_config,
    pre_seq_len: int,
    prefix_projection: bool = False,
    prefix_hidden_size: int | None = None,
    prefix_dropout: float = 0.0,
) -> PrefixEncoderConfig:
    """The encoder shape a base model needs, read through its model patch."""
    shape = get_patch(base_config).kv_shape(base_config)
    hidden = base_config.hidden_size
    return PrefixEncoderConfig(
        pre_seq_len=pre_seq_len,
        num_layers=shape.num_layers,
        num_kv_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        prefix_projection=prefix_projection,
        embed_dim=hidden if prefix_projection else 0,
        prefix_hidden_size=(prefix_hidden_size or hidden) if prefix_projection else 0,
        prefix_dropout=prefix_dropout,
    )


def parameter_numel(param: torch.Tensor) -> int:
    # DeepSpeed ZeRO-3 partitions parameters (ds_numel is the full size); bitsandbytes packs two 4-bit weights
    # per uint8 element. Count weights, not local elements or bytes.
    numel = getattr(param, "ds_numel", param.numel())
    return numel * 2 if getattr(param, "quant_state", None) is not None else numel


def forward_with_prefix(
    base: nn.Module,
    prefix_kv: PrefixKV,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
):
    """Run ``base`` on ``input_ids`` with ``prefix_kv`` as P keys/values in front of every layer."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = real_token_positions(attention_mask)
    pre_seq_len = prefix_kv[0][0].shape[-2]
    return base(
        input_ids=input_ids,
        attention_mask=with_prefix_mask(attention_mask, pre_seq_len),
        position_ids=position_ids,
        past_key_values=read_only_prefix_cache(prefix_kv),
        use_cache=False,
        **kwargs,
    )


def label_window(labels: torch.Tensor) -> int:
    """K: how many trailing positions' logits predict every label of the batch (L - first labelled index + 1)."""
    labelled = (labels != -100).any(dim=0).nonzero()
    if labelled.numel() == 0:
        return 1
    first = max(int(labelled[0]), 1)  # the token at position 0 has no prediction
    return labels.shape[1] - first + 1


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Next-token cross-entropy. logits (B, K, V) for the last K positions, labels (B, L); -100 is ignored."""
    window = logits.shape[1]
    targets = labels[:, labels.shape[1] - window + 1:]                        # (B, K - 1)
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
    if torch.is_tensor(count):
        count = count.to(loss.device)
    return loss / count


class PrefixModel(nn.Module):
    """Wraps a loaded base model; the base is frozen in place (its weights are never copied or changed)."""

    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, base: nn.Module, encoder_config, base_spec=None, prompt_settings=None):
        super().__init__()
        self.base = base
        self.base_spec = base_spec            # how the base was loaded; recorded in checkpoints
        self.prompt_settings = prompt_settings  # how examples were formatted; recorded in checkpoints
        self.patch = get_patch(base.config)
        self.patch.prepare(base)
        self.method = method_of_config(encoder_config)
        encoder = self.method.encoder_class(encoder_config)
        self.prefix_encoder = encoder.to(device=self._base_device(), dtype=torch.float32)
        for name, param in self.named_parameters():
            param.requires_grad_(is_trainable(name))
        trainable, total = self.count_parameters()
        logger.info(
            "trainable params: %s || all params: %s || trainable%%: %.4f", f"{trainable:,}", f"{total:,}",
            100 * trainable / total,
        )

    # -- what is trained -------------------------------------------------------------------------------------
    def count_parameters(self) -> tuple[int, int]:
        trainable = total = 0
        for name, param in self.named_parameters():
            n = parameter_numel(param)
            total += n
            trainable += n if is_trainable(name) else 0
        return trainable, total

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's own state dict (keys without the 'prefix_encoder.' prefix)."""
        return {name: t for name, t in self.prefix_encoder.state_dict().items()}

    @property
    def config(self):
        return self.base.config

    @property
    def encoder_config(self):
        return self.prefix_encoder.config

    def _base_device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    def compute_dtype(self) -> torch.dtype:
        """The dtype activations have inside the base (the embedding table is never quantized)."""
        return self.base.get_input_embeddings().weight.dtype

    # -- the prefix ------------------------------------------------------------------------------------------
    def prefix_kv(self, batch_size: int) -> PrefixKV:
        """Per-layer (key, value), each (B, H, P, D), cast once from fp32 to the base's compute dtype."""
        dtype = self.compute_dtype()
        return [(k.to(dtype), v.to(dtype)) for k, v in self.prefix_encoder.prefix_kv(self.base, batch_size)]

    def forward(self, input_ids, attention_mask=None, labels=None, position_ids=None, num_items_in_batch=None,
                **kwargs):
        if labels is not None:
            kwargs["logits_to_keep"] = label_window(labels)
        output = forward_with_prefix(
            self.base,
            self.prefix_kv(input_ids.shape[0]),
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **kwargs,
        )
        if labels is not None:
            output.loss = causal_lm_loss(output.logits, labels, num_items_in_batch)
        return output

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **generate_kwargs):
        """Generate with the prefix. Batches must be left-padded (the usual decoder-only convention)."""
        if generate_kwargs.get("num_beams", 1) > 1 or generate_kwargs.get("num_return_sequences", 1) > 1:
            raise ValueError("generation with a prefix supports num_beams=1 and num_return_sequences=1")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if (attention_mask[:, -1] == 0).any():
            raise ValueError("generate() needs left padding: some sequences end with a padding token")
        prefix = self.prefix_kv(input_ids.shape[0])
        return self.base.generate(
            input_ids=input_ids,
            attention_mask=with_prefix_mask(attention_mask, self.encoder_config.pre_seq_len),
            position_ids=real_token_positions(attention_mask),
            past_key_values=generation_prefix_cache(prefix),
            **generate_kwargs,
        )

    # -- training integration --------------------------------------------------------------------------------
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        """Gradient checkpointing that keeps the prefix: non-reentrant, read-only prefix cache (see model_patches)."""
        kwargs = dict(activation_checkpointing_kwargs or {})
        if kwargs.get("use_reentrant", False):
            raise ValueError(
                "use_reentrant=True cannot pass gradients to a prefix captured by the checkpointed layer; "
                "use the default use_reentrant=False"
            )
        kwargs["use_reentrant"] = False
        self.base.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers, offload=offload
        )

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self):
        self.base.activation_checkpointing_disable()

    gradient_checkpointing_disable = activation_checkpointing_disable

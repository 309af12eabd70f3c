"""The registered methods (see ptuning_v2/methods/__init__.py): one ``register`` call each."""

from __future__ import annotations

from ptuning_v2.methods import Method, register
from ptuning_v2.methods import prompt_tuning, ptuning_v1
from ptuning_v2.prefix_encoder import PrefixEncoder, PrefixEncoderConfig


def _deep_prefix_config(base_config, prefix_args) -> PrefixEncoderConfig:
    from ptuning_v2.prefix_model import encoder_config_for

    return encoder_config_for(base_config, prefix_args.pre_seq_len, prefix_args.prefix_projection,
                              prefix_args.prefix_hidden_size, prefix_args.prefix_dropout)


def _deep_prefix_init(model, tokenizer, prefix_args, seed: int) -> str | None:
    if not prefix_args.prefix_init_text:
        return None
    from ptuning_v2.prefix_init import initialize_prefix_from_text

    ids = initialize_prefix_from_text(model, tokenizer, prefix_args.prefix_init_text)
    return f"prefix initialized from the base's keys/values of {len(ids)} tokens: {tokenizer.decode(ids)!r}"


register(Method(
    name="ptuning_v2", config_class=PrefixEncoderConfig, encoder_class=PrefixEncoder,
    config_from_args=_deep_prefix_config, initialize=_deep_prefix_init,
    own_flags=("prefix_projection", "prefix_hidden_size", "prefix_dropout", "prefix_init_text"),
    summary="deep prompts: a key/value prefix at every layer (with --prefix_projection: prefix-tuning's MLP)",
))
register(Method(
    name="prompt_tuning", config_class=prompt_tuning.SoftPromptConfig, encoder_class=prompt_tuning.SoftPrompt,
    config_from_args=prompt_tuning.config_from_args, initialize=prompt_tuning.initialize,
    own_flags=("prompt_init", "prompt_init_text"),
    summary="a soft prompt at the input layer only",
))
register(Method(
    name="ptuning_v1", config_class=ptuning_v1.PromptEncoderConfig, encoder_class=ptuning_v1.PromptEncoder,
    config_from_args=ptuning_v1.config_from_args, initialize=ptuning_v1.initialize,
    own_flags=("prompt_encoder_type", "prompt_encoder_hidden_size"),
    summary="pseudo tokens through an LSTM+MLP (or MLP) prompt encoder, at the input layer",
))

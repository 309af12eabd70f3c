"""THUDM's ChatGLM2-6B / ChatGLM3-6B / glm-4-9b-chat checkpoints (remote code, model_type ``chatglm``) as native ``glm``.

These models are transformers' ``GlmForCausalLM`` after a renaming of weights and a row split of the fused QKV
projection. This module holds that knowledge and nothing else; ``ptuning_v2.convert`` applies it to files.
Nothing is registered for ``chatglm`` in the patch registry: such a directory is refused with the exact convert
command (``convert_command``), because its remote code does not run on transformers 5.

Weights (per layer N; H = heads, G = KV groups, D = kv_channels, F = ffn_hidden_size):
  transformer.embedding.word_embeddings.weight              -> model.embed_tokens.weight
  transformer.encoder.layers.N.input_layernorm.weight       -> model.layers.N.input_layernorm.weight
  ...self_attention.query_key_value.{weight,bias}  rows [Q (H*D) | K (G*D) | V (G*D)], a plain row split
                                                  -> model.layers.N.self_attn.{q,k,v}_proj.{weight,bias}
  ...self_attention.dense.weight                           -> model.layers.N.self_attn.o_proj.weight
  ...post_attention_layernorm.weight                       -> model.layers.N.post_attention_layernorm.weight
  ...mlp.dense_h_to_4h.weight  (2F, hidden) = [gate; up]    -> model.layers.N.mlp.gate_up_proj.weight (kept fused)
  ...mlp.dense_4h_to_h.weight                              -> model.layers.N.mlp.down_proj.weight
  transformer.encoder.final_layernorm.weight                -> model.norm.weight
  transformer.output_layer.weight  (untied)                 -> lm_head.weight
  transformer.rotary_pos_emb.inv_freq                       -> dropped (recomputed from the config)

Each converted tensor depends on one source tensor only, so a checkpoint converts shard by shard.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch

from model_patches.registry import UnsupportedModelError, register_foreign

MODEL_TYPE = "chatglm"
ROPE_BASE = 10000.0
# Flags of ChatGLM's config whose other value would be a different architecture than glm: name -> value glm has.
_FIXED_FLAGS = {"rmsnorm": True, "apply_residual_connection_post_layernorm": False, "post_layer_norm": True,
                "add_bias_linear": False, "original_rope": True}
_LAYER = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_DROPPED = {"transformer.rotary_pos_emb.inv_freq"}


class ChatGLMConversionError(UnsupportedModelError):
    """A ChatGLM directory, config or tensor this conversion cannot represent; the message names it."""


def is_chatglm(config: dict) -> bool:
    return config.get("model_type") == MODEL_TYPE


def default_output_dir(src: str | Path) -> str:
    return str(src).rstrip("/\\") + "-glm"


def convert_command(src: str | Path) -> str:
    """The exact shell command that converts ``src`` (shown when an unconverted directory is given as a base)."""
    src = str(src)
    return f"python -m ptuning_v2.convert {shlex.quote(src)} {shlex.quote(default_output_dir(src))}"


def unconverted_message(src: str | Path | None) -> str:
    if src is None:
        return ("model_type 'chatglm' (THUDM's ChatGLM2/ChatGLM3/GLM-4 remote code) is used through the native glm "
                "architecture after a one-off conversion: run `python -m ptuning_v2.convert CHATGLM_DIR OUTPUT_DIR` "
                "and use OUTPUT_DIR as MODEL= / --model_name_or_path")
    return (f"{src} is a THUDM ChatGLM checkpoint (model_type 'chatglm', remote code), which is used through the "
            f"native glm architecture after a one-off conversion: run `{convert_command(src)}` and use "
            f"{default_output_dir(src)} as MODEL= / --model_name_or_path")


def _check_supported(config: dict, where: str) -> None:
    if "position_encoding_2d" in config or ("padded_vocab_size" not in config and "inner_hidden_size" in config):
        raise ChatGLMConversionError(
            f"{where}: this is first-generation ChatGLM-6B (2D positions, post-norm GLM blocks), a different "
            "architecture; ChatGLM2-6B, ChatGLM3-6B and glm-4-9b-chat are supported")
    if config.get("vision_config"):
        raise ChatGLMConversionError(f"{where}: a vision model (GLM-4V, field vision_config); only the text models "
                                     "ChatGLM2-6B, ChatGLM3-6B and glm-4-9b-chat are supported")
    for flag, value in _FIXED_FLAGS.items():
        if config.get(flag, value) != value:
            raise ChatGLMConversionError(f"{where}: field {flag} is {config[flag]!r}; the glm architecture needs "
                                         f"{value!r}")
    missing = [f for f in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size") if f not in config]
    if missing:
        raise ChatGLMConversionError(f"{where}: missing field(s) {', '.join(missing)}")


def rope_theta(config: dict) -> float:
    """10000 * rope_ratio (glm-4-9b-chat: 500; ChatGLM2/3: absent -> 1). ``config`` is a dict: read it as one."""
    return ROPE_BASE * float(config.get("rope_ratio") or 1.0)


def glm_config_kwargs(config: dict, where: str = "config.json") -> dict:
    """GlmConfig keyword arguments for a ChatGLM config.json (a dict)."""
    _check_supported(config, where)
    heads = config["num_attention_heads"]
    kv_heads = config.get("multi_query_group_num", heads) if config.get("multi_query_attention") else heads
    vocab = config.get("padded_vocab_size", config.get("vocab_size"))
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=config["hidden_size"],
        intermediate_size=config["ffn_hidden_size"],
        num_hidden_layers=config["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=config.get("kv_channels") or config["hidden_size"] // heads,
        hidden_act="silu",
        attention_dropout=float(config.get("attention_dropout", 0.0)),
        max_position_embeddings=config.get("seq_length", 8192),
        rms_norm_eps=config.get("layernorm_epsilon", 1e-5),
        attention_bias=bool(config.get("add_qkv_bias", False)),
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta(config), "partial_rotary_factor": 0.5},
        # glm's defaults are GLM-4's ids; ChatGLM2/3 (vocab 65024) use eos 2 and pad 0.
        pad_token_id=config.get("pad_token_id", 0 if vocab == 65024 else 151329),
        eos_token_id=config.get("eos_token_id", 2 if vocab == 65024 else [151329, 151336, 151338]),
        bos_token_id=config.get("bos_token_id"),
    )
    if config.get("torch_dtype") or config.get("dtype"):
        kwargs["dtype"] = config.get("torch_dtype") or config.get("dtype")
    return kwargs


def glm_config(config: dict, where: str = "config.json"):
    from transformers import GlmConfig

    glm = GlmConfig(**glm_config_kwargs(config, where))
    glm.architectures = ["GlmForCausalLM"]
    return glm


def qkv_split_sizes(config: dict) -> tuple[int, int, int]:
    """Rows of Q, K and V in the fused query_key_value weight (and bias)."""
    kwargs = glm_config_kwargs(config)
    head_dim = kwargs["head_dim"]
    return (kwargs["num_attention_heads"] * head_dim, kwargs["num_key_value_heads"] * head_dim,
            kwargs["num_key_value_heads"] * head_dim)


def expected_names(config: dict) -> set[str]:
    """Every tensor name a converted checkpoint holds."""
    kwargs = glm_config_kwargs(config)
    names = set(_GLOBAL_NAMES.values())
    for n in range(kwargs["num_hidden_layers"]):
        names.update(f"model.layers.{n}.{v}" for v in _LAYER_NAMES.values())
        params = ("weight", "bias") if kwargs["attention_bias"] else ("weight",)
        names.update(f"model.layers.{n}.self_attn.{p}_proj.{k}" for p in "qkv" for k in params)
    return names


def convert_tensor(name: str, tensor: torch.Tensor, config: dict) -> dict[str, torch.Tensor]:
    """The glm tensor(s) for one ChatGLM tensor: {} for a dropped one, three for a fused QKV weight or bias.

    Split parts are copies (safetensors refuses tensors sharing storage); renamed tensors are passed through.
    """
    if name in _DROPPED:
        return {}
    if name in _GLOBAL_NAMES:
        return {_GLOBAL_NAMES[name]: tensor}
    match = _LAYER.match(name)
    if match:
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in _LAYER_NAMES:
            return {prefix + _LAYER_NAMES[rest]: tensor}
        if rest in ("self_attention.query_key_value.weight", "self_attention.query_key_value.bias"):
            sizes = qkv_split_sizes(config)
            if tensor.shape[0] != sum(sizes):
                raise ChatGLMConversionError(
                    f"tensor {name} has {tensor.shape[0]} rows; config.json implies {sum(sizes)} "
                    f"(Q {sizes[0]} + K {sizes[1]} + V {sizes[2]})")
            kind = rest.rsplit(".", 1)[1]
            q, k, v = torch.split(tensor, sizes, dim=0)
            return {f"{prefix}self_attn.{p}_proj.{kind}": part.clone() for p, part in zip("qkv", (q, k, v))}
    hint = " (a P-tuning prefix: import it with --ptuning_checkpoint)" if ".prefix_encoder." in name else ""
    raise ChatGLMConversionError(f"tensor {name} is not part of a ChatGLM2/3 or GLM-4 model{hint}")


# -- THUDM P-tuning v2 checkpoints ---------------------------------------------------------------------------------
# ptuning/ saves the trainable parameters only: transformer.prefix_encoder.embedding.weight (P, N*2*G*D), plus
# transformer.prefix_encoder.trans.{0,2}.{weight,bias} with prefix_projection. The flat vector of a virtual token is
# layer-major, key then value, each group-major then channel: this project's PrefixEncoder layout, so the tensors
# load into it under the names after "prefix_encoder.". Prefix keys were never rotated; real tokens start at 0.
PREFIX_ENCODER_MARK = "prefix_encoder."


def prefix_encoder_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{PrefixEncoder key: tensor} for the prefix-encoder tensors of a THUDM ptuning state dict (any name prefix)."""
    return {name.split(PREFIX_ENCODER_MARK, 1)[1]: tensor for name, tensor in state_dict.items()
            if PREFIX_ENCODER_MARK in name}


# -- tokenizers ---------------------------------------------------------------------------------------------------
# ChatGLM2/3: a sentencepiece tokenizer.model (64,789 pieces) with special tokens appended right after its pieces;
# eos 2 (</s>), pad = unk 0; every input starts with [gMASK] sop. ChatGLM3 adds four role tokens.
# ChatGLM names two of them plainly "sop" and "eop"; here they are written <sop> and <eop> (same ids), because a fast
# tokenizer matches a special token's text anywhere in plain text: the word "sop" (or "soprano") must stay ordinary
# text, as it is for ChatGLM's own tokenizer, which never looks for specials inside text.
SPECIALS = ("[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
CHATGLM3_ROLES = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
PROMPT_PREFIX = ("[gMASK]", "<sop>")
CHAT_FORMATS = ("chatglm2", "chatglm3")
# GLM-4 (glm-4-9b-chat): a tiktoken ranks file (151,329 byte-level BPE ranks, cl100k_base's split pattern) as
# tokenizer.model, read by ptuning_v2/tiktoken_fast.py; these 14 special tokens follow the ranks; every input starts
# with [gMASK] <sop>; eos = pad = <|endoftext|>.
GLM4 = "glm4"
GLM4_SPECIALS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>") + CHATGLM3_ROLES + (
    "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")
GLM4_PROMPT_PREFIX = ("[gMASK]", "<sop>")
GLM4_EOS = "<|endoftext|>"


def detect_chat_format(src: Path, config: dict) -> str:
    """chatglm3 if the directory's tokenizer files or its name say so, else chatglm2."""
    for name in ("tokenizer_config.json", "tokenization_chatglm.py"):
        path = Path(src) / name
        if path.is_file() and "<|observation|>" in path.read_text(encoding="utf-8", errors="replace"):
            return "chatglm3"
    return "chatglm3" if "chatglm3" in str(config.get("_name_or_path", "")).lower() else "chatglm2"


def special_tokens(chat_format: str, num_pieces: int) -> list[tuple[int, str]]:
    """(id, content) of the special tokens, numbered after the sentencepiece pieces (GLM-4: after the ranks)."""
    if chat_format == GLM4:
        names = GLM4_SPECIALS
    else:
        names = SPECIALS + (CHATGLM3_ROLES if chat_format == "chatglm3" else ())
    return [(num_pieces + i, name) for i, name in enumerate(names)]


def stop_token_ids(chat_format: str, num_pieces: int, eos_id: int) -> list[int]:
    """Generation ends at eos, and for ChatGLM3 and GLM-4 also where the model starts the user's or a tool's turn."""
    if chat_format not in ("chatglm3", GLM4):
        return [eos_id]
    ids = dict((name, i) for i, name in special_tokens(chat_format, num_pieces))
    return [eos_id, ids["<|user|>"], ids["<|observation|>"]]


def chat_template(chat_format: str, dummy_prefix: bool) -> str:
    """A Jinja chat template giving the ids ChatGLM's own chat code builds.

    ChatGLM3: [gMASK] sop, then per message <|role|> + encode(metadata + "\n") + encode(content), then <|assistant|>.
    Each encode() is a separate sentencepiece call with its own dummy "▁"; the fast tokenizer encodes the text
    between two special tokens as one string, so a space (which becomes that "▁") starts the content.
    ChatGLM2: [gMASK] sop + encode("[Round N]\n\n问：...\n\n答：" over the history), one string.
    GLM-4: [gMASK]<sop>, then per message <|role|> + metadata + "\n" + content, then <|assistant|>; the text between
    two special tokens is encoded as one string (no dummy prefix).
    """
    if chat_format == GLM4:
        return (
            "[gMASK]<sop>{% for message in messages %}"
            "{% if message['role'] not in ['system', 'user', 'assistant', 'observation'] %}"
            "{{ raise_exception('GLM-4 roles are system, user, assistant and observation') }}{% endif %}"
            "<|{{ message['role'] }}|>{{ message['metadata'] if message['metadata'] is defined else '' }}\n"
            "{{ message['content'] if message['content'] else '' }}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    if chat_format == "chatglm3":
        sep = " " if dummy_prefix else ""
        return (
            "[gMASK]<sop>{% for message in messages %}"
            "{% if message['role'] not in ['system', 'user', 'assistant', 'observation'] %}"
            "{{ raise_exception('ChatGLM3 roles are system, user, assistant and observation') }}{% endif %}"
            "<|{{ message['role'] }}|>{{ message['metadata'] if message['metadata'] is defined else '' }}\n"
            "{% if message['content'] %}" + sep + "{{ message['content'] }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    return (
        "[gMASK]<sop>{% for message in messages %}"
        "{% if message['role'] == 'user' %}[Round {{ loop.index0 // 2 + 1 }}]\n\n问：{{ message['content'] }}\n\n答："
        "{% elif message['role'] == 'assistant' %}{{ message['content'] }}\n\n"
        "{% else %}{{ raise_exception('ChatGLM2 chats have user and assistant turns only') }}{% endif %}"
        "{% endfor %}"
    )


register_foreign(MODEL_TYPE, unconverted_message)

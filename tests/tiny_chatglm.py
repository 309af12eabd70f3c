"""A tiny checkpoint in THUDM ChatGLM's own naming and config, and an independent reference forward pass.

``write_chatglm_checkpoint`` writes what ChatGLM2/3's remote code saves: config.json (model_type chatglm) and
weights named ``transformer.*`` across two ``pytorch_model-0000N-of-00002.bin`` shards with
``pytorch_model.bin.index.json`` (or safetensors shards). ``reference_logits`` is written from the published facts
about the architecture, not from transformers' glm code: RMSNorm, fused QKV rows [Q | K | V], rotary on the first
half of each head in interleaved pairs (base 10000 * rope_ratio), grouped KV, SwiGLU with fused [gate; up], untied
output layer. An optional prefix (per layer, key and value (G, P, D)) is prepended to the keys/values unrotated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

TINY = dict(num_layers=2, hidden_size=32, num_attention_heads=4, kv_channels=8, multi_query_attention=True,
            multi_query_group_num=2, ffn_hidden_size=48, padded_vocab_size=64, layernorm_epsilon=1e-5,
            add_qkv_bias=True, seq_length=128)


def chatglm_config(**overrides) -> dict:
    config = {
        "_name_or_path": "THUDM/chatglm3-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "fp32_residual_connection": False,
        "hidden_dropout": 0.0, "original_rope": True, "post_layer_norm": True, "rmsnorm": True,
        "torch_dtype": "float32", "use_cache": True, "tie_word_embeddings": False, "eos_token_id": 2,
        "pad_token_id": 0, **TINY,
    }
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


def chatglm_weights(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under ChatGLM's names, scaled so activations are O(1) and the logits well separated."""
    g = torch.Generator().manual_seed(seed)
    hidden, heads, d = config["hidden_size"], config["num_attention_heads"], config["kv_channels"]
    groups = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
    ffn, vocab = config["ffn_hidden_size"], config["padded_vocab_size"]

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    w = {"transformer.embedding.word_embeddings.weight": rand(vocab, hidden),
         "transformer.rotary_pos_emb.inv_freq": 1.0 / (10000 ** (torch.arange(0, d // 2, 2).float() / (d // 2)))}
    for n in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        qkv_rows = (heads + 2 * groups) * d
        w[p + "input_layernorm.weight"] = 1 + rand(hidden, scale=0.1)
        w[p + "self_attention.query_key_value.weight"] = rand(qkv_rows, hidden, scale=hidden ** -0.5)
        if config.get("add_qkv_bias"):
            w[p + "self_attention.query_key_value.bias"] = rand(qkv_rows, scale=0.1)
        w[p + "self_attention.dense.weight"] = rand(hidden, heads * d, scale=(heads * d) ** -0.5)
        w[p + "post_attention_layernorm.weight"] = 1 + rand(hidden, scale=0.1)
        w[p + "mlp.dense_h_to_4h.weight"] = rand(2 * ffn, hidden, scale=hidden ** -0.5)
        w[p + "mlp.dense_4h_to_h.weight"] = rand(hidden, ffn, scale=ffn ** -0.5)
    w["transformer.encoder.final_layernorm.weight"] = 1 + rand(hidden, scale=0.1)
    w["transformer.output_layer.weight"] = rand(vocab, hidden, scale=3 * hidden ** -0.5)
    return w


def write_chatglm_checkpoint(path: Path, config: dict | None = None, seed: int = 0, fmt: str = "bin",
                             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Two shards (embedding + layer 0 + inv_freq | the rest) with an index; returns the weights written."""
    config = config or chatglm_config()
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    weights = {k: (v.to(dtype) if k != "transformer.rotary_pos_emb.inv_freq" else v)
               for k, v in chatglm_weights(config, seed).items()}
    first = [k for k in weights if k.startswith(("transformer.embedding", "transformer.rotary",
                                                 "transformer.encoder.layers.0."))]
    shards = [first, [k for k in weights if k not in first]]
    ext = "bin" if fmt == "bin" else "safetensors"
    base = "pytorch_model" if fmt == "bin" else "model"
    weight_map = {}
    for i, names in enumerate(shards, 1):
        name = f"{base}-{i:05d}-of-{len(shards):05d}.{ext}"
        part = {k: weights[k].clone() for k in names}
        if fmt == "bin":
            torch.save(part, path / name)
        else:
            save_file(part, str(path / name))
        weight_map.update(dict.fromkeys(names, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
             "weight_map": weight_map}
    (path / f"{base}.{ext}.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return weights


# -- the reference forward ----------------------------------------------------------------------------------------
def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_first_half(x, positions, theta):
    """x (B, L, heads, D): rotate channel pairs (0,1), (2,3), ... of the first D/2 channels by position * freq."""
    d = x.shape[-1]
    rot = d // 2
    freqs = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot))         # (rot/2,)
    angles = positions.to(torch.float64)[..., None] * freqs                               # (B, L, rot/2)
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]                   # (B, L, 1, rot/2)
    pairs = x[..., :rot].double().reshape(*x.shape[:-1], rot // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).reshape(*x.shape[:-1], rot)
    return torch.cat([rotated.to(x.dtype), x[..., rot:]], dim=-1)


@torch.no_grad()
def reference_logits(weights: dict[str, torch.Tensor], config: dict, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None,
                     prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """(B, L, V) float32. ``attention_mask`` (B, L) marks real tokens (padding on either side); real tokens are
    numbered from 0. ``prefix``: per layer (key, value), each (G, P, D), visible to every query, never rotated."""
    w = {k: v.float() for k, v in weights.items()}
    heads, d = config["num_attention_heads"], config["kv_channels"]
    groups = config["multi_query_group_num"] if config.get("multi_query_attention") else heads
    eps, theta = config["layernorm_epsilon"], 10000.0 * config.get("rope_ratio", 1.0)
    b, length = input_ids.shape
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    pre = 0 if prefix is None else prefix[0][0].shape[1]
    causal = torch.ones(length, length).tril().bool()
    allowed = causal[None] & mask.bool()[:, None, :]                                     # (B, Lq, Lk)
    allowed |= torch.eye(length, dtype=torch.bool)[None]  # a padding query sees itself: no all-masked NaN rows
    allowed = torch.cat([torch.ones(b, length, pre, dtype=torch.bool), allowed], dim=-1)  # prefix always visible

    h = w["transformer.embedding.word_embeddings.weight"][input_ids]
    for n in range(config["num_layers"]):
        p = f"transformer.encoder.layers.{n}."
        x = _rms_norm(h, w[p + "input_layernorm.weight"], eps)
        qkv = x @ w[p + "self_attention.query_key_value.weight"].T
        if p + "self_attention.query_key_value.bias" in w:
            qkv = qkv + w[p + "self_attention.query_key_value.bias"]
        q = qkv[..., :heads * d].reshape(b, length, heads, d)
        k = qkv[..., heads * d:(heads + groups) * d].reshape(b, length, groups, d)
        v = qkv[..., (heads + groups) * d:].reshape(b, length, groups, d)
        q, k = _rotate_first_half(q, positions, theta), _rotate_first_half(k, positions, theta)
        k, v = k.transpose(1, 2), v.transpose(1, 2)                                      # (B, G, L, D)
        if prefix is not None:
            pk, pv = prefix[n]
            k = torch.cat([pk.float()[None].expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.float()[None].expand(b, -1, -1, -1), v], dim=2)
        out = torch.empty(b, length, heads, d)
        for head in range(heads):
            group = head // (heads // groups)
            scores = q[:, :, head] @ k[:, group].transpose(-1, -2) / math.sqrt(d)         # (B, Lq, P+Lk)
            scores = scores.masked_fill(~allowed, float("-inf"))
            out[:, :, head] = scores.softmax(-1) @ v[:, group]
        h = h + out.reshape(b, length, heads * d) @ w[p + "self_attention.dense.weight"].T
        x = _rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = (x @ w[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        h = h + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.dense_4h_to_h.weight"].T
    h = _rms_norm(h, w["transformer.encoder.final_layernorm.weight"], eps)
    return h @ w["transformer.output_layer.weight"].T


# -- tokenizer ----------------------------------------------------------------------------------------------------
SP_TRAINING_TEXT = [
    "今天天气很好，我们去公园散步吧。", "这家酒店的服务非常差，房间也很脏！", "书很好看，物流也很快，五星好评。",
    "深度学习模型需要大量的数据和计算资源。", "他说：“明天见。”", "人工智能正在改变世界。", "你好，请问有什么可以帮你？",
    "The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x + 1\n", "123 4567 89 hello  world",
] * 20


def write_sentencepiece(path: Path, **overrides) -> Path:
    """A tiny sentencepiece model trained like ChatGLM2/3's (unigram, byte fallback, identity normalization, a dummy
    prefix, spaces kept; <unk> 0, <s> 1, </s> 2)."""
    import io

    import sentencepiece as spm

    settings = dict(vocab_size=420, model_type="unigram", byte_fallback=True, character_coverage=0.98,
                    normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
                    unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2)
    settings.update(overrides)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SP_TRAINING_TEXT), model_writer=buf, **settings)
    path.write_bytes(buf.getvalue())
    return path

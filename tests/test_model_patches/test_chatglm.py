"""ChatGLM (THUDM remote code, model_type chatglm) -> native glm: config translation, tensor mapping, refusal."""

import json
import shlex

import pytest
import torch

from model_patches import UnsupportedModelError, get_patch
from model_patches import chatglm
from ptuning_v2.quantization import BaseModelSpec, load_base_model, resolve_model_path
from tiny_chatglm import chatglm_config, write_chatglm_checkpoint

# The published config of ChatGLM3-6B and glm-4-9b-chat (the fields the conversion reads), as dicts.
CHATGLM3_6B = chatglm_config(num_layers=28, hidden_size=4096, num_attention_heads=32, kv_channels=128,
                             multi_query_group_num=2, ffn_hidden_size=13696, padded_vocab_size=65024,
                             seq_length=8192, torch_dtype="float16")
GLM4_9B_CHAT = chatglm_config(num_layers=40, hidden_size=4096, num_attention_heads=32, kv_channels=128,
                              multi_query_group_num=2, ffn_hidden_size=13696, padded_vocab_size=151552,
                              layernorm_epsilon=1.5625e-07, rope_ratio=500, seq_length=131072,
                              eos_token_id=[151329, 151336, 151338], pad_token_id=151329, torch_dtype="bfloat16")


def test_chatglm3_config_translates_to_glm():
    glm = chatglm.glm_config(CHATGLM3_6B)
    assert glm.model_type == "glm" and glm.architectures == ["GlmForCausalLM"]
    assert (glm.num_hidden_layers, glm.hidden_size, glm.intermediate_size, glm.vocab_size) == (28, 4096, 13696, 65024)
    assert (glm.num_attention_heads, glm.num_key_value_heads, glm.head_dim) == (32, 2, 128)
    assert glm.rms_norm_eps == 1e-5 and glm.attention_bias is True and glm.tie_word_embeddings is False
    assert glm.max_position_embeddings == 8192
    assert glm.rope_parameters["rope_theta"] == 10000.0
    assert glm.rope_parameters["partial_rotary_factor"] == 0.5
    assert (glm.eos_token_id, glm.pad_token_id) == (2, 0)
    assert glm.dtype == torch.float16


def test_rope_ratio_is_read_from_the_dict():
    # transformers' own converter reads rope_ratio with getattr from a dict and so always gets 10000.
    glm = chatglm.glm_config(GLM4_9B_CHAT)
    assert glm.rope_parameters["rope_theta"] == 10000.0 * 500
    assert glm.rms_norm_eps == 1.5625e-07 and glm.vocab_size == 151552
    assert glm.eos_token_id == [151329, 151336, 151338] and glm.pad_token_id == 151329


def test_without_multi_query_attention_every_head_has_its_own_kv():
    config = chatglm_config(multi_query_attention=False)
    assert chatglm.glm_config(config).num_key_value_heads == config["num_attention_heads"]


@pytest.mark.parametrize("overrides, field", [
    ({"position_encoding_2d": True, "padded_vocab_size": None, "inner_hidden_size": 16384}, "first-generation"),
    ({"rmsnorm": False}, "rmsnorm"),
    ({"apply_residual_connection_post_layernorm": True}, "apply_residual_connection_post_layernorm"),
    ({"add_bias_linear": True}, "add_bias_linear"),
    ({"vision_config": {"image_size": 1120}}, "vision"),
])
def test_architectures_glm_cannot_represent_are_refused(overrides, field):
    with pytest.raises(chatglm.ChatGLMConversionError, match=field):
        chatglm.glm_config(chatglm_config(**overrides))


def test_fused_qkv_weight_and_bias_split_by_rows():
    config = chatglm_config()  # 4 heads, 2 groups, kv_channels 8: Q 32 rows, K 16, V 16
    fused = torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)
    out = chatglm.convert_tensor("transformer.encoder.layers.1.self_attention.query_key_value.weight", fused, config)
    assert sorted(out) == [f"model.layers.1.self_attn.{p}_proj.weight" for p in "kqv"]
    assert torch.equal(out["model.layers.1.self_attn.q_proj.weight"], fused[:32])
    assert torch.equal(out["model.layers.1.self_attn.k_proj.weight"], fused[32:48])
    assert torch.equal(out["model.layers.1.self_attn.v_proj.weight"], fused[48:])
    bias = torch.arange(64, dtype=torch.float32)
    out = chatglm.convert_tensor("transformer.encoder.layers.0.self_attention.query_key_value.bias", bias, config)
    assert torch.equal(out["model.layers.0.self_attn.v_proj.bias"], bias[48:])
    # Copies, not views: safetensors refuses tensors that share storage.
    assert out["model.layers.0.self_attn.q_proj.bias"].untyped_storage().data_ptr() != bias.untyped_storage().data_ptr()


def test_renames_and_drops():
    config = chatglm_config()
    t = torch.zeros(3)
    assert chatglm.convert_tensor("transformer.rotary_pos_emb.inv_freq", t, config) == {}
    cases = {
        "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
        "transformer.encoder.layers.3.input_layernorm.weight": "model.layers.3.input_layernorm.weight",
        "transformer.encoder.layers.3.self_attention.dense.weight": "model.layers.3.self_attn.o_proj.weight",
        "transformer.encoder.layers.3.post_attention_layernorm.weight": "model.layers.3.post_attention_layernorm.weight",
        "transformer.encoder.layers.3.mlp.dense_h_to_4h.weight": "model.layers.3.mlp.gate_up_proj.weight",
        "transformer.encoder.layers.3.mlp.dense_4h_to_h.weight": "model.layers.3.mlp.down_proj.weight",
        "transformer.encoder.final_layernorm.weight": "model.norm.weight",
        "transformer.output_layer.weight": "lm_head.weight",
    }
    for old, new in cases.items():
        assert list(chatglm.convert_tensor(old, t, config)) == [new]


def test_unknown_tensor_is_named():
    with pytest.raises(chatglm.ChatGLMConversionError, match="transformer.prefix_encoder.embedding.weight.*--ptuning"):
        chatglm.convert_tensor("transformer.prefix_encoder.embedding.weight", torch.zeros(2, 2), chatglm_config())
    with pytest.raises(chatglm.ChatGLMConversionError, match="rows"):
        chatglm.convert_tensor("transformer.encoder.layers.0.self_attention.query_key_value.weight",
                               torch.zeros(63, 32), chatglm_config())


def test_expected_names_match_glm_parameters():
    from transformers import GlmForCausalLM

    config = chatglm_config()
    model = GlmForCausalLM(chatglm.glm_config(config))
    assert chatglm.expected_names(config) == set(model.state_dict())


def test_get_patch_refuses_chatglm_with_the_convert_command():
    with pytest.raises(UnsupportedModelError, match=r"python -m ptuning_v2\.convert CHATGLM_DIR OUTPUT_DIR"):
        get_patch("chatglm")


def test_loading_an_unconverted_directory_stops_with_the_exact_command(tmp_path):
    src = tmp_path / "chat glm3"   # a space: the command must quote it
    write_chatglm_checkpoint(src)
    command = f"python -m ptuning_v2.convert {shlex.quote(str(src))} {shlex.quote(str(src) + '-glm')}"
    for load in (lambda: resolve_model_path(str(src)), lambda: load_base_model(BaseModelSpec(str(src)))):
        with pytest.raises(UnsupportedModelError) as err:
            load()
        assert command in str(err.value)
        assert "\n" not in str(err.value)


def test_other_directories_pass(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm"}))
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)

import pytest
import torch

from model_patches import UnsupportedModelError, get_patch, supported_model_types
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
from tiny_models import ARCHITECTURES, ATTENTION_KV_HEADS, tiny_config, tiny_model


def test_registry_covers_chatglm_lineage_and_common_decoders():
    assert {"glm", "glm4", "llama", "qwen2"} <= set(supported_model_types())


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
@pytest.mark.parametrize("attention", sorted(ATTENTION_KV_HEADS))
def test_per_layer_prefix_shapes(model_type, attention):
    config = tiny_config(model_type, attention, num_layers=3)
    shape = get_patch(config).kv_shape(config)
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (3, ATTENTION_KV_HEADS[attention], 8)

    model = PrefixModel(tiny_model(model_type, attention, num_layers=3), encoder_config_for(config, pre_seq_len=5))
    prefix = model.prefix_kv(batch_size=2)
    assert len(prefix) == 3
    for key, value in prefix:
        assert key.shape == value.shape == (2, ATTENTION_KV_HEADS[attention], 5, 8)
    # The prefix really enters every layer's attention: logits change with it.
    ids = torch.randint(4, 80, (2, 6))
    with torch.no_grad():
        plain = model.base(ids).logits
        prefixed = model(ids).logits
    assert not torch.allclose(plain, prefixed)


def test_head_dim_derived_when_config_has_none():
    config = tiny_config("qwen2", "gqa", head_dim=None)
    config.head_dim = None
    assert get_patch(config).kv_shape(config).head_dim == 32 // 4


def test_unsupported_model_type_lists_supported_ones():
    with pytest.raises(UnsupportedModelError) as err:
        get_patch("gpt2")
    message = str(err.value)
    assert "'gpt2'" in message
    for model_type in ("glm", "glm4", "llama", "qwen2"):
        assert model_type in message

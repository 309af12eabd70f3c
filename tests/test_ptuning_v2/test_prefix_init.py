"""--prefix_init_text: before training, the prefixed model behaves exactly as the base with that text in front."""

import pytest
import torch

from ptuning_v2.prefix_init import initialize_prefix_from_text, prefix_token_ids, set_encoder_output
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
from tiny_models import tiny_model, tiny_tokenizer

TEXT = "这个好不好？"   # 6 tokens in the tiny character-level tokenizer
CONTINUATION = "[]他说：很好。"


@pytest.mark.parametrize("model_type,attention", [("glm", "gqa"), ("glm", "mqa"), ("llama", "mha"), ("qwen2", "gqa")])
@pytest.mark.parametrize("projection", [False, True])
def test_prefix_from_text_reproduces_text_then_continuation(model_type, attention, projection):
    tokenizer = tiny_tokenizer()
    base = tiny_model(model_type, attention)
    text_ids = tokenizer.encode(TEXT, add_special_tokens=False)
    model = PrefixModel(base, encoder_config_for(base.config, len(text_ids), projection, None, 0.1)).eval()
    assert initialize_prefix_from_text(model, tokenizer, TEXT) == text_ids

    continuation = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(CONTINUATION, add_special_tokens=False)])
    with torch.no_grad():
        prefixed = model(continuation).logits
        reference = base(torch.cat([torch.tensor([text_ids]), continuation], dim=1)).logits[:, len(text_ids):]
    assert (prefixed - reference).abs().max().item() < 1e-4 * reference.abs().max().item()
    # And it really is the text that is reproduced, not any prefix: a random one is far off.
    random_model = PrefixModel(base, encoder_config_for(base.config, len(text_ids), projection, None, 0.1)).eval()
    with torch.no_grad():
        assert (random_model(continuation).logits - reference).abs().max().item() > 1e-2


def test_short_text_is_repeated_and_long_text_cut():
    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode("好坏", add_special_tokens=False)
    assert prefix_token_ids(tokenizer, "好坏", 5) == ids * 2 + ids[:1]
    assert prefix_token_ids(tokenizer, "好坏不好", 3) == tokenizer.encode("好坏不", add_special_tokens=False)
    with pytest.raises(ValueError, match="no tokens"):
        prefix_token_ids(tokenizer, "", 4)


def test_repeated_text_still_equals_the_base_on_the_repeated_text():
    tokenizer, base = tiny_tokenizer(), tiny_model("glm", "gqa")
    model = PrefixModel(base, encoder_config_for(base.config, 9, False)).eval()
    ids = initialize_prefix_from_text(model, tokenizer, "好坏")
    tail = torch.tensor([[tokenizer.bos_token_id, 10, 11, 12]])
    with torch.no_grad():
        reference = base(torch.cat([torch.tensor([ids]), tail], dim=1)).logits[:, len(ids):]
        assert torch.allclose(model(tail).logits, reference, atol=1e-4)


def test_projection_narrower_than_prefix_is_the_least_squares_best():
    """hidden < P: no exact solution; the fit is still far closer than the random start."""
    base = tiny_model("glm", "gqa")
    config = encoder_config_for(base.config, 12, True, prefix_hidden_size=4, prefix_dropout=0.0)
    model = PrefixModel(base, config)
    target = torch.randn(12, config.kv_width)
    start_error = (model.prefix_encoder.flat_prefix() - target).abs().max().item()
    error = set_encoder_output(model.prefix_encoder, target)
    assert 0 < error < start_error

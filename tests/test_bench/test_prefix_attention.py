"""bench/prefix_attention.py: the prefix's attention share is what the base gives the same text's tokens."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from prefix_attention import prefix_attention_share  # noqa: E402
from ptuning_v2.prefix_init import initialize_prefix_from_text  # noqa: E402
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for  # noqa: E402
from tiny_models import tiny_model, tiny_tokenizer  # noqa: E402

TEXT = "这个好不好？"          # 6 tokens: the prefix is these tokens' keys/values
PROMPTS = ["[]他说：很好。", "[]我不"]


def test_share_equals_the_base_attention_on_the_text_it_was_made_from():
    tokenizer, base = tiny_tokenizer(), tiny_model("glm", "gqa")
    text = tokenizer.encode(TEXT, add_special_tokens=False)
    model = PrefixModel(base, encoder_config_for(base.config, len(text), True)).eval()
    initialize_prefix_from_text(model, tokenizer, TEXT)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    ids = torch.tensor([[tokenizer.pad_token_id] * (len(prompts[0]) - len(prompts[1])) + prompts[1], prompts[0]])
    mask = (ids != tokenizer.pad_token_id).long()
    share, logits = prefix_attention_share(model, ids, mask)
    assert share.shape == (2, 2, ids.shape[1]) and logits.shape == (2, base.config.vocab_size)

    # Reference: the base on text + prompt (one review at a time, no padding), eager attention, share of the text.
    base.config._attn_implementation = "eager"
    for row, prompt in zip((1, 0), prompts):
        with torch.no_grad():
            out = base(torch.tensor([text + prompt]), output_attentions=True)
        reference = torch.stack([a[0, :, len(text):, :len(text)].sum(-1).mean(0) for a in out.attentions])  # (2, L)
        measured = share[:, row, ids.shape[1] - len(prompt):]
        assert torch.allclose(measured, reference, atol=1e-5)
        assert torch.allclose(logits[row], out.logits[0, -1], atol=1e-4)
    # a real share, not a degenerate 0 or 1
    assert 0.05 < share[:, :, -1].mean().item() < 0.95

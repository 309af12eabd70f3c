"""Tiny models and a tiny tokenizer built from config, for tests: nothing is downloaded.

Attention variants per architecture: MHA (KV heads == heads), GQA (2 KV heads, as ChatGLM2/3) and MQA (1).
Sizes: hidden 32, 2 layers, 4 query heads of head_dim 8, vocab 96, so a forward pass takes milliseconds.
"""

from __future__ import annotations

import torch
import transformers

ARCHITECTURES = {
    "glm": (transformers.GlmConfig, transformers.GlmForCausalLM),
    "glm4": (transformers.Glm4Config, transformers.Glm4ForCausalLM),
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}
ATTENTION_KV_HEADS = {"mha": 4, "gqa": 2, "mqa": 1}
VOCAB_SIZE = 96
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def tiny_config(model_type: str = "glm", attention: str = "gqa", num_layers: int = 2, **overrides):
    config_cls, _ = ARCHITECTURES[model_type]
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=ATTENTION_KV_HEADS[attention],
        head_dim=8,
        max_position_embeddings=256,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return config_cls(**kwargs)


def tiny_model(model_type: str = "glm", attention: str = "gqa", seed: int = 0, **overrides):
    _, model_cls = ARCHITECTURES[model_type]
    torch.manual_seed(seed)
    model = model_cls(tiny_config(model_type, attention, **overrides))
    # Random init gives near-uniform logits; scaling the output layer makes greedy choices well separated,
    # so an exactness test is not decided by ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model.eval()


# Characters the tiny tokenizer knows, one token each (ids after the 4 special tokens).
TINY_CHARS = (
    "0123456789abcdefghijklmnopqrstuvwxyz"
    "问答好坏的是不很这个我你他们了在有和也就都说人大小中上下天地日月水火山"
    "：，。！？[]\n RAB"
)


def tiny_tokenizer():
    """A character-level fast tokenizer over TINY_CHARS; pad=0, bos=1, eos=2, unk=3."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in TINY_CHARS:
        vocab.setdefault(ch, len(vocab))
    assert len(vocab) <= VOCAB_SIZE, len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="left",
    )


def batch_with_labels(seed=0):
    """ids (3, 10) with one left-padded row, its mask, and labels on the last 5 positions (-100 elsewhere)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 90, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # one left-padded row
    ids[1, :2] = PAD_ID
    labels = ids.clone()
    labels[:, :5] = -100
    labels[mask == 0] = -100
    return ids, mask, labels


def greedy_by_full_recompute(model, ids, mask, steps):
    """Greedy decoding of a PrefixModel that recomputes the whole sequence, prefix included, for every new token."""
    from ptuning_v2.prefix_model import forward_with_prefix

    ids, mask = ids.clone(), mask.clone()
    for _ in range(steps):
        with torch.no_grad():
            logits = forward_with_prefix(model.base, model.prefix_kv(ids.shape[0]), ids, attention_mask=mask).logits
        next_ids = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_ids], 1)
        mask = torch.cat([mask, torch.ones_like(next_ids)], 1)
    return ids


def train_steps(model, ids, mask, labels, steps, lr=1e-2):
    """AdamW on the model's trainable parameters for ``steps`` steps on one batch; returns the losses."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses

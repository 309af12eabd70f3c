"""Tests for data/build_base_model.py helpers and for the shipped default base model in data/base_model/.

The helper tests run on tiny inputs; the shipped-model tests are skipped when data/base_model/ is absent
(BASE_MODEL_DIR=/some/folder points them at another build, e.g. a smoke run).
"""

import json
import math
import os
import sys

import pytest
import torch

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "data"))
import build_base_model as bbm  # noqa: E402

BASE = os.environ.get("BASE_MODEL_DIR", os.path.join(ROOT, "data", "base_model"))
needs_base = pytest.mark.skipif(not os.path.isfile(os.path.join(BASE, "tokenizer.json")),
                                reason="data/base_model not built")
ROUND_TRIP = ["你好，世界！今天是2024年1月1日。", "Hello, world? a , b  c\n第二行：ＡＢＣ１２３《书》“引号”",
              "龘靐齉😀\t结尾 "]


def test_lr_schedule_warmup_then_cosine_to_floor():
    peak, warm = 1e-3, 10
    assert bbm.lr_at(0, 0.0, peak, warm, 0.1) == pytest.approx(peak / warm)
    assert bbm.lr_at(9, 0.0, peak, warm, 0.1) == pytest.approx(peak)
    assert bbm.lr_at(50, 0.5, peak, warm, 0.1) == pytest.approx(peak * 0.55)
    assert bbm.lr_at(99, 1.0, peak, warm, 0.1) == pytest.approx(peak * 0.1)
    assert bbm.lr_at(99, 1.7, peak, warm, 0.1) == pytest.approx(peak * 0.1)  # never below the floor


def test_split_heldout_is_seeded_disjoint_and_complete():
    docs = [f"文档{i}" for i in range(500)]
    train, held = bbm.split_heldout(docs, 0.02, seed=3)
    assert len(held) == 10 and sorted(train + held) == sorted(docs)
    assert bbm.split_heldout(docs, 0.02, seed=3) == (train, held)
    assert bbm.split_heldout(docs, 0.02, seed=4)[1] != held


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(BASE)


@needs_base
def test_shipped_tokenizer_special_tokens_and_round_trip(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2, 3)
    for text in ROUND_TRIP:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.encode(text, add_special_tokens=True) == ids  # adds nothing, by design


@needs_base
def test_pack_blocks_wraps_documents_in_bos_eos(tokenizer):
    blocks = bbm.pack_blocks(tokenizer, ["今天天气很好。", "成语：画蛇添足"], block_size=4)
    stream = blocks.flatten().tolist()
    first = tokenizer.encode("今天天气很好。", add_special_tokens=False)
    assert blocks.shape[1] == 4 and blocks.dtype == torch.long
    assert stream[: len(first) + 2] == [1, *first, 2]
    assert len(stream) % 4 == 0 and stream[len(first) + 2] == 1


@needs_base
def test_shipped_config_matches_tokenizer_and_record(tokenizer):
    with open(os.path.join(BASE, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(BASE, "pretraining_record.json"), encoding="utf-8") as f:
        record = json.load(f)
    assert config["model_type"] == "glm" and config["vocab_size"] == len(tokenizer)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 3)
    assert config["num_key_value_heads"] == 2
    assert record["heldout_perplexity"] == pytest.approx(math.exp(record["heldout_loss"]), rel=1e-3)
    size = sum(os.path.getsize(os.path.join(BASE, f)) for f in os.listdir(BASE))
    assert size <= 40 * 2**20

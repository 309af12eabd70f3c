"""Shared fixtures. Tests never download: models and tokenizers are built from config (see tiny_models.py)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.append(str(Path(__file__).parent))

from tiny_models import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny GLM (2 KV heads, like ChatGLM2/3) and its tokenizer saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny_glm")
    tiny_model("glm", "gqa").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_base_dir, tmp_path_factory):
    """A prefix checkpoint on the tiny base (random prefix), recording a test file and the prompt format."""
    import json

    import torch

    from ptuning_v2.checkpoint import save_prefix_checkpoint
    from ptuning_v2.data import get_template
    from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
    from ptuning_v2.quantization import BaseModelSpec, load_base_model

    root = tmp_path_factory.mktemp("tiny_ckpt")
    test_file = root / "test.jsonl"
    pairs = [("这个好不好", "好"), ("这个坏不坏", "坏"), ("天好不好", "好"), ("水坏不坏", "坏"), ("山好", "好"), ("火坏", "坏")]
    test_file.write_text("".join(json.dumps({"text": q, "label": a}, ensure_ascii=False) + "\n" for q, a in pairs),
                         encoding="utf-8")
    base, spec = load_base_model(BaseModelSpec(str(tiny_base_dir)))
    torch.manual_seed(5)
    model = PrefixModel(base, encoder_config_for(base.config, 3), base_spec=spec, prompt_settings={
        "template": get_template("instruction").to_dict(), "source_prefix": "问：", "max_source_length": 32,
        "max_target_length": 4, "test_file": str(test_file),
        "columns": {"prompt": "text", "response": "label", "history": None, "input": None},
    })
    save_prefix_checkpoint(model, root / "ckpt")
    return root / "ckpt"

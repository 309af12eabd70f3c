"""Shared fixtures. Tests never download: models and tokenizers are built from config (see tiny_models.py)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import tiny_model, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """A tiny GLM (2 KV heads, like ChatGLM2/3) and its tokenizer saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny_glm")
    tiny_model("glm", "gqa").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path

"""A ChatGLM3 user's path through the shell: convert the checkpoint (with its tokenizer.model), train.sh a prefix
with the chat template, evaluate.sh it, chat with it; and import an old THUDM ptuning/ prefix, then evaluate.sh it.
Every step is a subprocess from the repository root, as a user runs it."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny_chatglm import chatglm_config, write_chatglm_checkpoint, write_sentencepiece

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [("你好", "你好，请问有什么可以帮你？"), ("今天天气怎么样", "今天天气很好。"), ("推荐一本书", "书很好看。"),
         ("人工智能是什么", "人工智能正在改变世界。")]

pytestmark = pytest.mark.slow


def env(**extra):
    """The caller's environment, this checkout first on PYTHONPATH (the shell scripts run `python -m ptuning_v2.*`
    from the repository root, which imports this checkout anyway), offline, the venv the tests run in."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    venv = {"VENV": sys.prefix} if sys.prefix != sys.base_prefix else {}  # setup_env.sh: this venv, not ROOT/.venv
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", **venv, **extra}


def run(argv, timeout=180, stdin=None, **extra_env):
    result = subprocess.run(argv, capture_output=True, text=True, env=env(**extra_env), cwd=ROOT, timeout=timeout,
                            input=stdin)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "[setup]" not in result.stdout + result.stderr  # setup_env.sh reused the venv, installed nothing
    return result.stdout + result.stderr


def jsonl(path, pairs):
    path.write_text("".join(json.dumps({"content": q, "summary": a}, ensure_ascii=False) + "\n" for q, a in pairs),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """`python -m ptuning_v2.convert SRC DST` on a tiny ChatGLM3-layout directory with its tokenizer.model."""
    root = tmp_path_factory.mktemp("chatglm3_e2e")
    src, dst = root / "chatglm3", root / "glm"
    config = chatglm_config(padded_vocab_size=448)
    write_chatglm_checkpoint(src, config)
    write_sentencepiece(src / "tokenizer.model")
    (src / "tokenization_chatglm.py").write_text("# remote code naming <|user|> and <|observation|>\n")
    log = run([sys.executable, "-m", "ptuning_v2.convert", str(src), str(dst), "--no_progress"])
    assert f"converted model written to {dst}" in log
    assert (dst / "tokenizer.json").is_file() and (dst / "model.safetensors.index.json").is_file()
    return root, dst, config


def test_convert_train_evaluate_chat(converted):
    root, dst, _ = converted
    data = jsonl(root / "data.jsonl", PAIRS)
    out = root / "run"
    log = run(["bash", str(ROOT / "train.sh"), "--prompt_column", "content", "--response_column", "summary",
               "--prompt_template", "chat", "--save_steps", "2", "--max_source_length", "32",
               "--max_target_length", "8"],
              MODEL=str(dst), TRAIN_FILE=str(data), VALIDATION_FILE=str(data), STEPS="4", BATCH="2",
              PRE_SEQ_LEN="2", OUTPUT_DIR=str(out))
    assert Path(re.search(r"prefix checkpoint: (\S+)", log).group(1)) == out
    checkpoint = out / "checkpoint-4"
    assert (checkpoint / "prefix_model.safetensors").is_file()
    config = json.loads((checkpoint / "prefix_config.json").read_text(encoding="utf-8"))
    assert config["prompt"]["template"]["name"] == "chat" and config["pre_seq_len"] == 2
    assert Path(config["base_model"]["model_name_or_path"]).resolve() == dst.resolve()

    run(["bash", str(ROOT / "evaluate.sh"), str(checkpoint), str(data), "--max_new_tokens", "4"])
    metrics = json.loads((checkpoint / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_examples"] == len(PAIRS)
    predictions = (checkpoint / "eval" / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == len(PAIRS)

    log = run([sys.executable, "-m", "ptuning_v2.chat", "--checkpoint", str(checkpoint), "--max_new_tokens", "4"],
              stdin="你好\nexit\n")
    assert log.count("助手：") == 1 and "bye" in log


def test_import_legacy_prefix_then_evaluate(converted):
    root, dst, config = converted
    old, new = root / "old_ptuning", root / "imported"
    pre_seq_len = 3
    width = config["num_layers"] * 2 * config["multi_query_group_num"] * config["kv_channels"]
    old.mkdir()
    torch.save({"transformer.prefix_encoder.embedding.weight": torch.randn(pre_seq_len, width)},
               old / "pytorch_model.bin")
    (old / "config.json").write_text(json.dumps({**config, "pre_seq_len": pre_seq_len, "prefix_projection": False}))
    log = run([sys.executable, "-m", "ptuning_v2.convert", "--ptuning_checkpoint", str(old), "--base", str(dst),
               str(new)])
    assert f"imported prefix written to {new}" in log
    recorded = json.loads((new / "prefix_config.json").read_text(encoding="utf-8"))
    assert recorded["pre_seq_len"] == pre_seq_len and recorded["prompt"]["template"]["name"] == "chatglm"

    test_file = jsonl(root / "test.jsonl", PAIRS[:2])
    run(["bash", str(ROOT / "evaluate.sh"), str(new), str(test_file), "--max_new_tokens", "4"])
    metrics = json.loads((new / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_examples"] == 2
    assert len((new / "eval" / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 2

"""train.sh and evaluate.sh as a user runs them: a few steps on the default task, then evaluation."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def bash(script, *args, env=None, timeout=600):
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    result = subprocess.run(["bash", str(ROOT / script), *args], capture_output=True, text=True, env=full_env,
                            timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.mark.skipif(not (ROOT / "data" / "base_model" / "config.json").is_file(), reason="no default base model")
def test_train_sh_smoke_then_evaluate_sh(tmp_path):
    out = tmp_path / "run"
    log = bash("train.sh", "--max_train_samples", "64", "--max_eval_samples", "16", "--logging_steps", "1",
               env={"STEPS": "4", "WARMUP": "2", "EVAL_EVERY": "2", "BATCH": "4", "OUTPUT_DIR": str(out),
                    "PRE_SEQ_LEN": "4"})
    printed = re.search(r"prefix checkpoint: (\S+)", log).group(1)
    assert Path(printed) == out
    history = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["log_history"]
    # the rate each step ran at: WARMUP=2 raises it to sentiment's LR (1e-3) over two steps, then it decays linearly
    # to 0 at STEPS
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 5e-4])
    # EVAL_EVERY=2: a validation score at steps 2 and 4
    assert [entry["step"] for entry in history if "eval_accuracy" in entry][:2] == [2, 4]
    assert (out / "checkpoint-4" / "prefix_config.json").is_file()
    assert (out / "checkpoint-4" / "prefix_model.safetensors").is_file()
    assert (out / "loss_curve.png").is_file()
    config = json.loads((out / "prefix_config.json").read_text(encoding="utf-8"))
    assert config["prompt"]["columns"]["response"] == "label" and config["pre_seq_len"] == 4

    log = bash("evaluate.sh", printed, "--max_samples", "16", "--max_new_tokens", "4")
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_examples"] == 16 and metrics["test_file"].endswith("sentiment/test.jsonl")
    assert metrics["label_words"] == ["消极", "积极"] and 0 <= metrics["label_scoring_accuracy"] <= 100
    assert len((out / "eval" / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 16

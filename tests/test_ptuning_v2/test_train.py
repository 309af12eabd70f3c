"""The training entry point end to end on a tiny saved GLM: checkpoints, untouched base, resume, reload."""

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from ptuning_v2.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_prefix_model

PAIRS = [("这个好不好", "好"), ("这个坏不坏", "坏"), ("天好不好", "好"), ("水坏不坏", "坏"),
         ("山好不好", "好"), ("火坏不坏", "坏"), ("月好不好", "好"), ("日坏不坏", "坏")]


def file_hashes(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def run_train(base_dir, data_file, output_dir, max_steps, extra=()):
    cmd = [sys.executable, "-m", "ptuning_v2.train",
           "--model_name_or_path", str(base_dir), "--train_file", str(data_file),
           "--validation_file", str(data_file),
           "--prompt_column", "content", "--response_column", "summary", "--prompt_template", "plain",
           "--max_source_length", "16", "--max_target_length", "4", "--pre_seq_len", "4",
           "--output_dir", str(output_dir), "--max_steps", str(max_steps), "--save_steps", "2",
           "--per_device_train_batch_size", "4", "--learning_rate", "3e-2", "--logging_steps", "1",
           "--gradient_checkpointing", "--use_cpu", "--report_to", "none", "--seed", "7", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"content": q, "summary": a}, ensure_ascii=False) + "\n" for q, a in PAIRS),
                    encoding="utf-8")
    return path


def test_train_writes_self_describing_checkpoints_and_resumes(tiny_base_dir, data_file, tmp_path):
    before = file_hashes(tiny_base_dir)
    out = tmp_path / "run"
    log = run_train(tiny_base_dir, data_file, out, max_steps=4, extra=["--prefix_projection"])

    for step in (2, 4):
        ckpt = out / f"checkpoint-{step}"
        assert (ckpt / CONFIG_NAME).is_file() and (ckpt / WEIGHTS_NAME).is_file()
        assert (ckpt / "trainer_state.json").is_file() and (ckpt / "optimizer.pt").is_file()
        assert not (ckpt / "model.safetensors").exists()  # only the prefix is saved
        config = json.loads((ckpt / CONFIG_NAME).read_text())
        assert config["pre_seq_len"] == 4 and config["prefix_projection"] is True
        assert config["prompt"]["template"]["name"] == "plain"
    assert file_hashes(tiny_base_dir) == before, "training modified the base model's files"
    assert "trainable params:" in log and f"prefix checkpoint: {out}" in log
    assert (out / "loss_curve.png").stat().st_size > 1000

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in history if "loss" in e]
    assert len(losses) == 4 and losses[-1] < losses[0], losses

    # A second run in the same output_dir continues from checkpoint-4 instead of starting over.
    log = run_train(tiny_base_dir, data_file, out, max_steps=6)
    assert f"resuming from {out / 'checkpoint-4'}" in log
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 6

    model, tokenizer, config = load_prefix_model(out)
    assert config["prefix_projection"] is True  # the resumed run kept the checkpoint's shape
    ids = torch.tensor([tokenizer.encode("这个好不好")])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], 96)


def test_continue_from_ptuning_checkpoint_reads_its_shape(tiny_base_dir, data_file, tmp_path):
    first = tmp_path / "first"
    run_train(tiny_base_dir, data_file, first, max_steps=2, extra=["--pre_seq_len", "6"])
    second = tmp_path / "second"
    # No --pre_seq_len 6 here: the shape comes from the checkpoint.
    run_train(tiny_base_dir, data_file, second, max_steps=2, extra=["--ptuning_checkpoint", str(first)])
    assert json.loads((second / CONFIG_NAME).read_text())["pre_seq_len"] == 6


def test_bad_data_line_fails_with_file_and_line(tiny_base_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "好", "summary": "好"}\n{"content": "坏"}\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "ptuning_v2.train", "--model_name_or_path", str(tiny_base_dir),
           "--train_file", str(bad), "--output_dir", str(tmp_path / "o"), "--use_cpu", "--report_to", "none"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{bad}, line 2: field 'summary' is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_quantized_training_turns_checkpointing_on_and_records_it(tiny_base_dir, data_file, tmp_path):
    out = tmp_path / "int4"
    cmd_extra = ["--quantization_bit", "4"]
    log = run_train_plain(tiny_base_dir, data_file, out, cmd_extra)
    assert "gradient checkpointing: on" in log
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["base_model"]["quantization_bit"] == 4 and config["base_model"]["quant_type"] == "nf4"
    trainer_log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("loss" in e for e in trainer_log)


def run_train_plain(base_dir, data_file, output_dir, extra):
    """A 2-step run without --gradient_checkpointing on the command line."""
    cmd = [sys.executable, "-m", "ptuning_v2.train", "--model_name_or_path", str(base_dir),
           "--train_file", str(data_file), "--prompt_template", "plain", "--pre_seq_len", "2",
           "--output_dir", str(output_dir), "--max_steps", "2", "--per_device_train_batch_size", "4",
           "--logging_steps", "1", "--use_cpu", "--report_to", "none", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_best_checkpoint_by_validation_accuracy_becomes_the_final_prefix(tiny_base_dir, data_file, tmp_path,
                                                                         monkeypatch):
    """A fabricated accuracy history (best at step 4 of 8): the final prefix is checkpoint-4's, not the last one."""
    from ptuning_v2 import train
    from ptuning_v2.trainer import LabelScoring

    scripted = iter([50.0, 90.0, 60.0, 70.0, 90.0])  # evaluations at steps 2, 4, 6, 8, then the final evaluate()
    monkeypatch.setattr(LabelScoring, "accuracy", lambda self, model: next(scripted))
    out = tmp_path / "best"
    train.main(["--model_name_or_path", str(tiny_base_dir), "--train_file", str(data_file),
                "--validation_file", str(data_file), "--prompt_column", "content", "--response_column", "summary",
                "--prompt_template", "plain", "--pre_seq_len", "4", "--output_dir", str(out), "--max_steps", "8",
                "--save_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "3e-2",
                "--use_cpu", "--report_to", "none", "--seed", "7"])

    from safetensors.torch import load_file

    final = load_file(out / WEIGHTS_NAME)
    assert torch.equal(final["embedding.weight"], load_file(out / "checkpoint-4" / WEIGHTS_NAME)["embedding.weight"])
    assert not torch.equal(final["embedding.weight"], load_file(out / "checkpoint-8" / WEIGHTS_NAME)["embedding.weight"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_global_step"] == 4 and state["best_metric"] == 90.0
    assert [e["eval_accuracy"] for e in state["log_history"] if "eval_accuracy" in e][:4] == [50.0, 90.0, 60.0, 70.0]


def test_validation_accuracy_is_label_scoring_on_the_validation_prompts(tiny_base_dir, data_file, tmp_path):
    """Not fabricated: the logged eval_accuracy equals evaluate's label-scoring accuracy of that checkpoint."""
    out = tmp_path / "scored"
    log = run_train(tiny_base_dir, data_file, out, max_steps=2, extra=["--prefix_init_text", "好不好"])
    assert "validation: accuracy by label scoring over 坏, 好" in log
    assert "prefix initialized from the base's keys/values of 4 tokens" in log
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [e["eval_accuracy"] for e in history if "eval_accuracy" in e and e["step"] == 2][0]

    from ptuning_v2 import evaluate

    metrics = evaluate.main(["--checkpoint", str(out / "checkpoint-2"), "--test_file", str(data_file),
                             "--max_new_tokens", "2", "--output_dir", str(tmp_path / "eval")])
    assert metrics["label_scoring_accuracy"] == logged


@pytest.mark.parametrize("method_flags", [["--method", "prompt_tuning", "--prompt_init", "vocab"],
                                          ["--method", "ptuning_v1", "--prompt_encoder_type", "lstm"]])
def test_each_method_trains_resumes_and_continues_from_its_recorded_method(tiny_base_dir, data_file, tmp_path,
                                                                          method_flags):
    method = method_flags[1]
    out = tmp_path / "run"
    log = run_train(tiny_base_dir, data_file, out, max_steps=2, extra=method_flags)
    assert json.loads((out / CONFIG_NAME).read_text())["method"] == method
    assert "trainable params:" in log
    # Resume and continued training take the method from the checkpoint: no --method on these command lines.
    log = run_train(tiny_base_dir, data_file, out, max_steps=4)
    assert f"resuming from {out / 'checkpoint-2'}" in log
    second = tmp_path / "second"
    run_train(tiny_base_dir, data_file, second, max_steps=2, extra=["--ptuning_checkpoint", str(out)])
    for run_dir in (out, second):
        model, tokenizer, config = load_prefix_model(run_dir)
        assert config["method"] == method and model.method.name == method


def test_a_flag_of_another_method_stops_training_with_its_name(tiny_base_dir, data_file, tmp_path):
    cmd = [sys.executable, "-m", "ptuning_v2.train", "--model_name_or_path", str(tiny_base_dir), "--train_file",
           str(data_file), "--output_dir", str(tmp_path / "x"), "--method", "prompt_tuning", "--prefix_projection",
           "--use_cpu", "--report_to", "none"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert "--prefix_projection applies to --method ptuning_v2, not to --method prompt_tuning" in result.stderr
    assert "Traceback" not in result.stderr

"""Every failure named in one line, nothing half-written used, non-finite training stopped (issue 11)."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import save_file

from ptuning_v2.checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, NonFiniteWeightsError, export_projected,
                                   load_prefix_model, save_prefix_checkpoint, sha256_file)
from ptuning_v2.cli import run
from ptuning_v2.data import Columns, DataFormatError, build_training_features, get_template, load_examples
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
from ptuning_v2.quantization import BaseModelSpec, ModelPathError, load_base_model, looks_local
from tiny_models import tiny_tokenizer

PAIRS = [("这个好不好", "好"), ("这个坏不坏", "坏"), ("天好不好", "好"), ("水坏不坏", "坏"),
         ("山好不好", "好"), ("火坏不坏", "坏"), ("月好不好", "好"), ("日坏不坏", "坏")]


def training_argv(base_dir, tmp_path, output_dir) -> list[str]:
    """A tiny training run's flags on PAIRS (written to tmp_path/train.jsonl): checkpoints every 2 steps."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"content": q, "summary": a}, ensure_ascii=False) + "\n" for q, a in PAIRS),
                    encoding="utf-8")
    return ["--model_name_or_path", str(base_dir), "--train_file", str(data), "--prompt_template", "plain",
            "--pre_seq_len", "2", "--output_dir", str(output_dir), "--save_steps", "2",
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--use_cpu", "--report_to", "none"]


def one_line_error(capsys, main):
    """What an entry point prints for ``main``'s failure: exit status 2 and a single `error: ...` line, no traceback
    (progress bars of a model loaded before the failure may come first)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main)
    err = capsys.readouterr().err
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert exit_info.value.code == 2 and last.startswith("error: ") and "Traceback" not in err, err
    return last


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


# 1. A GBK line in a UTF-8 JSON lines file -------------------------------------------------------------------------
def test_gbk_line_names_file_line_byte_offset_and_iconv(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    first = json.dumps({"content": "好", "summary": "好"}, ensure_ascii=False) + "\n"
    second = json.dumps({"content": "你好", "summary": "好"}, ensure_ascii=False) + "\n"
    path.write_bytes(first.encode("utf-8") + second.encode("gbk"))
    with pytest.raises(DataFormatError) as err:
        load_examples(path, Columns())
    offset = len(first.encode("utf-8")) + len('{"content": "')
    message = str(err.value)
    assert f"{path}, line 2 (byte offset {offset} in the file): not UTF-8" in message
    assert "probably GBK" in message and f"iconv -f GBK -t UTF-8 {path} > {tmp_path / 'train.utf8.jsonl'}" in message
    one_line_error(capsys, lambda: load_examples(path, Columns()))


# 2. A truncated weights file --------------------------------------------------------------------------------------
def test_truncated_weights_name_the_file_and_the_other_checkpoints(tiny_checkpoint, tmp_path, capsys):
    good = copy_checkpoint(tiny_checkpoint, tmp_path / "run" / "checkpoint-2")
    bad = copy_checkpoint(tiny_checkpoint, tmp_path / "run" / "checkpoint-4")
    weights = bad / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    with pytest.raises(CheckpointError) as err:
        load_prefix_model(bad)
    message = str(err.value)
    assert f"{weights}: damaged, probably truncated" in message and f"use another checkpoint: {good}" in message
    one_line_error(capsys, lambda: load_prefix_model(bad))


# 3. A base model that moved ---------------------------------------------------------------------------------------
def test_moved_base_names_the_field_and_the_override_without_a_hub_lookup(tiny_checkpoint, tiny_base_dir, tmp_path,
                                                                         monkeypatch, capsys):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / CONFIG_NAME).read_text(encoding="utf-8"))
    moved = tmp_path / "models" / "tiny_glm"
    config["base_model"]["model_name_or_path"] = str(moved)
    (ckpt / CONFIG_NAME).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")

    import huggingface_hub
    import transformers

    def no_hub(*args, **kwargs):
        raise AssertionError(f"looked up {args} {kwargs}")

    with monkeypatch.context() as m:  # nothing may reach from_pretrained, let alone the Hub
        for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
            m.setattr(cls, "from_pretrained", no_hub)
        m.setattr(huggingface_hub, "hf_hub_download", no_hub)
        with pytest.raises(CheckpointError) as err:
            load_prefix_model(ckpt)
        message = str(err.value)
        assert f"{ckpt / CONFIG_NAME}: field base_model.model_name_or_path is {moved}, which does not exist" in message
        assert "--model_name_or_path for evaluate and train, --model for chat" in message
        from ptuning_v2 import evaluate

        one_line_error(capsys, lambda: evaluate.main(["--checkpoint", str(ckpt)]))
        base_only = one_line_error(capsys, lambda: evaluate.main(["--checkpoint", str(ckpt), "--base_only"]))
        assert "field base_model.model_name_or_path" in base_only  # the zero-shot baseline names it too
        with pytest.raises(ModelPathError, match="base model directory not found: ./no/such/base"):
            load_base_model(BaseModelSpec("./no/such/base"))
        with pytest.raises(ModelPathError, match=f"base model directory not found: {moved}"):
            load_prefix_model(ckpt, model_name_or_path=str(moved))

    model, _, _ = load_prefix_model(ckpt, model_name_or_path=str(tiny_base_dir))  # the override works
    assert model.base_spec.model_name_or_path == str(tiny_base_dir)
    assert [p for p in ("/abs", "./a", "../a", "~/a", "a/b/c", "data/base model") if not looks_local(p)] == []
    assert [p for p in ("THUDM/chatglm3-6b", "data/base_model", "gpt2") if looks_local(p)] == []


# 4. The weights' checksum -----------------------------------------------------------------------------------------
def test_swapped_weights_fail_the_checksum_and_old_checkpoints_still_load(tiny_checkpoint, tmp_path, capsys):
    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    config = json.loads((ckpt / CONFIG_NAME).read_text(encoding="utf-8"))
    assert config["weights_sha256"] == sha256_file(ckpt / WEIGHTS_NAME)
    from safetensors.torch import load_file

    tensors = load_file(ckpt / WEIGHTS_NAME)
    save_file({k: v + 1 for k, v in tensors.items()}, ckpt / WEIGHTS_NAME, metadata={"format": "pt"})  # same shapes
    with pytest.raises(CheckpointError, match=r"prefix_model.safetensors: sha256 is [0-9a-f]{64}, but "
                                              r"prefix_config.json recorded weights_sha256 " + config["weights_sha256"]):
        load_prefix_model(ckpt)
    one_line_error(capsys, lambda: load_prefix_model(ckpt))

    del config["weights_sha256"]  # written before the field existed
    (ckpt / CONFIG_NAME).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    model, _, _ = load_prefix_model(ckpt)
    assert torch.equal(model.prefix_encoder.embedding.weight, tensors["embedding.weight"] + 1)


def test_projected_export_records_its_checksum(tiny_base_dir, tmp_path):
    base, spec = load_base_model(BaseModelSpec(str(tiny_base_dir)))
    model = PrefixModel(base, encoder_config_for(base.config, 2, prefix_projection=True, prefix_hidden_size=8),
                        base_spec=spec)
    save_prefix_checkpoint(model, tmp_path / "mlp")
    export_projected(tmp_path / "mlp", tmp_path / "flat")
    config = json.loads((tmp_path / "flat" / CONFIG_NAME).read_text(encoding="utf-8"))
    assert config["weights_sha256"] == sha256_file(tmp_path / "flat" / WEIGHTS_NAME)
    assert config["weights_sha256"] != json.loads((tmp_path / "mlp" / CONFIG_NAME).read_text())["weights_sha256"]


# 5. NaN/inf in a prefix -------------------------------------------------------------------------------------------
def test_nan_prefix_is_refused_at_save_and_at_load(tiny_checkpoint, tmp_path, capsys):
    model, _, _ = load_prefix_model(tiny_checkpoint)
    with torch.no_grad():
        model.prefix_encoder.embedding.weight[0, 0] = float("nan")
        model.prefix_encoder.embedding.weight[1, 0] = float("inf")
    with pytest.raises(NonFiniteWeightsError, match=r"refusing to save .* embedding.weight \(2 of 192 values NaN/inf\)"):
        save_prefix_checkpoint(model, tmp_path / "nan")
    assert not (tmp_path / "nan").exists()

    ckpt = copy_checkpoint(tiny_checkpoint, tmp_path / "ckpt")
    save_file({"embedding.weight": model.prefix_encoder.embedding.weight.detach()}, ckpt / WEIGHTS_NAME)
    config = json.loads((ckpt / CONFIG_NAME).read_text(encoding="utf-8"))
    config["weights_sha256"] = sha256_file(ckpt / WEIGHTS_NAME)  # the file is intact, its numbers are not
    (ckpt / CONFIG_NAME).write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(NonFiniteWeightsError, match=r"prefix_model.safetensors: the prefix holds NaN/inf: embedding.weight"):
        load_prefix_model(ckpt)
    one_line_error(capsys, lambda: load_prefix_model(ckpt))


# 6. Non-finite training steps -------------------------------------------------------------------------------------
def guarded_run(base_dir, output_dir, bad_steps, max_steps, max_nonfinite_steps=3, save_steps=None):
    """A tiny PrefixTrainer run whose loss is NaN at ``bad_steps``; returns the prefix after every step and the
    trainer."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments, TrainerCallback

    from ptuning_v2.data import Example
    from ptuning_v2.trainer import PrefixTrainer

    class PoisonedLoss(PrefixTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return loss * float("nan") if self.state.global_step + 1 in bad_steps else loss

    class Record(TrainerCallback):
        def __init__(self):
            self.prefixes = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.prefixes[state.global_step] = model.prefix_encoder.embedding.weight.detach().clone()

    base, spec = load_base_model(BaseModelSpec(str(base_dir)))
    torch.manual_seed(0)
    model = PrefixModel(base, encoder_config_for(base.config, 2, prefix_dropout=0.0), base_spec=spec)
    tok = tiny_tokenizer()
    features = [build_training_features(Example(q, a), tok, get_template("plain"), 16, 4) for q, a in PAIRS]
    args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, use_cpu=True, report_to="none", save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, seed=0)
    record = Record()
    trainer = PoisonedLoss(model=model, args=args, train_dataset=features, processing_class=tok,
                           data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
                           callbacks=[record], max_nonfinite_steps=max_nonfinite_steps)
    record.prefixes[0] = model.prefix_encoder.embedding.weight.detach().clone()
    trainer.train()
    return record.prefixes, trainer


def test_nonfinite_step_is_skipped_and_logged(tiny_base_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ptuning_v2.trainer"):
        prefixes, trainer = guarded_run(tiny_base_dir, tmp_path / "skip", bad_steps={2}, max_steps=4)
    assert "step 2: non-finite loss and gradient (NaN/inf); the update is skipped (1 such step(s) in a row)" in caplog.text
    assert torch.equal(prefixes[2], prefixes[1]) and not torch.equal(prefixes[1], prefixes[0])  # step 2 did nothing
    assert not torch.equal(prefixes[3], prefixes[2]) and torch.isfinite(prefixes[4]).all()
    adam = trainer.optimizer.state[trainer.model.prefix_encoder.embedding.weight]
    assert int(adam["step"]) == 3  # Adam never saw step 2 (no momentum step either)


def test_nonfinite_steps_in_a_row_stop_the_run_naming_the_step(tiny_base_dir, tmp_path, capsys):
    from ptuning_v2.trainer import NonFiniteTrainingError

    out = tmp_path / "stop"
    with pytest.raises(NonFiniteTrainingError) as err:
        guarded_run(tiny_base_dir, out, bad_steps=set(range(2, 10)), max_steps=8, save_steps=1)
    message = str(err.value)
    assert "training stopped at step 4: 3 optimizer step(s) in a row (steps 2-4) had a non-finite loss" in message
    assert "lower --learning_rate (this run: 0.01)" in message and "bf16" in message
    assert f"The last checkpoint kept: {out / 'checkpoint-3'}" in message  # skipped steps left the prefix finite
    assert not (out / "checkpoint-4").exists()

    def stopped():
        raise err.value

    one_line_error(capsys, stopped)


def test_max_nonfinite_steps_is_a_flag(tmp_path):
    from ptuning_v2.train import parse_args

    _, prefix_args, _, _ = parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path),
                                       "--max_nonfinite_steps", "5", "--use_cpu"])
    assert prefix_args.max_nonfinite_steps == 5


# 7. A checkpoint a killed run left half-written ------------------------------------------------------------------
def test_resume_skips_incomplete_checkpoints(tiny_base_dir, tmp_path, capsys):
    from ptuning_v2 import train

    out = tmp_path / "run"
    argv = training_argv(tiny_base_dir, tmp_path, out) + ["--max_source_length", "16", "--max_target_length", "4",
                                                          "--plot_loss", "False"]
    train.main(argv + ["--max_steps", "4"])
    # Killed while writing checkpoint-4's Trainer files: the prefix files are there, trainer_state.json is not.
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    # Killed while copying a later checkpoint: a cut-off weights file.
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-6")
    weights = out / "checkpoint-6" / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-7])
    capsys.readouterr()

    train.main(argv + ["--max_steps", "8"])
    log = capsys.readouterr().out
    assert f"skipping incomplete checkpoint {out / 'checkpoint-6'}: {weights}: damaged, probably truncated" in log
    assert f"skipping incomplete checkpoint {out / 'checkpoint-4'}: trainer_state.json is missing" in log
    assert f"resuming from {out / 'checkpoint-2'}" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 8  # steps 1-2 from checkpoint-2, then 3-8 once each:
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, 9))
    for step in (4, 6, 8):  # rewritten whole by the resumed run
        load_prefix_model(out / f"checkpoint-{step}")
        assert (out / f"checkpoint-{step}" / "trainer_state.json").is_file()


# 7b. A real training process killed with SIGKILL while it writes checkpoint-4/ ------------------------------------
# The child runs ptuning_v2.train with one Trainer save stage slowed down (the stock method, wrapped: it prints a
# marker, then sleeps), so the kill lands inside that stage of a real save, at a known point.
KILLED_CHILD = r"""
import sys, time
from transformers import Trainer
stage = sys.argv[1]
original = getattr(Trainer, stage)
def slowed(self, *args, **kwargs):
    if self.state.global_step == 4:
        print("SAVING", stage, flush=True)
        time.sleep(60)
    return original(self, *args, **kwargs)
setattr(Trainer, stage, slowed)
from ptuning_v2.train import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("stage", ["_save_optimizer_and_scheduler", "_save_rng_state"])
def test_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(tiny_base_dir, tmp_path, stage):
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "run"
    argv = training_argv(tiny_base_dir, tmp_path, out) + ["--max_steps", "6"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, stage, *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in child.stdout:
            if "SAVING" in line:  # a progress bar may share the line
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    # What the kill left: checkpoint-4/ exists, with the prefix files but not the Trainer's state.
    assert (out / "checkpoint-4" / WEIGHTS_NAME).is_file() and not (out / "checkpoint-4" / "trainer_state.json").exists()

    rerun = subprocess.run([sys.executable, "-m", "ptuning_v2.train", *argv], capture_output=True, text=True, env=env,
                           timeout=300)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "checkpoint-4" in log and f"resuming from {out / 'checkpoint-2'}" in log
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    logged_steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert logged_steps == [1, 2, 3, 4, 5, 6]  # steps 3-4 were redone from checkpoint-2, not skipped or doubled
    load_prefix_model(out)  # the final prefix verifies (checksum, finite)

"""DeepSpeed ZeRO-2/3 with two CPU processes over gloo (torchrun on 127.0.0.1), on the tiny saved GLM.

Each DeepSpeed run (2 processes x batch 2) is compared with one plain process with batch 4, same seed and no
dropout: the global batches are the same examples (the sampler's order is split between the ranks), so the
losses and the trained prefix may differ only by float32 rounding of the gradient all-reduce and the batch split.
Tolerances: losses rel 1e-5, weights abs 1e-5 (observed: ~1e-7 and ~4e-7); a rank whose examples were lost or
a partition that was not gathered differs by more than 1e-2.

pre_seq_len 8 gives a prefix of 8 x 64 = 512 values, above ZeRO-3's persistence threshold (10 x hidden = 320),
so under ZeRO-3 the prefix really is partitioned and saving must gather it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptuning_v2.checkpoint import WEIGHTS_NAME, load_prefix_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PAIRS = [("这个好不好", "好"), ("这个坏不坏", "坏"), ("天好不好", "好"), ("水坏不坏", "坏"),
         ("山好不好", "好"), ("火坏不坏", "坏"), ("月好不好", "好"), ("日坏不坏", "坏")]
LOSS_REL, WEIGHT_ATOL = 1e-5, 1e-5
COMPILE_MARKERS = ("built successfully", "Building extension", "ninja", "Time to load")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(base_dir, data_file, output_dir, *, procs, batch, extra=(), ds_config=None, ext_dir=None):
    """Returns the combined log; with procs > 1 also each rank's own stdout (torchrun --tee)."""
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port()), "--log-dir", str(output_dir) + "-logs", "--tee", "3"]
    cmd = [*launcher, "-m", "ptuning_v2.train",
           "--model_name_or_path", str(base_dir), "--train_file", str(data_file),
           "--prompt_column", "content", "--response_column", "summary", "--prompt_template", "plain",
           "--max_source_length", "16", "--max_target_length", "4", "--pre_seq_len", "8", "--prefix_dropout", "0",
           "--output_dir", str(output_dir), "--max_steps", "4", "--save_steps", "2",
           "--per_device_train_batch_size", str(batch), "--learning_rate", "3e-2", "--logging_steps", "1",
           "--use_cpu", "--report_to", "none", "--seed", "7", "--plot_loss", "false", *extra]
    if ds_config:
        cmd += ["--deepspeed", str(REPO / "ds_configs" / ds_config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    if ext_dir is not None:
        env["TORCH_EXTENSIONS_DIR"] = str(ext_dir)  # where DeepSpeed would JIT-compile an op
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=400)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    rank_logs = [p.read_text() for p in sorted(Path(str(output_dir) + "-logs").glob("*/attempt_0/*/stdout.log"))]
    return log, rank_logs


def losses(output_dir):
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [e["loss"] for e in history if "loss" in e]


def assert_nothing_compiled(log, ext_dir):
    assert not Path(ext_dir).exists(), f"DeepSpeed compiled an op into {ext_dir}: {sorted(Path(ext_dir).iterdir())}"
    found = [m for m in COMPILE_MARKERS if m in log]
    assert not found, f"compile messages in the log: {found}"


def rank_exp_avg(checkpoint, rank):
    """Adam's first moment for this rank's partition of the flat prefix (DeepSpeed 0.19's ZeRO-2/3 file layout)."""
    step = checkpoint.name.split("-")[-1]
    path = checkpoint / f"global_step{step}" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
    state = torch.load(path, weights_only=False, map_location="cpu")["optimizer_state_dict"]
    inner = state.get("base_optimizer_state") or state["optimizer_state_dict"]
    return inner["state"][0]["exp_avg"]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds_data") / "train.jsonl"
    path.write_text("".join(json.dumps({"content": q, "summary": a}, ensure_ascii=False) + "\n" for q, a in PAIRS),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def single_process(tiny_base_dir, data_file, tmp_path_factory):
    """The reference: one plain process (no DeepSpeed), batch 4."""
    out = tmp_path_factory.mktemp("ds_single") / "run"
    run_train(tiny_base_dir, data_file, out, procs=1, batch=4)
    return out


@pytest.mark.parametrize("ds_config", ["zero2.json", "zero3.json"])
def test_two_processes_match_one_and_resume(ds_config, tiny_base_dir, data_file, single_process, tmp_path):
    out, ext = tmp_path / "run", tmp_path / "torch_extensions"
    log, rank_logs = run_train(tiny_base_dir, data_file, out, procs=2, batch=2, ds_config=ds_config, ext_dir=ext)
    assert_nothing_compiled(log, ext)

    # Both ranks ran the script, and each one trained its own half of the prefix's optimizer state.
    assert len(rank_logs) == 2 and all("train examples: 8" in r and "trainable params" in r for r in rank_logs)
    reference = torch.load(single_process / "checkpoint-2" / "optimizer.pt", weights_only=True)["state"][0]["exp_avg"]
    halves = [rank_exp_avg(out / "checkpoint-2", rank) for rank in (0, 1)]
    assert [h.numel() for h in halves] == [reference.numel() // 2] * 2
    torch.testing.assert_close(torch.cat(halves), reference.flatten(), rtol=1e-4, atol=WEIGHT_ATOL)

    # Same losses as one process with the same global batch; the loss goes down.
    assert losses(out) == pytest.approx(losses(single_process), rel=LOSS_REL)
    assert losses(out)[-1] < losses(out)[0]

    # The saved prefix is whole (ZeRO-3 gathers it) and equals the single-process one.
    for sub in ("checkpoint-2", "checkpoint-4", "."):
        ours, ref = load_file(out / sub / WEIGHTS_NAME), load_file(single_process / sub / WEIGHTS_NAME)
        assert ours.keys() == ref.keys()
        for key in ref:
            torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=WEIGHT_ATOL)
    # DeepSpeed's resume files hold the prefix only, never a copy of the frozen base.
    state_files = list((out / "checkpoint-2" / "global_step2").glob("*model_states.pt"))
    assert state_files and all(f.stat().st_size < 20_000 for f in state_files), [f.stat().st_size for f in state_files]

    model, tokenizer, _ = load_prefix_model(out)
    ids = torch.tensor([tokenizer.encode("这个好不好")])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    # Resume from checkpoint-2 through DeepSpeed's own loading: the same final prefix as the uninterrupted run.
    final = load_file(out / WEIGHTS_NAME)
    shutil.rmtree(out / "checkpoint-4")
    (out / WEIGHTS_NAME).unlink()
    (out / "trainer_state.json").unlink()
    log, _ = run_train(tiny_base_dir, data_file, out, procs=2, batch=2, ds_config=ds_config, ext_dir=ext)
    assert f"resuming from {out / 'checkpoint-2'}" in log
    assert_nothing_compiled(log, ext)
    resumed = load_file(out / WEIGHTS_NAME)
    for key in final:
        torch.testing.assert_close(resumed[key], final[key], rtol=0, atol=1e-6)
    assert losses(out)[2:] == pytest.approx(losses(single_process)[2:], rel=LOSS_REL)


def test_full_finetune_zero3_matches_one_process(tiny_base_dir, data_file, tmp_path):
    """--full_finetune: the whole base trains and is saved with save_pretrained; ZeRO-3 gathers it to save."""
    from transformers import AutoModelForCausalLM

    single, ds, ext = tmp_path / "single", tmp_path / "zero3", tmp_path / "torch_extensions"
    flags = ["--full_finetune", "--learning_rate", "1e-3", "--save_steps", "100"]
    run_train(tiny_base_dir, data_file, single, procs=1, batch=4, extra=flags)
    log, _ = run_train(tiny_base_dir, data_file, ds, procs=2, batch=2, extra=flags, ds_config="zero3.json",
                       ext_dir=ext)
    assert_nothing_compiled(log, ext)
    assert "trainable params: 24,864 || all params: 24,864" in log
    assert "fine-tuned model:" in log
    assert losses(ds) == pytest.approx(losses(single), rel=LOSS_REL)
    assert not (ds / WEIGHTS_NAME).exists()

    base, ours, ref = (load_file(d / "model.safetensors") for d in (tiny_base_dir, ds, single))
    assert ours.keys() == ref.keys() == base.keys()
    assert any(not torch.equal(ref[k], base[k]) for k in ref)  # the base's own weights were trained
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=WEIGHT_ATOL)
    model = AutoModelForCausalLM.from_pretrained(ds)
    assert model.config.model_type == "glm"


@pytest.mark.parametrize("method_flags", [["--method", "prompt_tuning"], ["--method", "ptuning_v1"]])
def test_input_level_methods_under_zero3_match_one_process(method_flags, tiny_base_dir, data_file, tmp_path):
    """Prompt tuning and P-tuning v1 run the frozen base once more per step (on the soft prompt); under ZeRO-3 that
    forward gathers the partitioned base like the main one, and the result equals one plain process."""
    single, ds = tmp_path / "single", tmp_path / "ds"
    run_train(tiny_base_dir, data_file, single, procs=1, batch=4, extra=method_flags)
    run_train(tiny_base_dir, data_file, ds, procs=2, batch=2, extra=method_flags, ds_config="zero3.json",
              ext_dir=tmp_path / "ext")
    assert losses(ds) == pytest.approx(losses(single), rel=LOSS_REL)
    assert losses(ds)[-1] < losses(ds)[0]
    ours, ref = load_file(ds / WEIGHTS_NAME), load_file(single / WEIGHTS_NAME)
    assert ours.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=WEIGHT_ATOL)
    model, _, config = load_prefix_model(ds)
    assert config["method"] == method_flags[1] == model.method.name

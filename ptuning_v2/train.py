"""Train a P-tuning v2 prefix: ``python -m ptuning_v2.train --model_name_or_path ... --train_file ... [Trainer flags]``.

Loads the frozen base (optionally int8/int4), wraps it in a PrefixModel, tokenizes the data, and runs the
PrefixTrainer. Checkpoints go to ``--output_dir/checkpoint-N/``; the final prefix to ``--output_dir``. A run
whose output_dir already holds checkpoints resumes from the newest one.

``--full_finetune`` is the baseline to compare against: the base itself is trained by a stock Seq2SeqTrainer and
saved with save_pretrained (no prefix). ``--deepspeed CONFIG`` works for both (see ds_configs/).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import torch
import transformers
from transformers import DataCollatorForSeq2Seq, HfArgumentParser, Seq2SeqTrainingArguments, set_seed
from transformers.trainer_utils import IntervalStrategy

from ptuning_v2.arguments import DataArguments, ModelArguments, PrefixArguments
from ptuning_v2.cli import run
from ptuning_v2.checkpoint import (CheckpointError, checkpoint_problem, encoder_config_from, last_complete_checkpoint,
                                   load_prefix_weights, read_checkpoint_config)
from ptuning_v2.data import (IGNORE_INDEX, Columns, DataFormatError, build_training_features, get_template,
                             load_examples)
from ptuning_v2.metrics import classification_labels
from ptuning_v2.plotting import plot_loss
from ptuning_v2.methods import check_flags_apply, get_method
from ptuning_v2.prefix_model import PrefixModel
from ptuning_v2.quantization import BaseModelSpec, load_base_model, load_tokenizer, resolve_model_path
from ptuning_v2.trainer import LabelScoring, PrefixTrainer, ScoredSeq2SeqTrainer

logger = logging.getLogger("ptuning_v2.train")


def skip_deepspeed_cpu_comm_op() -> None:
    """Keep DeepSpeed on the CPU from JIT-compiling its shared-memory all-reduce op (about 50 s, with ninja).

    DeepSpeed's communication backend builds that op when it starts, if the op is marked compatible. Only its
    inference all-reduce uses it; training reduces through the gloo process group. DeepSpeed keeps the
    compatibility table in one editable dict (``deepspeed.ops.__compatible_ops__``): marking the op incompatible
    makes the backend skip it. On CUDA there is no such op and nothing changes.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def check_processes(training_args) -> None:
    """Several processes (torchrun, the deepspeed launcher) must form one training run, not N separate ones.

    On a machine without GPUs, accelerate forms the process group only with --use_cpu; without it every process
    would silently train alone. With --use_cpu it starts a gloo group but not DeepSpeed's communication layer,
    which ZeRO-3 needs before the model loads (zero.Init partitions the weights as they are read).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size != launched:
        raise SystemExit(f"error: launched as {launched} processes but the Trainer sees {training_args.world_size}; "
                         "on a machine without GPUs add --use_cpu (train.sh does)")
    if training_args.deepspeed and torch.distributed.is_initialized():
        import deepspeed

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())


def finish_processes() -> None:
    """Every rank waits for the others, then the process group is torn down before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads are sometimes destroyed while still joinable, and that
    rank dies with SIGABRT ("terminate called without an active exception") after its work was done.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def parse_args(argv=None):
    parser = HfArgumentParser((ModelArguments, PrefixArguments, DataArguments, Seq2SeqTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    json_file = os.path.abspath(argv[0]) if len(argv) == 1 and argv[0].endswith(".json") else None
    if json_file:
        with open(json_file, encoding="utf-8") as f:
            uses_deepspeed = bool(json.load(f).get("deepspeed"))
    else:
        uses_deepspeed = any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in argv)
    if uses_deepspeed:
        # Before the TrainingArguments are built: with a DeepSpeed config they start the process group.
        skip_deepspeed_cpu_comm_op()
    if json_file:
        return parser.parse_json_file(json_file=json_file)
    return parser.parse_args_into_dataclasses(args=argv)


def prompt_settings(data_args: DataArguments) -> dict:
    """What chat/evaluate need to format prompts exactly as training did; stored in every checkpoint."""
    return {
        "template": get_template(data_args.prompt_template).to_dict(),
        "source_prefix": data_args.source_prefix,
        "max_source_length": data_args.max_source_length,
        "max_target_length": data_args.max_target_length,
        "test_file": os.path.abspath(data_args.test_file) if data_args.test_file else None,
        # evaluate --num_shots draws its in-context demonstrations from here
        "train_file": os.path.abspath(data_args.train_file) if data_args.train_file else None,
        "columns": {"prompt": data_args.prompt_column, "response": data_args.response_column,
                    "history": data_args.history_column, "input": data_args.input_column},
    }


def columns_from(data_args: DataArguments) -> Columns:
    return Columns(prompt=data_args.prompt_column, response=data_args.response_column,
                   history=data_args.history_column, input=data_args.input_column)


def tokenize_examples(examples, tokenizer, data_args: DataArguments) -> list[dict]:
    template = get_template(data_args.prompt_template)
    return [
        build_training_features(ex, tokenizer, template, data_args.max_source_length, data_args.max_target_length,
                                data_args.source_prefix)
        for ex in examples
    ]


def label_scoring_for(examples, features, tokenizer, data_args: DataArguments, batch_size: int) -> LabelScoring | None:
    """Validation by label scoring when the answers are a label set (--label_words, or detected); else None.

    ``features``: the examples' training features; a prompt is a feature's input_ids before its first label."""
    references = [ex.response for ex in examples]
    labels = data_args.label_words.split(",") if data_args.label_words else classification_labels(references)
    if not labels:
        return None
    unknown = sorted(set(references) - set(labels))
    if unknown:
        raise DataFormatError(f"{data_args.validation_file}: answers outside --label_words: {', '.join(unknown[:5])}")
    prompts = [f["input_ids"][:f["labels"].count(IGNORE_INDEX)] for f in features]
    candidates = [tokenizer.encode(label, add_special_tokens=False) for label in labels]
    print(f"validation: accuracy by label scoring over {', '.join(labels)}")
    return LabelScoring(tokenizer, prompts, candidates, [labels.index(r) for r in references], batch_size)


def evaluate_during_training(training_args, argv: list[str], classification: bool) -> None:
    """Evaluate at every checkpoint and keep the best as the final model, unless the user chose otherwise.

    Set on the parsed arguments (not as flags) because the metric depends on the validation data: accuracy by
    label scoring for classification, loss otherwise. eval_steps = save_steps so every checkpoint has a score.
    """
    if any(a.startswith(("--eval_strategy", "--evaluation_strategy")) for a in argv):
        return
    training_args.eval_strategy = IntervalStrategy.STEPS
    training_args.do_eval = True
    training_args.eval_steps = training_args.save_steps
    training_args.load_best_model_at_end = True
    training_args.metric_for_best_model = "accuracy" if classification else "loss"
    training_args.greater_is_better = classification


def build_model(model_args: ModelArguments, prefix_args: PrefixArguments, data_args: DataArguments, tokenizer,
                resume_checkpoint: str | None = None, device: torch.device | None = None,
                seed: int = 42) -> PrefixModel:
    """Base + the method's encoder. A checkpoint to resume or continue from decides the method and its shape, not
    the flags.

    ``device``: this process's device (each rank's own GPU when several processes train).
    """
    method = get_method(prefix_args.method)
    check_flags_apply(method, prefix_args)
    spec = BaseModelSpec(
        model_name_or_path=model_args.model_name_or_path,
        torch_dtype=model_args.torch_dtype,
        quantization_bit=model_args.quantization_bit,
        quant_type=model_args.quant_type,
        double_quant=model_args.double_quant,
        trust_remote_code=model_args.trust_remote_code,
    )
    base, spec = load_base_model(spec, device)
    base.config.use_cache = False
    shape_source = resume_checkpoint or model_args.ptuning_checkpoint
    if shape_source:
        # Its recorded shape wins: the user does not repeat the prefix flags.
        encoder_config = encoder_config_from(read_checkpoint_config(shape_source))
    else:
        encoder_config = method.config_from_args(base.config, prefix_args)
    model = PrefixModel(base, encoder_config, base_spec=spec, prompt_settings=prompt_settings(data_args))
    if model_args.ptuning_checkpoint:
        load_prefix_weights(model, model_args.ptuning_checkpoint)
    elif not resume_checkpoint:
        message = model.method.initialize(model, tokenizer, prefix_args, seed)
        if message:
            print(message)
    trainable, total = model.count_parameters()
    print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")
    return model


def build_full_model(model_args: ModelArguments, device: torch.device | None = None):
    """--full_finetune: the base model itself, every parameter trainable (the comparison baseline)."""
    if model_args.quantization_bit:
        raise SystemExit("error: --full_finetune trains the base's own weights and cannot load them quantized; "
                         "drop --quantization_bit")
    if model_args.ptuning_checkpoint:
        raise SystemExit("error: --full_finetune trains no prefix; drop --ptuning_checkpoint")
    # Trained weights need fp32 master copies: "auto" means fp32 here; --bf16/--fp16 add mixed precision.
    dtype = "float32" if model_args.torch_dtype == "auto" else model_args.torch_dtype
    base, _ = load_base_model(BaseModelSpec(model_args.model_name_or_path, torch_dtype=dtype,
                                            trust_remote_code=model_args.trust_remote_code), device)
    base.config.use_cache = False
    base.requires_grad_(True)
    # Under ZeRO-3 the weights are partitioned as they load; ds_numel is a parameter's full size.
    total = sum(getattr(p, "ds_numel", p.numel()) for p in base.parameters())
    print(f"trainable params: {total:,} || all params: {total:,} || trainable%: 100.0000 (full fine-tuning)")
    return base


def main(argv=None) -> str:
    model_args, prefix_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])
    transformers.utils.logging.set_verbosity_warning()
    if not data_args.train_file:
        raise SystemExit("error: --train_file is required")
    check_processes(training_args)
    argv = sys.argv[1:] if argv is None else argv
    if model_args.quantization_bit and not any(
        a.startswith(("--gradient_checkpointing", "--activation_checkpointing")) for a in argv
    ):
        # As in ChatGLM's recipe: a quantized base is for small GPUs, so checkpointing is on unless asked otherwise.
        training_args.activation_checkpointing = True
        print("gradient checkpointing: on (quantized base; pass --gradient_checkpointing False to turn it off)")
    set_seed(training_args.seed)

    # A missing local base directory is named here, before anything reads it (never looked up on the Hub).
    model_args.model_name_or_path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    columns = columns_from(data_args)
    train_features = tokenize_examples(load_examples(data_args.train_file, columns)[:data_args.max_train_samples],
                                       tokenizer, data_args)
    eval_features = label_scoring = None
    if data_args.validation_file:
        eval_examples = load_examples(data_args.validation_file, columns)[:data_args.max_eval_samples]
        eval_features = tokenize_examples(eval_examples, tokenizer, data_args)
        label_scoring = label_scoring_for(eval_examples, eval_features, tokenizer, data_args,
                                          training_args.per_device_eval_batch_size)
        evaluate_during_training(training_args, argv, classification=label_scoring is not None)
    print(f"train examples: {len(train_features)}" + (f", validation examples: {len(eval_features)}" if eval_features else ""))

    resume = training_args.resume_from_checkpoint
    has_prefix = not prefix_args.full_finetune
    if resume is None:
        # The newest checkpoint-N/ a killed run finished writing; newer, half-written ones are skipped (and printed).
        resume = last_complete_checkpoint(training_args.output_dir, prefix=has_prefix)
        if resume:
            print(f"resuming from {resume}")
    elif problem := checkpoint_problem(resume, prefix=has_prefix):
        raise CheckpointError(f"--resume_from_checkpoint {resume}: {problem}")
    if prefix_args.full_finetune:  # the baseline: the stock Trainer trains the base and saves it with save_pretrained
        model, trainer_class = build_full_model(model_args, training_args.device), ScoredSeq2SeqTrainer
    else:
        model = build_model(model_args, prefix_args, data_args, tokenizer, resume, training_args.device,
                            seed=training_args.seed)
        trainer_class = PrefixTrainer
    if not prefix_args.full_finetune:
        # Left padding puts every answer at the end of the batch, so the prefix model computes logits for only the
        # last few positions (see PrefixModel.forward); it numbers real tokens from 0 itself. The stock model in
        # --full_finetune would number left padding as positions, so it keeps right padding.
        tokenizer.padding_side = "left"
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_features,
        eval_dataset=eval_features,
        data_collator=collator,
        processing_class=tokenizer,
        label_scoring=label_scoring,
        max_nonfinite_steps=prefix_args.max_nonfinite_steps,
    )
    result = trainer.train(resume_from_checkpoint=resume)
    if trainer.state.best_model_checkpoint and training_args.load_best_model_at_end:
        print(f"best checkpoint: {trainer.state.best_model_checkpoint} "
              f"(eval_{training_args.metric_for_best_model} {trainer.state.best_metric}); it is the final model")
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    if eval_features is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if data_args.plot_loss and trainer.is_world_process_zero():
        png = plot_loss(trainer.state.log_history, os.path.join(training_args.output_dir, "loss_curve.png"),
                        best_step=trainer.state.best_global_step if training_args.load_best_model_at_end else None)
        if png:
            print(f"loss curve: {png}")
    if trainer.is_world_process_zero():
        kind = "fine-tuned model" if prefix_args.full_finetune else "prefix checkpoint"
        print(f"{kind}: {os.path.abspath(training_args.output_dir)}")
    finish_processes()
    return training_args.output_dir


if __name__ == "__main__":
    run(main)

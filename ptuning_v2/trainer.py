"""PrefixTrainer: HF Seq2SeqTrainer that saves and restores only the prefix.

Everything else (optimizer, schedule, accumulation, DeepSpeed, logging, progress bars, resume of optimizer and
RNG state) is the stock Trainer. Each ``checkpoint-N/`` gets prefix_config.json + prefix_model.safetensors
(see checkpoint.py), the tokenizer, and the Trainer's own resume files.

Under DeepSpeed the resume files are DeepSpeed's own checkpoint (``global_stepN/``), written without the frozen
base (``exclude_frozen_parameters``: the base is read from its own directory, never copied into checkpoints) and
read back non-strictly for the same reason. Under ZeRO-3 the prefix is partitioned across processes; it is
gathered whole before it is saved, which every process must join.

Evaluation during training: the stock loop reports ``eval_loss``; for a classification task a ``LabelScoring``
adds ``eval_accuracy`` (the label word with the highest log-likelihood after each validation prompt; one forward
per prompt, no generation), so ``metric_for_best_model="accuracy"`` keeps the best checkpoint by it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from transformers import Seq2SeqTrainer
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import SCHEDULER_NAME

from ptuning_v2.checkpoint import load_prefix_weights, save_prefix_checkpoint
from ptuning_v2.inference import InferenceSession, label_logprobs


@dataclass
class LabelScoring:
    """Validation prompts of a classification task and the index of each one's right label.

    prompts: token ids per example (the source only, formatted as in training); candidates: token ids of each of
    the K label words; answers: for each prompt, the index (0..K-1) of its label.
    """

    tokenizer: object
    prompts: list[list[int]]
    candidates: list[list[int]]
    answers: list[int]
    batch_size: int = 64

    @torch.no_grad()
    def accuracy(self, model) -> float:
        """Percentage of prompts whose right label scores highest; leaves the model's train/eval mode as it was."""
        was_training = model.training
        model.eval()
        session = InferenceSession(model=model, tokenizer=self.tokenizer, template=None)
        # Similar lengths together waste less padding; the order does not change the count.
        order = sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i]))
        correct = 0
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            picked = label_logprobs(session, [self.prompts[i] for i in chunk], self.candidates).argmax(-1)
            correct += sum(int(k) == self.answers[i] for i, k in zip(chunk, picked.tolist()))
        model.train(was_training)
        return round(100 * correct / len(self.prompts), 4)


class ScoredEvaluation:
    """Trainer mixin: the stock evaluation loop plus label-scoring accuracy (``label_scoring=``, optional)."""

    def __init__(self, *args, label_scoring: LabelScoring | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_scoring = label_scoring

    def _prefix_model(self):
        """The model without DDP/DeepSpeed wrappers: a PrefixModel, or the base itself under --full_finetune."""
        return self.accelerator.unwrap_model(self.model)

    def evaluation_loop(self, *args, **kwargs):
        """The stock loop (eval_loss), plus ``<prefix>_accuracy`` by label scoring for a classification task."""
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        if self.label_scoring is not None and prefix.startswith("eval"):  # not predict()'s "test" on other data
            output.metrics[f"{prefix}_accuracy"] = self.label_scoring.accuracy(self._prefix_model())
        return output


class ScoredSeq2SeqTrainer(ScoredEvaluation, Seq2SeqTrainer):
    """The stock trainer with label-scoring evaluation: the --full_finetune baseline."""


class PrefixTrainer(ScoredEvaluation, Seq2SeqTrainer):
    """Saves and restores only the prefix (and DeepSpeed state without the frozen base)."""

    def _whole_prefix(self):
        """A context in which the prefix encoder's parameters are whole on every process (ZeRO-3 gathers them)."""
        if not self.is_deepspeed_enabled:
            return contextlib.nullcontext()
        import deepspeed

        # A no-op for parameters that are not partitioned (ZeRO-0/1/2); a collective under ZeRO-3.
        return deepspeed.zero.GatheredParameters(list(self._prefix_model().prefix_encoder.parameters()))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        with self._whole_prefix():  # every process enters; only the main one writes
            if not self.args.should_save:
                return
            save_prefix_checkpoint(self._prefix_model(), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_prefix_weights(model or self._prefix_model(), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            # Restores the engine's prefix and its optimizer copy together (what saving reads under ZeRO).
            deepspeed_load_checkpoint(self.model_wrapped, self.state.best_model_checkpoint, load_module_strict=False)
        else:
            load_prefix_weights(self._prefix_model(), self.state.best_model_checkpoint)

    # -- DeepSpeed resume files without the frozen base ---------------------------------------------------------
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not self.is_deepspeed_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # Stock: engine.save_checkpoint(output_dir), which stores the whole module (base included, and under ZeRO-2/3
        # the frozen weights a second time as fragments). Every process joins; each writes its own partition.
        self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        if self.args.should_save and not _is_deepspeed_scheduler(self.lr_scheduler):
            # The Trainer's own schedule (the ds_configs have no "scheduler" block), saved as the stock Trainer does.
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def _prepare_for_training(self, max_steps, train_dataloader, resume_from_checkpoint):
        if not self.is_deepspeed_enabled or resume_from_checkpoint is None:
            return super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        # The stock DeepSpeed resume loads the engine checkpoint strictly, which fails on the base weights left out
        # above. The same three steps with load_module_strict=False; the prefix shape was already checked when the
        # model was built from the checkpoint's prefix_config.json.
        model, train_dataloader = super()._prepare_for_training(max_steps, train_dataloader, None)
        deepspeed_load_checkpoint(self.model_wrapped, resume_from_checkpoint, load_module_strict=False)
        self._load_optimizer_and_scheduler(resume_from_checkpoint)
        self._load_scaler(resume_from_checkpoint)
        return model, train_dataloader


def _is_deepspeed_scheduler(scheduler) -> bool:
    from accelerate.utils import DeepSpeedSchedulerWrapper

    return isinstance(scheduler, DeepSpeedSchedulerWrapper)

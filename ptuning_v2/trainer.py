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

Non-finite training: an optimizer step whose loss or gradients hold NaN/inf is skipped and logged with its step;
``max_nonfinite_steps`` such steps in a row stop the run with NonFiniteTrainingError (see NonFiniteGuard).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from transformers import Seq2SeqTrainer, TrainerCallback
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import SCHEDULER_NAME

from ptuning_v2.checkpoint import last_complete_checkpoint, load_prefix_weights, save_prefix_checkpoint
from ptuning_v2.cli import UserError
from ptuning_v2.inference import InferenceSession, label_logprobs

logger = logging.getLogger(__name__)


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


class NonFiniteTrainingError(UserError, RuntimeError):
    """Training stopped: too many optimizer steps in a row had a NaN/inf loss or gradient. Names the step."""


class NonFiniteGuard(TrainerCallback):
    """Skips an optimizer update whose loss or gradients hold NaN/inf; stops the run after ``max_in_a_row`` in a row.

    HF Trainer's own ``logging_nan_inf_filter`` only keeps a NaN loss out of the logged average: the update is still
    applied, and one NaN gradient makes the prefix, and every later loss, NaN. ``on_pre_optimizer_step`` runs when
    the step's gradients are final (accumulated, all-reduced, unscaled and clipped) and just before
    ``optimizer.step()``. Setting every gradient to None there makes that step a true no-op: torch optimizers (AdamW
    included) leave a parameter without a gradient alone, so neither the weights nor Adam's moments nor its step
    count move. Zeroed gradients would not do: Adam would still move by its momentum and weight decay would apply.
    The step still counts (global_step and the learning-rate schedule advance), so checkpoints keep their numbers.

    With ``--fp16`` the GradScaler already skips an update whose gradients overflow and lowers its scale; that is
    its normal calibration, so such a step (with a finite loss) is logged but not counted toward the stop. Under
    DeepSpeed the engine applies the update inside backward, before this hook: only the loss is checked, and the
    guard counts and stops but cannot skip (DeepSpeed's own fp16 loss scaler skips overflowing steps).
    Stopping raises NonFiniteTrainingError from the hook, so nothing after the last good step is saved and the
    checkpoints already written stay (skipped steps leave the prefix finite, so they are all good); the message
    names the newest. ``max_in_a_row`` 0 never stops. The loss flag is OR-ed over the micro-batches of one step and, with several
    processes, over the processes, so every process skips or stops together.
    """

    def __init__(self, trainer, max_in_a_row: int = 3):
        self.trainer = trainer
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self._bad_loss = None  # a bool tensor, kept on the device until the step ends (no sync per micro-batch)

    def note_loss(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        accelerator = self.trainer.accelerator
        deepspeed = self.trainer.is_deepspeed_enabled
        params = [] if deepspeed or optimizer is None else [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        flags = torch.zeros(2, dtype=torch.int32, device=args.device)
        if self._bad_loss is not None:
            flags[0] = self._bad_loss.to(args.device, torch.int32)
        if params:
            flags[1] = torch.stack([~torch.isfinite(p.grad).all() for p in params]).any().to(args.device, torch.int32)
        self._bad_loss = None
        if accelerator.num_processes > 1:
            flags = accelerator.reduce(flags, reduction="sum")
        bad_loss, bad_grad = (int(f) > 0 for f in flags.tolist())
        step = state.global_step + 1
        if not (bad_loss or bad_grad):
            self.in_a_row = 0
            return
        for p in params:
            p.grad = None
        if not bad_loss and accelerator.scaler is not None:
            logger.info(f"step {step}: fp16 gradient overflow; the GradScaler skips this update and lowers its scale")
            return
        self.in_a_row += 1
        what = "loss" if bad_loss and not bad_grad else "gradient" if bad_grad and not bad_loss else "loss and gradient"
        handled = "the update is DeepSpeed's to apply or skip" if deepspeed else "the update is skipped"
        logger.warning(f"step {step}: non-finite {what} (NaN/inf); {handled} ({self.in_a_row} such step(s) in a row)")
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            has_prefix = hasattr(self.trainer.accelerator.unwrap_model(self.trainer.model), "prefix_encoder")
            last = last_complete_checkpoint(args.output_dir, prefix=has_prefix, log=lambda _: None)
            steps = f"steps {step - self.in_a_row + 1}-{step}" if self.in_a_row > 1 else f"step {step}"
            raise NonFiniteTrainingError(
                f"training stopped at step {step}: {self.in_a_row} optimizer step(s) in a row ({steps}) had a "
                f"non-finite {what}. Try a lower --learning_rate (this run: "
                f"{args.learning_rate:g}), or bf16 (--bf16, --torch_dtype bfloat16) or fp32 (--torch_dtype float32) "
                f"instead of fp16; --max_nonfinite_steps sets how many in a row are tolerated. The last checkpoint "
                f"kept: {last or 'none yet'}")


class NonFiniteGuarding:
    """Trainer mixin: installs a NonFiniteGuard (``max_nonfinite_steps=``, default 3) and shows it every loss."""

    def __init__(self, *args, max_nonfinite_steps: int = 3, **kwargs):
        super().__init__(*args, **kwargs)
        self.nonfinite_guard = NonFiniteGuard(self, max_nonfinite_steps)
        self.add_callback(self.nonfinite_guard)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.nonfinite_guard.note_loss(loss)
        return loss


class ScoredSeq2SeqTrainer(NonFiniteGuarding, ScoredEvaluation, Seq2SeqTrainer):
    """The stock trainer with label-scoring evaluation: the --full_finetune baseline."""


class PrefixTrainer(NonFiniteGuarding, ScoredEvaluation, Seq2SeqTrainer):
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

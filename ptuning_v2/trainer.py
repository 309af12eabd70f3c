"""PrefixTrainer: HF Seq2SeqTrainer that saves and restores only the prefix.

Everything else (optimizer, schedule, accumulation, DeepSpeed, logging, progress bars, resume of optimizer and
RNG state) is the stock Trainer. Each ``checkpoint-N/`` gets prefix_config.json + prefix_model.safetensors
(see checkpoint.py), the tokenizer, and the Trainer's own resume files.

Under DeepSpeed the resume files are DeepSpeed's own checkpoint (``global_stepN/``), written without the frozen
base (``exclude_frozen_parameters``: the base is read from its own directory, never copied into checkpoints) and
read back non-strictly for the same reason. Under ZeRO-3 the prefix is partitioned across processes; it is
gathered whole before it is saved, which every process must join.
"""

from __future__ import annotations

import contextlib
import os

import torch
from transformers import Seq2SeqTrainer
from transformers.integrations.deepspeed import deepspeed_load_checkpoint
from transformers.trainer import SCHEDULER_NAME

from ptuning_v2.checkpoint import load_prefix_weights, save_prefix_checkpoint


class PrefixTrainer(Seq2SeqTrainer):
    def _prefix_model(self):
        return self.accelerator.unwrap_model(self.model)

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

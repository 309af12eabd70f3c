"""PrefixTrainer: HF Seq2SeqTrainer that saves and restores only the prefix.

Everything else (optimizer, schedule, accumulation, DeepSpeed, logging, progress bars, resume of optimizer and
RNG state) is the stock Trainer. Each ``checkpoint-N/`` gets prefix_config.json + prefix_model.safetensors
(see checkpoint.py), the tokenizer, and the Trainer's own resume files.
"""

from __future__ import annotations

from transformers import Seq2SeqTrainer

from ptuning_v2.checkpoint import load_prefix_weights, save_prefix_checkpoint


class PrefixTrainer(Seq2SeqTrainer):
    def _prefix_model(self):
        return self.accelerator.unwrap_model(self.model)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        save_prefix_checkpoint(self._prefix_model(), output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_prefix_weights(model or self._prefix_model(), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_prefix_weights(self._prefix_model(), self.state.best_model_checkpoint)

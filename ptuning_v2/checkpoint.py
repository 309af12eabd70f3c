"""Self-describing prefix checkpoints.

A checkpoint directory holds
  * ``prefix_config.json``: everything needed to rebuild base + prefix: the encoder shape (pre_seq_len,
    prefix_projection and its widths, dropout), the base's shape as the prefix sees it (model_type, num_layers,
    num_kv_heads, head_dim), how the base was loaded (path, dtype, quantization) and how prompts were formatted;
  * ``prefix_model.safetensors``: the PrefixEncoder's state dict, exactly its keys, fp32:
      embedding.weight (P, N*2*H*D) without projection, or
      embedding.weight (P, E), trans.0.weight (hidden, E), trans.0.bias, trans.2.weight (N*2*H*D, hidden),
      trans.2.bias with it.
Files are written to a temporary name and renamed, so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ptuning_v2.prefix_encoder import PrefixEncoder, PrefixEncoderConfig

CONFIG_NAME = "prefix_config.json"
WEIGHTS_NAME = "prefix_model.safetensors"
FORMAT_VERSION = 1
ENCODER_FIELDS = ("pre_seq_len", "num_layers", "num_kv_heads", "head_dim", "prefix_projection", "embed_dim",
                  "prefix_hidden_size", "prefix_dropout")
# Fields that must agree with the base model a checkpoint is loaded onto.
BASE_SHAPE_FIELDS = ("model_type", "num_layers", "num_kv_heads", "head_dim")
REQUIRED_FIELDS = ("format_version", *ENCODER_FIELDS, "model_type", "base_model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the field."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose recorded shape does not fit the base model; the message lists each mismatched field."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_checkpoint(output_dir: str | Path, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    output_dir = Path(output_dir)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    _atomic_write(output_dir / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(config, ensure_ascii=False, indent=2) + "\n"
    _atomic_write(output_dir / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return output_dir


def checkpoint_config(model) -> dict:
    """The prefix_config.json content for a PrefixModel."""
    spec = model.base_spec.to_dict() if model.base_spec is not None else {"model_name_or_path": None}
    path = spec.get("model_name_or_path")
    if path and os.path.isdir(path):
        spec["model_name_or_path"] = os.path.abspath(path)
    return {
        "format_version": FORMAT_VERSION,
        **model.encoder_config.to_dict(),
        "model_type": model.config.model_type,
        "projected_export": False,
        "base_model": spec,
        "prompt": model.prompt_settings,
    }


def save_prefix_checkpoint(model, output_dir: str | Path) -> Path:
    """Write prefix_config.json and prefix_model.safetensors (the encoder's keys only) to ``output_dir``."""
    return write_checkpoint(output_dir, checkpoint_config(model), model.trainable_state_dict())


def read_checkpoint_config(checkpoint_dir: str | Path) -> dict:
    path = Path(checkpoint_dir) / CONFIG_NAME
    if not path.is_file():
        hint = " (is this a checkpoint-N/ or output directory written by ptuning_v2.train?)"
        raise CheckpointError(f"{path}: not found{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    missing = [f for f in REQUIRED_FIELDS if f not in config]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: field format_version is {config['format_version']}; this version reads "
                              f"up to {FORMAT_VERSION}")
    for field in ("pre_seq_len", "num_layers", "num_kv_heads", "head_dim"):
        if not isinstance(config[field], int) or config[field] <= 0:
            raise CheckpointError(f"{path}: field {field} must be a positive integer, got {config[field]!r}")
    return config


def encoder_config_from(config: dict) -> PrefixEncoderConfig:
    return PrefixEncoderConfig(**{f: config[f] for f in ENCODER_FIELDS})


def check_fits_base(config: dict, base_config, checkpoint_dir: str | Path = "checkpoint") -> None:
    """Raise CheckpointMismatchError naming every field where the checkpoint and the base model disagree."""
    from model_patches import get_patch

    base_shape = {"model_type": getattr(base_config, "model_type", None)}
    shape = get_patch(base_config).kv_shape(base_config)
    base_shape.update(num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads, head_dim=shape.head_dim)
    mismatched = [f"{f}: checkpoint has {config[f]!r}, base model has {base_shape[f]!r}"
                  for f in BASE_SHAPE_FIELDS if config[f] != base_shape[f]]
    if mismatched:
        raise CheckpointMismatchError(
            f"{Path(checkpoint_dir) / CONFIG_NAME} does not fit the base model "
            f"({getattr(base_config, '_name_or_path', '') or 'given'}):\n  " + "\n  ".join(mismatched)
        )


def read_prefix_weights(checkpoint_dir: str | Path, encoder: PrefixEncoder) -> dict[str, torch.Tensor]:
    """Tensors from prefix_model.safetensors, checked against ``encoder``'s keys and shapes."""
    path = Path(checkpoint_dir) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    problems = [f"missing tensor {k}" for k in expected if k not in tensors]
    problems += [f"unexpected tensor {k}" for k in tensors if k not in expected]
    problems += [f"tensor {k} has shape {tuple(tensors[k].shape)}, prefix_config.json implies {expected[k]}"
                 for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return tensors


def load_prefix_weights(model, checkpoint_dir: str | Path) -> None:
    """Load a checkpoint's prefix into an existing PrefixModel (resume, continued training)."""
    config = read_checkpoint_config(checkpoint_dir)
    check_fits_base(config, model.config, checkpoint_dir)
    if encoder_config_from(config) != model.encoder_config:
        ours, theirs = model.encoder_config.to_dict(), encoder_config_from(config).to_dict()
        diff = [f"{k}: checkpoint has {theirs[k]!r}, this run has {ours[k]!r}" for k in ours if ours[k] != theirs[k]]
        raise CheckpointMismatchError(f"{Path(checkpoint_dir) / CONFIG_NAME} does not fit this run:\n  " + "\n  ".join(diff))
    tensors = read_prefix_weights(checkpoint_dir, model.prefix_encoder)
    model.prefix_encoder.load_state_dict(tensors)


def load_prefix_model(
    checkpoint_dir: str | Path,
    model_name_or_path: str | None = None,
    device: torch.device | str | None = None,
    quantization_bit: int | None | str = "recorded",
):
    """Rebuild base + prefix from a checkpoint alone. Returns (PrefixModel in eval mode, tokenizer, config dict).

    The base model path, dtype and quantization come from the checkpoint; ``model_name_or_path`` overrides the
    path (e.g. the base moved) and ``quantization_bit`` the quantization. The prefix is checked against the base
    before any weight is read.
    """
    from transformers import AutoConfig, AutoTokenizer

    from ptuning_v2.prefix_model import PrefixModel
    from ptuning_v2.quantization import BaseModelSpec, load_base_model

    config = read_checkpoint_config(checkpoint_dir)
    spec = BaseModelSpec(**config["base_model"])
    if model_name_or_path:
        spec.model_name_or_path = model_name_or_path
    if quantization_bit != "recorded":
        spec.quantization_bit = quantization_bit
    if not spec.model_name_or_path:
        raise CheckpointError(f"{Path(checkpoint_dir) / CONFIG_NAME}: field base_model.model_name_or_path is empty; "
                              "pass the base model path explicitly")
    base_config = AutoConfig.from_pretrained(spec.model_name_or_path, trust_remote_code=spec.trust_remote_code)
    check_fits_base(config, base_config, checkpoint_dir)
    base, spec = load_base_model(spec, torch.device(device) if device is not None else None)
    model = PrefixModel(base, encoder_config_from(config), base_spec=spec, prompt_settings=config.get("prompt"))
    model.prefix_encoder.load_state_dict(read_prefix_weights(checkpoint_dir, model.prefix_encoder))
    tokenizer_dir = checkpoint_dir if (Path(checkpoint_dir) / "tokenizer_config.json").is_file() else spec.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=spec.trust_remote_code)
    return model.eval(), tokenizer, config


def export_projected(checkpoint_dir: str | Path, output_dir: str | Path) -> Path:
    """Write a copy of a prefix_projection checkpoint whose prefix is the MLP's output: inference skips the MLP."""
    config = read_checkpoint_config(checkpoint_dir)
    if not config["prefix_projection"]:
        raise CheckpointError(f"{Path(checkpoint_dir) / CONFIG_NAME}: field prefix_projection is false; "
                              "there is no projection to export")
    encoder = PrefixEncoder(encoder_config_from(config))
    encoder.load_state_dict(read_prefix_weights(checkpoint_dir, encoder))
    flat = encoder.projected()
    exported = {**config, **flat.config.to_dict(), "projected_export": True}
    return write_checkpoint(output_dir, exported, flat.state_dict())

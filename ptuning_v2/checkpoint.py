"""Self-describing prefix checkpoints.

A checkpoint directory holds
  * ``prefix_config.json``: everything needed to rebuild base + prefix: the method (``method``, see
    ptuning_v2/methods; absent in checkpoints written before there were several: ptuning_v2) and its encoder's
    shape (pre_seq_len, prefix_projection and its widths, dropout; a soft prompt's width and initialisation), the base's shape as the prefix sees it (model_type, num_layers,
    num_kv_heads, head_dim), how the base was loaded (path, dtype, quantization) and how prompts were formatted;
  * ``prefix_model.safetensors``: the encoder's state dict, exactly its keys, fp32. For ptuning_v2:
      embedding.weight (P, N*2*H*D) without projection, or
      embedding.weight (P, E), trans.0.weight (hidden, E), trans.0.bias, trans.2.weight (N*2*H*D, hidden),
      trans.2.bias with it; for the other methods see their modules.
Files are written to a temporary name and renamed, so a killed run never leaves a half-written file.
``prefix_config.json`` records the sha256 of the weights file (``weights_sha256``), and loading checks it, so an
edited, swapped or damaged weights file is named instead of loaded; checkpoints written before the field existed
still load. A prefix holding NaN or inf is never written, and never loaded.

A ``checkpoint-N/`` of a training run is complete when it has both prefix files, its weights verify, and the
Trainer's ``trainer_state.json`` (written last) parses: ``last_complete_checkpoint`` is what resume starts from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ptuning_v2.methods import UnknownMethodError, config_from_record, get_method
from ptuning_v2.prefix_encoder import PrefixEncoder

CONFIG_NAME = "prefix_config.json"
WEIGHTS_NAME = "prefix_model.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"  # the HF Trainer's, the last file it writes into a checkpoint-N/
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
FORMAT_VERSION = 1
# Fields that must agree with the base model a checkpoint is loaded onto.
BASE_SHAPE_FIELDS = ("model_type", "num_layers", "num_kv_heads", "head_dim")
# Every method's checkpoint has these; each method adds its own encoder fields (checked by read_checkpoint_config).
REQUIRED_FIELDS = ("format_version", "pre_seq_len", "num_layers", "num_kv_heads", "head_dim", "model_type",
                   "base_model")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file and the field."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose recorded shape does not fit the base model; the message lists each mismatched field."""


class NonFiniteWeightsError(CheckpointError):
    """A prefix holding NaN or inf: refused when saving and when loading; the message names the tensor."""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> str:
    """Write through ``write(tmp)`` to a temporary file, then rename it to ``path``; returns the sha256 of the bytes
    written (read back from the temporary file before the rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return digest


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or inf, each with its count."""
    found = []
    for name, t in tensors.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            found.append(f"{name} ({bad} of {t.numel()} values NaN/inf)")
    return found


def write_checkpoint(output_dir: str | Path, config: dict, state_dict: dict[str, torch.Tensor]) -> Path:
    """Weights, then prefix_config.json with their sha256; each file written atomically. A NaN/inf prefix is refused
    before anything is written."""
    output_dir = Path(output_dir)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteWeightsError(f"refusing to save a prefix holding NaN/inf to {output_dir}: "
                                    + "; ".join(bad) + "; nothing was written there")
    digest = _atomic_write(output_dir / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = {**config, "weights_sha256": digest}
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
        "method": model.method.name,
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
    try:
        method = get_method(config.get("method"))
    except UnknownMethodError as e:
        raise CheckpointError(f"{path}: field method: {e}") from None
    missing = [f for f in (*REQUIRED_FIELDS, *method.required_fields()) if f not in config]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {', '.join(missing)}")
    if config["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: field format_version is {config['format_version']}; this version reads "
                              f"up to {FORMAT_VERSION}")
    for field in ("pre_seq_len", "num_layers", "num_kv_heads", "head_dim"):
        if not isinstance(config[field], int) or config[field] <= 0:
            raise CheckpointError(f"{path}: field {field} must be a positive integer, got {config[field]!r}")
    return config


def encoder_config_from(config: dict):
    """The encoder config (of the recorded method) a checkpoint's prefix_config.json content describes."""
    return config_from_record(config)


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


def checkpoint_dirs(folder: str | Path) -> list[Path]:
    """The checkpoint-N/ directories in ``folder``, oldest (smallest N) first; none if it is not a directory."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(CHECKPOINT_DIR.match(p.name).group(1)))


def other_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The checkpoint-N/ directories next to ``checkpoint_dir`` (or inside it, for a run's output directory),
    oldest first, ``checkpoint_dir`` itself left out."""
    checkpoint_dir = Path(checkpoint_dir)
    found = set(checkpoint_dirs(checkpoint_dir.parent)) | set(checkpoint_dirs(checkpoint_dir))
    found.discard(checkpoint_dir)
    return sorted(found, key=lambda p: int(CHECKPOINT_DIR.match(p.name).group(1)))


def _use_another(checkpoint_dir: str | Path) -> str:
    others = other_checkpoints(checkpoint_dir)
    if not others:
        return "no other checkpoint-N/ was found next to it; train again or restore the file from a copy"
    return "use another checkpoint: " + ", ".join(str(p) for p in others)


def verified_weights(checkpoint_dir: str | Path, config: dict | None = None,
                     suggest_others: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of prefix_model.safetensors, after checking that the file is whole, that its sha256 is the one
    prefix_config.json recorded (if it recorded one) and that it holds no NaN/inf. A failure's message ends by
    listing the other checkpoint-N/ directories to use instead (``suggest_others``)."""
    path = Path(checkpoint_dir) / WEIGHTS_NAME
    def others() -> str:
        return f"; {_use_another(checkpoint_dir)}" if suggest_others else ""

    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise CheckpointError(f"{path}: damaged, probably truncated by an interrupted copy or a killed run "
                              f"({path.stat().st_size} bytes; {e}){others()}") from None
    config = read_checkpoint_config(checkpoint_dir) if config is None else config
    expected_sha = config.get("weights_sha256")
    if expected_sha is not None:
        actual = sha256_file(path)
        if actual != expected_sha:
            raise CheckpointError(f"{path}: sha256 is {actual}, but {CONFIG_NAME} recorded weights_sha256 "
                                  f"{expected_sha}: the weights file was changed, replaced or damaged after it was "
                                  f"saved{others()}")
    bad = non_finite_tensors(tensors)
    if bad:
        raise NonFiniteWeightsError(f"{path}: the prefix holds NaN/inf: " + "; ".join(bad) + others())
    return tensors


def read_prefix_weights(checkpoint_dir: str | Path, encoder: torch.nn.Module,
                        config: dict | None = None) -> dict[str, torch.Tensor]:
    """Tensors from prefix_model.safetensors, verified (see verified_weights) and checked against ``encoder``'s keys
    and shapes. ``config``: the checkpoint's prefix_config.json content, if already read."""
    tensors = verified_weights(checkpoint_dir, config)
    check_tensors_fit(tensors, encoder, checkpoint_dir)
    return tensors


def check_tensors_fit(tensors: dict[str, torch.Tensor], encoder: torch.nn.Module, checkpoint_dir: str | Path) -> None:
    """Raise CheckpointError naming every missing, unexpected or mis-shaped tensor."""
    path = Path(checkpoint_dir) / WEIGHTS_NAME
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    problems = [f"missing tensor {k}" for k in expected if k not in tensors]
    problems += [f"unexpected tensor {k}" for k in tensors if k not in expected]
    problems += [f"tensor {k} has shape {tuple(tensors[k].shape)}, prefix_config.json implies {expected[k]}"
                 for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))


def load_prefix_weights(model, checkpoint_dir: str | Path) -> None:
    """Load a checkpoint's prefix into an existing PrefixModel (resume, continued training)."""
    config = read_checkpoint_config(checkpoint_dir)
    check_fits_base(config, model.config, checkpoint_dir)
    if encoder_config_from(config) != model.encoder_config:
        ours = {"method": model.method.name, **model.encoder_config.to_dict()}
        theirs = {"method": get_method(config.get("method")).name, **encoder_config_from(config).to_dict()}
        diff = [f"{k}: checkpoint has {theirs.get(k)!r}, this run has {ours.get(k)!r}"
                for k in dict.fromkeys([*ours, *theirs]) if ours.get(k) != theirs.get(k)]
        raise CheckpointMismatchError(f"{Path(checkpoint_dir) / CONFIG_NAME} does not fit this run:\n  " + "\n  ".join(diff))
    tensors = read_prefix_weights(checkpoint_dir, model.prefix_encoder, config)
    model.prefix_encoder.load_state_dict(tensors)


def recorded_base_spec(config: dict, checkpoint_dir: str | Path, model_name_or_path: str | None = None,
                       quantization_bit: int | None | str = "recorded"):
    """The BaseModelSpec a checkpoint records, with the user's overrides; a recorded base directory that no longer
    exists names the field and the override (never a hub lookup). The user's own missing path raises ModelPathError."""
    from ptuning_v2.quantization import BaseModelSpec, ModelPathError, resolve_model_path

    spec = BaseModelSpec(**config["base_model"])
    if model_name_or_path:
        spec.model_name_or_path = model_name_or_path
    if quantization_bit != "recorded":
        spec.quantization_bit = quantization_bit
    if not spec.model_name_or_path:
        raise CheckpointError(f"{Path(checkpoint_dir) / CONFIG_NAME}: field base_model.model_name_or_path is empty; "
                              "pass the base model path explicitly")
    try:
        spec.model_name_or_path = resolve_model_path(spec.model_name_or_path)
    except ModelPathError:
        if model_name_or_path:  # the user's own path: the plain message names it
            raise
        raise CheckpointError(
            f"{Path(checkpoint_dir) / CONFIG_NAME}: field base_model.model_name_or_path is "
            f"{spec.model_name_or_path}, which does not exist (moved or deleted?); give the base model's location: "
            f"--model_name_or_path for evaluate and train, --model for chat, model_name_or_path= for "
            f"load_prefix_model") from None
    return spec


def load_prefix_model(
    checkpoint_dir: str | Path,
    model_name_or_path: str | None = None,
    device: torch.device | str | None = None,
    quantization_bit: int | None | str = "recorded",
):
    """Rebuild base + prefix from a checkpoint alone. Returns (PrefixModel in eval mode, tokenizer, config dict).

    The base model path, dtype and quantization come from the checkpoint; ``model_name_or_path`` overrides the
    path (e.g. the base moved) and ``quantization_bit`` the quantization. The prefix weights are verified (whole,
    checksum, finite) and the prefix is checked against the base's config before the base's weights are read.
    """
    from transformers import AutoConfig

    from ptuning_v2.prefix_model import PrefixModel
    from ptuning_v2.quantization import load_base_model, load_tokenizer, named_hub_failure

    config = read_checkpoint_config(checkpoint_dir)
    tensors = verified_weights(checkpoint_dir, config)  # before a base that may take minutes to load
    spec = recorded_base_spec(config, checkpoint_dir, model_name_or_path, quantization_bit)
    with named_hub_failure(spec.model_name_or_path, "base model"):
        base_config = AutoConfig.from_pretrained(spec.model_name_or_path, trust_remote_code=spec.trust_remote_code)
    check_fits_base(config, base_config, checkpoint_dir)
    base, spec = load_base_model(spec, torch.device(device) if device is not None else None)
    model = PrefixModel(base, encoder_config_from(config), base_spec=spec, prompt_settings=config.get("prompt"))
    check_tensors_fit(tensors, model.prefix_encoder, checkpoint_dir)
    model.prefix_encoder.load_state_dict(tensors)
    tokenizer_dir = checkpoint_dir if (Path(checkpoint_dir) / "tokenizer_config.json").is_file() else spec.model_name_or_path
    tokenizer = load_tokenizer(str(tokenizer_dir), trust_remote_code=spec.trust_remote_code)
    return model.eval(), tokenizer, config


def export_projected(checkpoint_dir: str | Path, output_dir: str | Path) -> Path:
    """Write a copy of a prefix_projection checkpoint whose prefix is the MLP's output: inference skips the MLP."""
    config = read_checkpoint_config(checkpoint_dir)
    if get_method(config.get("method")).name != "ptuning_v2" or not config["prefix_projection"]:
        raise CheckpointError(f"{Path(checkpoint_dir) / CONFIG_NAME}: field prefix_projection is false; "
                              "there is no projection to export")
    encoder = PrefixEncoder(encoder_config_from(config))
    encoder.load_state_dict(read_prefix_weights(checkpoint_dir, encoder, config))
    flat = encoder.projected()
    exported = {**config, **flat.config.to_dict(), "projected_export": True}
    return write_checkpoint(output_dir, exported, flat.state_dict())


def checkpoint_problem(checkpoint_dir: str | Path, prefix: bool = True) -> str | None:
    """Why a training run's ``checkpoint-N/`` cannot be resumed from (None when it is complete).

    The Trainer writes the prefix files (each atomic), then its optimizer, scheduler and RNG state, and
    ``trainer_state.json`` last, none of those atomically: a run killed while saving leaves a directory without
    ``trainer_state.json`` or with a cut-off one. ``prefix=False`` (--full_finetune) checks only the Trainer's state.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if prefix:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (checkpoint_dir / name).is_file():
                return f"{name} is missing"
        try:
            verified_weights(checkpoint_dir, suggest_others=False)
        except CheckpointError as e:
            return str(e)
    state = checkpoint_dir / TRAINER_STATE_NAME
    if not state.is_file():
        return f"{TRAINER_STATE_NAME} is missing (the run was stopped while saving)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{TRAINER_STATE_NAME} is cut off (the run was stopped while saving)"
    return None


def last_complete_checkpoint(output_dir: str | Path, prefix: bool = True, log=print) -> str | None:
    """The newest complete ``checkpoint-N/`` in ``output_dir`` (see checkpoint_problem); each newer incomplete one
    is skipped with a line through ``log``. None when there is none."""
    for checkpoint in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(checkpoint, prefix)
        if problem is None:
            return str(checkpoint)
        log(f"skipping incomplete checkpoint {checkpoint}: {problem}")
    return None

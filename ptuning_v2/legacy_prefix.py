"""Import a THUDM ``ptuning/`` P-tuning v2 checkpoint (ChatGLM2/3, GLM-4) as this project's prefix checkpoint.

    python -m ptuning_v2.convert --ptuning_checkpoint OLD --base CONVERTED DST

OLD holds ``pytorch_model.bin`` (read with ``weights_only=True``) with ``transformer.prefix_encoder.*`` and
``config.json`` with ``pre_seq_len`` and ``prefix_projection``. Shapes (P = pre_seq_len, N layers, G KV groups,
D head_dim of the converted base CONVERTED):
  * without projection: embedding.weight (P, N*2*G*D);
  * with projection:    embedding.weight (P, E), trans.0.weight (H, E), trans.0.bias (H,),
                        trans.2.weight (N*2*G*D, H), trans.2.bias (N*2*G*D,)   (E, H read from the tensors).
The layout per virtual token is this project's PrefixEncoder's (see model_patches/chatglm.py), so the tensors are
copied as they are. DST gets prefix_config.json + prefix_model.safetensors recording the base path and the prompt
template (chatglm by default: "[Round N]\\n\\n问：...\\n\\n答：", THUDM's ChatGLM2 ptuning format); evaluate, chat and
``--ptuning_checkpoint`` load it like any other checkpoint. Only the base's config is read, never its weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model_patches import chatglm, get_patch
from ptuning_v2.checkpoint import FORMAT_VERSION, CheckpointMismatchError, write_checkpoint
from ptuning_v2.convert import ConvertError, read_json
from ptuning_v2.prefix_encoder import PrefixEncoder, PrefixEncoderConfig

WEIGHTS = "pytorch_model.bin"


def read_legacy_prefix(old: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(pre_seq_len/prefix_projection settings, {PrefixEncoder key: fp32 tensor}) of a THUDM ptuning directory."""
    if not old.is_dir():
        raise ConvertError(f"{old}: no such directory")
    config = read_json(old / "config.json", "THUDM ptuning checkpoints record pre_seq_len there")
    pre_seq_len = config.get("pre_seq_len")
    if not isinstance(pre_seq_len, int) or pre_seq_len <= 0:
        raise ConvertError(f"{old / 'config.json'}: field pre_seq_len must be a positive integer, got {pre_seq_len!r}")
    settings = {"pre_seq_len": pre_seq_len, "prefix_projection": bool(config.get("prefix_projection", False))}
    path = old / WEIGHTS
    if not path.is_file():
        raise ConvertError(f"{path}: not found (THUDM's ptuning/ saves the prefix there)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"{path}: cannot be read as plain tensors (weights_only=True): {e}") from None
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: holds a {type(state).__name__}, not a state dict")
    tensors = {k: v.float() for k, v in chatglm.prefix_encoder_tensors(state).items()}
    if not tensors:
        raise ConvertError(f"{path}: holds no transformer.prefix_encoder.* tensor (keys: "
                           f"{', '.join(sorted(state)[:5])}); is this a P-tuning v2 checkpoint?")
    return settings, tensors


def _shape(t: torch.Tensor | None):
    return None if t is None else tuple(t.shape)


def encoder_config_for_legacy(settings: dict, tensors: dict[str, torch.Tensor], base_config,
                              where: str) -> PrefixEncoderConfig:
    """The PrefixEncoder that holds these tensors on this base; CheckpointMismatchError naming each misfit."""
    shape = get_patch(base_config).kv_shape(base_config)
    p, width = settings["pre_seq_len"], shape.num_layers * 2 * shape.kv_dim
    need = (f"num_layers {shape.num_layers} x 2 (key, value) x num_kv_heads {shape.num_kv_heads} x head_dim "
            f"{shape.head_dim} = {width}")
    embedding = tensors.get("embedding.weight")
    if settings["prefix_projection"]:
        w0 = tensors.get("trans.0.weight")
        embed_dim = embedding.shape[1] if embedding is not None and embedding.dim() == 2 else 0
        hidden = w0.shape[0] if w0 is not None and w0.dim() == 2 else 0
        expected = {"embedding.weight": (p, embed_dim), "trans.0.weight": (hidden, embed_dim), "trans.0.bias": (hidden,),
                    "trans.2.weight": (width, hidden), "trans.2.bias": (width,)}
    else:
        embed_dim = hidden = 0
        expected = {"embedding.weight": (p, width)}
    problems = [f"transformer.prefix_encoder.{k} has shape {_shape(tensors.get(k))}, expected {v}"
                for k, v in expected.items() if _shape(tensors.get(k)) != v]
    problems += [f"unexpected tensor transformer.prefix_encoder.{k}" for k in tensors if k not in expected]
    if problems:
        raise CheckpointMismatchError(
            f"{where} does not fit the base model {getattr(base_config, '_name_or_path', '')} (pre_seq_len {p} and "
            f"prefix_projection {settings['prefix_projection']} from its config.json; the base needs {need} values "
            "per virtual token):\n  " + "\n  ".join(problems))
    return PrefixEncoderConfig(pre_seq_len=p, num_layers=shape.num_layers, num_kv_heads=shape.num_kv_heads,
                               head_dim=shape.head_dim, prefix_projection=settings["prefix_projection"],
                               embed_dim=embed_dim, prefix_hidden_size=hidden)


def import_ptuning_checkpoint(old: str | Path, base: str | Path, dst: str | Path,
                              prompt_template: str = "chatglm") -> Path:
    """Write DST from OLD on BASE. ``prompt_template`` is recorded for evaluate/chat: chatglm for ChatGLM2's
    ptuning/ ("[Round N]" text), chat for ChatGLM3's finetune_demo (the model's own chat format)."""
    from transformers import AutoConfig

    from ptuning_v2.arguments import DataArguments
    from ptuning_v2.data import get_template
    from ptuning_v2.quantization import BaseModelSpec, resolve_model_path

    old, dst = Path(old), Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConvertError(f"{dst} already exists and is not empty; give a new output directory")
    settings, tensors = read_legacy_prefix(old)
    base_path = resolve_model_path(str(base))  # an unconverted chatglm base is refused with the convert command
    base_config = AutoConfig.from_pretrained(base_path)
    encoder_config = encoder_config_for_legacy(settings, tensors, base_config, str(old / WEIGHTS))
    encoder = PrefixEncoder(encoder_config)
    encoder.load_state_dict(tensors)  # exact keys and shapes were checked above
    defaults = DataArguments()
    config = {
        "format_version": FORMAT_VERSION,
        **encoder_config.to_dict(),
        "model_type": base_config.model_type,
        "projected_export": False,
        "base_model": BaseModelSpec(os.path.abspath(base_path) if os.path.isdir(base_path) else base_path).to_dict(),
        "prompt": {
            "template": get_template(prompt_template).to_dict(), "source_prefix": "",
            "max_source_length": defaults.max_source_length, "max_target_length": defaults.max_target_length,
            "test_file": None,
            "columns": {"prompt": defaults.prompt_column, "response": defaults.response_column,
                        "history": None, "input": None},
        },
        "imported_from": {"path": str(old.resolve()), "format": "THUDM ptuning (transformer.prefix_encoder.*)"},
    }
    return write_checkpoint(dst, config, encoder.state_dict())

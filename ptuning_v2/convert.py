"""Bring THUDM ChatGLM checkpoints over, with no remote code. Two command forms:

    python -m ptuning_v2.convert SRC DST
        a ChatGLM2-6B / ChatGLM3-6B / glm-4-9b-chat directory (model_type ``chatglm``) -> a native ``glm`` model
        directory: safetensors shards + model.safetensors.index.json, config.json, generation_config.json, and
        a fast tokenizer (tokenizer.json) from tokenizer.model (ChatGLM2/3: sentencepiece; glm-4-9b-chat: tiktoken
        ranks) with the special tokens at their ChatGLM ids, [gMASK] sop (GLM-4: [gMASK] <sop>) in front of every
        input, and the model's chat template.
    python -m ptuning_v2.convert --ptuning_checkpoint OLD --base CONVERTED DST
        a THUDM ``ptuning/`` checkpoint (pytorch_model.bin with transformer.prefix_encoder.*, config.json with
        pre_seq_len and prefix_projection) -> this project's prefix checkpoint on the converted base.

The model conversion goes shard by shard: one source shard is read, converted (every glm tensor comes from one
source tensor; see model_patches/chatglm.py) and written before the next is read, so peak memory stays near one
shard. ``.bin`` files are read with ``weights_only=True``. The output is assembled in a hidden sibling directory and
renamed to DST at the end, so a failed conversion never leaves a DST that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model_patches import chatglm
from ptuning_v2.cli import UserError, run
from ptuning_v2.data import PROMPT_TEMPLATES


class ConvertError(UserError, ValueError):
    """A directory or file the conversion cannot use; the message names it."""


# -- reading ChatGLM directories ----------------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConvertError(f"{path}: not found ({what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None


def read_chatglm_config(src: Path) -> dict:
    if not src.is_dir():
        raise ConvertError(f"{src}: no such directory")
    config = read_json(src / "config.json", "a ChatGLM model directory has one")
    if not chatglm.is_chatglm(config):
        raise ConvertError(f"{src} is not a THUDM ChatGLM checkpoint: its config.json has model_type "
                           f"{config.get('model_type')!r}, expected 'chatglm' (ChatGLM2-6B, ChatGLM3-6B, glm-4-9b-chat)"
                           + ("; it can be used as it is" if config.get("model_type") in ("glm", "glm4") else ""))
    return config


def source_shards(src: Path) -> list[Path]:
    """The weight files of ``src`` in order: the index's files if there is an index, safetensors before .bin."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = src / index_name
        if index.is_file():
            weight_map = read_json(index, "weight index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConvertError(f"{index}: field weight_map is missing or empty")
            files = [src / name for name in sorted(set(weight_map.values()))]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise ConvertError(f"{index} names shard(s) that do not exist: {', '.join(missing)}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (src / single).is_file():
            return [src / single]
    for pattern in ("model-*.safetensors", "pytorch_model-*.bin"):
        files = sorted(src.glob(pattern))
        if files:
            return files
    raise ConvertError(f"{src}: no weights found (model*.safetensors or pytorch_model*.bin, with or without an index)")


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weight file, on the CPU; pickled .bin files only as plain tensors (weights_only)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file or one holding arbitrary pickled objects
        raise ConvertError(f"{path}: cannot be read as plain tensors (weights_only=True): {e}") from None


def save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="shard")


def _fresh_output_dir(dst: Path, src: Path | None = None) -> Path:
    if src is not None and dst.resolve() == src.resolve():
        raise ConvertError(f"{dst}: the output directory must differ from the source")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ConvertError(f"{dst} already exists and is not empty; give a new output directory")
    dst.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.partial-"))


def _finish(tmp: Path, dst: Path) -> None:
    if dst.exists():
        dst.rmdir()  # empty, checked before the conversion started
    os.replace(tmp, dst)


# -- the model ----------------------------------------------------------------------------------------------------
def generation_config_dict(src: Path, glm_kwargs: dict, stop_ids: list[int] = ()) -> dict:
    """The source's generation_config.json if it has one, with glm's token ids filled in where it has none, and
    ``stop_ids`` (the chat format's end-of-turn tokens) added to eos_token_id."""
    path = src / "generation_config.json"
    config = read_json(path, "generation config") if path.is_file() else {}
    config = {k: v for k, v in config.items() if k not in ("transformers_version", "_from_model_config")}
    for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
        if config.get(key) is None and glm_kwargs.get(key) is not None:
            config[key] = glm_kwargs[key]
    if stop_ids:
        eos = config.get("eos_token_id")
        eos_list = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        extra = [i for i in stop_ids if i not in eos_list]
        if extra:
            config["eos_token_id"] = eos_list + extra
    return config


def is_sentencepiece(path: Path) -> bool:
    import sentencepiece as spm

    if not path.is_file():
        return False
    try:
        spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return False
    return True


def convert_tokenizer(src: Path, out: Path, config: dict, chat_format: str = "auto") -> tuple[str | None, list[int]]:
    """Write tokenizer.json + tokenizer_config.json (special tokens at their ChatGLM ids, a chat template) to
    ``out`` from ``src/tokenizer.model`` (ChatGLM2/3 sentencepiece, or GLM-4 tiktoken ranks). Returns (the chat
    format, or None when the tokenizer was not converted, and the generation stop ids)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from ptuning_v2.sentencepiece_fast import sentencepiece_tokenizer
    from ptuning_v2.tiktoken_fast import is_tiktoken_file, save_glm4_tokenizer

    model_file = src / "tokenizer.model"
    if is_tiktoken_file(model_file):
        if chat_format not in ("auto", chatglm.GLM4):
            raise ConvertError(f"{model_file} is GLM-4's tiktoken tokenizer, which has one chat format; "
                               f"--chat_format {chat_format} is for ChatGLM2/3's sentencepiece tokenizer")
        try:
            stop_ids = save_glm4_tokenizer(model_file, out, config.get("seq_length", 8192),
                                           config.get("padded_vocab_size", config.get("vocab_size")))
        except ValueError as e:
            raise ConvertError(str(e)) from None
        return chatglm.GLM4, stop_ids
    if not is_sentencepiece(model_file):
        return None, []
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    if chat_format == "auto":
        chat_format = chatglm.detect_chat_format(src, config)
    specials = chatglm.special_tokens(chat_format, sp.get_piece_size())
    tok, spec = sentencepiece_tokenizer(model_file, specials)
    ids = {name: i for i, name in specials}
    eos, unk = sp.id_to_piece(sp.eos_id()), sp.id_to_piece(sp.unk_id())
    gmask, sop = chatglm.PROMPT_PREFIX
    tok.post_processor = processors.TemplateProcessing(
        single=f"{gmask} {sop} $A", pair=f"{gmask} {sop} $A $B {eos}",
        special_tokens=[(gmask, ids[gmask]), (sop, ids[sop]), (eos, sp.eos_id())])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=unk, eos_token=eos, pad_token=unk, padding_side="left",
        clean_up_tokenization_spaces=False, model_max_length=config.get("seq_length", 8192),
        chat_template=chatglm.chat_template(chat_format, spec.add_dummy_prefix))
    fast.save_pretrained(out)
    return chat_format, chatglm.stop_token_ids(chat_format, sp.get_piece_size(), sp.eos_id())


def convert_shard(shard: Path, config: dict, seen) -> dict[str, torch.Tensor]:
    """The glm tensors of one source shard. Nothing of the source shard outlives this call but what is passed
    through unchanged inside the result. ``seen``: glm names already written (a tensor in two shards is refused)."""
    tensors = load_shard(shard)
    converted: dict[str, torch.Tensor] = {}
    for name in list(tensors):
        for new_name, tensor in chatglm.convert_tensor(name, tensors.pop(name), config).items():
            if new_name in seen or new_name in converted:
                raise ConvertError(f"{shard}: tensor {name} appears in more than one shard")
            converted[new_name] = tensor
    return converted


def convert_model(src: str | Path, dst: str | Path, progress: bool = True, chat_format: str = "auto",
                  log=print) -> Path:
    """Convert the ChatGLM directory ``src`` into a native glm directory ``dst`` (which must be new or empty):
    weights and config, and the tokenizer when it is ChatGLM2/3's sentencepiece one (``chat_format``: auto,
    chatglm2 or chatglm3 decides the special tokens and the chat template) or GLM-4's tiktoken one."""
    from transformers import GenerationConfig

    src, dst = Path(src), Path(dst)
    config = read_chatglm_config(src)
    glm = chatglm.glm_config(config, where=str(src / "config.json"))
    shards = source_shards(src)
    expected = chatglm.expected_names(config)
    tmp = _fresh_output_dir(dst, src)
    try:
        weight_map: dict[str, str] = {}
        total_size = 0
        for i, shard in enumerate(_progress(shards, len(shards), f"converting {src.name}", progress)):
            converted = convert_shard(shard, config, seen=weight_map)
            if converted:
                out_name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_shard(converted, tmp / out_name)
                weight_map.update(dict.fromkeys(converted, out_name))
                total_size += sum(t.numel() * t.element_size() for t in converted.values())
            del converted
        missing = sorted(expected - set(weight_map))
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConvertError(f"{src}: the checkpoint lacks tensors the model needs (after renaming): "
                               f"{', '.join(missing[:5])}{more}")
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        glm.save_pretrained(tmp)
        converted_format, stop_ids = convert_tokenizer(src, tmp, config, chat_format)
        if converted_format is None:
            log(f"note: {src / 'tokenizer.model'} is neither a sentencepiece model nor a tiktoken ranks file; the "
                "output has no tokenizer")
        else:
            log(f"tokenizer converted ({converted_format} special tokens and chat template)")
        generation = generation_config_dict(src, chatglm.glm_config_kwargs(config), stop_ids)
        GenerationConfig(**generation).save_pretrained(tmp)
        _finish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


# -- CLI ----------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ptuning_v2.convert",
        description="Convert a THUDM ChatGLM2/ChatGLM3/GLM-4 model directory (model_type chatglm) to the native glm "
                    "layout, or import a THUDM P-tuning v2 checkpoint onto a converted base.",
        usage="python -m ptuning_v2.convert SRC DST\n"
              "       python -m ptuning_v2.convert --ptuning_checkpoint OLD --base CONVERTED DST")
    p.add_argument("paths", nargs="+", metavar="PATH", help="SRC DST, or DST with --ptuning_checkpoint")
    p.add_argument("--ptuning_checkpoint", metavar="OLD",
                   help="a THUDM ptuning/ output directory (pytorch_model.bin + config.json) to import")
    p.add_argument("--base", metavar="CONVERTED", help="the converted (glm) base model the prefix belongs to")
    p.add_argument("--prompt_template", default="chatglm", choices=sorted(PROMPT_TEMPLATES),
                   help="with --ptuning_checkpoint: the prompt format the prefix was trained with, recorded for "
                        "evaluate and chat [chatglm: ChatGLM2 ptuning/'s [Round N] text; chat: the model's chat "
                        "template, as ChatGLM3's finetune_demo]")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--chat_format", choices=("auto",) + chatglm.CHAT_FORMATS, default="auto",
                   help="special tokens and chat template of a converted sentencepiece tokenizer [auto: chatglm3 "
                        "when the source's tokenizer files mention <|observation|> or its name says chatglm3; GLM-4's "
                        "tiktoken tokenizer has its own]")
    args = p.parse_args(argv)
    if args.ptuning_checkpoint:
        if len(args.paths) != 1 or not args.base:
            p.error("with --ptuning_checkpoint give --base CONVERTED and one output directory DST")
    elif len(args.paths) != 2 or args.base:
        p.error("give SRC and DST (or --ptuning_checkpoint OLD --base CONVERTED DST)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.ptuning_checkpoint:
        from ptuning_v2.legacy_prefix import import_ptuning_checkpoint

        out = import_ptuning_checkpoint(args.ptuning_checkpoint, args.base, args.paths[0], args.prompt_template)
        print(f"imported prefix written to {out}")
        return
    src, dst = args.paths
    out = convert_model(src, dst, progress=not args.no_progress, chat_format=args.chat_format)
    print(f"converted model written to {out}")


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s: its ConvertError is the one ptuning_v2.cli.run recognises.
    from ptuning_v2.convert import main as _main

    run(_main)

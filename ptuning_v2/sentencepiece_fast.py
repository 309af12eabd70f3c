"""A sentencepiece ``tokenizer.model`` as a ``tokenizers`` fast tokenizer that encodes to the same ids.

sentencepiece encodes in four steps, each mirrored here from the model file's own settings:
  1. normalize with the precompiled character map (none for "identity")   -> normalizers.Precompiled
  2. remove extra spaces (leading, trailing, runs), if remove_extra_whitespaces  -> normalizers.Replace
  3. add a dummy "▁" in front, if add_dummy_prefix; spaces become "▁"   -> normalizers.Prepend, Metaspace
  4. unigram (or BPE) segmentation, bytes for unknown characters if byte_fallback -> models.Unigram / BPE
Pieces never cross a "▁" when the model was trained with split_by_whitespace (the default), so Metaspace splits
there too. Text between special tokens is encoded as separate strings, each with its dummy prefix, as the
ChatGLM tokenizers do when they meet role tokens in text.

The settings are read from the model file with a few lines of protobuf wire-format decoding (the protobuf
package is not needed): ModelProto.trainer_spec (2) {model_type (3), split_by_whitespace (22), byte_fallback (35)}
and ModelProto.normalizer_spec (3) {name (1), precompiled_charsmap (2), add_dummy_prefix (3),
remove_extra_whitespaces (4)}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPACE = "\u2581"
UNIGRAM, BPE = 1, 2


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> dict[int, list]:
    """Top-level fields of one protobuf message: number -> values (ints for varints, bytes otherwise)."""
    out: dict[int, list] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


@dataclass(frozen=True)
class SentencePieceSpec:
    model_type: int = UNIGRAM
    split_by_whitespace: bool = True
    byte_fallback: bool = False
    normalizer_name: str = "nmt_nfkc"
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True


def read_spec(model_proto: bytes) -> SentencePieceSpec:
    """The settings of a serialized sentencepiece ModelProto (proto2 defaults where a field is absent)."""
    model = _fields(model_proto)
    trainer = _fields(model.get(2, [b""])[0])
    normalizer = _fields(model.get(3, [b""])[0])

    def last(fields, number, default):
        return fields[number][-1] if number in fields else default

    return SentencePieceSpec(
        model_type=last(trainer, 3, UNIGRAM),
        split_by_whitespace=bool(last(trainer, 22, 1)),
        byte_fallback=bool(last(trainer, 35, 0)),
        normalizer_name=last(normalizer, 1, b"nmt_nfkc").decode("utf-8"),
        precompiled_charsmap=last(normalizer, 2, b""),
        add_dummy_prefix=bool(last(normalizer, 3, 1)),
        remove_extra_whitespaces=bool(last(normalizer, 4, 1)),
    )


def sentencepiece_tokenizer(model_path: str | Path, added: list[tuple[int, str]] = ()):
    """(tokenizers.Tokenizer, SentencePieceSpec) for ``model_path``; ``added``: (id, content) special tokens, which
    must follow the sentencepiece vocabulary without gaps (ChatGLM appends its specials that way)."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = Path(model_path).read_bytes()
    spec = read_spec(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    size = sp.get_piece_size()
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(size)]
    unk_id = sp.unk_id()
    if spec.model_type == UNIGRAM:
        tok = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=spec.byte_fallback))
    elif spec.model_type == BPE:
        from transformers.convert_slow_tokenizer import generate_merges

        piece_ids = {piece: i for i, (piece, _) in enumerate(vocab)}
        merges = generate_merges(piece_ids, {piece: score for piece, score in vocab})
        tok = Tokenizer(models.BPE(piece_ids, merges, unk_token=sp.id_to_piece(unk_id),
                                   byte_fallback=spec.byte_fallback, fuse_unk=True))
    else:
        raise ValueError(f"{model_path}: sentencepiece model_type {spec.model_type} (only unigram and BPE are "
                         "supported)")
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex("^ +| +$"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        # Unconditionally, as sentencepiece does (Metaspace's own prepend skips text that starts with a space).
        steps.append(normalizers.Prepend(SPACE))
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, split=spec.split_by_whitespace,
                                                 prepend_scheme="never")
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    for expected, (token_id, content) in enumerate(added, start=size):
        if token_id != expected:
            raise ValueError(f"special token {content} must have id {expected} (after the {size} sentencepiece "
                             f"pieces), not {token_id}")
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False) for _, content in added])
    return tok, spec

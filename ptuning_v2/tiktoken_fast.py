"""A tiktoken ranks file (glm-4-9b-chat's ``tokenizer.model``) as a ``tokenizers`` fast tokenizer with the same ids.

Reads: a text file of lines ``base64(token bytes) rank``, ranks 0..N-1 without gaps or repeats (GLM-4: N = 151,329),
every single byte among the tokens. Nothing else of the source directory is read and no remote code is run.
Writes (``save_glm4_tokenizer``): tokenizer.json + tokenizer_config.json into a directory, with GLM-4's special
tokens, [gMASK] <sop> in front of every input, eos = pad = <|endoftext|>, left padding and GLM-4's chat template.

Encoding is tiktoken's: the text is split by the cl100k_base pattern, each piece becomes bytes shown through GPT-2's
byte-to-unicode table, and a piece that is a token is taken whole, else adjacent parts are merged lowest rank first.
transformers' own ``TikTokenConverter`` builds that (byte-level BPE whose merges are derived from the ranks, with
``ignore_merges`` for the whole-piece lookup); only the file parsing is done here, so tiktoken is not needed at run
time (it is the tests' reference).

Special tokens are numbered from N, the number of ranks in the file, never from a fixed 151329: glm-4-9b-chat's
151,329 ranks put <|endoftext|> at 151329 and <|end_of_video|> at 151342, a test's tiny ranks file puts them right
after its own vocabulary.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

# cl100k_base's pre-tokenization (tiktoken's and TikTokenConverter's default), which GLM-4 uses.
CL100K_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                  r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
_LINE = re.compile(rb"^([A-Za-z0-9+/]+={0,2}) ([0-9]+)$")


def is_tiktoken_file(path: str | Path, lines: int = 8) -> bool:
    """Whether ``path`` starts like a tiktoken ranks file: text lines "base64 rank" (a sentencepiece model is a
    binary protobuf). Only the first ``lines`` lines are looked at; ``read_ranks`` checks the whole file."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        head = f.read(4096).split(b"\n")[:-1][:lines]  # complete lines only
    if not head:
        return False
    for line in head:
        match = _LINE.match(line.rstrip(b"\r"))
        if not match:
            return False
        try:
            base64.b64decode(match.group(1), validate=True)
        except binascii.Error:
            return False
    return True


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """{token bytes: rank} of a tiktoken ranks file; ValueError (naming the file and line) when it is not one that a
    byte-level BPE can use: a malformed line, repeated tokens or ranks, a gap in 0..N-1, or a single byte missing."""
    path = Path(path)
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        match = _LINE.match(line.strip())
        try:
            token = base64.b64decode(match.group(1), validate=True) if match else None
        except binascii.Error:
            token = None
        if token is None:
            raise ValueError(f"{path}, line {number}: not 'base64 rank' ({line[:60]!r})")
        rank = int(match.group(2))
        if token in ranks or rank in seen_ranks:
            raise ValueError(f"{path}, line {number}: token {token!r} or rank {rank} appears twice")
        ranks[token] = rank
        seen_ranks.add(rank)
    if not ranks:
        raise ValueError(f"{path}: no ranks")
    if max(seen_ranks) != len(ranks) - 1:
        raise ValueError(f"{path}: {len(ranks)} tokens but ranks up to {max(seen_ranks)}; ranks must be 0..N-1")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: {len(missing)} single byte(s) are not tokens (e.g. {bytes(missing[:3])!r}); a "
                         "byte-level BPE needs all 256")
    return ranks


def tiktoken_tokenizer(path: str | Path, added: list[tuple[int, str]] = (), pattern: str = CL100K_PATTERN,
                       ranks: dict[bytes, int] | None = None):
    """(tokenizers.Tokenizer, number of ranks) for the ranks file ``path`` (or its ``ranks``, already read);
    ``added``: (id, content) special tokens, which must follow the ranks without gaps (numbered from the number of
    ranks, as GLM-4 does)."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = read_ranks(path) if ranks is None else ranks
    size = len(ranks)
    for expected, (token_id, content) in enumerate(added, start=size):
        if token_id != expected:
            raise ValueError(f"special token {content} must have id {expected} (after the {size} ranks), "
                             f"not {token_id}")

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url):  # the ranks already read, instead of tiktoken's loader
            return ranks

    tok = _Converter(vocab_file=str(path), pattern=pattern,
                     extra_special_tokens=[content for _, content in added]).converted()
    for token_id, content in added:
        if tok.token_to_id(content) != token_id:  # a token whose text is also a rank would be reused, not appended
            raise ValueError(f"special token {content} got id {tok.token_to_id(content)}, not {token_id}")
    return tok, size


def save_glm4_tokenizer(model_file: str | Path, out: str | Path, model_max_length: int,
                        vocab_size: int | None = None) -> list[int]:
    """Write GLM-4's tokenizer (tokenizer.json + tokenizer_config.json) for the ranks file ``model_file`` into
    ``out``; return the generation stop ids (<|endoftext|>, <|user|>, <|observation|>). ``vocab_size``: the model's
    (padded) vocabulary, which must hold every id."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from model_patches import chatglm

    ranks = read_ranks(model_file)
    num_ranks = len(ranks)
    specials = chatglm.special_tokens(chatglm.GLM4, num_ranks)
    if vocab_size is not None and specials[-1][0] >= vocab_size:
        raise ValueError(f"{model_file}: the tokenizer's ids reach {specials[-1][0]}, but the model's vocabulary has "
                         f"{vocab_size} rows (config.json padded_vocab_size): not this model's tokenizer")
    tok, _ = tiktoken_tokenizer(model_file, specials, ranks=ranks)
    ids = {name: i for i, name in specials}
    gmask, sop = chatglm.GLM4_PROMPT_PREFIX
    eos = chatglm.GLM4_EOS
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{gmask} {sop} $A", pair=f"{gmask} {sop} $A $B {eos}",
                                      special_tokens=[(t, ids[t]) for t in (gmask, sop, eos)]),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token=eos, padding_side="left", clean_up_tokenization_spaces=False,
        model_max_length=model_max_length, chat_template=chatglm.chat_template(chatglm.GLM4, dummy_prefix=False))
    fast.save_pretrained(out)
    return chatglm.stop_token_ids(chatglm.GLM4, num_ranks, ids[eos])

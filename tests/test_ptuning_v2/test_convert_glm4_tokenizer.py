"""The converted tokenizer of a glm-4-9b-chat checkpoint, whose tokenizer.model is a tiktoken ranks file (lines
"base64(token bytes) rank"): the same ids as tiktoken itself (the reference, a test-only dependency) for plain text,
[gMASK] <sop> in front, GLM-4's special tokens numbered from the number of ranks, and a chat template giving
[gMASK]<sop> + per message <|role|> + encode("\\n" + content) + <|assistant|> (written here from the format's rules).

The ranks file is made here: the 256 single bytes plus merges learned from a small Chinese + English sample with the
cl100k pattern (a few lines of BPE training below), so nothing is downloaded."""

import base64
import collections
import contextlib
import io
import json

import pytest
import regex
from transformers import AutoTokenizer, GenerationConfig

from ptuning_v2.convert import ConvertError, convert_model, main
from ptuning_v2.tiktoken_fast import CL100K_PATTERN, is_tiktoken_file, read_ranks, tiktoken_tokenizer
from tiny_chatglm import SP_TRAINING_TEXT, chatglm_config, write_chatglm_checkpoint, write_sentencepiece

SPECIALS = ["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
            "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
            "<|end_of_video|>"]
SAMPLES = ["今天天气很好，我们去公园散步吧。", "The quick brown fox jumps over the lazy dog.", "123 4567 89 1234567890",
           "  leading and  double  spaces  ", "a\nb\n\nc\r\n", "def f(x):\n    return x + 1\n", "emoji 😀👍🏽 ok",
           "未见过的字：龘靐", "I'm here, you'll see; they've gone", "“引号”和（括号）", "tab\there", " ", ""]
CHAT = [{"role": "system", "content": "你是一个有帮助的助手。"}, {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好，请问有什么可以帮你？"}, {"role": "user", "content": "今天天气怎么样 today?"}]


def train_ranks(texts, merges=150) -> dict[bytes, int]:
    """Byte-level BPE ranks as tiktoken files hold them: the 256 bytes (printable ASCII first, as GLM-4's file
    starts), then the most frequent adjacent pair of each round, counted within cl100k pre-tokens."""
    order = list(range(33, 127)) + [b for b in range(256) if not 33 <= b < 127]
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    words = collections.Counter(tuple(bytes([b]) for b in piece.encode("utf-8"))
                                for text in texts for piece in regex.findall(CL100K_PATTERN, text))
    for _ in range(merges):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        (left, right), _ = max(pairs.items(), key=lambda item: (item[1], -ranks[item[0][0]], -ranks[item[0][1]]))
        ranks[left + right] = len(ranks)
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == (left, right):
                    out.append(left + right)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return ranks


def write_ranks(path, ranks):
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(),
                                                                                       key=lambda x: x[1])))
    return path


@pytest.fixture(scope="module")
def ranks():
    return train_ranks(sorted(set(SP_TRAINING_TEXT)) + ["Hello world, hello tokens. 你好你好，世界。"] * 3)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, ranks):
    """A glm-4-9b-chat-layout directory (tiny weights, rope_ratio 500, ranks file, remote-code tokenizer config)."""
    root = tmp_path_factory.mktemp("glm4")
    src = root / "src"
    n = len(ranks)
    write_chatglm_checkpoint(src, chatglm_config(_name_or_path="THUDM/glm-4-9b-chat", padded_vocab_size=n + 32,
                                                 rope_ratio=500, eos_token_id=[n, n + 7, n + 9], pad_token_id=n))
    write_ranks(src / "tokenizer.model", ranks)
    (src / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "tokenizer_class": "ChatGLM4Tokenizer", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    (src / "tokenization_chatglm.py").write_text("raise RuntimeError('remote code must never run')\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # the command's own entry point: python -m ptuning_v2.convert SRC DST
        main([str(src), str(root / "dst"), "--no_progress"])
    return root / "dst", src, out.getvalue().splitlines()


def reference(src):
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken (a test-only dependency, pip install -e .[test]) is "
                                                      "the reference encoder")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(src / "tokenizer.model"))
    return tiktoken.Encoding("glm4-tiny", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                             special_tokens={name: len(ranks) + i for i, name in enumerate(SPECIALS)})


def test_text_encodes_to_tiktoken_ids_and_decodes_back(converted):
    dst, src, _ = converted
    enc = reference(src)
    tokenizer = AutoTokenizer.from_pretrained(dst)
    for text in SAMPLES:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == enc.encode_ordinary(text), text
        assert tokenizer.decode(ids) == text
    # Special tokens inside text are split out as tiktoken does with allowed_special="all".
    text = "你好<|user|>\nhi<|endoftext|>"
    assert tokenizer.encode(text, add_special_tokens=False) == enc.encode(text, allowed_special="all")


def test_the_pattern_is_the_converters_cl100k_default():
    """GLM-4's split pattern is cl100k_base's original text, which TikTokenConverter has as its default."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    assert CL100K_PATTERN == TikTokenConverter().pattern


def test_special_tokens_follow_the_ranks(converted, ranks):
    dst, _, lines = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    n = len(ranks)
    assert [tokenizer.convert_tokens_to_ids(name) for name in SPECIALS] == list(range(n, n + len(SPECIALS)))
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.padding_side) == (n, n, "left")
    assert tokenizer.encode("你好") == [n + 2, n + 4] + tokenizer.encode("你好", add_special_tokens=False)
    assert tokenizer.encode("") == [n + 2, n + 4]
    assert tokenizer.decode(tokenizer.encode("你好 world"), skip_special_tokens=True) == "你好 world"
    assert set(GenerationConfig.from_pretrained(dst).eos_token_id) == {n, n + 7, n + 9}
    assert any("glm4" in line for line in lines)


def test_loads_offline_with_no_remote_code(converted, monkeypatch):
    dst, _, _ = converted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = json.loads((dst / "tokenizer_config.json").read_text())
    assert "auto_map" not in config and "ChatGLM4Tokenizer" not in json.dumps(config)
    assert not (dst / "tokenization_chatglm.py").exists()
    assert AutoTokenizer.from_pretrained(dst).is_fast


def glm4_ids(tokenizer, messages, add_generation_prompt=True):
    """[gMASK] <sop>, then <|role|> + encode("\\n" + content) per message, then <|assistant|>."""
    special = tokenizer.convert_tokens_to_ids
    ids = [special("[gMASK]"), special("<sop>")]
    for message in messages:
        ids += [special(f"<|{message['role']}|>")]
        ids += tokenizer.encode(message.get("metadata", "") + "\n" + message["content"], add_special_tokens=False)
    return ids + ([special("<|assistant|>")] if add_generation_prompt else [])


def test_chat_template_builds_glm4_ids(converted):
    dst, src, _ = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == glm4_ids(tokenizer, CHAT)
    n = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids[:3] == [n + 2, n + 4, n + 6] and ids[-1] == n + 8  # [gMASK] <sop> <|system|> ... <|assistant|>
    assert [i for i in ids if i >= n] == [n + 2, n + 4, n + 6, n + 7, n + 8, n + 7, n + 8]
    for messages in (CHAT[1:2], [{"role": "user", "content": "  spaces\n\nand lines "}],
                     [{"role": "user", "content": "查天气"}, {"role": "assistant", "metadata": "get_weather",
                                                             "content": "{\"city\": \"北京\"}"},
                      {"role": "observation", "content": "晴"}]):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == glm4_ids(tokenizer, messages), messages
    with pytest.raises(Exception, match="roles are"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_chat_template_ids_equal_tiktoken_on_the_rendered_format(converted):
    dst, src, _ = converted
    enc = reference(src)
    tokenizer = AutoTokenizer.from_pretrained(dst)
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, return_dict=False)
    text = "[gMASK]<sop>" + "".join(f"<|{m['role']}|>\n{m['content']}" for m in CHAT) + "<|assistant|>"
    assert ids == enc.encode(text, allowed_special="all")


def test_training_features_start_with_gmask_sop(converted):
    from ptuning_v2.data import prompt_prefix_ids

    tokenizer = AutoTokenizer.from_pretrained(converted[0])
    n = tokenizer.eos_token_id
    assert prompt_prefix_ids(tokenizer) == [n + 2, n + 4]


def test_glm4_sized_ranks_put_the_specials_at_glm4_ids(tmp_path):
    """151,329 ranks (the real file's count; synthetic tokens) -> <|endoftext|> 151329 ... <|end_of_video|> 151342."""
    from model_patches import chatglm

    tokens = [bytes([b]) for b in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    tokens += [bytes([a, b, c]) for a in range(97, 123) for b in range(256) for c in range(256)]
    path = write_ranks(tmp_path / "tokenizer.model", {t: i for i, t in enumerate(tokens[:151329])})
    specials = chatglm.special_tokens(chatglm.GLM4, 151329)
    assert specials[0] == (151329, "<|endoftext|>") and specials[-1] == (151342, "<|end_of_video|>")
    tok, size = tiktoken_tokenizer(path, specials)
    assert size == 151329
    assert [tok.token_to_id(name) for name in SPECIALS] == list(range(151329, 151343))
    assert tok.encode("ab", add_special_tokens=False).ids == [256 + 97 * 256 + 98]


def test_detection_and_refusals(tmp_path, ranks):
    sp = write_sentencepiece(tmp_path / "sp.model")
    tk = write_ranks(tmp_path / "tk.model", ranks)
    assert is_tiktoken_file(tk) and not is_tiktoken_file(sp) and not is_tiktoken_file(tmp_path / "missing")
    assert len(read_ranks(tk)) == len(ranks)

    no_bytes = write_ranks(tmp_path / "few.model", {b"!": 0, b'"': 1})
    with pytest.raises(ValueError, match="single byte"):
        read_ranks(no_bytes)
    gap = dict(ranks)
    gap[b"\xff\xfe\xfd"] = len(ranks) + 5
    with pytest.raises(ValueError, match="0..N-1"):
        read_ranks(write_ranks(tmp_path / "gap.model", gap))

    # A converted directory whose padded vocabulary cannot hold the specials is refused, naming the file.
    src = tmp_path / "src"
    write_chatglm_checkpoint(src, chatglm_config(padded_vocab_size=64))
    write_ranks(src / "tokenizer.model", ranks)
    with pytest.raises(ConvertError, match="vocabulary has 64 rows"):
        convert_model(src, tmp_path / "dst", progress=False)
    with pytest.raises(ConvertError, match="--chat_format chatglm3"):
        convert_model(src, tmp_path / "dst2", progress=False, chat_format="chatglm3")
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst2").exists()

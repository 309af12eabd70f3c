"""The converted tokenizer of a ChatGLM2/3 checkpoint: sentencepiece ids for text, the special tokens at ChatGLM's
ids (appended after the pieces), [gMASK] sop in front, and a chat template giving the ids ChatGLM's chat code
builds (written here from the facts: ChatGLM3 <|role|> + encode(metadata + "\\n") + encode(content) per message,
then <|assistant|>; ChatGLM2 one encode of "[Round N]\\n\\n问：...\\n\\n答：")."""

import json

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer, GenerationConfig

from ptuning_v2.convert import convert_model
from ptuning_v2.sentencepiece_fast import read_spec, sentencepiece_tokenizer
from tiny_chatglm import chatglm_config, write_chatglm_checkpoint, write_sentencepiece

SAMPLES = ["今天天气很好，我们去公园散步吧。", "这家酒店的服务非常差！但是早餐不错。", "深度学习 模型", "未见过的字：龘靐",
           "  leading and  double  spaces ", "a\nb\n\nc", "def f(x):\n    return x", "“引号”和（括号）", "hello world", "",
           "sop eop soprano: only sop as a word"]  # ChatGLM's plain-named specials stay text
SPECIALS = ["[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"]  # ChatGLM's "sop"/"eop", at the same ids
ROLES = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
CHAT = [{"role": "system", "content": "你是一个有帮助的助手。"}, {"role": "user", "content": "你好"},
        {"role": "assistant", "content": "你好，请问有什么可以帮你？"}, {"role": "user", "content": "今天天气怎么样"}]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A ChatGLM3-layout directory (tokenizer.model + a tokenizer file naming the role tokens), converted."""
    root = tmp_path_factory.mktemp("chatglm3")
    src = root / "src"
    write_chatglm_checkpoint(src, chatglm_config(padded_vocab_size=448))
    write_sentencepiece(src / "tokenizer.model")
    (src / "tokenization_chatglm.py").write_text("# remote code naming <|user|> and <|observation|>\n")
    convert_model(src, root / "dst", progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    return root / "dst", sp


def test_special_tokens_sit_after_the_pieces(converted):
    dst, sp = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    n = sp.get_piece_size()
    for offset, name in enumerate(SPECIALS + ROLES):
        assert tokenizer.convert_tokens_to_ids(name) == n + offset
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (2, 0, 0)
    assert tokenizer.padding_side == "left"


def test_text_encodes_to_the_sentencepiece_ids(converted):
    dst, sp = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    gmask, sop = sp.get_piece_size() + 1, sp.get_piece_size() + 3
    for text in SAMPLES:
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text), text
        assert tokenizer.encode(text) == [gmask, sop] + sp.encode(text), text
        if text.strip():
            assert tokenizer.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def chatglm3_ids(sp, messages, add_generation_prompt=True):
    n = sp.get_piece_size()
    role_id = {role: n + len(SPECIALS) + i for i, role in enumerate(["system", "user", "assistant", "observation"])}
    ids = [n + 1, n + 3]  # [gMASK] sop
    for message in messages:
        ids += [role_id[message["role"]]] + sp.encode(message.get("metadata", "") + "\n") + sp.encode(message["content"])
    return ids + ([role_id["assistant"]] if add_generation_prompt else [])


def test_chat_template_builds_chatglm3_ids(converted):
    dst, sp = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    for messages in (CHAT, CHAT[1:2], [{"role": "user", "content": "hello  world\n第二行"}],
                     [{"role": "user", "content": "查天气"}, {"role": "assistant", "metadata": "get_weather",
                                                             "content": "{\"city\": \"北京\"}"},
                      {"role": "observation", "content": "晴"}]):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == chatglm3_ids(sp, messages), messages


def test_generation_stops_at_eos_and_the_role_tokens(converted):
    dst, sp = converted
    n = sp.get_piece_size()
    stop = GenerationConfig.from_pretrained(dst).eos_token_id
    assert set(stop) == {2, n + len(SPECIALS) + 1, n + len(SPECIALS) + 3}  # eos, <|user|>, <|observation|>


def test_chatglm2_format(tmp_path):
    src = tmp_path / "src"
    write_chatglm_checkpoint(src, chatglm_config(padded_vocab_size=448, _name_or_path="THUDM/chatglm2-6b"))
    write_sentencepiece(src / "tokenizer.model")
    convert_model(src, tmp_path / "dst", progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dst")
    n = sp.get_piece_size()
    assert tokenizer.convert_tokens_to_ids("<|user|>") == tokenizer.unk_token_id  # ChatGLM2 has no role tokens
    messages = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
                {"role": "user", "content": "今天天气怎么样"}]
    prompt = "[Round 1]\n\n问：你好\n\n答：你好！\n\n[Round 2]\n\n问：今天天气怎么样\n\n答："
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == [n + 1, n + 3] + sp.encode(prompt)
    assert GenerationConfig.from_pretrained(tmp_path / "dst").eos_token_id == 2


@pytest.mark.parametrize("settings", [
    {},                                                                   # ChatGLM-like
    {"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True},   # sentencepiece's defaults
    {"add_dummy_prefix": False},
    {"model_type": "bpe"},
])
def test_sentencepiece_settings_are_followed(tmp_path, settings):
    path = write_sentencepiece(tmp_path / "tokenizer.model", **settings)
    spec = read_spec(path.read_bytes())
    for key in ("add_dummy_prefix", "remove_extra_whitespaces"):
        if key in settings:
            assert getattr(spec, key) == settings[key]
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok, _ = sentencepiece_tokenizer(path)
    for text in SAMPLES + ["ＡＢＣ１２３全角", "tab\there"]:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text


def test_a_tokenizer_model_that_is_not_sentencepiece_is_left_out(tmp_path):
    # Neither sentencepiece nor tiktoken ranks (GLM-4's, see test_convert_glm4_tokenizer.py): said in one line.
    src = tmp_path / "src"
    write_chatglm_checkpoint(src)
    (src / "tokenizer.model").write_bytes(b"not a tokenizer\x00\xff\n")
    lines = []
    convert_model(src, tmp_path / "dst", progress=False, log=lines.append)
    assert any("neither a sentencepiece model nor a tiktoken ranks file" in line for line in lines)
    assert not (tmp_path / "dst" / "tokenizer.json").exists()
    assert json.loads((tmp_path / "dst" / "config.json").read_text())["model_type"] == "glm"


def test_training_features_are_the_ones_thudm_ptuning_builds(converted):
    """THUDM's ChatGLM2 ptuning/main.py: encode(prompt, add_special_tokens=True) + encode(answer,
    add_special_tokens=False) + [eos], labels on the answer and eos."""
    from ptuning_v2.data import Example, build_training_features, get_template, prompt_prefix_ids

    dst, sp = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    n = sp.get_piece_size()
    assert prompt_prefix_ids(tokenizer) == [n + 1, n + 3]
    template = get_template("chatglm")
    features = build_training_features(Example("今天天气怎么样", "很好"), tokenizer, template, 64, 16)
    prompt = template.build_prompt("今天天气怎么样", [], "")
    source = [n + 1, n + 3] + sp.encode(prompt)
    target = sp.encode("很好") + [2]
    assert features["input_ids"] == source + target
    assert features["labels"] == [-100] * len(source) + target


def test_prompt_prefix_of_other_tokenizers_is_unchanged():
    from ptuning_v2.data import prompt_prefix_ids
    from tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()           # no post-processor: [bos], as before
    assert prompt_prefix_ids(tokenizer) == [tokenizer.bos_token_id]
    tokenizer.bos_token = None
    assert prompt_prefix_ids(tokenizer) == []


def test_chat_prompt_template_uses_the_chat_template(converted):
    """--prompt_template chat: the prompt is the chat template's generation prompt (history and a system message
    from --source_prefix included); labels cover exactly the assistant's tokens and eos."""
    from ptuning_v2.data import Example, PromptTemplate, build_prompt_features, build_training_features, get_template

    dst, sp = converted
    tokenizer = AutoTokenizer.from_pretrained(dst)
    template = PromptTemplate.from_dict(get_template("chat").to_dict())  # as recorded in a checkpoint
    example = Example("今天天气怎么样", "很好，适合散步。", (("你好", "你好，请问有什么可以帮你？"),))
    messages = [{"role": "system", "content": "你是一个有帮助的助手。"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好，请问有什么可以帮你？"}, {"role": "user", "content": "今天天气怎么样"}]
    prompt = chatglm3_ids(sp, messages)
    answer = sp.encode("\n") + sp.encode("很好，适合散步。") + [2]

    features = build_training_features(example, tokenizer, template, 256, 64, source_prefix="你是一个有帮助的助手。")
    assert features["input_ids"] == prompt + answer
    assert features["labels"] == [-100] * len(prompt) + answer
    assert build_prompt_features(example, tokenizer, template, 256, "你是一个有帮助的助手。")["input_ids"] == prompt

    # Too long: the template's opening and the prompt's end are kept; a long answer keeps eos.
    short = build_prompt_features(example, tokenizer, template, 12, "你是一个有帮助的助手。")["input_ids"]
    n = sp.get_piece_size()
    assert len(short) == 12 and short[:2] == [n + 1, n + 3] and short[2:] == prompt[-10:]
    capped = build_training_features(example, tokenizer, template, 256, 3)
    assert capped["input_ids"][-3:] == answer[:2] + [2]


def test_chat_prompt_template_needs_a_chat_template():
    from ptuning_v2.data import Example, build_prompt_features, get_template
    from tiny_models import tiny_tokenizer

    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        build_prompt_features(Example("问", "答"), tiny_tokenizer(), get_template("chat"), 32)


def test_chat_prompt_template_with_a_chatml_template():
    """Any tokenizer that ships a chat template: a Qwen2-style one ends the answer with <|im_end|> (its eos)."""
    from ptuning_v2.data import Example, build_training_features, get_template
    from tiny_models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    features = build_training_features(Example("你好", "好的"), tokenizer, get_template("chat"), 64, 16)
    labelled = [t for t, label in zip(features["input_ids"], features["labels"]) if label != -100]
    assert tokenizer.decode(labelled) == "好的<|im_end|>\n"
    assert labelled.count(tokenizer.eos_token_id) == 1

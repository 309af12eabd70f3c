import json

import pytest

from ptuning_v2.data import (
    IGNORE_INDEX,
    Columns,
    DataFormatError,
    Example,
    build_prompt_features,
    build_training_features,
    get_template,
    load_examples,
)
from tiny_models import tiny_tokenizer


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_chatglm_template_with_history():
    template = get_template("chatglm")
    prompt = template.build_prompt("你好吗", [("你是谁", "我是小")], source_prefix="")
    assert prompt == "[Round 1]\n\n问：你是谁\n\n答：我是小\n\n[Round 2]\n\n问：你好吗\n\n答："
    assert get_template("plain").build_prompt("好", source_prefix="问：") == "问：好"
    with pytest.raises(ValueError, match="chatglm, instruction, question_last, plain"):
        get_template("alpaca-v9")


def test_training_features_mask_the_prompt_and_end_with_eos():
    tok = tiny_tokenizer()
    features = build_training_features(Example("这个好不好", "很好"), tok, get_template("plain"), 64, 16)
    source_len = 1 + len("这个好不好")
    assert features["input_ids"][0] == tok.bos_token_id
    assert features["input_ids"][-1] == tok.eos_token_id
    assert features["labels"][:source_len] == [IGNORE_INDEX] * source_len
    assert tok.decode(features["labels"][source_len:-1]) == "很好"
    assert len(features["input_ids"]) == len(features["labels"]) == len(features["attention_mask"])


def test_truncation_keeps_prompt_end_and_answer_start():
    tok = tiny_tokenizer()
    features = build_training_features(Example("0123456789", "abcdef"), tok, get_template("plain"), 5, 3)
    assert tok.decode(features["input_ids"][1:5]) == "6789"   # bos + the last 4 prompt tokens
    assert tok.decode(features["input_ids"][5:8]) == "abc"
    prompt = build_prompt_features(Example("0123456789", ""), tok, get_template("plain"), 5)
    assert prompt["input_ids"] == features["input_ids"][:5]


def test_truncation_keeps_the_instruction_and_the_prompt_end():
    tok = tiny_tokenizer()
    template = get_template("instruction")
    long_review = "这个好不好" * 8
    features = build_training_features(Example(long_review, "好"), tok, template, 16, 3, source_prefix="问：")
    source = features["input_ids"][:16]
    assert source[0] == tok.bos_token_id and features["labels"][16] != IGNORE_INDEX
    assert tok.decode(source[1:3]) == "问："                       # the instruction survives the cut
    assert tok.decode(source[-3:]) == "\n答："                     # and so does the answer marker
    assert tok.decode(source[3:-3]) == long_review[-10:]           # the review loses its start
    prompt = build_prompt_features(Example(long_review, ""), tok, template, 16, source_prefix="问：")
    assert prompt["input_ids"] == source
    short = build_prompt_features(Example("好", ""), tok, template, 16, source_prefix="问：")
    assert tok.decode(short["input_ids"][1:]) == "问：好\n答："    # a prompt that fits is unchanged
    # an instruction longer than half the budget is not kept: the prompt's end is
    cut = build_prompt_features(Example(long_review, ""), tok, template, 8, source_prefix="问问问问问：")
    assert tok.decode(cut["input_ids"][1:]) == long_review[-4:] + "\n答："


def test_question_last_puts_the_instruction_after_the_text_and_never_cuts_it():
    tok = tiny_tokenizer()
    template = get_template("question_last")
    assert template.build_prompt("好评", source_prefix="问？") == "好评\n问？\n答："
    # past turns (e.g. in-context demonstrations) are asked the same question
    assert template.build_prompt("好评", [("差评", "否")], source_prefix="问？") == "差评\n问？\n答：否\n好评\n问？\n答："
    long_review = "这个好不好" * 8
    features = build_training_features(Example(long_review, "好"), tok, template, 16, 3, source_prefix="问？")
    source = features["input_ids"][:16]
    assert source[0] == tok.bos_token_id and features["labels"][16] != IGNORE_INDEX
    assert tok.decode(source[-6:]) == "\n问？\n答："                 # the question and the answer marker survive
    assert tok.decode(source[1:-6]) == long_review[-9:]            # the review loses its start
    assert build_prompt_features(Example(long_review, ""), tok, template, 16, source_prefix="问？")["input_ids"] == source


def test_loads_each_layout(tmp_path):
    adgen = write_lines(tmp_path / "a.jsonl", [json.dumps({"content": "好", "summary": "很好"}, ensure_ascii=False)])
    assert load_examples(adgen, Columns()) == [Example("好", "很好")]
    turns = write_lines(tmp_path / "m.jsonl", [json.dumps({"prompt": "q2", "response": "r2", "history": [["q1", "r1"]]})])
    assert load_examples(turns, Columns("prompt", "response", history="history")) == [
        Example("q2", "r2", (("q1", "r1"),))
    ]
    alpaca = write_lines(tmp_path / "i.jsonl", [json.dumps({"instruction": "i", "input": "x", "output": "o"})])
    assert load_examples(alpaca, Columns("instruction", "output", input="input")) == [Example("i\nx", "o")]


@pytest.mark.parametrize(
    "line, columns, message",
    [
        ('{"content": "a", "summary": "b"', Columns(), "line 2: not valid JSON"),
        ('{"content": "a"}', Columns(), "line 2: field 'summary' is missing"),
        ('{"content": 3, "summary": "b"}', Columns(), "line 2: field 'content' must be a string, got int"),
        ('["content", "summary"]', Columns(), "line 2: expected a JSON object"),
        ('{"prompt": "a", "response": "b", "history": [["q"]]}', Columns("prompt", "response", "history"),
         "line 2: field 'history' must be a list of"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path, line, columns, message):
    good = {"content": "x", "summary": "y", "prompt": "x", "response": "y", "history": []}
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(good), line])
    with pytest.raises(DataFormatError) as err:
        load_examples(path, columns)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataFormatError, match="data file not found"):
        load_examples(tmp_path / "nope.jsonl", Columns())
    with pytest.raises(DataFormatError, match="no examples"):
        load_examples(write_lines(tmp_path / "empty.jsonl", [""]), Columns())

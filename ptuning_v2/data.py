"""Examples from JSON lines -> token ids and labels.

Formats (one JSON object per line; column names are flags, as in ChatGLM-6B's ptuning):
  * content/summary (ADGEN):            --prompt_column content --response_column summary
  * instruction/input/output (Alpaca):  --prompt_column instruction --input_column input --response_column output
  * prompt/response/history (multi-turn): --history_column history, history = [[query, response], ...]
  * text/label (classification):        --prompt_column text --response_column label (the label is a word)

A training feature is input_ids = [bos] + source + target + [eos] with labels = -100 over [bos] + source and
the token ids over target + [eos]; the loss is thus on the answer only. Sources longer than max_source_length
keep their *end* (where the prompt template puts the question), targets keep their start. "[bos]" is whatever the
tokenizer itself puts in front of a text (``prompt_prefix_ids``): [gMASK] sop for a converted ChatGLM2/3 tokenizer,
as THUDM's ptuning/main.py builds its inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

IGNORE_INDEX = -100


class DataFormatError(ValueError):
    """A data file line that cannot be used; the message names the file, the line and the field."""


@dataclass(frozen=True)
class PromptTemplate:
    """How a (query, history) pair becomes the source text. Recorded in checkpoints, used again by chat/evaluate.

    ``round`` formats one turn's question with ``{index}`` (1-based) and ``{query}``; a past turn is that text
    followed by its response and ``separator``. A round with ``{instruction}`` puts the source prefix (the task
    instruction) there, after each turn's query, instead of once before the whole prompt.
    """

    name: str
    round: str
    separator: str

    @property
    def instruction_last(self) -> bool:
        """True when the instruction follows the query (the round has ``{instruction}``)."""
        return "{instruction}" in self.round

    def build_prompt(self, query: str, history: list[tuple[str, str]] | None = None, source_prefix: str = "") -> str:
        parts = [] if self.instruction_last else [source_prefix]
        for index, (old_query, response) in enumerate(history or [], start=1):
            parts.append(self.round.format(index=index, query=old_query, instruction=source_prefix) + response
                         + self.separator)
        parts.append(self.round.format(index=len(history or []) + 1, query=query, instruction=source_prefix))
        return "".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PromptTemplate":
        return cls(name=d["name"], round=d["round"], separator=d["separator"])


PROMPT_TEMPLATES = {
    # ChatGLM2/3-style rounds: "[Round 1]\n\n问：...\n\n答：" (问 = question, 答 = answer).
    "chatglm": PromptTemplate("chatglm", "[Round {index}]\n\n问：{query}\n\n答：", "\n\n"),
    # One question, then 答 (answer): "...\n答：". Suits instructions given with --source_prefix.
    "instruction": PromptTemplate("instruction", "{query}\n答：", "\n"),
    # The text first, then the instruction (--source_prefix) as the question right before 答: "text\nquestion\n答：".
    # A too-long prompt loses the start of its text, so the question is never cut.
    "question_last": PromptTemplate("question_last", "{query}\n{instruction}\n答：", "\n"),
    # The query as it is, e.g. with --source_prefix carrying the instruction; past turns on their own lines.
    "plain": PromptTemplate("plain", "{query}", "\n"),
    # The tokenizer's own chat template (apply_chat_template): history as user/assistant turns, --source_prefix as
    # a system message; see encode_chat.
    "chat": PromptTemplate("chat", "", ""),
}
CHAT_TEMPLATE = "chat"


def get_template(name: str) -> PromptTemplate:
    try:
        return PROMPT_TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; known: {', '.join(PROMPT_TEMPLATES)}") from None


@dataclass(frozen=True)
class Columns:
    prompt: str = "content"
    response: str = "summary"
    history: str | None = None
    input: str | None = None   # Alpaca-style extra input appended to the instruction


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; malformed JSON names the file and line.

    The file must be UTF-8 (a leading byte-order mark is accepted). A line that is not names the file, the line and
    the byte offset of the first bad byte, and says how to convert a GBK file (the usual cause for Chinese data).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: data file not found")
    records = []
    offset = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(_not_utf8_message(path, line_no, offset, raw, e)) from None
            offset += len(raw)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}, line {line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(f"{path}, line {line_no}: expected a JSON object, got {type(obj).__name__}")
            records.append((line_no, obj))
    return records


def _not_utf8_message(path: Path, line_no: int, line_offset: int, raw: bytes, e: UnicodeDecodeError) -> str:
    bad = raw[e.start:e.start + 4]
    try:
        raw.decode("gb18030")
        guess = "the line decodes as GBK/GB18030, so the file is probably GBK-encoded"
    except UnicodeDecodeError:
        guess = "if the file is GBK-encoded"
    fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return (f"{path}, line {line_no} (byte offset {line_offset + e.start} in the file): not UTF-8 (bytes "
            f"{bad.hex(' ')}); {guess}: convert it with `iconv -f GBK -t UTF-8 {path} > {fixed}`")


def _text_field(obj: dict, field: str, where: str, required: bool = True) -> str:
    if field not in obj:
        if required:
            raise DataFormatError(f"{where}: field {field!r} is missing (fields present: {', '.join(obj) or 'none'})")
        return ""
    value = obj[field]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def _history_field(obj: dict, field: str, where: str) -> list[tuple[str, str]]:
    value = obj.get(field) or []
    if not isinstance(value, list) or not all(
        isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in value
    ):
        raise DataFormatError(f"{where}: field {field!r} must be a list of [query, response] string pairs")
    return [(q, r) for q, r in value]


@dataclass(frozen=True)
class Example:
    query: str
    response: str
    history: tuple[tuple[str, str], ...] = ()


def load_examples(path: str | Path, columns: Columns, require_response: bool = True) -> list[Example]:
    examples = []
    for line_no, obj in read_jsonl(path):
        where = f"{path}, line {line_no}"
        query = _text_field(obj, columns.prompt, where)
        if columns.input:
            extra = _text_field(obj, columns.input, where, required=False)
            query = f"{query}\n{extra}" if extra else query
        response = _text_field(obj, columns.response, where, required=require_response)
        history = _history_field(obj, columns.history, where) if columns.history else []
        examples.append(Example(query, response, tuple(history)))
    if not examples:
        raise DataFormatError(f"{path}: no examples found")
    return examples


def prompt_prefix_ids(tokenizer) -> list[int]:
    """The ids every prompt starts with: those the tokenizer itself puts in front of a text (a converted ChatGLM2/3
    tokenizer: [gMASK] sop; Llama: <s>), else [bos] when it has one (the shipped base), else none (Qwen2)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain]
    prefix = full[:starts[0]] if plain and starts else []
    if not prefix and tokenizer.bos_token_id is not None:
        prefix = [tokenizer.bos_token_id]
    return prefix


def encode_source(tokenizer, prompt: str, max_source_length: int, keep_head: str = "") -> list[int]:
    """prompt_prefix_ids + the prompt's ids. A too-long prompt loses its middle: its start ``keep_head`` (the
    instruction, --source_prefix) and its end (the question and the answer marker) are kept.

    Cutting only the start would drop the instruction from exactly the long inputs, and a model trained that way
    answers those by the missing instruction instead of by their text (bench/length_shortcut.py). The instruction
    is kept while it takes at most half of the budget. A prompt that fits is tokenized whole, as before.
    """
    bos = prompt_prefix_ids(tokenizer)
    ids = tokenizer.encode(prompt, add_special_tokens=False, verbose=False)  # long prompts are cut below
    budget = max(max_source_length - len(bos), 1)
    if len(ids) <= budget:
        return bos + ids
    head = []
    if keep_head and prompt.startswith(keep_head):
        head = tokenizer.encode(keep_head, add_special_tokens=False, verbose=False)
        if len(head) > budget // 2:
            head = []
    rest = tokenizer.encode(prompt[len(keep_head):], add_special_tokens=False, verbose=False) if head else ids
    return bos + head + rest[len(rest) - (budget - len(head)):]


def chat_messages(example: Example, source_prefix: str = "") -> list[dict]:
    messages = [{"role": "system", "content": source_prefix}] if source_prefix else []
    for query, response in example.history:
        messages += [{"role": "user", "content": query}, {"role": "assistant", "content": response}]
    return messages + [{"role": "user", "content": example.query}]


def _chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--prompt_template chat needs a tokenizer with a chat template; "
                         f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')} has none (use chatglm, instruction "
                         "or plain)")
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True,
                                              return_dict=False))


def _keep_head_and_end(tokenizer, ids: list[int], max_length: int) -> list[int]:
    """A too-long chat prompt keeps the template's fixed opening (e.g. [gMASK] sop: what renderings of different
    conversations share) and its end."""
    if len(ids) <= max_length:
        return ids
    a, b = (_chat_ids(tokenizer, [{"role": "user", "content": c}], True) for c in ("甲", "乙"))
    head = next((i for i, (x, y, z) in enumerate(zip(a, b, ids)) if not x == y == z), min(len(a), len(b), len(ids)))
    head = min(head, max_length - 1)
    return ids[:head] + ids[len(ids) - (max_length - head):]


def encode_chat(example: Example, tokenizer, max_source_length: int, max_target_length: int | None = None,
                source_prefix: str = "") -> tuple[list[int], list[int]]:
    """(source, target) ids through the tokenizer's chat template. source: the conversation up to and including
    the generation prompt (e.g. <|assistant|>). target: what the template adds for the assistant's answer, with the
    end token: eos is appended unless the template already ends the turn with eos (Qwen2's <|im_end|>)."""
    messages = chat_messages(example, source_prefix)
    prompt = _chat_ids(tokenizer, messages, add_generation_prompt=True)
    target: list[int] = []
    if max_target_length is not None:
        full = _chat_ids(tokenizer, messages + [{"role": "assistant", "content": example.response}], False)
        if full[:len(prompt)] != prompt:
            raise ValueError("the chat template renders a conversation differently once the answer follows it, so "
                             "the answer's tokens cannot be told apart; use another --prompt_template")
        target = full[len(prompt):]
        eos = tokenizer.eos_token_id
        if eos not in target:
            target = target + [eos]
        if len(target) > max_target_length:
            target = target[:max_target_length - 1] + [eos]
    return _keep_head_and_end(tokenizer, prompt, max_source_length), target


def encode_template_source(example: Example, tokenizer, template: PromptTemplate, max_source_length: int,
                           source_prefix: str = "") -> list[int]:
    """The source ids of a non-chat template; a too-long prompt keeps a leading instruction and its end."""
    prompt = template.build_prompt(example.query, list(example.history), source_prefix)
    keep_head = "" if template.instruction_last else source_prefix  # a trailing instruction is in the kept end
    return encode_source(tokenizer, prompt, max_source_length, keep_head=keep_head)


def build_training_features(
    example: Example, tokenizer, template: PromptTemplate, max_source_length: int, max_target_length: int,
    source_prefix: str = "",
) -> dict[str, list[int]]:
    if template.name == CHAT_TEMPLATE:
        source, target = encode_chat(example, tokenizer, max_source_length, max_target_length, source_prefix)
        return {"input_ids": source + target, "attention_mask": [1] * (len(source) + len(target)),
                "labels": [IGNORE_INDEX] * len(source) + target}
    source = encode_template_source(example, tokenizer, template, max_source_length, source_prefix)
    target = tokenizer.encode(example.response, add_special_tokens=False, verbose=False)[:max_target_length]
    target = target + [tokenizer.eos_token_id]
    return {
        "input_ids": source + target,
        "attention_mask": [1] * (len(source) + len(target)),
        "labels": [IGNORE_INDEX] * len(source) + target,
    }


def build_prompt_features(
    example: Example, tokenizer, template: PromptTemplate, max_source_length: int, source_prefix: str = ""
) -> dict[str, list[int]]:
    """The source alone, for generation and scoring."""
    if template.name == CHAT_TEMPLATE:
        source, _ = encode_chat(example, tokenizer, max_source_length, None, source_prefix)
        return {"input_ids": source, "attention_mask": [1] * len(source)}
    source = encode_template_source(example, tokenizer, template, max_source_length, source_prefix)
    return {"input_ids": source, "attention_mask": [1] * len(source)}

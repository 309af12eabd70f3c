"""Does another prompt make the frozen base's answer position carry more sentiment? Probes per template.

    python bench/template_probe.py [--train 4096] [--model data/base_model]

For each template below, every review is formatted with it (cut to 256 tokens, as train.sh cuts) and run once
through the frozen base. Two numbers per template:
  * last-token probe: a logistic regression (bench/probe.py's, standardized features) on the hidden state (hidden,)
    of the prompt's last token, per layer output 1..L, fit on the first --train training reviews, scored on the
    1,000-review test split. The prefix has to change the answer at exactly that position;
  * zero-shot: the base's own next-token log-probability of a positive word minus a negative one at that
    position, thresholded at its median over the test split (so the label prior cannot help or hurt), for a
    few word pairs. Near 50% means the base's language model does not tie the review to the word pair there.
A template that ends where a language model naturally goes on with a judgement (e.g. "总的来说，" "all in all,")
is the cloze idea of PET / LM-BFF; the default is train.sh's "instruction + review + 答：".

Writes bench/results/template_probe.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from probe import INSTRUCTION, features, fit_logistic  # noqa: E402
from ptuning_v2.data import Columns, PromptTemplate, load_examples  # noqa: E402

MAX_SOURCE_LENGTH = 256  # train.sh's sentiment cut
# name -> (round with {query} = the review, source prefix before it)
TEMPLATES = {
    "instruction + review + 答： (train.sh)": ("{query}\n答：", INSTRUCTION),
    "review + question + 答：": ("{query}\n这条评论的情感是积极还是消极？\n答：", ""),
    "review + 总的来说，": ("{query}\n总的来说，", ""),
    "review + 总之，": ("{query}总之，", ""),
    "instruction + review + 总的来说，": ("{query}\n总的来说，", INSTRUCTION),
    "review + 感觉": ("{query}\n感觉", ""),
}
# (positive word, negative word): the first token of each is compared
WORD_PAIRS = [("积极", "消极"), ("好", "差"), ("不错", "失望"), ("满意", "不")]


@torch.no_grad()
def last_token_states(model, tokenizer, examples, round_text: str, source_prefix: str):
    """(layers, N, hidden) hidden states at each prompt's last token, and (N, vocab) next-token log-probabilities."""
    states = features(model, tokenizer, examples, MAX_SOURCE_LENGTH, template=PromptTemplate("probe", round_text, "\n"),
                      source_prefix=source_prefix)[:, :, 0]                     # (layers, N, hidden)
    return states, model.get_output_embeddings()(states[-1]).log_softmax(-1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=4096, help="training reviews the probes are fit on")
    p.add_argument("--model", default=str(ROOT / "data" / "base_model"))
    p.add_argument("--data", default=str(ROOT / "data" / "generated" / "sentiment"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "template_probe.md"))
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    columns = Columns(prompt="text", response="label")
    train = load_examples(Path(args.data) / "train.jsonl", columns)[: args.train]
    test = load_examples(Path(args.data) / "test.jsonl", columns)
    y_train = torch.tensor([float(ex.response == "积极") for ex in train])
    y_test = torch.tensor([float(ex.response == "积极") for ex in test])
    pairs = [(a, b, tokenizer.encode(a, add_special_tokens=False)[0], tokenizer.encode(b, add_special_tokens=False)[0])
             for a, b in WORD_PAIRS]
    rows, started = [], time.time()
    for name, (round_text, source_prefix) in TEMPLATES.items():
        train_states, _ = last_token_states(model, tokenizer, train, round_text, source_prefix)
        test_states, test_logprobs = last_token_states(model, tokenizer, test, round_text, source_prefix)
        probes = []
        for layer in range(train_states.shape[0]):
            predict = fit_logistic(train_states[layer], y_train)
            probes.append(100 * (predict(test_states[layer]).float() == y_test).float().mean().item())
        zero_shot = []
        for _, _, pos, neg in pairs:
            margin = test_logprobs[:, pos] - test_logprobs[:, neg]
            zero_shot.append(100 * ((margin > margin.median()).float() == y_test).float().mean().item())
        rows.append((name, probes, zero_shot))
        print(name, [f"{a:.1f}" for a in probes], [f"{a:.1f}" for a in zero_shot], flush=True)
    minutes = (time.time() - started) / 60
    model_name = Path(args.model).resolve()
    model_name = model_name.relative_to(ROOT) if model_name.is_relative_to(ROOT) else model_name
    layers = len(rows[0][1])
    lines = [
        "# The frozen base's answer position under other prompts (sentiment)",
        "",
        f"`python bench/template_probe.py --train {args.train}` on `{model_name}` ({minutes:.0f} min on 2 CPU cores). "
        f"Last-token probe: logistic regression on the last prompt token's hidden state, fit on {args.train:,} "
        "training reviews, test split (1,000 reviews, 52% 消极), per layer output. Zero-shot: the base's "
        "log-probability of the positive minus the negative word there, thresholded at its test median.",
        "",
        "| template | " + " | ".join(f"probe, layer {i + 1}" for i in range(layers)) + " | "
        + " | ".join(f"zero-shot {a}/{b}" for a, b, _, _ in pairs) + " |",
        "|---|" + "---:|" * (layers + len(pairs)),
    ]
    for name, probes, zero_shot in rows:
        lines.append(f"| {name} | " + " | ".join(f"{a:.1f}" for a in (*probes, *zero_shot)) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Does a trained prefix judge the review or its length? Positive reviews are longer in this data.

    python bench/length_shortcut.py --make_balanced     # writes output/length_balanced/train.jsonl
    python bench/length_shortcut.py                     # the table over the finished runs in output/learning/
    python bench/length_shortcut.py --checkpoint output/learning/default/seed42 --checkpoint output/learning/default/seed44
                                                        # + how those prefixes move the answer

1. The length rule: "积极 if the review has more than T characters", T chosen on the training split; its test accuracy
   is what length alone is worth.
2. For every finished sentiment run (output/learning/<config>/seed<S>/eval/generated_predictions.jsonl, written by
   bench/learning.py and bench/methods.py): its test accuracy, the share of 积极 answers, and how much of its answers a
   single length threshold reproduces (the best T for that run's own answers): near 100% means the run answers by
   length, whatever it was trained to do; and how many of its answers are "积极 iff the prompt was longer than
   train.sh's previous --max_source_length, 96 tokens", i.e. iff cutting the prompt's start would remove the instruction
   (what the data pipeline did before it learned to keep the instruction).
3. --make_balanced: a training file in which length says nothing about the label: the training reviews are cut
   into 20 bins by length (equal counts), and in each bin the larger label is subsampled (seed 0) to the size of the
   smaller one. bench/learning.py's `length_balanced` config trains train.sh's default on it.

4. --checkpoint CKPT: per prompt-length bucket, the first answer token's logit margin d = logit(积极) - logit(消)
   at the answer position for the base alone and with the prefix (one forward each per test review, the prompt
   built as in training). How far the prefix moves d in each bucket shows whether it reads the review or only
   the prompt's length.

Writes bench/results/length_shortcut.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT / "data" / "generated" / "sentiment"
BALANCED = ROOT / "output" / "length_balanced" / "train.jsonl"
POSITIVE = "积极"
BINS = 20
INSTRUCTION = "判断这条评论的情感是积极还是消极："  # train.sh's sentiment instruction
MAX_SOURCE_LENGTH = 96  # the cut train.sh used before it kept 256 tokens (and the instruction of cut prompts)


def read_jsonl(path: Path) -> list[dict]:
    from ptuning_v2.data import read_jsonl as numbered_lines

    return [obj for _, obj in numbered_lines(path)]


def best_threshold(lengths: list[int], positive: list[bool]) -> tuple[int, float]:
    """(T, agreement): the T for which "positive iff length > T" agrees most often with `positive`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    # Start with T below every length (all predicted positive) and move T past one length at a time.
    agree = sum(positive)
    best = (lengths[order[0]] - 1, agree)
    for rank, i in enumerate(order):
        agree += -1 if positive[i] else 1
        last_of_its_length = rank + 1 == len(order) or lengths[order[rank + 1]] != lengths[i]
        if last_of_its_length and agree > best[1]:
            best = (lengths[i], agree)
    return best[0], best[1] / len(lengths)


def length_balanced(rows: list[dict], seed: int = 0) -> list[dict]:
    """Per length bin (BINS bins of equal count), as many 积极 as 消极 reviews; order shuffled with `seed`."""
    rng = random.Random(seed)
    ranked = sorted(rows, key=lambda r: len(r["text"]))
    kept = []
    for b in range(BINS):
        chunk = ranked[b * len(ranked) // BINS:(b + 1) * len(ranked) // BINS]
        pos = [r for r in chunk if r["label"] == POSITIVE]
        neg = [r for r in chunk if r["label"] != POSITIVE]
        n = min(len(pos), len(neg))
        kept += rng.sample(pos, n) + rng.sample(neg, n)
    rng.shuffle(kept)
    return kept


def too_long(rows: list[dict]) -> list[bool]:
    """Whether each review's prompt (bos + instruction + review + answer marker) is over MAX_SOURCE_LENGTH tokens."""
    from transformers import AutoTokenizer

    from ptuning_v2.data import get_template, prompt_prefix_ids

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "base_model")
    template, start = get_template("instruction"), len(prompt_prefix_ids(tokenizer))
    return [start + len(tokenizer.encode(template.build_prompt(r["text"], source_prefix=INSTRUCTION),
                                         add_special_tokens=False)) > MAX_SOURCE_LENGTH for r in rows]


def run_rows(test: list[dict], cut: list[bool], runs: Path) -> list[str]:
    """One markdown row per finished run; cut: too_long(test)."""
    lengths = [len(r["text"]) for r in test]
    lines = []
    for pred_file in sorted(runs.glob("*/seed*/eval/generated_predictions.jsonl")):
        run = pred_file.parent.parent
        if run.parent.name.startswith("idiom") or "steps" in run.parent.name:  # full-budget sentiment runs only
            continue
        preds = read_jsonl(pred_file)
        if len(preds) != len(test) or any(p["prompt"].find(t["text"][:20]) < 0 for p, t in zip(preds[:5], test)):
            continue  # not a run on the sentiment test split
        answers = [p["predict"] for p in preds]
        accuracy = 100 * statistics.mean(a == t["label"] for a, t in zip(answers, test))
        share = 100 * statistics.mean(a == POSITIVE for a in answers)
        threshold, agreement = best_threshold(lengths, [a == POSITIVE for a in answers])
        by_cut = 100 * statistics.mean((a == POSITIVE) == c for a, c in zip(answers, cut))
        lines.append(f"| {run.parent.name} | {run.name.removeprefix('seed')} | {accuracy:.1f} | {share:.0f} | "
                     f"{100 * agreement:.1f} (T = {threshold}) | {by_cut:.1f} |")
    return lines


LENGTH_BUCKETS = ((1, 32), (33, 64), (65, 95))  # prompt tokens; then 96 up to the checkpoint's --max_source_length


@torch.no_grad()
def margins_by_length(checkpoint: str, test: list[dict]) -> list[str]:
    """Markdown rows: per prompt-length bucket, reviews, 积极 share, mean margin d of the base and of base+prefix,
    their difference, and the accuracy of sign(d) with the prefix."""
    from ptuning_v2.checkpoint import load_prefix_model
    from ptuning_v2.data import Example, PromptTemplate, build_prompt_features

    model, tokenizer, config = load_prefix_model(checkpoint, device="cpu")
    prompt = config["prompt"]
    template = PromptTemplate.from_dict(prompt["template"])
    first = [tokenizer.encode(w, add_special_tokens=False)[0] for w in (POSITIVE, "消极")]
    rows = []  # (length, is positive, base margin, prefixed margin)
    for r in test:
        ids = build_prompt_features(Example(r["text"], ""), tokenizer, template, prompt["max_source_length"],
                                    prompt["source_prefix"])["input_ids"]
        x = torch.tensor([ids])
        base = model.base(input_ids=x).logits[0, -1, first]
        prefixed = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1, first]
        rows.append((len(ids), r["label"] == POSITIVE, float(base[0] - base[1]), float(prefixed[0] - prefixed[1])))
    lines = []
    for low, high in (*LENGTH_BUCKETS, (96, prompt["max_source_length"])):
        b = [row for row in rows if low <= row[0] <= high]
        if not b:
            continue
        base_d, pre_d = statistics.mean(row[2] for row in b), statistics.mean(row[3] for row in b)
        def gap(col):
            return (statistics.mean(row[col] for row in b if row[1])
                    - statistics.mean(row[col] for row in b if not row[1]))
        acc = 100 * statistics.mean((row[3] > 0) == row[1] for row in b)
        lines.append(f"| {low}-{high} | {len(b)} | {100 * statistics.mean(row[1] for row in b):.0f} | {base_d:.2f} | "
                     f"{pre_d:.2f} | {pre_d - base_d:+.2f} | {gap(2):+.2f} | {gap(3):+.2f} | "
                     f"{acc:.1f} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--make_balanced", action="store_true", help=f"write {BALANCED.relative_to(ROOT)} and stop")
    p.add_argument("--runs", default=str(ROOT / "output" / "learning"), help="bench/learning.py's run folder")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="also the answer margins by prompt length for this prefix checkpoint (repeatable)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "length_shortcut.md"))
    args = p.parse_args(argv)
    train, test = read_jsonl(DATA / "train.jsonl"), read_jsonl(DATA / "test.jsonl")
    balanced = length_balanced(train)
    if args.make_balanced:
        BALANCED.parent.mkdir(parents=True, exist_ok=True)
        BALANCED.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in balanced), encoding="utf-8")
        print(f"{BALANCED}: {len(balanced)} of {len(train)} training reviews")
        return

    t, train_fit = best_threshold([len(r["text"]) for r in train], [r["label"] == POSITIVE for r in train])
    test_acc = 100 * statistics.mean((len(r["text"]) > t) == (r["label"] == POSITIVE) for r in test)
    cut = too_long(test)
    cut_rule = 100 * statistics.mean(c == (r["label"] == POSITIVE) for c, r in zip(cut, test))
    _, balanced_fit = best_threshold([len(r["text"]) for r in balanced], [r["label"] == POSITIVE for r in balanced])
    text = [
        "# Does the prefix judge the review or its length?",
        "",
        f"`python bench/length_shortcut.py --runs {Path(args.runs).resolve().relative_to(ROOT)}"
        + "".join(f" --checkpoint {c}" for c in args.checkpoint) + "` over the finished "
        "full-budget sentiment runs there (bench/learning.py, bench/methods.py).",
        "",
        f"- Median length (characters) of the training reviews: 积极 "
        f"{statistics.median(len(r['text']) for r in train if r['label'] == POSITIVE):.0f}, 消极 "
        f"{statistics.median(len(r['text']) for r in train if r['label'] != POSITIVE):.0f}.",
        f"- Length rule \"积极 iff more than {t} characters\", chosen on the training split: {100 * train_fit:.1f}% "
        f"there, **{test_acc:.1f}% on the test split** (52% 消极).",
        f"- {100 * statistics.mean(cut):.1f}% of the test prompts are longer than {MAX_SOURCE_LENGTH} tokens (the "
        f"instruction is lost if the prompt's start is cut); \"积极 iff longer\" is right on {cut_rule:.1f}% of "
        "the test split.",
        f"- The length-balanced training file (`--make_balanced`, {len(balanced):,} of {len(train):,} reviews): the "
        f"best length rule fits it at {100 * balanced_fit:.1f}%.",
        "",
        "Per run: test accuracy of the generated answer; share of 积极 answers; the agreement of the run's answers "
        "with the single length threshold T that reproduces them best; the agreement with \"积极 iff the prompt is "
        f"longer than {MAX_SOURCE_LENGTH} tokens\".",
        "",
        "| config | seed | test acc. | 积极 answers, % | answers reproduced by one length threshold, % | "
        f"answers = \"积极 iff over {MAX_SOURCE_LENGTH} tokens\", % |",
        "|---|---:|---:|---:|---|---:|",
        *run_rows(test, cut, Path(args.runs)),
    ]
    for checkpoint in args.checkpoint:
        text += [
            "",
            f"How the prefix of `{checkpoint}` moves the answer, by prompt length (tokens; the checkpoint's "
            "--max_source_length ends the last bucket): d = logit(积) - logit(消) of the first answer token at the answer position; "
            "the class gap is mean d over the 积极 reviews minus over the 消极 ones (the part of d that depends on "
            "the review's sentiment); accuracy of sign(d) with the prefix.",
            "",
            "| prompt tokens | reviews | 积极, % | mean d, base | mean d, with prefix | shift | class gap, base | "
            "class gap, with prefix | accuracy, % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *margins_by_length(checkpoint, test),
        ]
    Path(args.out).write_text("\n".join(text) + "\n", encoding="utf-8")
    print("\n".join(text))


if __name__ == "__main__":
    main()

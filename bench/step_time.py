"""Training step time on the shipped base: full-sequence logits vs the answer window, random vs length-grouped batches.

    python bench/step_time.py [--steps 20] [--rounds 3]

One training step = forward with labels, backward, AdamW on the prefix (pre_seq_len 16, MLP projection, batch 16
of sentiment training examples formatted as train.sh formats them). Three variants, timed alternately in one
process (so machine load hits all of them alike), median over rounds of the mean step time:
  * before: right-padded random batches, the base's own loss over logits (B, L, V) at every position;
  * window: left-padded random batches, logits only for the answer window (PrefixModel.forward with labels);
  * window + grouped: as window, batches drawn from length-sorted groups of 50 batches (the Trainer's
    group_by_length sampler does the same) so they carry little padding.
Writes bench/results/step_time.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ptuning_v2.data import Columns, build_training_features, get_template, load_examples  # noqa: E402
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for, forward_with_prefix  # noqa: E402

BATCH = 16
INSTRUCTION = "判断这条评论的情感是积极还是消极："


def pad(features, side, pad_id):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), pad_id)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        span = slice(width - n, width) if side == "left" else slice(0, n)
        ids[row, span], mask[row, span] = torch.tensor(f["input_ids"]), 1
        labels[row, span] = torch.tensor(f["labels"])
    return ids, mask, labels


def batches(features, grouped, rng):
    order = list(range(len(features)))
    rng.shuffle(order)
    if grouped:
        mega = 50 * BATCH
        order = [i for s in range(0, len(order), mega)
                 for i in sorted(order[s:s + mega], key=lambda i: -len(features[i]["input_ids"]))]
    chunks = [order[s:s + BATCH] for s in range(0, len(order) - BATCH + 1, BATCH)]
    rng.shuffle(chunks)
    return chunks


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "data" / "base_model")
    base = AutoModelForCausalLM.from_pretrained(ROOT / "data" / "base_model", dtype=torch.float32)
    model = PrefixModel(base, encoder_config_for(base.config, 16, True, None, 0.0)).train()
    examples = load_examples(ROOT / "data" / "generated" / "sentiment" / "train.jsonl", Columns("text", "label"))
    template = get_template("instruction")
    features = [build_training_features(ex, tokenizer, template, 96, 4, INSTRUCTION) for ex in examples[:4000]]
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)

    def full_logits_loss(ids, mask, labels):
        return forward_with_prefix(model.base, model.prefix_kv(ids.shape[0]), ids, attention_mask=mask,
                                   labels=labels).loss

    def window_loss(ids, mask, labels):
        return model(ids, attention_mask=mask, labels=labels).loss

    variants = {"before: right padding, random batches, full logits": ("right", False, full_logits_loss),
                "window: left padding, random batches, answer-window logits": ("left", False, window_loss),
                "window + grouped: left padding, length-grouped batches": ("left", True, window_loss)}
    times = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, (side, grouped, loss_fn) in variants.items():
            chunks = batches(features, grouped, random.Random(round_))[: args.steps]
            start = time.perf_counter()
            for chunk in chunks:
                loss = loss_fn(*pad([features[i] for i in chunk], side, tokenizer.pad_token_id))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            times[name].append((time.perf_counter() - start) / len(chunks))
    before = statistics.median(times[next(iter(variants))])
    lines = [f"Training step time, shipped base, batch {BATCH}, pre_seq_len 16 with MLP, {torch.get_num_threads()} "
             f"threads; mean over {args.steps} steps, median of {args.rounds} rounds, variants alternated; "
             "`python bench/step_time.py`.", "",
             "| variant | s / step | speed-up |", "|---|---:|---:|"]
    for name in variants:
        t = statistics.median(times[name])
        lines.append(f"| {name} | {t:.3f} | {before / t:.2f}x |")
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "step_time.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

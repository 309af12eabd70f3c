"""Does the prefix learn better when its keys move slowly? Separate learning rates for the prefix keys and values.

    python bench/kv_experiment.py [--variants mlp,kv_3e-2_3e-2,kv_0_3e-2,...] [--seeds 42] [--steps 2000]

Measured (bench/prefix_attention.py, bench/results/prefix_attention.md): a prefix started from the instruction's
keys/values takes 1-6% of the answer position's attention; after train.sh, 25-78%, and 53-90% of every review token's. A query's
output is (1 - a) * its attention over the review + a * a mix of prefix values, so a prefix that wins attention
also dilutes what the base reads from the review, in every layer. The share a depends only on the keys; the
values alone can carry the answer (a * v with a small a and a large v adds to the base's computation instead of
replacing it). This in-process loop trains the prefix as two tables, keys and values, each with its own learning
rate (AdamW; a rate of 0 freezes that table at its start), on train.sh's sentiment task.

Variants:
  mlp                 train.sh's prefix (pre_seq_len 16, MLP, lr 3e-3) in this loop, the comparison row
  kv_<kl>_<vl>        no MLP: key table at lr <kl>, value table at lr <vl> (e.g. kv_0_3e-2: keys frozen)
Every variant starts from the instruction's keys/values (--prefix_init_text). Batches of 16 grouped by length
(as train.sh's group_by_length), one seeded order; lr decays linearly to 0 over --steps (train.sh's schedule);
label-scoring accuracy on 500 dev reviews every --eval_every steps, the best state kept, then scored on the 1,000
test reviews; the answer loss is the label word's first token, over the full vocabulary (--loss lm) or over the two label words'
first tokens only (--loss cls).
Shapes: keys/values tables (N layers, H kv heads, P, D); prompts (B, L) left-padded; answer logits (B, V).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from inprocess_loop import (  # noqa: E402
    INSTRUCTION, LABELS, append_result, prefixed_base, sentiment_splits, train_keeping_best)
from ptuning_v2.inference import left_pad  # noqa: E402
from ptuning_v2.positions import real_token_positions  # noqa: E402
from ptuning_v2.prefix_init import prefix_token_ids, text_prefix_kv  # noqa: E402
from ptuning_v2.prefix_model import forward_with_prefix  # noqa: E402


def parse_variant(variant: str) -> tuple[float, float] | None:
    """None for 'mlp'; (key lr, value lr) for 'kv_<kl>_<vl>'."""
    if variant == "mlp":
        return None
    m = re.fullmatch(r"kv_([0-9.e-]+)_([0-9.e-]+)", variant)
    if not m:
        raise ValueError(f"unknown variant {variant!r}")
    return float(m.group(1)), float(m.group(2))


def length_grouped_batches(lengths: list[int], batch: int, steps: int, seed: int) -> list[list[int]]:
    """``steps`` batches: each epoch shuffles, cuts into chunks of 50 batches, sorts each chunk by length."""
    rng = random.Random(seed)
    out = []
    while len(out) < steps:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        for start in range(0, len(order), batch * 50):
            chunk = sorted(order[start:start + batch * 50], key=lambda i: lengths[i])
            group = [chunk[j:j + batch] for j in range(0, len(chunk), batch) if len(chunk[j:j + batch]) == batch]
            rng.shuffle(group)
            out.extend(group)
    return out[:steps]


def run(variant, seed, steps, eval_every, max_source, model_dir, data_dir, mlp_lr, loss_kind="lm"):
    lrs = parse_variant(variant)
    tok, base, model = prefixed_base(model_dir, seed)      # the MLP prefix from the instruction, seeded
    cfg = model.encoder_config
    if lrs is None:
        params = [{"params": list(model.prefix_encoder.parameters()), "lr": mlp_lr}]

        def prefix(batch):
            return model.prefix_kv(batch)
    else:
        flat = text_prefix_kv(base, prefix_token_ids(tok, INSTRUCTION, cfg.pre_seq_len))      # (P, N*2*H*D)
        table = flat.view(cfg.pre_seq_len, cfg.num_layers, 2, cfg.num_kv_heads, cfg.head_dim).permute(2, 1, 3, 0, 4)
        keys = torch.nn.Parameter(table[0].contiguous())                                     # (N, H, P, D)
        values = torch.nn.Parameter(table[1].contiguous())
        params = [{"params": [p], "lr": lr} for p, lr in ((keys, lrs[0]), (values, lrs[1])) if lr > 0]
        for p, lr in ((keys, lrs[0]), (values, lrs[1])):
            p.requires_grad_(lr > 0)

        def prefix(batch):
            return [(keys[i].unsqueeze(0).expand(batch, -1, -1, -1), values[i].unsqueeze(0).expand(batch, -1, -1, -1))
                    for i in range(cfg.num_layers)]
    opt = torch.optim.AdamW(params, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    trained = [p for g in params for p in g["params"]]

    splits = sentiment_splits(tok, data_dir, max_source)
    (train_ids, train_y), (dev_ids, dev_y), (test_ids, test_y) = splits["train"], splits["dev"], splits["test"]
    dev_ids, dev_y = dev_ids[:500], dev_y[:500]                                               # train.sh's 500
    label_tok = torch.tensor([tok.encode(w, add_special_tokens=False)[0] for w in LABELS])

    def answer_logits(ids_list):
        ids, mask = left_pad(ids_list, tok.pad_token_id, "cpu")
        out = forward_with_prefix(base.model, prefix(ids.shape[0]), ids, mask, real_token_positions(mask))
        return base.lm_head(out.last_hidden_state[:, -1])                                    # (B, V)

    @torch.no_grad()
    def accuracy(ids_list, y):
        order = sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
        preds = torch.empty(len(ids_list), dtype=torch.long)
        for s in range(0, len(order), 64):
            idx = order[s:s + 64]
            preds[idx] = answer_logits([ids_list[i] for i in idx])[:, label_tok].argmax(-1)
        return (preds == y).float().mean().item() * 100

    def batch_loss(idx):
        logits = answer_logits([train_ids[i] for i in idx])
        if loss_kind == "cls":   # the label words' first tokens only: (B, 2) against the class index
            return F.cross_entropy(logits[:, label_tok], train_y[idx])
        return F.cross_entropy(logits, label_tok[train_y[idx]])   # the whole vocabulary, as a causal LM loss

    def restore(state):
        with torch.no_grad():
            for p, saved in zip(trained, state):
                p.copy_(saved)

    dev, best_step, minutes = train_keeping_best(
        opt, batch_loss, lambda: accuracy(dev_ids, dev_y), lambda: [p.detach().clone() for p in trained], restore,
        len(train_ids), steps, seed, eval_every, f"{variant} seed {seed}",
        batches=length_grouped_batches([len(x) for x in train_ids], 16, steps, seed), scheduler=sched)
    return {"variant": variant, "loss": loss_kind, "seed": seed, "best_step": best_step, "dev": round(dev, 1),
            "test": round(accuracy(test_ids, test_y), 1), "minutes": round(minutes, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="mlp,kv_3e-2_3e-2,kv_0_3e-2,kv_3e-3_3e-2")
    p.add_argument("--seeds", default="42")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--max_source", type=int, default=256)
    p.add_argument("--loss", default="lm", choices=["lm", "cls"],
                   help="lm: cross-entropy over the whole vocabulary (train.sh's); cls: over the label words only")
    p.add_argument("--mlp_lr", type=float, default=3e-3, help="the mlp variant's learning rate (train.sh's)")
    p.add_argument("--model", default=str(ROOT / "data" / "base_model"))
    p.add_argument("--data", default=str(ROOT / "data" / "generated" / "sentiment"))
    p.add_argument("--out", default=str(ROOT / "output" / "kv_experiment.jsonl"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    for variant in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            result = run(variant, seed, args.steps, args.eval_every, args.max_source, args.model, args.data,
                         args.mlp_lr, args.loss)
            append_result(args.out, result, {"steps": args.steps, "max_source": args.max_source})


if __name__ == "__main__":
    main()

"""Does the answer position need a learned query? P-tuning v2's prefix vs. prefix + soft tokens at the prompt's end.

    python bench/suffix_experiment.py [--steps 2000] [--seeds 42] [--variants prefix,prefix_suffix4,...]

A key/value prefix never sends a query: in every layer the answer position attends over the review with the frozen
base's own query, so the prefix cannot choose which review tokens the answer reads. A soft token placed after the
prompt (as P-tuning v1's templates place pseudo tokens anywhere) has a trainable embedding, hence a trainable query
from layer 1 on. This in-process loop trains, on the default sentiment task (instruction template, --max_source
tokens, batch 16, AdamW, best dev step kept), the label word's first token at the final position, scored by label
scoring on the 1,000-review test split. Variants:
  prefix          the deep prefix alone (train.sh's method: pre_seq_len 16, MLP, lr 3e-3, instruction init)
  prefix_suffixK  the same prefix + K soft input tokens appended after the prompt (after "答：")
  suffixK         the K soft tokens alone, no deep prefix (prompt tuning placed at the end)
  prefix_posfree  the deep prefix with its keys zero in the dimensions RoPE rotates (the first 32 of 64 in this
                  GLM): a query at position m meets a prefix key through R_m, so a prefix's attention weight
                  otherwise moves with the prompt's length; here it depends on the query's content only
Shapes: prompt ids (B, L) left-padded, then K soft tokens: inputs_embeds (B, L + K, H=256); answer logits at the
last position (B, V) -> the two label words' first tokens (B, 2).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from inprocess_loop import (  # noqa: E402
    INSTRUCTION, LABELS, add_common_arguments, append_result, prefixed_base, sentiment_splits, train_keeping_best,
    variants_and_seeds)
from ptuning_v2.inference import left_pad  # noqa: E402
from ptuning_v2.positions import real_token_positions  # noqa: E402
from ptuning_v2.prefix_model import forward_with_prefix  # noqa: E402

DEFAULT_BASE = "data/base_model"  # what --model defaults to, as the table names it


def parse_variant(variant: str) -> tuple[bool, bool, int]:
    """(deep prefix?, position-free prefix keys?, K soft tokens): 'prefix' -> (True, False, 0);
    'prefix_suffix4' -> (True, False, 4); 'prefix_posfree' -> (True, True, 0); 'suffix4' -> (False, False, 4)."""
    m = re.fullmatch(r"(prefix(_posfree)?)?_?(?:suffix(\d+))?", variant)
    if not m or variant == "":
        raise ValueError(f"unknown variant {variant!r}")
    return m.group(1) is not None, m.group(2) is not None, int(m.group(3) or 0)


def run(variant, seed, steps, lr, suffix_lr, max_source, model_dir, data_dir, eval_every):
    use_prefix, position_free, k = parse_variant(variant)
    tok, base, model = prefixed_base(model_dir, seed)
    embed = base.get_input_embeddings()
    # GLM rotates the first head_dim * partial_rotary_factor dimensions of queries and keys (32 of 64 here)
    rotary_dims = int(base.config.head_dim * base.config.rope_parameters.get("partial_rotary_factor", 1.0))
    key_mask = torch.ones(base.config.head_dim)
    if position_free:
        key_mask[:rotary_dims] = 0.0
    # the soft tokens start as the embeddings of the instruction's first K tokens (real-token init)
    init_ids = tok.encode(INSTRUCTION, add_special_tokens=False)
    init_ids = (init_ids * k)[:k]
    suffix = torch.nn.Parameter(embed.weight[init_ids].detach().clone()) if k else None    # (K, H)

    splits = sentiment_splits(tok, data_dir, max_source)
    (train_ids, train_y), (dev_ids, dev_y), (test_ids, test_y) = splits["train"], splits["dev"], splits["test"]
    label_tok = torch.tensor([tok.encode(w, add_special_tokens=False)[0] for w in LABELS])

    params = []
    if use_prefix:
        params.append({"params": list(model.prefix_encoder.parameters()), "lr": lr})
    if k:
        params.append({"params": [suffix], "lr": suffix_lr})
    opt = torch.optim.AdamW(params, weight_decay=0.0)

    def answer_logits(ids_list):
        ids, mask = left_pad(ids_list, tok.pad_token_id, "cpu")
        emb = embed(ids)
        if k:
            emb = torch.cat([emb, suffix.unsqueeze(0).expand(ids.shape[0], -1, -1)], dim=1)
            mask = torch.cat([mask, torch.ones(ids.shape[0], k, dtype=mask.dtype)], dim=1)
        pos = real_token_positions(mask)
        if use_prefix:
            kv = [(key * key_mask, value) for key, value in model.prefix_kv(ids.shape[0])]
            out = forward_with_prefix(base.model, kv, None, mask, pos, inputs_embeds=emb)
        else:
            out = base.model(inputs_embeds=emb, attention_mask=mask, position_ids=pos)
        return base.lm_head(out.last_hidden_state[:, -1])                          # (B, V)

    @torch.no_grad()
    def accuracy(ids_list, y):
        model.eval()
        preds = torch.cat([answer_logits(ids_list[i:i + 64])[:, label_tok].argmax(-1)
                           for i in range(0, len(ids_list), 64)])
        model.train()
        return (preds == y).float().mean().item() * 100

    def batch_loss(idx):
        return F.cross_entropy(answer_logits([train_ids[i] for i in idx]), label_tok[train_y[idx]])

    def snapshot():
        return ({n: v.clone() for n, v in model.prefix_encoder.state_dict().items()},
                suffix.detach().clone() if k else None)

    def restore(state):
        model.prefix_encoder.load_state_dict(state[0])
        if k:
            with torch.no_grad():
                suffix.copy_(state[1])

    dev, best_step, minutes = train_keeping_best(opt, batch_loss, lambda: accuracy(dev_ids, dev_y), snapshot, restore,
                                                 len(train_ids), steps, seed, eval_every, f"{variant} seed {seed}")
    return {"variant": variant, "seed": seed, "best_step": best_step, "dev": round(dev, 1),
            "test": round(accuracy(test_ids, test_y), 1), "minutes": round(minutes, 2)}


def base_name(model_dir: str) -> str:
    """The base's folder as the table shows it: relative to the repository when it lies inside it."""
    path = Path(model_dir).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_table(jsonl: Path, out: Path, command: str) -> None:
    """Every finished run in ``jsonl`` as a markdown table (the latest run of a variant and seed wins)."""
    runs = {}
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        r.setdefault("base", DEFAULT_BASE)  # runs recorded before the base was: all on the shipped one
        runs[(r["variant"], r["seed"], r["steps"], r["lr"], r["suffix_lr"], r["max_source"], r["base"])] = r
    rows = [f"| {r['variant']} | {r['base']} | {r['seed']} | {r['steps']} | {r['lr']:g} / {r['suffix_lr']:g} | "
            f"{r['dev']:.1f} ({r['best_step']}) | {r['test']:.1f} | {r['minutes']:.1f} min |" for r in runs.values()]
    out.write_text("\n".join([
        "# Deep prefix vs. deep prefix + soft tokens at the prompt's end (sentiment, label scoring)",
        "",
        f"`{command}` (in-process loop, batch 16, AdamW, best dev step kept; 2 CPU cores; times are with",
        "whatever else ran on the machine). Test split: 1,000 reviews, 52% 消极. Rows on another base than the",
        f"shipped {DEFAULT_BASE}: the same command with `--model <base>`.",
        "",
        "| variant | base | seed | steps | lr prefix / suffix | best dev acc. (step) | test acc. | train time |",
        "|---|---|---:|---:|---|---|---:|---:|",
        *rows,
    ]) + "\n", encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="prefix,prefix_suffix4,suffix4")
    add_common_arguments(p, steps=2000, out=ROOT / "output" / "suffix_experiment.jsonl")
    p.add_argument("--suffix_lr", type=float, default=3e-3)
    p.add_argument("--table", default=str(ROOT / "bench" / "results" / "suffix_experiment.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    flags = list(argv or sys.argv[1:])
    if "--model" in flags:  # the table has a base column; the header names the command without it
        del flags[flags.index("--model"):flags.index("--model") + 2]
    command = "python bench/suffix_experiment.py " + " ".join(flags)
    for variant, seed in variants_and_seeds(args):
        result = run(variant, seed, args.steps, args.lr, args.suffix_lr, args.max_source, args.model, args.data,
                     args.eval_every)
        append_result(args.out, result, {"steps": args.steps, "lr": args.lr, "suffix_lr": args.suffix_lr,
                                         "max_source": args.max_source, "base": base_name(args.model)})
        write_table(Path(args.out), Path(args.table), command)


if __name__ == "__main__":
    main()

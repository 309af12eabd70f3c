"""Why the prefix stays below full fine-tuning: the answer read by the LM head vs. a trained classification head.

    python bench/head_experiment.py [--steps 1000] [--seeds 42] [--variants lm,head_last,...]

In-process loop on the default sentiment task (the same formatting as train.sh: instruction template, --max_source
tokens), batch 16, AdamW, best dev step kept, accuracy on the 1,000-review test split. Variants:
  lm          the prefix trained on the answer tokens (what train.sh does), scored by label scoring
  head_last   prefix + a linear head (num_labels, hidden) on the final hidden state of the prompt's last token,
              initialised from the label words' LM-head rows (so step 0 equals label scoring)
  head_mean   the same head on the mean final hidden state over the prompt's real tokens
  probe_last  the head alone on the frozen base (no prefix): the linear-probe baseline, trained by the same loop
Shapes: input_ids (B, L) left-padded; final hidden (B, L, H=256); head logits (B, 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from inprocess_loop import (  # noqa: E402
    LABELS, add_common_arguments, append_result, prefixed_base, sentiment_splits, train_keeping_best,
    variants_and_seeds)
from ptuning_v2.inference import left_pad  # noqa: E402
from ptuning_v2.positions import real_token_positions  # noqa: E402
from ptuning_v2.prefix_model import forward_with_prefix  # noqa: E402


def final_hidden(model, ids, mask, use_prefix):
    pos = real_token_positions(mask)
    if use_prefix:
        return forward_with_prefix(model.base.model, model.prefix_kv(ids.shape[0]), ids, mask, pos).last_hidden_state
    return model.base.model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state


def pooled(hidden, mask, how):
    if how == "last":
        return hidden[:, -1]
    w = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * w).sum(1) / w.sum(1)


def run(variant, seed, steps, lr, head_lr, model_dir, data_dir, eval_every, max_source):
    tok, base, model = prefixed_base(model_dir, seed)
    splits = sentiment_splits(tok, data_dir, max_source)
    (train_ids, train_y), (dev_ids, dev_y), (test_ids, test_y) = splits["train"], splits["dev"], splits["test"]
    label_tok = [tok.encode(w, add_special_tokens=False)[0] for w in LABELS]
    lm_rows = base.get_output_embeddings().weight[label_tok].detach().clone()      # (2, H)
    head = torch.nn.Linear(lm_rows.shape[1], 2)
    with torch.no_grad():
        head.weight.copy_(lm_rows)
        head.bias.zero_()
    use_prefix = variant != "probe_last"
    how = "mean" if variant == "head_mean" else "last"
    params = []
    if use_prefix:
        params.append({"params": list(model.prefix_encoder.parameters()), "lr": lr})
    if variant != "lm":
        params.append({"params": list(head.parameters()), "lr": head_lr})
    opt = torch.optim.AdamW(params, weight_decay=0.0)

    def logits_of(ids_list):
        ids, mask = left_pad(ids_list, tok.pad_token_id, "cpu")
        h = final_hidden(model, ids, mask, use_prefix)
        if variant == "lm":
            return F.linear(h[:, -1], lm_rows)          # label scoring on the first label token
        return head(pooled(h, mask, how))

    @torch.no_grad()
    def accuracy(ids_list, y):
        model.eval()
        preds = torch.cat([logits_of(ids_list[i:i + 64]).argmax(-1) for i in range(0, len(ids_list), 64)])
        model.train()
        return (preds == y).float().mean().item() * 100

    def batch_loss(idx):
        if variant == "lm":
            # the LM loss on the label word's first token at the answer position (the full LM head)
            ids, mask = left_pad([train_ids[i] for i in idx], tok.pad_token_id, "cpu")
            h = final_hidden(model, ids, mask, True)[:, -1]
            return F.cross_entropy(base.lm_head(h), torch.tensor(label_tok)[train_y[idx]])
        return F.cross_entropy(logits_of([train_ids[i] for i in idx]), train_y[idx])

    def snapshot():
        return ({k: v.clone() for k, v in model.prefix_encoder.state_dict().items()},
                {k: v.clone() for k, v in head.state_dict().items()})

    def restore(state):
        model.prefix_encoder.load_state_dict(state[0])
        head.load_state_dict(state[1])

    dev, best_step, minutes = train_keeping_best(opt, batch_loss, lambda: accuracy(dev_ids, dev_y), snapshot, restore,
                                                 len(train_ids), steps, seed, eval_every, f"{variant} seed {seed}")
    return {"variant": variant, "seed": seed, "best_step": best_step, "dev": dev,
            "test": accuracy(test_ids, test_y), "minutes": round(minutes, 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", default="lm,head_last,head_mean,probe_last")
    add_common_arguments(p, steps=1000, out=ROOT / "output" / "head_experiment.jsonl")
    p.add_argument("--head_lr", type=float, default=1e-3)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    for variant, seed in variants_and_seeds(args):
        result = run(variant, seed, args.steps, args.lr, args.head_lr, args.model, args.data, args.eval_every,
                     args.max_source)
        append_result(args.out, result, {"steps": args.steps, "lr": args.lr, "head_lr": args.head_lr,
                                         "max_source": args.max_source})


if __name__ == "__main__":
    main()

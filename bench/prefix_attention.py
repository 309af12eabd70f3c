"""How much attention the prefix takes, and from where: per layer, the share of each query's attention on the P prefix
slots, at the answer position and on the review's tokens, for a trained prefix checkpoint.

    python bench/prefix_attention.py CHECKPOINT [CHECKPOINT ...] [--n 400] [--out bench/results/prefix_attention.md]

A CHECKPOINT written as start:CHECKPOINT is that checkpoint's base and prompt format with the prefix train.sh's
sentiment run starts from: the base's own keys/values of the instruction (--prefix_init_text; exact, whatever the
seed, see ptuning_v2/prefix_init.py).

A prefix enters attention as P extra keys/values, so a query's output is (1 - a) * (its attention over the real
tokens) + a * (a mix of the prefix values), with a = the softmax mass on the prefix (He et al., 2022, "Towards a
unified view of parameter-efficient transfer learning"). When a is near 1 at the answer position, the answer barely
reads the review in that layer; a falling with the prompt's length makes the prefix's effect depend on length.

For each checkpoint, on the first --n test reviews (formatted as the checkpoint was trained), with eager attention:
  * answer a: the mean over query heads and reviews of a at the last prompt token ("：" of "答："), per layer;
  * review a: the same over every real token of the prompt;
  * corr(a, log length): Pearson correlation, over reviews, of the answer position's a with the log prompt length;
  * p(labels): the next-token probability the answer position gives the two label words' first tokens together
    (消 of 消极, 积极), mean over reviews: how far the answer format is learned (1.0: fully).
Shapes: attention weights per layer (B, query heads, L, P + L); a = their sum over the first P keys.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from inprocess_loop import INSTRUCTION, LABELS  # noqa: E402  (train.sh's sentiment instruction and label words)
from ptuning_v2.data import Columns, load_examples  # noqa: E402
from ptuning_v2.inference import left_pad, load_session  # noqa: E402
from ptuning_v2.prefix_init import initialize_prefix_from_text  # noqa: E402

TEST = ROOT / "data" / "generated" / "sentiment" / "test.jsonl"


@torch.no_grad()
def prefix_attention_share(model, ids: torch.Tensor, mask: torch.Tensor):
    """(a (layers, B, L), answer logits (B, V)): per layer and position, the share of attention (mean over query
    heads) a PrefixModel's left-padded prompts ``ids``/``mask`` (B, L) give the P prefix slots; and the next-token
    logits at the last position."""
    attn = model.base.config._attn_implementation
    model.base.config._attn_implementation = "eager"  # attention weights are returned by the eager path only
    try:
        out = model(ids, attention_mask=mask, output_attentions=True)
    finally:
        model.base.config._attn_implementation = attn
    pre_seq_len = model.encoder_config.pre_seq_len
    # per layer (B, heads, L, P + L) -> prefix mass (B, heads, L) -> mean over heads (B, L)
    return torch.stack([att[..., :pre_seq_len].sum(-1).mean(1) for att in out.attentions]), out.logits[:, -1]


@torch.no_grad()
def prefix_shares(checkpoint: str, n: int, batch_size: int = 32) -> dict:
    """{"answer": [a per layer], "review": [a per layer], "corr": [corr(a_answer, log len) per layer],
    "p_labels": mean probability of the label words' first tokens at the answer position}."""
    at_start = checkpoint.startswith("start:")
    session = load_session(checkpoint.removeprefix("start:"))  # prompts formatted as the checkpoint records
    model, tokenizer = session.model, session.tokenizer
    if at_start:
        initialize_prefix_from_text(model, tokenizer, INSTRUCTION)
    examples = load_examples(TEST, Columns(prompt="text", response="label"))[:n]
    prompts = [session.prompt_ids(ex.query) for ex in examples]
    first_tokens = [tokenizer.encode(w, add_special_tokens=False)[0] for w in LABELS]
    answer, review, lengths, p_labels = [], [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id, "cpu")
        mass, logits = prefix_attention_share(model, ids, mask)                               # (layers, B, L)
        answer.append(mass[:, :, -1])                                                          # (layers, B)
        real = mask.float().unsqueeze(0)
        review.append((mass * real).sum(-1) / real.sum(-1))                                   # (layers, B)
        lengths.extend(len(p) for p in chunk)
        p_labels.append(logits.float().softmax(-1)[:, first_tokens].sum(-1))
    answer, review = torch.cat(answer, 1), torch.cat(review, 1)
    log_len = torch.tensor([math.log(x) for x in lengths])
    corr = [torch.corrcoef(torch.stack([a, log_len]))[0, 1].item() for a in answer]
    return {"answer": answer.mean(1).tolist(), "review": review.mean(1).tolist(), "corr": corr,
            "p_labels": torch.cat(p_labels).mean().item()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=400, help="test reviews used")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "prefix_attention.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for ckpt in args.checkpoints:
        s = prefix_shares(ckpt, args.n)
        fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        rows.append(f"| {ckpt} | {fmt(s['answer'])} | {fmt(s['review'])} | {fmt(s['corr'])} | {s['p_labels']:.2f} |")
        print(rows[-1], flush=True)
    command = "python bench/prefix_attention.py " + " ".join(argv or sys.argv[1:])
    Path(args.out).write_text("\n".join([
        "# Attention mass on the prefix, per layer 1 / 2 / 3 / 4 (sentiment test reviews)",
        "",
        f"`{command}`: the first {args.n} test reviews; a = the share of a query's attention on the prefix slots,",
        "averaged over query heads. answer: at the last prompt token; review: over the prompt's real tokens;",
        "corr: Pearson correlation of the answer position's a with the log prompt length, over reviews; p(labels):",
        "the answer position's next-token probability of the two label words' first tokens together.",
        "",
        "| checkpoint | answer a | review a | corr(answer a, log length) | p(labels) |",
        "|---|---|---|---|---:|",
        *rows,
    ]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

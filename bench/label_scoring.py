#!/usr/bin/env python
"""Label scoring with a large vocabulary: the old algorithm (one sequence per prompt and candidate, a full
log_softmax at every position) against ``ptuning_v2.inference.label_logprobs`` (one forward, log_softmax only on
the positions that predict a candidate token).

    nice -n 19 .venv/bin/python bench/label_scoring.py              # bare base
    nice -n 19 .venv/bin/python bench/label_scoring.py --prefix 16  # the base wrapped in a PrefixModel

What runs: a tiny transformers ``GlmForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 KV heads, head_dim 16, FFN 128)
with GLM-4's vocabulary of 151,552 tokens, so the output layer and the softmax over the vocabulary dominate, the
way they do for a 0.5B model with a 151k vocabulary. Random weights, fp32, CPU, one thread. N = 128 prompts of
50-70 random tokens (about 60), scored in batches of 32 against 2 candidates: one of 1 token and one of 2 tokens
(like 积极 / 消极 in the shipped tokenizer).

What is measured:
  * time: both variants in this one process, alternating old/new for ``--repeats`` rounds after a warm-up; the
    median seconds to score all N prompts, and the ratio old / new.
  * memory: each variant once in a fresh subprocess (this script with ``--variant old|new``), so each peak is its
    own: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after scoring all N prompts minus ru_maxrss just before
    (after the model and inputs are built and a warm-up on one 4-token prompt). This is CPU peak RSS growth; it counts the logits and log-prob
    tensors and allocator slack.
  * equality: the max abs difference of the (N, 2) scores of the two variants; asserted below 1e-4.

Prints a markdown table and writes it to bench/results/label_scoring.md (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ptuning_v2.inference import InferenceSession, label_logprobs, label_logprobs_naive  # noqa: E402

GLM4_VOCAB = 151_552
PAD_ID = 0




VARIANTS = {"old": label_logprobs_naive, "new": label_logprobs}


class _Tokenizer:
    pad_token_id = PAD_ID
    eos_token_id = 2


def build(args):
    """(session, prompts, candidates): the tiny large-vocabulary GLM, optionally with a random prefix."""
    from transformers import GlmConfig, GlmForCausalLM

    from ptuning_v2.data import get_template
    from ptuning_v2.prefix_model import PrefixModel, encoder_config_for

    torch.manual_seed(args.seed)
    config = GlmConfig(
        vocab_size=args.vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, pad_token_id=PAD_ID, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=False,
    )
    model = GlmForCausalLM(config).eval()
    if args.prefix:
        model = PrefixModel(model, encoder_config_for(config, args.prefix)).eval()
        with torch.no_grad():
            model.prefix_encoder.embedding.weight.normal_(0, 1.0)
    session = InferenceSession(model=model, tokenizer=_Tokenizer(), template=get_template("chatglm"))
    gen = torch.Generator().manual_seed(args.seed + 1)
    lengths = torch.randint(args.prompt_len - 10, args.prompt_len + 11, (args.n,), generator=gen).tolist()
    prompts = [torch.randint(4, args.vocab, (n,), generator=gen).tolist() for n in lengths]
    candidates = [[1000], [2000, 3000]]  # 1 token and 2 tokens
    return session, prompts, candidates


def score_all(variant, session, prompts, candidates, batch_size):
    fn = VARIANTS[variant]
    return torch.cat([fn(session, prompts[i:i + batch_size], candidates) for i in range(0, len(prompts), batch_size)])


def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(args) -> dict:
    """In this (fresh) process: peak RSS growth of scoring all prompts with one variant."""
    session, prompts, candidates = build(args)
    # Warm-up on one 4-token prompt, so one-off costs (lazy initialisation, library buffers) are not counted.
    score_all(args.variant, session, [prompts[0][:4]], candidates, args.batch_size)
    before, rss_before = maxrss_bytes(), current_rss_bytes()
    score_all(args.variant, session, prompts, candidates, args.batch_size)
    return {"variant": args.variant, "peak_rss_growth_bytes": maxrss_bytes() - before,
            "maxrss_before_bytes": before, "rss_before_bytes": rss_before}


def memory_in_subprocess(args, variant: str) -> dict:
    cmd = [sys.executable, __file__, "--variant", variant, "--n", str(args.n), "--batch-size", str(args.batch_size),
           "--prompt-len", str(args.prompt_len), "--vocab", str(args.vocab), "--prefix", str(args.prefix),
           "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=60, help="prompts have this many tokens +- 10")
    parser.add_argument("--vocab", type=int, default=GLM4_VOCAB)
    parser.add_argument("--prefix", type=int, default=0, help="pre_seq_len of a random PrefixModel; 0: bare base")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (old then new, alternating)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="internal: measure one variant's peak memory")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "label_scoring.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    if args.variant:
        print(json.dumps(measure_memory(args)))
        return

    # Memory first: a child's ru_maxrss starts from this process's RSS at the fork, so fork while it is small.
    memory = {v: memory_in_subprocess(args, v) for v in VARIANTS}
    for v, m in memory.items():
        if m["maxrss_before_bytes"] > 1.2 * m["rss_before_bytes"]:
            print(f"warning: {v}: peak RSS before scoring ({m['maxrss_before_bytes'] / 1e6:.0f} MB) is above the "
                  f"RSS then ({m['rss_before_bytes'] / 1e6:.0f} MB); its growth is understated")

    session, prompts, candidates = build(args)
    # Warm-up (one batch each) and the equality check on all prompts.
    for variant in VARIANTS:
        score_all(variant, session, prompts[: args.batch_size], candidates, args.batch_size)
    old_scores = score_all("old", session, prompts, candidates, args.batch_size)
    new_scores = score_all("new", session, prompts, candidates, args.batch_size)
    max_diff = (old_scores - new_scores).abs().max().item()
    print(f"max abs diff of the scores, old vs new: {max_diff:.3g}")
    assert max_diff < 1e-4, max_diff

    times = {v: [] for v in VARIANTS}
    for rep in range(args.repeats):
        order = ("old", "new") if rep % 2 == 0 else ("new", "old")
        for variant in order:
            start = time.perf_counter()
            score_all(variant, session, prompts, candidates, args.batch_size)
            times[variant].append(time.perf_counter() - start)
            print(f"round {rep + 1}: {variant} {times[variant][-1]:.3f} s", flush=True)
    median = {v: statistics.median(t) for v, t in times.items()}

    model = f"PrefixModel (pre_seq_len {args.prefix}) on the base" if args.prefix else "bare base"
    lines = [
        f"Label scoring, tiny GLM with a {args.vocab:,}-token vocabulary ({model}), CPU, 1 thread: "
        f"{args.n} prompts of {args.prompt_len - 10}-{args.prompt_len + 10} tokens, batches of {args.batch_size}, "
        f"candidates of 1 and 2 tokens. Median of {args.repeats} rounds; peak RSS growth in a fresh process per "
        f"variant. Max abs diff of the scores: {max_diff:.3g}.",
        "",
        "| variant | median time (s) | rounds (s) | peak RSS growth (MB) |",
        "|---|---:|---:|---:|",
    ]
    names = {"old": "old: B*K sequences, full log_softmax", "new": "new: `label_logprobs`"}
    for v in VARIANTS:
        rounds = ", ".join(f"{t:.2f}" for t in times[v])
        lines.append(f"| {names[v]} | {median[v]:.3f} | {rounds} | {memory[v]['peak_rss_growth_bytes'] / 1e6:,.0f} |")
    old_mem, new_mem = (memory[v]["peak_rss_growth_bytes"] for v in ("old", "new"))
    mem_ratio = f"{old_mem / new_mem:.0f}x" if new_mem >= 1e6 else "n/a (new grows by under 1 MB)"
    lines += ["", f"Speed-up old / new: {median['old'] / median['new']:.1f}x; peak RSS growth old / new: {mem_ratio}.",
              ""]
    table = "\n".join(lines)
    print(table)
    print(json.dumps({"times": times, "memory": memory, "max_abs_diff": max_diff}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table, encoding="utf-8")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

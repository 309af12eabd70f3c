"""What the in-process bench experiments share (head_experiment.py, suffix_experiment.py).

The default sentiment task formatted as train.sh formats it (instruction template, the task's instruction as
--source_prefix, prompts cut to max_source tokens): prompt ids and labels (0 消极, 1 积极) per split; the shipped
base with train.sh's prefix (pre_seq_len 16, MLP, started from the instruction); one JSON line per finished run.

The training loop: batches of ``batch`` training indices in one seeded shuffled order (cycled), one optimizer step
each, the dev score every ``eval_every`` steps and at the end, and the state with the best dev score restored at the
end (as train.sh keeps its best checkpoint). The experiment supplies the loss of a batch, the dev score and how to
copy and restore its trainable state.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Callable

import torch

INSTRUCTION = "判断这条评论的情感是积极还是消极："  # the sentiment task's --source_prefix in train.sh
LABELS = ["消极", "积极"]


def sentiment_splits(tokenizer, data_dir, max_source: int) -> dict[str, tuple[list[list[int]], torch.Tensor]]:
    """{"train"|"dev"|"test": (prompt ids per review, labels (N,))}, prompts as train.sh builds them."""
    from ptuning_v2.data import Columns, build_prompt_features, get_template, load_examples

    template = get_template("instruction")
    splits = {}
    for split in ("train", "dev", "test"):
        examples = load_examples(Path(data_dir) / f"{split}.jsonl", Columns(prompt="text", response="label"))
        ids = [build_prompt_features(ex, tokenizer, template, max_source, INSTRUCTION)["input_ids"]
               for ex in examples]
        splits[split] = (ids, torch.tensor([LABELS.index(ex.response) for ex in examples]))
    return splits


def prefixed_base(model_dir, seed: int):
    """(tokenizer, frozen base, PrefixModel with train.sh's prefix started from the instruction), seeded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ptuning_v2.prefix_init import initialize_prefix_from_text
    from ptuning_v2.prefix_model import PrefixModel, encoder_config_for

    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PrefixModel(base, encoder_config_for(base.config, 16, True, None, 0.0))
    initialize_prefix_from_text(model, tokenizer, INSTRUCTION)
    return tokenizer, base, model


def add_common_arguments(parser, steps: int, out: Path) -> None:
    """The flags every in-process experiment takes (its own --variants and learning rates come on top)."""
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=3e-3, help="the prefix's learning rate (train.sh's)")
    parser.add_argument("--eval_every", type=int, default=100)
    parser.add_argument("--max_source", type=int, default=256,
                        help="prompt tokens kept (train.sh's sentiment cut; 96 before)")
    parser.add_argument("--model", default=str(root / "data" / "base_model"))
    parser.add_argument("--data", default=str(root / "data" / "generated" / "sentiment"))
    parser.add_argument("--out", default=str(out), help="JSON lines, one per finished run (appended)")


def variants_and_seeds(args) -> list[tuple[str, int]]:
    """Every (variant, seed) pair of --variants x --seeds, variants outermost."""
    return [(variant, int(seed)) for variant in args.variants.split(",") for seed in args.seeds.split(",")]


def append_result(path, result: dict, settings: dict) -> None:
    """Print a finished run and append it, with the settings it ran under, to the JSON-lines file ``path``."""
    print(json.dumps(result), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps({**result, **settings}) + "\n")


def train_keeping_best(
    optimizer,
    batch_loss: Callable[[list[int]], object],      # training indices -> scalar loss tensor
    dev_score: Callable[[], float],
    snapshot: Callable[[], object],
    restore: Callable[[object], None],
    num_train: int,
    steps: int,
    seed: int,
    eval_every: int,
    label: str,
    batch: int = 16,
    batches: list[list[int]] | None = None,
    scheduler=None,
) -> tuple[float, int, float]:
    """(best dev score, its step (0: the starting state), minutes of training).

    ``batches``: the training indices of each step, in order (default: ``batch`` at a time from one seeded shuffled
    order, cycled); ``scheduler``: stepped after every optimizer step (default: a constant learning rate)."""
    if batches is None:
        order = list(range(num_train))
        random.Random(seed).shuffle(order)
        batches = [[order[(step * batch + j) % num_train] for j in range(batch)] for step in range(1, steps + 1)]
    best = (dev_score(), 0, snapshot())  # step 0: the starting state, restored if no evaluation beats it
    start = time.time()
    for step, idx in enumerate(batches[:steps], 1):
        loss = batch_loss(idx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if step % eval_every == 0 or step == steps:
            dev = dev_score()
            print(f"  {label} step {step} loss {loss.item():.3f} dev {dev:.1f}", flush=True)
            if dev > best[0]:
                best = (dev, step, snapshot())
    minutes = (time.time() - start) / 60
    restore(best[2])
    return best[0], best[1], minutes

"""The training loop the in-process bench experiments share (head_experiment.py, suffix_experiment.py).

Batches of ``batch`` training indices in one seeded shuffled order (cycled), one optimizer step each, the dev score
every ``eval_every`` steps and at the end, and the state with the best dev score restored at the end (as train.sh
keeps its best checkpoint). The experiment supplies the loss of a batch, the dev score and how to copy and restore
its trainable state.
"""

from __future__ import annotations

import random
import time
from typing import Callable


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
) -> tuple[float, int, float]:
    """(best dev score, its step (0: the starting state), minutes of training)."""
    order = list(range(num_train))
    random.Random(seed).shuffle(order)
    best = (dev_score(), 0, None)
    start = time.time()
    for step in range(1, steps + 1):
        loss = batch_loss([order[(step * batch + j) % num_train] for j in range(batch)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            dev = dev_score()
            print(f"  {label} step {step} loss {loss.item():.3f} dev {dev:.1f}", flush=True)
            if dev > best[0]:
                best = (dev, step, snapshot())
    minutes = (time.time() - start) / 60
    if best[2] is not None:
        restore(best[2])
    return best[0], best[1], minutes

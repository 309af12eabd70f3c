"""bench/inprocess_loop.py: the best dev step's state is the one restored, and the start counts as step 0."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from inprocess_loop import train_keeping_best  # noqa: E402


def run_with_scores(scores, steps=6, eval_every=2):
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    seen = iter(scores)
    batches = []

    def batch_loss(idx):
        batches.append(idx)
        return -weight.sum()            # every step adds 1.0 to the weight

    restored = []
    best_dev, best_step, _ = train_keeping_best(
        optimizer, batch_loss, lambda: next(seen), lambda: weight.detach().clone(),
        lambda state: restored.append(float(state)), num_train=10, steps=steps, seed=0, eval_every=eval_every,
        label="test", batch=4)
    return best_dev, best_step, restored, batches, float(weight)


def test_the_best_dev_step_is_restored():
    # dev scores at steps 0, 2, 4, 6: the best is at step 4, when the weight was 4.0
    best_dev, best_step, restored, batches, _ = run_with_scores([50.0, 60.0, 80.0, 70.0])
    assert (best_dev, best_step, restored) == (80.0, 4, [4.0])  # the start's snapshot was taken, not restored
    assert len(batches) == 6 and all(len(b) == 4 and all(0 <= i < 10 for i in b) for b in batches)


def test_no_improvement_restores_the_starting_state():
    # the start (weight 0.0) scores 90 and no later evaluation beats it: its snapshot is what is restored
    best_dev, best_step, restored, _, _ = run_with_scores([90.0, 60.0, 80.0, 70.0])
    assert (best_dev, best_step, restored) == (90.0, 0, [0.0])

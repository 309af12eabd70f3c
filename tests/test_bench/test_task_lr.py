"""bench/task_lr.py's helpers: the best validation loss is read from a Trainer's log history, and the table says
which runs have test scores."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import task_lr as bench  # noqa: E402


def test_best_eval_loss_is_the_lowest_logged_evaluation():
    history = [{"loss": 9.0, "step": 10}, {"eval_loss": 4.8, "step": 100}, {"loss": 3.0, "step": 150},
               {"eval_loss": 4.6, "step": 200}, {"eval_loss": 4.7, "step": 300}]
    assert bench.best_eval_loss({"log_history": history}) == (4.6, 200)


def test_best_eval_loss_refuses_a_run_without_evaluation():
    with pytest.raises(ValueError, match="no evaluation"):
        bench.best_eval_loss({"log_history": [{"loss": 1.0, "step": 10}]})


def test_table_has_scores_for_idiom_and_dashes_for_multiturn():
    rows = [{"task": "idiom", "lr": "3e-3", "best_eval_loss": 4.6031, "best_step": 300, "bleu-4": 2.4673,
             "rouge-1": 20.4637, "train_seconds": 68.2, "peak_rss_gb": 1.11},
            {"task": "multiturn", "lr": "3e-3", "best_eval_loss": 2.888, "best_step": 300, "train_seconds": 101.0,
             "peak_rss_gb": 1.2}]
    lines = bench.table(rows, "python bench/task_lr.py").splitlines()
    assert lines[-2] == "| idiom | 3e-3 | 4.603 (300) | 2.47 | 20.46 | 68 s | 1.11 GB |"
    assert lines[-1] == "| multiturn | 3e-3 | 2.888 (300) | - | - | 101 s | 1.20 GB |"

"""The generation tasks' learning rate on the shipped base: idiom and multi-turn, 300 steps each, one seed.

    python bench/task_lr.py                                   # idiom 3e-2,1e-2,3e-3,1e-3; multiturn 3e-2,3e-3
    python bench/task_lr.py --tasks idiom --lrs 3e-3,1e-3

Each run is ``TASK=<task> STEPS=300 LR=<lr> bash train.sh`` (the README's idiom command with the lr set), into
``output/task_lr/<task>-lr<lr>``; a finished run (its ``trainer_state.json``) is not trained again. The table gives
the best validation loss (train.sh keeps that checkpoint) and, for idiom, BLEU-4 / ROUGE-1 of ``bash evaluate.sh``
on the first 200 test examples. Multi-turn has no test split, so validation loss is all it reports. Writes
``bench/results/task_lr.md``. The loss is the mean next-token cross-entropy over the answer tokens (nats).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from learning import peak_rss_gb, run_train_sh  # noqa: E402  (bench/learning.py: the train.sh runner)

OUT = ROOT / "output" / "task_lr"
RESULTS = ROOT / "bench" / "results" / "task_lr.md"
STEPS = 300        # the README's idiom budget
TEST_EXAMPLES = 200  # the README's idiom evaluation


def best_eval_loss(trainer_state: dict) -> tuple[float, int]:
    """(lowest eval_loss, its step) from a Trainer's log history."""
    evals = [e for e in trainer_state["log_history"] if "eval_loss" in e]
    if not evals:
        raise ValueError("the run logged no evaluation")
    best = min(evals, key=lambda e: e["eval_loss"])
    return best["eval_loss"], best["step"]


def run(task: str, lr: str) -> dict:
    out = OUT / f"{task}-lr{lr}"
    env = {**os.environ, "TASK": task, "STEPS": str(STEPS), "LR": lr, "OUTPUT_DIR": str(out)}
    if not (out / "trainer_state.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.time()
        with open(out.parent / f"{out.name}.log", "w") as log:
            run_train_sh([], env, log, out)
        (out / "train_seconds").write_text(f"{time.time() - start:.1f}\n")
    loss, step = best_eval_loss(json.loads((out / "trainer_state.json").read_text()))
    row = {"task": task, "lr": lr, "best_eval_loss": loss, "best_step": step,
           "train_seconds": float((out / "train_seconds").read_text()),
           "peak_rss_gb": peak_rss_gb(out)}
    if task == "idiom":
        metrics_file = out / "eval" / "metrics.json"
        if not metrics_file.is_file():
            subprocess.run(["bash", str(ROOT / "evaluate.sh"), str(out), "--max_samples", str(TEST_EXAMPLES)],
                           env=env, stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
        metrics = json.loads(metrics_file.read_text())
        row.update({"bleu-4": metrics["bleu-4"], "rouge-1": metrics["rouge-1"]})
    return row


def table(rows: list[dict], command: str) -> str:
    lines = [f"Generation tasks on the shipped base, {STEPS} steps of 16, seed 42, train.sh otherwise as shipped; "
             f"`{command}`. Validation loss: the best of the evaluations every 100 steps (the checkpoint train.sh "
             f"keeps). Idiom: BLEU-4 / ROUGE-1 of `bash evaluate.sh` on the first {TEST_EXAMPLES} test examples.",
             "", "| task | lr | best validation loss (step) | BLEU-4 | ROUGE-1 | train time | peak RSS |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        scores = (f"{r['bleu-4']:.2f} | {r['rouge-1']:.2f}" if "rouge-1" in r else "- | -")
        lines.append(f"| {r['task']} | {r['lr']} | {r['best_eval_loss']:.3f} ({r['best_step']}) | {scores} | "
                     f"{r['train_seconds']:.0f} s | {r['peak_rss_gb']:.2f} GB |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default="idiom,multiturn")
    p.add_argument("--lrs", help="comma-separated; default: idiom 3e-2,1e-2,3e-3,1e-3, multiturn 3e-2,3e-3")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    default_lrs = {"idiom": "3e-2,1e-2,3e-3,1e-3", "multiturn": "3e-2,3e-3"}
    rows = []
    for task in args.tasks.split(","):
        for lr in (args.lrs or default_lrs[task]).split(","):
            rows.append(run(task, lr))
            print(json.dumps(rows[-1]), flush=True)
    command = " ".join(["python bench/task_lr.py", *(argv if argv is not None else sys.argv[1:])])
    Path(args.out).write_text(table(rows, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

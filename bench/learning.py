"""What makes the prefix learn on the shipped default: train configurations over seeds, test each one.

    python bench/learning.py                       # every configuration below, seeds 42 43 44
    python bench/learning.py --configs default,full_finetune --seeds 42,43,44
    python bench/learning.py --steps 300 --configs default,lr_1e-2,...   # a cheaper screen at 300 steps

Each run is ``bash train.sh`` (the sentiment task, so the ``default`` row *is* the shipped default) with
``SEED``/``OUTPUT_DIR`` set and the configuration's flags appended, then label scoring and greedy generation on
the 1,000-review test split with ``python -m ptuning_v2.evaluate`` on the checkpoint train.sh wrote (the best one
by validation accuracy, see train.py). A finished run leaves ``output/learning/<config>/seed<S>/result.json`` and
is not run again, so an interrupted bench continues where it stopped (``--force`` reruns).

Writes ``bench/results/learning.md``: per configuration the test accuracy of each seed, the mean and the minimum,
the best validation accuracy and its step, and the wall time of training. One run at a time: on 2 cores two
trainings in parallel slow each other down and make the times meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "output" / "learning"
RESULTS = ROOT / "bench" / "results" / "learning.md"
SEEDS = (42, 43, 44)

# Everything is relative to train.sh's defaults; each entry changes one thing (its "changes" text says what).
# env: train.sh's own settings; flags: appended to its python -m ptuning_v2.train call.
SENTIMENT_EVALUATE_FLAGS = [  # a --full_finetune output is a plain model: evaluate needs the prompt flags
    "--test_file", "data/generated/sentiment/test.jsonl", "--prompt_column", "text", "--response_column", "label",
    "--prompt_template", "instruction", "--source_prefix", "判断这条评论的情感是积极还是消极：", "--max_new_tokens", "4",
    "--max_source_length", "256"]  # train.sh's sentiment cut

QUESTION = "这条评论的情感是积极还是消极？"  # "Is this review's sentiment positive or negative?"

# Full fine-tuning, the baseline: every weight, lr 2e-4; a fine-tuned model records no prompt settings, so evaluate
# is given them.
FULL_FINETUNE = {"flags": ["--full_finetune", "--learning_rate", "2e-4"], "full_finetune": True,
                 "evaluate_flags": SENTIMENT_EVALUATE_FLAGS}
# train.sh's sentiment schedule until warmup_100_3000 became the default: 2,000 steps, no warmup, evaluated (and
# checkpointed) every 100. Full fine-tuning keeps that schedule over its 1,200 steps, as it was measured.
SCHEDULE_2000 = {"STEPS": "2000", "WARMUP": "0", "EVAL_EVERY": "100"}
FULL_FINETUNE_ENV = {**SCHEDULE_2000, "STEPS": "1200"}

# The fit test: 512 training reviews for 600 steps (~19 epochs), validated on those same 512 reviews.
FIT_512_ENV = {**SCHEDULE_2000, "STEPS": "600", "VALIDATION_FILE": "data/generated/sentiment/train.jsonl"}
FIT_512_FLAGS = ["--max_train_samples", "512", "--max_eval_samples", "512"]

# Each entry changes one thing against train.sh's defaults (MLP projection, lr 1e-3 with 100 warmup steps and a
# linear decay over 3,000 steps, pre_seq_len 16, prefix dropout 0, prefix initialized from the task instruction,
# evaluated every 200 steps and the best checkpoint by validation accuracy kept). env: train.sh's own settings;
# flags: appended to its python -m ptuning_v2.train call.
CONFIGS: dict[str, dict] = {
    "default": {"changes": "train.sh as shipped", "env": {}, "flags": []},
    "schedule_2000": {"changes": "the previous schedule: no warmup, evaluated every 100, 2,000 steps unless --steps",
                      "env": SCHEDULE_2000, "flags": []},
    "lr_1e-2": {"changes": "learning rate 1e-2", "env": {"LR": "1e-2"}, "flags": []},
    "lr_1e-3": {"changes": "learning rate 1e-3", "env": {"LR": "1e-3"}, "flags": []},
    # the sentiment default before the shipped base was pretrained four times as long (tuned on the 1,916-step base)
    "lr_3e-3": {"changes": "learning rate 3e-3", "env": {"LR": "3e-3"}, "flags": []},
    "cosine_warmup": {"changes": "cosine schedule, 10% warmup", "env": {},
                      "flags": ["--lr_scheduler_type", "cosine", "--warmup_steps", "0.1"]},
    # the first steps move the prefix the most (first loss ~7.6 while the prefix learns the answer format): does
    # easing in the learning rate keep the text-initialized prefix usable?
    "warmup_100": {"changes": "the previous schedule with 100 warmup steps before the linear decay",
                   "env": {**SCHEDULE_2000, "WARMUP": "100"}, "flags": []},
    # every run above still gains validation accuracy at its last step: a longer budget, evaluated half as often to
    # pay for it. These are train.sh's sentiment defaults now, spelled out so the cached runs keep their meaning.
    "warmup_100_3000": {"changes": "100 warmup steps, 3,000 steps, evaluated every 200",
                        "env": {"STEPS": "3000", "WARMUP": "100", "EVAL_EVERY": "200"}, "flags": []},
    "no_projection": {"changes": "no MLP projection (plain embedding), lr 3e-2", "env": {"PROJECTION": "0",
                                                                                          "LR": "3e-2"}, "flags": []},
    "lr_2e-3": {"changes": "learning rate 2e-3", "env": {"LR": "2e-3"}, "flags": []},
    "lr_5e-3": {"changes": "learning rate 5e-3", "env": {"LR": "5e-3"}, "flags": []},
    # length-grouped batches of 16 are label-imbalanced (length follows the label), and the validation accuracy of
    # short prefixes flips between the two label priors from one evaluation to the next: is gradient noise the limit?
    "batch_32": {"changes": "batches of 32 (twice the examples per step, same 2,000 steps)", "env": {"BATCH": "32"},
                 "flags": []},
    "pre_seq_len_4": {"changes": "pre_seq_len 4", "env": {"PRE_SEQ_LEN": "4"}, "flags": []},
    "pre_seq_len_8": {"changes": "pre_seq_len 8", "env": {"PRE_SEQ_LEN": "8"}, "flags": []},
    "pre_seq_len_64": {"changes": "pre_seq_len 64", "env": {"PRE_SEQ_LEN": "64"}, "flags": []},
    "pre_seq_len_128": {"changes": "pre_seq_len 128 (ChatGLM's ptuning default)", "env": {"PRE_SEQ_LEN": "128"},
                        "flags": []},
    "dropout_0.1": {"changes": "prefix dropout 0.1 (ChatGLM's)", "env": {"DROPOUT": "0.1"}, "flags": []},
    # the projection MLP's width (train.sh: the base's hidden size, 256); prefix-tuning used 512-800 (Li & Liang)
    "prefix_hidden_1024": {"changes": "projection MLP 4x wider (prefix_hidden_size 1024)", "env": {},
                           "flags": ["--prefix_hidden_size", "1024"]},
    "random_init": {"changes": "random prefix (no --prefix_init_text)", "env": {"INIT_TEXT": ""}, "flags": []},
    # train.sh groups batches by length (faster steps); lengths correlate with the label (positive reviews are
    # longer), so such batches mix the two labels less than random ones do
    "random_batches": {"changes": "random batches instead of batches grouped by length", "env": {},
                       "flags": ["--train_sampling_strategy", "random"]},
    "previous_default": {
        "changes": "the previous train.sh: lr 3e-2, dropout 0.1, random init, 1,200 steps, no validation (the "
                   "last step is kept), random batches",
        "env": {**SCHEDULE_2000, "LR": "3e-2", "DROPOUT": "0.1", "INIT_TEXT": "", "STEPS": "1200"},
        "flags": ["--eval_strategy", "no", "--train_sampling_strategy", "random"],
    },
    "full_finetune": {
        "changes": "full fine-tuning of the base (every weight; lr 2e-4, 1,200 steps), best checkpoint by "
                   "validation accuracy",
        "env": FULL_FINETUNE_ENV, **FULL_FINETUNE,
    },
    # Is the base the limit? The same recipe on a base pretrained twice as long (3,832 instead of 1,916 steps;
    # bench/base_strength.sh builds it into output/base_2x with data/build_base_model.py).
    "base_2x": {"changes": "train.sh as shipped, on a base pretrained twice as long (output/base_2x)",
                "env": {"MODEL": "output/base_2x"}, "flags": []},
    "base_2x_full_finetune": {
        "changes": "full fine-tuning (as full_finetune) of the base pretrained twice as long (output/base_2x)",
        "env": {**FULL_FINETUNE_ENV, "MODEL": "output/base_2x"}, **FULL_FINETUNE,
    },
    # Does the ceiling keep rising with pretraining? The shipped base's recipe for 4x its steps (7,664 instead of
    # 1,916; bench/base_4x.sh builds it into output/base_4x with data/build_base_model.py).
    "base_4x": {"changes": "the previous schedule (2,000 steps, no warmup), on a base pretrained four times as long "
                           "(output/base_4x, the shipped base)",
                "env": {**SCHEDULE_2000, "MODEL": "output/base_4x"}, "flags": []},
    # Positive reviews are longer, and a prefix picks that up first (bench/length_shortcut.py): the same recipe on a
    # training file where length says nothing about the label (python bench/length_shortcut.py --make_balanced).
    "length_balanced": {
        "changes": "train.sh as shipped, trained on the length-balanced 12,322 of the 15,363 training reviews",
        "env": {"TASK": "sentiment", "TRAIN_FILE": "output/length_balanced/train.jsonl"}, "flags": []},
    # Does the prefix need a deeper base? The shipped base's recipe with 8 layers instead of 4 (7.95M parameters
    # instead of 5.0M; bench/base_depth.sh builds it into output/base_deep with data/build_base_model.py).
    "base_deep": {"changes": "train.sh as shipped, on a base with 8 layers instead of 4 (output/base_deep)",
                  "env": {"MODEL": "output/base_deep"}, "flags": []},
    "base_deep_full_finetune": {
        "changes": "full fine-tuning (as full_finetune) of the 8-layer base (output/base_deep)",
        "env": {**FULL_FINETUNE_ENV, "MODEL": "output/base_deep"}, **FULL_FINETUNE,
    },
    # The review first and the question after it, right before 答: the frozen base's answer position then carries
    # more of the review's sentiment (last-token probe 74.8% against 71.8%, bench/results/template_probe.md).
    "question_last": {
        "changes": "the review, then the question 这条评论的情感是积极还是消极？ and 答： (--prompt_template "
                   "question_last); the prefix started from the question",
        "env": {"INIT_TEXT": QUESTION},
        "flags": ["--prompt_template", "question_last", "--source_prefix", QUESTION]},
    # Does the prefix need more attention heads to steer? The shipped base's recipe with 8 query and 8 key/value
    # heads of 32 dimensions (multi-head attention as in ChatGLM-6B) instead of 4 query heads sharing 2 key/value
    # heads of 64; bench/base_heads.sh builds it into output/base_mha8.
    "base_mha8": {"changes": "train.sh as shipped, on a base with 8 attention heads, 8 KV heads (output/base_mha8)",
                  "env": {"MODEL": "output/base_mha8"}, "flags": []},
    "base_mha8_full_finetune": {
        "changes": "full fine-tuning (as full_finetune) of the 8-head base (output/base_mha8)",
        "env": {**FULL_FINETUNE_ENV, "MODEL": "output/base_mha8"}, **FULL_FINETUNE,
    },
    # The cut train.sh used before: prompts longer than 96 tokens (a fifth of the reviews) lose their start.
    "cut_96": {"changes": "prompts cut to 96 tokens (train.sh's previous default; 20% of the prompts cut)",
               "env": {}, "flags": ["--max_source_length", "96"]},
    # The other members of the family (bench/methods.py puts them side by side); learning rates from a 300-step
    # screen on seed 42 (python bench/learning.py --steps 300 --seeds 42 --lr X --configs ...;
    # bench/results/methods-lr-screen.md).
    "prompt_tuning_random": {"changes": "prompt tuning (soft prompt at the input only), random init, lr 3e-1",
                             "env": {"METHOD": "prompt_tuning", "INIT_TEXT": "", "LR": "3e-1"}, "flags": []},
    "prompt_tuning_text": {"changes": "prompt tuning, initialized from the instruction's token embeddings, lr 3e-1",
                           "env": {"METHOD": "prompt_tuning", "LR": "3e-1"}, "flags": []},
    "ptuning_v1": {"changes": "P-tuning v1 (BiLSTM+MLP prompt encoder, input layer), lr 1e-2",
                   "env": {"METHOD": "ptuning_v1", "LR": "1e-2"}, "flags": []},
    # Can the method fit at all? 512 training reviews for 600 steps (~19 epochs); "best dev acc." is measured on
    # those same 512 reviews, so it is the training fit; the test column is still the test split.
    "fit_512": {"changes": "fit test: 512 training reviews, 600 steps; dev column = accuracy on those 512",
                "env": FIT_512_ENV, "flags": FIT_512_FLAGS},
    "fit_512_pre_seq_len_128": {"changes": "the same fit test with pre_seq_len 128",
                                "env": {**FIT_512_ENV, "PRE_SEQ_LEN": "128"}, "flags": FIT_512_FLAGS},
    "fit_512_base_deep": {"changes": "the same fit test on the 8-layer base (output/base_deep)",
                          "env": {**FIT_512_ENV, "MODEL": "output/base_deep"}, "flags": FIT_512_FLAGS},
    "fit_512_base_2x": {"changes": "the same fit test on the base pretrained twice as long (output/base_2x)",
                        "env": {**FIT_512_ENV, "MODEL": "output/base_2x"}, "flags": FIT_512_FLAGS},
    "fit_512_full_finetune": {
        "changes": "the same fit test with full fine-tuning (lr 2e-4)", **FULL_FINETUNE,
        "env": FIT_512_ENV, "flags": [*FIT_512_FLAGS, *FULL_FINETUNE["flags"]],
    },
}


def run_one(name: str, seed: int, steps: int | None, force: bool, lr: str | None = None) -> dict:
    return run_config(name, CONFIGS[name], seed, steps, force, lr)


class NotRun(Exception):
    """A run with no stored result while CACHED_ONLY is set."""


CACHED_ONLY = False  # set by a caller that only wants to tabulate finished runs


def run_config(name: str, config: dict, seed: int, steps: int | None, force: bool, lr: str | None = None) -> dict:
    """Train with ``config`` (env, flags; optional evaluate_flags, full_finetune) and evaluate; cached by name."""
    if lr is not None:
        config = {**config, "env": {**config["env"], "LR": lr}, "changes": f"{config['changes']} (lr {lr})"}
    label = name + ("" if steps is None else f"-{steps}steps") + ("" if lr is None else f"-lr{lr}")
    out = OUT / label / f"seed{seed}"
    result_file = out / "result.json"
    if result_file.is_file() and not force:
        result = json.loads(result_file.read_text())
        # results written before these fields existed: read them from the run's own files
        result.setdefault("trainable_params", trainable_params(out / "train.log"))
        result.setdefault("metrics", {k: v for k, v in json.loads((out / "eval" / "metrics.json").read_text()).items()
                                      if isinstance(v, (int, float))})
        return result
    if CACHED_ONLY:
        raise NotRun(str(out))
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, **config["env"], "SEED": str(seed), "OUTPUT_DIR": str(out)}
    if steps is not None:
        env["STEPS"] = str(steps)
    out.mkdir(parents=True)
    start = time.time()
    with open(out / "train.log", "w") as log:
        run_train_sh(config["flags"], env, log, out)
    train_seconds = time.time() - start
    evaluate = [sys.executable, "-m", "ptuning_v2.evaluate", "--output_dir", str(out / "eval")]
    if config.get("full_finetune"):
        evaluate += ["--model_name_or_path", str(out), *config["evaluate_flags"]]
    else:
        evaluate += ["--checkpoint", str(out), *config.get("evaluate_flags", [])]
    with open(out / "evaluate.log", "w") as log:
        subprocess.run(evaluate, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    state = json.loads((out / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_accuracy" in e]
    best = max(evals, key=lambda e: e["eval_accuracy"]) if evals else None
    result = {
        "config": name, "lr": config["env"].get("LR"), "seed": seed, "steps": state["global_step"], "train_seconds": round(train_seconds, 1),
        "test_accuracy": metrics["accuracy"], "test_label_scoring_accuracy": metrics.get("label_scoring_accuracy"),
        "best_dev_accuracy": best["eval_accuracy"] if best else None, "best_step": best["step"] if best else None,
        "peak_rss_gb": peak_rss_gb(out),
        "final_train_loss": next((e["loss"] for e in reversed(state["log_history"]) if "loss" in e), None),
        "trainable_params": trainable_params(out / "train.log"),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_train_sh(flags: list[str], env: dict, log, out: Path) -> None:
    """``bash train.sh *flags`` under GNU time, whose %M (the peak resident set of the largest process of train.sh's
    tree, KiB) goes to ``out/peak_rss_kib``."""
    subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(out / "peak_rss_kib"), "bash", str(ROOT / "train.sh"),
                    *flags], env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)


def peak_rss_gb(out: Path) -> float:
    """The peak RSS that run_train_sh recorded in ``out``, GiB."""
    return round(int((out / "peak_rss_kib").read_text().split()[-1]) / 2**20, 2)


def trainable_params(train_log: Path) -> tuple[int, int] | None:
    """(trainable, all) parameters as train.py printed them ("trainable params: N || all params: M || ...")."""
    import re

    found = re.findall(r"^trainable params: ([\d,]+) \|\| all params: ([\d,]+)", train_log.read_text(), re.M)
    return tuple(int(x.replace(",", "")) for x in found[-1]) if found else None


def table(results: dict[str, list[dict]], steps: int | None, command: str, lr: str | None = None) -> str:
    budget = "each configuration's step budget" if steps is None else f"{steps} steps"
    lines = [
        f"Sentiment test split (1,000 reviews, 52% 消极), {budget}; `{command}` (finished runs are read back from "
        "output/learning/, so rerunning rewrites this table without training). Accuracy of the generated answer "
        "(greedy), %; "
        "label scoring in brackets where it differs. Train time: median wall time of `train.sh` (2 CPU cores); "
        "peak RSS: the largest over the seeds (GNU time).",
        "",
        "| configuration | what changes | test acc. per seed | mean | min | best dev acc. (step) | train time | "
        "peak RSS |",
        "|---|---|---|---:|---:|---|---:|---:|",
    ]
    for name, runs in results.items():
        accs = [r["test_accuracy"] for r in runs]
        per_seed = ", ".join(
            f"{r['test_accuracy']:.1f}" + (f" [{r['test_label_scoring_accuracy']:.1f}]"
                                           if r["test_label_scoring_accuracy"] not in (None, r["test_accuracy"]) else "")
            for r in runs)
        dev = ", ".join(f"{r['best_dev_accuracy']:.1f} ({r['best_step']})" for r in runs
                        if r["best_dev_accuracy"] is not None) or "-"
        seconds = statistics.median(r["train_seconds"] for r in runs)
        rss = max((r["peak_rss_gb"] for r in runs if r.get("peak_rss_gb")), default=None)
        changes = CONFIGS[name]["changes"] + ("" if lr is None else f" (overridden: lr {lr})")
        lines.append(f"| {name} | {changes} | {per_seed} | {statistics.mean(accs):.1f} | "
                     f"{min(accs):.1f} | {dev} | {seconds / 60:.1f} min | "
                     f"{'-' if rss is None else f'{rss:.2f} GB'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--steps", type=int, help="override every configuration's step budget (a cheaper screen)")
    p.add_argument("--lr", help="override the configurations' learning rate (a learning-rate screen)")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"error: unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    results: dict[str, list[dict]] = {}
    for name in names:
        for seed in map(int, args.seeds.split(",")):
            r = run_one(name, seed, args.steps, args.force, args.lr)
            results.setdefault(name, []).append(r)
            print(json.dumps(r), flush=True)
    text = table(results, args.steps, " ".join(["python bench/learning.py", *(argv if argv is not None else sys.argv[1:])]),
                 args.lr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

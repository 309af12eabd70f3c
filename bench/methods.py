"""The P*-tuning family side by side on the shipped default: same base, same data, same budget per task.

    python bench/methods.py                         # sentiment over seeds 42 43 44, idiom over seed 42
    python bench/methods.py --sentiment_seeds 42 --idiom_seeds 42 --skip_idiom

Rows: the base alone (zero-shot, the same prompts), 4-shot in-context learning (demonstrations drawn from the
training file, balanced over labels, one draw per seed), prompt tuning (random and text init), P-tuning v1,
prefix-tuning (P-tuning v2 with the MLP reparameterization: train.sh's default), P-tuning v2 (no MLP) and full
fine-tuning. Every trained row is ``bash train.sh`` with METHOD/LR/... set (bench/learning.py's runner: finished runs
are kept under output/learning/ and read back, so an interrupted bench continues), then
``python -m ptuning_v2.evaluate`` on the best checkpoint by validation.

Sentiment: 2,000 steps x 16 (full fine-tuning 1,200 at lr 2e-4), test split of 1,000 reviews: accuracy of the
generated answer and by label scoring. Idiom (explain an idiom): 300 steps x 16, the first 200 test examples: BLEU-4
and ROUGE-1/L. Learning rates: each method's from a 300-step sentiment screen on seed 42 (bench/results/
methods-lr-screen.md); idiom keeps train.sh's idiom lr for the MLP prefix, as shipped, and 3e-2 without the MLP.

Writes bench/results/methods.md (the tables) and bench/results/methods.png (accuracy vs. trainable parameters).
Columns: trainable parameters and their share of the base's 5.0M, the median wall time of train.sh (2 CPU cores),
the peak resident memory of the training process (GNU time).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import learning  # noqa: E402  (bench/learning.py: the train.sh + evaluate runner)

OUT = ROOT / "output" / "methods"
RESULTS = ROOT / "bench" / "results"
INSTRUCTION = "判断这条评论的情感是积极还是消极："
SENTIMENT_PROMPT = learning.SENTIMENT_EVALUATE_FLAGS
IDIOM_PROMPT = ["--test_file", "data/generated/idiom/test.jsonl", "--prompt_column", "content", "--response_column",
                "summary", "--prompt_template", "chatglm", "--max_new_tokens", "64", "--max_samples", "200"]

# (row name, what it is, learning.py configuration name or an inline configuration)
SENTIMENT_ROWS = [
    ("prompt tuning (random init)", "prompt_tuning_random"),
    ("prompt tuning (text init)", "prompt_tuning_text"),
    ("P-tuning v1 (LSTM+MLP encoder)", "ptuning_v1"),
    ("prefix-tuning (P-tuning v2 + MLP; train.sh default)", "default"),
    ("P-tuning v2 (no MLP)", "no_projection"),
    ("full fine-tuning", "full_finetune"),
]
IDIOM_STEPS = "300"


def idiom_config(sentiment_name: str) -> dict:
    """The sentiment configuration moved to TASK=idiom: 300 steps, 200 test examples, no text init (idiom has no
    instruction), the MLP prefix at train.sh's idiom learning rate, the plain one at 3e-2."""
    config = learning.CONFIGS[sentiment_name]
    env = {**config["env"], "TASK": "idiom", "STEPS": IDIOM_STEPS, "INIT_TEXT": ""}
    if sentiment_name == "no_projection":
        env["LR"] = "3e-2"  # its sentiment lr; the MLP prefix ("default") takes train.sh's idiom lr
    if sentiment_name == "prompt_tuning_text":
        env["INIT_TEXT"] = "解释这个成语的意思："  # "explain what this idiom means"
    flags = [f for f in config["flags"]]
    out = {"changes": config["changes"], "env": env, "flags": flags,
           "evaluate_flags": ["--max_samples", "200"]}
    if config.get("full_finetune"):
        out.update(full_finetune=True, evaluate_flags=IDIOM_PROMPT)
    return out


def run_untrained(label: str, flags: list[str], seed: int, force: bool) -> dict:
    """The base alone through evaluate (zero-shot, or k-shot with --num_shots); cached like the trained runs."""
    out = OUT / label / f"seed{seed}"
    result_file = out / "result.json"
    if result_file.is_file() and not force:
        return json.loads(result_file.read_text())
    if learning.CACHED_ONLY:
        raise learning.NotRun(str(out))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ptuning_v2.evaluate", "--model_name_or_path", "data/base_model",
           "--output_dir", str(out / "eval"), *flags]
    with open(out / "evaluate.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    result = {"config": label, "seed": seed, "test_accuracy": metrics["accuracy"],
              "test_label_scoring_accuracy": metrics.get("label_scoring_accuracy"), "train_seconds": 0.0,
              "peak_rss_gb": None, "trainable_params": (0, None),
              "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def shots_flags(prompt_flags: list[str], train_file: str, seed: int) -> list[str]:
    return [*prompt_flags, "--base_only", "--num_shots", "4", "--shots_seed", str(seed), "--shots_file", train_file,
            "--max_source_length", "512"]


def fmt_params(runs: list[dict], base_params: int) -> tuple[str, str]:
    trainable = runs[0].get("trainable_params")
    if not trainable or trainable[0] == 0:
        return "0", "0"
    if trainable[0] == trainable[1]:                # full fine-tuning: every weight
        return f"{trainable[0]:,}", "100%"
    return f"{trainable[0]:,}", f"{100 * trainable[0] / base_params:.2f}%"


def summary(runs: list[dict], key: str) -> tuple[str, float, float]:
    values = [r["metrics"][key] if key in r["metrics"] else r[key] for r in runs]
    return ", ".join(f"{v:.1f}" for v in values), statistics.mean(values), min(values)


def time_and_memory(runs: list[dict]) -> tuple[str, str]:
    if all(r["train_seconds"] == 0 for r in runs):
        return "-", "-"
    minutes = statistics.median(r["train_seconds"] for r in runs) / 60
    rss = max((r["peak_rss_gb"] for r in runs if r.get("peak_rss_gb")), default=None)
    return f"{minutes:.1f} min", "-" if rss is None else f"{rss:.2f} GB"


def markdown_table(intro: list[str], columns: list[str], aligns: str, rows: dict[str, list[dict]], cells) -> str:
    """intro lines, then one row per method: cells(runs) gives the columns after the name; no runs: "not run yet".
    aligns: one letter per column, l(eft) or r(ight)."""
    rule = "|" + "".join("---|" if a == "l" else "---:|" for a in aligns)
    lines = [*intro, "", "| " + " | ".join(columns) + " |", rule]
    for name, runs in rows.items():
        values = cells(runs) if runs else ["not run yet"] + [""] * (len(columns) - 2)
        lines.append("| " + " | ".join([name, *values]) + " |")
    return "\n".join(lines) + "\n"


def sentiment_table(rows: dict[str, list[dict]], base_params: int, command: str) -> str:
    def cells(runs):
        per_seed, mean, low = summary(runs, "test_accuracy")
        scored = [r["test_label_scoring_accuracy"] for r in runs if r.get("test_label_scoring_accuracy") is not None]
        scored_text = f"{statistics.mean(scored):.1f} ({min(scored):.1f})" if scored else "-"
        return [per_seed, f"{mean:.1f}", f"{low:.1f}", scored_text, *fmt_params(runs, base_params),
                *time_and_memory(runs)]

    intro = [
        "### Sentiment (test split, 1,000 reviews, 52% 消极)",
        "",
        f"`{command}`. Accuracy of the generated answer (greedy), %, per seed; label scoring = the label word with "
        "the higher log-likelihood. 4-shot: one demonstration draw per seed. Trained rows: 2,000 steps x 16 "
        "(full fine-tuning: 1,200 at lr 2e-4), best checkpoint by validation accuracy.",
    ]
    columns = ["method", "test acc. per seed", "mean", "min", "label scoring mean (min)", "trainable params",
               "share of base", "train time", "peak RSS"]
    return markdown_table(intro, columns, "llrrrrrrr", rows, cells)


def idiom_table(rows: dict[str, list[dict]], base_params: int) -> str:
    def cells(runs):
        bleu, bleu_mean, _ = summary(runs, "bleu-4")
        rouge, rouge_mean, _ = summary(runs, "rouge-1")
        rouge_l = statistics.mean(r["metrics"]["rouge-l"] for r in runs)
        return [bleu, f"{bleu_mean:.2f}", rouge, f"{rouge_mean:.1f}", f"{rouge_l:.1f}",
                fmt_params(runs, base_params)[0], *time_and_memory(runs)]

    intro = [
        "### Idiom explanation (first 200 test examples)",
        "",
        f"Trained rows: {IDIOM_STEPS} steps x 16 (lr as in the sentiment rows; the MLP prefix at train.sh's idiom "
        "lr; full fine-tuning lr 2e-4), best checkpoint by validation loss. BLEU-4 and ROUGE as ChatGLM's "
        "ptuning computes them (characters / jieba words), per seed and mean.",
    ]
    columns = ["method", "BLEU-4 per seed", "BLEU-4 mean", "ROUGE-1 per seed", "ROUGE-1 mean", "ROUGE-L mean",
               "trainable params", "train time", "peak RSS"]
    return markdown_table(intro, columns, "llrlrrrrr", rows, cells)


def plot(rows: dict[str, list[dict]], base_params: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, runs in rows.items():
        trainable = runs[0].get("trainable_params") or (0, None)
        x = max(trainable[0], 1)
        accs = [r["test_accuracy"] for r in runs]
        scored = [r["test_label_scoring_accuracy"] for r in runs if r.get("test_label_scoring_accuracy") is not None]
        ax.errorbar([x], [statistics.mean(accs)], yerr=[[statistics.mean(accs) - min(accs)], [max(accs) - statistics.mean(accs)]],
                    fmt="o", capsize=4, label=f"{name}")
        if scored:
            ax.plot([x], [statistics.mean(scored)], marker="x", color="gray")
    ax.axhline(52.0, color="lightgray", linestyle="--", linewidth=1)
    ax.text(1.2, 53, "majority label (52%)", color="gray", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log; 1 = none)")
    ax.set_ylabel("sentiment test accuracy, %")
    ax.text(1.2, 92, "dot: generated answer, mean and min-max over seeds; x: label scoring", fontsize=8, color="gray")
    ax.set_ylim(-3, 100)
    ax.set_title(f"P*-tuning family on the shipped default base ({base_params / 1e6:.1f}M parameters)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add(rows: dict[str, list[dict]], name: str, run) -> None:
    """rows[name] gets run()'s result; with --cached_only a run not finished yet is left out (the row says so)."""
    rows.setdefault(name, [])
    try:
        rows[name].append(run())
    except learning.NotRun:
        return
    print(json.dumps(rows[name][-1]), flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sentiment_seeds", default="42,43,44")
    p.add_argument("--idiom_seeds", default="42")
    p.add_argument("--skip_idiom", action="store_true")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument("--cached_only", action="store_true", help="tabulate finished runs only; train nothing")
    args = p.parse_args(argv)
    learning.CACHED_ONLY = args.cached_only
    command = " ".join(["python bench/methods.py", *(argv if argv is not None else sys.argv[1:])])
    start = time.time()

    sentiment: dict[str, list[dict]] = {}
    seeds = list(map(int, args.sentiment_seeds.split(",")))
    for seed in seeds:
        # greedy decoding of the base alone: one run stands for every seed
        add(sentiment, "zero-shot (base alone, same prompts)",
            lambda: run_untrained("sentiment-zero-shot", SENTIMENT_PROMPT, 42, args.force))
        add(sentiment, "4-shot in-context learning", lambda: run_untrained(
            "sentiment-4-shot", shots_flags(SENTIMENT_PROMPT, "data/generated/sentiment/train.jsonl", seed), seed,
            args.force))
    for name, config in SENTIMENT_ROWS:
        for seed in seeds:
            add(sentiment, name, lambda: learning.run_one(config, seed, None, args.force))
    base_params = next(r["trainable_params"][1] - r["trainable_params"][0] for runs in sentiment.values()
                       for r in runs if r.get("trainable_params") and r["trainable_params"][1])
    text = "# The P*-tuning family on the shipped default\n\n" + sentiment_table(sentiment, base_params, command)
    plot({k: v for k, v in sentiment.items() if v}, base_params, RESULTS / "methods.png")

    if not args.skip_idiom:
        idiom: dict[str, list[dict]] = {}
        idiom_seeds = list(map(int, args.idiom_seeds.split(",")))
        for seed in idiom_seeds:
            add(idiom, "zero-shot (base alone, same prompts)",
                lambda: run_untrained("idiom-zero-shot", IDIOM_PROMPT, 42, args.force))
            add(idiom, "4-shot in-context learning", lambda: run_untrained(
                "idiom-4-shot", shots_flags(IDIOM_PROMPT, "data/generated/idiom/train.jsonl", seed), seed, args.force))
        for name, config in SENTIMENT_ROWS:
            for seed in idiom_seeds:
                add(idiom, name, lambda: learning.run_config(f"idiom-{config}", idiom_config(config), seed, None,
                                                             args.force))
        text += "\n" + idiom_table(idiom, base_params)
    text += f"\n![accuracy against trainable parameters](methods.png)\n\nBench wall time this run: " \
            f"{(time.time() - start) / 60:.0f} min (finished runs are read back, not retrained).\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "methods.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

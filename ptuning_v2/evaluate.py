"""Evaluate a prefix checkpoint (or the bare base with the same prompts) on a test file.

    python -m ptuning_v2.evaluate --checkpoint output/sentiment [--test_file F] [--base_only] [--do_sample]

Writes ``generated_predictions.jsonl`` ({"prompt", "labels", "predict"} per line) and ``metrics.json``:
BLEU-4 and ROUGE-1/2/L as ChatGLM-6B's ptuning computes them, accuracy (exact match of the generated answer),
and, for classification data (few distinct short answers, or --label_words), ``label_scoring_accuracy``:
the answer chosen by comparing the log-likelihood of each label word, which needs no generation at all.

``--num_shots K`` is the k-shot in-context-learning baseline: K demonstrations from the training file (balanced
over the labels for classification, drawn once with ``--shots_seed``) are put before every test prompt as earlier
turns of the same template, cut to fit max_source_length without cutting the test query (see demonstrations.py).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from ptuning_v2.cli import run
from ptuning_v2.data import Columns, load_examples
from ptuning_v2.demonstrations import k_shot_prompts, select_demonstrations
from ptuning_v2.inference import generate_batch, label_logprobs, load_session
from ptuning_v2.metrics import accuracy, classification_labels, generation_metrics

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="prefix checkpoint directory (output_dir or checkpoint-N)")
    p.add_argument("--model_name_or_path", help="base model; default: the one recorded in the checkpoint")
    p.add_argument("--test_file", help="JSON lines; default: the test file recorded in the checkpoint")
    p.add_argument("--base_only", action="store_true", help="evaluate the base without the prefix (same prompts)")
    p.add_argument("--quantization_bit", type=int, choices=[4, 8], help="override the recorded quantization")
    p.add_argument("--prompt_column"), p.add_argument("--response_column"), p.add_argument("--history_column")
    p.add_argument("--prompt_template", help="without a checkpoint: chatglm, instruction, question_last, plain or chat "
                                             "(the tokenizer's chat template)")
    p.add_argument("--source_prefix", help="without a checkpoint: text put before every prompt")
    p.add_argument("--max_source_length", type=int, help="max prompt tokens; default: the recorded one, else 1024")
    p.add_argument("--num_shots", type=int, default=0, help="k-shot baseline: demonstrations before each prompt "
                                                            "(default 0: zero-shot)")
    p.add_argument("--shots_seed", type=int, default=42, help="seed of the demonstrations' draw and order")
    p.add_argument("--shots_file", help="JSON lines the demonstrations come from; default: the training file "
                                        "recorded in the checkpoint")
    p.add_argument("--label_words", help="comma-separated answers to score, e.g. 积极,消极 (default: detected)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, help="default: max_target_length recorded in the checkpoint, else 64")
    p.add_argument("--max_samples", type=int, help="evaluate only the first N examples")
    p.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.95)
    p.add_argument("--top_p", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--output_dir", help="default: CHECKPOINT/eval (or CHECKPOINT/eval-base-only); "
                                        "-Kshot (and -seedS unless 42) appended with --num_shots K")
    return p.parse_args(argv)


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def missing_shots_file(args, test_file) -> None:
    """Exits with what to give: the demonstrations' source is never guessed."""
    reason = "the checkpoint records none" if args.checkpoint else "without --checkpoint none is recorded"
    beside = Path(test_file).with_name("train.jsonl")
    hint = f" (e.g. --shots_file {beside})" if beside.is_file() and beside != Path(test_file) else ""
    raise SystemExit(f"error: --num_shots {args.num_shots} needs the training file to draw demonstrations from; "
                     f"{reason}: give --shots_file FILE{hint}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.checkpoint and not args.model_name_or_path:
        raise SystemExit("error: give --checkpoint or --model_name_or_path")
    if args.num_shots < 0:
        raise SystemExit("error: --num_shots must be 0 or more")
    quant = "recorded" if args.quantization_bit is None else args.quantization_bit
    session = load_session(args.checkpoint, args.model_name_or_path, args.base_only, quant,
                           args.prompt_template, args.source_prefix, args.max_source_length)
    recorded = session.recorded or {}
    cols = recorded.get("columns", {})
    columns = Columns(prompt=args.prompt_column or cols.get("prompt", "content"),
                      response=args.response_column or cols.get("response", "summary"),
                      history=args.history_column or cols.get("history"), input=cols.get("input"))
    test_file = args.test_file or recorded.get("test_file")
    if not test_file:
        raise SystemExit("error: no --test_file given and none recorded in the checkpoint")
    examples = load_examples(test_file, columns)[: args.max_samples]
    references = [ex.response for ex in examples]
    labels = args.label_words.split(",") if args.label_words else classification_labels(references)
    shots = {"num_shots": args.num_shots, "shots_seed": args.shots_seed}
    if args.num_shots:
        shots_file = args.shots_file or recorded.get("train_file") or missing_shots_file(args, test_file)
        try:
            demos = select_demonstrations(load_examples(shots_file, columns), args.num_shots, args.shots_seed, labels,
                                          exclude_queries=[ex.query for ex in examples])
        except ValueError as e:
            raise SystemExit(f"error: {shots_file}: {e}") from None
        prompts, cut = k_shot_prompts(session, examples, demos)
        shots.update(shots_file=str(shots_file), max_source_length=session.max_source_length, **cut,
                     demonstrations=[{"query": d.query, "response": d.response} for d in demos])
    else:
        prompts = [session.prompt_ids(ex.query, ex.history) for ex in examples]
    max_new_tokens = args.max_new_tokens or recorded.get("max_target_length", 64)

    import torch

    torch.manual_seed(args.seed)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=args.do_sample)
    if args.do_sample:
        gen_kwargs.update(temperature=args.temperature, top_p=args.top_p)
    # Similar lengths in one batch waste less padding; results are put back in file order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    predictions = [""] * len(prompts)
    tok = session.tokenizer
    for chunk in tqdm(list(batches(order, args.batch_size)), desc="generating", unit="batch"):
        for i, answer in zip(chunk, generate_batch(session, [prompts[i] for i in chunk], **gen_kwargs)):
            predictions[i] = answer

    metrics = {"test_file": str(test_file), "num_examples": len(examples),
               "model": "base + prefix" if session.has_prefix else "base model, no prefix",
               **generation_metrics(predictions, references), "accuracy": accuracy(predictions, references)}
    if labels:
        candidates = [tok.encode(label, add_special_tokens=False) for label in labels]
        chosen = []
        for chunk in tqdm(list(batches(order, args.batch_size)), desc="scoring labels", unit="batch"):
            scores = label_logprobs(session, [prompts[i] for i in chunk], candidates)
            chosen.extend(zip(chunk, scores.argmax(-1).tolist()))
        picked = [""] * len(prompts)
        for i, k in chosen:
            picked[i] = labels[k]
        metrics["label_words"] = labels
        metrics["label_scoring_accuracy"] = accuracy(picked, references)
    metrics.update(shots)

    default_out = Path(args.checkpoint) / ("eval-base-only" if args.base_only else "eval") if args.checkpoint else Path("output/eval-base")
    if args.num_shots:
        default_out = default_out.with_name(f"{default_out.name}-{args.num_shots}shot"
                                            + (f"-seed{args.shots_seed}" if args.shots_seed != 42 else ""))
    out_dir = Path(args.output_dir) if args.output_dir else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "generated_predictions.jsonl", "w", encoding="utf-8") as f:
        for ex, ref, pred in zip(examples, references, predictions):
            f.write(json.dumps({"prompt": ex.query, "labels": ref, "predict": pred}, ensure_ascii=False) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(metrics, ensure_ascii=False, indent=2))
    print(f"predictions and metrics written to {os.path.abspath(out_dir)}")
    return metrics


if __name__ == "__main__":
    run(main)

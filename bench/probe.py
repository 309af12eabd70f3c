"""How much sentiment the frozen default base already carries: logistic-regression probes on its hidden states.

    python bench/probe.py [--train 4096] [--max_source_length 256] [--model data/base_model]
    python bench/probe.py --checkpoint output/learning/default/seed42 --out bench/results/probe-prefixed.md

Every review is formatted exactly as training formats it (instruction template, the task's instruction, cut to
--max_source_length tokens: 256 as train.sh does now, 96 for the previous default) and run once through the
frozen base. Features, per layer output l = 1..4 (hidden 256):
  * last: the hidden state (256,) at the prompt's last token ("：" of "答："), where the answer is predicted;
  * mean: the mean hidden state (256,) over the prompt's real tokens.
A logistic regression (torch, L-BFGS, L2 weight 1e-3 on standardized features) is fit on the first --train
training reviews and scored on the 1,000-review test split. Also the task's loss (answer tokens, as training
computes it) on the first 256 training reviews: the base alone, with a random prefix, and with a prefix from the
instruction (--prefix_init_text), before any training. Prints a markdown table and writes
bench/results/probe.md. With --checkpoint the same probes read the hidden states of the base *with that trained
prefix in place* (the starting losses are skipped): do the prefix's layers carry more sentiment than the frozen
base's, or less? This is a baseline beside P-tuning and full fine-tuning, not a claim about a ceiling: a
prefix changes what the layers compute, a probe only reads what they already compute.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ptuning_v2.data import Columns, build_prompt_features, get_template, load_examples  # noqa: E402
from ptuning_v2.inference import left_pad  # noqa: E402
from ptuning_v2.positions import real_token_positions  # noqa: E402

INSTRUCTION = "判断这条评论的情感是积极还是消极："  # the sentiment task's --source_prefix in train.sh


@torch.no_grad()
def features(model, tokenizer, examples, max_source_length, batch_size=64, template=None, source_prefix=INSTRUCTION):
    """(layers, N, 2, hidden): per layer output, the last-token and the mean hidden state of each prompt.

    Prompts as train.sh builds them (the instruction template and the task's instruction) unless ``template`` /
    ``source_prefix`` say otherwise. The last layer's output is after the final norm: the LM head applies to it."""
    template = template or get_template("instruction")
    prompts = [build_prompt_features(ex, tokenizer, template, max_source_length, source_prefix)["input_ids"]
               for ex in examples]
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = left_pad(prompts[start:start + batch_size], tokenizer.pad_token_id, "cpu")
        hidden = model(input_ids=ids, attention_mask=mask, position_ids=real_token_positions(mask),
                       output_hidden_states=True).hidden_states[1:]          # layers x (B, L, H)
        stacked = torch.stack(hidden)                                          # (layers, B, L, H)
        weights = mask.float().unsqueeze(0).unsqueeze(-1)
        mean = (stacked * weights).sum(2) / weights.sum(2)
        out.append(torch.stack([stacked[:, :, -1], mean], dim=2))            # (layers, B, 2, H)
    return torch.cat(out, dim=1)


def fit_logistic(x, y, l2=1e-3, steps=200):
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (((z - mu) / sd) @ w + b).detach() > 0


@torch.no_grad()
def starting_losses(model, tokenizer, examples, max_source_length) -> dict[str, float]:
    """Loss on the answers before training: base alone, random prefix, prefix from the instruction (P = 16, MLP)."""
    from transformers import DataCollatorForSeq2Seq

    from ptuning_v2.data import build_training_features
    from ptuning_v2.positions import real_token_positions as positions
    from ptuning_v2.prefix_init import initialize_prefix_from_text
    from ptuning_v2.prefix_model import PrefixModel, causal_lm_loss, encoder_config_for

    template = get_template("instruction")
    features = [build_training_features(ex, tokenizer, template, max_source_length, 4, INSTRUCTION) for ex in examples]
    tokenizer.padding_side = "left"
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(features)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    base_logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    losses = {"base alone": causal_lm_loss(base_logits, labels).item()}
    for name, init in (("random prefix", None), ("prefix from the instruction", INSTRUCTION)):
        torch.manual_seed(42)
        prefixed = PrefixModel(model, encoder_config_for(model.config, 16, True, None, 0.0)).eval()
        if init:
            initialize_prefix_from_text(prefixed, tokenizer, init)
        losses[name] = prefixed(ids, attention_mask=mask, labels=labels).loss.item()
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "data" / "base_model"))
    p.add_argument("--data", default=str(ROOT / "data" / "generated" / "sentiment"))
    p.add_argument("--train", type=int, default=4096, help="training reviews for the probe")
    p.add_argument("--max_source_length", type=int, default=256, help="prompt tokens kept (train.sh's sentiment cut)")
    p.add_argument("--checkpoint", help="probe the base with this trained prefix in place (a prefix checkpoint)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "probe.md"))
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    if args.checkpoint:
        from ptuning_v2.checkpoint import load_prefix_model

        model, tokenizer, _ = load_prefix_model(args.checkpoint)   # PrefixModel: forward() adds the prefix
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    columns = Columns(prompt="text", response="label")
    train = load_examples(Path(args.data) / "train.jsonl", columns)[: args.train]
    test = load_examples(Path(args.data) / "test.jsonl", columns)
    start = time.time()
    x_train = features(model, tokenizer, train, args.max_source_length)
    x_test = features(model, tokenizer, test, args.max_source_length)
    y_train = torch.tensor([ex.response == "积极" for ex in train], dtype=torch.float32)
    y_test = torch.tensor([ex.response == "积极" for ex in test])
    rows = []
    for layer in range(x_train.shape[0]):
        accs = []
        for kind in range(2):
            predict = fit_logistic(x_train[layer, :, kind], y_train)
            accs.append(100 * (predict(x_test[layer, :, kind]) == y_test).float().mean().item())
        rows.append(f"| {layer + 1} | {accs[0]:.1f} | {accs[1]:.1f} |")
    losses = {} if args.checkpoint else starting_losses(model, tokenizer, train[:256], args.max_source_length)
    what = f"the base with the trained prefix {args.checkpoint}" if args.checkpoint else \
        f"the frozen base ({Path(args.model).name})"
    command = " ".join(["python bench/probe.py", *(argv or sys.argv[1:])])
    text = "\n".join([
        f"Logistic-regression probes on {what}, {len(train)} training reviews, "
        f"test split ({len(test)} reviews, {100 * (1 - y_test.float().mean().item()):.0f}% 消极); "
        f"prompts cut to {args.max_source_length} tokens; "
        f"`{command}` ({time.time() - start:.0f} s).",
        "",
        "| layer output | last token (acc. %) | mean over tokens (acc. %) |",
        "|---:|---:|---:|",
        *rows,
        *(["", "Loss on the answer tokens of the first 256 training reviews before any training (pre_seq_len 16, "
            "MLP, seed 42): " + "; ".join(f"{name} {loss:.2f}" for name, loss in losses.items()) + "."]
          if losses else []),
    ]) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

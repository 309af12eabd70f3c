"""Can a method fit one fixed batch? 60 AdamW steps on the same 32 sentiment training reviews, loss every 6 steps.

    python bench/fixed_batch.py prompt_tuning:3e-2 prompt_tuning:3e-1 ptuning_v1:1e-2 ptuning_v2:3e-3

Each argument is METHOD:LR with the settings of bench/methods.py (pre_seq_len 16; ptuning_v2 with the MLP and the
instruction init; prompt_tuning from the instruction's embeddings; ptuning_v1 with the BiLSTM+MLP encoder). The
batch is formatted as train.sh formats the sentiment task (left-padded, answer = label word + eos, 3 tokens).
A method that cannot lower the loss on 32 fixed examples is limited by what it can express or by its optimisation,
not by data or steps. Also prints, for input-level methods, the RMS of the prompt vectors against the embedding
table's and how alike the prompt vectors are (mean pairwise cosine).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq  # noqa: E402

from ptuning_v2.arguments import PrefixArguments  # noqa: E402
from ptuning_v2.data import Columns, build_training_features, get_template, load_examples  # noqa: E402
from ptuning_v2.methods import get_method  # noqa: E402
from ptuning_v2.prefix_model import PrefixModel  # noqa: E402

INSTRUCTION = "判断这条评论的情感是积极还是消极："
MODEL = str(ROOT / "data" / "base_model")


def fixed_batch(tokenizer, n=32):
    examples = load_examples(ROOT / "data" / "generated" / "sentiment" / "train.jsonl",
                             Columns(prompt="text", response="label"))[:n]
    features = [build_training_features(e, tokenizer, get_template("instruction"), 96, 4, INSTRUCTION) for e in examples]
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(features)


def fit(method_name: str, lr: float, tokenizer, batch, steps=60):
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    flags = dict(method=method_name, pre_seq_len=16, prefix_dropout=0.0)
    if method_name == "ptuning_v2":
        flags.update(prefix_projection=True, prefix_init_text=INSTRUCTION)
    if method_name == "prompt_tuning":
        flags.update(prompt_init="text", prompt_init_text=INSTRUCTION)
    args = PrefixArguments(**flags)
    method = get_method(method_name)
    torch.manual_seed(0)
    model = PrefixModel(base, method.config_from_args(base.config, args))
    method.initialize(model, tokenizer, args, 0)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    line = f"{method_name} lr {lr:g}: loss every 6 steps " + " ".join(f"{x:.2f}" for x in losses[::6])
    line += f", last {losses[-1]:.2f}"
    encoder = model.prefix_encoder
    if hasattr(encoder, "prompt_embeddings"):
        with torch.no_grad():
            e = encoder.prompt_embeddings()
            rms = e.pow(2).mean(-1).sqrt().mean().item()
            table = base.get_input_embeddings().weight.pow(2).mean(-1).sqrt().mean().item()
            cos = torch.nn.functional.cosine_similarity(e[:, None], e[None], dim=-1).mean().item()
        line += f"; prompt RMS {rms:.3f} (embedding table {table:.3f}), mean pairwise cosine {cos:.2f}"
    return line


def main(argv=None):
    settings = (argv if argv is not None else sys.argv[1:]) or ["prompt_tuning:3e-1", "ptuning_v1:1e-2",
                                                               "ptuning_v2:3e-3"]
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    tokenizer.padding_side = "left"
    batch = fixed_batch(tokenizer)
    for setting in settings:
        name, lr = setting.split(":")
        print(fit(name, float(lr), tokenizer, batch), flush=True)


if __name__ == "__main__":
    main()

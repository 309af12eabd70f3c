"""Train the project's default base model: a tiny ChatGLM-style Chinese causal LM, from scratch, on the CPU.

    python data/build_base_model.py --steps 7664 --threads 2     # the shipped data/base_model (~78 min, 2 cores)
    python data/build_base_model.py [--out data/base_model] [--minutes 35] [--seed 42]   # a wall-clock budget

Steps (all seeded):
  1. Pretraining text from prepare_data.pretraining_corpus: People's Daily (Jan 1998, 4 paragraphs a
     document) plus the TRAIN splits of the sentiment reviews and idiom explanations. 1% of the documents
     is held out.
  2. A sentencepiece unigram tokenizer (8000 pieces, identity normalisation so full-width punctuation
     survives, byte fallback so nothing becomes <unk>), converted to a `tokenizers` Unigram model and saved
     as tokenizer.json, which `AutoTokenizer.from_pretrained` loads offline.
     Special tokens: <unk>=0, <s>=1 (bos), </s>=2 (eos), <pad>=3. add_special_tokens=True adds NOTHING:
     callers place <s>/</s> themselves (pretraining saw every document as "<s> text </s>").
  3. A `transformers.GlmForCausalLM` (GQA with 2 KV heads and partial rotary like ChatGLM2/3), trained as a
     plain causal LM on packed blocks of `--block-size` tokens with AdamW, linear warmup and cosine decay.
     The decay runs over `--minutes` of wall time, or over `--steps` steps when given (reproducible count).
  4. save_pretrained (safetensors, fp32) + tokenizer + pretraining_record.json into --out.

Shapes: a training batch is input_ids (batch_size, block_size) int64; labels are the same tensor (the model
shifts them); loss is the mean next-token cross-entropy.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import time
from typing import Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare_data  # noqa: E402  (sits next to this script)

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPACE_MARK = "\u2581"  # sentencepiece's "▁": spaces become this piece, so a literal U+2581 decodes to " "


# ------------------------------------------------------------------------------------------- corpus
def split_heldout(docs: Sequence[str], frac: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out) documents; held-out is a seeded random `frac` of the documents."""
    idx = list(range(len(docs)))
    random.Random(seed).shuffle(idx)
    held = set(idx[: max(1, round(len(docs) * frac))])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


# ----------------------------------------------------------------------------------------- tokenizer
def train_sentencepiece(docs: Sequence[str], vocab_size: int, seed: int) -> bytes:
    """A serialized sentencepiece unigram model trained on `docs` (ids 0-3: <unk> <s> </s> <pad>)."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,  # the rarest 0.05% of characters fall back to UTF-8 byte pieces
        byte_fallback=True,
        normalization_rule_name="identity",  # keep full-width ，。！？ and full-width digits as they are
        add_dummy_prefix=False,  # no invented leading space: decode(encode(s)) == s
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        max_sentence_length=16384,  # bytes; the longest review is ~2900 characters (~8.6 kB)
        num_threads=1,  # one thread keeps training order-independent of scheduling
        minloglevel=2,
    )
    return buf.getvalue()


def sentencepiece_to_fast(model_proto: bytes, max_length: int):
    """Wrap the sentencepiece pieces/scores in a `tokenizers` Unigram model and a PreTrainedTokenizerFast."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    if [p for p, _ in vocab[:4]] != [UNK, BOS, EOS, PAD]:
        raise RuntimeError(f"unexpected special pieces {vocab[:4]}")
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", SPACE_MARK)  # what sentencepiece's whitespace escaping does
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        clean_up_tokenization_spaces=False,  # never rewrite " ," etc. when decoding
        model_max_length=max_length,
    )


def check_round_trip(tokenizer, texts: Sequence[str]) -> None:
    """Raise unless decode(encode(t)) == t and no <unk> appears, for every text without a literal U+2581."""
    for text in texts:
        if SPACE_MARK in text:
            continue
        ids = tokenizer.encode(text, add_special_tokens=False)
        if tokenizer.unk_token_id in ids or tokenizer.decode(ids) != text:
            raise RuntimeError(f"tokenizer does not round-trip: {text[:80]!r}")


# ---------------------------------------------------------------------------------------------- data
def pack_blocks(tokenizer, docs: Sequence[str], block_size: int) -> torch.Tensor:
    """Each document as <s> ids </s>, concatenated, cut into (n_blocks, block_size); the tail is dropped."""
    # The backend tokenizer encodes in parallel and does not warn about documents longer than the model.
    ids = [e.ids for e in tokenizer.backend_tokenizer.encode_batch(list(docs), add_special_tokens=False)]
    stream = []
    for doc in ids:
        stream += [tokenizer.bos_token_id, *doc, tokenizer.eos_token_id]
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size)


# --------------------------------------------------------------------------------------------- model
def build_config(tokenizer, args):
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,  # grouped-query attention as in ChatGLM2/3 (2 KV groups)
        head_dim=args.hidden_size // args.heads,
        max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-5,  # GLM's default 1.56e-7 is tuned for bf16 6B models; 1e-5 is the usual small-model value
        tie_word_embeddings=True,  # the 8000x256 embedding is 40% of the weights; sharing it halves that
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def lr_at(step: int, progress: float, peak: float, warmup_steps: int, min_ratio: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from `peak` to `peak*min_ratio` as progress goes 0 -> 1."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return peak * (min_ratio + (1 - min_ratio) * cosine)


def make_optimizer(model, lr: float, weight_decay: float):
    # Decay matrices only; norms and biases (1-D) are left alone, as in nanoGPT/litgpt.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over all blocks (each block weighs the same: equal lengths)."""
    model.eval()
    losses = [model(input_ids=b, labels=b).loss.item() for b in blocks.split(batch_size)]
    model.train()
    return sum(losses) / len(losses)


def pretrain(model, train_blocks, heldout_blocks, args, log) -> dict:
    """The training loop; returns step count, tokens seen, final/last losses and the held-out log."""
    opt = make_optimizer(model, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    budget_s = args.minutes * 60
    step, tokens, recent, history = 0, 0, [], []
    order = torch.randperm(len(train_blocks), generator=gen)
    cursor, epoch = 0, 0
    start = time.time()
    model.train()
    while True:
        elapsed = time.time() - start
        progress = step / args.steps if args.steps else elapsed / budget_s
        if progress >= 1.0:
            break
        if cursor + args.batch_size > len(order):  # new epoch: reshuffle the blocks
            order, cursor, epoch = torch.randperm(len(train_blocks), generator=gen), 0, epoch + 1
        batch = train_blocks[order[cursor : cursor + args.batch_size]]
        cursor += args.batch_size
        lr = lr_at(step, progress, args.lr, args.warmup_steps, args.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + batch.numel()
        recent = (recent + [loss.item()])[-50:]
        if step % args.log_every == 0:
            log(f"step {step} epoch {epoch} progress {progress:.1%} loss {sum(recent)/len(recent):.3f} "
                f"lr {lr:.2e} {tokens/(time.time()-start):.0f} tok/s elapsed {time.time()-start:.0f}s")
        if step % args.eval_every == 0:
            held = evaluate(model, heldout_blocks, args.batch_size)
            history.append({"step": step, "heldout_loss": round(held, 4)})
            log(f"step {step} held-out loss {held:.3f} ppl {math.exp(held):.1f}")
    return {
        "steps": step,
        "epochs": round(step * args.batch_size / len(train_blocks), 3),
        "tokens_seen": tokens,
        "final_train_loss_mean_last_50_steps": round(sum(recent) / max(1, len(recent)), 4),
        "train_seconds": round(time.time() - start, 1),
        "heldout_history": history,
    }


@torch.no_grad()
def greedy_samples(model, tokenizer, prompts: Sequence[str], new_tokens: int = 40) -> dict[str, str]:
    model.eval()
    out = {}
    for prompt in prompts:
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False)]])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out[prompt] = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    return out


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="data/base_model")
    p.add_argument("--minutes", type=float, default=35.0,
                   help="wall-clock budget of the training loop (tokenizer, packing and evaluation add ~2 min)")
    p.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead of --minutes")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--heldout-frac", type=float, default=0.01)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)  # 8 x 256 = 2048 tokens: more updates in a short budget
    p.add_argument("--lr", type=float, default=2e-3)  # peak; tiny models train well at 1e-3..3e-3
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--intermediate-size", type=int, default=704)  # ~2.75 x hidden, a multiple of 64
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--max-positions", type=int, default=1024)
    # One thread: on the shared 2-core build machine, with other jobs running, 1 thread trained at ~1700-2000
    # tokens/s and 2 threads at ~750-900 (threads stall on each other when a core is taken). Raise on an idle machine.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=400)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import GlmForCausalLM

    wall_start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    def log(msg: str) -> None:
        print(f"[{time.time() - wall_start:7.1f}s] {msg}", flush=True)

    docs = list(prepare_data.pretraining_corpus(args.seed))
    train_docs, held_docs = split_heldout(docs, args.heldout_frac, args.seed)
    log(f"corpus: {len(docs)} documents, {sum(map(len, docs))} chars; held out {len(held_docs)} documents")

    tokenizer = sentencepiece_to_fast(train_sentencepiece(train_docs, args.vocab_size, args.seed), args.max_positions)
    check_round_trip(tokenizer, held_docs)
    log(f"tokenizer: {len(tokenizer)} pieces, round trip checked on the held-out documents")

    train_blocks = pack_blocks(tokenizer, train_docs, args.block_size)
    held_blocks = pack_blocks(tokenizer, held_docs, args.block_size)
    log(f"blocks: train {tuple(train_blocks.shape)}, held-out {tuple(held_blocks.shape)}")

    config = build_config(tokenizer, args)
    model = GlmForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters")

    result = pretrain(model, train_blocks, held_blocks, args, log)
    held = evaluate(model, held_blocks, args.batch_size)
    log(f"done: {result['steps']} steps, held-out loss {held:.4f}, ppl {math.exp(held):.2f}")

    model.generation_config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    samples = greedy_samples(model, tokenizer, ["中国", "这本书", "酒店的服务", "比喻", "新华社北京１月１日电\n"])
    held_chars, held_tokens = sum(map(len, held_docs)), held_blocks.numel()
    record = {
        "seed": args.seed,
        "args": vars(args),
        "config": config.to_diff_dict(),
        "parameters": n_params,
        "tokenizer": {
            "type": "sentencepiece unigram -> tokenizers Unigram (byte_fallback), tokenizer.json",
            "vocab_size": len(tokenizer),
            "special_tokens": {t: tokenizer.convert_tokens_to_ids(t) for t in (UNK, BOS, EOS, PAD)},
            "add_special_tokens_adds": "nothing",
        },
        "corpus": {
            "documents": len(docs),
            "chars": sum(map(len, docs)),
            "train_documents": len(train_docs),
            "train_chars": sum(map(len, train_docs)),
            "train_tokens_packed": train_blocks.numel(),
            "heldout_documents": len(held_docs),
            "heldout_chars": held_chars,
            "heldout_tokens_packed": held_tokens,
        },
        **result,
        "heldout_loss": round(held, 4),
        "heldout_perplexity": round(math.exp(held), 2),
        "greedy_samples": samples,
        "wall_seconds": round(time.time() - wall_start, 1),
        "torch": torch.__version__,
    }
    from transformers import __version__ as tf_version

    record["transformers"] = tf_version
    with open(os.path.join(args.out, "pretraining_record.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=2)
    log(f"saved {args.out} ({folder_mb(args.out):.1f} MB); samples: {samples}")
    return record


if __name__ == "__main__":
    main()

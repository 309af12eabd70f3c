"""What evaluate and chat share: load base (+ prefix) with the training prompt format, generate and score.

Shapes: prompts are lists of token ids of varying length; batches are left-padded to (B, L) with
attention_mask (B, L). ``generate_batch`` returns the decoded answers; ``label_logprobs`` returns (B, K):
the summed log-probability of each of K candidate answers after each prompt.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptuning_v2.data import Example, PromptTemplate, build_prompt_features, get_template
from ptuning_v2.positions import real_token_positions
from ptuning_v2.prefix_model import PrefixModel


@dataclass
class InferenceSession:
    model: torch.nn.Module          # a PrefixModel, or the bare base model
    tokenizer: object
    template: PromptTemplate
    source_prefix: str = ""
    max_source_length: int = 1024
    recorded: dict | None = None    # the checkpoint's prompt/data settings (columns, test file, lengths)

    @property
    def has_prefix(self) -> bool:
        return isinstance(self.model, PrefixModel)

    @property
    def base(self):
        return self.model.base if self.has_prefix else self.model

    @property
    def device(self) -> torch.device:
        return self.base.get_input_embeddings().weight.device

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, **kwargs):
        """Logits for a left-padded batch; real tokens numbered from 0 with or without the prefix.

        ``kwargs`` go to the base model's forward (e.g. ``logits_to_keep``).
        """
        if self.has_prefix:
            return self.model(ids, attention_mask=mask, **kwargs)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=real_token_positions(mask), **kwargs)

    def generate(self, ids: torch.Tensor, mask: torch.Tensor, **generate_kwargs) -> torch.Tensor:
        """(B, L + new): generate() of the prefix model or of the bare base, with the tokenizer's pad/eos ids."""
        tok = self.tokenizer
        kwargs = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **generate_kwargs)
        if self.has_prefix:
            return self.model.generate(ids, attention_mask=mask, **kwargs)
        return self.model.generate(input_ids=ids, attention_mask=mask, position_ids=real_token_positions(mask), **kwargs)

    def answer(self, generated_row: list[int]) -> str:
        """Decoded answer: the generated tokens up to the first eos."""
        tok = self.tokenizer
        return tok.decode(answer_tokens(generated_row, tok.eos_token_id, tok.pad_token_id), skip_special_tokens=True).strip()

    def prompt_ids(self, query: str, history=()) -> list[int]:
        example = Example(query, "", tuple(history))
        return build_prompt_features(example, self.tokenizer, self.template, self.max_source_length,
                                     self.source_prefix)["input_ids"]


def load_session(
    checkpoint: str | None = None,
    model_path: str | None = None,
    base_only: bool = False,
    quantization_bit="recorded",
    prompt_template: str | None = None,
    source_prefix: str | None = None,
    max_source_length: int | None = None,
) -> InferenceSession:
    """From a checkpoint (base path, dtype, quantization and prompt format recorded in it) or a bare model.

    ``base_only`` with a checkpoint loads its base and prompt format but not the prefix: the zero-shot baseline
    with exactly the prompts the prefix was trained on.
    """

    from ptuning_v2.checkpoint import load_prefix_model, read_checkpoint_config, recorded_base_spec
    from ptuning_v2.quantization import BaseModelSpec, load_base_model, load_tokenizer

    prompt = {}
    if checkpoint:
        config = read_checkpoint_config(checkpoint)
        prompt = config.get("prompt") or {}
        if base_only:
            model, spec = load_base_model(recorded_base_spec(config, checkpoint, model_path, quantization_bit))
            tokenizer = load_tokenizer(spec.model_name_or_path, trust_remote_code=spec.trust_remote_code)
        else:
            model, tokenizer, _ = load_prefix_model(checkpoint, model_path, quantization_bit=quantization_bit)
    elif model_path:
        bit = None if quantization_bit == "recorded" else quantization_bit
        model, spec = load_base_model(BaseModelSpec(model_path, quantization_bit=bit))
        tokenizer = load_tokenizer(model_path)
    else:
        raise ValueError("give a checkpoint, a base model path, or both")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = get_template(prompt_template) if prompt_template else (
        PromptTemplate.from_dict(prompt["template"]) if "template" in prompt else get_template("chatglm"))
    return InferenceSession(
        model=model.eval(),
        tokenizer=tokenizer,
        template=template,
        source_prefix=prompt.get("source_prefix", "") if source_prefix is None else source_prefix,
        max_source_length=max_source_length or prompt.get("max_source_length", 1024),
        recorded=prompt,
    )


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_batch(session: InferenceSession, prompts: list[list[int]], **generate_kwargs) -> list[str]:
    """Decoded answers for a batch of prompts (left-padded together)."""
    ids, mask = left_pad(prompts, session.tokenizer.pad_token_id, session.device)
    out = session.generate(ids, mask, **generate_kwargs)
    return [session.answer(row) for row in out[:, ids.shape[1]:].tolist()]


def answer_tokens(row: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Generated tokens up to (not including) the first eos, padding removed."""
    if eos_id in row:
        row = row[: row.index(eos_id)]
    return [t for t in row if t != pad_id]


def continuation_contexts(candidates: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The fewest token runs to append to a prompt so that one forward scores every candidate.

    Candidate c needs the logits after prompt + c[:-1] (c[j] is predicted at the position of c[j-1], c[0] at
    the prompt's last token). A context serves every candidate whose c[:-1] it starts with, so only the
    contexts that no other context extends are kept. Returns (contexts, owner): owner[k] is the index of the
    context that scores candidate k. All one-token candidates (or 积极 / 消极 with 消极 two tokens) need one
    context: [] or [消]. Candidates that share a first token share the prompt's last-position row.
    """
    needed = sorted({tuple(c[:-1]) for c in candidates}, key=len, reverse=True) or [()]
    contexts: list[tuple[int, ...]] = []
    for ctx in needed:  # longest first: a context that a kept one extends is dropped
        if not any(kept[: len(ctx)] == ctx for kept in contexts):
            contexts.append(ctx)
    owner = [next(i for i, ctx in enumerate(contexts) if ctx[: max(len(c) - 1, 0)] == tuple(c[:-1]))
             for c in candidates]
    return [list(ctx) for ctx in contexts], owner


def _keeps_logits(model: torch.nn.Module) -> bool:
    """Whether the base model's forward can compute logits for the last positions only (``logits_to_keep``)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def label_logprobs(session: InferenceSession, prompts: list[list[int]], candidates: list[list[int]]) -> torch.Tensor:
    """(B, K) float32 on the CPU: log p(candidate k | prompt b), summed over the candidate's tokens.

    One model forward per call, with no copy of a prompt per one-token candidate:
      * contexts = ``continuation_contexts(candidates)``: C token runs (C = 1 when every candidate has one
        token, context []; also C = 1 for 积极 (1 token) + 消极 (2 tokens), context [消]).
      * rows = prompt b + context i, for b < B, i < C, left-padded together: ids, mask (B*C, W), run once
        through ``session.forward`` (the prefix model or the bare base, real tokens numbered from 0).
      * T = 1 + longest context. Left padding puts every row's prompt end and context in its last T positions,
        so only the last T positions' logits are computed (``logits_to_keep=T`` where the base supports it):
        (B*C, T, V).
      * from those, only the positions that predict a candidate token are gathered, (N, V) with
        N = B * sum_i (len(context_i) + 1), and only they get a log_softmax; candidate tokens are gathered from
        it and summed into (B, K). With one-token candidates this is the last position only: (B, V).
    Never a (B, L, V) log_softmax. The prompts are not re-run for the later tokens of a candidate; they are run
    once per context (once in the cases above). The cache is not reused across forwards: the prefix model's
    cache is read-only, so a second forward would run the prompt again anyway.

    Works under ``torch.no_grad`` and leaves the model's train/eval mode alone (callers put it in eval mode;
    a prefix encoder with dropout in train mode would make the scores random).
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("label_logprobs needs a non-empty prompt: the first candidate token is predicted by its last token")
    B, K = len(prompts), len(candidates)
    if B == 0 or K == 0:
        return torch.zeros(B, K)
    contexts, owner = continuation_contexts(candidates)
    C = len(contexts)
    ids, mask = left_pad([p + ctx for p in prompts for ctx in contexts], session.tokenizer.pad_token_id, session.device)
    T = 1 + max(len(ctx) for ctx in contexts)
    kwargs = {"logits_to_keep": T} if _keeps_logits(session.base) else {}
    logits = session.forward(ids, mask, **kwargs).logits[:, -T:]                      # (B*C, T, V)

    # Relative to the last T positions, context i's prompt end is at T-1-len(ctx_i) and c[j] is predicted at
    # T-1-len(ctx_i)+j. Keep exactly those positions of each row: (N, V).
    starts = torch.tensor([T - 1 - len(contexts[r % C]) for r in range(B * C)])
    keep = torch.arange(T).unsqueeze(0) >= starts.unsqueeze(1)                         # (B*C, T)
    flat = torch.full((B * C, T), -1, dtype=torch.long)
    flat[keep] = torch.arange(int(keep.sum()))
    logprobs = F.log_softmax(logits[keep.to(logits.device)].float(), dim=-1)           # (N, V)

    rows, tokens, target = [], [], []
    for b in range(B):
        for k, cand in enumerate(candidates):
            r = b * C + owner[k]
            for j, token in enumerate(cand):
                rows.append(int(flat[r, starts[r] + j]))
                tokens.append(token)
                target.append(b * K + k)
    picked = logprobs[torch.tensor(rows, dtype=torch.long, device=logprobs.device),
                      torch.tensor(tokens, dtype=torch.long, device=logprobs.device)].cpu()
    scores = torch.zeros(B * K).index_add_(0, torch.tensor(target, dtype=torch.long), picked)
    return scores.view(B, K)


@torch.no_grad()
def label_logprobs_naive(session: InferenceSession, prompts: list[list[int]], candidates: list[list[int]]) -> torch.Tensor:
    """The same (B, K) scores the plain way: every prompt + candidate as its own row (B*K rows), a log_softmax over
    every position of (B*K, L, V). Obviously right and slow; ``label_logprobs`` is tested and benchmarked against it."""
    sequences = [p + c for p in prompts for c in candidates]
    ids, mask = left_pad(sequences, session.tokenizer.pad_token_id, session.device)
    logprobs = F.log_softmax(session.forward(ids, mask).logits.float(), dim=-1)
    scores = torch.empty(len(sequences))
    width = ids.shape[1]
    for row in range(len(sequences)):
        cand = candidates[row % len(candidates)]
        # The token at position t is predicted by the logits at t - 1; the candidate fills the last len(cand) slots.
        positions = torch.arange(width - len(cand), width)
        scores[row] = logprobs[row, positions - 1, ids[row, positions]].sum()
    return scores.view(len(prompts), len(candidates))

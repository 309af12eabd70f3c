"""Start a prefix from the base model's own keys/values of a real text (``--prefix_init_text``).

A random prefix is far outside what the frozen model has ever attended to and wrecks its predictions before it
learns anything (first loss 7.7 on the shipped base). Prefix-tuning (Li & Liang, 2021) found that initializing
with the activations of real words trains faster and more stably. Here the prefix *is* such a text at the start:

  * ``text_prefix_kv(base, ids)``: ids (T,) -> flat (T, N*2*H*D), every layer's key and value of each text token,
    in the PrefixEncoder's layout (layer-major, key then value, head then channel). The text is run at positions
    -T .. -1, so its (rotated) keys sit right before real tokens, which the prefix model numbers from 0: with this
    prefix and before any training, the model's logits on a continuation equal the base's logits on
    text + continuation (rotary attention only sees position differences).
  * ``initialize_prefix_from_text(model, tokenizer, text)``: tokenizes the text, repeats it (or cuts it) to
    pre_seq_len tokens, and sets the encoder so that it emits exactly those keys/values:
      - without projection the embedding table (P, N*2*H*D) is the flat key/values;
      - with projection (Embedding -> Linear -> Tanh -> Linear) the embedding and first layer keep their random
        start and the output layer is solved for: with H = tanh(E W1^T + b1) (P, hidden), choose b2 = the mean
        target row and W2^T = pinv(H) (X - b2), the minimum-norm exact solution when hidden >= P (H has full row
        rank); with hidden < P it is the least-squares best, and the remaining error is logged.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def prefix_token_ids(tokenizer, text: str, pre_seq_len: int) -> list[int]:
    """The text's ids (no special tokens), repeated until there are pre_seq_len of them, then cut to that."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"--prefix_init_text {text!r} has no tokens")
    if len(ids) > pre_seq_len:
        logger.warning("--prefix_init_text has %d tokens; only the first %d (pre_seq_len) are used", len(ids),
                       pre_seq_len)
    repeats = -(-pre_seq_len // len(ids))  # ceil
    return (ids * repeats)[:pre_seq_len]


@torch.no_grad()
def text_prefix_kv(base, ids: list[int]) -> torch.Tensor:
    """(T, N*2*H*D) fp32: the base's per-layer key/value of each token of ``ids``, run at positions -T .. -1."""
    device = base.get_input_embeddings().weight.device
    input_ids = torch.tensor([ids], device=device)
    positions = torch.arange(-len(ids), 0, device=device).unsqueeze(0)
    was_training = base.training
    base.eval()
    out = base(input_ids=input_ids, position_ids=positions, use_cache=True)
    base.train(was_training)
    columns = []
    for layer in out.past_key_values.layers:
        for tensor in (layer.keys, layer.values):          # each (1, H, T, D)
            columns.append(tensor[0].permute(1, 0, 2).reshape(len(ids), -1))  # (T, H*D), head-major
    return torch.cat(columns, dim=-1).float()


@torch.no_grad()
def set_encoder_output(encoder, flat: torch.Tensor) -> float:
    """Make ``encoder.flat_prefix()`` equal ``flat`` (P, N*2*H*D). Returns the max abs error left (0 if exact)."""
    flat = flat.to(encoder.embedding.weight.device, torch.float32)
    if encoder.trans is None:
        encoder.embedding.weight.copy_(flat)
        return 0.0
    first, _, last = encoder.trans
    hidden = torch.tanh(first(encoder.embedding(encoder.prefix_ids)))         # (P, hidden)
    bias = flat.mean(dim=0)
    # float64 for the pseudo-inverse: the solution is exact to fp32 rounding when hidden >= P.
    weight_t = torch.linalg.pinv(hidden.double()) @ (flat - bias).double()   # (hidden, N*2*H*D)
    last.weight.copy_(weight_t.T.float())
    last.bias.copy_(bias)
    error = (encoder.flat_prefix() - flat).abs().max().item()
    if error > 1e-3:
        logger.warning("the projection MLP reproduces the text's key/values only up to %.3g (prefix_hidden_size %d "
                       "< pre_seq_len %d); a wider MLP makes the start exact", error, hidden.shape[1], flat.shape[0])
    return error


def initialize_prefix_from_text(model, tokenizer, text: str) -> list[int]:
    """Set a PrefixModel's encoder to emit the base's keys/values of ``text``; returns the token ids used."""
    ids = prefix_token_ids(tokenizer, text, model.encoder_config.pre_seq_len)
    set_encoder_output(model.prefix_encoder, text_prefix_kv(model.base, ids))
    return ids

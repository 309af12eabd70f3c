#!/usr/bin/env python
"""Peak memory of one P-tuning v2 training step on a ChatGLM3-6B-shaped GLM, measured and explained.

    python bench/memory.py --mode int4              # full size: 28 layers, hidden 4096, FFN 13696, ...
    python bench/memory.py --mode int8 --layers 4   # fewer layers; prints an analytic extrapolation to 28
    python bench/memory.py --mode int4 --layers 2 --hidden 256 --ffn 512 --heads 4 --head-dim 64 --vocab 4096

What runs: a transformers ``GlmForCausalLM`` with the ChatGLM3-6B shape (28 layers, hidden 4096, FFN 13696,
32 query heads of head_dim 128, 2 KV groups, vocab 65024, bias on q/k/v) and random weights, wrapped in
``PrefixModel`` with ``encoder_config_for(config, pre_seq_len=128)`` (no projection), gradient checkpointing via
``PrefixModel.activation_checkpointing_enable()``, and ONE step: forward with labels, backward, AdamW step on
the prefix; batch 1, 64 source + 64 target tokens, labels -100 on the source.

Building never holds a full 16- or 32-bit copy of the model: the model is created on the meta device, then each
linear is generated ``--chunk-elems`` values at a time (rows of the weight), quantized and stored straight into
a bitsandbytes ``Linear4bit`` (nf4 blocks of 64, fp32 absmax) or ``Linear8bitLt`` (int8 rows, fp32 scale).
Quantizing rows separately gives the same bytes as quantizing the whole weight (blocks never cross a row when
in_features % blocksize == 0; int8 scales are per row). Word embeddings, the output layer (lm_head) and the
RMSNorms stay unquantized in the 16-bit dtype, as ChatGLM's own int4/int8 ``quantize()`` leaves them and as
transformers' bitsandbytes loading does. ``--mode fp16`` keeps every linear in the 16-bit dtype: fp16 on CUDA,
bf16 on the CPU (fp16 matmuls are slow or missing there), see ``--dtype``.

What is measured: on CUDA ``torch.cuda.max_memory_allocated()``; on the CPU the process peak RSS (VmHWM,
reset through /proc/self/clear_refs) minus the idle RSS, read after the imports and a tiny warm-up step and
before the model is built.
CPU RSS is not CUDA allocated memory: it also counts allocator slack and library scratch space.

The analytic breakdown printed beside the measurement is ``analytic_breakdown``; bench/README.md has the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = ("int4", "int8", "fp16")
GB, GIB = 1e9, 2**30
CHATGLM_PUBLISHED_INT4_GB = 6.7  # ChatGLM-6B ptuning/README.md, see bench/README.md
GOAL_INT4_GB = 5.0


@dataclass(frozen=True)
class Shape:
    """A GLM decoder shape; the defaults are ChatGLM3-6B's."""

    layers: int = 28
    hidden: int = 4096
    ffn: int = 13696
    heads: int = 32
    kv_heads: int = 2
    head_dim: int = 128
    vocab: int = 65024
    qkv_bias: bool = True

    def layer_linears(self) -> list[tuple[str, int, int, bool]]:
        """(name, out_features, in_features, bias) of one decoder layer's linears."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return [
            ("self_attn.q_proj", q, self.hidden, self.qkv_bias),
            ("self_attn.k_proj", kv, self.hidden, self.qkv_bias),
            ("self_attn.v_proj", kv, self.hidden, self.qkv_bias),
            ("self_attn.o_proj", self.hidden, q, False),
            ("mlp.gate_up_proj", 2 * self.ffn, self.hidden, False),
            ("mlp.down_proj", self.hidden, self.ffn, False),
        ]

    def parameter_count(self) -> int:
        per_layer = sum(o * i + (o if b else 0) for _, o, i, b in self.layer_linears()) + 2 * self.hidden
        return self.layers * per_layer + 2 * self.vocab * self.hidden + self.hidden


# -- the analytic model ------------------------------------------------------------------------------------------
def quantized_linear_bytes(out_f: int, in_f: int, mode: str, elem: int = 2, blocksize: int = 64,
                           double_quant: bool = False) -> int:
    """Bytes of one linear's weight in ``mode``, quantization constants included (bias excluded)."""
    n = out_f * in_f
    if mode == "int4":
        blocks = -(-n // blocksize)
        if double_quant:  # uint8 absmax, fp32 absmax of blocks of 256 of them, a 256-entry fp32 code, an offset
            return -(-n // 2) + blocks + 4 * -(-blocks // 256) + 4 * 256 + 4
        return -(-n // 2) + 4 * blocks
    if mode == "int8":
        return n + 4 * out_f
    if mode == "fp16":
        return elem * n
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def analytic_breakdown(shape: Shape, mode: str, pre_seq_len: int = 128, batch: int = 1, seq_len: int = 128,
                       elem: int = 2, blocksize: int = 64, double_quant: bool = False,
                       device: str = "cuda") -> dict[str, int]:
    """Bytes per component of one P-tuning v2 step.

    Formulas (bytes; e = bytes of the 16-bit dtype, B batch, S = source + target tokens, P pre_seq_len,
    N layers, h hidden, f FFN, a query heads, g KV heads, d head_dim, V vocab, n = out*in of one linear):
      weights       quantized linears, per linear: int4 n/2 + 4*n/64 (fp32 absmax per block of 64; with double
                    quant n/64 + 4*n/16384 + 1 KiB code); int8 n + 4*out (fp32 row scale); 16-bit e*n; plus q/k/v
                    biases in e; and unquantized embeddings e*V*h, lm_head e*V*h, norms e*(2N+1)*h.
      prefix        P * (N*2*g*d) fp32 values, four times (parameter, gradient, AdamW exp_avg and exp_avg_sq), plus
                    the prefix cast to the compute dtype and its gradient: 2 * e*B*P*N*2*g*d.
      activations   with checkpointing = boundaries + one layer's recomputed working set + logits/loss:
                    boundaries  e*B*S*h*(N+1)                (each layer's input is kept, plus the final hidden)
                    one layer   2 * [ 2*(8+e)*B*S*h          (two RMSNorms: fp32 input, fp32 normalized, output)
                                    + e*B*S*(3*a*d + 4*g*d)  (q, rotated q, attention output; k, v, rotated k)
                                    + 2*e*B*(P+S)*a*d        (keys/values with the prefix, repeated to a heads)
                                    + (4+e)*B*a*S*(P+S)      (attention scores, upper bound: eager/math kernel)
                                    + 4*e*B*S*f ]            (gate_up output 2f, silu(gate), product)
                                    the factor 2: the gradients of the layer's tensors live next to them
                    logits/loss (e + 3*4)*B*S*V              (16-bit logits, fp32 copy, log-softmax, its gradient)
                    int8 only   N*e*B*S*(2h + a*d + f)       (bitsandbytes' int8 matmuls keep their input as ctx.A,
                                                              outside what checkpointing frees: every layer's)
      dequant       quantized modes: bitsandbytes' training matmul dequantizes one whole weight to the compute
                    dtype in forward, in the recomputation and in backward: e * max n (the gate_up projection);
                    int8 on the CPU (MatMul8bitFp) adds 8 * max n: CB.to(bf16).mul_(fp32 scale) goes through fp32.
    """
    s = shape
    B, S, P, e = batch, seq_len, pre_seq_len, elem
    linears = s.layer_linears()
    quantized = s.layers * sum(quantized_linear_bytes(o, i, mode, e, blocksize, double_quant) for _, o, i, _ in linears)
    biases = s.layers * sum(e * o for _, o, _, b in linears if b)
    embeddings = e * s.vocab * s.hidden
    lm_head = e * s.vocab * s.hidden
    norms = e * (2 * s.layers + 1) * s.hidden
    kv_width = s.layers * 2 * s.kv_heads * s.head_dim
    prefix_state = 4 * 4 * P * kv_width
    prefix_cast = 2 * e * B * P * kv_width
    boundaries = e * B * S * s.hidden * (s.layers + 1)
    a, g, d, h, f = s.heads, s.kv_heads, s.head_dim, s.hidden, s.ffn
    one_layer = 2 * (
        2 * (8 + e) * B * S * h
        + e * B * S * (3 * a * d + 4 * g * d)
        + 2 * e * B * (P + S) * a * d
        + (4 + e) * B * a * S * (P + S)
        + 4 * e * B * S * f
    )
    logits = (e + 3 * 4) * B * S * s.vocab
    # bitsandbytes' int8 autograd functions keep each linear's input as a ctx attribute (ctx.A), which activation
    # checkpointing cannot drop: q/k/v's input, o_proj's, gate_up's and down_proj's, in every layer.
    int8_inputs = s.layers * e * B * S * (2 * h + a * d + f) if mode == "int8" else 0
    n_max = max(o * i for _, o, i, _ in linears)
    if mode == "int4":
        dequant = e * n_max
    elif mode == "int8":
        # CPU training path (MatMul8bitFp): CB.to(dtype).mul_(fp32 row scale) also makes two fp32 temporaries.
        dequant = (e + (8 if device == "cpu" else 0)) * n_max
    else:
        dequant = 0
    out = {
        "weights_linears": quantized + biases,
        "weights_embeddings": embeddings,
        "weights_lm_head": lm_head,
        "weights_norms": norms,
        "prefix_params_grads_adamw": prefix_state,
        "prefix_kv_cast": prefix_cast,
        "act_boundaries": boundaries,
        "act_one_layer": one_layer,
        "act_logits_loss": logits,
        "act_int8_saved_inputs": int8_inputs,
        "dequant_transient": dequant,
    }
    out["weights"] = quantized + biases + embeddings + lm_head + norms
    out["prefix"] = prefix_state + prefix_cast
    out["activations"] = boundaries + one_layer + logits + int8_inputs
    out["total"] = out["weights"] + out["prefix"] + out["activations"] + dequant
    return out


# -- memory readings ---------------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class MemoryMeter:
    """Peak memory above a baseline: CUDA allocated bytes, or the process RSS on the CPU."""

    def __init__(self, device):
        import torch

        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"
        self.reset_peak()
        self.baseline = self.current()

    def _reset_rss_peak(self) -> bool:
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def current(self) -> int:
        if self.cuda:
            return self.torch.cuda.memory_allocated(self.device)
        rss = _proc_status_kib("VmRSS")
        return 1024 * rss if rss is not None else self.peak_absolute()

    def peak_absolute(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
            return self.torch.cuda.max_memory_allocated(self.device)
        hwm = _proc_status_kib("VmHWM")
        return 1024 * hwm if hwm is not None else 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def reset_peak(self) -> bool:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)
            return True
        return self._reset_rss_peak()

    def peak(self) -> int:
        """Peak since the last reset (or since process start), above the baseline."""
        return self.peak_absolute() - self.baseline


# -- building the model without a full-precision copy -------------------------------------------------------------
def glm_config(shape: Shape):
    from transformers import GlmConfig

    return GlmConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, attention_bias=shape.qkv_bias, max_position_embeddings=8192,
        rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        use_cache=False,
    )


def _chunk_rows(out_f: int, in_f: int, chunk_elems: int, blocksize: int) -> int:
    rows = max(1, chunk_elems // in_f)
    if (rows * in_f) % blocksize:  # a 4-bit block must not straddle two chunks
        return out_f
    return min(rows, out_f)


def random_rows(out_f, in_f, rows, dtype, device, generator, std=0.02):
    """Yield the rows of a random (out_f, in_f) weight, ``rows`` at a time."""
    import torch

    for start in range(0, out_f, rows):
        chunk = torch.empty(min(rows, out_f - start), in_f, dtype=dtype, device=device)
        yield chunk.normal_(0.0, std, generator=generator)


def quantize_4bit_by_rows(out_f, in_f, dtype, device, generator, chunk_elems, quant_type="nf4", blocksize=64,
                          double_quant=False, chunks=None):
    """A random weight quantized like ``bnb.functional.quantize_4bit``, built a few rows at a time.

    The packed weight and the absmax are allocated once and filled chunk by chunk. ``chunks`` (an iterable of
    row blocks, rows a multiple of what ``_chunk_rows`` allows) replaces the random rows, e.g. in a test.
    """
    import torch
    import bitsandbytes.functional as F

    n = out_f * in_f
    packed = torch.empty(-(-n // 2), 1, dtype=torch.uint8, device=device)
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=device)
    rows = _chunk_rows(out_f, in_f, chunk_elems, blocksize)
    done = 0
    for chunk in chunks if chunks is not None else random_rows(out_f, in_f, rows, dtype, device, generator):
        p, qs = F.quantize_4bit(chunk, blocksize=blocksize, compress_statistics=False, quant_type=quant_type)
        start = done * in_f
        packed[start // 2: start // 2 + p.shape[0]] = p
        absmax[start // blocksize: start // blocksize + qs.absmax.numel()] = qs.absmax
        done += chunk.shape[0]
    assert done == out_f, (done, out_f)
    code = F.get_4bit_type(quant_type, device=device)
    common = dict(shape=torch.Size((out_f, in_f)), dtype=dtype, blocksize=blocksize, code=code, quant_type=quant_type)
    if double_quant:
        offset = absmax.mean()
        qabsmax, state2 = F.quantize_blockwise(absmax - offset, blocksize=256)
        return packed, F.QuantState(absmax=qabsmax, offset=offset, state2=state2, **common)
    return packed, F.QuantState(absmax=absmax, **common)


def quantize_int8_by_rows(out_f, in_f, dtype, device, generator, chunk_elems):
    """A random weight quantized like ``Int8Params`` (fp16 rows -> int8, fp32 row scales), a few rows at a time."""
    import torch
    import bitsandbytes.functional as F

    cb = torch.empty(out_f, in_f, dtype=torch.int8, device=device)
    scb = torch.empty(out_f, dtype=torch.float32, device=device)
    rows = _chunk_rows(out_f, in_f, chunk_elems, 1)
    for start, chunk in zip(range(0, out_f, rows), random_rows(out_f, in_f, rows, dtype, device, generator)):
        c, s, _ = F.int8_vectorwise_quant(chunk.to(torch.float16))
        cb[start: start + c.shape[0]] = c
        scb[start: start + c.shape[0]] = s
    return cb, scb


def random_weight(out_f, in_f, dtype, device, generator):
    """A random 16-bit weight, generated in place (``normal_`` on the final tensor: no temporary copy)."""
    import torch

    return torch.empty(out_f, in_f, dtype=dtype, device=device).normal_(0.0, 0.02, generator=generator)


def release_free_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS after building counts what the model holds.

    Quantizing chunk by chunk frees many mid-sized temporaries that glibc keeps in its heap; without this the
    RSS after building carries that slack (a few hundred MB for int8). Affects the CPU reading only.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _frozen(tensor):
    import torch

    return torch.nn.Parameter(tensor, requires_grad=False)


def build_model(shape: Shape, mode: str, device, dtype, quant_type="nf4", double_quant=False, blocksize=64,
                int8_threshold=6.0, chunk_elems=1 << 22, seed=0):
    """A GlmForCausalLM with random weights, materialized one weight (and one chunk of rows) at a time."""
    import torch
    import torch.nn as nn
    import bitsandbytes as bnb
    from transformers import GlmForCausalLM
    from transformers.models.glm.modeling_glm import GlmRotaryEmbedding

    config = glm_config(shape)
    with torch.device("meta"):
        model = GlmForCausalLM(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.model.embed_tokens.weight = _frozen(random_weight(shape.vocab, shape.hidden, dtype, device, gen))
    model.lm_head.weight = _frozen(random_weight(shape.vocab, shape.hidden, dtype, device, gen))
    model.model.norm.weight = _frozen(torch.ones(shape.hidden, dtype=dtype, device=device))
    model.model.rotary_emb = GlmRotaryEmbedding(config).to(device)
    for layer in model.model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight = _frozen(torch.ones(shape.hidden, dtype=dtype, device=device))
        for name, out_f, in_f, has_bias in shape.layer_linears():
            parent_name, attr = name.split(".")
            parent = getattr(layer, parent_name)
            if mode == "int4":
                new = bnb.nn.Linear4bit(in_f, out_f, bias=has_bias, compute_dtype=dtype, quant_type=quant_type,
                                        compress_statistics=double_quant, device="meta")
                packed, state = quantize_4bit_by_rows(out_f, in_f, dtype, device, gen, chunk_elems, quant_type,
                                                      blocksize, double_quant)
                new.weight = bnb.nn.Params4bit(packed, requires_grad=False, quant_state=state, blocksize=blocksize,
                                               compress_statistics=double_quant, quant_type=quant_type, module=new,
                                               bnb_quantized=True)
                new.quant_state = state
            elif mode == "int8":
                new = bnb.nn.Linear8bitLt(in_f, out_f, bias=has_bias, has_fp16_weights=False,
                                          threshold=int8_threshold, device="meta")
                cb, scb = quantize_int8_by_rows(out_f, in_f, dtype, device, gen, chunk_elems)
                new.weight = bnb.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
            elif mode == "fp16":
                new = nn.Linear(in_f, out_f, bias=has_bias, device="meta", dtype=dtype)
                new.weight = _frozen(random_weight(out_f, in_f, dtype, device, gen))
            else:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            if has_bias:
                new.bias = _frozen(torch.zeros(out_f, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen))
            setattr(parent, attr, new)
        if device.type == "cpu":
            release_free_heap()
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"tensors left on the meta device: {left[:5]}")
    return model


def model_bytes(model) -> int:
    """Bytes the model's tensors occupy (parameters, buffers, bitsandbytes quantization state), each storage once."""
    import torch

    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and not t.is_meta:
            key = (t.untyped_storage().data_ptr(), t.device)
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()

    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
        qs = getattr(t, "quant_state", None)
        if qs is not None:
            for x in (qs.absmax, qs.code, qs.offset):
                add(x)
            if qs.state2 is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
        add(getattr(t, "SCB", None))
    for m in model.modules():
        state = getattr(m, "state", None)
        if state is not None and hasattr(state, "SCB"):
            add(state.SCB)
    return total


# -- the step -----------------------------------------------------------------------------------------------------
def resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def build_prefix_model(shape: Shape, args, device, dtype):
    """The frozen random base (see ``build_model``) wrapped in a PrefixModel, gradient checkpointing on."""
    import torch

    from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
    from ptuning_v2.quantization import disable_cpu_repacking

    base = build_model(shape, args.mode, device, dtype, args.quant_type, args.double_quant, args.blocksize,
                       args.int8_threshold, args.chunk_elems, args.seed)
    base.train()  # checkpointing only acts in training mode; also keeps 4-bit weights in their training layout
    disable_cpu_repacking(base)
    torch.manual_seed(args.seed)
    model = PrefixModel(base, encoder_config_for(base.config, pre_seq_len=args.pre_seq_len))
    model.activation_checkpointing_enable()
    return model


def train_step(model, shape: Shape, args, device) -> dict:
    """One P-tuning v2 step: forward with labels (-100 on the source), backward, AdamW on the prefix."""
    import torch

    seq_len = args.source_len + args.target_len
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    input_ids = torch.randint(3, shape.vocab, (args.batch, seq_len), generator=gen).to(device)
    labels = input_ids.clone()
    labels[:, : args.source_len] = -100
    attention_mask = torch.ones_like(input_ids)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    weight = model.prefix_encoder.embedding.weight
    sample = weight.detach()[:, ::97].clone()  # a strided sample, not a full copy of the prefix

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    sync()
    forward_s = time.perf_counter() - t0
    loss.backward()
    optimizer.step()
    sync()
    return {
        "forward_s": round(forward_s, 3),
        "step_s": round(time.perf_counter() - t0, 3),
        "loss": loss.item(),
        "prefix_grad_norm": weight.grad.float().norm().item(),
        "prefix_changed": not torch.equal(sample, weight.detach()[:, ::97]),
        "trainable_parameters": sum(p.numel() for p in trainable),
    }


WARMUP_SHAPE = Shape(layers=1, hidden=128, ffn=256, heads=2, kv_heads=1, head_dim=64, vocab=512)


def run(args) -> dict:
    import gc

    import torch

    # Everything the build and the step load lazily is imported (and a tiny model run once) before the idle
    # baseline is read, so the baseline holds the fixed cost of the libraries and the measurement the model's.
    import bitsandbytes
    import transformers
    import transformers.models.glm.modeling_glm  # noqa: F401
    import ptuning_v2.prefix_model  # noqa: F401

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, device)
    shape = Shape(layers=args.layers, hidden=args.hidden, ffn=args.ffn, heads=args.heads, kv_heads=args.kv_heads,
                  head_dim=args.head_dim, vocab=args.vocab)
    seq_len = args.source_len + args.target_len
    if not args.no_warmup:
        warm = build_prefix_model(WARMUP_SHAPE, args, device, dtype)
        train_step(warm, WARMUP_SHAPE, args, device)
        del warm
        gc.collect()
    if device.type == "cpu":
        release_free_heap()
    meter = MemoryMeter(device)

    t0 = time.perf_counter()
    model = build_prefix_model(shape, args, device, dtype)
    build_s = time.perf_counter() - t0
    counted_weights = model_bytes(model.base)
    after_build = meter.current() - meter.baseline
    build_peak = meter.peak()
    separate = meter.reset_peak()

    step = train_step(model, shape, args, device)
    step_peak = meter.peak()
    peak = max(step_peak, build_peak) if separate else step_peak

    elem = torch.finfo(dtype).bits // 8
    analytic = analytic_breakdown(shape, args.mode, args.pre_seq_len, args.batch, seq_len, elem, args.blocksize,
                                  args.double_quant, device.type)
    result = {
        "mode": args.mode,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_minus_idle_rss",
        "dtype": str(dtype).replace("torch.", ""),
        "quant": {"int4": f"{args.quant_type}, blocks of {args.blocksize}, "
                          f"{'double-quant absmax' if args.double_quant else 'fp32 absmax'}",
                  "int8": f"LLM.int8 rows, fp32 scales, threshold {args.int8_threshold}",
                  "fp16": "none"}[args.mode],
        "shape": asdict(shape),
        "pre_seq_len": args.pre_seq_len, "batch": args.batch, "source_len": args.source_len,
        "target_len": args.target_len,
        "parameters": shape.parameter_count(),
        "baseline_bytes": meter.baseline,
        "peak_bytes": peak,
        "build_peak_bytes": build_peak if separate else None,
        "step_peak_bytes": step_peak if separate else None,
        "after_build_bytes": after_build,
        "counted_weight_bytes": counted_weights,
        "analytic": analytic,
        "build_s": round(build_s, 2),
        **step,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__},
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    full = replace(shape, layers=Shape.layers)
    if shape != full and full == Shape():  # only the layer count was scaled down: extrapolate to 28 layers
        full_total = analytic_breakdown(full, args.mode, args.pre_seq_len, args.batch, seq_len, elem, args.blocksize,
                                        args.double_quant, device.type)["total"]
        result["extrapolated_28_layer_peak_bytes"] = peak + full_total - analytic["total"]
    if device.type == "cuda":
        result["cuda_max_memory_reserved"] = torch.cuda.max_memory_reserved(device)
    return result


# -- output -------------------------------------------------------------------------------------------------------
TABLE_HEADER = (
    "| mode | linears + other weights | device | layers | peak measured | analytic total | weights | prefix + AdamW | "
    "activations | dequant | step (s) | build (s) | loss |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(r: dict) -> str:
    a = r["analytic"]
    g = lambda b: f"{b / GB:.2f} GB"  # noqa: E731
    kind = "CUDA allocated" if r["device"] == "cuda" else "CPU RSS"
    int4 = ("nf4" if "nf4" in r["quant"] else "fp4") + (" double-quant" if "double" in r["quant"] else "")
    weights = {"int4": f"{int4} + {r['dtype']}", "int8": f"int8 + {r['dtype']}", "fp16": r["dtype"]}[r["mode"]]
    peak = f"{r['peak_bytes'] / GB:.2f} GB ({r['peak_bytes'] / GIB:.2f} GiB) {kind}"
    if "extrapolated_28_layer_peak_bytes" in r:
        peak += f"; 28 layers extrapolated (analytic): {r['extrapolated_28_layer_peak_bytes'] / GB:.2f} GB"
    return (f"| {r['mode']} | {weights} | {r['device']} | {r['shape']['layers']} | {peak} | {g(a['total'])} | "
            f"{g(a['weights'])} | {a['prefix'] / 1e6:.1f} MB | {a['activations'] / 1e6:.0f} MB | "
            f"{a['dequant_transient'] / 1e6:.0f} MB | {r['step_s']:.1f} | {r['build_s']:.0f} | {r['loss']:.3f} |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="int4", help="how the frozen linears are stored")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="compute dtype and dtype of the unquantized weights; auto: fp16 on CUDA, bf16 on the CPU")
    s = Shape()
    p.add_argument("--layers", type=int, default=s.layers)
    p.add_argument("--hidden", type=int, default=s.hidden)
    p.add_argument("--ffn", type=int, default=s.ffn, help="intermediate (FFN) size")
    p.add_argument("--heads", type=int, default=s.heads)
    p.add_argument("--kv-heads", type=int, default=s.kv_heads)
    p.add_argument("--head-dim", type=int, default=s.head_dim)
    p.add_argument("--vocab", type=int, default=s.vocab)
    p.add_argument("--pre-seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--source-len", type=int, default=64)
    p.add_argument("--target-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--quant-type", choices=("nf4", "fp4"), default="nf4")
    p.add_argument("--double-quant", action="store_true", help="int4: quantize the absmax constants too")
    p.add_argument("--blocksize", type=int, default=64, help="int4 block size")
    p.add_argument("--int8-threshold", type=float, default=6.0,
                   help="LLM.int8 outlier threshold (transformers' default)")
    p.add_argument("--chunk-elems", type=int, default=1 << 22, help="weight values generated/quantized at a time")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the tiny warm-up run before the idle baseline is read")
    p.add_argument("--json-out", type=Path, default=None, help="append the result as one JSON line to this file")
    p.add_argument("--table", type=Path, default=None, help="only print the table of the results in this JSON file")
    return p.parse_args(argv)


def print_table(path: Path) -> None:
    """The markdown table of every result appended to ``path`` by --json-out."""
    print(TABLE_HEADER)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            print(table_row(json.loads(line)))


def main(argv=None) -> dict | None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    if args.table is not None:
        print_table(args.table)
        return None
    result = run(args)
    print(TABLE_HEADER)
    print(table_row(result))
    print(f"(reference: ChatGLM-6B's ptuning/README.md publishes {CHATGLM_PUBLISHED_INT4_GB} GB of GPU memory for "
          f"int4; the goal here is <= {GOAL_INT4_GB} GB for int4)")
    line = json.dumps(result, sort_keys=True)
    print(line)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    return result


if __name__ == "__main__":
    main()

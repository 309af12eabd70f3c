"""Loading the frozen base model: one dtype policy, optional bitsandbytes int8 / int4 quantization.

``BaseModelSpec`` says how a base was loaded; it is recorded in every prefix checkpoint so evaluation and chat
load the base the same way without the user repeating a flag.

Dtype policy ("auto"): bf16 on a CUDA device that supports it, else fp16 on CUDA, fp32 on the CPU. Quantized
linears compute in that dtype. The prefix encoder always stays fp32 (see prefix_model.py).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import asdict, dataclass

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelPathError(FileNotFoundError):
    """A base model (or tokenizer) location that does not exist; the message names the path."""


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_local(path: str) -> bool:
    """Whether ``path`` can only mean a directory on this machine, never a Hugging Face Hub id ``namespace/repo``:
    absolute, starting with ``./ ../ ~``, or with a path separator but not of the form ``namespace/repo``."""
    if os.path.isabs(path) or path.startswith(("~", "./", "../")):
        return True
    separators = {"/", os.sep, os.altsep} - {None}
    return any(sep in path for sep in separators) and not HUB_ID.match(path)


def resolve_model_path(path: str, what: str = "base model", hint: str = "") -> str:
    """``path`` as from_pretrained should get it (``~`` expanded), or ModelPathError if it is a local-looking path
    that does not exist: such a path is reported as missing, never looked up on the Hub. ``hint`` ends the message.
    A directory in a layout that must be converted first (THUDM's ``chatglm``) raises UnsupportedModelError giving
    the exact convert command."""
    from model_patches import refuse_foreign_checkpoint

    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        refuse_foreign_checkpoint(expanded)
        return expanded
    if looks_local(path):
        raise ModelPathError(f"{what} directory not found: {path}" + (f"; {hint}" if hint else ""))
    return path


@dataclass
class BaseModelSpec:
    model_name_or_path: str
    torch_dtype: str = "auto"           # resolved to a concrete name by resolve_dtype() before loading
    quantization_bit: int | None = None  # None, 8 or 4
    quant_type: str = "nf4"              # 4-bit only: nf4 or fp4
    double_quant: bool = False           # 4-bit only: quantize the quantization constants too
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.quantization_bit not in (None, 4, 8):
            raise ValueError(f"quantization_bit must be 4, 8 or unset, got {self.quantization_bit}")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"quant_type must be nf4 or fp4, got {self.quant_type!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device | None = None) -> str:
    device = device or default_device()
    if name == "auto":
        if device.type == "cuda":
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return "float32"
    if name not in DTYPES:
        raise ValueError(f"torch_dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)


def bitsandbytes_config(spec: BaseModelSpec, compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    if spec.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=spec.quant_type,
        bnb_4bit_use_double_quant=spec.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def disable_cpu_repacking(model) -> None:
    """Keep bitsandbytes' CPU 4-bit layers in their training-safe layout.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks 4-bit weights during the first eval-mode forward; later
    gradients through the repacked weights are wrong or raise. Turning the fast path off on every Linear4bit
    keeps forward and backward on the same layout.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def load_base_model(spec: BaseModelSpec, device: torch.device | None = None):
    """Load the base causal LM described by ``spec``; returns the model in eval mode and the spec, dtype resolved."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    spec.torch_dtype = resolve_dtype(spec.torch_dtype, device)
    dtype = DTYPES[spec.torch_dtype]
    kwargs = dict(dtype=dtype, trust_remote_code=spec.trust_remote_code)
    if spec.quantization_bit:
        kwargs["quantization_config"] = bitsandbytes_config(spec, dtype)
        kwargs["device_map"] = {"": device.index if device.type == "cuda" and device.index is not None else device.type}
    path = spec.model_name_or_path = resolve_model_path(spec.model_name_or_path)
    with named_hub_failure(path, "base model"):
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not spec.quantization_bit:
        model.to(device)
    disable_cpu_repacking(model)
    return model.eval(), spec


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """AutoTokenizer.from_pretrained with the same path rule as the base model (a missing local path is named)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(path, "tokenizer")
    with named_hub_failure(path, "tokenizer"):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def named_hub_failure(path: str, what: str):
    """A name that is no local directory went to the Hub (or its offline cache): its failure becomes one line."""
    try:
        yield
    except OSError as e:
        if os.path.exists(path):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelPathError(f"{what} {path}: no such local directory, and loading it as a Hugging Face Hub id "
                             f"failed: {first}") from None

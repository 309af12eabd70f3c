"""The P*-tuning methods, one registry keyed by ``--method`` (recorded in prefix_config.json as ``method``).

Every method trains a small module, the *encoder*, and hands the frozen base the same thing: per-layer key/value
prefixes, a list of N pairs each (B, num_kv_heads, P, head_dim). So training, evaluation, generation, gradient
checkpointing, quantization, DeepSpeed and checkpoints work the same way for all of them; a method differs only
in how its encoder makes those key/values:

  * ``ptuning_v2``     deep prompts: the encoder emits every layer's key/value directly (optionally through the
                       prefix-tuning MLP, ``--prefix_projection``).                    ptuning_v2/prefix_encoder.py
  * ``prompt_tuning``  an input-level soft prompt (P, hidden) run through the base as P input embeddings; their
                       keys/values are the prefix (Lester et al.).                     methods/prompt_tuning.py
  * ``ptuning_v1``     pseudo-token embeddings through a BiLSTM+MLP (or MLP) prompt encoder, then the same as
                       prompt tuning (Liu et al., "GPT Understands, Too").             methods/ptuning_v1.py

A method is a ``Method``: its encoder config class (a frozen dataclass; its fields are written to and read from
prefix_config.json), its encoder class (``Encoder(config)``, with ``prefix_kv(base, batch_size)``), how the config
is built from the command-line flags, and how a fresh encoder is initialised. Adding one is adding a module and
one ``register`` call below; train, evaluate, chat and the checkpoint code never branch on the method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

DEFAULT_METHOD = "ptuning_v2"


@dataclass(frozen=True)
class Method:
    name: str
    config_class: type
    encoder_class: type
    # (base model config, PrefixArguments) -> encoder config
    config_from_args: Callable[[object, object], object]
    # (PrefixModel, tokenizer, PrefixArguments, seed) -> a line saying how the encoder was initialised, or None
    initialize: Callable[[object, object, object, int], str | None]
    # PrefixArguments fields only this method reads (others refuse them when set away from their default)
    own_flags: tuple[str, ...] = ()
    summary: str = ""

    def config_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_class)]

    def required_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_class)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


_METHODS: dict[str, Method] = {}


class MethodFlagError(ValueError):
    """A method flag that cannot be used as given (another method's flag, a missing companion flag, a bad value)."""


class UnknownMethodError(MethodFlagError):
    """A --method (or a checkpoint's ``method`` field) that is not registered; the message lists the known ones."""


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    return list(_METHODS)


def get_method(name: str | None) -> Method:
    try:
        return _METHODS[name or DEFAULT_METHOD]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}") from None


def method_of_config(encoder_config) -> Method:
    """The method whose encoder config ``encoder_config`` is."""
    for method in _METHODS.values():
        if type(encoder_config) is method.config_class:
            return method
    raise UnknownMethodError(f"{type(encoder_config).__name__} is no registered method's encoder config")


def config_from_record(record: dict):
    """The encoder config a prefix_config.json dict records (``method`` absent: ptuning_v2, the only method of
    checkpoints written before the field existed). Raises KeyError naming a missing field."""
    method = get_method(record.get("method"))
    missing = [f for f in method.required_fields() if f not in record]
    if missing:
        raise KeyError(", ".join(missing))
    return method.config_class(**{f: record[f] for f in method.config_fields() if f in record})


def check_flags_apply(method: Method, prefix_args) -> None:
    """Refuse a flag that belongs to another method (e.g. --prefix_projection with --method prompt_tuning), rather
    than silently ignoring it. A flag left at its default, or set to an "off" value (0, false, empty), passes."""
    defaults = {f.name: f.default for f in dataclasses.fields(type(prefix_args))}
    for other in _METHODS.values():
        if other is method:
            continue
        for flag in other.own_flags:
            value = getattr(prefix_args, flag)
            if flag in method.own_flags or value == defaults[flag] or not value:
                continue
            users = [m.name for m in _METHODS.values() if flag in m.own_flags]
            raise MethodFlagError(f"--{flag} applies to --method {' or '.join(users)}, not to --method {method.name}")


from ptuning_v2.methods import registry_entries  # noqa: E402,F401  (registers the methods)

"""P-tuning v2 for ChatGLM-style chat models: a trainable prefix on a frozen (optionally quantized) base."""

__version__ = "0.1.0"

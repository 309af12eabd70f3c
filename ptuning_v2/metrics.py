"""Scores computed as ChatGLM-6B's ptuning computes them, so numbers are comparable.

  * ROUGE-1/2/L: F1 over jieba words (rouge-chinese), x100, averaged over examples.
  * BLEU-4: over characters, nltk sentence_bleu with smoothing method 3, x100, averaged.
  * accuracy: exact match after stripping whitespace, x100.
  * classification_labels: the label set of a classification task, detected from its answers.
An empty prediction scores 0 (rouge-chinese itself raises on an empty hypothesis).
"""

from __future__ import annotations

import logging

import jieba
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

jieba.setLogLevel(logging.WARNING)
ROUGE_KEYS = ("rouge-1", "rouge-2", "rouge-l")
MAX_LABELS = 8         # at most this many distinct answers make a classification task
MAX_LABEL_CHARS = 8    # ... each at most this long (label words, not sentences)


def words(text: str) -> list[str]:
    return [w for w in jieba.cut(text) if w.strip()]


def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    hypothesis, ref = words(prediction), words(reference)
    if not hypothesis or not ref:
        return {k: 0.0 for k in ROUGE_KEYS}
    scores = Rouge().get_scores(" ".join(hypothesis), " ".join(ref))[0]
    return {k: scores[k]["f"] * 100 for k in ROUGE_KEYS}


def bleu4(prediction: str, reference: str) -> float:
    if not prediction or not reference:
        return 0.0
    return sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3) * 100


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")
    totals = {k: 0.0 for k in (*ROUGE_KEYS, "bleu-4")}
    for pred, ref in zip(predictions, references):
        for k, v in rouge_f1(pred, ref).items():
            totals[k] += v
        totals["bleu-4"] += bleu4(pred, ref)
    return {k: round(v / len(predictions), 4) for k, v in totals.items()}


def accuracy(predictions: list[str], references: list[str]) -> float:
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need equally many predictions and references, got {len(predictions)} and {len(references)}")
    return round(100 * sum(p.strip() == r.strip() for p, r in zip(predictions, references)) / len(references), 4)


def classification_labels(references: list[str]) -> list[str] | None:
    """The sorted distinct answers if they look like a label set (2..8 short words, each seen twice on average)."""
    distinct = sorted(set(references))
    if (1 < len(distinct) <= MAX_LABELS and all(len(r) <= MAX_LABEL_CHARS for r in distinct)
            and len(references) >= 2 * len(distinct)):
        return distinct
    return None

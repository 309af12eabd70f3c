"""bench/length_shortcut.py's helpers: the best length threshold equals a brute-force search, and the
length-balanced file leaves no label information in length bins."""

import importlib.util
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_length_shortcut", REPO / "bench" / "length_shortcut.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def brute_force(lengths, positive):
    candidates = [min(lengths) - 1, *sorted(set(lengths))]
    return max((sum((n > t) == p for n, p in zip(lengths, positive)) / len(lengths), -t) for t in candidates)


def test_best_threshold_matches_brute_force():
    bench = load_bench()
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 40))]
        positive = [rng.random() < 0.3 + 0.02 * n for n in lengths]
        threshold, agreement = bench.best_threshold(lengths, positive)
        assert agreement == sum((n > threshold) == p for n, p in zip(lengths, positive)) / len(lengths)
        assert agreement == brute_force(lengths, positive)[0]


def test_length_balanced_has_equal_labels_per_length_bin():
    bench = load_bench()
    rng = random.Random(1)
    rows = [{"text": "字" * n, "label": "积极" if rng.random() < n / 60 else "消极"}
            for n in (rng.randint(1, 60) for _ in range(2000))]
    balanced = bench.length_balanced(rows)
    pos = sum(r["label"] == "积极" for r in balanced)
    assert pos == len(balanced) - pos and 0 < len(balanced) < len(rows)
    _, fit = bench.best_threshold([len(r["text"]) for r in balanced], [r["label"] == "积极" for r in balanced])
    _, fit_before = bench.best_threshold([len(r["text"]) for r in rows], [r["label"] == "积极" for r in rows])
    assert fit_before > 0.65 and fit < 0.56   # length predicted the label before, hardly after
    assert balanced == bench.length_balanced(rows)   # seeded

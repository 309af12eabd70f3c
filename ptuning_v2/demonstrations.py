"""k-shot in-context-learning baseline: demonstrations drawn from the training file, put before the query.

Plain functions, used by ``python -m ptuning_v2.evaluate --num_shots K``:

  * ``select_demonstrations``: K examples drawn once per run with a fixed seed (the same K for every test
    example: standard k-shot). Examples whose query text equals a test query are never drawn, so a shots file
    that is (or overlaps) the test file cannot show the model its own answer. For classification the draw is
    balanced over the labels; the order is shuffled so that labels are not grouped.
  * ``with_demonstrations``: the demonstrations become earlier turns of the conversation, i.e. ``history``
    pairs (query, response) placed before the example's own history, so every prompt template formats them
    as it formats any past turn (chatglm: ``[Round i]``; instruction: ``q\\n答：r\\n`` after the source prefix,
    which still comes first, once; chat: user/assistant messages after the system message). A demonstration
    that has a history of its own brings its history turns first.
  * ``fit_demonstrations``: cuts the demonstrations so that the prompt fits ``max_source_length`` tokens. The
    test example (its query and its own history) is never cut because of demonstrations: if it alone fills the
    budget it gets no demonstrations (and is cut as in zero-shot evaluation). Otherwise the demonstrations'
    texts are shortened longest first, from their end: every text is capped at the largest number of characters
    C that makes the prompt fit. Only when even C = ``MIN_TEXT_CHARS`` is too long is the earliest demonstration
    (the one farthest from the query) dropped and the cut tried again with the rest, full length.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Iterable, Sequence

from ptuning_v2.data import Example

MIN_TEXT_CHARS = 16   # demonstration texts are not shortened below this; demonstrations are dropped instead


def select_demonstrations(pool: Sequence[Example], num_shots: int, seed: int, labels: Sequence[str] | None = None,
                          exclude_queries: Iterable[str] = ()) -> list[Example]:
    """``num_shots`` examples of ``pool``, the same for a given seed, none whose query is in ``exclude_queries``.

    Classification (``labels`` given): only examples whose answer is one of the labels are drawn, and they are
    drawn in rounds: each round takes one unused example of every label, the labels in a freshly shuffled order.
    So each label gets K // n demonstrations and K % n labels (the first ones of the last, partial round, chosen
    by the seed) get one more: as even as possible, e.g. K=3 with 2 labels gives 2 + 1. A label with too few
    examples is left out of later rounds and the others fill them. The order is that of the rounds, so a label
    never appears twice in a row within a round and the labels are not grouped (4 shots, 2 labels: AB BA or so).
    Generation (no labels): a seeded random sample, in random order.

    Raises ValueError when fewer than ``num_shots`` examples can be drawn.
    """
    if num_shots <= 0:
        return []
    excluded = {q.strip() for q in exclude_queries}
    usable = [ex for ex in pool if ex.query.strip() not in excluded]
    rng = random.Random(seed)
    if not labels:
        if len(usable) < num_shots:
            raise ValueError(f"only {len(usable)} examples can serve as demonstrations (after leaving out the test "
                             f"queries), --num_shots {num_shots} needs more")
        return rng.sample(usable, num_shots)

    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in usable:
        if ex.response.strip() in labels:
            by_label[ex.response.strip()].append(ex)
    available = sum(len(v) for v in by_label.values())
    if available < num_shots:
        raise ValueError(f"only {available} examples with an answer among {', '.join(labels)} can serve as "
                         f"demonstrations (after leaving out the test queries), --num_shots {num_shots} needs more")
    queues = {}
    for label in sorted(by_label):
        queue = list(by_label[label])
        rng.shuffle(queue)
        queues[label] = queue
    chosen: list[Example] = []
    while len(chosen) < num_shots:
        order = [label for label in sorted(queues) if queues[label]]
        rng.shuffle(order)
        for label in order[: num_shots - len(chosen)]:
            chosen.append(queues[label].pop())
    return chosen


def demonstration_history(demonstrations: Sequence[Example]) -> list[tuple[str, str]]:
    """The (query, response) turns the demonstrations contribute, in order (each one's own history first)."""
    turns: list[tuple[str, str]] = []
    for demo in demonstrations:
        turns.extend(demo.history)
        turns.append((demo.query, demo.response))
    return turns


def with_demonstrations(example: Example, demonstrations: Sequence[Example]) -> Example:
    """``example`` with the demonstrations as earlier turns, before its own history."""
    history = tuple(demonstration_history(demonstrations)) + tuple(example.history)
    return Example(example.query, example.response, history)


def capped(demonstrations: Sequence[Example], max_chars: int) -> list[Example]:
    """Every text of every demonstration (query, response, history) cut to its first ``max_chars`` characters."""
    return [Example(d.query[:max_chars], d.response[:max_chars],
                    tuple((q[:max_chars], r[:max_chars]) for q, r in d.history)) for d in demonstrations]


def fit_demonstrations(example: Example, demonstrations: Sequence[Example], prompt_length: Callable[[Example], int],
                       max_source_length: int, min_chars: int = MIN_TEXT_CHARS) -> list[Example]:
    """The demonstrations, shortened or fewer, such that ``prompt_length(with_demonstrations(example, result))``
    is at most ``max_source_length``; unchanged when they fit. ``prompt_length``: an Example's prompt length in
    tokens, uncut (evaluate builds it from the tokenizer and template). See the module docstring for the rule."""
    def fits(demos) -> bool:
        return prompt_length(with_demonstrations(example, demos)) <= max_source_length

    demos = list(demonstrations)
    if not demos or fits(demos):
        return demos
    if prompt_length(example) >= max_source_length:
        return []
    while demos:
        longest = max(len(t) for d in demos for t in (d.query, d.response, *(x for turn in d.history for x in turn)))
        lo, hi = min_chars, longest - 1
        if lo <= hi and fits(capped(demos, lo)):
            while lo < hi:  # the largest cap that fits
                mid = (lo + hi + 1) // 2
                if fits(capped(demos, mid)):
                    lo = mid
                else:
                    hi = mid - 1
            return capped(demos, lo)
        demos = demos[1:]
        if demos and fits(demos):
            return demos
    return []


def k_shot_prompts(session, examples: Sequence[Example],
                   demonstrations: Sequence[Example]) -> tuple[list[list[int]], dict]:
    """Prompt ids of every example with the demonstrations fitted into ``session.max_source_length``, and counts:
    ``prompts_with_demonstrations_shortened`` (all K shown, texts cut), ``prompts_with_demonstrations_dropped``
    (fewer than K shown) and ``mean_demonstrations_shown``.

    ``session``: an InferenceSession (tokenizer, template, source_prefix, max_source_length)."""
    from ptuning_v2.data import build_prompt_features

    def prompt_length(ex: Example) -> int:  # uncut: a budget no prompt reaches
        return len(build_prompt_features(ex, session.tokenizer, session.template, 1 << 30,
                                         session.source_prefix)["input_ids"])

    prompts, shortened, dropped, shown = [], 0, 0, 0
    for ex in examples:
        fitted = fit_demonstrations(ex, demonstrations, prompt_length, session.max_source_length)
        shown += len(fitted)
        dropped += len(fitted) < len(demonstrations)
        shortened += len(fitted) == len(demonstrations) and fitted != list(demonstrations)
        full = with_demonstrations(ex, fitted)
        prompts.append(session.prompt_ids(full.query, full.history))
    return prompts, {"prompts_with_demonstrations_shortened": shortened, "prompts_with_demonstrations_dropped": dropped,
                     "mean_demonstrations_shown": round(shown / max(len(examples), 1), 4)}

"""label_logprobs: one forward per batch, the same scores as scoring every prompt + candidate sequence."""

import pytest
import torch

from ptuning_v2.data import get_template
from ptuning_v2.inference import InferenceSession, continuation_contexts, label_logprobs, label_logprobs_naive
from ptuning_v2.prefix_model import PrefixModel, encoder_config_for
from tiny_models import tiny_model, tiny_tokenizer

# Prompts of different lengths (left padding); ids are tiny-vocab tokens (4..95).
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23], [30]]
# 1, 2 and 3 tokens; [40] and [40, 41] share a first token, [40, 41] and [40, 41, 42] share two.
MIXED = [[40], [41, 50], [40, 41, 42], [40, 41], [60, 61, 62], [70]]




def make_session(with_prefix: bool) -> InferenceSession:
    base = tiny_model("glm", "gqa")
    model = base
    if with_prefix:
        torch.manual_seed(3)
        model = PrefixModel(base, encoder_config_for(base.config, 3)).eval()
        with torch.no_grad():  # a prefix large enough to change the scores
            model.prefix_encoder.embedding.weight.normal_(0, 2.0)
    return InferenceSession(model=model, tokenizer=tiny_tokenizer(), template=get_template("chatglm"))


def count_forwards(session: InferenceSession) -> list[int]:
    """Wraps session.forward; returns a list that gets the batch size of every call."""
    calls, forward = [], session.forward

    def counted(ids, mask, **kwargs):
        calls.append(ids.shape[0])
        return forward(ids, mask, **kwargs)

    session.forward = counted
    return calls


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("candidates", [MIXED, [[40], [41], [70]], [[41, 50], [40]]], ids=["mixed", "one-token", "two"])
def test_scores_equal_the_reference(with_prefix, candidates):
    session = make_session(with_prefix)
    expected = label_logprobs_naive(session, PROMPTS, candidates)
    calls = count_forwards(session)
    scores = label_logprobs(session, PROMPTS, candidates)
    assert scores.shape == (len(PROMPTS), len(candidates)) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    assert len(calls) == 1  # one model forward per batch, whatever the candidates


@pytest.mark.parametrize("with_prefix", [False, True])
def test_one_token_candidates_cost_one_forward_over_the_prompts(with_prefix):
    session = make_session(with_prefix)
    calls = count_forwards(session)
    label_logprobs(session, PROMPTS, [[40], [41], [70]])
    label_logprobs(session, PROMPTS[:2], [[40], [41]])
    assert calls == [len(PROMPTS), 2]  # one forward per batch, one row per prompt: no copy per candidate


def test_one_and_two_token_labels_need_no_prompt_copies():
    # 积极 (1 token) / 消极 (2 tokens): one row per prompt, prompt + 消.
    session = make_session(True)
    calls = count_forwards(session)
    label_logprobs(session, PROMPTS, [[40], [41, 50]])
    assert calls == [len(PROMPTS)]


def test_model_mode_is_left_alone():
    session = make_session(True)
    session.model.train()
    label_logprobs(session, PROMPTS, MIXED)
    assert session.model.training and session.model.prefix_encoder.training
    session.model.eval()
    label_logprobs(session, PROMPTS, MIXED)
    assert not session.model.training


def test_continuation_contexts_keep_only_the_longest_runs():
    contexts, owner = continuation_contexts(MIXED)
    assert sorted(contexts) == [[40, 41], [41], [60, 61]]
    for cand, o in zip(MIXED, owner):
        assert contexts[o][: len(cand) - 1] == cand[:-1]
    assert continuation_contexts([[4], [5]]) == ([[]], [0, 0])


@pytest.mark.parametrize("with_prefix", [False, True])
def test_only_the_last_positions_get_logits_and_the_fallback_agrees(with_prefix, monkeypatch):
    session = make_session(with_prefix)
    seen, forward = [], session.forward

    def recording(ids, mask, **kwargs):
        out = forward(ids, mask, **kwargs)
        seen.append((kwargs.get("logits_to_keep"), out.logits.shape[1]))
        return out

    session.forward = recording
    one_token = label_logprobs(session, PROMPTS, [[40], [41]])
    mixed = label_logprobs(session, PROMPTS, MIXED)
    assert seen == [(1, 1), (3, 3)]  # T = 1 + longest context ([40, 41])

    import ptuning_v2.inference as inference
    monkeypatch.setattr(inference, "_keeps_logits", lambda model: False)  # a base without logits_to_keep
    torch.testing.assert_close(label_logprobs(session, PROMPTS, [[40], [41]]), one_token, atol=1e-5, rtol=0)
    torch.testing.assert_close(label_logprobs(session, PROMPTS, MIXED), mixed, atol=1e-5, rtol=0)
    assert seen[2][0] is None and seen[2][1] == max(map(len, PROMPTS))

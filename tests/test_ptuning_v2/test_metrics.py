import pytest

from ptuning_v2.metrics import accuracy, bleu4, generation_metrics, rouge_f1


def test_against_hand_computed_values():
    # jieba: 今天天气|很|好 vs 今天天气|不错 -> 1 shared unigram: P = 1/3, R = 1/2, F1 = 0.4; no shared bigram.
    assert rouge_f1("今天天气很好", "今天天气不错") == pytest.approx({"rouge-1": 40.0, "rouge-2": 0.0, "rouge-l": 40.0})
    # Characters: n-gram precisions 4/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty):
    # BLEU-4 = (4/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/15) ** 0.25.
    assert bleu4("今天天气很好", "今天天气不错") == pytest.approx(100 * (1 / 15) ** 0.25, rel=1e-9)
    assert bleu4("今天天气很好", "今天天气很好") == pytest.approx(100.0)


def test_empty_predictions_score_zero_and_do_not_crash():
    scores = generation_metrics(["", "   ", "今天天气很好"], ["好的", "好", "今天天气不错"])
    assert scores["rouge-1"] == pytest.approx(40.0 / 3, abs=1e-4)
    assert scores["bleu-4"] == pytest.approx(100 * (1 / 15) ** 0.25 / 3, abs=1e-4)
    assert generation_metrics([""], [""]) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}


def test_accuracy():
    assert accuracy(["积极", " 消极", "积极"], ["积极", "消极", "消极"]) == pytest.approx(200 / 3, abs=1e-4)
    with pytest.raises(ValueError):
        accuracy(["a"], [])

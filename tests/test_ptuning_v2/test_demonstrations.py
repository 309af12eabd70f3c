"""k-shot demonstrations: balanced seeded draw, never the test queries, formatted as earlier turns of the template,
cut without cutting the query; and evaluate --num_shots end to end on the tiny checkpoint."""

import json
import shutil
from collections import Counter

import pytest

from ptuning_v2 import evaluate
from ptuning_v2.data import Example, get_template
from ptuning_v2.demonstrations import (MIN_TEXT_CHARS, capped, fit_demonstrations, k_shot_prompts,
                                       select_demonstrations, with_demonstrations)
from ptuning_v2.inference import InferenceSession
from tiny_models import tiny_model, tiny_tokenizer

LABELS = ["坏", "好"]
POOL = [Example(f"这个{i}好", "好") for i in range(10)] + [Example(f"这个{i}坏", "坏") for i in range(10)]


def counts(demos):
    return Counter(d.response for d in demos)


@pytest.mark.parametrize("seed", [0, 1, 42, 7])
def test_four_shots_two_labels_are_two_each_and_not_grouped(seed):
    demos = select_demonstrations(POOL, 4, seed, LABELS)
    assert counts(demos) == {"好": 2, "坏": 2}
    assert len(set(demos)) == 4
    # Drawn in rounds of one per label: never both of a label first and both of the other last.
    assert demos[0].response != demos[1].response and demos[2].response != demos[3].response


def test_three_shots_two_labels_spread_as_evenly_as_possible():
    extra = []
    for seed in range(10):
        c = counts(select_demonstrations(POOL, 3, seed, LABELS))
        assert sorted(c.values()) == [1, 2]
        extra.append(max(c, key=c.get))
    assert set(extra) == {"好", "坏"}  # which label gets the extra one is up to the seed
    three = [Example(f"天{i}", w) for i in range(5) for w in ("好", "坏", "大")]
    assert sorted(counts(select_demonstrations(three, 5, 3, ["好", "坏", "大"])).values()) == [1, 2, 2]


def test_a_scarce_label_is_used_up_and_the_others_fill_in():
    pool = [Example("山好", "好")] + [Example(f"水{i}坏", "坏") for i in range(5)]
    assert counts(select_demonstrations(pool, 4, 0, LABELS)) == {"好": 1, "坏": 3}
    with pytest.raises(ValueError, match="only 6"):
        select_demonstrations(pool, 7, 0, LABELS)


def test_answers_outside_the_labels_are_not_drawn():
    pool = POOL + [Example(f"月{i}", "中") for i in range(20)]
    assert set(counts(select_demonstrations(pool, 6, 1, LABELS))) == {"好", "坏"}


def test_the_draw_is_fixed_by_the_seed():
    for labels in (LABELS, None):
        assert select_demonstrations(POOL, 4, 5, labels) == select_demonstrations(POOL, 4, 5, labels)
        assert select_demonstrations(POOL, 4, 5, labels) != select_demonstrations(POOL, 4, 6, labels)
    assert select_demonstrations(POOL, 0, 5, LABELS) == []


def test_test_queries_are_never_demonstrations():
    test = POOL[:8] + POOL[10:18]              # the shots file is (mostly) the test file
    for seed in range(5):
        demos = select_demonstrations(POOL, 4, seed, LABELS, exclude_queries=[ex.query for ex in test])
        assert not {d.query for d in demos} & {ex.query for ex in test}
        assert counts(demos) == {"好": 2, "坏": 2}
    with pytest.raises(ValueError, match="test queries"):
        select_demonstrations(test, 1, 0, None, exclude_queries=[" " + ex.query for ex in test])


def session(template="instruction", source_prefix="问：", max_source_length=1024):
    return InferenceSession(model=tiny_model("glm", "gqa"), tokenizer=tiny_tokenizer(), template=get_template(template),
                            source_prefix=source_prefix, max_source_length=max_source_length)


DEMOS = [Example("天好", "好"), Example("水坏", "坏")]
QUERY = Example("这个好不好", "好", (("山", "大"),))


def decoded(s, ids):
    assert ids[0] == s.tokenizer.bos_token_id
    return s.tokenizer.decode(ids[1:])


def test_demonstrations_are_earlier_turns_of_the_template():
    s = session("instruction")
    prompts, cut = k_shot_prompts(s, [QUERY], DEMOS)
    # The source prefix first, once; then the demonstrations, the example's own history, the query.
    assert decoded(s, prompts[0]) == "问：天好\n答：好\n水坏\n答：坏\n山\n答：大\n这个好不好\n答："
    assert cut == {"prompts_with_demonstrations_shortened": 0, "prompts_with_demonstrations_dropped": 0,
                   "mean_demonstrations_shown": 2}

    s = session("chatglm", source_prefix="")
    expected = ("[Round 1]\n\n问：天好\n\n答：好\n\n[Round 2]\n\n问：水坏\n\n答：坏\n\n"
                "[Round 3]\n\n问：山\n\n答：大\n\n[Round 4]\n\n问：这个好不好\n\n答：")
    assert decoded(s, k_shot_prompts(s, [QUERY], DEMOS)[0][0]) == expected


def test_demonstrations_are_turns_of_a_chat_template():
    s = session("chat", source_prefix="你是")
    s.tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
                                 "{% if add_generation_prompt %}[assistant]{% endif %}")
    text = s.tokenizer.decode(k_shot_prompts(s, [QUERY], DEMOS)[0][0], skip_special_tokens=True)
    assert text == ("[system]你是[user]天好[assistant]好[user]水坏[assistant]坏"
                    "[user]山[assistant]大[user]这个好不好[assistant]")


def test_the_query_stays_whole_when_demonstrations_must_be_cut():
    long_demos = [Example("天" * 40, "好"), Example("水" * 60, "坏")]
    full = session("instruction")
    zero_shot = full.prompt_ids(QUERY.query, QUERY.history)
    s = session("instruction", max_source_length=len(zero_shot) + 60)
    prompts, cut = k_shot_prompts(s, [QUERY], long_demos)
    assert cut == {"prompts_with_demonstrations_shortened": 1, "prompts_with_demonstrations_dropped": 0,
                   "mean_demonstrations_shown": 2}
    text = decoded(s, prompts[0])
    assert len(prompts[0]) <= s.max_source_length
    assert text.startswith("问：天") and text.endswith("\n答：坏\n山\n答：大\n这个好不好\n答：")
    assert prompts[0][-(len(zero_shot) - 3):] == zero_shot[3:]   # all after bos + source prefix, intact
    # Longest first: both were capped to the same length C, the largest that fits.
    assert text.count("天") == text.count("水") >= MIN_TEXT_CHARS

    # Too small to keep both even at MIN_TEXT_CHARS: the earliest demonstration is dropped.
    s = session("instruction", max_source_length=len(zero_shot) + MIN_TEXT_CHARS + 5)
    prompts, cut = k_shot_prompts(s, [QUERY], long_demos)
    assert cut["prompts_with_demonstrations_dropped"] == 1 and cut["mean_demonstrations_shown"] == 1
    assert len(prompts[0]) <= s.max_source_length
    text = decoded(s, prompts[0])
    assert "天" not in text and text.startswith("问：水") and text.endswith("这个好不好\n答：")

    # The query alone fills the budget: no demonstrations, and the prompt is the zero-shot one.
    s = session("instruction", max_source_length=len(zero_shot))
    assert k_shot_prompts(s, [QUERY], long_demos)[0][0] == zero_shot


def test_fit_caps_the_longest_texts_first():
    template = get_template("plain")
    length = lambda ex: len(template.build_prompt(ex.query, list(ex.history)))  # noqa: E731 (characters)
    demos = [Example("a" * 50, "b" * 5), Example("c" * 30, "d" * 20)]
    query = Example("q" * 10, "")
    budget = length(with_demonstrations(query, demos)) - 30
    fitted = fit_demonstrations(query, demos, length, budget)
    cap = max(len(t) for d in fitted for t in (d.query, d.response))
    assert length(with_demonstrations(query, fitted)) <= budget
    assert length(with_demonstrations(query, capped(demos, cap + 1))) > budget   # the largest cap
    assert fitted[0].response == "b" * 5 and fitted[1].response == "d" * 20     # short texts untouched
    assert fitted[0].query == "a" * cap and fitted[1].query == "c" * min(30, cap)
    assert fit_demonstrations(query, demos, length, 10_000) == demos


def shots_file(tmp_path, extra=()):
    path = tmp_path / "train.jsonl"
    pairs = [("天好", "好"), ("水坏", "坏"), ("月好", "好"), ("日坏", "坏"), ("山大好", "好"), ("火小坏", "坏"), *extra]
    path.write_text("".join(json.dumps({"text": q, "label": a}, ensure_ascii=False) + "\n" for q, a in pairs),
                    encoding="utf-8")
    return path


def test_evaluate_with_two_shots(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    train = shots_file(tmp_path, extra=[("这个好不好", "好")])   # one test query is in the shots file too
    generated, generate_batch = [], evaluate.generate_batch
    monkeypatch.setattr(evaluate, "generate_batch", lambda s, prompts, **kw: generated.extend(
        s.tokenizer.decode(p, skip_special_tokens=True) for p in prompts) or generate_batch(s, prompts, **kw))
    metrics = evaluate.main(["--checkpoint", str(ckpt), "--num_shots", "2", "--shots_file", str(train),
                             "--batch_size", "4"])
    saved = json.loads((ckpt / "eval-2shot" / "metrics.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(metrics, ensure_ascii=False))
    assert saved["num_shots"] == 2 and saved["shots_seed"] == 42 and saved["shots_file"] == str(train)
    assert sorted(d["response"] for d in saved["demonstrations"]) == ["坏", "好"]
    assert "这个好不好" not in {d["query"] for d in saved["demonstrations"]}
    assert saved["num_examples"] == 6 and 0 <= saved["label_scoring_accuracy"] <= 100
    # Every generated prompt: the recorded source prefix, the same two demonstrations, then the query.
    shown = "".join(f"{d['query']}\n答：{d['response']}\n" for d in saved["demonstrations"])
    assert len(generated) == 6 and all(p.startswith("问：" + shown) and p.endswith("\n答：") for p in generated)

    base = evaluate.main(["--checkpoint", str(ckpt), "--base_only", "--num_shots", "2", "--shots_file", str(train),
                          "--shots_seed", "3", "--max_source_length", "64"])
    assert (ckpt / "eval-base-only-2shot-seed3" / "metrics.json").is_file()
    assert base["max_source_length"] == 64 and base["model"] == "base model, no prefix"
    assert not (ckpt / "eval").exists()   # the zero-shot results' directory is left alone


def test_evaluate_without_a_shots_file_says_what_to_give(tiny_checkpoint, tiny_base_dir, tmp_path):
    with pytest.raises(SystemExit, match="the checkpoint records none: give --shots_file"):
        evaluate.main(["--checkpoint", str(tiny_checkpoint), "--num_shots", "2", "--output_dir", str(tmp_path / "o")])
    test_file = json.loads((tiny_checkpoint / "prefix_config.json").read_text(encoding="utf-8"))["prompt"]["test_file"]
    with pytest.raises(SystemExit, match="without --checkpoint none is recorded"):
        evaluate.main(["--model_name_or_path", str(tiny_base_dir), "--base_only", "--test_file", test_file,
                       "--prompt_column", "text", "--response_column", "label", "--num_shots", "2",
                       "--output_dir", str(tmp_path / "o")])

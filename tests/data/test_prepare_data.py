"""Unit tests for data/prepare_data.py on small in-memory samples (no package files, no full build)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "data"))
import prepare_data as pdp  # noqa: E402


def _texts(records):
    return [r["text"] for r in records]


def _sentiment(n_pos=60, n_neg=90):
    pos = [f"好评{i}" for i in range(n_pos)]
    neg = [f"差评{i}" for i in range(n_neg)]
    return pdp.build_sentiment_records(pos, neg)[0]


def _idiom_row(word, explanation="解释。", example="无", derivation="无", pinyin="pīn yīn"):
    return {"word": word, "explanation": explanation, "example": example, "derivation": derivation, "pinyin": pinyin}


# ----------------------------------------------------------------------------------- sentiment
def test_dedupe_keeps_first_occurrence_in_order():
    assert pdp.dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_sentiment_records_dedupe_strip_and_drop_conflicts():
    pos = ["很好", " 很好 ", "一般", "", "喜欢"]
    neg = ["太差", "一般", "太差", "   "]
    records, conflicts = pdp.build_sentiment_records(pos, neg)
    assert conflicts == 1  # "一般" is labelled both ways
    assert records == [
        {"text": "很好", "label": pdp.POSITIVE},
        {"text": "喜欢", "label": pdp.POSITIVE},
        {"text": "太差", "label": pdp.NEGATIVE},
    ]


# -------------------------------------------------------------------------------------- splits
def test_split_is_deterministic_per_seed_and_changes_with_seed():
    records = _sentiment()
    a = pdp.split_records(records, seed=1, stratify="label")
    b = pdp.split_records(records, seed=1, stratify="label")
    c = pdp.split_records(records, seed=2, stratify="label")
    assert a == b
    assert _texts(a["test"]) != _texts(c["test"])


def test_split_puts_every_record_in_exactly_one_split():
    records = _sentiment()
    splits = pdp.split_records(records, seed=3, stratify="label")
    seen = [t for name in pdp.SPLITS for t in _texts(splits[name])]
    assert sorted(seen) == sorted(_texts(records))
    assert len(set(seen)) == len(seen)


def test_split_sizes_fraction_cap_and_stratification():
    records = _sentiment(60, 90)  # 150 records: 10% = 15 each for dev and test
    splits = pdp.split_records(records, seed=0, stratify="label")
    assert [len(splits[s]) for s in pdp.SPLITS] == [120, 15, 15]
    assert pdp.label_counts(splits["dev"]) == {pdp.POSITIVE: 6, pdp.NEGATIVE: 9}
    capped = pdp.split_records(records, seed=0, cap=4)
    assert [len(capped[s]) for s in pdp.SPLITS] == [142, 4, 4]


def test_duplicates_in_sources_cannot_straddle_splits():
    pos = [f"评论{i % 40}" for i in range(200)]  # every text five times
    records, _ = pdp.build_sentiment_records(pos, ["差"])
    splits = pdp.split_records(records, seed=0)
    sets = [set(_texts(splits[s])) for s in pdp.SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_grouped_split_keeps_equal_targets_together():
    records = [{"word": f"成语{i}", "explanation": f"解释{i // 3}"} for i in range(90)]  # groups of three
    splits = pdp.split_records(records, seed=0, group="explanation")
    where = {}
    for name in pdp.SPLITS:
        for r in splits[name]:
            where.setdefault(r["explanation"], set()).add(name)
    assert all(len(names) == 1 for names in where.values())
    assert [len(splits[s]) for s in pdp.SPLITS] == [72, 9, 9]
    assert sorted(r["word"] for s in pdp.SPLITS for r in splits[s]) == sorted(r["word"] for r in records)


# --------------------------------------------------------------------------------------- idioms
def test_clean_idiom_rows_drops_empty_and_duplicate_idioms():
    rows = [
        _idiom_row("画蛇添足", "比喻多此一举。"),
        _idiom_row("", "没有成语。"),
        _idiom_row("空空如也", ""),
        _idiom_row("无中生有", "无"),
        _idiom_row("画蛇添足", "第二个解释。"),
        _idiom_row("守株待兔", "比喻死守经验。"),
    ]
    kept = pdp.clean_idiom_rows(rows)
    assert [r["word"] for r in kept] == ["画蛇添足", "守株待兔"]
    assert kept[0]["explanation"] == "比喻多此一举。"


def test_idiom_record_with_and_without_example():
    with_example = _idiom_row("画蛇添足", " 比喻多此一举。 ", example="他这样做是～。★某人《某书》")
    assert pdp.idiom_record(with_example) == {
        "content": "成语：画蛇添足\n例句：他这样做是画蛇添足。",
        "summary": "比喻多此一举。",
    }
    assert pdp.idiom_record(_idiom_row("守株待兔", "比喻死守经验。")) == {
        "content": "成语：守株待兔",
        "summary": "比喻死守经验。",
    }


def test_multiturn_history_layout():
    rows = [
        _idiom_row("画蛇添足", "比喻多此一举。", derivation="《战国策》", pinyin="huà shé tiān zú"),
        _idiom_row("守株待兔", "比喻死守经验。", derivation="《韩非子》", pinyin="shǒu zhū dài tù"),
        _idiom_row("一举两得", "做一件事得到两种收获。", derivation="无", pinyin="yī jǔ liǎng dé"),
    ]
    dialogues = pdp.build_multiturn(rows, n=3)
    assert [len(d["history"]) for d in dialogues] == [2, 1, 1]  # the third has no source to ask about
    for d, row in zip(dialogues, rows):
        assert set(d) == {"prompt", "response", "history"}
        assert d["response"] == row["pinyin"]
        assert all(isinstance(turn, list) and len(turn) == 2 and all(isinstance(x, str) for x in turn)
                   for turn in d["history"])
        assert row["word"] in d["history"][0][0] and d["history"][0][1] == row["explanation"]
    assert dialogues[0]["history"][1][1] == "《战国策》"
    assert len(pdp.build_multiturn(rows, n=2)) == 2


# ---------------------------------------------------------------------------------- pretraining
def test_strip_pos_tags_removes_tags_doc_ids_and_brackets():
    line = "19980101-01-001-001/m  迈向/v  充满/v  [中国/ns  政府/n]nt  ，/w  ＡＢＣ/nx  。/w"
    assert pdp.strip_pos_tags(line) == "迈向充满中国政府，ＡＢＣ。"
    assert list(pdp.iter_peoples_daily(["新年/t  讲话/n", "   ", ""])) == ["新年讲话"]


def test_peoples_daily_paragraphs_are_joined_by_newlines():
    lines = ["一/m", "", "二/m", "三/m", "四/m", "五/m"]
    assert list(pdp.iter_peoples_daily(lines, paragraphs_per_doc=2)) == ["一\n二", "三\n四", "五"]


def test_pretraining_text_excludes_dev_and_test():
    sentiment = {
        "train": [{"text": "训练评论", "label": pdp.POSITIVE}],
        "dev": [{"text": "验证评论", "label": pdp.POSITIVE}],
        "test": [{"text": "测试评论", "label": pdp.NEGATIVE}],
    }
    idioms = {
        "train": [_idiom_row("甲", "训练解释")],
        "dev": [_idiom_row("乙", "验证解释")],
        "test": [_idiom_row("丙", "测试解释")],
    }
    text = list(pdp.iter_pretraining_text(["人民/n  日报/n"], sentiment, idioms))
    assert text == ["人民日报", "训练评论", "训练解释"]
    adgen = {k: [pdp.idiom_record(r) for r in v] for k, v in idioms.items()}
    assert list(pdp.iter_pretraining_text([], sentiment, adgen)) == ["训练评论", "训练解释"]


# --------------------------------------------------------------------------------- files/errors
def test_missing_source_file_is_named(tmp_path):
    missing = tmp_path / "pos.txt"
    with pytest.raises(pdp.SourceError, match="pos.txt"):
        pdp.read_lines(str(missing))


def test_idiom_csv_missing_column_is_named(tmp_path):
    path = tmp_path / "idiom.csv"
    path.write_text("word,pinyin,explanation,example\n画蛇添足,huà,解释,无\n", encoding="utf-8")
    with pytest.raises(pdp.SourceError, match=r"idiom\.csv.*derivation"):
        pdp.read_idiom_rows(str(path))


def test_build_and_write_from_small_source_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "pos.txt").write_text("\n".join(f"好{i}" for i in range(30)) + "\n都有\n", encoding="utf-8")
    (src / "neg.txt").write_text("\n".join(f"差{i}" for i in range(30)) + "\n都有\n", encoding="utf-8")
    (src / "pd.txt").write_text("人民/n  日报/n\n", encoding="utf-8")
    header = ",abbreviation,derivation,example,explanation,pinyin,word\n"
    rows = "".join(f"{i},x,《书》,无,解释{i}。,pīn,成语{i}\n" for i in range(30))
    (src / "idiom.csv").write_text(header + rows, encoding="utf-8")
    paths = {"pos": str(src / "pos.txt"), "neg": str(src / "neg.txt"),
             "peoples_daily": str(src / "pd.txt"), "idiom": str(src / "idiom.csv")}

    built = pdp.build_all(seed=5, paths=paths)
    stats = pdp.write_all(built, str(tmp_path / "out"))
    assert stats["sentiment_conflicts_dropped"] == 1
    assert {s: c["records"] for s, c in stats["sentiment"].items()} == {"train": 48, "dev": 6, "test": 6}
    assert stats["idiom"] == {"train": 24, "dev": 3, "test": 3}
    assert stats["multiturn"] == {"train": 24, "dev": 3}  # fewer idioms than the 400/100 asked for
    lines = (tmp_path / "out" / "idiom" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    assert "成语" in lines[0]  # ensure_ascii=False: Chinese is written as is
    assert set(json.loads(lines[0])) == {"content", "summary"}
    dev_words = {json.loads(line)["content"].removeprefix("成语：") for line in lines}
    mt_dev = [json.loads(x) for x in (tmp_path / "out" / "multiturn" / "dev.jsonl").read_text("utf-8").splitlines()]
    assert {d["history"][0][0].strip("“”是什么意思？") for d in mt_dev} == dev_words
    corpus = list(pdp.pretraining_corpus(seed=5, paths=paths))
    assert not {f"解释{w.removeprefix('成语')}。" for w in dev_words} & set(corpus)


def test_missing_package_is_named():
    with pytest.raises(pdp.SourceError, match="no_such_package_xyz"):
        pdp.package_dir("no_such_package_xyz", "no-such-package")

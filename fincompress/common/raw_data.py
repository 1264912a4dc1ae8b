"""Parsers of the raw dataset releases (Financial PhraseBank v1.0, FiQA-2018 task 1).

Used by data preparation (both the local files and the Hub's copies of the same release) and by
the named KD transfer sets, so every reader of a release file parses it the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from fincompress.common.paths import LABEL2ID, LABELS, FinCompressError

FIQA_THRESHOLD = 0.1  # a mean score > 0.1 is positive, < -0.1 negative, else neutral
AGREEMENT_FILES = {"all": "AllAgree", "75": "75Agree", "66": "66Agree", "50": "50Agree"}
FIQA_FILES = ("task1_headline_ABSA_train.json", "task1_post_ABSA_train.json")


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def score_to_label(score: float, threshold: float = FIQA_THRESHOLD) -> int:
    if score > threshold:
        return LABEL2ID["positive"]
    if score < -threshold:
        return LABEL2ID["negative"]
    return LABEL2ID["neutral"]


# ----------------------------------------------------------------------------- local files

def find_phrasebank_file(directory: Path, agreement: str) -> Path:
    name = f"Sentences_{AGREEMENT_FILES[agreement]}.txt"
    matches = sorted(Path(directory).rglob(name))
    if not matches:
        raise FinCompressError(f"{name} not found under {directory} (expected the Financial PhraseBank v1.0 "
                               f"release, e.g. ../shared/data/financial_phrasebank)")
    return matches[0]


def parse_phrasebank_file(path: Path) -> pd.DataFrame:
    """`sentence@label` lines, latin-1; a malformed line or unknown label names file and line."""
    rows = []
    for number, line in enumerate(Path(path).read_bytes().decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        if "@" not in line:
            raise FinCompressError(f"{path}, line {number}: no '@' separating sentence and label: {line[:80]!r}")
        sentence, label = line.rsplit("@", 1)
        label = label.strip().lower()
        if label not in LABEL2ID:
            raise FinCompressError(f"{path}, line {number}: unknown label {label!r} (expected one of {list(LABELS)})")
        rows.append({"text": sentence, "label": LABEL2ID[label], "source": "phrasebank"})
    return pd.DataFrame(rows, columns=["text", "label", "source"])


def parse_fiqa_file(path: Path, threshold: float = FIQA_THRESHOLD) -> pd.DataFrame:
    """FiQA task-1 JSON: one row per sentence, label from the mean score of its targets."""
    path = Path(path)
    if not path.is_file():
        raise FinCompressError(f"{path} not found (expected FiQA-2018 task 1, e.g. ../shared/data/fiqa_2018)")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FinCompressError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    source = "fiqa_headline" if "headline" in path.name else "fiqa_post"
    rows = []
    for key, record in records.items():
        try:
            scores = [float(entry["sentiment_score"]) for entry in record["info"]]
            sentence = record["sentence"]
        except (KeyError, TypeError, ValueError) as exc:
            raise FinCompressError(f"{path}, record {key!r}: missing or non-numeric sentiment_score/sentence "
                                   f"({exc})") from exc
        if not scores:
            raise FinCompressError(f"{path}, record {key!r}: no target entries")
        rows.append({"text": sentence, "label": score_to_label(sum(scores) / len(scores), threshold),
                     "source": source})
    return pd.DataFrame(rows, columns=["text", "label", "source"])

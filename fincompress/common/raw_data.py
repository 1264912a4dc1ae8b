"""Parsers of the raw dataset releases and of a user's labelled texts.

- Financial PhraseBank v1.0: `Sentences_*.txt` (latin-1, `sentence@label`), read from a folder or from
  the release zip (the file the Hub dataset `takala/financial_phrasebank` hosts), by the same code.
- FiQA-2018 task 1: the release JSON (one record per sentence, several scored targets), or the Hub's
  Parquet splits (`TheFinAI/fiqa-sentiment-classification`, one row per target). Both give one row per
  sentence, labelled from the mean of its targets' scores by `score_to_label`.
- A user's CSV of labelled texts (`text,label`, labels as names or ids).

Used by data preparation, the assets resolver and the named KD transfer sets, so every reader of a
release file parses it the same way. `read_phrasebank` and `read_fiqa` check a file named as a release
file against the release's sha256 (`assets.verify_release_file`) before parsing it. Every bad input is
a one-line `FinCompressError` naming the file (and line or record) and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fincompress.common.paths import LABEL2ID, LABELS, FinCompressError

FIQA_THRESHOLD = 0.1  # a mean score > 0.1 is positive, < -0.1 negative, else neutral
AGREEMENT_FILES = {"all": "AllAgree", "75": "75Agree", "66": "66Agree", "50": "50Agree"}
FIQA_FILES = ("task1_headline_ABSA_train.json", "task1_post_ABSA_train.json")
PHRASEBANK_ZIP = "FinancialPhraseBank-v1.0.zip"
COLUMNS = ["text", "label", "source"]

# The Hub's copies of the two datasets, pinned: the commit that added the release zip to the dataset
# repository (its LFS pointer records the sha256 below, the checksum of the official release), and the
# commit of the FiQA Parquet splits (files named as in that commit; their checksums are recorded per run).
HUB_PHRASEBANK = {
    "repo_id": "takala/financial_phrasebank",
    "revision": "598b6aad98f7c8d67be161b12a4b5f2497e07edd",
    "filename": f"data/{PHRASEBANK_ZIP}",
    "sha256": "0e1a06c4900fdae46091d031068601e3773ba067c7cecb5b0da1dcba5ce989a6",
}
HUB_FIQA = {
    "repo_id": "TheFinAI/fiqa-sentiment-classification",
    "revision": "b669064ceb406dfc33a86a8ddce203b7395a0fa1",
    "splits": {
        "train": "data/train-00000-of-00001-aeefa1eadf5be10b.parquet",
        "valid": "data/valid-00000-of-00001-51867fe1ac59af78.parquet",
        "test": "data/test-00000-of-00001-0fb9f3a47c7d0fce.parquet",
    },
}
INVISIBLE_CATEGORIES = ("Cc", "Cf")  # control characters; format characters (zero-width, BOM, bidi marks)
FIQA_PARQUET_COLUMNS = ("_id", "sentence", "target", "aspect", "score", "type")


def normalise_text(text: str) -> str:
    """Whitespace collapsed to single spaces; control and invisible format characters (zero-width spaces and
    joiners, BOM, soft hyphen, bidi marks) removed: what no reader can see is not part of the text."""
    text = "".join(" " if ch.isspace() else "" if unicodedata.category(ch) in INVISIBLE_CATEGORIES else ch
                   for ch in str(text))
    return re.sub(r"\s+", " ", text).strip()


def is_visible_text(value: object) -> bool:
    """A string with at least one visible character: what every stage, the server and the batch scorer
    accept as a text (empty, whitespace-only and invisible-only strings would reach the model as an empty input)."""
    return isinstance(value, str) and bool(normalise_text(value))


# Column names that hold a text in the CSVs people bring: two of them in one file make the text ambiguous.
TEXT_COLUMN_NAMES = ("text", "sentence", "sentences", "tweet", "content", "headline", "body", "review")


def check_columns(path: Path, header: list[str]) -> None:
    """Refuse a header with duplicate names or several columns that could be the text, naming them."""
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise FinCompressError(f"{path}, line 1: column(s) {duplicates} appear more than once in the header "
                               f"{header}; rename or remove the copies")
    texts = [name for name in header if name in TEXT_COLUMN_NAMES]
    if len(texts) > 1:
        raise FinCompressError(f"{path}, line 1: columns {texts} could each be the text; keep only the `text` "
                               "column (rename or remove the others)")


def score_to_label(score: float, threshold: float = FIQA_THRESHOLD) -> int:
    if score > threshold:
        return LABEL2ID["positive"]
    if score < -threshold:
        return LABEL2ID["negative"]
    return LABEL2ID["neutral"]


def _read_bytes(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "not found"
        raise FinCompressError(f"{path} {state} (expected {what})")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FinCompressError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _line_of(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


def _decode_utf8(data: bytes, origin: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FinCompressError(f"{origin}, line {_line_of(data, exc.start)}: not UTF-8 (byte 0x{data[exc.start]:02x}); "
                               f"save the file as UTF-8") from exc


# ----------------------------------------------------------------------------- Financial PhraseBank

def phrasebank_file_name(agreement: str) -> str:
    return f"Sentences_{AGREEMENT_FILES[agreement]}.txt"


def find_phrasebank_file(directory: Path, agreement: str) -> Path:
    """The extracted `Sentences_<agreement>.txt` under `directory` (see `read_phrasebank` for zips too)."""
    name = phrasebank_file_name(agreement)
    matches = sorted(Path(directory).rglob(name))
    if not matches:
        raise FinCompressError(f"{name} not found under {directory} (expected the Financial PhraseBank v1.0 "
                               f"release: its Sentences_*.txt files or {PHRASEBANK_ZIP})")
    return matches[0]


def parse_phrasebank_bytes(data: bytes, origin: str) -> pd.DataFrame:
    """`sentence@label` lines, latin-1 as released; `origin` names the file in errors."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            pass  # the release's own latin-1 bytes
        else:
            # Valid UTF-8 with multi-byte sequences: a re-encoded copy; read as latin-1 it would be mojibake.
            first = next(i for i, byte in enumerate(data) if byte > 0x7F)
            raise FinCompressError(f"{origin}, line {_line_of(data, first)}: the file is UTF-8 with non-ASCII "
                                   f"characters, but the Financial PhraseBank release is latin-1: this copy was "
                                   f"re-encoded; use the original release ({PHRASEBANK_ZIP}, sha256 "
                                   f"{HUB_PHRASEBANK['sha256'][:12]}...)")
    rows = []
    for number, line in enumerate(data.decode("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        if "@" not in line:
            raise FinCompressError(f"{origin}, line {number}: no '@' separating sentence and label: {line[:80]!r}")
        sentence, label = line.rsplit("@", 1)
        label = label.strip().lower()
        if label not in LABEL2ID:
            raise FinCompressError(f"{origin}, line {number}: unknown label {label!r} (expected one of {list(LABELS)})")
        rows.append({"text": sentence, "label": LABEL2ID[label], "source": "phrasebank"})
    if not rows:
        raise FinCompressError(f"{origin}: empty file (expected `sentence@label` lines of the Financial PhraseBank "
                               f"release); restore it from {PHRASEBANK_ZIP}")
    return pd.DataFrame(rows, columns=COLUMNS)


def parse_phrasebank_file(path: Path) -> pd.DataFrame:
    """One extracted `Sentences_*.txt` file."""
    return parse_phrasebank_bytes(_read_bytes(path, "a Financial PhraseBank Sentences_*.txt file"), str(path))


def read_phrasebank_zip(path: Path, agreement: str) -> pd.DataFrame:
    """`Sentences_<agreement>.txt` read straight from the release zip (its `__MACOSX/` entries are ignored)."""
    name = phrasebank_file_name(agreement)
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if m.rsplit("/", 1)[-1] == name and "__MACOSX" not in m]
            if not members:
                raise FinCompressError(f"{path}: no {name} inside (expected the Financial PhraseBank v1.0 release zip)")
            data = archive.read(members[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise FinCompressError(f"{path}: not a readable zip archive ({exc}); download the release zip again") from exc
    return parse_phrasebank_bytes(data, f"{path}!{members[0]}")


def phrasebank_input(location: Path, agreement: str) -> Path:
    """The file `read_phrasebank` reads: `location` itself, else under it the extracted Sentences file, else
    the release zip."""
    location = Path(location)
    if location.is_file():
        return location
    if not location.is_dir():
        raise FinCompressError(f"{location}: no such folder or zip (expected the Financial PhraseBank v1.0 release)")
    if not any(location.rglob(phrasebank_file_name(agreement))):
        zips = sorted(location.rglob(PHRASEBANK_ZIP))
        if zips:
            return zips[0]
    return find_phrasebank_file(location, agreement)  # raises, naming what is missing


def verify_release(path: Path) -> Path:
    """`path` checked against the reference sha256 of the release file it is named as (if any)."""
    from fincompress.common.assets import verify_release_file  # assets reads this module's constants

    verify_release_file(path)
    return path


def read_phrasebank(location: Path, agreement: str) -> pd.DataFrame:
    """Financial PhraseBank at one agreement level, from the release zip or a folder holding the release
    (its extracted Sentences files, else its zip); a file named as the release must be the release."""
    path = verify_release(phrasebank_input(location, agreement))
    if zipfile.is_zipfile(path):
        return read_phrasebank_zip(path, agreement)
    return parse_phrasebank_file(path)


# ----------------------------------------------------------------------------- FiQA-2018 task 1

def _checked_score(value, where: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise FinCompressError(f"{where}: sentiment score {value!r} is not a number") from None
    if not math.isfinite(score) or not -1 <= score <= 1:
        raise FinCompressError(f"{where}: sentiment score {value!r} is not a finite number in [-1, 1]; "
                               f"fix or remove that entry")
    return score


def fiqa_source(kind: str) -> str:
    """`fiqa_headline` / `fiqa_post` from a file name or the Hub's `type` column."""
    kind = str(kind).lower()
    if "headline" in kind:
        return "fiqa_headline"
    if "post" in kind or "microblog" in kind:
        return "fiqa_post"
    return f"fiqa_{re.sub(r'[^a-z0-9]+', '_', kind).strip('_') or 'other'}"


def parse_fiqa_file(path: Path, threshold: float = FIQA_THRESHOLD) -> pd.DataFrame:
    """FiQA task-1 JSON: one row per sentence, label from the mean score of its targets."""
    path = Path(path)
    data = _read_bytes(path, "FiQA-2018 task 1 release JSON")
    text = _decode_utf8(data, str(path))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FinCompressError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(records, dict):
        raise FinCompressError(f"{path}: expected a JSON object of records {{id: {{sentence, info: [...]}}}} "
                               f"(the FiQA-2018 task 1 release format), got a {type(records).__name__}")
    if not records:
        raise FinCompressError(f"{path}: no records (empty FiQA file)")
    source = fiqa_source(path.name)
    rows = []
    for key, record in records.items():
        where = f"{path}, record {key!r}"
        try:
            sentence = record["sentence"]
            entries = list(record["info"])
            raw_scores = [entry["sentiment_score"] for entry in entries]
        except (KeyError, TypeError) as exc:
            raise FinCompressError(f"{where}: missing sentence/info/sentiment_score ({exc}); expected "
                                   f"{{sentence, info: [{{sentiment_score, target}}]}}") from exc
        if not isinstance(sentence, str):
            raise FinCompressError(f"{where}: sentence is not a string")
        if not raw_scores:
            raise FinCompressError(f"{where}: no target entries")
        scores = [_checked_score(s, where) for s in raw_scores]
        rows.append({"text": sentence, "label": score_to_label(sum(scores) / len(scores), threshold),
                     "source": source})
    return pd.DataFrame(rows, columns=COLUMNS)


def read_fiqa_parquet(paths: Iterable[Path]) -> pd.DataFrame:
    """The Hub's Parquet splits, concatenated (one row per sentence and target); columns checked."""
    frames = []
    for path in paths:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise FinCompressError(f"{path}: not a readable Parquet file ({type(exc).__name__}); download it "
                                   f"again") from exc
        missing = {"sentence", "score", "type"} - set(frame.columns)
        if missing:
            raise FinCompressError(f"{path}: missing column(s) {sorted(missing)}; expected the FiQA Parquet "
                                   f"columns {list(FIQA_PARQUET_COLUMNS)}")
        frames.append(frame.assign(origin=[f"{path}, row {i}" for i in range(1, len(frame) + 1)]))
    if not frames:
        raise FinCompressError("no FiQA Parquet files given")
    return pd.concat(frames, ignore_index=True)


def fiqa_sentences_from_targets(targets: pd.DataFrame, threshold: float = FIQA_THRESHOLD) -> pd.DataFrame:
    """One row per sentence from one row per (sentence, target): the mean score, the same rule as the JSON."""
    origins = targets["origin"] if "origin" in targets else [f"FiQA row {i}" for i in range(1, len(targets) + 1)]
    for score, origin in zip(targets["score"], origins):
        _checked_score(score, origin)
    if targets.empty:
        raise FinCompressError("FiQA: no rows")
    grouped = targets.groupby("sentence", sort=False).agg(score=("score", "mean"), type=("type", "first"))
    return pd.DataFrame({"text": grouped.index, "label": [score_to_label(s, threshold) for s in grouped["score"]],
                         "source": [fiqa_source(t) for t in grouped["type"]]}, columns=COLUMNS)


def fiqa_parquet_files(directory: Path) -> list[Path]:
    """The Hub's FiQA Parquet splits stored in a folder (as the assets resolver's fallback saves them)."""
    names = [Path(name).name for name in HUB_FIQA["splits"].values()]
    return [Path(directory) / name for name in names if (Path(directory) / name).is_file()]


def fiqa_inputs(directory: Path) -> list[Path]:
    """The files `read_fiqa` reads from a folder: the release JSON files, else the Hub's Parquet splits."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FinCompressError(f"{directory}: not a folder (expected FiQA-2018 task 1: {', '.join(FIQA_FILES)})")
    if not any((directory / name).exists() for name in FIQA_FILES):
        parquet = fiqa_parquet_files(directory)
        if len(parquet) == len(HUB_FIQA["splits"]):
            return parquet
    return [directory / name for name in FIQA_FILES]


def read_fiqa(directory: Path, threshold: float = FIQA_THRESHOLD) -> pd.DataFrame:
    """FiQA from a folder: the release JSON files (each checked against its reference sha256), else the
    Hub's Parquet splits."""
    paths = [verify_release(path) for path in fiqa_inputs(directory)]
    if paths[0].suffix == ".parquet":
        return fiqa_sentences_from_targets(read_fiqa_parquet(paths), threshold)
    return pd.concat([parse_fiqa_file(path, threshold) for path in paths], ignore_index=True)


# ----------------------------------------------------------------------------- a user's labelled CSV

def parse_label(value: str) -> int | None:
    """A label name (case-insensitive) or id as the project's id; None if it is neither."""
    value = str(value).strip().lower()
    if value in LABEL2ID:
        return LABEL2ID[value]
    if value in {str(i) for i in range(len(LABELS))}:
        return int(value)
    return None


def parse_labelled_csv(path: Path, source: str = "csv") -> pd.DataFrame:
    """A user's CSV with a header and columns `text,label` (others ignored).

    Labels are names (negative/neutral/positive, any case) or ids (0 negative, 1 neutral, 2 positive).
    Line numbers in errors are the file's own lines (quoted fields may span several).
    """
    path = Path(path)
    data = _read_bytes(path, "a CSV file with columns text,label")
    text = _decode_utf8(data, str(path))
    if not text.strip():
        raise FinCompressError(f"{path}: empty file; expected a header `text,label` and one row per text")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [normalise_text(h).lower() for h in next(reader)]
        check_columns(path, header)
        missing = [c for c in ("text", "label") if c not in header]
        if missing:
            other = next((f" (it looks {name}-separated: use commas)" for sep, name in ((";", "semicolon"),
                                                                                      ("\t", "tab"))
                          if len(header) == 1 and sep in header[0]), "")
            raise FinCompressError(f"{path}, line 1: missing column(s) {missing} in the header {header}; expected "
                                   f"a comma-separated header `text,label`{other}")
        text_at, label_at = header.index("text"), header.index("label")
        rows, empty_lines, line = [], [], reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue  # a blank line
            if len(fields) != len(header):
                raise FinCompressError(f"{path}, line {start}: {len(fields)} fields, the header has {len(header)} "
                                       f"(quote texts that contain commas)")
            label = parse_label(fields[label_at])
            if label is None:
                raise FinCompressError(f"{path}, line {start}: label {fields[label_at]!r} is not one of "
                                       f"{', '.join(LABELS)} (any case) or 0, 1, 2 "
                                       f"({', '.join(f'{i} {n}' for i, n in enumerate(LABELS))}); map your labels "
                                       f"to these first")
            if not normalise_text(fields[text_at]):  # empty, or only invisible characters
                empty_lines.append(start)
                continue
            rows.append({"text": fields[text_at], "label": label, "source": source})
    except csv.Error as exc:
        raise FinCompressError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from exc
    if empty_lines:
        raise FinCompressError(f"{path}: {len(empty_lines)} row(s) with an empty text (first at line "
                               f"{empty_lines[0]}); remove them or fill in the text")
    if not rows:
        raise FinCompressError(f"{path}: a header but no rows; expected one `text,label` row per text")
    return pd.DataFrame(rows, columns=COLUMNS)

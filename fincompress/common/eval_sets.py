"""Extra evaluation sets: labelled texts beyond the test split (out-of-domain checks).

Reads  a user's CSV `text,label` (the same reader and label rules as `prepare_dataset --source csv`),
       or the built-in set `tweets`: labelled financial tweets from the release folder
       `data/twitter_financial_news` of the assets (0 bearish, 1 bullish, 2 neutral). Its
       `sent_train.csv` is cut in two by a stable hash of each normalised text: 30% are held out for
       evaluation, the rest are the `twitter` KD transfer set (`tweets_for_transfer`), so no variant
       is scored on what it was distilled on. `sent_valid.csv`, where present, joins the held-out part
       (minus any text of the transfer part).
Writes nothing.

A set is named on the command line as `NAME=FILE`, or as `tweets` alone for the built-in set.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fincompress.common.assets import asset_file
from fincompress.common.io import text_digest
from fincompress.common.paths import LABEL2ID, FinCompressError
from fincompress.common.raw_data import normalise_text, parse_labelled_csv, verify_release

TWEETS = "tweets"
TWEETS_ASSET = "data/twitter_financial_news"
TWEETS_FILE = "sent_valid.csv"  # optional: the release's validation file, all held out
TRANSFER_FILE = "sent_train.csv"  # split: the held-out share is evaluated, the rest is the KD transfer set
HELD_OUT_SHARE = 0.3
# The release's ids -> the project's label names (its order is bearish, bullish, neutral).
TWEET_LABELS = {0: "negative", 1: "positive", 2: "neutral"}
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # becomes a CSV column prefix


@dataclass
class EvalSet:
    """One evaluation set: texts with project label ids, and where they came from."""

    name: str
    texts: list[str]
    labels: np.ndarray
    origin: str
    excluded: int = 0  # texts dropped because a variant may have been trained on them

    @property
    def fingerprint(self) -> str:
        return text_digest([*self.texts, *map(str, self.labels.tolist())])

    def metadata(self) -> dict:
        return {"origin": self.origin, "samples": len(self.texts), "excluded_as_training_texts": self.excluded,
                "fingerprint": self.fingerprint}


def parse_spec(text: str) -> tuple[str, Path | None]:
    """`NAME=FILE` -> (NAME, FILE); `tweets` -> ("tweets", None), the built-in set."""
    name, sep, file = str(text).partition("=")
    name = name.strip().lower()
    if not sep and name == TWEETS:
        return TWEETS, None
    if not sep or not file.strip():
        raise FinCompressError(f"--eval-set {text!r}: expected NAME=FILE (a CSV with columns text,label) "
                               f"or {TWEETS!r} for the built-in financial-tweets set")
    if not NAME_PATTERN.match(name) or name == "test":
        raise FinCompressError(f"--eval-set {text!r}: NAME must be lower-case letters, digits or _ (starting "
                               "with a letter, at most 32, not 'test'): it prefixes the results columns")
    return name, Path(file.strip()).expanduser()


def _keys(texts: list[str]) -> list[str]:
    return [normalise_text(t).lower() for t in texts]  # as kd and prepare_dataset compare texts


def read_csv_set(name: str, path: Path) -> EvalSet:
    """A user's labelled CSV; duplicate texts are kept once (the first label), as prepare_dataset does."""
    frame = parse_labelled_csv(path, source=name)
    frame["text"] = frame["text"].map(normalise_text)
    frame = frame[frame["text"] != ""]
    frame = frame.loc[~frame["text"].str.lower().duplicated()]
    if frame.empty:
        raise FinCompressError(f"{path}: no non-empty text left after normalisation")
    return EvalSet(name, frame["text"].tolist(), frame["label"].to_numpy(dtype=np.int64), str(path))


def tweets_folder(folder: Path | None = None) -> Path:
    return Path(folder) if folder is not None else asset_file(TWEETS_ASSET)


def is_held_out(text: str) -> bool:
    """Whether a tweet belongs to the evaluation share: a hash of its normalised, lower-cased text,
    so the split is the same on every machine and for every copy of a text."""
    digest = hashlib.sha256(_keys([text])[0].encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") < HELD_OUT_SHARE * 2**32


def _labelled_tweets(path: Path) -> pd.DataFrame:
    # parse_labelled_csv reads ids in the project's order; the release's ids mean something else.
    swap = {int(release_id): LABEL2ID[label] for release_id, label in TWEET_LABELS.items()}
    frame = parse_labelled_csv(path, source=TWEETS)
    frame["label"] = frame["label"].map(swap)
    frame["text"] = frame["text"].map(normalise_text)
    return frame


def _train_file(folder: Path) -> Path:
    path = folder / TRANSFER_FILE
    if not path.is_file():
        raise FinCompressError(f"{path} not found: the {TWEETS!r} set and the `twitter` transfer set are read from "
                               f"twitter_financial_news/{TRANSFER_FILE} (`python -m fincompress.assets --assets "
                               f"{TWEETS_ASSET}`); or pass your own set as NAME=FILE")
    return verify_release(path)  # named as the release: it must be the release


def tweets_for_transfer(folder: Path | None = None) -> list[str]:
    """The KD transfer share of the training tweets (labels ignored): never in the `tweets` set."""
    frame = _labelled_tweets(_train_file(tweets_folder(folder)))
    return [t for t in frame["text"] if t and not is_held_out(t)]


def read_tweets(folder: Path | None = None) -> EvalSet:
    """The built-in out-of-domain set: the held-out share of the training tweets, plus the validation
    file where present, minus every KD transfer text and duplicate."""
    folder = tweets_folder(folder)
    train = _labelled_tweets(_train_file(folder))
    held = train["text"].map(is_held_out)
    parts = [train[held]]
    if (folder / TWEETS_FILE).is_file():
        parts.append(_labelled_tweets(folder / TWEETS_FILE))
    frame = pd.concat(parts, ignore_index=True)
    transfer = set(_keys(train.loc[~held, "text"].tolist()))
    keys = frame["text"].str.lower()
    keep = ~keys.isin(transfer) & ~keys.duplicated() & (frame["text"] != "")
    kept = frame[keep]
    return EvalSet(TWEETS, kept["text"].tolist(), kept["label"].to_numpy(dtype=np.int64), str(folder),
                   excluded=int((~keep).sum()))


def read_eval_set(spec: str, tweets: Path | None = None) -> EvalSet:
    """The set a `--eval-set` value names (`tweets` or NAME=FILE); bad files fail with one line."""
    name, path = parse_spec(spec)
    return read_tweets(tweets) if path is None else read_csv_set(name, path)


def read_eval_sets(specs: list[str], tweets: Path | None = None) -> list[EvalSet]:
    sets = [read_eval_set(spec, tweets) for spec in specs]
    names = [s.name for s in sets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FinCompressError(f"--eval-set: the name(s) {repeated} are given more than once")
    return sets

"""Extra evaluation sets: labelled texts beyond the test split (out-of-domain checks).

Reads  a user's CSV `text,label` (the same reader and label rules as `prepare_dataset --source csv`),
       or the built-in set `tweets`: the financial-tweets release folder `data/twitter_financial_news`
       of the assets, file `sent_valid.csv` (0 bearish, 1 bullish, 2 neutral), with every text of
       `sent_train.csv` (the `twitter` KD transfer set) removed, so no variant is scored on what it
       was distilled on.
Writes nothing.

A set is named on the command line as `NAME=FILE`, or as `tweets` alone for the built-in set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fincompress.common.assets import asset_file
from fincompress.common.io import text_digest
from fincompress.common.paths import LABEL2ID, FinCompressError
from fincompress.common.raw_data import normalise_text, parse_labelled_csv

TWEETS = "tweets"
TWEETS_ASSET = "data/twitter_financial_news"
TWEETS_FILE = "sent_valid.csv"
TWEETS_SHA256 = "393572beac5064ed60c9f608a57dc66af2b41a91b89c149932d5c57f827e25da"
TRANSFER_FILE = "sent_train.csv"  # what `fincompress.distillation.kd` reads for its `twitter` transfer set
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


def read_tweets(folder: Path | None = None) -> EvalSet:
    """The built-in out-of-domain set: held-out financial tweets minus every KD transfer text."""
    folder = tweets_folder(folder)
    path = folder / TWEETS_FILE
    if not path.is_file():
        raise FinCompressError(f"{path} not found: the built-in {TWEETS!r} set needs the validation file of "
                               f"twitter_financial_news (sha256 {TWEETS_SHA256}) beside {TRANSFER_FILE}; "
                               "or pass your own set as NAME=FILE")
    # parse_labelled_csv reads ids in the project's order; the release's ids mean something else.
    swap = {int(release_id): LABEL2ID[label] for release_id, label in TWEET_LABELS.items()}
    frame = parse_labelled_csv(path, source=TWEETS)
    frame["label"] = frame["label"].map(swap)
    frame["text"] = frame["text"].map(normalise_text)
    transfer = folder / TRANSFER_FILE
    if not transfer.is_file():  # without it no one can say the set is free of distillation texts
        raise FinCompressError(f"{transfer} not found: the {TWEETS!r} set excludes the KD transfer texts it holds")
    training = set(_keys(parse_labelled_csv(transfer, source="twitter")["text"].tolist()))
    keys = frame["text"].str.lower()
    keep = ~keys.isin(training) & ~keys.duplicated() & (frame["text"] != "")
    kept = frame[keep]
    return EvalSet(TWEETS, kept["text"].tolist(), kept["label"].to_numpy(dtype=np.int64), str(path),
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

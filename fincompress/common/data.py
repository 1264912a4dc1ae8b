"""The prepared splits (data/{train,val,test}.csv), their fingerprint, and batching."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from fincompress.common.paths import LABELS, FinCompressError, data_dir
from fincompress.common.raw_data import normalise_text

SPLITS = ("train", "val", "test")
DATASET_INFO = "dataset_info.json"
MAX_LENGTH = 128  # tokens per text; longer texts are cut (a warning says how many)
log = logging.getLogger(__name__)


def split_path(root: Path, split: str) -> Path:
    return data_dir(root) / f"{split}.csv"


def read_split(root: Path, split: str) -> pd.DataFrame:
    """Read one prepared split and check it honours the data contract."""
    path = split_path(root, split)
    if not path.is_file():
        raise FinCompressError(
            f"{path} not found: run `python -m fincompress.data.prepare_dataset` first "
            f"(offline: add `--source local`)."
        )
    try:
        frame = pd.read_csv(path, keep_default_na=False, dtype=str, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise FinCompressError(f"{path}: empty file; re-run `python -m fincompress.data.prepare_dataset`") from None
    except UnicodeDecodeError as exc:
        raise FinCompressError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); re-run "
                               f"`python -m fincompress.data.prepare_dataset`") from exc
    except pd.errors.ParserError as exc:
        raise FinCompressError(f"{path}: malformed CSV ({str(exc).strip()})") from exc
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise FinCompressError(f"{path}: missing column(s) {sorted(missing)}; expected text,label[,source]")
    if frame.empty:
        raise FinCompressError(f"{path}: a header but no rows; re-run `python -m fincompress.data.prepare_dataset` "
                               f"(with more data or a larger --sample-fraction)")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = frame.index[labels.isna() | ~labels.isin(range(len(LABELS)))]
    if len(bad):
        row = int(bad[0])
        raise FinCompressError(
            f"{path}, line {row + 2}: label {frame['label'][row]!r} is not one of 0, 1, 2 "
            f"({', '.join(f'{i} {n}' for i, n in enumerate(LABELS))})"
        )
    empty = frame.index[frame["text"].astype(str).map(normalise_text) == ""]  # invisible-only counts as empty
    if len(empty):
        raise FinCompressError(f"{path}, line {int(empty[0]) + 2}: empty text")
    frame["label"] = labels.astype(int)
    frame["text"] = frame["text"].astype(str)
    return frame


def compute_fingerprint(paths: list[Path]) -> str:
    """Short digest of the split files' names and bytes (the value recorded in dataset_info.json and in
    every variant's checkpoint_info.json; kept byte-compatible with the fingerprints already published)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class MissingSplit(FinCompressError, FileNotFoundError):
    """A prepared split is missing: a user error (one line), and a FileNotFoundError for code that treats
    unreadable data as an OSError."""


def data_fingerprint(root: Path) -> str:
    """Fingerprint of the prepared splits as they are on disk now (so an edited or re-prepared split is noticed)."""
    paths = [split_path(root, s) for s in SPLITS]
    for path in paths:
        if not path.is_file():
            raise MissingSplit(f"{path} not found: run `python -m fincompress.data.prepare_dataset` first")
    return compute_fingerprint(paths)


def first_rows_of_every_class(frame: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The first `n` rows (all if None), except that a class the first rows lack takes the place of the
    last row of the most frequent class: a macro F1 on a subset never scores a class with no example."""
    if not n or n >= len(frame):
        return frame
    chosen = list(frame.index[:n])
    for label in frame["label"].unique():
        if (frame.loc[chosen, "label"] == label).any():
            continue
        counts = frame.loc[chosen, "label"].value_counts()
        if counts.iloc[0] < 2:  # n smaller than the number of classes: nothing can give way
            break
        crowded = frame.loc[chosen, "label"] == counts.index[0]
        chosen.remove(crowded[crowded].index[-1])
        chosen.append(frame.index[frame["label"] == label][0])
    return frame.loc[sorted(chosen, key=frame.index.get_loc)]


class EncodedTexts(torch.utils.data.Dataset):
    """Texts tokenized once (no padding); the collator pads each batch to its longest."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, texts: list[str], labels: list[int] | None = None,
                 max_length: int = MAX_LENGTH):
        self.encodings = tokenizer(list(texts), truncation=True, max_length=max_length)
        self.labels = None if labels is None else [int(x) for x in labels]
        at_limit = sum(len(ids) >= max_length for ids in self.encodings["input_ids"])
        if at_limit:  # financial sentences are short; a long text is cut, which a user should hear of
            log.warning("%d of %d texts reach the %d-token limit: longer ones are cut to their first %d tokens",
                        at_limit, len(self), max_length, max_length)

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["index"] = index
        if self.labels is not None:
            item["labels"] = self.labels[index]
        return item


def make_loader(tokenizer: PreTrainedTokenizerBase, texts: list[str], labels: list[int] | None = None, *,
                batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                max_length: int = MAX_LENGTH) -> DataLoader:
    """A DataLoader of dynamically padded batches; each batch carries `index` into `texts`."""
    dataset = EncodedTexts(tokenizer, texts, labels, max_length)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer))


def split_loader(root: Path, split: str, tokenizer: PreTrainedTokenizerBase, **kwargs) -> DataLoader:
    frame = read_split(root, split)
    return make_loader(tokenizer, frame["text"].tolist(), frame["label"].tolist(), **kwargs)


def model_inputs(batch: dict) -> dict:
    """The tensors a BERT forward takes (drops labels and index)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

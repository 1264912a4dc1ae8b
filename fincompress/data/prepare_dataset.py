"""Prepare the study's data: Financial PhraseBank + FiQA-2018 task 1, as in the original study.

Reads  the Hub datasets (`--source hub`, default) or the original release files
       (`--source local --phrasebank-dir DIR --fiqa-dir DIR`, e.g. ../shared/data/...).
Writes <root>/data/train.csv, val.csv, test.csv (columns text,label,source; labels
       0 negative, 1 neutral, 2 positive) and data/dataset_info.json (counts, fingerprint).

Rules (documented in the README):
- FiQA sentences with several targets get the mean of their targets' scores; a score
  > 0.1 is positive, < -0.1 negative, else neutral.
- Whitespace is normalised; empty texts are dropped.
- Duplicates (case-insensitive, after normalisation) are dropped within and across sources;
  a text whose copies carry different labels is dropped entirely (its label is ambiguous).
- Stratified 70/15/15 split on label x source with a fixed seed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from fincompress.common import cli
from fincompress.common.data import DATASET_INFO, SPLITS, compute_fingerprint, split_path
from fincompress.common.paths import LABELS, FinCompressError, add_root_argument, data_dir, project_root
from fincompress.common.raw_data import (
    AGREEMENT_FILES,
    FIQA_FILES,
    FIQA_THRESHOLD,
    find_phrasebank_file,
    normalise_text,
    parse_fiqa_file,
    parse_phrasebank_file,
    score_to_label,
)

log = logging.getLogger("fincompress.prepare_dataset")

CONFIG = {
    "agreement": "all",
    "fiqa_threshold": FIQA_THRESHOLD,
    "split": (0.70, 0.15, 0.15),
    "seed": 42,
    # Hub copies of the two datasets (what users with internet get).
    "hub_phrasebank": "takala/financial_phrasebank",
    "hub_fiqa": "TheFinAI/fiqa-sentiment-classification",
}
LOCAL_HINT = ("--source local --phrasebank-dir ../shared/data/financial_phrasebank "
              "--fiqa-dir ../shared/data/fiqa_2018")


def load_local(phrasebank_dir: Path, fiqa_dir: Path, agreement: str) -> pd.DataFrame:
    for name, directory in (("--phrasebank-dir", phrasebank_dir), ("--fiqa-dir", fiqa_dir)):
        if directory is None or not Path(directory).is_dir():
            raise FinCompressError(f"{name} {directory}: not a folder ({LOCAL_HINT})")
    frames = [parse_phrasebank_file(find_phrasebank_file(phrasebank_dir, agreement))]
    frames += [parse_fiqa_file(Path(fiqa_dir) / name) for name in FIQA_FILES]
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- Hub

def load_hub(agreement: str) -> pd.DataFrame:
    from datasets import load_dataset

    config = f"sentences_{'allagree' if agreement == 'all' else agreement + 'agree'}"
    try:
        phrasebank = load_dataset(CONFIG["hub_phrasebank"], config, split="train").to_pandas()
        fiqa = pd.concat([split.to_pandas() for split in load_dataset(CONFIG["hub_fiqa"]).values()])
    except Exception as exc:  # datasets raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        raise FinCompressError(f"could not download the Hub datasets ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160]}). Offline, use the release files: "
                               f"{LOCAL_HINT}") from exc
    # takala/financial_phrasebank uses our order (0 negative, 1 neutral, 2 positive).
    rows = [{"text": t, "label": int(y), "source": "phrasebank"}
            for t, y in zip(phrasebank["sentence"], phrasebank["label"])]
    # One row per (sentence, target): average a sentence's scores, as for the local files.
    fiqa_mean = fiqa.groupby("sentence", sort=False).agg(score=("score", "mean"), type=("type", "first"))
    rows += [{"text": s, "label": score_to_label(r.score), "source": f"fiqa_{r.type}"}
             for s, r in fiqa_mean.iterrows()]
    return pd.DataFrame(rows, columns=["text", "label", "source"])


# ----------------------------------------------------------------------------- cleaning and split

def clean_and_deduplicate(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Normalise whitespace, drop empties and duplicates; drop texts with conflicting labels."""
    frame = frame.assign(text=frame["text"].map(normalise_text))
    stats = {"raw": len(frame), "empty_dropped": int((frame["text"] == "").sum())}
    frame = frame[frame["text"] != ""]
    key = frame["text"].str.lower()
    labels_per_text = frame.groupby(key)["label"].nunique()
    conflicting = set(labels_per_text.index[labels_per_text > 1])
    stats["conflicting_texts_dropped"] = len(conflicting)
    kept = frame[~key.isin(conflicting)]
    deduplicated = kept.loc[~kept["text"].str.lower().duplicated()].reset_index(drop=True)
    stats["duplicates_dropped"] = len(kept) - len(deduplicated)
    stats["total"] = len(deduplicated)
    return deduplicated, stats


def strata(frame: pd.DataFrame, min_size: int = 10) -> pd.Series:
    """label x source; a stratum too small to split 70/15/15 falls back to its label alone."""
    combined = frame["label"].astype(str) + "|" + frame["source"]
    counts = combined.value_counts()
    rare = combined.isin(counts[counts < min_size].index)
    return combined.where(~rare, frame["label"].astype(str) + "|other")


def stratified_sample(frame: pd.DataFrame, fraction: float, seed: int = CONFIG["seed"]) -> pd.DataFrame:
    """A stratified (label x source) share of the data: smoke runs on a tenth of it keep its mix."""
    if not 0 < fraction <= 1:
        raise FinCompressError(f"--sample-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return frame
    sample, _ = train_test_split(frame, train_size=fraction, stratify=strata(frame), random_state=seed)
    return sample.reset_index(drop=True)


def stratified_split(frame: pd.DataFrame, fractions=CONFIG["split"], seed: int = CONFIG["seed"]
                     ) -> dict[str, pd.DataFrame]:
    """70/15/15 split stratified on label x source, deterministic for a seed."""
    train, rest = train_test_split(frame, train_size=fractions[0], stratify=strata(frame), random_state=seed)
    val_share = fractions[1] / (fractions[1] + fractions[2])
    val, test = train_test_split(rest, train_size=val_share, stratify=strata(rest, min_size=4), random_state=seed)
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True),
            "test": test.reset_index(drop=True)}


def class_table(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = {}
    for name, part in {**splits, "all": pd.concat(splits.values())}.items():
        counts = part["label"].value_counts().reindex(range(len(LABELS)), fill_value=0)
        rows[name] = {**{LABELS[i]: int(c) for i, c in counts.items()}, "total": len(part),
                      **{f"{LABELS[i]} %": round(100 * c / max(1, len(part)), 1) for i, c in counts.items()}}
    return pd.DataFrame.from_dict(rows, orient="index")


def write_splits(root: Path, splits: dict[str, pd.DataFrame], info: dict) -> dict:
    """Write the CSVs and dataset_info.json (each file written whole, then renamed)."""
    out = data_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        tmp = out / f".{name}.csv.tmp"
        splits[name][["text", "label", "source"]].to_csv(tmp, index=False)
        tmp.replace(split_path(root, name))
    info = {**info, "fingerprint": compute_fingerprint([split_path(root, s) for s in SPLITS]),
            "sizes": {name: len(splits[name]) for name in SPLITS}}
    (out / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.data.prepare_dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--source", choices=("hub", "local"), default="hub",
                        help="hub: download the Hub datasets (default); local: read release files")
    parser.add_argument("--agreement", choices=tuple(AGREEMENT_FILES), default=CONFIG["agreement"],
                        help="Financial PhraseBank annotator-agreement level (default: all = 100%%)")
    parser.add_argument("--phrasebank-dir", type=Path, help="folder holding Sentences_*.txt (with --source local)")
    parser.add_argument("--fiqa-dir", type=Path, help="folder holding task1_*_ABSA_train.json (with --source local)")
    parser.add_argument("--seed", type=int, default=CONFIG["seed"], help="split seed")
    parser.add_argument("--sample-fraction", type=float, default=1.0,
                        help="keep a stratified share of the deduplicated data before splitting (smoke runs)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    root = project_root(args.root)
    if args.source == "local":
        raw = load_local(args.phrasebank_dir, args.fiqa_dir, args.agreement)
    else:
        raw = load_hub(args.agreement)
    frame, stats = clean_and_deduplicate(raw)
    frame = stratified_sample(frame, args.sample_fraction, args.seed)
    splits = stratified_split(frame, seed=args.seed)
    info = write_splits(root, splits, {"source": args.source, "agreement": args.agreement, "seed": args.seed,
                                       "sample_fraction": args.sample_fraction,
                                       "fiqa_threshold": CONFIG["fiqa_threshold"], **stats,
                                       "by_source": frame["source"].value_counts().to_dict()})
    print(f"{stats['raw']} raw rows -> {stats['total']} after dropping {stats['empty_dropped']} empty, "
          f"{stats['duplicates_dropped']} duplicate and {stats['conflicting_texts_dropped']} conflicting texts")
    print(class_table(splits).to_string())
    print(f"wrote {data_dir(root)} (fingerprint {info['fingerprint']})")
    return info


if __name__ == "__main__":
    raise SystemExit(cli.run(main))

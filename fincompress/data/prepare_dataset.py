"""Prepare the study's data: Financial PhraseBank + FiQA-2018 task 1 (as in the original study), or your own texts.

Reads  one of
       --source hub    (default) the Hub's copies, pinned: the PhraseBank release zip of the dataset repository
                       takala/financial_phrasebank and the FiQA Parquet splits of
                       TheFinAI/fiqa-sentiment-classification (downloaded once into the Hugging Face cache);
       --source local  the release files: --phrasebank-dir (a folder holding Sentences_*.txt or the release zip,
                       or the zip itself) and --fiqa-dir (task1_*_ABSA_train.json); both default to the assets
                       folder (see `python -m fincompress.assets`);
       --source csv    your labelled texts: --data-file FILE (split here), or --train-file/--val-file/--test-file;
                       columns text,label with labels negative/neutral/positive (any case) or 0/1/2.
Writes <root>/data/train.csv, val.csv, test.csv (columns text,label,source; labels
       0 negative, 1 neutral, 2 positive) and data/dataset_info.json (counts, fingerprint, the pinned
       revisions and sha256 of the files read).

Rules (documented in the README):
- FiQA sentences with several targets get the mean of their targets' scores; a score
  > 0.1 is positive, < -0.1 negative, else neutral.
- Whitespace is normalised; empty texts are dropped.
- Duplicates (case-insensitive, after normalisation) are dropped within and across sources;
  a text whose copies carry different labels is dropped entirely (its label is ambiguous).
- Stratified 70/15/15 split on label x source with a fixed seed (given train/val/test files are kept as
  they are, minus texts already in an earlier split).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from fincompress.common import cli, io
from fincompress.common.data import DATASET_INFO, SPLITS, compute_fingerprint
from fincompress.common.hub_models import hub_download
from fincompress.common.io import sha256_file
from fincompress.common.paths import LABELS, FinCompressError, add_root_argument, data_dir, project_root
from fincompress.common.raw_data import (
    AGREEMENT_FILES,
    COLUMNS,
    FIQA_FILES,
    FIQA_THRESHOLD,
    HUB_FIQA,
    HUB_PHRASEBANK,
    PHRASEBANK_ZIP,
    fiqa_inputs,
    fiqa_sentences_from_targets,
    normalise_text,
    parse_labelled_csv,
    phrasebank_file_name,
    phrasebank_input,
    read_fiqa,
    read_fiqa_parquet,
    read_phrasebank,
    read_phrasebank_zip,
)

log = logging.getLogger("fincompress.prepare_dataset")

CONFIG = {
    "agreement": "all",
    "fiqa_threshold": FIQA_THRESHOLD,
    "split": (0.70, 0.15, 0.15),
    "seed": 42,
    "min_stratum": 10,  # a label x source group smaller than this is stratified by its label alone
    "publish_wait_seconds": 120,  # how long a run waits for another run's swap of data/ (a few renames)
}
LOCAL_HINT = ("--source local --phrasebank-dir DIR --fiqa-dir DIR (both default to the assets folder: "
              "`python -m fincompress.assets` shows or fetches it), or the offline preset: "
              "python -m fincompress.pipeline --preset offline")


# ----------------------------------------------------------------------------- local release files

def load_local(phrasebank_dir: Path | None, fiqa_dir: Path | None, agreement: str) -> tuple[pd.DataFrame, dict]:
    """The release files (a missing folder defaults to the assets folder's copy)."""
    from fincompress.common.assets import asset_file

    phrasebank_dir = Path(phrasebank_dir) if phrasebank_dir else asset_file("data/financial_phrasebank")
    fiqa_dir = Path(fiqa_dir) if fiqa_dir else asset_file("data/fiqa_2018")
    if not phrasebank_dir.exists():
        raise FinCompressError(f"--phrasebank-dir {phrasebank_dir}: no such folder or zip (expected the Financial "
                               f"PhraseBank release: its Sentences_*.txt files or {PHRASEBANK_ZIP})")
    if not fiqa_dir.is_dir():
        raise FinCompressError(f"--fiqa-dir {fiqa_dir}: not a folder (expected the FiQA-2018 task 1 release: "
                               f"{', '.join(FIQA_FILES)})")
    frame = pd.concat([read_phrasebank(phrasebank_dir, agreement), read_fiqa(fiqa_dir)], ignore_index=True)
    return frame, {"phrasebank": describe_inputs([phrasebank_input(phrasebank_dir, agreement)]),
                   "fiqa": describe_inputs(fiqa_inputs(fiqa_dir))}


def describe_inputs(paths: list[Path]) -> dict[str, str]:
    """The sha256 of each file read (the provenance kept in dataset_info.json)."""
    return {str(Path(path).resolve()): sha256_file(path) for path in paths}


# ----------------------------------------------------------------------------- Hub

def hub_file(repo_id: str, filename: str, revision: str) -> Path:
    """One file of a Hub dataset repository at a pinned revision (from the Hugging Face cache when there)."""
    try:
        return hub_download(repo_id, filename, repo_type="dataset", revision=revision)
    except Exception as exc:  # huggingface_hub raises many types (offline, HTTP, not found, ...)
        first_line = (str(exc).splitlines() or [""])[0][:160]
        raise FinCompressError(f"could not download {filename} of the Hub dataset {repo_id} ({type(exc).__name__}: "
                               f"{first_line}). Offline, use the release files: {LOCAL_HINT}") from exc


def load_hub(agreement: str) -> tuple[pd.DataFrame, dict]:
    """PhraseBank from the release zip in its dataset repository, FiQA from its Parquet splits (pinned)."""
    zip_path = hub_file(HUB_PHRASEBANK["repo_id"], HUB_PHRASEBANK["filename"], HUB_PHRASEBANK["revision"])
    digest = sha256_file(zip_path)
    if digest != HUB_PHRASEBANK["sha256"]:
        raise FinCompressError(f"{zip_path}: sha256 {digest} is not the release's {HUB_PHRASEBANK['sha256']}; "
                               f"delete it from the Hugging Face cache and run again")
    phrasebank = read_phrasebank_zip(zip_path, agreement)
    split_files = {split: hub_file(HUB_FIQA["repo_id"], name, HUB_FIQA["revision"])
                   for split, name in HUB_FIQA["splits"].items()}
    targets = read_fiqa_parquet(split_files.values())
    fiqa = fiqa_sentences_from_targets(targets)
    provenance = {
        "phrasebank": {"repo_id": HUB_PHRASEBANK["repo_id"], "revision": HUB_PHRASEBANK["revision"],
                       "filename": HUB_PHRASEBANK["filename"], "sha256": digest,
                       "member": phrasebank_file_name(agreement)},
        "fiqa": {"repo_id": HUB_FIQA["repo_id"], "revision": HUB_FIQA["revision"],
                 "splits": {split: {"filename": HUB_FIQA["splits"][split], "sha256": sha256_file(path),
                                    "rows": int(pd.read_parquet(path, columns=["score"]).shape[0])}
                            for split, path in split_files.items()}},
    }
    return pd.concat([phrasebank, fiqa], ignore_index=True), provenance


# ----------------------------------------------------------------------------- your own CSV

def load_csv_files(data_file: Path | None, split_files: dict[str, Path | None]) -> tuple[dict[str, pd.DataFrame], dict]:
    """`--data-file` (one frame under "all") or the three `--*-file` splits, each parsed and checked."""
    given = {split: path for split, path in split_files.items() if path is not None}
    if data_file is not None and given:
        raise FinCompressError("--data-file and --train-file/--val-file/--test-file exclude each other: give one "
                               "file to split, or the three splits")
    if data_file is None and not given:
        raise FinCompressError("--source csv needs --data-file FILE (columns text,label), or --train-file, "
                               "--val-file and --test-file")
    if given and len(given) != len(SPLITS):
        missing = [f"--{split}-file" for split in SPLITS if split not in given]
        raise FinCompressError(f"--source csv with split files needs all three: missing {', '.join(missing)}")
    files = {"all": Path(data_file)} if data_file is not None else {s: Path(given[s]) for s in SPLITS}
    frames = {name: parse_labelled_csv(path) for name, path in files.items()}
    provenance = {name: {"file": str(path.resolve()), "sha256": sha256_file(path)} for name, path in files.items()}
    return frames, provenance


def clean_given_splits(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict]:
    """Clean each given split, then drop from val and test any text already in an earlier split (no leakage)."""
    splits, stats, seen = {}, {"raw": 0, "empty_dropped": 0, "conflicting_texts_dropped": 0,
                               "duplicates_dropped": 0, "overlap_dropped": 0}, set()
    for name in SPLITS:
        clean, part = clean_and_deduplicate(frames[name])
        for key in ("raw", "empty_dropped", "conflicting_texts_dropped", "duplicates_dropped"):
            stats[key] += part[key]
        keys = clean["text"].str.lower()
        overlap = keys.isin(seen)
        stats["overlap_dropped"] += int(overlap.sum())
        splits[name] = clean[~overlap].reset_index(drop=True)
        seen |= set(keys)
        if splits[name].empty:
            raise FinCompressError(f"--{name}-file: no texts left after cleaning and removing texts of earlier "
                                   f"splits")
    stats["total"] = sum(len(part) for part in splits.values())
    return splits, stats


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


def strata(frame: pd.DataFrame, min_size: int = CONFIG["min_stratum"]) -> pd.Series:
    """label x source; a stratum too small to split 70/15/15 falls back to its label alone."""
    combined = frame["label"].astype(str) + "|" + frame["source"]
    counts = combined.value_counts()
    rare = combined.isin(counts[counts < min_size].index)
    return combined.where(~rare, frame["label"].astype(str) + "|other")


def label_counts(frame: pd.DataFrame) -> str:
    counts = frame["label"].value_counts().reindex(range(len(LABELS)), fill_value=0)
    return ", ".join(f"{LABELS[i]} {int(c)}" for i, c in counts.items())


def _too_small(what: str, exc: Exception | None = None) -> FinCompressError:
    reason = f" ({str(exc).splitlines()[0]})" if exc is not None else ""
    return FinCompressError(f"{what}: too few texts for a stratified 70/15/15 split{reason}; use more data "
                            "(or a larger --sample-fraction, if you passed one)")


def stratified_sample(frame: pd.DataFrame, fraction: float, seed: int = CONFIG["seed"]) -> pd.DataFrame:
    """A stratified (label x source) share of the data: smoke runs on a tenth of it keep its mix."""
    if not 0 < fraction <= 1:
        raise FinCompressError(f"--sample-fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return frame
    try:
        sample, _ = train_test_split(frame, train_size=fraction, stratify=strata(frame), random_state=seed)
    except ValueError as exc:
        raise _too_small(f"--sample-fraction {fraction} keeps about {round(fraction * len(frame))} of {len(frame)} "
                         f"texts", exc) from exc
    return sample.reset_index(drop=True)


def stratified_split(frame: pd.DataFrame, fractions=CONFIG["split"], seed: int = CONFIG["seed"],
                     what: str = "the data") -> dict[str, pd.DataFrame]:
    """70/15/15 split stratified on label x source, deterministic for a seed; too little data is a clear error."""
    try:
        train, rest = train_test_split(frame, train_size=fractions[0], stratify=strata(frame), random_state=seed)
        val_share = fractions[1] / (fractions[1] + fractions[2])
        val, test = train_test_split(rest, train_size=val_share, stratify=strata(rest, min_size=4),
                                     random_state=seed)
    except ValueError as exc:
        raise _too_small(f"{what} ({len(frame)} texts: {label_counts(frame)})", exc) from exc
    splits = {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True),
              "test": test.reset_index(drop=True)}
    if any(part.empty for part in splits.values()):
        raise _too_small(f"{what} ({len(frame)} texts: {label_counts(frame)})")
    return splits


def check_every_class(splits: dict[str, pd.DataFrame], what: str) -> None:
    """Every split holds every class: a 3-class model is neither trained nor scored on fewer."""
    for name, part in splits.items():
        missing = [LABELS[i] for i in range(len(LABELS)) if not (part["label"] == i).any()]
        if missing:
            counts = "; ".join(f"{n}: {label_counts(p)}" for n, p in splits.items())
            raise FinCompressError(f"{what}: the {name} split has no {' or '.join(missing)} texts ({counts}); "
                                   f"every split needs every class ({', '.join(LABELS)}): add texts of the "
                                   "missing classes")


def class_table(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    rows = {}
    for name, part in {**splits, "all": pd.concat(splits.values())}.items():
        counts = part["label"].value_counts().reindex(range(len(LABELS)), fill_value=0)
        rows[name] = {**{LABELS[i]: int(c) for i, c in counts.items()}, "total": len(part),
                      **{f"{LABELS[i]} %": round(100 * c / max(1, len(part)), 1) for i, c in counts.items()}}
    return pd.DataFrame.from_dict(rows, orient="index")


def write_splits(root: Path, splits: dict[str, pd.DataFrame], info: dict) -> dict:
    """Write the CSVs and dataset_info.json as one set: into a private temporary folder, published with one
    swap of data/ (`io.publish_folder`), so a reader sees the previous complete set or the new one.

    Other files already in data/ are carried over (hard links where possible).
    """
    out = data_dir(root)
    tmp = io.private_temporary(out)
    try:
        tmp.mkdir(parents=True)
        for name in SPLITS:
            splits[name][COLUMNS].to_csv(tmp / f"{name}.csv", index=False)
        info = {**info, "fingerprint": compute_fingerprint([tmp / f"{s}.csv" for s in SPLITS]),
                "sizes": {name: len(splits[name]) for name in SPLITS}}
        (tmp / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        # Another run preparing this root waits here for the other's swap (seconds at most), then swaps its own:
        # both succeed, and data/ is always one run's complete set.
        with io.locked(data_lock(root), f"{out}", wait=CONFIG["publish_wait_seconds"]):
            io.recover(out, complete=lambda folder: (folder / DATASET_INFO).is_file())
            carry_over(out, tmp)
            io.publish_folder(tmp, out)
    except OSError as exc:
        raise io.as_user_error(exc, f"cannot write {out}", unchanged=previous_set(out)) from None
    finally:
        io.remove_path(tmp)
    return info


def data_lock(root: Path) -> Path:
    """The lock of <root>/data (held while a run swaps its set in), outside data/ so it is never carried over."""
    return Path(root) / ".cache" / "locks" / "data.lock"


def carry_over(old: Path, new: Path) -> None:
    """Files of data/ this stage does not write (a user's own) go into the new set too."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if not (new / entry.name).exists():
            if entry.is_dir():
                shutil.copytree(entry, new / entry.name, symlinks=True)
            else:
                try:
                    os.link(entry, new / entry.name)
                except OSError:
                    shutil.copy2(entry, new / entry.name)


def previous_set(out: Path) -> str:
    """What a failed write left in place, for its message."""
    splits = [out / f"{s}.csv" for s in SPLITS]
    if not all(path.is_file() for path in splits):
        return f"{out} is as it was (it held no complete set)"
    return f"{out} still holds the previous complete set (fingerprint {compute_fingerprint(splits)})"


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.data.prepare_dataset", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--source", choices=("hub", "local", "csv"), default="hub",
                        help="hub: the Hub's copies (default); local: the release files; csv: your labelled texts")
    parser.add_argument("--agreement", choices=tuple(AGREEMENT_FILES), default=CONFIG["agreement"],
                        help="Financial PhraseBank annotator-agreement level (default: all = 100%%)")
    parser.add_argument("--phrasebank-dir", type=Path,
                        help="with --source local: folder holding Sentences_*.txt or the release zip, or the zip "
                        "(default: the assets folder's data/financial_phrasebank)")
    parser.add_argument("--fiqa-dir", type=Path, help="with --source local: folder holding task1_*_ABSA_train.json "
                        "(default: the assets folder's data/fiqa_2018)")
    parser.add_argument("--data-file", type=Path, help="with --source csv: a CSV of text,label to split 70/15/15")
    for split in SPLITS:
        parser.add_argument(f"--{split}-file", type=Path, help=f"with --source csv: the {split} split as a CSV of "
                            "text,label (give all three, instead of --data-file)")
    parser.add_argument("--seed", type=cli.non_negative_int, default=CONFIG["seed"], help="split seed")
    parser.add_argument("--sample-fraction", type=cli.sample_fraction, default=1.0,
                        help="keep a stratified share of the deduplicated data before splitting (smoke runs)")
    return parser


def check_flags(args: argparse.Namespace) -> None:
    """Flags that belong to another --source are a mistake worth one line, not silently ignored."""
    owned = {"local": ("phrasebank_dir", "fiqa_dir"), "csv": ("data_file", *(f"{s}_file" for s in SPLITS))}
    for source, dests in owned.items():
        for dest in dests:
            if getattr(args, dest) is not None and args.source != source:
                raise FinCompressError(f"--{dest.replace('_', '-')} is for --source {source}, not --source "
                                       f"{args.source}")
    if args.source == "csv" and args.data_file is None and args.sample_fraction != 1.0:
        raise FinCompressError("--sample-fraction applies to --data-file (one file split here), not to given splits")


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    check_flags(args)
    root = project_root(args.root)
    io.check_writable(data_dir(root))  # before reading and cleaning: a read-only --root is one line now
    with io.file_system_errors(f"cannot prepare the data under {root}"):
        return prepare(args, root)


def prepare(args: argparse.Namespace, root: Path) -> dict:
    """Read the chosen source, clean, split and write the set (see the module docstring)."""
    info = {"source": args.source, "seed": args.seed, "sample_fraction": args.sample_fraction}
    if args.source == "csv":
        frames, inputs = load_csv_files(args.data_file, {s: getattr(args, f"{s}_file") for s in SPLITS})
        if "all" in frames:
            frame, stats = clean_and_deduplicate(frames["all"])
            frame = stratified_sample(frame, args.sample_fraction, args.seed)
            splits = stratified_split(frame, seed=args.seed, what=f"--data-file {args.data_file}")
        else:
            splits, stats = clean_given_splits(frames)
    else:
        if args.source == "local":
            raw, inputs = load_local(args.phrasebank_dir, args.fiqa_dir, args.agreement)
        else:
            raw, inputs = load_hub(args.agreement)
        info.update(agreement=args.agreement, fiqa_threshold=CONFIG["fiqa_threshold"])
        frame, stats = clean_and_deduplicate(raw)
        frame = stratified_sample(frame, args.sample_fraction, args.seed)
        splits = stratified_split(frame, seed=args.seed)
    check_every_class(splits, f"--data-file {args.data_file}" if args.data_file else f"--source {args.source}")
    kept = pd.concat(splits.values())
    info = write_splits(root, splits, {**info, **stats, "by_source": kept["source"].value_counts().to_dict(),
                                       "inputs": inputs, "config": args.config_values})
    print(f"{stats['raw']} raw rows -> {stats['total']} after dropping {stats['empty_dropped']} empty, "
          f"{stats['duplicates_dropped']} duplicate and {stats['conflicting_texts_dropped']} conflicting texts")
    print(class_table(splits).to_string())
    print(f"wrote {data_dir(root)} (fingerprint {info['fingerprint']})")
    return info


if __name__ == "__main__":
    raise SystemExit(cli.run(main))

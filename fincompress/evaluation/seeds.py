"""Spread over seeds: each variant's test macro F1 across its training runs, next to the canonical interval.

Reads  the canonical variants <root>/checkpoints/<name>/ and the seed runs under <root>/seeds/:
       seeds/seed<k>/          a project root whose data/ and checkpoints/teacher link to the canonical
                               ones; its training-based variants were trained with --seed k;
       seeds/teacher_seed<k>/  a project root with its own checkpoints/teacher trained with --seed k.
       Linked variant folders (the shared teacher) are not counted again. Test sentences:
       <root>/data/test.csv. Each variant runs in its native runtime through the one loader.
Writes <root>/results/seed_results.csv  one row per variant and run: variant, seed, run folder, test
                                        macro F1, accuracy, delta vs the teacher of the same run folder;
       <root>/results/seed_summary.csv  one row per variant: n_seeds, seeds, mean, sd (ddof=1), min,
                                        max of test macro F1, the canonical run's F1 with its 95%
                                        bootstrap interval, mean and sd of the delta vs the teacher;
       and prints the summary table.

A variant's seed is the run folder's (seed<k> / teacher_seed<k>): the layout says every variant in it
descends from a run with that seed (a stacked INT8 row's own `seed` is only its calibration sample's).
In the canonical root it is `hyperparameters.seed` from checkpoint_info.json.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, first_rows_of_every_class, read_split
from fincompress.common.io import atomic_write_text
from fincompress.common.loader import load_variant
from fincompress.common.metrics import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    add_bootstrap_arguments,
    bootstrap_macro_f1,
    classification_metrics,
)
from fincompress.common.paths import FinCompressError, add_root_argument, checkpoints_dir, project_root, results_dir
from fincompress.common.variants import list_variants, read_info

log = logging.getLogger("fincompress.seeds")

CONFIG = {"threads": 2, "teacher": "teacher", "seeds_folder": "seeds", "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
          "bootstrap_seed": BOOTSTRAP_SEED, "results": "seed_results.csv", "summary": "seed_summary.csv"}
CANONICAL = "."  # the run_folder value of the canonical root
SEED_FOLDER = re.compile(r"^(?:teacher_)?seed(\d+)$")
RESULT_COLUMNS = ["variant", "seed", "run_folder", "macro_f1", "accuracy", "delta_f1_vs_teacher", "data_fingerprint",
                  "created_at"]
SUMMARY_COLUMNS = ["variant", "n_seeds", "seeds", "mean_macro_f1", "sd_macro_f1", "min_macro_f1", "max_macro_f1",
                   "canonical_macro_f1", "canonical_ci_low", "canonical_ci_high", "mean_delta_vs_teacher",
                   "sd_delta_vs_teacher"]


@dataclass
class Run:
    """One project root holding variants of one training run: the canonical root or a seed sub-root."""

    folder: Path
    label: str  # "." or "seeds/seed<k>"
    seed: int | None  # from the folder name; None for the canonical root


def seed_runs(root: Path) -> list[Run]:
    """The canonical root, then every seeds/<name>/ holding checkpoints/, in seed order."""
    runs = [Run(root, CANONICAL, None)]
    parent = root / CONFIG["seeds_folder"]
    found = []
    for folder in sorted(parent.iterdir()) if parent.is_dir() else []:
        if folder.name.startswith(".") or not checkpoints_dir(folder).is_dir():
            continue
        match = SEED_FOLDER.match(folder.name)
        found.append(Run(folder, f"{CONFIG['seeds_folder']}/{folder.name}", int(match.group(1)) if match else None))
    return runs + sorted(found, key=lambda run: (run.label.split("/")[-1].startswith("teacher_"),
                                                 run.seed if run.seed is not None else -1, run.label))


def own_variants(run: Run) -> list[str]:
    """Variant folders of a run, without the linked ones (the shared canonical teacher)."""
    checkpoints = checkpoints_dir(run.folder)
    return [name for name in list_variants(checkpoints) if not (checkpoints / name).is_symlink()]


def recorded_seed(info: dict) -> int | None:
    seed = (info.get("hyperparameters") or {}).get("seed")
    return int(seed) if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) else None


def run_seed(run: Run, info: dict) -> int | None:
    """The seed a variant's numbers stand for: the run folder's, else the variant's recorded one."""
    return run.seed if run.seed is not None else recorded_seed(info)


def evaluate(folder: Path, texts: list[str], threads: int) -> np.ndarray:
    """Predicted labels of a variant on `texts` (native runtime, the one loader)."""
    predictor = load_variant(folder, threads=threads)
    return np.asarray(predictor.predict_proba(texts)).argmax(axis=-1)


def collect_results(root: Path, texts: list[str], labels: np.ndarray, teacher: str, threads: int
                    ) -> tuple[pd.DataFrame, dict[Path, np.ndarray]]:
    """One row per (variant, run); also the predictions of every evaluated folder (resolved path)."""
    predictions: dict[Path, np.ndarray] = {}
    fingerprint = data_fingerprint(root)

    def predicted(folder: Path) -> np.ndarray:
        resolved = folder.resolve()
        if resolved not in predictions:
            predictions[resolved] = evaluate(resolved, texts, threads)
        return predictions[resolved]

    rows = []
    for run in tqdm(seed_runs(root), desc="runs", leave=False):
        checkpoints = checkpoints_dir(run.folder)
        teacher_folder = checkpoints / teacher
        teacher_f1 = (classification_metrics(labels, predicted(teacher_folder))["macro_f1"]
                      if (teacher_folder / "checkpoint_info.json").is_file() else np.nan)
        for name in own_variants(run):
            info = read_info(checkpoints / name)
            if info.get("data_fingerprint") != fingerprint:
                log.warning("skipping %s in %s: made from data %s, but data/ is now %s (re-create the run)",
                            name, run.label, info.get("data_fingerprint"), fingerprint)
                continue
            metrics = classification_metrics(labels, predicted(checkpoints / name))
            seed, recorded = run_seed(run, info), recorded_seed(info)
            if run.seed is not None and recorded not in (None, run.seed):
                log.warning("%s in %s records seed %s, not the folder's %s: counted as seed %s",
                            name, run.label, recorded, run.seed, run.seed)
            rows.append({"variant": name, "seed": seed, "run_folder": run.label, "macro_f1": metrics["macro_f1"],
                         "accuracy": metrics["accuracy"],
                         "delta_f1_vs_teacher": np.nan if name == teacher else metrics["macro_f1"] - teacher_f1,
                         "data_fingerprint": info.get("data_fingerprint"), "created_at": info.get("created_at")})
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["seed"] = frame["seed"].astype("Int64")  # integers, empty where no seed is known
    return frame, predictions


def summarise(results: pd.DataFrame, canonical_intervals: dict[str, tuple[float, float]], teacher: str
              ) -> pd.DataFrame:
    """Per variant: mean, sd (ddof=1), min, max of test macro F1 over its runs; canonical F1 and interval."""
    rows = []
    for name, runs in results.groupby("variant", sort=False):
        f1 = runs["macro_f1"]
        canonical = runs.loc[runs["run_folder"] == CANONICAL, "macro_f1"]
        low, high = canonical_intervals.get(name, (np.nan, np.nan))
        deltas = runs["delta_f1_vs_teacher"].dropna()
        rows.append({"variant": name, "n_seeds": len(runs),
                     "seeds": ",".join("?" if pd.isna(s) else str(s) for s in runs["seed"]),
                     "mean_macro_f1": f1.mean(), "sd_macro_f1": f1.std(ddof=1) if len(f1) > 1 else np.nan,
                     "min_macro_f1": f1.min(), "max_macro_f1": f1.max(),
                     "canonical_macro_f1": canonical.iloc[0] if len(canonical) else np.nan,
                     "canonical_ci_low": low, "canonical_ci_high": high,
                     "mean_delta_vs_teacher": deltas.mean() if len(deltas) else np.nan,
                     "sd_delta_vs_teacher": deltas.std(ddof=1) if len(deltas) > 1 else np.nan})
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    # The teacher first (the reference), then the variants by name.
    return summary.sort_values("variant", key=lambda names: names.map(lambda n: (n != teacher, n)),
                               ignore_index=True)


def seed_summary(root: Path, teacher: str = CONFIG["teacher"], threads: int = CONFIG["threads"],
                 resamples: int = CONFIG["bootstrap_resamples"], bootstrap_seed: int = CONFIG["bootstrap_seed"],
                 max_test_samples: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run results, per-variant summary) of every run under `root`; see the module doc."""
    test = read_split(root, "test")
    test = first_rows_of_every_class(test, max_test_samples)
    texts, labels = test["text"].tolist(), test["label"].to_numpy()
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        results, predictions = collect_results(root, texts, labels, teacher, threads)
    finally:
        torch.set_num_threads(previous_threads)
    if results.empty:
        raise FinCompressError(f"no variants in {checkpoints_dir(root)} or {root / CONFIG['seeds_folder']}: "
                               "train the teacher first (python -m fincompress.teacher.train_teacher)")
    intervals = {name: bootstrap_macro_f1(labels, predictions[(checkpoints_dir(root) / name).resolve()],
                                          resamples, bootstrap_seed)
                 for name in results.loc[results["run_folder"] == CANONICAL, "variant"]}
    return results, summarise(results, intervals, teacher)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.seeds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--teacher", default=CONFIG["teacher"],
                        help="variant the deltas compare with, in each run folder (default teacher)")
    parser.add_argument("--threads", type=cli.positive_int, default=CONFIG["threads"],
                        help=f"CPU threads (default {CONFIG['threads']})")
    parser.add_argument("--max-test-samples", type=cli.positive_int,
                        help="evaluate on the first N test sentences only, with at least one of every class")
    add_bootstrap_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    results, summary = seed_summary(root, args.teacher, args.threads, args.bootstrap_resamples, args.bootstrap_seed,
                                    args.max_test_samples)
    out = results_dir(root)
    atomic_write_text(out / CONFIG["results"], results.to_csv(index=False))
    atomic_write_text(out / CONFIG["summary"], summary.to_csv(index=False))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out / CONFIG['results']} and {out / CONFIG['summary']}")
    return summary


if __name__ == "__main__":
    raise SystemExit(cli.run(main))

"""Scoring: accuracy and calibration of every loaded variant on the test split and each extra set, with intervals.

Reads nothing itself (the benchmark passes loaded predictors and texts); writes reliability diagrams
to <root>/results/plots/reliability_<variant>_<runtime>_<set>.png when asked.

- Macro F1 with a 95% percentile bootstrap interval (texts resampled); each row's difference from the
  reference (the FP32 teacher in PyTorch, else its ONNX Runtime row) with a paired interval: both
  models scored on the same resampled texts.
- ECE (15 equal-mass bins) with a bootstrap interval, NLL and Brier (evaluation/calibration.py).
- Extra sets get the same block, prefixed `<set>_`, and `<set>_delta_gap`: the set's difference from
  the teacher minus the test split's, with a paired interval (each set resampled with the same seed,
  both models on the same resampled texts). Below 0: compression costs more on that set.
- A variant whose probabilities are not (texts, 3) breaks the label contract: it is refused (or
  skipped with --skip-broken), never scored.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fincompress.common.eval_sets import EvalSet
from fincompress.common.loader import Predictor
from fincompress.common.metrics import (
    CONFIDENCE,
    bootstrap_macro_f1,
    macro_f1_from_labels,
    metrics_from_probabilities,
    paired_bootstrap_delta_f1,
)
from fincompress.common.paths import LABELS, FinCompressError
from fincompress.evaluation import calibration
from fincompress.evaluation.guard import guarded
from fincompress.evaluation.settings import BenchmarkSettings

TEST_SET = "test"
SET_COLUMNS = ("macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "delta_f1_vs_teacher", "delta_f1_ci_low",
               "delta_f1_ci_high", "ece", "ece_ci_low", "ece_ci_high", "nll", "brier", "delta_gap",
               "delta_gap_ci_low", "delta_gap_ci_high", "samples")
CALIBRATION_COLUMNS = ("ece", "ece_ci_low", "ece_ci_high", "nll", "brier")


def set_columns(name: str) -> list[str]:
    return [f"{name}_{column}" for column in SET_COLUMNS]


def checked_probabilities(predictor: Predictor, texts: list[str]) -> np.ndarray:
    """Probabilities of `texts`, refused unless one finite row of len(LABELS) per text (the label contract)."""
    probabilities = np.asarray(predictor.predict_proba(texts))
    expected = (len(texts), len(LABELS))
    if probabilities.shape != expected:
        raise FinCompressError(f"gives outputs of shape {probabilities.shape}, not {expected}: the project's "
                               f"{len(LABELS)} classes ({', '.join(LABELS)}) in that order")
    if not np.isfinite(probabilities).all():
        raise FinCompressError("gives non-finite probabilities (NaN or inf)")
    return probabilities


def row_of(predictor: Predictor, metrics: dict, samples: int) -> dict:
    info = predictor.info
    return {"model_name": predictor.name, "technique": info.get("technique", ""), "runtime": predictor.runtime,
            "num_parameters": info.get("num_parameters"), "size_mb": info.get("size_mb"),
            "source_checkpoint": info.get("source_checkpoint"), "test_samples": samples,
            "calibration_temperature": predictor.temperature,
            **{k: v for k, v in metrics.items() if k != "confusion_matrix"}}


def accuracy_rows(predictors: list[Predictor], texts: list[str], labels: np.ndarray, settings: BenchmarkSettings,
                  skipped: list[dict], on_row=None) -> tuple[list[Predictor], list[dict], list[np.ndarray]]:
    """Test metrics of every predictor that runs; returns the predictors kept, their rows and probabilities.

    on_row(row) is called with each finished row (the benchmark keeps a partial file of them).
    """
    kept, rows, probabilities = [], [], []
    for predictor in tqdm(predictors, desc="accuracy", leave=False):
        scores = guarded(predictor.name, predictor.runtime, lambda p=predictor: checked_probabilities(p, texts),
                         settings.skip_broken, skipped)
        if scores is None:
            continue
        row = row_of(predictor, metrics_from_probabilities(labels, scores), len(texts))
        row.update(calibration.calibration_metrics(labels, scores, settings.bootstrap_resamples,
                                                   settings.bootstrap_seed))
        kept.append(predictor)
        rows.append(row)
        probabilities.append(scores)
        if on_row is not None:
            on_row(row)
    return kept, rows, probabilities


def reference_index(rows: list[dict], teacher: str) -> int | None:
    """The row every delta is measured against: the FP32 teacher in PyTorch, else in ONNX Runtime."""
    for runtime in ("torch", "onnxruntime"):
        for index, row in enumerate(rows):
            if row["model_name"] == teacher and row["runtime"] == runtime:
                return index
    return None


def add_intervals(rows: list[dict], predictions: list[np.ndarray], labels: np.ndarray, teacher: str,
                  resamples: int, seed: int, prefix: str = "") -> str | None:
    """Bootstrap interval of every row's macro F1, paired interval of its difference from the teacher.

    predictions: predicted class ids per row. Returns the reference row's "<name> (<runtime>)", or None
    (no teacher row: deltas are NaN).
    """
    reference = reference_index(rows, teacher)
    for row, predicted in zip(rows, predictions):
        row[f"{prefix}macro_f1_ci_low"], row[f"{prefix}macro_f1_ci_high"] = bootstrap_macro_f1(
            labels, predicted, resamples, seed)
        names = [f"{prefix}delta_f1_vs_teacher", f"{prefix}delta_f1_ci_low", f"{prefix}delta_f1_ci_high"]
        values = (math.nan,) * 3 if reference is None else paired_bootstrap_delta_f1(
            labels, predicted, predictions[reference], resamples, seed)
        row.update(zip(names, values))
    return None if reference is None else f"{rows[reference]['model_name']} ({rows[reference]['runtime']})"


def resampled_deltas(labels: np.ndarray, predicted: np.ndarray, reference: np.ndarray, resamples: int,
                     seed: int) -> np.ndarray:
    """Macro F1 difference on each of `resamples` resamples of the texts (indices drawn from `seed`)."""
    index = np.random.default_rng(seed).integers(0, len(labels), size=(resamples, len(labels)))
    return (macro_f1_from_labels(labels[index], predicted[index])
            - macro_f1_from_labels(labels[index], reference[index]))


def delta_gap(test: tuple[np.ndarray, np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray, np.ndarray],
              resamples: int, seed: int) -> tuple[float, float, float]:
    """(delta on the other set) - (delta on the test split) and its percentile interval.

    Each triple is (labels, predicted, reference predicted); the two sets are independent samples, so
    each is resampled on its own (same seed), both models on the same resampled texts of a set.
    """
    def point(labels, predicted, reference):
        return float(macro_f1_from_labels(labels, predicted) - macro_f1_from_labels(labels, reference))

    if len(test[0]) < 2 or len(other[0]) < 2:
        return point(*other) - point(*test), math.nan, math.nan
    gaps = resampled_deltas(*other, resamples, seed) - resampled_deltas(*test, resamples, seed)
    tail = 100 * (1 - CONFIDENCE) / 2
    return point(*other) - point(*test), float(np.percentile(gaps, tail)), float(np.percentile(gaps, 100 - tail))


def set_probabilities(predictors: list[Predictor], eval_set: EvalSet, settings: BenchmarkSettings,
                      skipped: list[dict]) -> list[np.ndarray | None]:
    """Each predictor's probabilities on the set (None where it failed and --skip-broken skips it)."""
    return [guarded(p.name, f"{p.runtime}, set {eval_set.name}", lambda p=p: checked_probabilities(p, eval_set.texts),
                    settings.skip_broken, skipped) for p in tqdm(predictors, desc=eval_set.name, leave=False)]


def score_eval_set(rows: list[dict], predictors: list[Predictor], eval_set: EvalSet, test: tuple[np.ndarray, list],
                   settings: BenchmarkSettings, skipped: list[dict]) -> list[np.ndarray | None]:
    """Add the `<set>_` block of columns to every row; returns each row's probabilities on the set."""
    prefix, labels = f"{eval_set.name}_", eval_set.labels
    scores = set_probabilities(predictors, eval_set, settings, skipped)
    for row in rows:
        row.update(dict.fromkeys(set_columns(eval_set.name), math.nan))
    scored = [i for i, s in enumerate(scores) if s is not None]
    predicted = [scores[i].argmax(-1) for i in scored]
    add_intervals([rows[i] for i in scored], predicted, labels, settings.teacher, settings.bootstrap_resamples,
                  settings.bootstrap_seed, prefix)
    reference = reference_index([rows[i] for i in scored], settings.teacher)
    test_labels, test_predicted = test[0], [p.argmax(-1) for p in test[1]]
    test_reference = reference_index(rows, settings.teacher)
    for position, i in enumerate(scored):
        row = rows[i]
        row[f"{prefix}macro_f1"] = metrics_from_probabilities(labels, scores[i])["macro_f1"]
        row[f"{prefix}samples"] = len(labels)
        calibrated = calibration.calibration_metrics(labels, scores[i], settings.bootstrap_resamples,
                                                     settings.bootstrap_seed)
        row.update({prefix + k: v for k, v in calibrated.items()})
        if reference is not None and test_reference is not None:
            gap = delta_gap((test_labels, test_predicted[i], test_predicted[test_reference]),
                            (labels, predicted[position], predicted[reference]), settings.bootstrap_resamples,
                            settings.bootstrap_seed)
            row[f"{prefix}delta_gap"], row[f"{prefix}delta_gap_ci_low"], row[f"{prefix}delta_gap_ci_high"] = gap
    return scores


def reliability_plots(folder: Path, rows: list[dict], labels: np.ndarray, probabilities: list[np.ndarray | None],
                      set_name: str) -> list[Path]:
    """One reliability diagram per row that was scored on the set."""
    paths = []
    for row, scores in zip(rows, probabilities):
        if scores is None:
            continue
        title = f"{row['model_name']} ({row['runtime']}), {set_name}"
        path = folder / f"reliability_{row['model_name']}_{row['runtime']}_{set_name}.png"
        paths.append(calibration.reliability_diagram(labels, scores, path, title))
    return paths

"""Classification metrics (scikit-learn), in the project's label order."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from fincompress.common import cli
from fincompress.common.paths import LABELS


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    """Macro F1, accuracy, per-class F1 and the confusion matrix (rows = truth)."""
    labels = list(range(len(LABELS)))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    metrics = {
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
    }
    for name, value in zip(LABELS, per_class):
        metrics[f"f1_{name}"] = float(value)
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    return metrics


def metrics_from_probabilities(y_true: Sequence[int], probabilities: np.ndarray) -> dict:
    return classification_metrics(y_true, np.asarray(probabilities).argmax(axis=-1))


# ----------------------------------------------------------------------------- bootstrap intervals
# Test sets here are small (506 sentences): a point F1 alone cannot say whether two variants differ.
# Percentile bootstrap over test sentences (scipy.stats.bootstrap); the statistic is vectorised over
# resamples (confusion counts with numpy), since sklearn's f1_score in a loop of 1000 would dominate.

CONFIDENCE = 0.95


def macro_f1_from_labels(y_true: np.ndarray, y_pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """Macro F1 (sklearn's, zero_division=0) of each 1-D slice along `axis`; any leading batch shape."""
    y_true, y_pred = np.moveaxis(np.asarray(y_true), axis, -1), np.moveaxis(np.asarray(y_pred), axis, -1)
    classes = len(LABELS)
    batch_shape = y_true.shape[:-1]
    rows = int(np.prod(batch_shape, dtype=int))
    # One bincount over (slice, true, predicted) cells gives every slice's confusion matrix at once.
    cells = (y_true.reshape(rows, -1) * classes + y_pred.reshape(rows, -1)
             + classes * classes * np.arange(rows)[:, None])
    confusion = np.bincount(cells.ravel(), minlength=rows * classes * classes).reshape(rows, classes, classes)
    true_positives = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)  # 2TP + FP + FN
    f1 = np.divide(2.0 * true_positives, denominator, out=np.zeros(true_positives.shape), where=denominator > 0)
    return f1.mean(axis=-1).reshape(batch_shape)


def _percentile_interval(data: tuple[np.ndarray, ...], statistic, resamples: int, seed: int,
                         confidence: float) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if len(data[0]) < 2:  # one sentence has no sampling distribution
        return float("nan"), float("nan")
    # paired=True: one set of resampled sentence indices is applied to every array (truth and each model).
    result = bootstrap(data, statistic, paired=True, vectorized=True, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def bootstrap_macro_f1(y_true: Sequence[int], y_pred: Sequence[int], resamples: int = 1000, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of macro F1, resampling sentences (same seed -> same interval)."""
    data = (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64))
    return _percentile_interval(data, macro_f1_from_labels, resamples, seed, confidence)


def paired_bootstrap_delta_f1(y_true: Sequence[int], y_pred: Sequence[int], y_pred_reference: Sequence[int],
                              resamples: int = 1000, seed: int = 0,
                              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Macro F1 of `y_pred` minus that of `y_pred_reference`, and its paired bootstrap interval.

    Both models are scored on the same resampled sentences, so sentence difficulty cancels out:
    the interval is that of the difference, much narrower than two separate intervals suggest.
    """
    data = tuple(np.asarray(a, dtype=np.int64) for a in (y_true, y_pred, y_pred_reference))

    def delta(truth: np.ndarray, pred: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
        return macro_f1_from_labels(truth, pred, axis) - macro_f1_from_labels(truth, reference, axis)

    low, high = _percentile_interval(data, delta, resamples, seed, confidence)
    return float(delta(*data)), low, high


def paired_bootstrap_speedup(reference_ms: Sequence[float], timing_ms: Sequence[float], resamples: int = 1000,
                             seed: int = 0, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """How many times faster `timing_ms` is than `reference_ms` (ratio of medians), and its paired interval.

    The two lists are timed in the same repetitions (call r of each, interleaved, on the same input), so
    resampling repetitions keeps the pairs: machine drift during the run moves both sides alike.
    """
    data = (np.asarray(reference_ms, dtype=np.float64), np.asarray(timing_ms, dtype=np.float64))
    if len(data[0]) != len(data[1]):
        raise ValueError(f"paired timings differ in length: {len(data[0])} vs {len(data[1])}")

    def speedup(reference: np.ndarray, timing: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(reference, axis=axis) / np.median(timing, axis=axis)

    low, high = _percentile_interval(data, speedup, resamples, seed, confidence)
    return float(speedup(*data)), low, high


BOOTSTRAP_RESAMPLES, MIN_BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 1000, 100, 0


def resample_count(text: str) -> int:
    """Bootstrap resamples: enough that the 2.5th/97.5th percentiles do not move with the seed."""
    value = cli.positive_int(text)
    if value < MIN_BOOTSTRAP_RESAMPLES:
        raise argparse.ArgumentTypeError(f"must be >= {MIN_BOOTSTRAP_RESAMPLES} for a 95% interval "
                                         f"(1000 or more recommended), got {text}")
    return value


def add_bootstrap_arguments(parser: argparse.ArgumentParser) -> None:
    """`--bootstrap-resamples` and `--bootstrap-seed`, the same for every stage that reports intervals."""
    parser.add_argument("--bootstrap-resamples", type=resample_count, default=BOOTSTRAP_RESAMPLES,
                        help=f"bootstrap resamples of the test sentences (default {BOOTSTRAP_RESAMPLES})")
    parser.add_argument("--bootstrap-seed", type=cli.non_negative_int, default=BOOTSTRAP_SEED,
                        help=f"seed of the resampling (default {BOOTSTRAP_SEED}): same seed, same intervals")

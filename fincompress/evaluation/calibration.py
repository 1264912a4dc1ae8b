"""Calibration: are a variant's probabilities honest? ECE, NLL, Brier, reliability diagrams, temperature.

As a command (`python -m fincompress.evaluation.calibration --variant NAME`):
Reads  <root>/checkpoints/NAME/ through the one loader (PyTorch for FP32, ONNX Runtime for INT8) and the
       validation split <root>/data/val.csv.
Writes <root>/checkpoints/NAME/checkpoint_info.json, whole or not at all, with
       "calibration": {"temperature", "fitted_on": "val", "data_fingerprint", "val_ece_before",
       "val_ece_after", "val_nll_before", "val_nll_after"}. The loader divides the variant's logits by
       this temperature, so the demo, the server and the benchmark report calibrated probabilities;
       `--remove` deletes the record (raw probabilities again).

Metrics (Guo et al. 2017, "On calibration of modern neural networks"):
- ECE: 15 equal-mass bins of the top-class confidence; the mean over bins of |accuracy - confidence|,
  weighted by bin size; 0 is perfectly calibrated. Its 95% interval resamples the texts (bootstrap).
- NLL: mean negative log-likelihood of the true class (sklearn log_loss); Brier: mean squared distance
  of the probability vector from the one-hot truth (0 best, 2 worst).
Temperature scaling divides the logits by one T > 0 fitted to minimise the validation NLL; it never
changes which class is predicted.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from fincompress.common import cli
from fincompress.common.data import data_fingerprint, read_split
from fincompress.common.io import atomic_write, atomic_write_text
from fincompress.common.loader import Predictor, load_variant, softmax
from fincompress.common.metrics import _percentile_interval
from fincompress.common.paths import LABELS, FinCompressError, add_root_argument, checkpoints_dir, project_root
from fincompress.common.variants import INFO_FILE, read_info, select_variants

log = logging.getLogger("fincompress.calibration")

CONFIG = {"bins": 15, "temperature_bounds": (0.05, 20.0), "batch_size": 64, "threads": 2}


# ----------------------------------------------------------------------------- metrics

def as_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """float64 rows renormalised to sum 1: a float32 softmax (the loader's) is off by ~1e-7 per row, which
    sklearn's log_loss reports as "y_prob values do not sum to one"; the ranking of classes is unchanged."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities / probabilities.sum(axis=-1, keepdims=True)


def ece_from_confidence(confidence: np.ndarray, correct: np.ndarray, axis: int = -1,
                        bins: int = CONFIG["bins"]) -> np.ndarray:
    """ECE over equal-mass bins of each 1-D slice along `axis` (any leading batch shape: bootstrap)."""
    confidence = np.moveaxis(np.asarray(confidence, dtype=np.float64), axis, -1)
    correct = np.moveaxis(np.asarray(correct, dtype=np.float64), axis, -1)
    order = np.argsort(confidence, axis=-1, kind="stable")
    confidence, correct = np.take_along_axis(confidence, order, -1), np.take_along_axis(correct, order, -1)
    n = confidence.shape[-1]
    starts = np.unique(np.linspace(0, n, min(bins, n) + 1).astype(int)[:-1])
    gap = np.add.reduceat(correct, starts, axis=-1) - np.add.reduceat(confidence, starts, axis=-1)
    return np.abs(gap).sum(axis=-1) / n  # sum_b |n_b acc_b - n_b conf_b| / n = sum_b (n_b/n) |acc_b - conf_b|


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = CONFIG["bins"]) -> float:
    probabilities = as_probabilities(probabilities)
    correct = probabilities.argmax(axis=-1) == np.asarray(labels)
    return float(ece_from_confidence(probabilities.max(axis=-1), correct, bins=bins))


def nll(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(log_loss(labels, as_probabilities(probabilities), labels=list(range(len(LABELS)))))


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    one_hot = np.eye(len(LABELS))[np.asarray(labels)]
    return float(np.mean(np.sum((as_probabilities(probabilities) - one_hot) ** 2, axis=-1)))


def calibration_metrics(labels: np.ndarray, probabilities: np.ndarray, resamples: int, seed: int) -> dict:
    """ECE with its bootstrap interval (texts resampled with `seed`), NLL and Brier."""
    probabilities = as_probabilities(probabilities)
    confidence = probabilities.max(axis=-1)
    correct = (probabilities.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
    low, high = _percentile_interval((confidence, correct), ece_from_confidence, resamples, seed, 0.95)
    return {"ece": float(ece_from_confidence(confidence, correct)), "ece_ci_low": low, "ece_ci_high": high,
            "nll": nll(labels, probabilities), "brier": brier(labels, probabilities)}


def reliability_diagram(labels: np.ndarray, probabilities: np.ndarray, path: Path, title: str) -> Path:
    """Accuracy against confidence of the top class in equal-mass bins (sklearn's quantile strategy)."""
    from matplotlib.figure import Figure  # no pyplot state: works headless and in notebooks

    probabilities = as_probabilities(probabilities)
    correct = (probabilities.argmax(axis=-1) == np.asarray(labels)).astype(int)
    confidence = probabilities.max(axis=-1)
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=CONFIG["bins"], strategy="quantile")
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ece = expected_calibration_error(labels, probabilities)
    axes.plot(mean_confidence, accuracy, marker="o", label=f"ECE {ece:.3f}")
    axes.set(xlabel="confidence (top class)", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left")
    figure.tight_layout()
    return atomic_write(Path(path), lambda tmp: figure.savefig(tmp, dpi=110, format="png"))


# ----------------------------------------------------------------------------- temperature scaling

def raw_logits(predictor: Predictor, texts: list[str], batch_size: int = CONFIG["batch_size"]) -> np.ndarray:
    """The variant's logits before any calibration temperature (what a temperature is fitted on)."""
    chunks = [np.asarray(predictor.logits(predictor.encode(texts[i:i + batch_size])), dtype=np.float64)
              for i in range(0, len(texts), batch_size)]
    return np.concatenate(chunks)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the NLL of softmax(logits / T) (searched on log T, within CONFIG's bounds)."""
    low, high = np.log(CONFIG["temperature_bounds"])
    result = minimize_scalar(lambda log_t: nll(labels, softmax(logits, float(np.exp(log_t)))),
                             bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def calibrate_variant(root: Path, name: str, threads: int = CONFIG["threads"]) -> dict:
    """Fit the temperature of checkpoints/NAME on the validation split and record it in its info file."""
    folder = checkpoints_dir(root) / name
    info = read_info(folder)
    val = read_split(root, "val")
    texts, labels = val["text"].tolist(), val["label"].to_numpy()
    logits = raw_logits(load_variant(folder, threads=threads), texts)
    if logits.ndim != 2 or logits.shape[1] != len(LABELS):
        raise FinCompressError(f"variant {name!r} gives logits of shape {logits.shape}, not (texts, {len(LABELS)})")
    temperature = fit_temperature(logits, labels)
    before, after = softmax(logits), softmax(logits, temperature)
    record = {"temperature": temperature, "fitted_on": "val", "data_fingerprint": data_fingerprint(root),
              "val_samples": len(texts),
              "val_ece_before": expected_calibration_error(labels, before),
              "val_ece_after": expected_calibration_error(labels, after),
              "val_nll_before": nll(labels, before), "val_nll_after": nll(labels, after)}
    write_info(folder, {**info, "calibration": record})
    return record


def remove_calibration(root: Path, name: str) -> None:
    folder = checkpoints_dir(root) / name
    info = read_info(folder)
    info.pop("calibration", None)
    write_info(folder, info)


def write_info(folder: Path, info: dict) -> None:
    """checkpoint_info.json replaced whole (a reader sees the old record or the new one)."""
    atomic_write_text(folder / INFO_FILE, json.dumps(info, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fincompress.evaluation.calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_root_argument(parser)
    parser.add_argument("--variant", required=True, help="variant folder name under checkpoints/ (comma-separated "
                        "for several)")
    parser.add_argument("--threads", type=cli.positive_int, default=CONFIG["threads"],
                        help=f"CPU threads (default {CONFIG['threads']})")
    parser.add_argument("--remove", action="store_true", help="delete the variant's calibration record instead")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = cli.parse_args(build_parser(), argv)
    root = project_root(args.root)
    records = {}
    for name in select_variants(root, args.variant):
        if args.remove:
            remove_calibration(root, name)
            print(f"{name}: calibration removed")
            continue
        record = records[name] = calibrate_variant(root, name, args.threads)
        print(f"{name}: temperature {record['temperature']:.3f}; validation ECE {record['val_ece_before']:.4f} -> "
              f"{record['val_ece_after']:.4f}, NLL {record['val_nll_before']:.4f} -> {record['val_nll_after']:.4f}")
    return records


if __name__ == "__main__":
    raise SystemExit(cli.run(main))

"""Calibration metrics, and temperature scaling recorded in checkpoint_info.json and applied by the loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fincompress.common.data import read_split
from fincompress.common.loader import load_variant, softmax
from fincompress.common.paths import FinCompressError
from fincompress.distillation import soft_label_distillation
from fincompress.evaluation import calibration
from fincompress.quantization import ptq

TINY_STUDENT = ["--student-layers", "1", "--student-hidden", "32", "--student-heads", "2", "--student-ffn", "64"]


def naive_ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    order = np.argsort(confidence, kind="stable")
    edges = np.linspace(0, len(order), bins + 1).astype(int)  # equal mass: n/bins texts each, rounded down
    total = 0.0
    for chunk in (order[a:b] for a, b in zip(edges[:-1], edges[1:])):
        total += len(chunk) * abs(correct[chunk].mean() - confidence[chunk].mean())
    return total / len(confidence)


def test_vectorised_ece_matches_a_loop_over_equal_mass_bins():
    rng = np.random.default_rng(0)
    confidence, correct = rng.uniform(0.34, 1, 301), rng.uniform(size=301) < 0.7
    batch = np.stack([confidence, confidence[::-1]])
    expected = [naive_ece(confidence, correct, 15), naive_ece(confidence[::-1], correct, 15)]
    np.testing.assert_allclose(calibration.ece_from_confidence(batch, np.stack([correct, correct])), expected)


def test_honest_probabilities_score_near_zero_and_overconfident_ones_do_not():
    rng = np.random.default_rng(1)
    n = 4000
    labels = rng.integers(0, 3, n)
    honest = np.full((n, 3), 0.2)
    honest[np.arange(n), labels] = 0.6  # the true class at 0.6 ...
    flip = rng.uniform(size=n) < 0.4  # ... is right 60% of the time: move the 0.6 elsewhere for 40%
    wrong = (labels + 1) % 3
    honest[flip] = 0.2
    honest[flip, wrong[flip]] = 0.6
    overconfident = np.where(honest == 0.6, 0.98, 0.01)
    assert calibration.expected_calibration_error(labels, honest) < 0.03
    assert calibration.expected_calibration_error(labels, overconfident) > 0.3
    metrics = calibration.calibration_metrics(labels, overconfident, resamples=200, seed=0)
    assert metrics["ece_ci_low"] <= metrics["ece"] <= metrics["ece_ci_high"]
    assert metrics["nll"] > calibration.nll(labels, honest)
    one_hot = np.eye(3)[labels]
    assert calibration.brier(labels, one_hot) == 0 and calibration.brier(labels, honest) > 0


def test_a_temperature_is_found_that_undoes_a_known_scaling():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 3000)
    true_logits = rng.normal(size=(3000, 3))
    labels = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    assert calibration.fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.15)


def calibrate_and_check(root, name: str) -> None:
    record = calibration.calibrate_variant(root, name, threads=1)
    folder = root / "checkpoints" / name
    info = json.loads((folder / "checkpoint_info.json").read_text())
    assert info["calibration"] == pytest.approx(record) and record["fitted_on"] == "val"
    assert record["val_ece_after"] < record["val_ece_before"]
    val = read_split(root, "val")["text"].tolist()
    predictor = load_variant(folder, threads=1)
    raw = calibration.raw_logits(predictor, val)
    calibrated = predictor.predict_proba(val)
    assert predictor.temperature == pytest.approx(record["temperature"]) and record["temperature"] != 1.0
    np.testing.assert_array_equal(calibrated.argmax(-1), raw.argmax(-1))  # predictions unchanged
    np.testing.assert_allclose(calibrated, softmax(raw, record["temperature"]), atol=1e-5)


def test_temperature_scaling_lowers_val_ece_of_the_teacher_and_an_int8_student(work_root):
    soft_label_distillation.main(["--root", str(work_root), "--max-steps", "3", "--batch-size", "16",
                                  *TINY_STUDENT, "--student-init", "scratch"])
    ptq.main(["--root", str(work_root), "--source", "student_vanilla_kd", "--recipe", "dynamic",
              "--output-name", "student_int8"])
    for name in ("teacher", "student_int8"):
        calibrate_and_check(work_root, name)
    calibration.main(["--root", str(work_root), "--variant", "teacher", "--remove"])
    assert "calibration" not in json.loads((work_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())


def test_an_unknown_variant_is_refused(work_root):
    with pytest.raises(FinCompressError, match="unknown variant"):
        calibration.main(["--root", str(work_root), "--variant", "nope"])

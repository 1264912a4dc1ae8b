"""Calibration metrics, and temperature scaling recorded in checkpoint_info.json and applied by the loader."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fincompress.common.data import read_split
from fincompress.common.loader import load_variant, softmax
from fincompress.common.paths import LABEL2ID, FinCompressError
from fincompress.evaluation import calibration
from fincompress.quantization import ptq


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


# ----------------------------------------------------------------------------- temperature scaling end to end

def rewrite_layer(folder, change, layer: str = "classifier") -> None:
    """Replace one linear layer of the FP32 variant in `folder`: change(weight, bias) -> (weight, bias)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    keys = (f"{layer}.weight", f"{layer}.bias")
    weights[keys[0]], weights[keys[1]] = change(weights[keys[0]], weights[keys[1]])
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def skilled_copy(root, name: str, texts: list[str], labels: np.ndarray):
    """checkpoints/NAME: the tiny teacher (a few steps, near-uniform logits) with a classifier that knows the
    texts: a logistic regression on its pooled outputs, so its probabilities have something to calibrate."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = root / "checkpoints" / name
    shutil.copytree(root / "checkpoints" / "teacher", folder)
    # A sharper pooler (tanh near +-1) makes the texts' features differ by more than an INT8 rounding step.
    rewrite_layer(folder, lambda weight, bias: (weight * 30, bias * 30), layer="bert.pooler.dense")
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    encoded = AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, max_length=128,
                                                     return_tensors="pt")
    with torch.no_grad():
        pooled = model.bert(**encoded).pooler_output.numpy()
    regression = LogisticRegression(C=10.0, max_iter=2000).fit(pooled, labels)  # classes 0..2: project order
    # The tiny model's own label order differs: its row i scores the project label of id2label[i].
    rows = [LABEL2ID[model.config.id2label[i]] for i in range(len(LABEL2ID))]
    coef, intercept = (torch.tensor(a[rows], dtype=torch.float32) for a in (regression.coef_, regression.intercept_))
    rewrite_layer(folder, lambda weight, bias: (coef, intercept))
    return folder


def miscalibrated_copy(root, name: str, best_temperature: float):
    """A skilled copy whose logits are scaled so that `best_temperature` is the validation NLL's optimum:
    above 1 over-confident, below 1 under-confident; the argmax is the skilled copy's."""
    val = read_split(root, "val")
    texts, labels = val["text"].tolist(), val["label"].to_numpy()
    folder = skilled_copy(root, name, texts, labels)
    skilled_logits = calibration.raw_logits(load_variant(folder), texts)
    factor = best_temperature / calibration.fit_temperature(skilled_logits, labels)
    rewrite_layer(folder, lambda weight, bias: (weight * factor, bias * factor))
    return folder, skilled_logits.argmax(-1)


def calibrate_and_check(root, name: str) -> None:
    record = calibration.calibrate_variant(root, name, threads=1)
    folder = root / "checkpoints" / name
    info = json.loads((folder / "checkpoint_info.json").read_text())
    assert info["calibration"] == pytest.approx(record) and record["fitted_on"] == "val"
    assert record["val_ece_after"] < record["val_ece_before"] and record["val_nll_after"] < record["val_nll_before"]
    val = read_split(root, "val")["text"].tolist()
    predictor = load_variant(folder, threads=1)
    raw = calibration.raw_logits(predictor, val, batch_size=32)  # predict_proba's batches: INT8 scales per batch
    calibrated = predictor.predict_proba(val)
    assert predictor.temperature == pytest.approx(record["temperature"]) and record["temperature"] != 1.0
    np.testing.assert_array_equal(calibrated.argmax(-1), raw.argmax(-1))  # predictions unchanged
    np.testing.assert_allclose(calibrated, softmax(raw, record["temperature"]), atol=1e-5)


def test_temperature_scaling_lowers_val_ece_of_an_fp32_model_and_its_int8_copy(work_root):
    # The tiny teacher alone (a few steps) is near-uniform: its ECE is float noise. An over-confident skilled
    # copy, and its INT8 copy (ONNX Runtime), have a calibration error a temperature can remove.
    miscalibrated_copy(work_root, "overconfident", 4.0)
    ptq.main(["--root", str(work_root), "--source", "overconfident", "--recipe", "dynamic",
              "--output-name", "overconfident_int8"])
    for name in ("overconfident", "overconfident_int8"):
        calibrate_and_check(work_root, name)
    calibration.main(["--root", str(work_root), "--variant", "overconfident", "--remove"])
    info = json.loads((work_root / "checkpoints" / "overconfident" / "checkpoint_info.json").read_text())
    assert "calibration" not in info


def test_an_unknown_variant_is_refused(work_root):
    with pytest.raises(FinCompressError, match="unknown variant"):
        calibration.main(["--root", str(work_root), "--variant", "nope"])


# ----------------------------------------------------------------------------- sklearn's probability check

SUM_WARNING = "y_prob values do not sum to one"


def test_metrics_of_float32_softmax_rows_raise_no_probability_warning():
    import warnings

    from sklearn.metrics import log_loss

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, 500)
    probabilities = softmax(rng.normal(scale=5.0, size=(500, 3)))  # float32, as the loader returns them
    with pytest.warns(UserWarning, match=SUM_WARNING):  # the input really trips sklearn's check ...
        log_loss(labels, probabilities.astype(np.float64), labels=[0, 1, 2])
    with warnings.catch_warnings():  # ... and the project's metrics do not
        warnings.filterwarnings("error", message=f".*{SUM_WARNING}")
        metrics = calibration.calibration_metrics(labels, probabilities, resamples=100, seed=0)
        temperature = calibration.fit_temperature(np.log(probabilities), labels)
    expected = log_loss(labels, probabilities / probabilities.sum(-1, keepdims=True, dtype=np.float64))
    assert metrics["nll"] == pytest.approx(expected) and temperature > 0


@pytest.mark.parametrize("miscalibration", [4.0, 0.25], ids=["over-confident", "under-confident"])
def test_temperature_scaling_repairs_an_over_and_an_under_confident_model(work_root, miscalibration):
    val = read_split(work_root, "val")
    texts, labels = val["text"].tolist(), val["label"].to_numpy()
    folder, skilled_argmax = miscalibrated_copy(work_root, name := "miscalibrated", miscalibration)
    record = calibration.main(["--root", str(work_root), "--variant", name, "--threads", "1"])[name]
    assert record["temperature"] == pytest.approx(miscalibration, rel=0.05)
    assert record["val_ece_after"] < record["val_ece_before"]
    assert record["val_nll_after"] < record["val_nll_before"]
    predictor = load_variant(folder)  # the loader applies the recorded T
    raw = calibration.raw_logits(predictor, texts)
    calibrated = predictor.predict_proba(texts)
    np.testing.assert_array_equal(calibrated.argmax(-1), raw.argmax(-1))
    np.testing.assert_array_equal(raw.argmax(-1), skilled_argmax)
    assert calibration.expected_calibration_error(labels, calibrated) == pytest.approx(record["val_ece_after"])
    assert calibration.nll(labels, calibrated) == pytest.approx(record["val_nll_after"], rel=1e-4)

"""The shared training library: fit's options, its flags, the teacher-logit cache and the KD loss closure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import BertForSequenceClassification, BertTokenizerFast

from conftest import TINY_TOKENIZER, tiny_bert_config
from fincompress.common import losses, teacher_logits
from fincompress.common.data import data_fingerprint, make_loader, model_inputs
from fincompress.common.loader import load_fp32_model
from fincompress.common.training import (
    RunLog,
    TrainConfig,
    add_train_arguments,
    evaluate_model,
    fit,
    planned_steps,
    train_config_from_args,
)
from fincompress.common.variants import save_fp32_variant

WORDS = {0: "shares plunged after a loss", 1: "the board meeting was held", 2: "profit surged to a record"}
TEXTS = [f"{WORDS[i % 3]} {i}" for i in range(48)]
LABELS = [i % 3 for i in range(48)]


@pytest.fixture(scope="module")
def tokenizer():
    return BertTokenizerFast.from_pretrained(TINY_TOKENIZER)


def tiny_classifier(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3))


def toy_loaders(tokenizer):
    train = make_loader(tokenizer, TEXTS, LABELS, batch_size=12, shuffle=True, seed=1)
    val = make_loader(tokenizer, TEXTS[:24], LABELS[:24], batch_size=24)
    return train, val


def learn_then_unlearn(good_steps: int):
    """A loss that teaches the toy task for `good_steps` steps, then the wrong labels: val F1 rises, then falls."""
    steps = {"done": 0}

    def loss_fn(model, batch):
        labels = batch["labels"] if steps["done"] < good_steps else (batch["labels"] + 1) % 3
        steps["done"] += 1
        return torch.nn.functional.cross_entropy(model(**model_inputs(batch)).logits, labels), {}

    return loss_fn


@pytest.mark.parametrize("keep", ["best", "last"])
def test_fit_keeps_the_best_or_the_last_weights(tmp_path, tokenizer, keep):
    train, val = toy_loaders(tokenizer)
    model = tiny_classifier()
    config = TrainConfig(epochs=10, lr=3e-3, warmup_fraction=0.0, patience=None, seed=0)
    result = fit(model, train, val, config, root=tmp_path, run_name="toy", loss_fn=learn_then_unlearn(20), keep=keep)
    assert result.epochs == 10 and result.steps == 40  # no early stopping: every epoch runs
    assert result.best_metrics["macro_f1"] > result.last_metrics["macro_f1"]  # the wrong labels did harm
    expected = result.best_metrics if keep == "best" else result.last_metrics
    assert evaluate_model(model, val)["macro_f1"] == pytest.approx(expected["macro_f1"])
    summary = result.summary()
    assert summary["weights_kept"] == keep and summary["best_step"] == result.best_step
    assert [point["step"] for point in summary["val_curve"]] == list(range(4, 41, 4))
    curve = pd.read_csv(result.log_path)
    assert curve["val_macro_f1"].notna().sum() == 10 and curve["train_loss"].notna().sum() == 40


def test_patience_stops_after_epochs_without_a_gain(tmp_path, tokenizer):
    train, val = toy_loaders(tokenizer)
    config = TrainConfig(epochs=8, lr=3e-3, warmup_fraction=0.0, patience=1, seed=0)
    result = fit(tiny_classifier(), train, val, config, root=tmp_path, run_name="toy",
                 loss_fn=learn_then_unlearn(12))
    best_epoch = next(h["epoch"] for h in result.history if h["step"] == result.best_step)
    assert result.epochs == best_epoch + 2 < 8  # one epoch without a gain, then it stops


def test_fit_refuses_an_unknown_keep(tmp_path, tokenizer):
    train, val = toy_loaders(tokenizer)
    with pytest.raises(ValueError, match="keep"):
        fit(tiny_classifier(), train, val, TrainConfig(), root=tmp_path, run_name="toy", keep="first")


def test_planned_steps():
    assert planned_steps(TrainConfig(epochs=3), batches_per_epoch=10) == 30
    assert planned_steps(TrainConfig(epochs=3), batches_per_epoch=11, num_processes=2) == 18
    assert planned_steps(TrainConfig(epochs=3, max_steps=7), batches_per_epoch=10) == 7


def parse_train_flags(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser, TrainConfig(epochs=2, patience=3))
    return train_config_from_args(parser.parse_args(argv))


def test_train_flags():
    assert parse_train_flags([]).patience == 3
    assert parse_train_flags(["--no-early-stopping"]).patience is None
    assert parse_train_flags(["--max-steps", "5", "--seed", "0"]) == TrainConfig(epochs=2, patience=3, max_steps=5,
                                                                                    seed=0)
    for bad in (["--max-steps", "0"], ["--max-steps", "-1"], ["--batch-size", "0"], ["--lr", "0"],
                ["--warmup-fraction", "1.5"], ["--patience", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_train_flags(bad)
        assert exit_info.value.code == 2


def test_run_log_keeps_every_column(tmp_path):
    run_log = RunLog(tmp_path, "run")
    run_log.write({"step": 1, "train_loss": 0.5})
    run_log.write({"step": 1, "val_macro_f1": 0.4})
    frame = pd.read_csv(run_log.path)
    assert list(frame.columns) == ["step", "train_loss", "val_macro_f1"] and len(frame) == 2
    assert [p.name for p in run_log.path.parent.iterdir()] == [run_log.path.name]  # no temporary left


# ----------------------------------------------------------------------------- teacher logits and the KD loss

@pytest.fixture
def teacher_root(work_root):
    folder = work_root / "checkpoints" / "teacher"
    model, tokenizer = load_fp32_model(folder)
    return work_root, folder, model, tokenizer


def test_teacher_logits_are_cached_per_teacher_texts_data_and_length(teacher_root):
    root, folder, teacher, tokenizer = teacher_root
    texts = ["Profit rose 5 % .", "Sales fell sharply .", "The meeting is on Monday ."]
    fingerprint = data_fingerprint(root)
    first, cache = teacher_logits.teacher_logits(root, folder, teacher, tokenizer, texts, data_fingerprint=fingerprint)
    with torch.no_grad():  # row i is texts[i]
        direct = teacher(**tokenizer(texts[1:2], return_tensors="pt")).logits.numpy()
    assert not cache["hit"] and first.shape == (3, 3) and np.allclose(first[1], direct[0], atol=1e-5)
    again, cache_again = teacher_logits.teacher_logits(root, folder, teacher, tokenizer, texts,
                                                       data_fingerprint=fingerprint)
    assert cache_again == {**cache, "hit": True} and np.array_equal(first, again)
    # whole files only: no temporary left behind
    assert [p.name for p in (root / teacher_logits.CACHE_FOLDER).iterdir()] == [Path(cache["path"]).name]
    other_paths = {
        "texts": teacher_logits.cache_path(root, folder, texts[:2], fingerprint),
        "data": teacher_logits.cache_path(root, folder, texts, "another-fingerprint"),
        "max length": teacher_logits.cache_path(root, folder, texts, fingerprint, max_length=64),
    }
    assert str(teacher_logits.cache_path(root, folder, texts, fingerprint)) == cache["path"]
    assert all(str(path) != cache["path"] for path in other_paths.values())
    with torch.no_grad():  # "retrain" the teacher: same folder, new weights
        teacher.classifier.bias.add_(torch.tensor([3.0, 0.0, -3.0]))
    save_fp32_variant(folder, teacher, tokenizer, json.loads((folder / "checkpoint_info.json").read_text()))
    changed, cache_changed = teacher_logits.teacher_logits(root, folder, teacher, tokenizer, texts,
                                                           data_fingerprint=fingerprint)
    assert not cache_changed["hit"] and cache_changed["path"] != cache["path"]
    assert not np.allclose(changed, first)


def test_a_cache_file_of_the_wrong_length_is_recomputed(teacher_root):
    root, folder, teacher, tokenizer = teacher_root
    texts = ["Profit rose 5 % .", "Sales fell sharply ."]
    fingerprint = data_fingerprint(root)
    path = teacher_logits.cache_path(root, folder, texts, fingerprint)
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros((5, 3), dtype=np.float32))
    logits, cache = teacher_logits.teacher_logits(root, folder, teacher, tokenizer, texts,
                                                  data_fingerprint=fingerprint)
    assert not cache["hit"] and logits.shape == (2, 3) and np.load(path).shape == (2, 3)


def test_kd_loss_closure_looks_up_each_example_by_its_index(tokenizer):
    model = tiny_classifier().eval()
    texts = ["profit surge", "loss plunge", "meeting held", "profit rose"]
    loader = make_loader(tokenizer, texts, [2, 0, 1, losses.UNLABELLED], batch_size=4, shuffle=True, seed=5)
    batch = next(iter(loader))
    assert batch["index"].tolist() != [0, 1, 2, 3]  # shuffled: the lookup must follow the index
    stored = torch.randn(4, 3)
    loss, parts = losses.cached_kd_loss_fn(stored, alpha=0.3, temperature=2.0)(model, batch)
    expected, expected_parts = losses.prediction_loss(model(**model_inputs(batch)).logits, stored[batch["index"]],
                                                      batch["labels"], alpha=0.3, temperature=2.0)
    assert loss.item() == pytest.approx(expected.item()) and parts == pytest.approx(expected_parts)


def test_texts_cut_at_the_token_limit_are_counted_in_a_warning(tokenizer, caplog):
    long_text = " ".join(["profit surged"] * 200)
    with caplog.at_level("WARNING"):
        loader = make_loader(tokenizer, [long_text, TEXTS[0]], [2, 0], max_length=16)
    assert "1 of 2 texts reach the 16-token limit" in caplog.text
    assert len(loader.dataset[0]["input_ids"]) == 16
    caplog.clear()
    with caplog.at_level("WARNING"):
        make_loader(tokenizer, TEXTS, LABELS)
    assert "token limit" not in caplog.text

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO, save_tiny_model
from fincompress.common.data import make_loader
from fincompress.common.loader import load_fp32_model, load_variant
from fincompress.common.paths import FinCompressError
from fincompress.common.training import TrainConfig, evaluate_model, fit
from fincompress.common.variants import INFO_FIELDS
from fincompress.teacher import train_teacher


def test_teacher_variant_is_complete(trained_root):
    folder = trained_root / "checkpoints" / "teacher"
    info = json.loads((folder / "checkpoint_info.json").read_text())
    assert set(INFO_FIELDS) <= set(info)
    assert info["steps"] == 3 and info["hyperparameters"]["max_steps"] == 3
    assert 0 <= info["test_metrics"]["macro_f1"] <= 1 and len(info["test_metrics"]["confusion_matrix"]) == 3
    assert info["data_fingerprint"] and info["num_parameters"] > 0
    model, _ = load_fp32_model(folder)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    curve = pd.read_csv(info["training_log"])
    assert curve["train_loss"].notna().sum() == 3 and curve["val_macro_f1"].notna().sum() == 1
    probs = load_variant(folder).predict_proba(["Profit fell .", "Sales rose 5 % ."])
    assert probs.shape == (2, 3)


def test_fit_learns_and_keeps_the_best_epoch(tmp_path, tiny_model_dir):
    """A separable toy task: the loop must learn it (loss and F1) and restore the best epoch's weights."""
    from fincompress.common.hub_models import load_pretrained_classifier

    model, tokenizer = load_pretrained_classifier(str(tiny_model_dir))
    words = {0: "shares plunged after a loss", 1: "the board meeting was held", 2: "profit surged to a record"}
    texts = [f"{words[i % 3]} {j}" for j, i in enumerate(range(60))]
    labels = [i % 3 for i in range(60)]
    train = make_loader(tokenizer, texts, labels, batch_size=12, shuffle=True)
    val = make_loader(tokenizer, texts[:30], labels[:30], batch_size=30)
    result = fit(model, train, val, TrainConfig(epochs=12, lr=1e-3, patience=12, warmup_fraction=0.0),
                 root=tmp_path, run_name="toy")
    assert result.best_metrics["macro_f1"] > 0.9
    assert evaluate_model(model, val)["macro_f1"] == pytest.approx(result.best_metrics["macro_f1"])
    assert max(h["macro_f1"] for h in result.history) == result.best_metrics["macro_f1"]


def test_random_init_finbert_shape_and_label_order(tmp_path, small_data_root):
    """--random-init builds the model from a config only (how FinBERT-shape runs work offline)."""
    import shutil

    shutil.copytree(small_data_root / "data", tmp_path / "data")
    config_only = save_tiny_model(tmp_path / "shape")
    (config_only / "model.safetensors").unlink()
    train_teacher.main(["--root", str(tmp_path), "--model", str(config_only), "--random-init", "--max-steps", "2",
                        "--output-name", "random_teacher"])
    model, _ = load_fp32_model(tmp_path / "checkpoints" / "random_teacher")
    assert model.config.id2label[0] == "negative"
    with pytest.raises(FinCompressError, match="finbert-shape --random-init"):
        train_teacher.build_teacher(str(tmp_path / "missing"), random_init=True)


def test_missing_data_is_a_clear_cli_error(tmp_path, tiny_model_dir):
    result = subprocess.run([sys.executable, "-m", "fincompress.teacher.train_teacher", "--root", str(tmp_path),
                             "--model", str(tiny_model_dir), "--max-steps", "1"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "prepare_dataset" in result.stderr and "Traceback" not in result.stderr


def test_rerun_replaces_its_own_variant_and_records_the_config(work_root, tiny_model_dir, tmp_path):
    """Re-running the stage onto its own output is allowed (same technique); the config file is kept."""
    config = tmp_path / "teacher.json"
    config.write_text(json.dumps({"max_steps": 1, "batch_size": 16, "eval_batch_size": 8}))
    before = json.loads((work_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    info = train_teacher.main(["--root", str(work_root), "--model", str(tiny_model_dir), "--config", str(config)])
    saved = json.loads((work_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert before["steps"] == 3 and saved["steps"] == info["steps"] == 1
    assert saved["hyperparameters"]["config"] == {"max_steps": 1, "batch_size": 16, "eval_batch_size": 8}
    assert saved["hyperparameters"]["eval_batch_size"] == 8
    assert [p.name for p in (work_root / "checkpoints").iterdir()] == ["teacher"]


@pytest.mark.slow
def test_two_cpu_processes_data_parallel(tmp_path, small_data_root, tiny_model_dir):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without GPUs: two CPU
    processes (gloo), data-parallel, one saved variant. (`--cpu` would start a single process.)"""
    import shutil

    shutil.copytree(small_data_root / "data", tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "fincompress.teacher.train_teacher", "--root", str(tmp_path), "--model", str(tiny_model_dir),
         "--max-steps", "2", "--batch-size", "8"], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads((tmp_path / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert info["hyperparameters"]["processes"] == 2
    assert torch.isfinite(torch.tensor(info["val_macro_f1"]))

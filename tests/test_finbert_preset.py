"""The real study's preset (`--preset finbert`), every stage with its real arguments, on the Hub served locally.

The Hub calls (the PhraseBank release zip, FiQA's Parquet splits, ProsusAI/finbert, the MiniLM-L6-H384 and
TinyBERT-4 student initialisations) are answered by a mirror in the Hub cache's own layout, so the unmodified
library code runs; ProsusAI/finbert is a `.bin`-only checkpoint with FinBERT's exact shape and label order and random
weights. `--quick` caps each stage at the smoke budget: a broken argument or stage fails here, not in a
user's GPU session. The model has FinBERT's config (width 768, 12 heads, vocabulary, label order) with 4 of
its 12 layers: every code path of the full shape, at a third of its CPU time in CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from conftest import REPO, require_asset
from hub_mirror import build_hub_mirror

VARIANTS = {"teacher", "student_vanilla_kd", "student_intermediate_kd", "teacher_ptq_int8", "teacher_dynamic_int8",
            "teacher_qat_int8", "pruned_30pct", "pruned_50pct", "student_vanilla_kd_ptq_int8",
            "student_intermediate_kd_ptq_int8", "student_small_kd", "student_small_kd_ptq_int8"}


@pytest.mark.slow
def test_finbert_preset_runs_every_stage_with_the_hub_served_locally(tmp_path, phrasebank_dir, fiqa_dir, minilm_dir):
    shape = require_asset("models/finbert-shape")
    config = BertConfig.from_pretrained(shape)
    config.num_hidden_layers = 4
    assert config.id2label == {0: "positive", 1: "negative", 2: "neutral"}  # FinBERT's order, not ours
    torch.manual_seed(0)
    finbert = tmp_path / "finbert"
    model = BertForSequenceClassification(config)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(finbert)
    AutoTokenizer.from_pretrained(shape).save_pretrained(finbert)
    tinybert = tmp_path / "tinybert"  # TinyBERT-4's general model: 4 x 312, FinBERT's vocabulary
    BertModel(BertConfig(vocab_size=config.vocab_size, hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                         intermediate_size=1200)).save_pretrained(tinybert)
    AutoTokenizer.from_pretrained(shape).save_pretrained(tinybert)
    env = build_hub_mirror(tmp_path / "hf", finbert, fiqa_dir=fiqa_dir,
                           models={"nreimers/MiniLM-L6-H384-uncased": minilm_dir,
                                   "huawei-noah/TinyBERT_General_4L_312D": tinybert})
    root = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "fincompress.pipeline", "--preset", "finbert", "--quick",
                             "--root", str(root)], cwd=REPO, capture_output=True, text=True, timeout=2400,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    data = json.loads((root / "data" / "dataset_info.json").read_text())
    assert data["source"] == "hub"
    teacher = json.loads((root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert teacher["source_checkpoint"] == "ProsusAI/finbert" and teacher["num_parameters"] == parameters
    saved = json.loads((root / "checkpoints" / "teacher" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}  # mapped to the project order
    frame = pd.read_csv(root / "results" / "benchmark_results.csv")
    assert VARIANTS <= set(frame["model_name"])
    assert frame[["macro_f1", "cpu_latency_ms_median", "macro_f1_ci_low", "macro_f1_ci_high"]].notna().all().all()
    student = json.loads((root / "checkpoints" / "student_vanilla_kd" / "checkpoint_info.json").read_text())
    assert student["num_parameters"] < parameters / 2  # a 4 x 384 student
    small = json.loads((root / "checkpoints" / "student_small_kd" / "checkpoint_info.json").read_text())
    assert small["hyperparameters"]["student_init"] == "pretrained:huawei-noah/TinyBERT_General_4L_312D"
    assert small["num_parameters"] < student["num_parameters"]

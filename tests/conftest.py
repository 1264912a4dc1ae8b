"""Shared fixtures: the real data from ../shared, and tiny random BERTs so every stage's real
code path runs in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from fincompress.data import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PHRASEBANK = SHARED / "data" / "financial_phrasebank"
FIQA = SHARED / "data" / "fiqa_2018"
FINBERT_SHAPE = SHARED / "models" / "finbert-shape"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"

if not SHARED.is_dir():
    raise RuntimeError(f"{SHARED} is missing: the tests read the real data from ../shared beside the repository")


def tiny_bert_config(**overrides) -> BertConfig:
    """A 2-layer, 32-wide BERT with the bert-base-uncased vocabulary (FinBERT's label order)."""
    base = BertConfig.from_pretrained(FINBERT_SHAPE)
    values = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": 128, **overrides}
    for key, value in values.items():
        setattr(base, key, value)
    return base


def save_tiny_model(folder: Path, seed: int = 0, **overrides) -> Path:
    import torch

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(**overrides))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(FINBERT_SHAPE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def full_data_root(tmp_path_factory) -> Path:
    """A project root with the real prepared data (local release files, default settings)."""
    root = tmp_path_factory.mktemp("full")
    prepare_dataset.main(["--root", str(root), "--source", "local", "--phrasebank-dir", str(PHRASEBANK),
                          "--fiqa-dir", str(FIQA)])
    return root


@pytest.fixture(scope="session")
def small_data_root(full_data_root, tmp_path_factory) -> Path:
    """The real data cut to 96/48/48 rows (stratified by taking every n-th row): fast stage runs."""
    root = tmp_path_factory.mktemp("small")
    (root / "data").mkdir()
    for split, keep in (("train", 96), ("val", 48), ("test", 48)):
        frame = pd.read_csv(full_data_root / "data" / f"{split}.csv", keep_default_na=False)
        frame.iloc[:: max(1, len(frame) // keep)].iloc[:keep].to_csv(root / "data" / f"{split}.csv", index=False)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def trained_root(small_data_root, tiny_model_dir, tmp_path_factory) -> Path:
    """A root with a tiny teacher variant trained for a few steps (read-only for tests: copy it)."""
    from fincompress.teacher import train_teacher

    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(small_data_root / "data", root / "data")
    train_teacher.main(["--root", str(root), "--model", str(tiny_model_dir), "--max-steps", "3",
                        "--batch-size", "16", "--lr", "1e-3"])
    return root


@pytest.fixture
def work_root(trained_root, tmp_path) -> Path:
    """A writable copy of `trained_root`."""
    root = tmp_path / "root"
    shutil.copytree(trained_root, root)
    return root

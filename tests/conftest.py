"""Shared fixtures.

Unit tests need no assets: tiny random BERTs with a tokenizer generated here, and small prepared data
(cut from the real data when the assets are at hand, else generated). Integration tests take the real
files through the assets resolver (`require_asset`, the `*_dir` fixtures, the `requires_assets` marker)
and are skipped, with the reason printed, when neither a local copy nor the Hub has them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import string
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import pytest
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from fincompress.common.assets import AssetsUnavailable, asset_file

REPO = Path(__file__).resolve().parents[1]
FINBERT_ID2LABEL = {0: "positive", 1: "negative", 2: "neutral"}  # ProsusAI/finbert's order, not the project's

# ----------------------------------------------------------------------------- the tiny tokenizer

VOCAB_SIZE = 30522  # bert-base-uncased's: model sizes, and token ids written into tests, stay as with that vocabulary
SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}  # where bert-base has them
CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
# Frequent words of financial news whole; any other ASCII word splits into characters, so no text is all [UNK].
WORDS = """the a an of to in and for on with at by from as is was are were be has have had will would its it
this that than up down per cent percent million billion mn bn eur euro usd dollar dollars pct year quarter
company group bank shares share stock stocks market price prices sales net profit loss losses operating revenue
revenues income earnings margin growth rose fell rise fall increased decreased increase decrease up down higher
lower gain gains drop dropped jump jumped surge surged plunge plunged slump slumped beat beats miss missed
expected expects outlook forecast guidance strong weak record high low new deal agreement contract order orders
acquire acquisition merger buy sell sold bought plans plan said says today period compared corresponding
first second third fourth half total about over under after before during its their no not but also been
dividend debt cash costs cost jobs cut cuts layoffs investors analysts rating upgrade downgrade bullish bearish
neutral positive negative finland finnish helsinki oyj plc inc ltd corp ceo chairman board meeting held news
sentence text good bad nothing happened""".split()


def tiny_vocabulary() -> list[str]:
    """Special tokens at bert-base's ids, characters (alone and as `##` continuations), frequent words and
    numbers below 100, then `[unused]` fillers up to bert-base's size."""
    vocab = [f"[unused{i}]" for i in range(SPECIAL_IDS["[MASK]"] + 1)]
    for token, index in SPECIAL_IDS.items():
        vocab[index] = token
    vocab += list(CHARACTERS) + [f"##{c}" for c in CHARACTERS]
    vocab += [w for w in dict.fromkeys(WORDS + [str(n) for n in range(100)]) if w not in vocab]  # numbers whole
    return vocab + [f"[unused{i}]" for i in range(len(vocab), VOCAB_SIZE)]


def build_tiny_tokenizer() -> Path:
    """A WordPiece tokenizer over `tiny_vocabulary()`, saved once per vocabulary in the temp folder."""
    vocab = tiny_vocabulary()
    digest = hashlib.sha256("\n".join(vocab).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"fincompress-tiny-tokenizer-{digest}"
    if (folder / "tokenizer_config.json").is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                                  model_max_length=128)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # another test process made it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


TINY_TOKENIZER = build_tiny_tokenizer()
# Older name of the tokenizer folder the tiny models use (a tokenizer only: not FinBERT's files).
FINBERT_SHAPE = TINY_TOKENIZER


def tiny_bert_config(**overrides) -> BertConfig:
    """A 2-layer, 32-wide BERT over the tiny vocabulary, with FinBERT's label order (0 positive, 1 negative,
    2 neutral) so loading it exercises the label mapping."""
    values = {"vocab_size": len(tiny_vocabulary()), "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128,
              "id2label": dict(FINBERT_ID2LABEL), "label2id": {n: i for i, n in FINBERT_ID2LABEL.items()},
              "architectures": ["BertForSequenceClassification"], **overrides}
    return BertConfig(**values)


def save_tiny_model(folder: Path, seed: int = 0, **overrides) -> Path:
    import torch

    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(**overrides))
    model.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(TINY_TOKENIZER).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- assets

def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "requires_assets: an integration test on the real datasets or models "
                            "(from $FINCOMPRESS_ASSETS, ../shared, the cache, or the Hub); skipped with the reason "
                            "when none has them")


def require_asset(relative: str) -> Path:
    """An asset's path, or skip the test saying why (no local copy and no Hub)."""
    try:
        return asset_file(relative)
    except AssetsUnavailable as exc:
        pytest.skip(f"asset {relative} unavailable: {exc}")


@pytest.fixture(scope="session")
def phrasebank_dir() -> Path:
    return require_asset("data/financial_phrasebank")


@pytest.fixture(scope="session")
def fiqa_dir() -> Path:
    return require_asset("data/fiqa_2018")


@pytest.fixture(scope="session")
def twitter_csv() -> Path:
    return require_asset("data/twitter_financial_news/sent_train.csv")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return require_asset("models/all-MiniLM-L6-v2")


# ----------------------------------------------------------------------------- data

@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path | str:
    """A root with the real prepared data (local release files, default settings), or why there is none."""
    from fincompress.data import prepare_dataset

    try:
        phrasebank, fiqa = asset_file("data/financial_phrasebank"), asset_file("data/fiqa_2018")
    except AssetsUnavailable as exc:
        return f"real data unavailable: {exc}"
    root = tmp_path_factory.mktemp("full")
    prepare_dataset.main(["--root", str(root), "--source", "local", "--phrasebank-dir", str(phrasebank),
                          "--fiqa-dir", str(fiqa)])
    return root


@pytest.fixture(scope="session")
def full_data_root(real_data) -> Path:
    """A project root with the real prepared data (integration tests; skipped without the assets)."""
    if isinstance(real_data, str):
        pytest.skip(real_data)
    return real_data


SMALL_SIZES = {"train": 96, "val": 48, "test": 48}
TEMPLATES = {
    0: ["Operating profit fell to EUR {n} mn from EUR {m} mn", "Net sales decreased by {n} % in the quarter",
        "The company cut {n} jobs after a loss of EUR {m} mn", "Shares plunged {n} % after the profit warning"],
    1: ["The company is based in Helsinki and employs {n} people", "The meeting was held on {n} March",
        "The group has {n} stores in Finland", "The report covers the period from {n} to {m}"],
    2: ["Net profit rose to EUR {n} mn from EUR {m} mn", "Sales increased by {n} % in the first quarter",
        "The company won a new order worth EUR {n} mn", "Shares jumped {n} % after record earnings"],
}
SOURCES = ("phrasebank", "fiqa_headline", "fiqa_post")


def synthetic_split(split: str, size: int) -> pd.DataFrame:
    """`size` distinct template sentences, labels and sources in equal turns (no text shared across splits)."""
    offset = {"train": 0, "val": 1000, "test": 2000}[split]
    rows = []
    for i in range(size):
        label = i % 3
        template = TEMPLATES[label][(i // 3) % len(TEMPLATES[label])]
        rows.append({"text": template.format(n=offset + i + 2, m=offset + 3 * i + 7), "label": label,
                     "source": SOURCES[(i // 3) % len(SOURCES)]})
    return pd.DataFrame(rows, columns=["text", "label", "source"])


@pytest.fixture(scope="session")
def small_data_root(real_data, tmp_path_factory) -> Path:
    """96/48/48 rows: the real data (every n-th row, so stratified) when its assets are at hand, else
    generated sentences; either way the same sizes and columns."""
    root = tmp_path_factory.mktemp("small")
    (root / "data").mkdir()
    for split, keep in SMALL_SIZES.items():
        if isinstance(real_data, str):
            frame = synthetic_split(split, keep)
        else:
            frame = pd.read_csv(real_data / "data" / f"{split}.csv", keep_default_na=False)
            frame = frame.iloc[:: max(1, len(frame) // keep)].iloc[:keep]
        frame.to_csv(root / "data" / f"{split}.csv", index=False)
    return root


@pytest.fixture(scope="session")
def smoke_study_root(tmp_path_factory, phrasebank_dir, fiqa_dir, minilm_dir) -> Path:
    """The whole study at smoke size (`pipeline --preset smoke`), built once per session: the pipeline's,
    the notebooks' and the documentation's tests share it (copy it before writing to it)."""
    root = tmp_path_factory.mktemp("smoke")
    result = subprocess.run([sys.executable, "-m", "fincompress.pipeline", "--preset", "smoke", "--root", str(root)],
                            cwd=REPO, capture_output=True, text=True, timeout=1500, env={**os.environ})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
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


def stand_in_release(monkeypatch, folder: Path) -> Path:
    """Files under `folder` carry a dataset release's names but not its bytes (a test's small stand-in):
    their reference checksums are set aside; every other file is still checked."""
    from fincompress.common import assets

    checksum, folder = assets.release_checksum, Path(folder).resolve()
    monkeypatch.setattr(assets, "release_checksum",
                        lambda path: None if folder in Path(path).resolve().parents else checksum(path))
    return folder

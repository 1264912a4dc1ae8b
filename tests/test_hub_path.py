"""The Hub path (`--source hub`, `--model ProsusAI/finbert`) run by the unmodified library calls against a
local mirror in the Hub cache's layout, with the Hub itself switched off (tests/hub_mirror.py)."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO, save_tiny_model
from fincompress.common import cli
from fincompress.common.hub_models import load_pretrained_classifier
from fincompress.common.io import sha256_file
from fincompress.common.paths import FinCompressError
from fincompress.common.raw_data import HUB_FIQA, HUB_PHRASEBANK, parse_fiqa_file, read_phrasebank
from fincompress.data import prepare_dataset as prep
from hub_mirror import build_hub_mirror, synthetic_release, use_hub_mirror


def rows(frame: pd.DataFrame) -> set[tuple]:
    return set(frame[["text", "label", "source"]].itertuples(index=False, name=None))


@pytest.fixture
def synthetic_mirror(tmp_path, monkeypatch):
    """A mirror of a small synthetic release and a tiny FinBERT-ordered model, active in this process.

    The synthetic zip is not the release, so the pinned checksum is set to its own for these tests.
    """
    zip_path, fiqa_dir = synthetic_release(tmp_path / "release")
    finbert = save_tiny_model(tmp_path / "tiny_finbert", seed=3)
    env = build_hub_mirror(tmp_path / "hf", finbert, phrasebank_zip=zip_path, fiqa_dir=fiqa_dir)
    use_hub_mirror(monkeypatch, env)
    monkeypatch.setitem(HUB_PHRASEBANK, "sha256", sha256_file(zip_path))
    return {"zip": zip_path, "fiqa": fiqa_dir, "finbert": finbert, "env": env}


# ----------------------------------------------------------------------------- data

def test_hub_source_parses_the_release_zip_and_averages_fiqa_targets_across_splits(synthetic_mirror):
    raw, provenance = prep.load_hub("all")
    phrasebank = raw[raw["source"] == "phrasebank"].reset_index(drop=True)
    pd.testing.assert_frame_equal(phrasebank, read_phrasebank(synthetic_mirror["zip"], "all"))
    local_fiqa = pd.concat([parse_fiqa_file(synthetic_mirror["fiqa"] / name) for name in
                            ("task1_headline_ABSA_train.json", "task1_post_ABSA_train.json")])
    assert rows(raw[raw["source"] != "phrasebank"]) == rows(local_fiqa)  # same sentences, same labels
    targets = sum(len(record["info"]) for name in ("task1_headline_ABSA_train.json", "task1_post_ABSA_train.json")
                  for record in json.loads((synthetic_mirror["fiqa"] / name).read_text()).values())
    assert sum(d["rows"] for d in provenance["fiqa"]["splits"].values()) == targets > 80  # a Hub row per target
    assert provenance["phrasebank"]["revision"] == HUB_PHRASEBANK["revision"]
    assert provenance["fiqa"]["revision"] == HUB_FIQA["revision"]


@pytest.mark.parametrize("agreement, count", [("all", 90), ("50", 102)])
def test_hub_source_keeps_every_agreement_level(synthetic_mirror, agreement, count):
    raw, provenance = prep.load_hub(agreement)
    assert (raw["source"] == "phrasebank").sum() == count
    assert provenance["phrasebank"]["member"] == f"Sentences_{'AllAgree' if agreement == 'all' else '50Agree'}.txt"


def test_a_zip_that_is_not_the_release_is_refused(synthetic_mirror, monkeypatch):
    monkeypatch.setitem(HUB_PHRASEBANK, "sha256", "0" * 64)
    with pytest.raises(FinCompressError, match="sha256 .* is not the release's 0000"):
        prep.load_hub("all")


def test_unreachable_hub_is_one_line_naming_the_local_alternative(tmp_path, monkeypatch, capsys, small_data_root):
    use_hub_mirror(monkeypatch, {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_CACHE": str(tmp_path / "empty" / "hub"),
                                 "HF_HUB_OFFLINE": "1"})
    assert cli.run(prep.main, ["--root", str(tmp_path / "root")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not download data/FinancialPhraseBank-v1.0.zip") and "\n" not in err
    assert "--source local --phrasebank-dir" in err and "--preset offline" in err
    assert not (tmp_path / "root" / "data").exists()

    from fincompress.teacher import train_teacher

    shutil.copytree(small_data_root / "data", tmp_path / "root" / "data")
    assert cli.run(train_teacher.main, ["--root", str(tmp_path / "root"), "--model", "ProsusAI/finbert",
                                        "--max-steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not load 'ProsusAI/finbert'" in err and "--model PATH" in err and "--preset offline" in err
    assert "\n" not in err


@pytest.mark.requires_assets
@pytest.mark.parametrize("agreement", ["all", "50"])
def test_hub_source_yields_the_local_release_rows(phrasebank_dir, fiqa_dir, tmp_path, monkeypatch, agreement):
    """The mirror holds the release zip itself (the checksum the dataset repository records) and FiQA as
    Parquet in the Hub's split layout: `--source hub` gives the same PhraseBank rows and FiQA labels."""
    use_hub_mirror(monkeypatch, build_hub_mirror(tmp_path / "hf", None))
    hub, provenance = prep.load_hub(agreement)
    local, _ = prep.load_local(phrasebank_dir, fiqa_dir, agreement)
    is_pb = hub["source"] == "phrasebank"
    pd.testing.assert_frame_equal(hub[is_pb].reset_index(drop=True),
                                  local[local["source"] == "phrasebank"].reset_index(drop=True))
    assert rows(hub[~is_pb]) == rows(local[local["source"] != "phrasebank"])
    assert len(hub[~is_pb]) == 436 + 675
    assert provenance["phrasebank"]["sha256"] == HUB_PHRASEBANK["sha256"]
    assert {s: d["rows"] for s, d in provenance["fiqa"]["splits"].items()} == {"train": 822, "valid": 117,
                                                                               "test": 234}


@pytest.mark.requires_assets
def test_hub_source_in_a_subprocess_records_the_pinned_revisions(tmp_path, phrasebank_dir, fiqa_dir):
    env = {**os.environ, **build_hub_mirror(tmp_path / "hf", None), "FINCOMPRESS_NO_SHARED": "1",
           "FINCOMPRESS_CACHE": str(tmp_path / "no-assets")}
    result = subprocess.run([sys.executable, "-m", "fincompress.data.prepare_dataset", "--root", str(tmp_path / "r")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "r" / "data" / "dataset_info.json").read_text())
    assert info["source"] == "hub" and info["total"] == 3370  # as from the release files
    assert info["inputs"]["phrasebank"]["revision"] == HUB_PHRASEBANK["revision"]
    assert set(info["inputs"]["fiqa"]["splits"]) == {"train", "valid", "test"}


# ----------------------------------------------------------------------------- the model

def test_finbert_from_the_hub_is_mapped_to_project_order_and_trains(synthetic_mirror, small_data_root, tmp_path):
    from fincompress.teacher import train_teacher

    model, _ = load_pretrained_classifier("ProsusAI/finbert")
    original = torch.load(next((tmp_path / "hf" / "hub" / "models--ProsusAI--finbert" / "snapshots").iterdir())
                          / "pytorch_model.bin")
    assert not (synthetic_mirror["finbert"] / "pytorch_model.bin").exists()  # the mirror is .bin-only
    # FinBERT's rows 0 positive, 1 negative, 2 neutral become 0 negative, 1 neutral, 2 positive
    assert torch.equal(model.classifier.weight, original["classifier.weight"][[1, 2, 0]])
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}

    root = tmp_path / "root"
    shutil.copytree(small_data_root / "data", root / "data")
    info = train_teacher.main(["--root", str(root), "--model", "ProsusAI/finbert", "--max-steps", "2",
                               "--batch-size", "16"])
    assert info["source_checkpoint"] == "ProsusAI/finbert" and info["steps"] == 2
    saved = json.loads((root / "checkpoints" / "teacher" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}

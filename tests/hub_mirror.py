"""A local mirror of the Hugging Face Hub, in the Hub cache's own layout, for tests of the Hub path.

`build_hub_mirror(hf_home, finbert_model)` writes, under `hf_home/hub/`:
- datasets--takala--financial_phrasebank: the release zip at the pinned revision (byte-identical to the one
  in the dataset repository: the assets' copy, whose sha256 is the checksum the repository records);
- datasets--TheFinAI--fiqa-sentiment-classification: the three Parquet splits (train 822 / valid 117 /
  test 234 rows; columns `_id, sentence, target, aspect, score, type`), built from the FiQA release JSON;
- models--ProsusAI--finbert (when `finbert_model` is given): a `.bin`-only checkpoint with FinBERT's label
  order (0 positive, 1 negative, 2 neutral) and its tokenizer;
each as `snapshots/<revision>/<file>` plus `refs/main`, which is how huggingface_hub resolves a file
offline (see `_hf_hub_download_to_cache_dir`). It returns the environment variables that point the
unmodified library calls at it, with the Hub switched off: set them in a subprocess's environment, or
in-process with `use_hub_mirror(monkeypatch, env)`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import pandas as pd

from fincompress.common.assets import FINBERT_REVISION, asset_file
from fincompress.common.io import sha256_file
from fincompress.common.raw_data import FIQA_FILES, HUB_FIQA, HUB_PHRASEBANK, PHRASEBANK_ZIP

FINBERT_REPO = "ProsusAI/finbert"
FINBERT_ID2LABEL = {"0": "positive", "1": "negative", "2": "neutral"}
FIQA_SPLIT_SIZES = {"train": 822, "valid": 117, "test": 234}  # the Hub dataset's splits (1,173 entries)
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def repo_folder(hub: Path, repo_type: str, repo_id: str) -> Path:
    return hub / f"{repo_type}s--{repo_id.replace('/', '--')}"


def put_snapshot(hub: Path, repo_type: str, repo_id: str, revision: str, files: dict[str, Path | bytes]) -> Path:
    """Files of one repository revision in the cache layout; `refs/main` points at the revision."""
    folder = repo_folder(hub, repo_type, repo_id)
    snapshot = folder / "snapshots" / revision
    for name, content in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copyfile(content, target)
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(revision)
    return snapshot


def fiqa_hub_rows(fiqa_dir: Path) -> pd.DataFrame:
    """The release JSON as the Hub dataset lays it out: one row per (sentence, target)."""
    rows = []
    for name in FIQA_FILES:
        kind = "headline" if "headline" in name else "post"
        for key, record in json.loads((Path(fiqa_dir) / name).read_text(encoding="utf-8")).items():
            for entry in record["info"]:
                rows.append({"_id": str(key), "sentence": record["sentence"], "target": entry["target"],
                             "aspect": entry.get("aspects", ""), "score": float(entry["sentiment_score"]),
                             "type": kind})
    return pd.DataFrame(rows, columns=["_id", "sentence", "target", "aspect", "score", "type"])


def fiqa_hub_splits(fiqa_dir: Path, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The rows shuffled into train/valid/test with the Hub's sizes (proportional if the release differs)."""
    rows = fiqa_hub_rows(fiqa_dir)
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    total = sum(FIQA_SPLIT_SIZES.values())
    sizes = dict(FIQA_SPLIT_SIZES) if len(rows) == total else {
        split: round(len(rows) * size / total) for split, size in FIQA_SPLIT_SIZES.items()}
    sizes["test"] = len(rows) - sizes["train"] - sizes["valid"]
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = rows.iloc[order[start:start + size]].reset_index(drop=True)
        start += size
    return splits


def bin_only_checkpoint(model_folder: Path, dest: Path) -> dict[str, Path]:
    """A Hub-style `.bin`-only copy of a saved model (as ProsusAI/finbert ships), its labels checked."""
    import torch
    from safetensors.torch import load_file

    config = json.loads((Path(model_folder) / "config.json").read_text())
    if {str(k): v for k, v in config.get("id2label", {}).items()} != FINBERT_ID2LABEL:
        raise ValueError(f"{model_folder}: id2label {config.get('id2label')} is not FinBERT's {FINBERT_ID2LABEL}")
    dest.mkdir(parents=True, exist_ok=True)
    weights = Path(model_folder) / "model.safetensors"
    state = load_file(weights) if weights.is_file() else torch.load(Path(model_folder) / "pytorch_model.bin")
    torch.save(state, dest / "pytorch_model.bin")
    files = {"pytorch_model.bin": dest / "pytorch_model.bin"}
    files.update({name: Path(model_folder) / name for name in MODEL_FILES if (Path(model_folder) / name).is_file()})
    return files


def local_snapshot_id(files: dict[str, Path]) -> str:
    """A 40-hex folder name for a repository served at `main` only: derived from the files, not a Hub commit."""
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + sha256_file(files[name]).encode())
    return digest.hexdigest()


def build_hub_mirror(hf_home: Path, finbert_model: Path | None = None, *, phrasebank_zip: Path | None = None,
                     fiqa_dir: Path | None = None, models: dict[str, Path] | None = None) -> dict[str, str]:
    """Write the mirror under `hf_home` and return the environment variables that make the Hub calls use it.

    The PhraseBank zip and FiQA JSON default to the assets' copies (`asset_file`); `finbert_model` is a
    saved model folder with FinBERT's label order (e.g. `save_tiny_model`), served as ProsusAI/finbert;
    `models` serves other model repositories as they are, at `main` (e.g.
    {"nreimers/MiniLM-L6-H384-uncased": a saved 384-wide BERT} for the finbert preset's student).
    """
    hf_home = Path(hf_home)
    hub = hf_home / "hub"
    zip_path = phrasebank_zip or asset_file(f"data/financial_phrasebank/{PHRASEBANK_ZIP}")
    put_snapshot(hub, "dataset", HUB_PHRASEBANK["repo_id"], HUB_PHRASEBANK["revision"],
                 {HUB_PHRASEBANK["filename"]: Path(zip_path)})
    staging = hf_home / "staging"
    staging.mkdir(parents=True, exist_ok=True)
    parquet = {}
    for split, frame in fiqa_hub_splits(fiqa_dir or asset_file("data/fiqa_2018")).items():
        path = staging / f"{split}.parquet"
        frame.to_parquet(path, index=False)
        parquet[HUB_FIQA["splits"][split]] = path
    put_snapshot(hub, "dataset", HUB_FIQA["repo_id"], HUB_FIQA["revision"], parquet)
    if finbert_model is not None:
        put_snapshot(hub, "model", FINBERT_REPO, FINBERT_REVISION,
                     bin_only_checkpoint(Path(finbert_model), staging / "finbert"))
    for repo_id, folder in (models or {}).items():
        files = {p.relative_to(folder).as_posix(): p for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        put_snapshot(hub, "model", repo_id, local_snapshot_id(files), files)
    shutil.rmtree(staging)
    return {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "DISABLE_SAFETENSORS_CONVERSION": "1"}


def use_hub_mirror(monkeypatch, env: dict[str, str]) -> None:
    """Apply `build_hub_mirror`'s variables in this process (huggingface_hub read them at import)."""
    from huggingface_hub import constants

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(constants, "HF_HOME", env["HF_HOME"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def synthetic_release(folder: Path, sentences: int = 90, fiqa: int = 40) -> tuple[Path, Path]:
    """A small release in the real formats (no assets needed): the PhraseBank zip (latin-1 Sentences files
    for every agreement level, a `__MACOSX/` entry as in the original) and a FiQA folder whose headlines
    have up to three targets. Returns (zip path, FiQA folder)."""
    import zipfile

    from fincompress.common.raw_data import AGREEMENT_FILES

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ("negative", "neutral", "positive")
    zip_path = folder / PHRASEBANK_ZIP
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("__MACOSX/FinancialPhraseBank-v1.0/._Sentences_AllAgree.txt", b"\x00\x05\x16\x07")
        for level, suffix in AGREEMENT_FILES.items():
            count = sentences if level == "all" else sentences + 12
            lines = [f"Company {i} reported item {i * 7} at Sepp\xe4l\xe4 .@{names[i % 3]}" for i in range(count)]
            archive.writestr(f"FinancialPhraseBank-v1.0/Sentences_{suffix}.txt",
                             ("\r\n".join(lines) + "\r\n").encode("latin-1"))
    fiqa_dir = folder / "fiqa_2018"
    fiqa_dir.mkdir(exist_ok=True)
    scores = (-0.6, -0.05, 0.4, 0.9, -0.3, 0.15)
    for name in FIQA_FILES:
        kind = "headline" if "headline" in name else "post"
        records = {}
        for i in range(fiqa):
            targets = 1 + (i % 3 if kind == "headline" else 0)
            records[str(100 * (kind == "post") + i)] = {"sentence": f"{kind} {i}: $TICK and peers moved", "info": [
                {"sentiment_score": str(scores[(i + j * 2) % len(scores)]), "target": f"T{j}",
                 "aspects": "['Stock/Price Action']", "snippets": "['moved']"} for j in range(targets)]}
        (fiqa_dir / name).write_text(json.dumps(records, indent=1), encoding="utf-8")
    return zip_path, fiqa_dir

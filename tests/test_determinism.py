"""Same seed, same data, same threads, one machine: identical weights and logits, run after run.

Each stage is run twice into two separate project roots in this one process (so nothing is shared
between the runs but the inputs, and the global random state differs between them) and the saved
weights and test-split logits are compared bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertModel, BertTokenizerFast

from conftest import TINY_TOKENIZER, tiny_bert_config
from fincompress.common.data import read_split
from fincompress.common.loader import load_variant
from fincompress.distillation import intermediate_distillation, soft_label_distillation
from fincompress.pruning import prune_finetune
from fincompress.teacher import train_teacher

TINY_STUDENT = ["--student-layers", "1", "--student-hidden", "16", "--student-heads", "2", "--student-ffn", "32",
                "--student-init", "scratch"]


def assert_same_variant(first: Path, second: Path, texts: list[str]) -> None:
    """Every saved tensor equal, and the test-split probabilities equal, bit for bit."""
    weights_a, weights_b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    different = [name for name in weights_a if not torch.equal(weights_a[name], weights_b[name])]
    assert not different, f"weights differ between the two runs: {different[:5]}"
    probabilities_a = load_variant(first).predict_proba(texts)
    probabilities_b = load_variant(second).predict_proba(texts)
    assert np.array_equal(probabilities_a, probabilities_b)


def two_roots(source: Path, tmp_path: Path) -> list[Path]:
    roots = [tmp_path / "run_a", tmp_path / "run_b"]
    for root in roots:
        shutil.copytree(source, root)
    return roots


def save_headless_encoder(folder: Path) -> Path:
    """A pretrained encoder without a classification head (as the offline study's MiniLM): the teacher's
    head is new, so its initialisation must come from the seed too."""
    torch.manual_seed(0)
    BertModel(tiny_bert_config()).save_pretrained(folder)
    BertTokenizerFast.from_pretrained(TINY_TOKENIZER).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model", ["classifier", "headless encoder"])
def test_teacher_training_is_deterministic(small_data_root, tiny_model_dir, tmp_path, model):
    folder = tiny_model_dir if model == "classifier" else save_headless_encoder(tmp_path / "encoder")
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        shutil.copytree(small_data_root / "data", root / "data")
        torch.manual_seed(int(root.name == "b") + 123)  # a different global random state before each run
        train_teacher.main(["--root", str(root), "--model", str(folder), "--max-steps", "4", "--batch-size", "16",
                            "--lr", "1e-3", "--seed", "7"])
    texts = read_split(small_data_root, "test")["text"].tolist()
    assert_same_variant(*(root / "checkpoints" / "teacher" for root in roots), texts)


STAGES = {
    # the student's init and the transfer-set sample (--transfer-size) come from --seed
    "vanilla KD": (soft_label_distillation.main, "student_vanilla_kd",
                   ["--max-steps", "4", *TINY_STUDENT, "--transfer-set", "{transfer}", "--transfer-size", "3"]),
    # the student's init, the projections (student width 16 -> teacher 32: random) and both phases
    "intermediate KD": (intermediate_distillation.main, "student_intermediate_kd",
                        ["--max-steps", "3", *TINY_STUDENT, "--two-phase", "--intermediate-epochs", "1"]),
    # importance, removal and two recovery rounds with KD from the cached source logits
    "pruning": (prune_finetune.main, "pruned_25pct",
                ["--target", "0.25", "--rounds", "2", "--distill", "--max-steps", "2"]),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_is_deterministic(trained_root, tmp_path, stage):
    main, variant, argv = STAGES[stage]
    transfer = tmp_path / "transfer.txt"
    transfer.write_text("Shares of Acme rose after the report .\nCosts were cut by 10 % .\n"
                        "The group opened a new store .\nNet loss widened .\n")
    roots = two_roots(trained_root, tmp_path)
    for index, root in enumerate(roots):
        torch.manual_seed(index)  # a different global random state before each run
        main(["--root", str(root), "--batch-size", "16", "--seed", "5",
              *(arg.format(transfer=transfer) for arg in argv)])
    texts = read_split(trained_root, "test")["text"].tolist()
    assert_same_variant(*(root / "checkpoints" / variant for root in roots), texts)

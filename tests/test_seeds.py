import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import AutoTokenizer, BertForSequenceClassification

from conftest import FINBERT_SHAPE, tiny_bert_config
from fincompress.common.data import data_fingerprint, read_split
from fincompress.common.loader import load_variant
from fincompress.common.paths import FinCompressError
from fincompress.common.variants import read_info, save_fp32_variant
from fincompress.evaluation import seeds


def save_seeded_variant(root: Path, name: str, seed: int, trained: bool = True) -> Path:
    """A tiny FP32 variant whose weights depend on `seed` (wide init: its predictions differ per seed)."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tiny_bert_config(initializer_range=0.5))
    hyperparameters = {"seed": seed, **({"lr": 1e-3} if trained else {"calibration_samples": 8})}
    info = {"model_name": name, "technique": "test variant", "source_checkpoint": "teacher", "val_macro_f1": 0.0,
            "hyperparameters": hyperparameters, "data_fingerprint": data_fingerprint(root)}
    return save_fp32_variant(root / "checkpoints" / name, model, AutoTokenizer.from_pretrained(FINBERT_SHAPE), info)


def seed_run(root: Path, name: str, shared_teacher: bool = True) -> Path:
    """seeds/<name>/ as the pipeline lays it out: data (and the teacher) linked to the canonical ones."""
    run = root / "seeds" / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "data").symlink_to(root / "data", target_is_directory=True)
    if shared_teacher:
        (run / "checkpoints" / "teacher").symlink_to(root / "checkpoints" / "teacher", target_is_directory=True)
    return run


def direct_macro_f1(root: Path, folder: Path) -> float:
    test = read_split(root, "test")
    predicted = load_variant(folder).predict_proba(test["text"].tolist()).argmax(axis=-1)
    return f1_score(test["label"], predicted, labels=[0, 1, 2], average="macro", zero_division=0)


@pytest.fixture
def seeded_root(work_root) -> Path:
    save_seeded_variant(work_root, "student", 42)
    for seed in (1, 2):
        run = seed_run(work_root, f"seed{seed}")
        save_seeded_variant(run, "student", seed)
    # a stacked INT8-like row: its own recorded seed is its calibration sample's, the run's seed is the folder's
    save_seeded_variant(work_root / "seeds" / "seed1", "student_ptq", 42, trained=False)
    save_seeded_variant(seed_run(work_root, "teacher_seed3", shared_teacher=False), "teacher", 3)
    return work_root


def test_summary_over_seed_runs_and_teacher_seeds(seeded_root, capsys):
    root = seeded_root
    summary = seeds.main(["--root", str(root), "--bootstrap-resamples", "500"])
    out = capsys.readouterr().out
    assert "student" in out and "seed_summary.csv" in out
    results = pd.read_csv(root / "results" / "seed_results.csv")
    written = pd.read_csv(root / "results" / "seed_summary.csv")
    assert list(written["variant"]) == list(summary["variant"])
    assert np.allclose(written["mean_macro_f1"], summary["mean_macro_f1"])

    canonical_teacher_seed = read_info(root / "checkpoints" / "teacher")["hyperparameters"]["seed"]
    runs = sorted(zip(results["variant"], results["run_folder"], results["seed"]))
    assert runs == sorted([("teacher", ".", canonical_teacher_seed), ("teacher", "seeds/teacher_seed3", 3),
                           ("student", ".", 42), ("student", "seeds/seed1", 1), ("student", "seeds/seed2", 2),
                           ("student_ptq", "seeds/seed1", 1)])  # the linked teachers of seed1/seed2 are not counted

    teacher_f1 = direct_macro_f1(root, root / "checkpoints" / "teacher")
    student_f1 = [direct_macro_f1(root, root / "checkpoints" / "student")] + [
        direct_macro_f1(root, root / "seeds" / f"seed{k}" / "checkpoints" / "student") for k in (1, 2)]
    by_run = results.set_index(["variant", "run_folder"])
    assert np.isclose(by_run.loc[("student", "seeds/seed2"), "macro_f1"], student_f1[2])
    # each run's delta is against the teacher of its own run folder (the linked canonical teacher here)
    assert np.isclose(by_run.loc[("student", "seeds/seed1"), "delta_f1_vs_teacher"], student_f1[1] - teacher_f1)
    assert by_run.loc[[("teacher", "."), ("teacher", "seeds/teacher_seed3")], "delta_f1_vs_teacher"].isna().all()

    rows = summary.set_index("variant")
    assert list(summary["variant"])[0] == "teacher"
    student = rows.loc["student"]
    assert student["n_seeds"] == 3 and student["seeds"] == "42,1,2"
    assert np.isclose(student["mean_macro_f1"], np.mean(student_f1))
    assert np.isclose(student["sd_macro_f1"], np.std(student_f1, ddof=1)) and student["sd_macro_f1"] > 0
    assert student["min_macro_f1"] == min(results.loc[results["variant"] == "student", "macro_f1"])
    assert np.isclose(student["canonical_macro_f1"], student_f1[0])
    assert student["canonical_ci_low"] <= student["canonical_macro_f1"] <= student["canonical_ci_high"]
    assert np.isclose(student["mean_delta_vs_teacher"], np.mean(student_f1) - teacher_f1)
    teacher = rows.loc["teacher"]
    assert teacher["n_seeds"] == 2 and teacher["seeds"] == f"{canonical_teacher_seed},3"
    assert np.isclose(teacher["canonical_macro_f1"], teacher_f1)
    assert np.isnan(teacher["mean_delta_vs_teacher"])
    ptq = rows.loc["student_ptq"]  # only in a seed run: no canonical interval, no sd from one run
    assert ptq["n_seeds"] == 1 and ptq["seeds"] == "1" and np.isnan(ptq["canonical_macro_f1"])
    assert np.isnan(ptq["sd_macro_f1"])


def test_a_root_without_seed_runs_summarises_the_canonical_variants(work_root):
    summary = seeds.main(["--root", str(work_root), "--max-test-samples", "20"])
    assert list(summary["variant"]) == ["teacher"]
    row = summary.iloc[0]
    assert row["n_seeds"] == 1 and np.isnan(row["sd_macro_f1"])
    assert row["canonical_ci_low"] <= row["canonical_macro_f1"] <= row["canonical_ci_high"]


def test_a_variant_made_from_other_data_is_left_out_with_a_warning(seeded_root, caplog):
    info_path = seeded_root / "seeds" / "seed2" / "checkpoints" / "student" / "checkpoint_info.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "data_fingerprint": "0123456789abcdef"}))
    with caplog.at_level(logging.WARNING, logger="fincompress.seeds"):
        results, summary = seeds.seed_summary(seeded_root, resamples=200)
    assert "seeds/seed2" not in set(results.loc[results["variant"] == "student", "run_folder"])
    assert summary.set_index("variant").loc["student", "n_seeds"] == 2
    assert any("student" in r.message and "seeds/seed2" in r.message for r in caplog.records)


def test_no_variants_or_bad_flags_are_one_line_errors(small_data_root, tmp_path, capsys):
    root = tmp_path / "root"
    shutil.copytree(small_data_root / "data", root / "data")
    with pytest.raises(FinCompressError, match="no variants"):
        seeds.main(["--root", str(root)])
    with pytest.raises(SystemExit) as exc:
        seeds.main(["--root", str(root), "--threads", "0"])
    assert exc.value.code == 2 and "argument --threads" in capsys.readouterr().err

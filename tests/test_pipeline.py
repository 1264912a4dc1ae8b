"""The one-command study (smoke preset) and the five notebooks, end to end on CPU."""

import json
import shutil
import subprocess
import sys

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from conftest import REPO
from fincompress import pipeline
from fincompress.common.paths import FinCompressError
from fincompress.data import prepare_dataset

NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))
VARIANTS = {"teacher", "student_vanilla_kd", "student_intermediate_kd", "teacher_ptq_int8", "teacher_dynamic_int8",
            "teacher_qat_int8", "pruned_30pct", "pruned_50pct", "student_vanilla_kd_ptq_int8",
            "student_intermediate_kd_ptq_int8"}


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    result = subprocess.run([sys.executable, "-m", "fincompress.pipeline", "--preset", "smoke", "--root", str(root)],
                            cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_smoke_pipeline_produces_every_row_csv_and_plots(smoke_root):
    frame = pd.read_csv(smoke_root / "results" / "benchmark_results.csv")
    assert set(frame["model_name"]) == VARIANTS
    fp32 = frame[~frame["model_name"].str.contains("int8")]
    assert set(fp32["runtime"]) == {"torch", "onnxruntime"} and (fp32.groupby("model_name").size() == 2).all()
    assert set(frame.loc[frame["model_name"].str.contains("int8"), "runtime"]) == {"onnxruntime"}
    measured = ["macro_f1", "cpu_latency_ms_median", "speedup_vs_teacher", "size_ratio_vs_teacher"]
    assert frame[measured].notna().all().all()
    for plot in ("pareto.png", "size_latency.png", "pruning_curve.png", "kd_training_curves.png"):
        assert (smoke_root / "results" / "plots" / plot).stat().st_size > 10_000


def test_up_to_date_stages_are_skipped_and_stale_ones_rerun(smoke_root, tmp_path):
    root = tmp_path / "copy"  # a copy: the notebooks below reuse smoke_root as it is
    for part in ("data", "checkpoints/teacher", ".cache/pipeline"):
        shutil.copytree(smoke_root / part, root / part)
    smoke_root = root
    assert pipeline.run_pipeline("smoke", smoke_root, stages="data,teacher") == {"data": "skipped",
                                                                                 "teacher": "skipped"}
    before = json.loads((smoke_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    # New data (another split seed) makes the teacher stale; the data stage itself is unchanged.
    prepare_dataset.main(["--root", str(smoke_root), "--source", "local", "--seed", "7",
                          "--phrasebank-dir", str(pipeline.SHARED / "data" / "financial_phrasebank"),
                          "--fiqa-dir", str(pipeline.SHARED / "data" / "fiqa_2018")])
    stale = [s.name for s in pipeline.build_stages("smoke") if not pipeline.is_up_to_date(smoke_root, s)]
    assert "teacher" in stale and "student_vanilla_kd" in stale and "data" not in stale
    assert pipeline.run_pipeline("smoke", smoke_root, stages="teacher")["teacher"] == "ran"
    after = json.loads((smoke_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert after["data_fingerprint"] != before["data_fingerprint"]


def test_a_failing_stage_is_named_with_the_command_to_rerun(tmp_path):
    rerun_hint = r"(?s)stage 'teacher' failed .*python -m fincompress.teacher.train_teacher"
    with pytest.raises(FinCompressError, match=rerun_hint):
        pipeline.run_pipeline("smoke", tmp_path, stages="teacher")  # no data prepared
    with pytest.raises(FinCompressError, match="unknown stage"):
        pipeline.run_pipeline("smoke", tmp_path, stages="distil")
    with pytest.raises(FinCompressError, match="unknown preset"):
        pipeline.build_stages("gpu")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_on_the_smoke_preset(path, smoke_root, monkeypatch):
    monkeypatch.setenv("FINCOMPRESS_PRESET", "smoke")
    monkeypatch.setenv("FINCOMPRESS_ROOT", str(smoke_root))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("execute_result", "display_data") for o in outputs)


def test_five_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]

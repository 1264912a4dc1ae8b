"""The one-command study (smoke preset), its seeds and the five notebooks, end to end on CPU."""

import json
import shutil
import sys

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from conftest import REPO
from fincompress import pipeline
from fincompress.common.paths import FinCompressError

NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))
VARIANTS = {"teacher", "student_vanilla_kd", "student_intermediate_kd", "teacher_ptq_int8", "teacher_dynamic_int8",
            "teacher_qat_int8", "pruned_30pct", "pruned_50pct", "student_vanilla_kd_ptq_int8",
            "student_intermediate_kd_ptq_int8", "student_small_kd", "student_small_kd_ptq_int8"}


@pytest.fixture(scope="module")
def smoke_root(smoke_study_root):
    return smoke_study_root


def test_the_report_is_stale_when_a_variant_or_a_result_changes(tmp_path):
    for path, text in (("checkpoints/teacher/checkpoint_info.json", '{"created_at": "1"}'),
                       ("results/benchmark_results.csv", "a\n1\n"), ("results/pruning_curve.csv", "a\n1\n"),
                       ("results/benchmark_results.generation.json", "{}"), ("results/plots/pareto.png", "png")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    report = {s.name: s for s in pipeline.plan(tmp_path, "smoke") if s.name in pipeline.REPORT_NAMES}
    for stage in report.values():  # as if each had just run
        pipeline.stamp_path(tmp_path, stage).parent.mkdir(parents=True, exist_ok=True)
        pipeline.stamp_path(tmp_path, stage).write_text(json.dumps(pipeline.stage_state(tmp_path, stage)))
    assert all(pipeline.is_up_to_date(tmp_path, stage) for stage in report.values())
    (tmp_path / "checkpoints/teacher/checkpoint_info.json").write_text('{"created_at": "2"}')  # re-trained
    assert not pipeline.is_up_to_date(tmp_path, report["benchmark"])
    assert pipeline.is_up_to_date(tmp_path, report["plots"])
    (tmp_path / "results/pruning_curve.csv").write_text("a\n2\n")
    assert not pipeline.is_up_to_date(tmp_path, report["plots"])
    (tmp_path / "checkpoints/teacher/checkpoint_info.json").write_text('{"created_at": "1"}')
    assert pipeline.is_up_to_date(tmp_path, report["benchmark"])
    (tmp_path / "results/benchmark_results.generation.json").unlink()  # a run cut short before its record
    assert not pipeline.is_up_to_date(tmp_path, report["benchmark"])


@pytest.mark.slow
def test_smoke_pipeline_produces_every_row_csv_and_plots(smoke_root):
    frame = pd.read_csv(smoke_root / "results" / "benchmark_results.csv")
    assert set(frame["model_name"]) == VARIANTS
    fp32 = frame[~frame["model_name"].str.contains("int8")]
    assert {"torch", "onnxruntime"} <= set(fp32["runtime"])
    assert set(frame.loc[frame["model_name"].str.contains("int8"), "runtime"]) == {"onnxruntime"}
    measured = ["macro_f1", "cpu_latency_ms_median", "speedup_vs_teacher", "size_ratio_vs_teacher"]
    assert frame[measured].notna().all().all()
    for plot in ("pareto.png", "size_latency.png", "pruning_curve.png", "kd_training_curves.png"):
        assert (smoke_root / "results" / "plots" / plot).stat().st_size > 10_000
    info = json.loads((smoke_root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert info["hyperparameters"]["config"]["max_steps"] == 3  # the preset file it was made with


@pytest.mark.slow
def test_up_to_date_stages_are_skipped_and_stale_ones_rerun(smoke_root, tmp_path):
    root = tmp_path / "copy"  # a copy: the notebooks below reuse smoke_root as it is
    for part in ("data", "checkpoints/teacher", ".cache/pipeline"):
        shutil.copytree(smoke_root / part, root / part)
    assert pipeline.run_pipeline("smoke", root, stages="data,teacher") == {"data": "skipped", "teacher": "skipped"}
    before = json.loads((root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    # New data (another split seed, given on the command line) makes the data stage and everything after it stale.
    stages = pipeline.build_stages("smoke")
    data = next(s for s in stages if s.name == "data")
    data.args += ["--seed", "7"]
    assert not pipeline.is_up_to_date(root, data)
    pipeline.run_stages(root, [data])
    stale = [s.name for s in stages if not pipeline.is_up_to_date(root, s)]
    assert "teacher" in stale and "student_vanilla_kd" in stale and "data" not in stale
    assert pipeline.run_pipeline("smoke", root, stages="teacher")["teacher"] == "ran"
    after = json.loads((root / "checkpoints" / "teacher" / "checkpoint_info.json").read_text())
    assert after["data_fingerprint"] != before["data_fingerprint"]


@pytest.mark.slow
def test_seed_runs_keep_canonical_names_and_share_the_teacher(smoke_root, tmp_path):
    root = tmp_path / "copy"
    for part in ("data", "checkpoints/teacher", ".cache/pipeline"):
        shutil.copytree(smoke_root / part, root / part)
    status = pipeline.run_pipeline("smoke", root, stages="teacher,student_vanilla_kd", seeds="1,2", teacher_seeds="1")
    assert status["student_vanilla_kd [seed1]"] == "ran" and status["teacher [teacher_seed1]"] == "ran"
    canonical_teacher = (root / "checkpoints" / "teacher").resolve()
    for seed in (1, 2):
        run = root / "seeds" / f"seed{seed}"
        assert (run / "checkpoints" / "teacher").resolve() == canonical_teacher  # one fixed teacher
        info = json.loads((run / "checkpoints" / "student_vanilla_kd" / "checkpoint_info.json").read_text())
        assert info["hyperparameters"]["seed"] == seed
    teacher_seed = json.loads((root / "seeds" / "teacher_seed1" / "checkpoints" / "teacher" /
                               "checkpoint_info.json").read_text())
    assert teacher_seed["hyperparameters"]["seed"] == 1
    summary = pd.read_csv(root / "results" / "seed_summary.csv")
    assert {"teacher", "student_vanilla_kd"} <= set(summary["variant"])
    # Canonical names stay what the other stages use: no seed folder among the canonical variants.
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["student_vanilla_kd", "teacher"]


def test_a_failing_stage_is_named_with_the_command_to_rerun(tmp_path):
    rerun_hint = r"(?s)stage 'teacher' failed .*python -m fincompress.teacher.train_teacher"
    with pytest.raises(FinCompressError, match=rerun_hint):
        pipeline.run_pipeline("smoke", tmp_path, stages="teacher")  # no data prepared
    with pytest.raises(FinCompressError, match="unknown stage"):
        pipeline.run_pipeline("smoke", tmp_path, stages="distil")
    with pytest.raises(FinCompressError, match="unknown preset"):
        pipeline.build_stages("gpu")
    with pytest.raises(FinCompressError, match="a seed is repeated"):
        pipeline.run_pipeline("smoke", tmp_path, stages="teacher", seeds="1,1")


def test_seed_runs_need_the_canonical_teacher(tmp_path):
    runs = pipeline.seed_stages(tmp_path, pipeline.build_stages("smoke"), [1], [])
    assert {run.root for run in runs} == {tmp_path / "seeds" / "seed1"} and all(run.seeded for run in runs)
    with pytest.raises(FinCompressError, match="canonical teacher"):
        pipeline.prepare_seed_roots(tmp_path, runs)


def test_quick_takes_only_budget_settings_from_the_smoke_preset():
    stages = {s.name: s for s in pipeline.build_stages("finbert", quick=True)}
    assert stages["teacher"].args == ["--output-name", "teacher", "--max-steps", "3", "--batch-size", "16"]
    assert stages["data"].args == ["--sample-fraction", "0.1"]  # the Hub source of the preset is kept
    curve = stages["pruning_curve"]  # its own module; its points are a budget setting
    assert curve.module == "fincompress.pruning.curve" and "--output-name" not in curve.args
    assert curve.args[curve.args.index("--targets") + 1] == pipeline.read_stage_config("smoke", "pruning_curve")[
        "targets"]
    full = {s.name: s for s in pipeline.build_stages("finbert")}
    assert all(s.args == pipeline.output_args(s) for s in full.values())  # only the folder name is added


@pytest.mark.slow
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_on_colab_without_a_repository_url_says_what_to_set(path, tmp_path, monkeypatch):
    """No placeholder clone URL: on Colab the set-up cell asks for FINCOMPRESS_REPO_URL before cloning."""
    import types

    setup = next("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                 if c["cell_type"] == "code" and "REPO_URL" in "".join(c["source"]))
    assert "YOUR-ORG" not in setup
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FINCOMPRESS_REPO_URL", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    with pytest.raises(RuntimeError, match="FINCOMPRESS_REPO_URL"):
        exec(compile(setup, str(path), "exec"), {})
    assert not (tmp_path / "fincompress").exists()  # nothing was cloned

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from fincompress.common.paths import FinCompressError
from fincompress.evaluation import benchmark

REQUIRED = ["model_name", "technique", "runtime", "num_parameters", "size_mb", "macro_f1", "accuracy",
            "f1_negative", "f1_neutral", "f1_positive", "cpu_latency_ms_median", "cpu_latency_ms_p95",
            "cpu_throughput_sps", "speedup_vs_teacher", "size_ratio_vs_teacher"]


def test_two_variants_in_both_runtimes_fill_every_column(work_root):
    teacher = work_root / "checkpoints" / "teacher"
    shutil.copytree(teacher, work_root / "checkpoints" / "teacher_copy")
    (work_root / "checkpoints" / ".teacher.tmp-dead").mkdir()  # an interrupted save is not a variant
    frame = benchmark.main(["--root", str(work_root), "--num-runs", "6", "--warmup", "1", "--throughput-runs", "2"])
    assert set(REQUIRED) <= set(frame.columns)
    assert sorted(zip(frame["model_name"], frame["runtime"])) == [
        ("teacher", "onnxruntime"), ("teacher", "torch"), ("teacher_copy", "onnxruntime"), ("teacher_copy", "torch")]
    assert frame[REQUIRED].notna().all().all()
    row = frame.set_index(["model_name", "runtime"])
    assert row.loc[("teacher", "torch"), "speedup_vs_teacher"] == 1.0
    assert row.loc[("teacher_copy", "torch"), "size_ratio_vs_teacher"] == 1.0
    # the same weights give the same accuracy in both runtimes and both folders
    assert frame["macro_f1"].nunique() == 1
    assert (frame["cpu_latency_ms_p95"] >= frame["cpu_latency_ms_median"]).all()
    report = json.loads((work_root / "results" / "benchmark_results.json").read_text())
    assert report["metadata"]["threads"] == 2 and "torch" in report["metadata"]["libraries"]
    assert len(report["rows"]) == 4
    csv = pd.read_csv(work_root / "results" / "benchmark_results.csv")
    assert np.isclose(csv["cpu_latency_ms_median"], frame["cpu_latency_ms_median"]).all()


def test_interleaving_rotates_the_order():
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def logits(self, encoded):
            calls.append(self.name)

    benchmark.interleaved_timings([Fake("a"), Fake("b")], [[{}], [{}]], warmup=0, runs=2, desc="t")
    assert calls == ["a", "b", "b", "a"]


def test_unknown_variant_or_runtime_is_refused(work_root):
    with pytest.raises(FinCompressError, match="unknown variant"):
        benchmark.main(["--root", str(work_root), "--variants", "nope"])
    with pytest.raises(FinCompressError, match="unknown runtime"):
        benchmark.main(["--root", str(work_root), "--runtimes", "tensorrt"])

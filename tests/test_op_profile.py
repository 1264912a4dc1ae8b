"""The operator profile: ONNX Runtime's kernel times summed by operator type, per variant and thread count."""

import pandas as pd
import pytest

from fincompress.common.paths import FinCompressError
from fincompress.evaluation import op_profile
from fincompress.quantization import ptq


def test_kernel_times_are_summed_by_operator_and_other_events_ignored():
    profile = [
        {"cat": "Node", "name": "a_kernel_time", "dur": 30, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "b_kernel_time", "dur": 10, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "c_kernel_time", "dur": 5, "args": {"op_name": "Softmax"}},
        {"cat": "Node", "name": "a_fence_before", "dur": 99, "args": {"op_name": "MatMul"}},
        {"cat": "Session", "name": "model_run", "dur": 1000},
    ]
    assert op_profile.kernel_time_by_op(profile) == {"MatMul": 40, "Softmax": 5}


def test_profiles_fp32_and_int8_variants_at_each_thread_count(work_root):
    ptq.main(["--root", str(work_root), "--recipe", "dynamic"])
    table = op_profile.main(["--root", str(work_root), "--variants", "teacher,teacher_dynamic_int8",
                             "--threads", "1,2", "--texts", "3", "--repeats", "2"])
    saved = pd.read_csv(work_root / "results" / "op_profile.csv")
    assert len(saved) == len(table)
    assert set(zip(saved["variant"], saved["threads"])) == {(v, t) for v in ("teacher", "teacher_dynamic_int8")
                                                            for t in (1, 2)}
    assert (saved["calls"] == 6).all() and (saved["ms_per_call"] > 0).all()
    for _, rows in saved.groupby(["variant", "threads"]):
        assert rows["share"].sum() == pytest.approx(1.0)
    ops = saved.groupby("variant")["op_type"].apply(set)
    integer_ops = {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
    assert ops["teacher_dynamic_int8"] & integer_ops  # the INT8 graph runs integer GEMMs
    assert not ops["teacher"] & integer_ops  # the FP32 export does not


def test_unknown_variant_is_refused(work_root):
    with pytest.raises(FinCompressError, match="no variant folder nope"):
        op_profile.main(["--root", str(work_root), "--variants", "nope"])

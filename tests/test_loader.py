"""The one loader: one tokenisation, one place ONNX Runtime sessions are made, the FP32 export cached,
and no process-wide side effects (threads, logging) from library calls."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_tiny_model
from fincompress.common.loader import (
    EXPORT_VERSION,
    ONNX_INPUTS,
    cpu_flags,
    encode_texts,
    ensure_onnx_export,
    export_record_path,
    export_version,
    load_variant,
    onnx_cache_path,
    onnx_session,
)
from fincompress.common.paths import FinCompressError

PACKAGE = Path(__file__).resolve().parents[1] / "fincompress"
TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .", "Shares fell ."]


@pytest.fixture
def teacher(trained_root, tmp_path) -> Path:
    """A writable copy of the tiny trained teacher variant."""
    folder = tmp_path / "checkpoints" / "teacher"
    shutil.copytree(trained_root / "checkpoints" / "teacher", folder)
    return folder


def test_onnx_runtime_sessions_are_made_in_one_place():
    makers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "InferenceSession" in p.read_text())
    assert makers == ["common/loader.py"]


def test_encode_texts_pads_to_the_batch_or_to_a_fixed_length(teacher):
    predictor = load_variant(teacher)
    batch = encode_texts(predictor.tokenizer, TEXTS)
    assert tuple(batch) == ONNX_INPUTS and all(v.dtype == np.int64 for v in batch.values())
    lengths = batch["attention_mask"].sum(axis=1)
    assert batch["input_ids"].shape == (2, lengths.max()) and lengths.min() < lengths.max()
    fixed = encode_texts(predictor.tokenizer, TEXTS[1:], pad_to=int(lengths.max()) + 3)
    assert fixed["input_ids"].shape == (1, lengths.max() + 3) and fixed["attention_mask"].sum() == lengths.min()
    # the predictors feed their models exactly this encoding
    for name, values in predictor.encode(TEXTS).items():
        np.testing.assert_array_equal(values, batch[name])


def test_loading_leaves_torch_threads_to_the_entry_point(teacher):
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    for runtime in ("torch", "onnxruntime"):
        load_variant(teacher, runtime=runtime, threads=target)
        assert torch.get_num_threads() == before


def test_export_restores_the_torch_onnx_log_level(teacher):
    logger = logging.getLogger("torch.onnx")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        ensure_onnx_export(teacher)
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(previous)


def test_fp32_export_is_made_once_and_again_when_the_weights_change(teacher):
    path = ensure_onnx_export(teacher)
    assert path == onnx_cache_path(teacher) and path.is_file()
    made = path.stat().st_mtime_ns
    assert ensure_onnx_export(teacher).stat().st_mtime_ns == made  # cached: not exported again
    weights = teacher / "model.safetensors"
    later = made + 5_000_000_000
    other = save_tiny_model(teacher.parent / "other_weights", seed=1)
    shutil.copyfile(other / "model.safetensors", weights)  # new content (the cache is keyed by it, not by time)
    os.utime(weights, ns=(later, later))
    assert ensure_onnx_export(teacher).stat().st_mtime_ns > made
    assert not list(path.parent.glob(".*tmp*"))  # no temporary export left beside it


def test_an_export_made_by_older_code_is_made_again(teacher):
    path = ensure_onnx_export(teacher)
    assert export_version(path) == EXPORT_VERSION
    export_record_path(path).unlink()  # as older code left it: no record of the export's version
    assert not export_record_path(path).exists()
    assert export_version(path) is None
    assert export_version(ensure_onnx_export(teacher)) == EXPORT_VERSION
    path.write_bytes(b"not an onnx file")  # changed since it was exported: exported again as well
    assert export_version(ensure_onnx_export(teacher)) == EXPORT_VERSION


def test_a_broken_onnx_file_is_a_one_line_error(tmp_path):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(bytes(256))
    with pytest.raises(FinCompressError, match="cannot open the ONNX model") as error:
        onnx_session(broken)
    assert "\n" not in str(error.value).strip()


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512_vnni\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert cpu_flags(tmp_path / "missing") == set()

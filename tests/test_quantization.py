"""INT8 PTQ / QAT on tiny BERTs: calibration, the straight-through estimator, agreement with FP32,
variants that reload after the writing process exits, clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import REPO
from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.loader import load_fp32_model, load_variant
from fincompress.common.paths import FinCompressError
from fincompress.common.variants import read_info, save_variant
from fincompress.quantization import ptq, qat
from fincompress.quantization.fake_quant import (
    ActivationObserver,
    fake_quantize_weight,
    uint8_activation_qparams,
)
from fincompress.quantization.int8 import (
    EMBEDDINGS,
    TextCalibrationReader,
    all_groups,
    encode,
    export_fp32,
    linear_nodes,
    onnx_session,
    quantize_static_qdq,
)


@pytest.fixture(scope="module")
def tiny_fp32(trained_root, tmp_path_factory):
    """(onnx path, tokenizer, torch model) of the tiny trained teacher."""
    model, tokenizer = load_fp32_model(trained_root / "checkpoints" / "teacher")
    return export_fp32(model, tmp_path_factory.mktemp("fp32")), tokenizer, model


def activation_scales(path) -> dict[str, float]:
    """Scale of every QuantizeLinear on an activation: {quantized tensor: scale}."""
    model = onnx.load(str(path))
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(values[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def test_calibration_sets_the_activation_ranges(tiny_fp32, small_data_root, tmp_path):
    path, tokenizer, _ = tiny_fp32
    texts = read_split(small_data_root, "train")["text"].tolist()
    layers = [g for g in all_groups(onnx.load(str(path))) if g.startswith("layer.")]
    few = activation_scales(quantize_static_qdq(path, tmp_path / "few.onnx",
                                                TextCalibrationReader(tokenizer, texts[:2]), layers))
    many = activation_scales(quantize_static_qdq(path, tmp_path / "many.onnx",
                                                 TextCalibrationReader(tokenizer, texts[:24]), layers))
    # every Linear input is quantized, and once per tensor (Q, K and V share one QuantizeLinear)
    assert set(few) == {n.input_tensor for n in linear_nodes(onnx.load(str(path))) if n.group in layers}
    # min/max over a superset of sentences can only widen a range, and here it does widen some
    assert all(many[t] >= few[t] * (1 - 1e-6) for t in few)
    assert any(many[t] > few[t] * 1.01 for t in few)


def test_learned_ranges_override_calibration(tiny_fp32, small_data_root, tmp_path):
    path, tokenizer, _ = tiny_fp32
    nodes = [n for n in linear_nodes(onnx.load(str(path))) if n.group.startswith("layer.")]
    ranges = {n.module: (-1.0, 3.0) for n in nodes}
    texts = read_split(small_data_root, "train")["text"].tolist()[:2]
    scales = activation_scales(quantize_static_qdq(path, tmp_path / "q.onnx", TextCalibrationReader(tokenizer, texts),
                                                   {n.group for n in nodes}, activation_ranges=ranges))
    expected, _ = uint8_activation_qparams(-1.0, 3.0)
    assert scales and all(s == pytest.approx(expected, rel=1e-6) for s in scales.values())


def test_straight_through_estimator_passes_gradients_inside_the_range():
    observer = ActivationObserver()
    observer.train()
    observer(torch.tensor([0.0, 2.0]))  # range [0, 2]
    observer.frozen = True
    x = torch.tensor([-1.0, 0.5, 1.0, 1.5, 3.0], requires_grad=True)
    out = observer(x)
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # clipped values get no gradient
    assert out[0].item() == 0.0 and out[-1].item() == pytest.approx(2.0, abs=1e-6)
    assert observer.range() == (0.0, 2.0)  # frozen: the out-of-range batch did not move it

    weight = torch.randn(4, 8, requires_grad=True)
    quantized = fake_quantize_weight(weight)
    (quantized * torch.arange(32.0).view(4, 8)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(32.0).view(4, 8))  # symmetric per-row range never clips
    assert not torch.equal(quantized, weight)
    steps = quantized.detach() / (weight.detach().abs().amax(dim=1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # on the INT8 grid of each row


def test_quantized_tiny_model_agrees_with_fp32(tiny_fp32, small_data_root, tmp_path):
    path, tokenizer, model = tiny_fp32
    texts = read_split(small_data_root, "test")["text"].tolist()
    train = read_split(small_data_root, "train")["text"].tolist()[:32]
    groups = [g for g in all_groups(onnx.load(str(path))) if g.startswith("layer.")] + [EMBEDDINGS]
    int8 = quantize_static_qdq(path, tmp_path / "q.onnx", TextCalibrationReader(tokenizer, train), groups)
    encoded = encode(tokenizer, texts)
    int8_logits = onnx_session(int8).run(None, encoded)[0]
    with torch.inference_mode():
        fp32_logits = model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.numpy()
    agreement = (int8_logits.argmax(-1) == fp32_logits.argmax(-1)).mean()
    correlation = np.corrcoef(int8_logits.ravel(), fp32_logits.ravel())[0, 1]
    assert agreement >= 0.9 and correlation > 0.98, (agreement, correlation)
    graph = onnx.load(str(int8)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    # residual stream stays FP32: only MatMuls read dequantized activations
    assert all(n.op_type == "MatMul" for n in graph.node for i in n.input if producers.get(i) == "DequantizeLinear")
    word = next(i for i in graph.initializer if i.name.endswith("word_embeddings.weight_int8"))
    assert word.data_type == onnx.TensorProto.INT8


def test_ptq_cli_variant_loads_after_the_process_exits(work_root):
    done = subprocess.run([sys.executable, "-m", "fincompress.quantization.ptq", "--root", str(work_root),
                           "--calibration-samples", "8"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = work_root / "checkpoints" / "teacher_ptq_int8"
    info = read_info(folder)
    assert info["format"] == "onnx" and info["source_checkpoint"] == "teacher"
    assert 0 < info["size_mb"] < read_info(work_root / "checkpoints" / "teacher")["size_mb"]
    predictor = load_variant(folder)
    assert predictor.runtime == "onnxruntime"
    proba = predictor.predict_proba(["Profit rose 20%.", "The company cut its outlook."])
    assert proba.shape == (2, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert info["test_metrics"]["macro_f1"] >= 0


def test_qat_and_dynamic_variants_load(work_root):
    result = qat.main(["--root", str(work_root), "--max-steps", "2", "--batch-size", "16",
                       "--calibration-samples", "4", "--observer-warmup-steps", "1"])
    assert result["steps"] == 2 and result["hyperparameters"]["activation_ranges"] == "learned in QAT"
    ptq.main(["--root", str(work_root), "--method", "dynamic"])
    for name in ("teacher_qat_int8", "teacher_dynamic_int8"):
        predictor = load_variant(work_root / "checkpoints" / name)
        assert predictor.info["format"] == "onnx" and predictor.runtime == "onnxruntime"
        assert predictor.predict_proba(["Shares fell."]).shape == (1, 3)


def test_missing_or_non_fp32_source_is_a_clear_error(work_root, capsys):
    with pytest.raises(FinCompressError, match="not found"):
        ptq.main(["--root", str(work_root), "--source", "nope"])
    assert cli.run(qat.main, ["--root", str(work_root), "--source", "nope"]) == 2
    assert "source variant 'nope' not found" in capsys.readouterr().err
    info = {"model_name": "int8", "technique": "t", "source_checkpoint": "teacher", "val_macro_f1": 0.5,
            "num_parameters": 1, "hyperparameters": {}, "data_fingerprint": "x", "format": "onnx"}
    save_variant(work_root / "checkpoints" / "int8", lambda folder: (folder / "model.onnx").write_bytes(b"x"), info)
    with pytest.raises(FinCompressError, match="not an FP32"):
        ptq.main(["--root", str(work_root), "--source", "int8"])
    with pytest.raises(FinCompressError, match="not an FP32"):
        qat.main(["--root", str(work_root), "--source", "int8", "--max-steps", "1"])
    with pytest.raises(FinCompressError, match=">= 1"):
        ptq.main(["--root", str(work_root), "--calibration-samples", "0"])

"""The FP32 ONNX export: each layer's attention runs as one MultiHeadAttention kernel (pruned layers with
their own head counts), a layer whose attention internals are read elsewhere is left alone, the logits
are the PyTorch model's, and sessions run LayerNorm unfused."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import helper

from conftest import save_tiny_model
from fincompress.common import loader
from fincompress.common.loader import encode_texts, export_onnx, load_fp32_model, onnx_session
from fincompress.common.onnx_graph import fuse_attention, node_module
from fincompress.pruning.structured_pruning import head_counts, remove_heads

TEXTS = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn compared to the previous year .",
         "Shares fell .", "The company said nothing about its dividend ."]  # uneven lengths: padded keys


@pytest.fixture
def pruned_model(tmp_path):
    """A tiny 2-layer, 4-head BERT whose layer 0 keeps one head: layers with different head counts."""
    model, tokenizer = load_fp32_model(save_tiny_model(tmp_path / "tiny", seed=3))
    remove_heads(model, {0: [0, 1, 3]})
    assert head_counts(model) == [1, 4]
    return model.eval(), tokenizer


def ort_logits(path, encoded) -> np.ndarray:
    return onnx_session(path).run(["logits"], encoded)[0]


def torch_logits(model, encoded) -> np.ndarray:
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).logits.numpy()


def raw_export(model, path, monkeypatch):
    """The dynamo export as torch.onnx writes it, without the attention fusion."""
    with monkeypatch.context() as patch:
        patch.setattr(loader, "fuse_attention", lambda graph, head_size: 0)
        return export_onnx(model, path)


def test_export_runs_each_attention_as_one_kernel_with_the_models_logits(pruned_model, tmp_path, monkeypatch):
    model, tokenizer = pruned_model
    encoded = encode_texts(tokenizer, TEXTS)
    assert encoded["attention_mask"].min() == 0  # padding keys present: the mask must take effect
    fused = onnx.load(str(export_onnx(model, tmp_path / "fused.onnx")))
    attention = [n for n in fused.graph.node if n.op_type == "MultiHeadAttention"]
    assert [helper.get_attribute_value(a.attribute[0]) for a in attention] == [1, 4]  # each layer its own heads
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops["Softmax"] == ops["Transpose"] == 0
    raw = raw_export(model, tmp_path / "raw.onnx", monkeypatch)
    assert Counter(n.op_type for n in onnx.load(str(raw)).graph.node)["Softmax"] == 2
    expected = torch_logits(model, encoded)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ort_logits(tmp_path / "fused.onnx", encoded), expected, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(ort_logits(raw, encoded), expected, rtol=0, atol=1e-5 * scale)


def test_a_layer_whose_attention_internals_are_read_elsewhere_is_left_alone(pruned_model, tmp_path, monkeypatch):
    model, tokenizer = pruned_model
    graph = onnx.load(str(raw_export(model, tmp_path / "raw.onnx", monkeypatch)))
    softmax = [n for n in graph.graph.node if n.op_type == "Softmax"]
    layer_1 = next(n for n in softmax if ".layer.1." in f"{node_module(n)}.")
    probabilities = helper.make_tensor_value_info(layer_1.output[0], onnx.TensorProto.FLOAT, ["b", "h", "s", "k"])
    graph.graph.output.append(probabilities)

    assert fuse_attention(graph, head_size=8) == 1  # layer 0 only: layer 1's probabilities are a graph output
    assert [n.op_type for n in graph.graph.node].count("Softmax") == 1
    onnx.checker.check_model(graph)
    path = tmp_path / "partly.onnx"
    onnx.save_model(graph, str(path))
    encoded = encode_texts(tokenizer, TEXTS)
    expected = torch_logits(model, encoded)
    np.testing.assert_allclose(ort_logits(path, encoded), expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_a_head_size_that_does_not_divide_the_projection_fuses_nothing(pruned_model, tmp_path, monkeypatch):
    model, _ = pruned_model
    graph = onnx.load(str(raw_export(model, tmp_path / "raw.onnx", monkeypatch)))
    before = len(graph.graph.node)
    assert fuse_attention(graph, head_size=5) == 0  # 8 and 32 wide projections: no head count fits
    assert len(graph.graph.node) == before


def test_sessions_run_layer_norm_unfused(pruned_model, tmp_path):
    """ORT's SkipLayerNormalization kernel measured 4-7x slower than the Add + LayerNormalization it replaces."""
    model, _ = pruned_model
    optimized = tmp_path / "optimized.onnx"
    onnx_session(export_onnx(model, tmp_path / "fused.onnx"), optimized_model_path=optimized)
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 5  # embeddings + 2 per layer

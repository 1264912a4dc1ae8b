"""INT8 PTQ / QAT on tiny BERTs: the typed recipe, calibration, onnxruntime's rounding in QAT, agreement of
QAT's fake-quantized model with its deployed INT8 graph, F1 recorded as the loader measures it, clear errors."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization.quant_utils import compute_data_quant_params

from conftest import REPO, save_tiny_model
from fincompress.common import cli
from fincompress.common.data import read_split
from fincompress.common.loader import (
    OnnxPredictor,
    encode_texts,
    ensure_onnx_export,
    export_onnx,
    load_fp32_model,
    load_variant,
    onnx_session,
)
from fincompress.common.metrics import metrics_from_probabilities
from fincompress.common.paths import FinCompressError
from fincompress.common.variants import read_info
from fincompress.pruning.structured_pruning import remove_heads
from fincompress.quantization import ptq, qat
from fincompress.quantization.fake_quant import (
    ActivationObserver,
    convert_qat,
    fake_quantize_weight,
    freeze_observers,
    prepare_qat,
    weight_qparams,
)
from fincompress.quantization.graph_rewrites import fuse_quantized_attention
from fincompress.quantization.int8 import (
    TextCalibrationReader,
    all_groups,
    calibration_reader,
    linear_nodes,
    quantize_static_qdq,
    stage_variant_files,
)
from fincompress.quantization.recipe import DEFAULT_RECIPE, EMBEDDINGS, RECIPES, resolve_recipe

STATIC = RECIPES["static"]


@pytest.fixture(scope="module")
def tiny_fp32(trained_root, tmp_path_factory):
    """(the loader's cached ONNX export, tokenizer, torch model) of a copy of the tiny trained teacher."""
    folder = tmp_path_factory.mktemp("fp32") / "teacher"
    shutil.copytree(trained_root / "checkpoints" / "teacher", folder)
    model, tokenizer = load_fp32_model(folder)
    return ensure_onnx_export(folder), tokenizer, model


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def activation_scales(path) -> dict[str, float]:
    """Scale of every QuantizeLinear on an activation: {quantized tensor: scale}."""
    model = onnx.load(str(path))
    values = initializers(model)
    return {n.input[0]: float(values[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}


def weight_bytes(path) -> int:
    """Bytes of a graph's initializers (a tiny model's file is mostly node metadata, not weights)."""
    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def encoder_layers(path) -> list[str]:
    return [g for g in all_groups(onnx.load(str(path))) if g.startswith("layer.")]


# ----------------------------------------------------------------------------- the recipe

def test_recipes_state_what_onnxruntime_does():
    assert STATIC.weight_qrange() == (-127, 127) and STATIC.activation_qrange() == (0, 255)
    assert RECIPES["static-reduce-range"].weight_qrange() == (-64, 64)
    assert RECIPES["static-u8u8"].weight_qrange() == (0, 255)
    assert STATIC.activation_qparams(-1.0, 3.0) == pytest.approx((4.0 / 255, 64), rel=1e-6)
    with pytest.raises(FinCompressError, match="quantized_attention needs fuse_qkv and fold_bias"):
        STATIC.replace(fuse_qkv=False)  # no fused Q/K/V GEMM to run inside QAttention
    with pytest.raises(FinCompressError, match="per-channel weights are symmetric"):
        STATIC.replace(weight_symmetric=False)  # ORT's QDQ quantizer would silently make them symmetric
    with pytest.raises(FinCompressError, match="calibration method"):
        STATIC.replace(calibration_method="mse")


@pytest.mark.parametrize("flags", [{"avx2", "avx_vnni", "fpu"}, {"avx512_vnni", "amx_int8", "avx2"}, {"sse4_2"},
                                   set()])
def test_the_default_recipe_is_static_on_every_cpu(flags):
    """One documented default (recipe.py: static measured fastest at equal accuracy on every CPU so far),
    whatever the CPU offers; neither PTQ nor QAT offers the former per-CPU `auto`."""
    assert DEFAULT_RECIPE == "static"
    recipe, how = resolve_recipe(None, flags)
    assert recipe == RECIPES["static"] and how["requested"] is None and how["chosen"] == "static"
    assert how["cpu_isa"] == [isa for isa in ("amx_int8", "avx512_vnni", "avx_vnni", "avx2") if isa in flags]
    recipe, how = resolve_recipe("dynamic", flags)
    assert not recipe.is_static and how["requested"] == how["chosen"] == "dynamic"
    for refused in ("fp4", "auto"):
        with pytest.raises(FinCompressError, match="--recipe"):
            resolve_recipe(refused, flags)
    for stage in (ptq, qat):
        recipe_flag = next(a for a in stage.build_parser()._actions if a.dest == "recipe")
        assert "auto" not in recipe_flag.choices and set(recipe_flag.choices) <= set(RECIPES)
    assert qat.build_parser().parse_args([]).recipe == DEFAULT_RECIPE


def test_ptq_method_folds_into_the_recipe():
    parser = ptq.build_parser()
    for argv, recipe in [([], "static"), (["--method", "dynamic"], "dynamic"), (["--method", "static"], "static"),
                         (["--recipe", "static-plain"], "static-plain"), (["--recipe", "dynamic"], "dynamic")]:
        args = parser.parse_args(argv)
        ptq.reconcile_method(args)
        assert args.recipe == recipe, argv
    with pytest.raises(FinCompressError, match="contradicts"):
        ptq.reconcile_method(parser.parse_args(["--method", "dynamic", "--recipe", "static"]))


@pytest.mark.parametrize("name", ["static", "static-u8u8", "static-reduce-range"])
def test_weight_grid_is_onnxruntimes(name, tiny_fp32, small_data_root, tmp_path):
    """QAT's weight scales, zero points and integers are exactly those ORT writes into the graph."""
    # each weight in its own DequantizeLinear
    recipe = RECIPES[name].replace(fuse_qkv=False, fold_bias=False, quantized_attention=False)
    path, tokenizer, _ = tiny_fp32
    weights = torch.randn(6, 40) * torch.linspace(0.01, 3, 6).view(-1, 1)
    weights[2] = 0.0  # a dead row: scale 1, zero point 0 in both
    qmin, qmax = recipe.weight_qrange()
    scale, zero_point = weight_qparams(weights, (qmin, qmax), recipe.weight_symmetric)
    for row in range(weights.shape[0]):
        ort_zero_point, ort_scale = compute_data_quant_params(weights[row].numpy(), recipe.onnx_weight_type,
                                                              recipe.weight_symmetric, recipe.reduce_range)
        assert scale[row].item() == ort_scale.item() and zero_point[row].item() == int(ort_zero_point)

    texts = read_split(small_data_root, "train")["text"].tolist()[:4]
    reader = calibration_reader(tokenizer, texts, recipe)
    quantized = onnx.load(str(quantize_static_qdq(path, tmp_path / "q.onnx", reader, encoder_layers(path), recipe)))
    values, fp32 = initializers(quantized), initializers(onnx.load(str(path)))
    checked = 0
    for node in quantized.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith("_quantized"):
            weight = torch.from_numpy(fp32[node.input[0].removesuffix("_quantized")].T.copy())  # [out, in]
            expected = fake_quantize_weight(weight, recipe)
            stored = values[node.input[0]].astype(np.float32).T
            dequantized = (stored - values[node.input[2]].astype(np.float32).reshape(-1, 1)) * \
                values[node.input[1]].reshape(-1, 1)
            assert values[node.input[0]].dtype == (np.int8 if recipe.weight_type == "int8" else np.uint8)
            np.testing.assert_array_equal(dequantized, expected.numpy())
            checked += 1
    assert checked == 6 * 2  # six Linear weights in each of the two layers


# ----------------------------------------------------------------------------- calibration and the graph

def test_calibration_sets_the_activation_ranges(tiny_fp32, small_data_root, tmp_path):
    path, tokenizer, _ = tiny_fp32
    texts = read_split(small_data_root, "train")["text"].tolist()
    layers = encoder_layers(path)
    few = activation_scales(quantize_static_qdq(path, tmp_path / "few.onnx",
                                                TextCalibrationReader(tokenizer, texts[:2]), layers, STATIC))
    many = activation_scales(quantize_static_qdq(path, tmp_path / "many.onnx",
                                                 TextCalibrationReader(tokenizer, texts[:24]), layers, STATIC))
    assert set(few) == {n.input_tensor for n in linear_nodes(onnx.load(str(path))) if n.group in layers}
    # min/max over a superset of sentences can only widen a range, and here it does widen some
    assert all(many[t] >= few[t] * (1 - 1e-6) for t in few)
    assert any(many[t] > few[t] * 1.01 for t in few)


def ops_ort_runs(path, tmp_path) -> Counter:
    """Op counts of the graph ONNX Runtime actually runs (after the session's own fusions)."""
    optimized = tmp_path / f"{Path(path).stem}.ort.onnx"
    onnx_session(path, optimized_model_path=optimized)
    return Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


def bias_adds(path) -> int:
    """Adds of a constant 1-D bias to a MatMul's output (what the session runs as separate kernels)."""
    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer if len(i.dims) == 1}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    return sum(1 for n in graph.node if n.op_type == "Add" and any(i in constants for i in n.input)
               and any(producers.get(i, "").startswith("MatMul") for i in n.input))


def test_quantizer_emits_one_quantize_per_tensor(tiny_fp32, small_data_root, tmp_path):
    """Per encoder layer ORT's QDQ quantizer emits 6 quantized MatMuls reading 4 distinct tensors (Q, K and V
    read the same one): 4 QuantizeLinear, 4 activation DequantizeLinear (Q, K, V share theirs), 6 weight ones."""
    path, tokenizer, _ = tiny_fp32
    layers = encoder_layers(path)
    texts = read_split(small_data_root, "train")["text"].tolist()[:4]
    graph = onnx.load(str(quantize_static_qdq(path, tmp_path / "q.onnx", TextCalibrationReader(tokenizer, texts),
                                              layers, RECIPES["static-plain"]))).graph
    ops = Counter(n.op_type for n in graph.node)
    weights = sum(1 for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized"))
    assert (ops["QuantizeLinear"], ops["DequantizeLinear"] - weights, weights) == (4 * len(layers), 4 * len(layers),
                                                                                   6 * len(layers))


def test_graph_rewrites_change_the_cost_not_the_numbers(tiny_fp32, small_data_root, tmp_path):
    """Q/K/V fused into one integer GEMM, every bias folded into its GEMM, and that GEMM run inside the integer
    attention kernel: per layer the session runs 3 integer GEMMs and one QAttention instead of 6 GEMMs, no
    bias Add instead of 5, no Split, still one QuantizeLinear per tensor; symmetric weights carry no zero
    point; the logits are those of the graph ORT's quantizer emits (ORT's BERT fusions first: the same graph)."""
    path, tokenizer, model = tiny_fp32
    layers = encoder_layers(path)
    texts = read_split(small_data_root, "train")["text"].tolist()[:8]
    encoded = encode_texts(tokenizer, read_split(small_data_root, "test")["text"].tolist())
    assert encoded["attention_mask"].min() == 0  # padded keys: QAttention must apply the mask as MHA did
    logits, ops, adds, zero_points = {}, {}, {}, {}
    for recipe in (RECIPES["static-plain"], RECIPES["static"], RECIPES["static-optimized"]):
        int8 = quantize_static_qdq(path, tmp_path / f"{recipe.name}.onnx", TextCalibrationReader(tokenizer, texts),
                                   [EMBEDDINGS, *layers], recipe)
        folder = stage_variant_files(tmp_path / recipe.name, int8, tokenizer, copy.deepcopy(model.config))
        logits[recipe.name] = OnnxPredictor(folder, {}, folder / "model.onnx").logits(encoded)
        ops[recipe.name] = ops_ort_runs(int8, tmp_path)
        adds[recipe.name] = bias_adds(tmp_path / f"{recipe.name}.ort.onnx")
        zero_points[recipe.name] = weight_zero_points(int8)
    plain = ops["static-plain"]
    # plain: every bias but the FFN-in one (ORT fuses that into BiasGelu) is an Add after its GEMM
    assert plain["MatMulIntegerToFloat"] == 6 * len(layers) and adds["static-plain"] == 5 * len(layers)
    assert plain["MultiHeadAttention"] == len(layers) and plain["QAttention"] == 0
    for name in ("static", "static-optimized"):
        assert ops[name]["MatMulIntegerToFloat"] == 3 * len(layers) and adds[name] == 0
        assert ops[name]["QAttention"] == len(layers)
        assert ops[name]["MultiHeadAttention"] == ops[name]["Split"] == 0 and zero_points[name] == 0
        assert ops[name]["QuantizeLinear"] == plain["QuantizeLinear"] == 4 * len(layers)
        assert sum(ops[name].values()) < sum(plain.values())
        scale = np.abs(logits["static-plain"]).max()
        np.testing.assert_allclose(logits[name], logits["static-plain"], rtol=0, atol=1e-5 * scale)


def weight_zero_points(path) -> int:
    """How many of a graph's integer GEMMs read a weight zero point."""
    return sum(1 for n in onnx.load(str(path)).graph.node
               if n.op_type == "MatMulIntegerToFloat" and len(n.input) > 5 and n.input[5])


@pytest.mark.parametrize("name", ["static", "static-u8u8"])
def test_integer_attention_keeps_each_layers_heads_and_numbers(name, small_data_root, tmp_path):
    """A pruned model (1 head in layer 0, 4 in layer 1): each layer's QAttention has its own head count and the
    logits on a padded batch are those of the same quantized graph run with MultiHeadAttention; unsigned
    weights keep their zero point (128); a layer whose Split output is read elsewhere is left alone."""
    model, tokenizer = load_fp32_model(save_tiny_model(tmp_path / "tiny", seed=5))
    remove_heads(model, {0: [0, 1, 3]})
    fp32 = export_onnx(model.eval(), tmp_path / "fp32.onnx")
    layers = encoder_layers(fp32)
    texts = read_split(small_data_root, "train")["text"].tolist()[:8]
    recipe = RECIPES[name]
    separate = quantize_static_qdq(fp32, tmp_path / "separate.onnx", TextCalibrationReader(tokenizer, texts), layers,
                                   recipe.replace(quantized_attention=False))
    fused = quantize_static_qdq(fp32, tmp_path / "fused.onnx", TextCalibrationReader(tokenizer, texts), layers, recipe)
    attention = [n for n in onnx.load(str(fused)).graph.node if n.op_type == "QAttention"]
    assert [(a.attribute[0].name, a.attribute[0].i) for a in attention] == [("num_heads", 1), ("num_heads", 4)]
    assert all(len(a.input) == (8 if recipe.weight_type == "uint8" else 7) for a in attention)
    encoded = encode_texts(tokenizer, read_split(small_data_root, "test")["text"].tolist()[:6])
    assert encoded["attention_mask"].min() == 0
    expected = onnx_session(separate).run(["logits"], encoded)[0]
    np.testing.assert_allclose(onnx_session(fused).run(["logits"], encoded)[0], expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())

    graph = onnx.load(str(separate))
    split = next(n for n in graph.graph.node if n.op_type == "Split")
    graph.graph.output.append(onnx.helper.make_tensor_value_info(split.output[0], TensorProto.FLOAT, ["b", "s", "h"]))
    assert fuse_quantized_attention(graph) == 1  # the other layer only
    onnx.checker.check_model(graph)


def test_learned_ranges_override_calibration(tiny_fp32, small_data_root, tmp_path):
    path, tokenizer, _ = tiny_fp32
    nodes = [n for n in linear_nodes(onnx.load(str(path))) if n.group.startswith("layer.")]
    ranges = {n.module: (-1.0, 3.0) for n in nodes}
    texts = read_split(small_data_root, "train")["text"].tolist()[:2]
    scales = activation_scales(quantize_static_qdq(path, tmp_path / "q.onnx", TextCalibrationReader(tokenizer, texts),
                                                   {n.group for n in nodes}, STATIC, activation_ranges=ranges))
    expected, _ = STATIC.activation_qparams(-1.0, 3.0)
    assert scales and all(s == pytest.approx(expected, rel=1e-6) for s in scales.values())


def test_straight_through_estimator_passes_gradients_inside_the_range():
    observer = ActivationObserver(STATIC)
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
    quantized = fake_quantize_weight(weight, STATIC)
    (quantized * torch.arange(32.0).view(4, 8)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(32.0).view(4, 8))  # symmetric per-row range never clips
    assert not torch.equal(quantized, weight)
    steps = quantized.detach() / (weight.detach().abs().amax(dim=1, keepdim=True) / 127)
    assert torch.allclose(steps, steps.round(), atol=1e-4)  # on the INT8 grid of each row


def test_quantized_tiny_model_agrees_with_fp32(tiny_fp32, small_data_root, tmp_path):
    path, tokenizer, model = tiny_fp32
    texts = read_split(small_data_root, "test")["text"].tolist()
    train = read_split(small_data_root, "train")["text"].tolist()[:32]
    groups = [EMBEDDINGS, *encoder_layers(path)]
    int8 = quantize_static_qdq(path, tmp_path / "q.onnx", TextCalibrationReader(tokenizer, train), groups, STATIC)
    folder = stage_variant_files(tmp_path / "variant", int8, tokenizer, copy.deepcopy(model.config))
    encoded = encode_texts(tokenizer, texts)
    int8_logits = OnnxPredictor(folder, {}, folder / "model.onnx").logits(encoded)
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
    assert word.data_type == TensorProto.INT8


# ----------------------------------------------------------------------------- QAT's central claim

@pytest.mark.parametrize("name", ["static", pytest.param("static-u8u8", marks=pytest.mark.slow)])
def test_qat_fake_quantized_model_matches_its_deployed_int8_graph(name, trained_root, small_data_root, tmp_path):
    """What QAT trains is what ships: the fake-quantized torch model and the INT8 ONNX graph made from it give
    the same logits on every test sentence.

    Tolerance: max |logit difference| <= 1e-5 of the largest |logit| (about 100 float32 epsilons) + 1e-6 (the
    rounding floor when a barely trained model's logits are near 0), and the
    same argmax on >= 98% of the sentences. Both models hold the same integers (same weight grid, same
    learned activation ranges, the same INT8 embedding table, rounded alike); what remains is float32
    summation order (an integer GEMM scaled once vs a float GEMM of dequantized values) and ORT's vs
    torch's LayerNorm/GELU/softmax kernels: measured 4e-7 relative here. The FP32 model misses the INT8
    graph by over 20x the tolerance (asserted below), so a mismatch between QAT and the deployment (a
    grid, a range, a rounding rule) fails this test.
    """
    recipe = RECIPES[name]
    model, tokenizer = load_fp32_model(trained_root / "checkpoints" / "teacher")
    fp32_model = copy.deepcopy(model)
    groups = recipe.quantized_groups(qat.torch_groups(model))
    prepare_qat(model, *qat.modules_to_fake_quantize(model, groups), recipe)
    train = read_split(small_data_root, "train")["text"].tolist()
    model.train()  # observe activation ranges as QAT's warm-up does
    with torch.no_grad():
        for start in range(0, 64, 16):
            model(**{k: torch.from_numpy(v) for k, v in encode_texts(tokenizer, train[start:start + 16]).items()})
    freeze_observers(model)
    model.eval()
    encoded = encode_texts(tokenizer, read_split(small_data_root, "test")["text"].tolist())
    inputs = {k: torch.from_numpy(v) for k, v in encoded.items()}
    with torch.inference_mode():
        fake_quant, fp32 = model(**inputs).logits.numpy(), fp32_model(**inputs).logits.numpy()

    ranges = convert_qat(model)
    exported = qat.export_onnx(model, tmp_path / "fp32.onnx")
    int8 = quantize_static_qdq(exported, tmp_path / "int8.onnx", calibration_reader(tokenizer, train[:4], recipe),
                               groups, recipe, activation_ranges=ranges)
    folder = stage_variant_files(tmp_path / "variant", int8, tokenizer, model.config)
    deployed = OnnxPredictor(folder, {}, folder / "model.onnx").logits(encoded)

    tolerance = 1e-5 * np.abs(fake_quant).max() + 1e-6
    assert np.abs(deployed - fake_quant).max() <= tolerance
    assert (deployed.argmax(-1) == fake_quant.argmax(-1)).mean() >= 0.98
    assert np.abs(deployed - fp32).max() > 20 * tolerance  # the tolerance is far tighter than quantization error


# ----------------------------------------------------------------------------- the stages

def test_ptq_variant_records_the_f1_the_loader_measures(work_root):
    fp32_export = ensure_onnx_export(work_root / "checkpoints" / "teacher")
    exported_at = fp32_export.stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-m", "fincompress.quantization.ptq", "--root", str(work_root),
                           "--calibration-samples", "8"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    folder = work_root / "checkpoints" / "teacher_ptq_int8"
    info = read_info(folder)
    assert info["format"] == "onnx" and info["source_checkpoint"] == "teacher"
    assert fp32_export.stat().st_mtime_ns == exported_at  # PTQ quantized the loader's export, not a new one
    assert info["size_mb"] > 0 and weight_bytes(folder / "model.onnx") < 0.5 * weight_bytes(fp32_export)
    assert info["hyperparameters"]["recipe"] == STATIC.as_dict()
    assert info["hyperparameters"]["recipe_choice"]["requested"] == "static"
    predictor = load_variant(folder)  # a new process: the variant loads after the writing process exited
    assert predictor.runtime == "onnxruntime"
    for split in ("val", "test"):
        frame = read_split(work_root, split)
        measured = metrics_from_probabilities(frame["label"].to_numpy(), predictor.predict_proba(frame["text"]))
        assert info[f"{split}_metrics"]["macro_f1"] == measured["macro_f1"]
        assert info[f"{split}_metrics"]["confusion_matrix"] == measured["confusion_matrix"]
    assert info["val_macro_f1"] == info["val_metrics"]["macro_f1"]


def test_qat_and_dynamic_variants_load(work_root):
    result = qat.main(["--root", str(work_root), "--max-steps", "2", "--batch-size", "16",
                       "--calibration-samples", "4", "--observer-warmup-steps", "1", "--recipe", "static-u8u8"])
    assert result["steps"] == 2 and result["hyperparameters"]["activation_ranges"] == "learned in QAT"
    assert result["hyperparameters"]["recipe"]["weight_type"] == "uint8"
    assert result["hyperparameters"]["observer_warmup_steps"] == 1
    ptq.main(["--root", str(work_root), "--method", "dynamic"])
    dynamic = read_info(work_root / "checkpoints" / "teacher_dynamic_int8")
    assert dynamic["hyperparameters"]["recipe"]["format"] == "dynamic"
    graph = onnx.load(str(work_root / "checkpoints" / "teacher_dynamic_int8" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    for name in ("teacher_qat_int8", "teacher_dynamic_int8"):
        predictor = load_variant(work_root / "checkpoints" / name)
        assert predictor.info["format"] == "onnx" and predictor.runtime == "onnxruntime"
        assert predictor.predict_proba(["Shares fell."]).shape == (1, 3)


def test_qat_freezes_observers_at_the_planned_step_of_each_process():
    assert qat.observer_freeze_step(50, 1000) == 50
    assert qat.observer_freeze_step(50, 30) == 15  # at most half the run
    assert qat.observer_freeze_step(50, 1) == 1


@pytest.mark.parametrize(("module", "argv", "message"), [
    (ptq, ["--source", "nope"], "source variant 'nope' not found"),
    (qat, ["--source", "nope", "--max-steps", "1"], "source variant 'nope' not found"),
    (ptq, ["--calibration-samples", "0"], "--calibration-samples"),
    (qat, ["--max-steps", "0"], "--max-steps"),
    (qat, ["--observer-warmup-steps", "-1"], "--observer-warmup-steps"),
    (ptq, ["--output-name", "teacher"], "input of this stage"),
    (ptq, ["--method", "dynamic", "--fp32-embeddings"], "apply to static recipes"),
    (ptq, ["--method", "dynamic", "--recipe", "static"], "contradicts"),
    (qat, ["--recipe", "dynamic", "--max-steps", "1"], "invalid choice"),
])
def test_bad_flags_are_one_line_errors(module, argv, message, work_root, capsys):
    try:
        code = cli.run(module.main, ["--root", str(work_root), *argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_non_fp32_source_is_refused(work_root):
    ptq.main(["--root", str(work_root), "--method", "dynamic"])
    with pytest.raises(FinCompressError, match="not an FP32"):
        ptq.main(["--root", str(work_root), "--source", "teacher_dynamic_int8"])
    with pytest.raises(FinCompressError, match="not an FP32"):
        qat.main(["--root", str(work_root), "--source", "teacher_dynamic_int8", "--max-steps", "1"])


def test_sensitivity_report_scores_each_group_both_ways(work_root):
    result = ptq.main(["--root", str(work_root), "--calibration-samples", "8", "--recipe", "static", "--sensitivity"])
    frame = pd.read_csv(result["sensitivity"])
    groups = ["embeddings", "layer.0", "layer.1", "head"]
    assert frame["group"].tolist() == ["(none: FP32 source)", "(all groups INT8)", *groups]
    everything = frame.set_index("group").loc["(all groups INT8)", "macro_f1_only_this_fp32"]
    assert everything == pytest.approx(result["val_macro_f1"])  # the same graph as the saved variant
    assert frame[["macro_f1_only_this_fp32", "macro_f1_only_this_int8"]].stack().between(0, 1).all()

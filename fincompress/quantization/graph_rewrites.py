"""Rewrites that make the static INT8 graph cheaper to run without changing what it computes.

ONNX Runtime fuses DequantizeLinear -> MatMul into an integer GEMM (`MatMulIntegerToFloat`) when a
session opens, but it leaves the bias `Add` after it as a separate kernel (the dynamic graph's
fusion takes the bias; the QDQ one does not), and Q, K and V are three GEMMs over the same input.

- `fuse_shared_input_linears` (FP32 graph, before quantization): the Linear MatMuls of one layer
  that read the same tensor (Q, K, V) become one MatMul over the concatenated weights, one bias Add
  and a Split. Weights are quantized per output channel, so every column keeps its own scale: the
  quantized result is the same numbers, from one GEMM (one pass over the quantized input) instead of three.
- `fold_bias_adds` (QDQ graph, after quantization): DequantizeLinear(x_q), DequantizeLinear(W_q) ->
  MatMul -> Add(bias) becomes one `com.microsoft.MatMulIntegerToFloat(x_q, W_q, scales, zero points,
  bias)`: the kernel ORT would have fused, with the bias added in the GEMM's output stage.
  A weight zero point that is all zeros (symmetric weights) is left out (its default is zero), so MLAS
  runs its scalar-zero-point path instead of the per-column one.
- `fuse_quantized_attention` (QDQ graph, after `fold_bias_adds`): the layer's Q/K/V integer GEMM, the
  Split of its output and the MultiHeadAttention reading the three parts become one
  `com.microsoft.QAttention`: ORT's integer attention kernel, which runs the Q/K/V GEMM per head
  (per-column weight scales, the bias in its output stage) and writes each head's Q, K and V
  straight into the layout the attention core reads, so the Split and the per-head transposes go.
  The same numbers: same integer GEMM, same attention arithmetic.
- `bert_fusions` (FP32 graph, before quantization): ORT's transformer optimizer
  (`onnxruntime.transformers.optimizer`, model_type "bert"). On our dynamo export it finds
  SkipLayerNormalization and BiasGelu (which the session's own optimiser also fuses) and no
  attention subgraph; kept as a recipe switch so a newer exporter or ORT can be tried.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fincompress.common.onnx_graph import MS_DOMAIN, NAME_SCOPES, drop_unused_initializers, import_ms_domain

FUSED_MODULES = "fincompress.fused_modules"  # node metadata: the torch modules a fused MatMul stands for


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            found[name].append(node)
    for output in model.graph.output:
        found[output.name].append(None)  # a graph output is consumed by the caller
    return found


def _bias_add(matmul: onnx.NodeProto, consumers, initializers) -> tuple | None:
    """(Add node, bias name) if `matmul`'s only consumer adds a constant 1-D bias to it."""
    users = consumers.get(matmul.output[0], [])
    if len(users) != 1 or users[0] is None or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == matmul.output[0] else add.input[0]
    bias = initializers.get(other)
    if bias is None or len(bias.dims) != 1:
        return None
    return add, other


def _fused_nodes(model: onnx.ModelProto, tensor: str, members: list, weights: list[np.ndarray],
                 initializers: dict, module_of: dict[str, str]) -> list[onnx.NodeProto]:
    """One MatMul over the concatenated weights, one Add of the concatenated biases, a Split back into the
    members' outputs (the new initializers are added to `model`)."""
    biases = [numpy_helper.to_array(initializers[b]) for _, _, b in members]
    first = members[0][0]
    stem = f"{first.name}_fused{len(members)}"
    model.graph.initializer.extend([
        numpy_helper.from_array(np.concatenate(weights, axis=1), f"{stem}_weight"),
        numpy_helper.from_array(np.concatenate(biases), f"{stem}_bias"),
        numpy_helper.from_array(np.array([w.shape[1] for w in weights], dtype=np.int64), f"{stem}_split")])
    matmul = helper.make_node("MatMul", [tensor, f"{stem}_weight"], [f"{stem}_out"], name=stem)
    matmul.metadata_props.extend(p for p in first.metadata_props if p.key == NAME_SCOPES)
    matmul.metadata_props.add(key=FUSED_MODULES, value=",".join(module_of[m.name] for m, _, _ in members))
    add = helper.make_node("Add", [f"{stem}_out", f"{stem}_bias"], [f"{stem}_biased"], name=f"{stem}_add")
    split = helper.make_node("Split", [f"{stem}_biased", f"{stem}_split"], [a.output[0] for _, a, _ in members],
                             name=f"{stem}_split", axis=-1)
    return [matmul, add, split]


def fuse_shared_input_linears(model: onnx.ModelProto, module_of: dict[str, str]) -> int:
    """Fuse MatMul+bias pairs that read the same tensor (Q, K, V) into one MatMul, one Add and a Split.

    module_of: {MatMul node name: torch module} for the Linear nodes that may be fused (one layer's
    share a group, so only nodes in the same layer read the same tensor). Returns how many fused
    MatMuls were made. The fused node keeps the first node's name scopes and lists every module it
    stands for in its `fincompress.fused_modules` metadata.
    """
    initializers = {i.name: i for i in model.graph.initializer}
    consumers = _consumers(model)
    by_input: dict[str, list[tuple[onnx.NodeProto, onnx.NodeProto, str]]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name in module_of and node.input[1] in initializers:
            found = _bias_add(node, consumers, initializers)
            if found is not None:
                by_input[node.input[0]].append((node, *found))
    replaced: set[str] = set()  # names of the MatMul and Add nodes a fusion replaces
    inserted: dict[str, list[onnx.NodeProto]] = {}  # first replaced MatMul's name -> the nodes standing in
    for tensor, members in by_input.items():
        weights = [numpy_helper.to_array(initializers[m.input[1]]) for m, _, _ in members]
        if len(members) < 2 or len({w.shape[0] for w in weights}) != 1:
            continue
        replaced |= {n.name for m, a, _ in members for n in (m, a)}
        inserted[members[0][0].name] = _fused_nodes(model, tensor, members, weights, initializers, module_of)
    if not inserted:
        return 0
    # The fused nodes stand where the first MatMul stood: their input exists there, and every reader of
    # the Split's outputs came after the Adds they replace, so the order stays topological.
    nodes = []
    for node in model.graph.node:
        nodes += inserted.get(node.name, [])
        if node.name not in replaced:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    fused = len(inserted)
    drop_unused_initializers(model)
    return fused


def _replace_nodes(model: onnx.ModelProto, replacements: dict[str, onnx.NodeProto], removed: set[str]) -> None:
    """Put each replacement where the node of its name stood, drop the `removed` nodes and what only they read."""
    kept = [replacements.get(n.name, n) for n in model.graph.node if n.name not in removed]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    import_ms_domain(model)
    drop_unused_initializers(model)


def _all_zero(initializer: onnx.TensorProto) -> bool:
    return not numpy_helper.to_array(initializer).any()


def fold_bias_adds(model: onnx.ModelProto) -> int:
    """DQ(x_q), DQ(W_q) -> MatMul -> Add(bias) => MatMulIntegerToFloat(x_q, W_q, ..., bias). Returns the count.

    An all-zero weight zero point is omitted (its default is zero): the same numbers, less work per GEMM."""
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    replacements: dict[str, onnx.NodeProto] = {}  # MatMul name -> its integer GEMM with the bias
    removed: set[str] = set()  # names of the bias Adds and weight DequantizeLinears folded in
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        a_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        if a_dq is None or w_dq is None or a_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue
        if not all(name in initializers for name in w_dq.input) or len(a_dq.input) < 3 or len(w_dq.input) < 3 \
                or len(consumers[w_dq.output[0]]) != 1:
            continue
        found = _bias_add(node, consumers, initializers)
        if found is None:
            continue
        add, bias = found
        weight_zero_point = "" if _all_zero(initializers[w_dq.input[2]]) else w_dq.input[2]
        fused = helper.make_node(
            "MatMulIntegerToFloat",
            [a_dq.input[0], w_dq.input[0], a_dq.input[1], w_dq.input[1], a_dq.input[2], weight_zero_point, bias],
            [add.output[0]], name=f"{node.name}_integer", domain=MS_DOMAIN)
        fused.metadata_props.extend(node.metadata_props)
        replacements[node.name] = fused
        removed |= {add.name, w_dq.name}
    if not replacements:
        return 0
    kept = [replacements.get(n.name, n) for n in model.graph.node if n.name not in removed]
    # an activation DequantizeLinear goes when nothing reads it any more (Q, K and V shared one)
    still_read = {name for n in kept for name in n.input} | {o.name for o in model.graph.output}
    removed |= {n.name for n in kept if n.op_type == "DequantizeLinear" and n.output[0] not in still_read}
    _replace_nodes(model, replacements, removed)
    return len(replacements)


def _qkv_gemm(attention: onnx.NodeProto, producers, consumers, initializers) -> tuple | None:
    """(integer GEMM, Split) when `attention`'s Q, K and V are the three equal parts of one integer GEMM
    with a bias (what `fuse_shared_input_linears` + `fold_bias_adds` make) that nothing else reads."""
    if len(attention.input) < 3 or any(attention.input[3:4]) or any(attention.input[5:]) \
            or {a.name for a in attention.attribute} != {"num_heads"}:
        return None  # an attention bias, past state or non-default attribute: QAttention would differ
    split = producers.get(attention.input[0])
    if split is None or split.op_type != "Split" or list(split.output) != list(attention.input[:3]) \
            or any(len(consumers[o]) != 1 for o in split.output) or len(split.input) < 2:
        return None
    gemm = producers.get(split.input[0])
    if gemm is None or gemm.op_type != "MatMulIntegerToFloat" or len(gemm.input) < 7 or not gemm.input[6] \
            or len(consumers[gemm.output[0]]) != 1:
        return None
    sizes = initializers.get(split.input[1])
    if sizes is None or gemm.input[1] not in initializers or len(set(numpy_helper.to_array(sizes).tolist())) != 1:
        return None  # Q, K and V of different widths: QAttention splits its GEMM in three equal parts
    input_zero_point = initializers.get(gemm.input[4])
    if input_zero_point is None or input_zero_point.data_type != onnx.TensorProto.UINT8:
        return None  # QAttention's CPU kernel reads uint8 activations only
    return gemm, split


def fuse_quantized_attention(model: onnx.ModelProto) -> int:
    """MatMulIntegerToFloat(Q|K|V) -> Split -> MultiHeadAttention => one QAttention. Returns the count.

    Run after `fold_bias_adds`. A layer is left alone unless its Q, K and V come from one integer GEMM
    with a bias, in three equal parts read by the attention only, and its activations are uint8."""
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    replacements: dict[str, onnx.NodeProto] = {}  # MultiHeadAttention name -> its QAttention
    removed: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MultiHeadAttention":
            continue
        found = _qkv_gemm(node, producers, consumers, initializers)
        if found is None:
            continue
        gemm, split = found
        x_q, w_q, x_scale, w_scale, x_zero_point, w_zero_point, bias = gemm.input[:7]
        mask = node.input[4] if len(node.input) > 4 else ""
        inputs = [x_q, w_q, bias, x_scale, w_scale, mask, x_zero_point] + ([w_zero_point] if w_zero_point else [])
        fused = helper.make_node("QAttention", inputs, [node.output[0]], name=f"{node.name}_quantized",
                                 domain=MS_DOMAIN, num_heads=helper.get_attribute_value(node.attribute[0]))
        fused.metadata_props.extend(node.metadata_props)
        replacements[node.name] = fused
        removed |= {gemm.name, split.name}
    if not replacements:
        return 0
    _replace_nodes(model, replacements, removed)
    return len(replacements)


def bert_fusions(model_path: str) -> onnx.ModelProto:
    """ORT's transformer optimizer, python fusions only (opt_level 0: node names and torch name scopes
    survive). Attention and embedding fusions are off: they would swallow the MatMuls and Gathers the
    recipe quantizes by name."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_attention = False
    options.enable_embed_layer_norm = False
    model = optimize_model(str(model_path), model_type="bert", num_heads=0, hidden_size=0,
                           optimization_options=options, opt_level=0).model
    import_ms_domain(model)  # the fused ops are contrib ops; the optimizer adds their domain only when saving
    return model

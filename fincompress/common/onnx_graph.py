"""ONNX graph helpers for the graphs `loader.export_onnx` makes, and the attention fusion every export gets.

The dynamo exporter records on each node the torch modules whose forward made it
(`pkg.torch.onnx.name_scopes`); `node_module` reads it, so rewrites can select nodes by torch module
rather than by fragile op patterns.

`fuse_attention`: everything between a layer's Q/K/V projections and its attention-output Linear
(head reshapes and transposes, QK^T, scale, mask, softmax, PV: about 20 kernels per layer in the
dynamo export, whose pattern ORT's transformer optimizer does not recognise) becomes one
`com.microsoft.MultiHeadAttention`, masked by the input attention_mask. The projections stay
MatMuls, so the INT8 stages still quantize them. Measured at FinBERT's shape on an AMD EPYC Zen 5,
2 threads: static INT8 kernel time 9.7 -> 8.8 ms; the kernels it replaces took ~1.5 ms, MultiHeadAttention 0.6.
"""

from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import helper

MS_DOMAIN = "com.microsoft"
NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def node_metadata(node: onnx.NodeProto, key: str) -> str | None:
    """The value of one metadata entry of a node, or None."""
    return next((p.value for p in node.metadata_props if p.key == key), None)


def node_scopes(node: onnx.NodeProto) -> list[str] | None:
    """The torch name scopes the dynamo exporter recorded on a node (outermost first), or None."""
    scopes = node_metadata(node, NAME_SCOPES)
    return None if scopes is None else [s.strip(" '\"") for s in scopes.strip("[]").split(",")]


def node_module(node: onnx.NodeProto) -> str | None:
    """The torch module whose forward made this node (the scope above the op's own name)."""
    names = node_scopes(node)
    if not names:
        return None
    return names[-2] if len(names) >= 2 else names[-1]


ATTENTION_PROJECTIONS = ("query", "key", "value")


def _outside_readers(model: onnx.ModelProto, cores: dict[str, list[onnx.NodeProto]]) -> dict[str, int]:
    """Tensor -> how many readers no fusion removes (nodes outside every core, and the graph outputs)."""
    in_any_core = {id(n) for nodes in cores.values() for n in nodes}
    readers: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if id(node) not in in_any_core:
            for name in node.input:
                readers[name] += 1
    for output in model.graph.output:
        readers[output.name] += 1
    return readers


def _core_boundary(attention: str, core: list[onnx.NodeProto], producers: dict, module_of: dict,
                   outside_readers: dict[str, int]) -> tuple[list[str], list[str | None]]:
    """What a core hands out (tensors read outside it) and the one tensor it reads from each projection."""
    made = {o for n in core for o in n.output}
    contexts = [o for o in made if outside_readers[o]]
    read = {name for n in core for name in n.input if name and name not in made}
    qkv: list[str | None] = []
    for projection in ATTENTION_PROJECTIONS:
        found = [t for t in read if t in producers and module_of[id(producers[t])] == f"{attention}.{projection}"]
        qkv.append(found[0] if len(found) == 1 else None)
    return contexts, qkv


def fuse_attention(model: onnx.ModelProto, head_size: int, mask_input: str = "attention_mask") -> int:
    """Replace each self-attention core (after the Q/K/V projections) by one MultiHeadAttention node.

    The core of attention module A is every node the exporter made directly in A's forward (not in
    its query/key/value Linears); it must read one tensor from each projection and hand exactly one
    tensor (the context, batch x tokens x heads*head_size) to the rest of the graph, or the layer is
    left as it is. The head count comes from the query weight's width / head_size, so pruned layers
    keep their own. Padding keys are masked by `mask_input` (1 keep, 0 pad), as the exported mask is.
    Returns how many layers were fused.
    """
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    module_of = {id(n): node_module(n) for n in model.graph.node}
    projections = {m.rsplit(".", 1)[0] for m in module_of.values()
                   if m and m.rsplit(".", 1)[-1] == ATTENTION_PROJECTIONS[0]}
    cores = {a: [n for n in model.graph.node if module_of[id(n)] == a] for a in sorted(projections)}
    outside_readers = _outside_readers(model, cores)
    has_mask = any(i.name == mask_input for i in model.graph.input)
    mask32 = f"{mask_input}_int32"
    fused: dict[str, onnx.NodeProto] = {}  # context tensor -> the MultiHeadAttention making it
    for attention, core in cores.items():
        contexts, qkv = _core_boundary(attention, core, producers, module_of, outside_readers)
        if len(contexts) != 1 or None in qkv:
            continue
        widths = {_projection_width(producers[t], producers, initializers) for t in qkv}
        width = widths.pop() if len(widths) == 1 else 0
        if not width or width % head_size:
            continue
        node = helper.make_node("MultiHeadAttention", [*qkv, "", mask32 if has_mask else ""], [contexts[0]],
                                name=f"{attention}.MultiHeadAttention", domain=MS_DOMAIN,
                                num_heads=width // head_size)
        node.metadata_props.add(key=NAME_SCOPES, value=str(["", attention, "MultiHeadAttention"]))
        fused[contexts[0]] = node
    if not fused:
        return 0
    nodes = [helper.make_node("Cast", [mask_input], [mask32], name=f"{mask32}_cast", to=onnx.TensorProto.INT32)
             ] if has_mask else []
    for node in model.graph.node:
        made_context = [o for o in node.output if o in fused]
        nodes.append(fused[made_context[0]] if made_context else node)
    del model.graph.node[:]
    model.graph.node.extend(live_nodes(nodes, {o.name for o in model.graph.output}))
    import_ms_domain(model)
    drop_unused_initializers(model)
    return len(fused)


def _projection_width(node: onnx.NodeProto, producers: dict, initializers: dict) -> int:
    """Output width of a Linear projection ending in `node` (its MatMul, or the bias Add after it)."""
    if node.op_type == "Add":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"), node)
    weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
    return int(weight.dims[-1]) if weight is not None and len(weight.dims) == 2 else 0


def live_nodes(nodes: list[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` without those whose outputs nothing reads (repeatedly: a dead node's inputs may die too)."""
    needed, live = set(graph_outputs), []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(node.input)
    return live[::-1]


def import_ms_domain(model: onnx.ModelProto) -> None:
    """Declare the com.microsoft opset (contrib ops) if the model does not yet."""
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers nothing reads and shape records of tensors nothing produces any more."""
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    for initializer in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(initializer)
    produced = {o for n in model.graph.node for o in n.output}
    for record in [v for v in model.graph.value_info if v.name not in produced]:
        model.graph.value_info.remove(record)

"""Structured pruning of BERT-family encoders: our own head and neuron masks, importance scores,
and physical removal (smaller Linear layers, so files shrink and latency drops).

transformers 5 removed `prune_heads` and silently ignores `head_mask`, so everything here is
written against the module layout `encoder.layer[i].attention.{self.query/key/value, output.dense}`
and `encoder.layer[i].{intermediate.dense, output.dense}`:

- Masks. `masked(model, head_masks, neuron_masks)` multiplies each head's slice of the attention
  output *before* its output projection (`[batch, seq, heads * head_size]`) by `head_masks[l][h]`,
  and each feed-forward neuron's activation (the input of `output.dense`) by `neuron_masks[l][n]`,
  with forward pre-hooks. A mask of 0 is exactly what removing the head or neuron computes.
- Importance (higher = keep):
  * `gradient`: Michel et al. 2019, "Are Sixteen Heads Really Better than One?":
    I_h = sum over batches of |dL/d xi_h| at xi = 1, then L2-normalised within each layer
    (their setting) so heads of different layers rank on one scale. FFN neurons are scored
    the same way (|dL/d mask| of a neuron mask, whatever `--importance` is for heads).
  * `entropy`: the mean entropy of each head's attention distribution over real (non-padding)
    query tokens, each row normalised by log(number of real keys) so it lies in [0, 1].
    Importance = 1 - normalised entropy: *high-entropy (diffuse, near-uniform) heads count as
    least important and go first*; focused heads are kept. A near-uniform head returns roughly
    the average of the value vectors, which the residual stream largely carries already, while
    the heads found to matter (Voita et al. 2019: positional, syntactic, rare-token heads) attend
    confidently. Needs attention maps: scored with `eager` attention (sdpa returns none).
- Removal. `remove_heads` slices the query/key/value output rows and the attention-output input
  columns and updates `num_attention_heads` / `all_head_size`; at least one head stays in every
  layer. `remove_neurons` slices the intermediate rows and output columns. Both record the new
  per-layer shapes in `config.head_counts` / `config.intermediate_sizes`; the common loader
  (`load_fp32_model`) rebuilds the shapes from the saved weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.data import DataLoader

from fincompress.common.data import model_inputs
from fincompress.common.paths import FinCompressError

IMPORTANCE_METHODS = ("gradient", "entropy")
MIN_HEADS_PER_LAYER = 1


# ----------------------------------------------------------------------------- shapes

def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-family model (BertForSequenceClassification, BertModel, ...)."""
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "attention") and hasattr(layer.attention, "self")
                                 and hasattr(layer, "intermediate") for layer in layers):
        raise FinCompressError(f"{type(model).__name__} is not a BERT-family encoder "
                               "(expected encoder.layer[i].attention.self / .intermediate)")
    return list(layers)


def head_counts(model: nn.Module) -> list[int]:
    return [layer.attention.self.num_attention_heads for layer in encoder_layers(model)]


def intermediate_sizes(model: nn.Module) -> list[int]:
    return [layer.intermediate.dense.out_features for layer in encoder_layers(model)]


def original_head_total(model: nn.Module) -> int:
    """Heads of the unpruned architecture (the config keeps the original per-layer count)."""
    return model.config.num_hidden_layers * model.config.num_attention_heads


def attention_parameter_count(model: nn.Module) -> int:
    """Parameters that belong to heads: query/key/value weights and biases, attention-output weight.

    (The attention-output bias and LayerNorm are per hidden unit, not per head: they stay.)
    """
    total = 0
    for layer in encoder_layers(model):
        attn = layer.attention
        for linear in (attn.self.query, attn.self.key, attn.self.value):
            total += sum(p.numel() for p in linear.parameters())
        total += attn.output.dense.weight.numel()
    return total


def record_shapes(model: nn.Module) -> None:
    """Write the per-layer shapes into the config (saved in config.json with the model)."""
    model.config.head_counts = head_counts(model)
    model.config.intermediate_sizes = intermediate_sizes(model)


# ----------------------------------------------------------------------------- masks

def _scale_groups_hook(mask: torch.Tensor, group_size: int):
    """A forward pre-hook multiplying consecutive groups of `group_size` input features by `mask`."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        features = args[0]
        grouped = features.unflatten(-1, (mask.numel(), group_size))
        scaled = (grouped * mask.to(features.dtype).unsqueeze(-1)).flatten(-2)
        return (scaled, *args[1:])

    return hook


def _check_mask_sizes(masks: Sequence[torch.Tensor], sizes: list[int], what: str) -> None:
    if [m.numel() for m in masks] != sizes:
        raise ValueError(f"{what} mask sizes {[m.numel() for m in masks]} do not match the model's {sizes}")


@contextmanager
def masked(model: nn.Module, head_masks: Sequence[torch.Tensor] | None = None,
           neuron_masks: Sequence[torch.Tensor] | None = None) -> Iterator[nn.Module]:
    """Run `model` with heads (per layer, one value per head) and FFN neurons scaled by masks."""
    layers = encoder_layers(model)
    if head_masks is not None:
        _check_mask_sizes(head_masks, head_counts(model), "head")
    if neuron_masks is not None:
        _check_mask_sizes(neuron_masks, intermediate_sizes(model), "neuron")
    handles = []
    try:
        for index, layer in enumerate(layers):
            if head_masks is not None:
                hook = _scale_groups_hook(head_masks[index], layer.attention.self.attention_head_size)
                handles.append(layer.attention.output.dense.register_forward_pre_hook(hook))
            if neuron_masks is not None:
                handles.append(layer.output.dense.register_forward_pre_hook(_scale_groups_hook(neuron_masks[index], 1)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily switch to eager attention (the only implementation that returns attention maps)."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield model
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


# ----------------------------------------------------------------------------- importance

def _batches(loader: DataLoader, max_batches: int | None) -> Iterator[dict]:
    for number, batch in enumerate(loader):
        if max_batches is not None and number >= max_batches:
            return
        yield batch


def gradient_importance(model: nn.Module, loader: DataLoader, *, neurons: bool = False,
                        max_batches: int | None = None, normalize_heads: bool = True
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Michel et al. 2019: accumulated |d loss / d mask| per head (and per FFN neuron if asked).

    Gradients are taken for the masks only (`torch.autograd.grad`), so the model's own `.grad`
    stays untouched. Returns (head scores per layer, neuron scores per layer or None).
    """
    was_training = model.training
    model.eval()  # no dropout: the score is a property of the model, not of a dropout draw
    head_masks = [torch.ones(n, requires_grad=True) for n in head_counts(model)]
    neuron_masks = [torch.ones(n, requires_grad=True) for n in intermediate_sizes(model)] if neurons else None
    masks = head_masks + (neuron_masks or [])
    scores = [torch.zeros(m.numel()) for m in masks]
    seen = 0
    with masked(model, head_masks, neuron_masks):
        for batch in _batches(loader, max_batches):
            logits = model(**model_inputs(batch)).logits
            loss = nn.functional.cross_entropy(logits.float(), batch["labels"])
            for score, grad in zip(scores, torch.autograd.grad(loss, masks)):
                score += grad.detach().abs()
            seen += 1
    model.train(was_training)
    if seen == 0:
        raise FinCompressError("no validation batches to score importance on")
    head_scores = scores[:len(head_masks)]
    if normalize_heads:  # Michel et al.: L2-normalise within each layer before the global ranking
        head_scores = [s / s.norm().clamp_min(1e-20) for s in head_scores]
    return head_scores, (scores[len(head_masks):] if neurons else None)


@torch.no_grad()
def entropy_importance(model: nn.Module, loader: DataLoader, *, max_batches: int | None = None) -> list[torch.Tensor]:
    """1 - mean normalised attention entropy per head (focused heads high, diffuse heads low)."""
    was_training = model.training
    model.eval()
    totals = [torch.zeros(n, dtype=torch.float64) for n in head_counts(model)]
    queries = 0.0
    with eager_attention(model):
        for batch in _batches(loader, max_batches):
            inputs = model_inputs(batch)
            attentions = model(**inputs, output_attentions=True).attentions
            if not attentions:
                raise FinCompressError("the model returned no attention maps; entropy scoring needs eager attention")
            real = inputs["attention_mask"].to(torch.float64)  # [batch, seq]
            # a row's entropy is at most log(real keys): normalise so every sentence length weighs the same
            max_entropy = real.sum(-1).clamp_min(2.0).log()[:, None, None]
            for total, probs in zip(totals, attentions):  # probs: [batch, heads, query, key]
                probs = probs.to(torch.float64)
                entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / max_entropy
                total += (entropy * real[:, None, :]).sum(dim=(0, 2))
            queries += float(real.sum())
    model.train(was_training)
    if queries == 0:
        raise FinCompressError("no validation batches to score importance on")
    return [(1.0 - total / queries).clamp(0.0, 1.0).float() for total in totals]  # clamp: rounding only


def head_importance(model: nn.Module, loader: DataLoader, method: str, *, neurons: bool = False,
                    max_batches: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Head scores by `method` (gradient | entropy), plus gradient neuron scores if `neurons`."""
    if method not in IMPORTANCE_METHODS:
        raise FinCompressError(f"unknown importance {method!r}; choose one of {', '.join(IMPORTANCE_METHODS)}")
    if method == "gradient":
        return gradient_importance(model, loader, neurons=neurons, max_batches=max_batches)
    heads = entropy_importance(model, loader, max_batches=max_batches)
    neuron_scores = gradient_importance(model, loader, neurons=True, max_batches=max_batches)[1] if neurons else None
    return heads, neuron_scores


# ----------------------------------------------------------------------------- choosing what goes

def select_heads(scores: Sequence[torch.Tensor], count: int, min_per_layer: int = MIN_HEADS_PER_LAYER
                 ) -> dict[int, list[int]]:
    """The `count` least important heads over all layers, never leaving a layer below `min_per_layer`."""
    remaining = [s.numel() for s in scores]
    removable = sum(max(0, n - min_per_layer) for n in remaining)
    if count > removable:
        raise FinCompressError(f"cannot remove {count} more heads: only {removable} can go while keeping "
                               f"{min_per_layer} head(s) in each of the {len(scores)} layers")
    ranked = sorted((float(score), layer, head) for layer, layer_scores in enumerate(scores)
                    for head, score in enumerate(layer_scores))
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if sum(len(v) for v in chosen.values()) == count:
            break
        if remaining[layer] > min_per_layer:
            chosen.setdefault(layer, []).append(head)
            remaining[layer] -= 1
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def select_neurons(scores: Sequence[torch.Tensor], keep: Sequence[int]) -> dict[int, list[int]]:
    """Per layer, the least important neurons beyond the `keep[l]` best (at least one is kept)."""
    chosen = {}
    for layer, (layer_scores, n_keep) in enumerate(zip(scores, keep)):
        n_drop = layer_scores.numel() - max(1, int(n_keep))
        if n_drop > 0:
            order = torch.argsort(layer_scores, stable=True)
            chosen[layer] = sorted(order[:n_drop].tolist())
    return chosen


# ----------------------------------------------------------------------------- physical removal

def _sliced_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping output rows (dim 0) or input columns (dim 1) `index` of `linear`."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    bias = linear.bias
    if bias is not None:
        bias = bias.detach()[index] if dim == 0 else bias.detach()
    smaller = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                        dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        smaller.weight.copy_(weight)
        if bias is not None:
            smaller.bias.copy_(bias)
    smaller.weight.requires_grad_(linear.weight.requires_grad)
    return smaller


def _kept(total: int, removed: Sequence[int], what: str, layer: int) -> list[int]:
    bad = [u for u in removed if not 0 <= u < total]
    if bad:
        raise FinCompressError(f"layer {layer}: {what} {bad} do not exist (the layer has {total})")
    return [u for u in range(total) if u not in set(removed)]


def remove_heads(model: nn.Module, heads: dict[int, Sequence[int]]) -> None:
    """Physically remove attention heads ({layer: [head, ...]}, current numbering), in place."""
    layers = encoder_layers(model)
    for layer_index, doomed in heads.items():
        attention = layers[layer_index].attention
        size = attention.self.attention_head_size
        keep = _kept(attention.self.num_attention_heads, doomed, "heads", layer_index)
        if len(keep) < MIN_HEADS_PER_LAYER:
            raise FinCompressError(f"layer {layer_index}: removing heads {sorted(doomed)} would leave no head; "
                                   f"at least {MIN_HEADS_PER_LAYER} head per layer must stay")
        index = torch.tensor([head * size + i for head in keep for i in range(size)], dtype=torch.long)
        for name in ("query", "key", "value"):
            setattr(attention.self, name, _sliced_linear(getattr(attention.self, name), index, dim=0))
        attention.output.dense = _sliced_linear(attention.output.dense, index, dim=1)
        attention.self.num_attention_heads = len(keep)
        attention.self.all_head_size = len(keep) * size
    record_shapes(model)


def remove_neurons(model: nn.Module, neurons: dict[int, Sequence[int]]) -> None:
    """Physically remove feed-forward neurons ({layer: [neuron, ...]}), in place."""
    layers = encoder_layers(model)
    for layer_index, doomed in neurons.items():
        layer = layers[layer_index]
        keep = _kept(layer.intermediate.dense.out_features, doomed, "neurons", layer_index)
        if not keep:
            raise FinCompressError(f"layer {layer_index}: at least one feed-forward neuron must stay")
        index = torch.tensor(keep, dtype=torch.long)
        layer.intermediate.dense = _sliced_linear(layer.intermediate.dense, index, dim=0)
        layer.output.dense = _sliced_linear(layer.output.dense, index, dim=1)
    record_shapes(model)

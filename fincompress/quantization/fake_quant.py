"""Fake quantization for QAT, with the deployed graph's formulas, all read from the `Int8Recipe`.

- Linear weights: the recipe's weight type, symmetry, per-channel and reduce_range; scale and zero
  point per output channel by `weight_qparams`, the formula of onnxruntime's `compute_scale_zp`
  (checked against it in the tests), recomputed from the current weights at every forward.
- Linear inputs: the recipe's activation type and symmetry, per tensor; the range (rmin, rmax) comes
  from an observer (moving average of each batch's min/max) that is frozen after a warm-up; scale and
  zero point by onnxruntime's own `compute_scale_zp` (`Int8Recipe.activation_qparams`).
- Embedding tables: symmetric INT8 per row (weight-only), the very function the deployed graph's
  table storage uses (`int8.quantize_embedding_storage` calls `weight_qparams` too).

Rounding is onnxruntime's, `Saturate(RoundToEven(x / scale) + zero_point)` (MLAS's QuantizeLinear and
the quantizer's weight packing both divide; torch's fake_quantize ops multiply by 1/scale, which
rounds a few values per thousand the other way), so the integers QAT trains against are the
integers the deployed graph holds. Gradients flow through the straight-through estimator: identity
inside the representable range, zero where a value is clipped.
"""

from __future__ import annotations

import torch
from torch import nn

from fincompress.quantization.recipe import Int8Recipe


def weight_qparams(weight: torch.Tensor, qrange: tuple[int, int], symmetric: bool,
                   per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) per row of `weight` (or one pair repeated if not per channel).

    onnxruntime's `compute_scale_zp` applied to each row's [min, max]: the range always includes 0,
    symmetric ranges become [-absmax, absmax] with the zero point in the middle of [qmin, qmax],
    scales are computed in float64 and stored in float32, an all-zero row gets scale 1, zero point 0.
    """
    qmin, qmax = qrange
    values = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    if per_channel:
        rmin, rmax = values.amin(dim=1), values.amax(dim=1)
    else:
        rmin, rmax = values.min().expand(weight.shape[0]), values.max().expand(weight.shape[0])
    rmin, rmax = rmin.clamp(max=0.0), rmax.clamp(min=0.0)
    if symmetric:
        absmax = torch.maximum(rmin.abs(), rmax.abs())
        rmin, rmax = -absmax, absmax
    scale = (rmax - rmin) / (qmax - qmin)
    if symmetric:
        zero_point = torch.full_like(scale, round((qmin + qmax) / 2.0))  # Python and numpy both round half to even
    else:
        zero_point = torch.round(qmin - rmin / scale)
    degenerate = scale.float() < torch.finfo(torch.float32).tiny
    scale = torch.where(degenerate, torch.ones_like(scale), scale).float()
    zero_point = torch.where(degenerate, torch.zeros_like(zero_point), zero_point).to(torch.int32)
    return scale, zero_point


class _OnnxRuntimeGrid(torch.autograd.Function):
    """Quantize-dequantize as onnxruntime rounds; straight-through gradient where nothing is clipped."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        q = torch.round(x / scale) + zero_point  # torch.round, like ORT, rounds half to even
        inside = (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(inside)
        return (q.clamp(qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qrange: tuple[int, int]
                  ) -> torch.Tensor:
    """`x` on the integer grid (scale, zero_point broadcast against x), dequantized, in x's dtype."""
    scale = scale.to(device=x.device, dtype=torch.float32)
    zero_point = zero_point.to(device=x.device, dtype=torch.float32)
    return _OnnxRuntimeGrid.apply(x.float(), scale, zero_point, qrange[0], qrange[1]).to(x.dtype)


def fake_quantize_rows(weight: torch.Tensor, qrange: tuple[int, int], symmetric: bool,
                       per_channel: bool = True) -> torch.Tensor:
    """Fake-quantize a 2-D weight row by row (one scale and zero point per output channel)."""
    scale, zero_point = weight_qparams(weight, qrange, symmetric, per_channel)
    return fake_quantize(weight, scale.view(-1, 1), zero_point.view(-1, 1), qrange)


def integer_rows(weight: torch.Tensor, qrange: tuple[int, int], symmetric: bool,
                 per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(integers, scale, zero_point) of `fake_quantize_rows`: the stored form of exactly its values."""
    scale, zero_point = weight_qparams(weight, qrange, symmetric, per_channel)
    grid = fake_quantize_rows(weight.detach(), qrange, symmetric, per_channel)
    # (q - z) * s divided by s rounds back to q - z exactly: the stored integers are the trained grid.
    integers = torch.round(grid / scale.view(-1, 1)).to(torch.int64) + zero_point.view(-1, 1)
    return integers, scale, zero_point


def fake_quantize_weight(weight: torch.Tensor, recipe: Int8Recipe) -> torch.Tensor:
    """A Linear weight ([out, in]) on the recipe's integer grid, one scale per output channel."""
    return fake_quantize_rows(weight, recipe.weight_qrange(), recipe.weight_symmetric, recipe.per_channel)


def fake_quantize_embedding(table: torch.Tensor) -> torch.Tensor:
    """An embedding table on the deployed INT8 storage grid (symmetric, one scale per row)."""
    return fake_quantize_rows(table, Int8Recipe.embedding_qrange(), symmetric=True)


class ActivationObserver(nn.Module):
    """Running (moving-average) min/max of a tensor; fake-quantizes it with the recipe's activation grid.

    The range buffers are saved with the model, so `fit` restoring its best state restores them too.
    """

    def __init__(self, recipe: Int8Recipe, averaging_constant: float = 0.01):
        super().__init__()
        self.recipe = recipe
        self.averaging_constant = averaging_constant
        self.register_buffer("rmin", torch.tensor(0.0))
        self.register_buffer("rmax", torch.tensor(0.0))
        self.register_buffer("initialized", torch.tensor(False))
        self.frozen = False

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        low, high = x.detach().min().float(), x.detach().max().float()
        if not bool(self.initialized):
            self.rmin.copy_(low)
            self.rmax.copy_(high)
            self.initialized.fill_(True)
        else:
            self.rmin.lerp_(low, self.averaging_constant)
            self.rmax.lerp_(high, self.averaging_constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.frozen:
            self.observe(x)
        if not bool(self.initialized):  # never saw data (e.g. evaluated before training): pass through
            return x
        scale, zero_point = self.recipe.activation_qparams(float(self.rmin), float(self.rmax))
        return fake_quantize(x, torch.tensor(scale), torch.tensor(zero_point), self.recipe.activation_qrange())

    def range(self) -> tuple[float, float]:
        return float(self.rmin), float(self.rmax)


class FakeQuantLinear(nn.Linear):
    """nn.Linear with fake-quantized weight and input (the recipe's grids); same parameter names."""

    def __init__(self, linear: nn.Linear, recipe: Int8Recipe, averaging_constant: float = 0.01):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.load_state_dict(linear.state_dict())
        self.recipe = recipe
        self.input_observer = ActivationObserver(recipe, averaging_constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_observer(x), fake_quantize_weight(self.weight, self.recipe), self.bias)

    def to_linear(self) -> nn.Linear:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if k in ("weight", "bias")})
        return plain


class FakeQuantEmbedding(nn.Embedding):
    """nn.Embedding whose table is fake-quantized per row (the deployed INT8 table storage)."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx,
                         device=embedding.weight.device, dtype=embedding.weight.dtype)
        self.load_state_dict(embedding.state_dict())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, fake_quantize_embedding(self.weight), self.padding_idx)

    def to_embedding(self) -> nn.Embedding:
        plain = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                             device=self.weight.device, dtype=self.weight.dtype)
        plain.load_state_dict(self.state_dict())
        return plain


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def prepare_qat(model: nn.Module, linear_names: list[str], embedding_names: list[str], recipe: Int8Recipe,
                averaging_constant: float = 0.01) -> None:
    """Swap the named Linear / Embedding modules for their fake-quantized versions, in place."""
    if not recipe.is_static:
        raise ValueError(f"QAT needs a static recipe (fixed activation ranges), not {recipe.name!r}")
    for name in linear_names:
        _replace(model, name, FakeQuantLinear(model.get_submodule(name), recipe, averaging_constant))
    for name in embedding_names:
        _replace(model, name, FakeQuantEmbedding(model.get_submodule(name)))


def freeze_observers(model: nn.Module) -> int:
    """Stop updating every activation range; returns how many observers were frozen."""
    observers = [m for m in model.modules() if isinstance(m, ActivationObserver)]
    for observer in observers:
        observer.frozen = True
    return len(observers)


def convert_qat(model: nn.Module) -> dict[str, tuple[float, float]]:
    """Swap fake-quant modules back to plain ones (trained weights kept); returns {linear name: input range}."""
    ranges = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            ranges[name] = module.input_observer.range()
            _replace(model, name, module.to_linear())
        elif isinstance(module, FakeQuantEmbedding):
            _replace(model, name, module.to_embedding())
    return ranges

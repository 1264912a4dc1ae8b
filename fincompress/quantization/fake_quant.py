"""Fake quantization for QAT, with the exact formulas of the ORT deployment (`int8.RECIPE`).

- Linear weights: INT8 per output channel, symmetric, range [-127, 127] (ORT's symmetric int8
  range), scale = max|w_row| / 127, recomputed from the current weights at every forward.
- Linear inputs: UINT8 per tensor, asymmetric; the range (rmin, rmax) comes from an observer
  (moving average of each batch's min/max) that is frozen after a warm-up; scale and zero point
  are computed by onnxruntime's own `compute_scale_zp`, so training and deployment round alike.
- Embedding tables: INT8 per row, symmetric (weight-only, as `int8.quantize_embedding_storage`).

Gradients flow through the straight-through estimator of `torch.fake_quantize_per_channel_affine`
/ `torch.fake_quantize_per_tensor_affine`: identity inside the representable range, zero outside.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType
from torch import nn


def int8_weight_range(reduce_range: bool = False) -> tuple[int, int]:
    """ORT's symmetric INT8 weight range: (-127, 127), or (-64, 64) with reduce_range."""
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, reduce_range=reduce_range, symmetric=True)
    return int(qmin), int(qmax)


def uint8_activation_qparams(rmin: float, rmax: float) -> tuple[float, int]:
    """(scale, zero_point) ORT uses for a UINT8 asymmetric activation with range [rmin, rmax]."""
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.UINT8)
    zero_point, scale = compute_scale_zp(np.array(rmin, dtype=np.float32), np.array(rmax, dtype=np.float32),
                                         qmin, qmax, symmetric=False)
    return float(scale), int(zero_point)


def fake_quantize_weight(weight: torch.Tensor, reduce_range: bool = False) -> torch.Tensor:
    """Symmetric per-row (output channel) INT8 fake quantization with a straight-through gradient."""
    qmin, qmax = int8_weight_range(reduce_range)
    scale = weight.detach().abs().amax(dim=1).clamp_min(1e-12) / qmax
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale.float(), zero_point, 0, qmin, qmax)


class ActivationObserver(nn.Module):
    """Running (moving-average) min/max of a tensor; fake-quantizes it to UINT8 with that range.

    The range buffers are saved with the model, so `fit` restoring its best state restores them too.
    """

    def __init__(self, averaging_constant: float = 0.01):
        super().__init__()
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
        scale, zero_point = uint8_activation_qparams(float(self.rmin), float(self.rmax))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)

    def range(self) -> tuple[float, float]:
        return float(self.rmin), float(self.rmax)


class FakeQuantLinear(nn.Linear):
    """nn.Linear with fake-quantized weight (per channel) and input (per tensor); same parameter names."""

    def __init__(self, linear: nn.Linear, reduce_range: bool = False, averaging_constant: float = 0.01):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device=linear.weight.device, dtype=linear.weight.dtype)
        self.load_state_dict(linear.state_dict())
        self.reduce_range = reduce_range
        self.input_observer = ActivationObserver(averaging_constant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_observer(x), fake_quantize_weight(self.weight, self.reduce_range),
                                    self.bias)

    def to_linear(self) -> nn.Linear:
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.weight.device, dtype=self.weight.dtype)
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if k in ("weight", "bias")})
        return plain


class FakeQuantEmbedding(nn.Embedding):
    """nn.Embedding whose table is fake-quantized per row (the deployed INT8 table storage)."""

    def __init__(self, embedding: nn.Embedding, reduce_range: bool = False):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, padding_idx=embedding.padding_idx,
                         device=embedding.weight.device, dtype=embedding.weight.dtype)
        self.load_state_dict(embedding.state_dict())
        self.reduce_range = reduce_range

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, fake_quantize_weight(self.weight, self.reduce_range), self.padding_idx)

    def to_embedding(self) -> nn.Embedding:
        plain = nn.Embedding(self.num_embeddings, self.embedding_dim, padding_idx=self.padding_idx,
                             device=self.weight.device, dtype=self.weight.dtype)
        plain.load_state_dict(self.state_dict())
        return plain


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def prepare_qat(model: nn.Module, linear_names: list[str], embedding_names: list[str], reduce_range: bool = False,
                averaging_constant: float = 0.01) -> None:
    """Swap the named Linear / Embedding modules for their fake-quantized versions, in place."""
    for name in linear_names:
        _replace(model, name, FakeQuantLinear(model.get_submodule(name), reduce_range, averaging_constant))
    for name in embedding_names:
        _replace(model, name, FakeQuantEmbedding(model.get_submodule(name), reduce_range))


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

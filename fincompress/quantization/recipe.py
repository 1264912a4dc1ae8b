"""The INT8 recipe: one typed, frozen object that PTQ, QAT and fake quantization read every type and range from.

A recipe says which tensors become integers and how:
- `format`: "qdq" is static quantization (activation ranges fixed by calibration or by QAT, an ONNX
  Runtime QDQ graph); "dynamic" is ORT's `quantize_dynamic` (activation ranges measured at run time).
- weights: `weight_type`, `weight_symmetric`, `per_channel` (one scale per output channel);
- activations (inputs of the quantized MatMuls): `activation_type`, `activation_symmetric`,
  per tensor, range from `calibration_method` (static recipes only);
- `reduce_range`: 7-bit weights (MLAS's U8S8 kernel can saturate int16 sums on x86 CPUs without VNNI);
- which op groups: every encoder layer's Linear MatMuls always; the embedding tables stored INT8 per
  row (`quantize_embeddings`, weight-only); the pooler + classifier (`quantize_head`);
- graph rewrites of the static graph that change its cost, not its numbers (`fuse_qkv`, `fold_bias`,
  `quantized_attention`, `transformer_optimizer`; see graph_rewrites.py).

`RECIPES` names the recipes a user can pick (`--recipe`). The default is one recipe, `static`
(`DEFAULT_RECIPE`), not a choice per CPU: at FinBERT's shape it was fastest at equal accuracy on every
CPU measured so far (the measurements are beside `DEFAULT_RECIPE` below), so a per-instruction-set
table would map every CPU to it. A CPU where another recipe measures faster is the reason to
reintroduce a choice. Each variant records the CPU's INT8 instruction sets (`INT8_ISAS`) beside the
recipe, so a result is traceable to the CPU that made it.
The formulas are onnxruntime's own (`get_qmin_qmax_for_qType`, `compute_scale_zp`), so QAT's
fake quantization and the deployed graph round alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto
from onnxruntime.quantization import CalibrationMethod, QuantType
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

from fincompress.common.paths import FinCompressError

QUANT_TYPES = {"int8": (TensorProto.INT8, QuantType.QInt8), "uint8": (TensorProto.UINT8, QuantType.QUInt8)}
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
FORMATS = ("qdq", "dynamic")
EMBEDDINGS, HEAD = "embeddings", "head"
# Embedding tables are a lookup, not a GEMM: symmetric INT8 per row, never reduced (no kernel saturates).
EMBEDDING_TYPE = TensorProto.INT8


@dataclass(frozen=True)
class Int8Recipe:
    """How a model is quantized to INT8 (see the module docstring). Build variants with `replace`."""

    name: str
    format: str = "qdq"
    weight_type: str = "int8"
    weight_symmetric: bool = True
    per_channel: bool = True
    activation_type: str = "uint8"  # U8S8 is MLAS's fast integer GEMM on x86
    activation_symmetric: bool = False
    reduce_range: bool = False
    calibration_method: str | None = "minmax"
    calibration_batch_size: int = 1  # one sentence per call: no padding positions in the ranges (min/max)
    quantize_embeddings: bool = True
    quantize_head: bool = False
    # Graph rewrites of the static graph (graph_rewrites.py); none changes what the model computes.
    fuse_qkv: bool = True  # Linear MatMuls reading one tensor (Q, K, V) become one GEMM
    fold_bias: bool = True  # bias Add folded into the integer GEMM (MatMulIntegerToFloat's bias input)
    # Q/K/V GEMM + Split + attention core as one QAttention kernel (needs fuse_qkv and fold_bias)
    quantized_attention: bool = True
    transformer_optimizer: bool = False  # ORT's BERT fusions before quantization

    def __post_init__(self) -> None:
        problems = []
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} is not one of {FORMATS}")
        for field in ("weight_type", "activation_type"):
            if getattr(self, field) not in QUANT_TYPES:
                problems.append(f"{field} {getattr(self, field)!r} is not one of {sorted(QUANT_TYPES)}")
        if self.is_static and self.calibration_method not in CALIBRATION_METHODS:
            problems.append(f"calibration method {self.calibration_method!r} is not one of "
                            f"{sorted(CALIBRATION_METHODS)}")
        if self.is_static and self.per_channel and not self.weight_symmetric:
            problems.append("per-channel weights are symmetric (ORT's QDQ quantizer makes them so)")
        if self.quantized_attention and not (self.fuse_qkv and self.fold_bias):
            problems.append("quantized_attention needs fuse_qkv and fold_bias (it fuses the GEMM they make)")
        if self.calibration_batch_size < 1:
            problems.append("calibration_batch_size must be >= 1")
        if problems:
            raise FinCompressError(f"INT8 recipe {self.name!r}: " + "; ".join(problems))

    # ------------------------------------------------------------------ what kind of recipe

    @property
    def is_static(self) -> bool:
        return self.format == "qdq"

    def replace(self, **changes) -> Int8Recipe:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The recipe as saved in checkpoint_info.json (`hyperparameters.recipe`)."""
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ onnxruntime's names for it

    @property
    def onnx_weight_type(self) -> int:
        return QUANT_TYPES[self.weight_type][0]

    @property
    def onnx_activation_type(self) -> int:
        return QUANT_TYPES[self.activation_type][0]

    @property
    def ort_weight_type(self) -> QuantType:
        return QUANT_TYPES[self.weight_type][1]

    @property
    def ort_activation_type(self) -> QuantType:
        return QUANT_TYPES[self.activation_type][1]

    @property
    def ort_calibration_method(self) -> CalibrationMethod:
        return CALIBRATION_METHODS[self.calibration_method]

    def ort_extra_options(self) -> dict:
        """The quantizer's symmetry switches, stated explicitly rather than left to ORT's type-based defaults."""
        return {"WeightSymmetric": self.weight_symmetric, "ActivationSymmetric": self.activation_symmetric}

    # ------------------------------------------------------------------ integer ranges and scales

    def weight_qrange(self) -> tuple[int, int]:
        """(qmin, qmax) of a quantized weight, as ORT quantizes it (e.g. (-127, 127) for symmetric int8)."""
        qmin, qmax = get_qmin_qmax_for_qType(self.onnx_weight_type, reduce_range=self.reduce_range,
                                             symmetric=self.weight_symmetric)
        return int(qmin), int(qmax)

    def activation_qrange(self) -> tuple[int, int]:
        """(qmin, qmax) of a quantized activation (ORT never reduces activation ranges)."""
        qmin, qmax = get_qmin_qmax_for_qType(self.onnx_activation_type, symmetric=self.activation_symmetric)
        return int(qmin), int(qmax)

    def activation_qparams(self, rmin: float, rmax: float) -> tuple[float, int]:
        """(scale, zero_point) ORT gives an activation whose range is [rmin, rmax]."""
        qmin, qmax = get_qmin_qmax_for_qType(self.onnx_activation_type, symmetric=self.activation_symmetric)
        zero_point, scale = compute_scale_zp(np.array(rmin, dtype=np.float32), np.array(rmax, dtype=np.float32),
                                             qmin, qmax, symmetric=self.activation_symmetric)
        return float(scale), int(zero_point)

    @staticmethod
    def embedding_qrange() -> tuple[int, int]:
        qmin, qmax = get_qmin_qmax_for_qType(EMBEDDING_TYPE, symmetric=True)
        return int(qmin), int(qmax)

    # ------------------------------------------------------------------ which op groups

    def quantized_groups(self, available: Iterable[str]) -> list[str]:
        """The groups (embeddings, layer.<i>, head) this recipe quantizes, of those a model has."""
        available = list(available)
        layers = [g for g in available if g.startswith("layer.")]
        return (([EMBEDDINGS] if self.quantize_embeddings and EMBEDDINGS in available else []) + layers
                + ([HEAD] if self.quantize_head and HEAD in available else []))


# The recipes `--recipe` offers. Each static one differs from "static" only where its name says.
STATIC = Int8Recipe(name="static")
RECIPES: dict[str, Int8Recipe] = {
    "static": STATIC,
    # Unsigned weights too (symmetric per channel: zero point 128): MLAS's U8U8 kernel never saturates
    # int16 sums (the AVX2-without-VNNI candidate).
    "static-u8u8": STATIC.replace(name="static-u8u8", weight_type="uint8"),
    # 7-bit signed weights: the U8S8 kernel without saturation, at some accuracy cost.
    "static-reduce-range": STATIC.replace(name="static-reduce-range", reduce_range=True),
    # ORT's transformer optimizer (SkipLayerNorm, BiasGelu fusions) before quantization.
    "static-optimized": STATIC.replace(name="static-optimized", transformer_optimizer=True),
    # The graph exactly as ORT's QDQ quantizer emits it (no rewrites): the reference to measure the others against.
    "static-plain": STATIC.replace(name="static-plain", fuse_qkv=False, fold_bias=False, quantized_attention=False),
    # ORT's one-liner `quantize_dynamic(in, out)` with its defaults: per-tensor int8 weights, activation
    # ranges at run time, every op ORT quantizes (the embedding Gathers, stored uint8 per tensor, and the
    # head too): the baseline that shows what calibration and QAT buy.
    "dynamic": Int8Recipe(name="dynamic", format="dynamic", per_channel=False, calibration_method=None,
                          quantize_head=True, fuse_qkv=False, fold_bias=False, quantized_attention=False),
}

# The default recipe, chosen by measurement at equal accuracy (docs/RESULTS.md, "FinBERT shape: speed by
# CPU"); a machine measured since that favours another recipe is the reason to make this a choice again.
# VNNI (AVX512-VNNI, AVX-VNNI, AMX): U8S8 multiplies-and-adds in one instruction without saturation.
# Measured on an AMD EPYC Zen 5 (AVX512-VNNI), FinBERT shape, batch 1, 2 threads, attention fused in the
# export: static 7.3 ms, static-reduce-range 7.2 (within run-to-run noise), static-plain 8.5,
# static-optimized 8.4, static-u8u8 10.9 (no VNNI kernel for U8U8), dynamic 7.4 (not a static recipe).
# 7-bit weights buy no measurable speed on VNNI (offline test F1 88.6 vs 89.1, inside the intervals),
# so the full 8-bit "static".
# AVX2 without VNNI: U8S8 pairs can saturate int16 sums (static-reduce-range avoids it, static-u8u8 uses
# the unsaturated U8U8 kernel); not yet measured on this code, so the U8S8 recipe the published rows used.
DEFAULT_RECIPE = "static"
# The INT8 instruction sets (/proc/cpuinfo names), most capable first, recorded with each variant.
INT8_ISAS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx2")


def resolve_recipe(choice: str, cpu_flags: Iterable[str]) -> tuple[Int8Recipe, dict]:
    """The recipe for `--recipe CHOICE` (None: the default) and how it was chosen (for checkpoint_info)."""
    name = DEFAULT_RECIPE if choice is None else choice
    if name not in RECIPES:
        raise FinCompressError(f"--recipe {choice!r} is not one of {', '.join(RECIPES)}")
    flags = set(cpu_flags)
    return RECIPES[name], {"requested": choice, "chosen": name, "cpu_isa": [f for f in INT8_ISAS if f in flags]}

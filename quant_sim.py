"""Fake quantization that reproduces ONNX Runtime's dynamic INT8 arithmetic in PyTorch.

What `onnxruntime.quantization.quantize_dynamic` does to an exported BERT (read from
onnxruntime/quantization/{quantize,onnx_quantizer,base_quantizer,quant_utils}.py, ORT 1.32):

* MatMul whose B input is an initializer (MatMulConstBOnly, on by default in dynamic mode). The exporter
  writes a Linear on a 3-D input (encoder) as MatMul(x, W^T) + Add and on a 2-D input (pooler, classifier)
  as Gemm; dynamic mode first rewrites every Gemm to MatMul + Add (ONNXModel.replace_gemm_with_matmul), so
  every nn.Linear is quantized, the classifier head included.
  - activation: DynamicQuantizeLinear -> uint8, per tensor, from the tensor's own min/max widened to
    include 0; scale = (max - min) / 255, zero_point = round_half_even(clamp(-min / scale, 0, 255)),
    q = clamp(round_half_even(x / scale) + zero_point, 0, 255).
  - weight: int8 symmetric range [-127, 127] (reduce_range: [-64, 64]); uint8 asymmetric [0, 255]
    (reduce_range: [0, 127]); per tensor, or per output channel when per_channel.
  - MatMulInteger accumulates in int32; the result is multiplied by a_scale * w_scale, then the bias is added.
* Gather whose data is an initializer (word, position and token-type embeddings): the table is quantized
  like an activation initializer: uint8, asymmetric, per tensor, never reduce_range; the lookup is
  dequantized before the embedding sum.
* Attention score MatMuls (both inputs activations) stay FP32.

With optimize_graph (onnxruntime.transformers.optimizer fusions before quantization, for speed) two things change:
* Attention fuses the query/key/value Linears into one packed weight [hidden, 3 * hidden], which QAttention
  quantizes as one tensor: per tensor, Q, K and V share one weight scale (per channel changes nothing).
* EmbedLayerNormalization -> QEmbedLayerNormalization also quantizes the embedding LayerNorm's gamma and beta
  like the tables (uint8, asymmetric, per tensor).

Weight parameters are computed in float64 and the scale is stored as float32, as ORT does; activations are
quantized in float32 as the C++ kernel does. Gradients are straight-through; scales are not trained.

Verified against onnxruntime 1.32.0 (and only that version): the tests in tests/test_quant_sim.py, and the
whole-model agreement in README_DEPLOYMENT.md. requirements.txt bounds onnxruntime to 1.32.x; another version
may quantize differently, which quantize_onnx_dynamic.py's fidelity gate detects (INT8 vs this simulation).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHT_TYPES = ("int8", "uint8")


@dataclass
class QuantConfig:
    """The settings shared by the training simulation and quantize_dynamic; saved as quant_config.json."""

    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool = False
    qat: bool = True
    optimize_graph: bool = False
    chosen_for: dict = field(default_factory=dict)  # CPU and rule behind the defaults, for the record
    quantized_linears: list[str] = field(default_factory=list)
    quantized_embeddings: list[str] = field(default_factory=list)
    packed_weights: list[list[str]] = field(default_factory=list)  # Linears quantized as one tensor (fused QKV)
    quantized_layernorms: list[str] = field(default_factory=list)  # LayerNorm params quantized (fused embeddings)

    def __post_init__(self):
        if self.weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {self.weight_type!r}")

    def save(self, path):
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=2)

    @classmethod
    def load(cls, path) -> "QuantConfig":
        with open(path) as f:
            return cls(**json.load(f))

    def settings(self) -> dict:
        """The settings that decide the arithmetic, and why they were chosen (recorded in the metrics)."""
        return {k: getattr(self, k) for k in ("weight_type", "per_channel", "reduce_range", "optimize_graph", "chosen_for")}

    def quantize_dynamic_kwargs(self) -> dict:
        from onnxruntime.quantization import QuantType

        return dict(
            weight_type=QuantType.QInt8 if self.weight_type == "int8" else QuantType.QUInt8,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            extra_options={"MatMulConstBOnly": True},
        )


def _round_half_even(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)  # torch.round rounds half to even, like std::nearbyint and numpy.round


def _ste(x: torch.Tensor, x_rounded: torch.Tensor) -> torch.Tensor:
    """Value of x_rounded, gradient of x (straight-through estimator)."""
    return x + (x_rounded - x).detach()


def dynamic_activation_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of DynamicQuantizeLinear (uint8), computed in float32 like the ORT kernel."""
    with torch.no_grad():
        x = x.detach().float()
        x_min = torch.clamp(x.min(), max=0.0)
        x_max = torch.clamp(x.max(), min=0.0)
        scale = (x_max - x_min) / 255.0
        if scale == 0:
            scale = torch.ones_like(scale)
        zero_point = _round_half_even(torch.clamp(0.0 - x_min / scale, 0.0, 255.0))
    return scale, zero_point


def fake_quant_activation_int(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q - zero_point) of DynamicQuantizeLinear, with x's gradient (divided by scale), and the scale."""
    scale, zero_point = dynamic_activation_qparams(x)
    x_div = x / scale
    q = torch.clamp(_round_half_even(x_div) + zero_point, 0.0, 255.0) - zero_point
    return _ste(x_div, q), scale


def weight_qparams(
    w: torch.Tensor, weight_type: str, per_channel: bool, reduce_range: bool, symmetric: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """ORT's compute_scale_zp for a weight (float64 maths, float32 scale). Per channel is over dim 0
    (a Linear's output features = the last axis of the exported MatMul's B).
    Returns scale, zero_point, and the clip range of quantize_nparray (the full type range)."""
    if symmetric is None:
        symmetric = weight_type == "int8"  # BaseQuantizer.is_weight_symmetric
    if weight_type == "int8":
        qmin, qmax = (-64, 64) if reduce_range else ((-127, 127) if symmetric else (-128, 127))
        clip = (-128.0, 127.0)
    else:
        qmin, qmax = (0, 127) if reduce_range else (0, 255)
        clip = (0.0, 255.0)
    with torch.no_grad():
        w64 = w.detach().double()
        if per_channel:
            rmin, rmax = w64.amin(dim=tuple(range(1, w.dim()))), w64.amax(dim=tuple(range(1, w.dim())))
        else:
            rmin, rmax = w64.min().reshape(1), w64.max().reshape(1)
        # ORT compares in the weight's own dtype (float32) before promoting
        rmin = torch.clamp(rmin.float(), max=0.0).double()
        rmax = torch.clamp(rmax.float(), min=0.0).double()
        if symmetric:
            absmax = torch.maximum(rmin.abs(), rmax.abs())
            rmin, rmax = -absmax, absmax
        scale = (rmax - rmin) / float(qmax - qmin)
        tiny = torch.finfo(torch.float32).tiny
        degenerate = scale < tiny
        if symmetric:
            zero_point = torch.full_like(scale, float(round((qmin + qmax) / 2.0)))
        else:
            zero_point = torch.round(qmin - rmin / torch.where(degenerate, torch.ones_like(scale), scale))
        scale = torch.where(degenerate, torch.ones_like(scale), scale).float()
        zero_point = torch.where(degenerate, torch.zeros_like(zero_point), zero_point).float()
    return scale, zero_point, clip[0], clip[1]


def fake_quant_weight_int(w: torch.Tensor, cfg: QuantConfig, packed: torch.Tensor | None = None):
    """(q - zero_point) of ORT's weight quantization, with w's gradient (divided by scale), and the scale
    (shape [out] per channel, [1] per tensor). packed: the whole packed tensor w is part of, whose range sets a
    per-tensor scale."""
    range_source = w if packed is None or cfg.per_channel else packed
    scale, zero_point, lo, hi = weight_qparams(range_source, cfg.weight_type, cfg.per_channel, cfg.reduce_range)
    shape = (-1,) + (1,) * (w.dim() - 1)
    s, zp = scale.reshape(shape), zero_point.reshape(shape)
    w_div = w / s  # quantize_nparray: (arr.astype(float32) / scale).round() + zero_point, clipped
    q = torch.clamp(_round_half_even(w_div) + zp, lo, hi) - zp
    return _ste(w_div, q), scale


def fake_quant_embedding_table(w: torch.Tensor) -> torch.Tensor:
    """Dequantized tensor as GatherQuant (and QEmbedLayerNormalization) leave it: uint8 asymmetric per tensor,
    no reduce_range."""
    scale, zero_point, lo, hi = weight_qparams(w, "uint8", per_channel=False, reduce_range=False, symmetric=False)
    w_div = w / scale
    q = torch.clamp(_round_half_even(w_div) + zero_point, lo, hi) - zero_point
    return _ste(w_div, q) * scale


def quantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: QuantConfig,
                     packed: torch.Tensor | None = None):
    """MatMulInteger(DynamicQuantizeLinear(x), W_q) * (a_scale * w_scale) + bias.
    The integer-valued float32 GEMM is exact while partial sums stay below 2**24, as int32 accumulation is."""
    x_int, x_scale = fake_quant_activation_int(x)
    w_int, w_scale = fake_quant_weight_int(weight, cfg, packed)
    y = F.linear(x_int, w_int) * (x_scale * w_scale)
    return y if bias is None else y + bias


class QuantLinear(nn.Linear):
    """nn.Linear whose forward is ORT's dynamic INT8 MatMul; parameters and state_dict keys unchanged."""

    quant_config: QuantConfig
    packed_with: tuple = ()  # the Linears (self included) whose weights ORT packs into one tensor

    def forward(self, x):
        packed = None
        if self.packed_with:
            with torch.no_grad():
                packed = torch.cat([m.weight.detach().reshape(-1) for m in self.packed_with])
        return quantized_linear(x, self.weight, self.bias, self.quant_config, packed)


class QuantEmbedding(nn.Embedding):
    """nn.Embedding whose table is ORT's uint8-quantized Gather data; parameters unchanged."""

    def forward(self, ids):
        return F.embedding(ids, fake_quant_embedding_table(self.weight), self.padding_idx)


class QuantLayerNorm(nn.LayerNorm):
    """nn.LayerNorm whose gamma and beta are quantized as QEmbedLayerNormalization does; parameters unchanged."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, fake_quant_embedding_table(self.weight),
                            fake_quant_embedding_table(self.bias), self.eps)


def plan_quantization(model: nn.Module, cfg: QuantConfig) -> QuantConfig:
    """Fill cfg with the modules quantize_dynamic will quantize in the exported graph: every nn.Linear
    (MatMul with a constant B, or Gemm, which dynamic mode first rewrites to MatMul) and every nn.Embedding;
    with optimize_graph, also the fused attention's packed Q/K/V and the fused embedding LayerNorm."""
    modules = dict(model.named_modules())
    cfg.quantized_linears = sorted(n for n, m in modules.items() if isinstance(m, nn.Linear))
    cfg.quantized_embeddings = sorted(n for n, m in modules.items() if isinstance(m, nn.Embedding))
    cfg.packed_weights, cfg.quantized_layernorms = [], []
    if cfg.optimize_graph:
        for name, m in modules.items():
            children = dict(m.named_children())
            if all(isinstance(children.get(k), nn.Linear) for k in ("query", "key", "value")):
                cfg.packed_weights.append([f"{name}.{k}" for k in ("query", "key", "value")])
            if isinstance(children.get("word_embeddings"), nn.Embedding) and isinstance(children.get("LayerNorm"), nn.LayerNorm):
                cfg.quantized_layernorms.append(f"{name}.LayerNorm")
    return cfg


def apply_fake_quant(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Switch the planned modules to their fake-quantized forward, in place (state_dict is unchanged)."""
    modules = dict(model.named_modules())
    for name in cfg.quantized_linears:
        m = modules[name]
        if type(m) is not nn.Linear:
            raise TypeError(f"{name} is {type(m).__name__}, expected nn.Linear")
        m.__class__ = QuantLinear
        m.quant_config = cfg
    for name in cfg.quantized_embeddings:
        m = modules[name]
        if type(m) is not nn.Embedding:
            raise TypeError(f"{name} is {type(m).__name__}, expected nn.Embedding")
        m.__class__ = QuantEmbedding
    for group in cfg.packed_weights:
        for name in group:
            modules[name].packed_with = tuple(modules[n] for n in group)
    for name in cfg.quantized_layernorms:
        modules[name].__class__ = QuantLayerNorm
    return model


def remove_fake_quant(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.__class__ = nn.Linear
        elif isinstance(m, QuantEmbedding):
            m.__class__ = nn.Embedding
        elif isinstance(m, QuantLayerNorm):
            m.__class__ = nn.LayerNorm
        for attr in ("packed_with", "quant_config"):
            m.__dict__.pop(attr, None)
    return model

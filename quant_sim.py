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

Weight ranges are float32 min/max (exact), the scale arithmetic float64 and the scale stored as float32, as ORT
does; activations are quantized in float32 as the C++ kernel does; the integer GEMM is exact (int_matmul).
Gradients are straight-through; scales are not trained. Cost: evaluation quantizes each weight once (cached while
it does not change), training once per forward; embedding tables are quantized only in the rows a batch gathers;
each rounding is one autograd node computed in place, and the exactness check of the integer GEMM needs no pass over
the activations when a bound on them settles it (benchmarks/train_cost.py measures the step against FP32).

Verified against onnxruntime 1.32.0 (and only that version): the tests in tests/test_quant_sim.py, and the
whole-model agreement in README_DEPLOYMENT.md. requirements.txt bounds onnxruntime to 1.32.x; another version
may quantize differently, which quantize_onnx_dynamic.py's fidelity gate detects (INT8 vs this simulation).
"""

from __future__ import annotations

import json
import math
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
    target_cpu: str = ""  # the CPUs it computes exactly on (common.TARGET_CPUS, resolved); "" in older runs
    chosen_for: dict = field(default_factory=dict)  # CPU and rule behind the defaults, for the record
    quantized_linears: list[str] = field(default_factory=list)
    quantized_embeddings: list[str] = field(default_factory=list)
    packed_weights: list[list[str]] = field(default_factory=list)  # Linears quantized as one tensor (fused QKV)
    quantized_layernorms: list[str] = field(default_factory=list)  # LayerNorm params quantized (fused embeddings)
    # Linear -> fraction of its weight range kept (plan_weight_clip): training simulates the weight clamped to it;
    # bake_weight_clip writes the clamp into the weights, after which quantize_dynamic's min/max is that range
    weight_clip: dict[str, float] = field(default_factory=dict)

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
        return {k: getattr(self, k) for k in ("weight_type", "per_channel", "reduce_range", "optimize_graph", "target_cpu",
                                              "chosen_for")}

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


class _RoundStraightThrough(torch.autograd.Function):
    """clamp(round(x / scale), lo, hi) in the forward; the gradient of x / scale in the backward (straight through the
    rounding and the clip). One autograd node and in-place maths: as few passes over x as the result allows."""

    @staticmethod
    def forward(ctx, x, scale, lo, hi):
        ctx.save_for_backward(scale)
        return torch.div(x, scale).round_().clamp_(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad / scale, None, None, None


def round_to_grid(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo, hi) -> torch.Tensor:
    """(q - zero_point) for q = clamp(round_half_even(x / scale) + zero_point, lo, hi), ORT's QuantizeLinear and
    quantize_nparray; with the straight-through gradient of x / scale when x needs one. Computed as
    clamp(round(x / scale), lo - zero_point, hi - zero_point): the same numbers, since every term is an integer far
    below 2**24 (|x / scale| <= 255 when the scale comes from x's range). scale and zero_point broadcast against x."""
    lo, hi = lo - zero_point, hi - zero_point
    if zero_point.numel() == 1:  # clamp with number bounds is several times faster than with tensor bounds
        lo, hi = float(lo), float(hi)
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoundStraightThrough.apply(x, scale, lo, hi)
    with torch.no_grad():
        return torch.div(x, scale).round_().clamp_(lo, hi)


def dynamic_activation_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of DynamicQuantizeLinear (uint8), computed in float32 like the ORT kernel."""
    with torch.no_grad():
        x_min, x_max = torch.aminmax(x.detach().float())
        x_min = torch.clamp(x_min, max=0.0)
        x_max = torch.clamp(x_max, min=0.0)
        scale = (x_max - x_min) / 255.0
        if scale == 0:
            scale = torch.ones_like(scale)
        zero_point = _round_half_even(torch.clamp(0.0 - x_min / scale, 0.0, 255.0))
    return scale, zero_point


def fake_quant_activation_int(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q - zero_point) of DynamicQuantizeLinear, with x's gradient (divided by scale), and the scale."""
    scale, zero_point = dynamic_activation_qparams(x)
    return round_to_grid(x, scale, zero_point, 0.0, 255.0), scale


def tensor_range(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 min and max of a weight, per output channel (dim 0) or per tensor (shape [1]). Exact in float32:
    a min or max selects an element, so the float64 copy ORT's numpy code makes would change nothing."""
    with torch.no_grad():
        w = w.detach()
        if per_channel:
            flat = w.reshape(w.shape[0], -1)
            return flat.amin(dim=1).float(), flat.amax(dim=1).float()
        rmin, rmax = torch.aminmax(w)
        return rmin.reshape(1).float(), rmax.reshape(1).float()


def qparams_from_range(rmin: torch.Tensor, rmax: torch.Tensor, weight_type: str, reduce_range: bool,
                       symmetric: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """ORT's compute_scale_zp on a weight's float32 range: float64 maths on the (few) range values, float32 scale.
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
        # ORT compares with 0 in the weight's own dtype (float32) before promoting
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


def weight_qparams(
    w: torch.Tensor, weight_type: str, per_channel: bool, reduce_range: bool, symmetric: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """ORT's compute_scale_zp for a weight. Per channel is over dim 0 (a Linear's output features = the last axis
    of the exported MatMul's B). Returns scale, zero_point, and the clip range of quantize_nparray."""
    return qparams_from_range(*tensor_range(w, per_channel), weight_type, reduce_range, symmetric)


def quantize_int(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(q - zero_point) of quantize_nparray: (w.astype(float32) / scale).round() + zero_point, clipped; with w's
    straight-through gradient (divided by scale) when w needs one. scale and zero_point broadcast over dim 0
    (per channel) or are one value."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    return round_to_grid(w, scale.reshape(shape), zero_point.reshape(shape), lo, hi)


def fake_quant_weight_int(w: torch.Tensor, cfg: QuantConfig, packed: torch.Tensor | None = None):
    """(q - zero_point) of ORT's weight quantization, with w's gradient (divided by scale), and the scale
    (shape [out] per channel, [1] per tensor). packed: the whole packed tensor w is part of, whose range sets a
    per-tensor scale."""
    range_source = w if packed is None or cfg.per_channel else packed
    scale, zero_point, lo, hi = weight_qparams(range_source, cfg.weight_type, cfg.per_channel, cfg.reduce_range)
    return quantize_int(w, scale, zero_point, lo, hi), scale


def joint_range(ranges) -> tuple[torch.Tensor, torch.Tensor]:
    """The range of a tensor packed from parts, from the parts' (rmin, rmax): ORT quantizes the packed tensor."""
    ranges = list(ranges)
    return torch.stack([r[0] for r in ranges]).amin(dim=0), torch.stack([r[1] for r in ranges]).amax(dim=0)


def clipped_range(rmin: torch.Tensor, rmax: torch.Tensor, fraction: float,
                  weight_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bounds a weight with range [rmin, rmax] is clamped to when fraction of its range is kept, in float32:
    [-a, a] with a = fraction * max(|rmin|, |rmax|) for int8 (symmetric: the scale depends on that absmax alone),
    fraction * [rmin, rmax] for uint8 (asymmetric). After the clamp, ORT's range of the weight gives the same scale."""
    if fraction >= 1.0:
        return rmin, rmax
    if weight_type == "int8":
        absmax = torch.maximum(rmin.float().abs(), rmax.float().abs()) * fraction
        return -absmax, absmax
    return rmin.float() * fraction, rmax.float() * fraction


def clamp_to_range(w: torch.Tensor, rmin: torch.Tensor, rmax: torch.Tensor) -> torch.Tensor:
    """w clamped to a (per tensor or per output channel) range. The clamp's gradient is zero for clipped weights, as in
    the exported model, where they do not move the output."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    return torch.clamp(w, rmin.reshape(shape).to(w.dtype), rmax.reshape(shape).to(w.dtype))


CLIP_FRACTIONS = tuple(round(0.3 + 0.01 * i, 2) for i in range(71))  # 0.30 .. 1.00


def weight_clip_error(weights: list[torch.Tensor], cfg: QuantConfig, fraction: float) -> float:
    """Squared error of ORT's quantization of weights (one tensor, or the parts of a packed one) after clamping them to
    fraction of their joint range."""
    rmin, rmax = clipped_range(*joint_range(tensor_range(w, cfg.per_channel) for w in weights), fraction,
                               cfg.weight_type)
    scale, zero_point, lo, hi = qparams_from_range(rmin, rmax, cfg.weight_type, cfg.reduce_range)
    with torch.no_grad():
        return sum(float(((quantize_int(clamp_to_range(w, rmin, rmax), scale, zero_point, lo, hi)
                           * scale.reshape((-1,) + (1,) * (w.dim() - 1)) - w) ** 2).sum()) for w in weights)


def plan_weight_clip(model: nn.Module, cfg: QuantConfig) -> QuantConfig:
    """cfg with weight_clip filled: for every quantized Linear (packed ones as one tensor) the fraction of its range,
    from CLIP_FRACTIONS, that minimizes the squared error of its quantized weights now. Outlying weights set the
    scale of a whole tensor; clipping them trades their error for a finer grid for the rest."""
    from dataclasses import replace

    modules = dict(model.named_modules())
    packed = {n: g for g in cfg.packed_weights for n in g} if not cfg.per_channel else {}
    clip = {}
    for name in cfg.quantized_linears:
        if name in clip:
            continue
        group = packed.get(name, [name])
        weights = [modules[n].weight.detach().float() for n in group]
        fraction = min(CLIP_FRACTIONS, key=lambda f: (weight_clip_error(weights, cfg, f), -f))
        clip.update({n: fraction for n in group})
    return replace(cfg, weight_clip=clip)


def bake_weight_clip(model: nn.Module, cfg: QuantConfig) -> QuantConfig:
    """Clamp the weights of cfg.weight_clip's Linears to the clipped range training simulated, in place; returns cfg
    without weight_clip. The clamped weights' own min/max is that range, so quantize_dynamic (and the simulation of the
    saved model) compute exactly what training simulated."""
    from dataclasses import replace

    modules = dict(model.named_modules())
    packed = {n: g for g in cfg.packed_weights for n in g} if not cfg.per_channel else {}
    with torch.no_grad():
        ranges = {}
        for name, fraction in cfg.weight_clip.items():  # every range first: a packed group's is over all its parts
            group = packed.get(name, [name])
            ranges[name] = clipped_range(*joint_range(tensor_range(modules[n].weight, cfg.per_channel) for n in group),
                                         fraction, cfg.weight_type)
        for name, (rmin, rmax) in ranges.items():
            w = modules[name].weight
            w.copy_(clamp_to_range(w, rmin, rmax))
    return replace(cfg, weight_clip={})


def table_qparams(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Gather data quantization (GatherQuant, QEmbedLayerNormalization): uint8 asymmetric per tensor, no
    reduce_range."""
    return weight_qparams(w, "uint8", per_channel=False, reduce_range=False, symmetric=False)


def fake_quant_rows(rows: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo: float, hi: float):
    """Dequantized values of rows quantized with a table's (scalar) parameters, straight-through gradient.
    Quantization is elementwise, so quantizing the gathered rows equals gathering from the quantized table."""
    return quantize_int(rows.reshape(-1), scale, zero_point, lo, hi).reshape(rows.shape) * scale


def fake_quant_embedding_table(w: torch.Tensor) -> torch.Tensor:
    """The whole table dequantized as GatherQuant leaves it (tests and small tables; QuantEmbedding quantizes only
    the rows it gathers)."""
    return fake_quant_rows(w, *table_qparams(w))


INT_GEMM_EXACT = float(2**24)  # float32 represents every integer up to 2**24 exactly


def int_matmul(x_int: torch.Tensor, w_int: torch.Tensor, x_absmax: float | None = None,
               w_norm: float | None = None) -> torch.Tensor:
    """x_int @ w_int.T of integer-valued float32 tensors, equal to MatMulInteger's int32 result converted to float32
    (round to nearest even), whatever the width. A float32 GEMM is exact when every partial sum stays below 2**24;
    by Cauchy-Schwarz every partial sum of row i and output j is at most ||x_i|| * ||w_j||, so when the largest
    norms keep that below 2**24 one GEMM is exact in any summation order. Otherwise w = 16 * w_hi + w_lo splits it
    into two GEMMs of smaller terms (each checked the same way, float64 as the last resort); the sum of the two exact
    results is rounded once, as the int32 -> float32 conversion is.
    x_absmax: a bound on |x_int| known to the caller (q - zero_point of uint8 lies in [-255, 255]): then
    ||x_i|| <= x_absmax * sqrt(width) settles most calls without a pass over x. w_norm: _max_row_norm(w_int) when
    already known (QuantLinear's cache)."""
    w_norm = _max_row_norm(w_int) if w_norm is None else w_norm
    if x_absmax is not None and x_absmax * math.sqrt(x_int.shape[-1]) * (1 + 1e-4) * w_norm < INT_GEMM_EXACT:
        return F.linear(x_int, w_int)
    x_norm = _max_row_norm(x_int)
    if x_norm * w_norm < INT_GEMM_EXACT:
        return F.linear(x_int, w_int)
    w_hi = torch.div(w_int.detach(), 16, rounding_mode="floor")
    w_lo = w_int - 16 * w_hi  # carries w_int's gradient; w_hi is a constant
    if x_norm * max(_max_row_norm(w_hi), _max_row_norm(w_lo)) < INT_GEMM_EXACT:
        return F.linear(x_int, w_lo) + 16 * F.linear(x_int, w_hi)
    return F.linear(x_int.double(), w_int.double()).float()  # exact below 2**53


def _max_row_norm(t: torch.Tensor) -> float:
    """Largest L2 norm over the last dimension, rounded up a little (the float32 norm itself is not exact)."""
    if t.numel() == 0:
        return 0.0
    with torch.no_grad():
        return float(torch.linalg.vector_norm(t.detach(), dim=-1).max()) * (1 + 1e-4)


UINT8_CENTERED_ABSMAX = 255.0  # |q - zero_point| for q and zero_point in [0, 255]


def quantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: QuantConfig,
                     packed: torch.Tensor | None = None, w_int: torch.Tensor | None = None,
                     w_scale: torch.Tensor | None = None, w_norm: float | None = None):
    """MatMulInteger(DynamicQuantizeLinear(x), W_q) * (a_scale * w_scale) + bias, with ORT's int32 accumulation
    reproduced exactly (int_matmul). w_int, w_scale, w_norm: the weight's quantization (and the largest norm of its
    rows) when already known (QuantLinear's cache)."""
    x_int, x_scale = fake_quant_activation_int(x)
    if w_int is None:
        w_int, w_scale = fake_quant_weight_int(weight, cfg, packed)
    # in place: the GEMM's backward needs its inputs, not its output, and a fresh large tensor costs page faults
    y = int_matmul(x_int, w_int, UINT8_CENTERED_ABSMAX, w_norm).mul_(x_scale * w_scale)
    return y if bias is None else y.add_(bias)


def _version_key(t: torch.Tensor) -> tuple:
    """Changes when t is replaced or modified in place by an op that bumps its version counter (load_state_dict,
    a plain optimizer step); a fused optimizer step (torch.optim.AdamW(fused=True), the Trainer's default) does
    not bump it, hence _memo's other rules."""
    return (t.data_ptr(), t._version, tuple(t.shape))


CACHES = ("_range_cache", "_weight_cache", "_qparams_cache")


def _memo(module: nn.Module, name: str, weights: tuple, compute):
    """compute(), remembered on module under name while weights keep their identity and version, and only in
    forwards without gradients (evaluation). A forward that takes gradients of weights recomputes and forgets:
    an optimizer may change them next without bumping their version, and a stale quantization would silently
    freeze the simulated weights. Switching train()/eval() forgets too (_QuantModule)."""
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        module.__dict__.pop(name, None)
        return compute()
    key = tuple(_version_key(w) for w in weights)
    cached = module.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = (key, compute())
        module.__dict__[name] = cached
    return cached[1]


class _QuantModule:
    """Forgets the cached quantization whenever the module switches between training and evaluation."""

    def train(self, mode: bool = True):
        for name in CACHES:
            self.__dict__.pop(name, None)
        return super().train(mode)


class QuantLinear(_QuantModule, nn.Linear):
    """nn.Linear whose forward is ORT's dynamic INT8 MatMul; parameters and state_dict keys unchanged.
    The weight's integer values are cached in evaluation while the weight (and its packed group) do not change, so
    evaluation quantizes each weight once; a forward with gradients (training) re-quantizes (_memo)."""

    quant_config: QuantConfig
    packed_with: tuple = ()  # the Linears (self included) whose weights ORT packs into one tensor
    clip_fraction: float = 1.0  # of the weight's (group's) range that is kept (QuantConfig.weight_clip)

    def _weight_range(self):
        return _memo(self, "_range_cache", (self.weight,),
                     lambda: tensor_range(self.weight, self.quant_config.per_channel))

    def _quantized_weight(self):
        cfg = self.quant_config
        group = self.packed_with if self.packed_with and not cfg.per_channel else (self,)
        return _memo(self, "_weight_cache", tuple(m.weight for m in group), lambda: self._quantize_weight(group))

    def _quantize_weight(self, group):
        cfg = self.quant_config
        rmin, rmax = clipped_range(*joint_range(m._weight_range() for m in group), self.clip_fraction, cfg.weight_type)
        scale, zero_point, lo, hi = qparams_from_range(rmin, rmax, cfg.weight_type, cfg.reduce_range)

        def weight():  # as exported: clamped to the clipped range (bake_weight_clip)
            return self.weight if self.clip_fraction >= 1.0 else clamp_to_range(self.weight, rmin, rmax)

        if torch.is_grad_enabled():  # training: q carries the weight's straight-through gradient
            q = quantize_int(weight(), scale, zero_point, lo, hi)
        else:  # a cache made under inference_mode could not be used in training; inference_mode(False) enables grad
            with torch.inference_mode(False), torch.no_grad():
                q = quantize_int(weight(), scale, zero_point, lo, hi)
        return q, scale, _max_row_norm(q)

    def forward(self, x):
        w_int, w_scale, w_norm = self._quantized_weight()
        return quantized_linear(x, self.weight, self.bias, self.quant_config, w_int=w_int, w_scale=w_scale,
                                w_norm=w_norm)


class QuantEmbedding(_QuantModule, nn.Embedding):
    """nn.Embedding whose table is ORT's uint8-quantized Gather data; parameters unchanged. Only the gathered
    rows are quantized, with the table's parameters (cached while the table does not change): a 250k-row table
    costs a lookup, not a pass over the table."""

    def _table_qparams(self):
        return _memo(self, "_qparams_cache", (self.weight,), lambda: table_qparams(self.weight))

    def forward(self, ids):
        rows = F.embedding(ids, self.weight, self.padding_idx)
        return fake_quant_rows(rows, *self._table_qparams())


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
    # A subclass may compute something else than its base in forward: neither simulate it as the base nor skip it
    # (ORT would quantize it as exported).
    odd = [f"{n} ({type(m).__name__})" for n, m in modules.items()
           if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm)) and type(m) not in (nn.Linear, nn.Embedding, nn.LayerNorm)]
    if odd:
        raise ValueError(f"{len(odd)} module(s) subclass nn.Linear/nn.Embedding/nn.LayerNorm, which the fake "
                         f"quantization cannot reproduce: {', '.join(odd[:3])}")
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
    for name, fraction in cfg.weight_clip.items():
        modules[name].clip_fraction = fraction
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
        for attr in ("packed_with", "quant_config", "clip_fraction", *CACHES):
            m.__dict__.pop(attr, None)
    return model

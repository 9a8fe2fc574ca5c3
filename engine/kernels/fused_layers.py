"""All decoder layers of a step in one C call (engine/kernels/csrc/layers.c), for steps whose attention all
goes to the ragged kernel (decode rows and short prefill chunks: nearly every step while people chat).

Bit-identical to ModelRunner's per-operation loop (same kernels, same order; tested); it saves ~10
Python calls per layer and the GIL hand-off each ctypes call makes, which under load waits on the
event loop. Weights in float32 (with grid codes where found) or bfloat16 (all alike). Unavailable (None) without the C kernels, with
biases or a non-SiLU MLP.
"""

from __future__ import annotations

import ctypes

import torch

from engine.kernels import build as native
from engine.kernels.attention import RaggedAttention
from engine.kernels.grid import FORMATS
from engine.kernels.layer_ops import LayerOps
from engine.kernels.linear import Linear
from engine.model.weights import LayerWeights

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class _Matrix(ctypes.Structure):
    _fields_ = [("panels", _P), ("grid", _P), ("grid_format", ctypes.c_int64)]

    @classmethod
    def of(cls, lin: Linear) -> _Matrix:
        grid = lin.grid
        if grid is not None:
            return cls(None, grid.packed.data_ptr(), FORMATS[grid.format] + (2 if grid.activations == "int16" else 0))
        return cls(lin.packed.data_ptr(), None, 0)


class _Weights(ctypes.Structure):
    _fields_ = [("ln1", _P), ("ln2", _P)] + [(name, _Matrix) for name in ("qkv", "o", "gate_up", "down")]


class FusedLayers:
    def __init__(self, fn, layers: list[LayerWeights], eps: float, scale: float, dims: tuple[int, int, int, int, int]):
        self._fn = fn
        self._layers = layers  # keeps the weights the pointers below refer to alive
        self._weights = (_Weights * len(layers))(*[
            _Weights(w.ln1.data_ptr(), w.ln2.data_ptr(), _Matrix.of(w.qkv), _Matrix.of(w.o), _Matrix.of(w.gate_up),
                     _Matrix.of(w.down)) for w in layers])
        self.eps, self.scale = eps, scale
        self.wbf16 = int(layers[0].qkv.weight.dtype == torch.bfloat16)
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate = dims

    @classmethod
    def build(cls, layers: list[LayerWeights], ops: LayerOps, eps: float, scale: float,
              dims: tuple[int, int, int, int, int]) -> FusedLayers | None:
        linears = [lin for w in layers for lin in (w.qkv, w.o, w.gate_up, w.down)]
        if ops.kernels is None or not ops.is_silu or any((lin.packed is None and lin.grid is None) or lin.bias is not None for lin in linears):
            return None
        if len({lin.weight.dtype for lin in linears}) != 1:
            return None
        norms = [n for w in layers for n in (w.ln1, w.ln2)]
        if any(not n.is_contiguous() or n.dtype != torch.float32 for n in norms):
            return None
        fn = native.function("forward_layers_f32", [_I] * 7 + [_F, _F, _P, _I] + [_P] * 4 + [_I, _I] + [_P] * 8)
        return cls(fn, layers, eps, scale, dims) if fn is not None else None

    def __call__(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ragged: RaggedAttention) -> None:
        """hidden [T, H] (contiguous float32) goes through every layer in place; cos/sin [T, D]."""
        assert ragged.kernel is not None and hidden.is_contiguous()
        t = hidden.shape[0]
        h, hq, hkv, d, i = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate
        scratch = torch.empty(t * (2 * h + 2 * (hq + 2 * hkv) * d + hq * d + 3 * i))
        args = ragged.kernel_args()
        status = self._fn(t, len(self._layers), h, hq, hkv, d, i, self.eps, self.scale, self._weights, self.wbf16,
                          hidden.data_ptr(), cos.data_ptr(), sin.data_ptr(), scratch.data_ptr(), *args)
        if status != 0:
            raise RuntimeError(f"forward_layers kernel failed with status {status}")

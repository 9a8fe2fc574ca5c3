"""All decoder layers of a step in one C call (engine/kernels/csrc/layers.c), for steps whose attention all
goes to the ragged kernel (decode rows and short prefill chunks: nearly every step while people chat).

Bit-identical to ModelRunner's per-operation loop (same kernels, same order; tested); it saves ~10
Python calls per layer and the GIL hand-off each ctypes call makes, which under load waits on the
event loop. Weights in float32 (with grid codes where found) or bfloat16 (all alike); a bias on the qkv
projection only (Qwen2); every family's extras (engine/model/families.py): per-head q/k norms, norms of
the attention and MLP outputs, sliding windows, a second rotary table, a GELU-tanh MLP. Unavailable
(None) without the C kernels, with other biases or an MLP activation other than SiLU and GELU-tanh.
"""

from __future__ import annotations

import ctypes

import torch

from engine.kernels import bindings
from engine.kernels.attention import RaggedAttention
from engine.kernels.grid import FORMATS, INT16_FORMAT_OFFSET
from engine.kernels.layer_ops import LayerOps
from engine.kernels.linear import Linear
from engine.kernels.protocols import DecoderWeights


def _matrix(lin: Linear | None) -> ctypes.Structure:
    """kernels.h's struct matrix of one packed Linear: its grid codes, else its panels (None: neither)."""
    if lin is None:
        return bindings.structure("matrix")(None, None, 0)
    grid = lin.grid
    if grid is not None:
        offset = INT16_FORMAT_OFFSET if grid.activations == "int16" else 0
        return bindings.structure("matrix")(None, grid.packed.data_ptr(), FORMATS[grid.format] + offset)
    return bindings.structure("matrix")(lin.packed.data_ptr(), None, 0)


def _layer_weights(w: DecoderWeights, second_rope: bool) -> ctypes.Structure:
    """kernels.h's struct layer_weights of one layer."""
    def bias(lin: Linear | None):
        return lin.bias.data_ptr() if lin is not None and lin.bias is not None else None

    def ptr(vector: torch.Tensor | None):
        return vector.data_ptr() if vector is not None else None

    return bindings.structure("layer_weights")(
        w.ln1.data_ptr(), w.ln2.data_ptr(), _matrix(w.qkv), _matrix(w.o), _matrix(w.gate_up), _matrix(w.down),
        bias(w.qkv), _matrix(w.v), bias(w.v), ptr(w.q_norm), ptr(w.k_norm), ptr(w.attn_out_norm),
        ptr(w.mlp_out_norm), w.window, int(second_rope))


class FusedLayers:
    """Every decoder layer of a step in one call (see the module's docstring); build() says whether it can."""

    def __init__(self, fn, layers: list[DecoderWeights], eps: float, scale: float,
                 dims: tuple[int, int, int, int, int], second_rope: list[bool], gelu: bool):
        self._fn = fn
        self._layers = layers  # keeps the weights the pointers below refer to alive
        self._weights = (bindings.structure("layer_weights") * len(layers))(*map(_layer_weights, layers, second_rope))
        self.gelu = int(gelu)
        self.eps, self.scale = eps, scale
        self.wbf16 = int(layers[0].qkv.dtype == torch.bfloat16)
        self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate = dims

    @classmethod
    def build(cls, layers: list[DecoderWeights], ops: LayerOps, eps: float, scale: float,
              dims: tuple[int, int, int, int, int], second_rope: list[bool]) -> FusedLayers | None:
        """second_rope: per layer, whether it reads the second rotary table (cos2, sin2 of __call__)."""
        linears = [lin for w in layers for lin in (w.qkv, w.o, w.gate_up, w.down, w.v) if lin is not None]
        if not ops.has_gate_kernel or any(lin.packed is None and lin.grid is None for lin in linears):
            return None
        if any(lin.bias is not None for w in layers for lin in (w.o, w.gate_up, w.down)) or any(
                lin.bias is not None and (lin.bias.dtype != torch.float32 or not lin.bias.is_contiguous())
                for w in layers for lin in (w.qkv, w.v) if lin is not None):
            return None
        h, hq, hkv, d, i = dims
        if any(w.v is not None for w in layers) and 2 * i < (hq + 2 * hkv) * d:
            return None  # (layers.c computes a v apart in the gate_up buffer)
        if len({lin.dtype for lin in linears}) != 1:
            return None
        norms = [n for w in layers for n in (w.ln1, w.ln2, w.q_norm, w.k_norm, w.attn_out_norm, w.mlp_out_norm)
                 if n is not None]
        if any(not n.is_contiguous() or n.dtype != torch.float32 for n in norms):
            return None
        if any((w.q_norm is None) != (w.k_norm is None) for w in layers):
            return None
        fn = bindings.function("forward_layers_f32")
        return cls(fn, layers, eps, scale, dims, second_rope, ops.gelu) if fn is not None else None

    def __call__(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cos2: torch.Tensor,
                 sin2: torch.Tensor, ragged: RaggedAttention) -> None:
        """hidden [T, H] (contiguous float32) goes through every layer in place; cos/sin [T, D] the rotary
        table of most layers, cos2/sin2 [T, D] that of the layers built with second_rope."""
        assert ragged.kernel is not None and hidden.is_contiguous()
        t = hidden.shape[0]
        h, hq, hkv, d, i = self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate
        scratch = torch.empty(t * (3 * h + 2 * (hq + 2 * hkv) * d + hq * d + 3 * i))
        args = ragged.kernel_args()
        status = self._fn(t, len(self._layers), h, hq, hkv, d, i, self.eps, self.scale, self._weights, self.wbf16,
                          self.gelu, hidden.data_ptr(), cos.data_ptr(), sin.data_ptr(), cos2.data_ptr(),
                          sin2.data_ptr(), scratch.data_ptr(), *args)
        if status != 0:
            raise RuntimeError(f"forward_layers kernel failed with status {status}")

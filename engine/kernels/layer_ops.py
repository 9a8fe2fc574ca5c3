"""The small per-token operations of a decoder layer: residual add + RMSNorm, rotary embedding of q/k,
SiLU- or GELU-tanh-gated product, per-head q/k RMSNorm. Through engine/kernels/csrc/layer_ops.c when it is built (one call each, no per-operation
torch overhead: ~7 ms of a 16-sequence decode step), else the same formulas in torch.

Shapes: hidden [T, H]; qkv [T, Hq + 2 Hkv, D]; cos/sin [T, D]; gate_up [T, 2 I]. float32, contiguous.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from engine.kernels import bindings

_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")  # config names of torch's gelu(approximate="tanh")


@functools.cache
def _kernels():
    """layer_ops.c's (add_rms_norm_f32, rotary_qkv_f32, silu_mul_f32, gelu_tanh_mul_f32, head_rms_norm_f32),
    or None (no compiler)."""
    fns = (bindings.function("add_rms_norm_f32"), bindings.function("rotary_qkv_f32"),
           bindings.function("silu_mul_f32"), bindings.function("gelu_tanh_mul_f32"),
           bindings.function("head_rms_norm_f32"))
    return fns if all(fns) else None


class LayerOps:
    def __init__(self, eps: float, act: torch.nn.Module, act_name: str, use_native: bool = True):
        """act: the model's MLP activation module; act_name: its config name (the C path does "silu" and
        "gelu_pytorch_tanh")."""
        self.eps = eps
        self.act = act
        self.kernels = _kernels() if use_native else None
        self.is_silu = act_name == "silu"
        self._gate_kernel = 2 if self.is_silu else 3 if act_name in _GELU_TANH else None  # index in kernels

    def add_rms_norm(self, hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        """hidden += delta (in place, if given); returns weight * rms_normalised(hidden). hidden: contiguous."""
        if not hidden.is_contiguous():
            raise ValueError("add_rms_norm: hidden must be contiguous (it is updated in place)")
        if self.kernels is None:
            if delta is not None:
                hidden += delta
            return F.rms_norm(hidden, (hidden.shape[-1],), weight, self.eps)
        out = torch.empty_like(hidden)
        t, h = hidden.shape
        self.kernels[0](t, h, self.eps, hidden.data_ptr(), delta.contiguous().data_ptr() if delta is not None else None,
                        weight.data_ptr(), out.data_ptr())
        return out

    def head_norms(self, qkv: torch.Tensor, q_norm: torch.Tensor, k_norm: torch.Tensor, hq: int, hkv: int) -> None:
        """Each head [D] of q and of k in qkv [T, Hq + 2 Hkv, D] (contiguous) RMS-normalised in place, times
        q_norm / k_norm [D] (Qwen3's and Gemma 3's norms before rotary)."""
        t, _, d = qkv.shape
        if self.kernels is None:
            for heads, weight in ((slice(0, hq), q_norm), (slice(hq, hq + hkv), k_norm)):
                part = qkv[:, heads]
                part.copy_(F.rms_norm(part, (d,), weight, self.eps))
            return
        self.kernels[4](t, hq, hkv, d, self.eps, qkv.data_ptr(), q_norm.data_ptr(), k_norm.data_ptr())

    @property
    def gelu(self) -> bool:
        """Whether the MLP's gate is GELU-tanh (else SiLU)."""
        return self._gate_kernel == 3

    @property
    def has_gate_kernel(self) -> bool:
        """Whether layer_ops.c computes this model's gated product (SiLU or GELU-tanh)."""
        return self.kernels is not None and self._gate_kernel is not None

    def rotary_qkv(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, hq: int, hkv: int):
        """qkv [T, Hq + 2 Hkv, D] -> contiguous q [T, Hq, D], k [T, Hkv, D] (rotated), v [T, Hkv, D]."""
        t, _, d = qkv.shape
        if self.kernels is None:
            half = d // 2
            qk = qkv[:, : hq + hkv]
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos[:, None] + rotated * sin[:, None]
            return qk[:, :hq], qk[:, hq:], qkv[:, hq + hkv:].contiguous()
        q, k, v = torch.empty(t, hq, d), torch.empty(t, hkv, d), torch.empty(t, hkv, d)
        status = self.kernels[1](t, hq, hkv, d, qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr(),
                                 k.data_ptr(), v.data_ptr())
        if status:
            raise ValueError(f"rotary embedding needs an even head_dim, got {d}")
        return q, k, v

    def gated(self, gate_up: torch.Tensor) -> torch.Tensor:
        """gate_up [T, 2 I] (contiguous) -> act(gate) * up [T, I]."""
        if self.kernels is None or self._gate_kernel is None:
            gate, up = gate_up.chunk(2, dim=-1)
            return self.act(gate) * up
        t, two_i = gate_up.shape
        out = torch.empty(t, two_i // 2)
        self.kernels[self._gate_kernel](t, two_i // 2, gate_up.data_ptr(), out.data_ptr())
        return out

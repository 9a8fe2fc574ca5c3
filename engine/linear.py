"""Linear layers of a step: y = x @ W.T, float32 through our C kernel when few rows, else torch.

engine/csrc/linear.c computes each output row the same way whatever the batch (batch-invariant) and
is 1.5-2.5x faster than MKL's sgemm for 1-32 rows (decode steps: weight reads and small-M
inefficiency dominate); MKL wins on prefill-sized inputs. bfloat16 weights always go to torch.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from engine.native import load_library

MAX_NATIVE_ROWS = 32  # above this MKL's blocked sgemm is faster (bench/engine_speed.py)

_P = ctypes.c_void_p
_kernel = None
_loaded = False


def native_kernel():
    global _kernel, _loaded
    if not _loaded:
        _loaded = True
        lib = load_library("linear")
        if lib is not None:
            fn = lib.linear_f32
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int] * 3 + [_P] * 3
            _kernel = fn
    return _kernel


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, native: bool = True) -> torch.Tensor:
    """x [T, in] float32, w [out, in] -> [T, out] float32, computed in w's dtype."""
    if w.dtype != x.dtype:
        return F.linear(x.to(w.dtype), w, b).float()
    usable = native and x.shape[0] <= MAX_NATIVE_ROWS and x.shape[1] % 16 == 0 and w.is_contiguous()
    kernel = native_kernel() if usable else None
    if kernel is None:
        return F.linear(x, w, b)
    x = x.contiguous()
    y = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype)
    if kernel(x.shape[0], w.shape[0], w.shape[1], x.data_ptr(), w.data_ptr(), y.data_ptr()) != 0:
        raise RuntimeError("linear kernel refused its input")
    return y if b is None else y + b

"""Linear layers of a step: y = x @ W.T in float32 through our C kernel, else torch.

engine/kernels/csrc/linear.c reads W pre-packed into 64-column panels and computes every output as the plain
k-ordered sum whatever the batch, so a sequence's logits do not depend on what shares its step
(batch-invariant). Measured against MKL's sgemm on the AVX-512 machine, whole model (bench/engine_speed.py):
2.8x faster at 1 row, 2.6x at 16, 1.2-1.4x at 128-512 rows. bfloat16 weights go to
engine/kernels/csrc/linear_bf16.c (pair-packed panels, AVX-512 BF16); without it, or without a C compiler,
to torch's F.linear. Float32 weights that are exactly GGUF Q4_1 / Q8_0 blocks (the default model's) are
kept as those codes instead (engine/kernels/grid.py) and read through engine/kernels/csrc/linear_grid.c:
results bit-identical to the float32 kernel's, from 5.6x fewer bytes for the default model. With
activations="int16", those codes go to engine/kernels/csrc/linear_i16.c instead: each matmul's input rounded to
int16 per block of 32 (~16 bits), exact integer dot products with the codes, float32 scales and sums.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from engine.kernels import bindings
from engine.kernels.grid import ACTIVATIONS, FORMATS, PANEL, GridCodes, GridWeights, find_grid


@functools.cache
def matmul_kernel(dtype: torch.dtype = torch.float32):
    """The packed-panel matmul for weights of this dtype: linear.c's linear_packed_f32 for float32,
    linear_bf16.c's linear_packed_bf16 for bfloat16 on CPUs with AVX-512 BF16; None otherwise (no
    compiler, no such instructions, another dtype). Built on first use."""
    if dtype == torch.float32:
        return bindings.function("linear_packed_f32")
    supported = bindings.function("linear_bf16_supported")
    if dtype != torch.bfloat16 or supported is None or not supported():
        return None
    return bindings.function("linear_packed_bf16")




def bf16_matmul_supported() -> bool:
    """Whether bfloat16 weights (--dtype bfloat16) get our C kernel on this machine (AVX-512 BF16 and a C
    compiler); without it they go to torch's bfloat16 matmul."""
    return matmul_kernel(torch.bfloat16) is not None


@functools.cache
def grid_matmul_kernel(activations: str = "float32"):
    """The matmul on grid codes with these activations: linear_grid.c's linear_grid_f32 ("float32") or
    linear_i16.c's linear_grid_i16 ("int16"); None (no compiler)."""
    name = {"float32": "linear_grid_f32", "int16": "linear_grid_i16"}[activations]
    return bindings.function(name)


def amx_tiles(use: bool | None = None) -> bool:
    """Whether linear_i16.c computes Q4_1 products of 32+ rows on AMX tiles (engine/kernels/csrc/linear_amx.c):
    True on CPUs with AMX-BF16 whose kernel lets the process use them. `use` False/True switches the
    tiles off/on again (the same bits either way: for tests and benchmarks)."""
    fn = bindings.function("linear_i16_tiles")
    return bool(fn(-1 if use is None else int(use))) if fn is not None else False


@functools.cache
def strip_width() -> int:
    """Columns of the float32 kernel's strips (engine/kernels/csrc/strip.h: 64 with AVX-512, 16 with AVX2)."""
    fn = bindings.function("linear_strip_width")
    return fn() if fn is not None else PANEL


def pack(w: torch.Tensor) -> torch.Tensor:
    """float32 W [N, K] -> panels [ceil(N / 64), 64 / S, K, S] with panels[p, s, k, c] = W[64 p + S s + c, k]
    (zero padded; S = strip_width()); bfloat16 W -> pair panels [ceil(N / 64), ceil(K / 2), 64, 2] with
    [p, k // 2, c, k % 2] = W[64 p + c, k]."""
    n, k = w.shape
    panels = -(-n // PANEL)
    if w.dtype == torch.bfloat16:
        k2 = -(-k // 2)
        padded = torch.zeros(panels * PANEL, 2 * k2, dtype=w.dtype)
        padded[:n, :k] = w
        return padded.view(panels, PANEL, k2, 2).transpose(1, 2).contiguous()
    strip = strip_width()
    padded = torch.zeros(panels * PANEL, k, dtype=w.dtype)
    padded[:n] = w
    return padded.view(panels, PANEL // strip, strip, k).transpose(2, 3).contiguous()


class Linear:
    """One weight matrix W [out, in] (+ bias), applied to float32 activations [T, in] -> [T, out] float32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, native: bool = True,
                 grid_codes: bool = True, activations: str = "float32"):
        """grid_codes: look for exact Q4_1 / Q8_0 codes of float32 weights (engine/kernels/grid.py);
        activations: what a matmul on those codes rounds its input to, "float32" (exact) or "int16" (weights
        not on a grid always compute in float32)."""
        if activations not in ACTIVATIONS:
            raise ValueError(f"activations must be one of {ACTIVATIONS}, not {activations!r}")
        self.weight = weight.detach()
        self._dtype = weight.dtype
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        kernel = matmul_kernel(weight.dtype) if native else None
        self._kernel = kernel
        use_grid = (kernel is not None and grid_codes and weight.dtype == torch.float32
                    and grid_matmul_kernel(activations) is not None)
        self.grid: GridWeights | None = find_grid(self.weight, activations) if use_grid else None
        # float32/bf16 panels (see pack()) for the other kernels; None: grid codes, or torch
        self.packed = pack(self.weight) if kernel is not None and self.grid is None else None

    @classmethod
    def from_codes(cls, codes: GridCodes, bias: torch.Tensor | None = None, native: bool = True,
                   activations: str = "float32") -> Linear:
        """A matrix given by its block codes alone (read from a GGUF file): no float32 copy is made, but
        where the C kernels cannot be built (torch computes from the dequantized weight) and for codes that
        have no kernel with these activations (the K-quants with float32 activations: float32 panels)."""
        if activations not in codes.activations:
            return cls(codes.dequantize(), bias, native, grid_codes=False)
        self = cls.__new__(cls)
        self.bias = bias
        self.out_features, self.in_features = codes.shape
        has_kernels = native and matmul_kernel(torch.float32) is not None and grid_matmul_kernel(activations) is not None
        self._kernel = matmul_kernel(torch.float32) if has_kernels else None
        self.grid = codes.pack(activations) if has_kernels else None
        self.weight = None if has_kernels else codes.dequantize()
        self._dtype = torch.float32
        self.packed = None
        return self

    def release_weight(self) -> None:
        """Forget the float weight when the kernels read packed panels or codes (it is not read again)."""
        if self.packed is not None or self.grid is not None:
            self.weight = None

    @property
    def dtype(self) -> torch.dtype:
        """What the weights compute in: bfloat16 for bf16 panels, else float32 (codes included)."""
        return self._dtype

    @property
    def storage(self) -> tuple[str, int]:
        """(form a step reads the weight in, its bytes): codes ("q4_1", "q8_0"; with int16 activations
        "q4_1+int16", "q8_0+int16", "q4_k+int16", "q5_k+int16", "q6_k+int16"), "float32"/"bfloat16"
        panels, or "torch" (no C kernels)."""
        if self.grid is not None:
            suffix = "+int16" if self.grid.activations == "int16" else ""
            return self.grid.format + suffix, self.grid.nbytes
        if self.packed is not None:
            return str(self.dtype).removeprefix("torch."), self.packed.numel() * self.packed.element_size()
        return "torch", self.weight.numel() * self.weight.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel is None:  # no C kernels: torch
            if self.weight.dtype != x.dtype:  # bfloat16 weights: cast activations per matmul
                return F.linear(x.to(self.weight.dtype), self.weight, self.bias).float()
            return F.linear(x, self.weight, self.bias)
        x = x.contiguous()
        y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)
        if self.grid is not None:
            status = grid_matmul_kernel(self.grid.activations)(
                FORMATS[self.grid.format], x.shape[0], self.out_features, self.in_features, x.data_ptr(),
                self.grid.packed.data_ptr(), y.data_ptr())
        else:
            status = self._kernel(x.shape[0], self.out_features, self.in_features, x.data_ptr(),
                                  self.packed.data_ptr(), y.data_ptr())
        if status:
            raise MemoryError(f"linear kernel failed with status {status} (out of memory)")
        return y if self.bias is None else y + self.bias.float()

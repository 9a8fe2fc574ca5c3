"""The engine's compute kernels: C code (csrc/) built for this CPU and loaded through ctypes, and the Python
faces that call it (or torch, where it cannot be built).

  build.py         compiles and loads the library (kernels(), its thread pool: threads())
  bindings.py      the one table between Python and C, read from csrc/kernels.h and csrc/common.h
  linear.py        Linear: y = x @ W.T from packed float32 / bfloat16 panels or grid codes
  grid.py          find_grid: float32 weights that are exact GGUF Q4_1 / Q8_0 blocks, kept as their codes
  attention.py     RaggedAttention (decode rows, short chunks) and prefill_attention (long chunks)
  layer_ops.py     LayerOps: residual add + RMSNorm, rotary embedding, SiLU-gated product
  fused_layers.py  FusedLayers: every decoder layer of a step in one C call
  protocols.py     SequenceKV, DecoderWeights: what the faces read from the KV and the model's weights

Imports nothing of engine.kv, engine.model or the engine core.
"""

from engine.kernels import bindings
from engine.kernels.attention import SHORT_CHUNK, RaggedAttention, prefill_attention
from engine.kernels.build import kernels, threads
from engine.kernels.fused_layers import FusedLayers
from engine.kernels.grid import ACTIVATIONS, GridCodes, GridWeights, find_codes, find_grid
from engine.kernels.layer_ops import LayerOps
from engine.kernels.linear import Linear, amx_tiles, bf16_matmul_supported, strip_width
from engine.kernels.protocols import DecoderWeights, KVPrefix, SequenceKV

__all__ = [
    "ACTIVATIONS",
    "SHORT_CHUNK",
    "DecoderWeights",
    "FusedLayers",
    "GridCodes",
    "GridWeights",
    "KVPrefix",
    "LayerOps",
    "Linear",
    "RaggedAttention",
    "SequenceKV",
    "amx_tiles",
    "bf16_matmul_supported",
    "bindings",
    "find_codes",
    "find_grid",
    "kernels",
    "prefill_attention",
    "strip_width",
    "threads",
]

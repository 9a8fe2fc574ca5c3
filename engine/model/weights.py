"""The decoder's weights rearranged for fast CPU steps: fused projections, optional bf16 matmuls.

Taken from a Hugging Face model of a supported family (engine/model/families.py), which stays the source
of truth for config, tokenizer and weights. Per layer:
  wqkv  [(Hq + 2*Hkv) * D, hidden]   q, k and v projections in one matmul
  wo    [hidden, Hq * D]
  wgu   [2 * intermediate, hidden]   gate and up projections in one matmul
  wdown [hidden, intermediate]
plus the family's norms as float32 multipliers ([hidden], or [head_dim] for q/k norms; Gemma's w + 1).
Norms, embeddings, the residual stream, attention and KV stay float32. With matmul_dtype=bfloat16 the
linear weights are bf16 copies (activations are cast per matmul, results cast back to float32): about 3x
faster weight reads at batch 1 on AVX-512-bf16 CPUs. With float32 the model's own projection weights are
replaced by views into the fused tensors, so no weight is held twice and the model still runs as before.
Matrices given as block codes (a GGUF file loaded in place, engine/model/gguf_loader.py) are fused as
codes and never turned into floats, unless the parts of one fused matrix are in different block types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from engine.kernels import GridCodes, Linear
from engine.model.families import family_of, layer_types, layer_windows, norm_weight
from engine.model.gguf_codes import BlockMatrix

MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class LayerWeights:
    ln1: torch.Tensor  # [hidden] float32: the norm before attention
    qkv: Linear  # with Qwen2-style attention bias, if any
    o: Linear
    ln2: torch.Tensor  # the norm before the MLP
    gate_up: Linear
    down: Linear
    v: Linear | None = None  # v apart when its block codes' type differs from q's and k's (qkv: q and k only)
    q_norm: torch.Tensor | None = None  # [head_dim]: per-head norms of q and k before rotary (qwen3, gemma3)
    k_norm: torch.Tensor | None = None
    attn_out_norm: torch.Tensor | None = None  # [hidden]: norms of the attention / MLP outputs (gemma3)
    mlp_out_norm: torch.Tensor | None = None
    window: int = 0  # sliding window in positions, 0: the layer sees every earlier position
    kind: str = "full_attention"  # the layer type (selects its rotary table): "full_attention" | "sliding_attention"

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, hidden] -> q, k and v [T, (Hq + 2 Hkv) D]."""
        return self.qkv(x) if self.v is None else torch.cat([self.qkv(x), self.v(x)], dim=1)


def fuse_layers(model: PreTrainedModel, matmul_dtype: torch.dtype, native: bool = True, grid_codes: bool = True,
                activations: str = "float32", codes: Mapping[str, GridCodes | BlockMatrix] | None = None
                ) -> tuple[list[LayerWeights], Linear]:
    """Per-layer fused weights and the LM head [vocab, hidden], in matmul_dtype (native, grid_codes,
    activations: engine/kernels/linear.py). codes: block codes by parameter name (a GGUF file loaded in
    place), used instead of those parameters (which may be on the meta device).
    Raises UnsupportedArchitecture (a ValueError) for a model of no supported family."""
    family = family_of(model.config)
    kinds, windows = layer_types(model.config), layer_windows(model.config)
    codes = codes or {}
    names = {module: name for name, module in model.named_modules()}
    layers = []

    def linear(projections: list[torch.nn.Module], bias: torch.Tensor | None = None,
               parts: list[GridCodes | None] | None = None) -> Linear:
        """parts: the projections' codes, if decoded already."""
        parts = parts or [_decoded(codes.get(names[p] + ".weight")) for p in projections]
        if all(c is not None for c in parts) and (fused := GridCodes.cat(parts)) is not None:
            return Linear.from_codes(fused, bias, native, activations)
        weights = [c.dequantize() if c is not None else p.weight for p, c in zip(projections, parts)]
        lin = Linear(_fuse(projections, weights, matmul_dtype), bias, native, grid_codes, activations)
        if codes:  # a model loaded in place does not run its own modules: keep only what the kernels read
            lin.release_weight()
            for p in projections:
                p.weight = torch.nn.Parameter(torch.empty(p.weight.shape, device="meta"), requires_grad=False)
        return lin

    def norm(layer: torch.nn.Module, name: str | None) -> torch.Tensor | None:
        return norm_weight(family, getattr(layer, name).weight) if name else None

    for index, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(mlp, "down_proj", None) is None or (getattr(attn, "q_norm", None) is not None) != family.qk_norm:
            raise ValueError(f"unexpected decoder layer {type(layer).__name__} for the {family.name} family")
        if mlp.down_proj.bias is not None or attn.o_proj.bias is not None or mlp.gate_proj.bias is not None:
            raise ValueError("MLP/output projection biases are not supported")
        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        bqkv = torch.cat([p.bias for p in qkv]).float() if attn.q_proj.bias is not None else None
        parts = [_decoded(codes.get(names[p] + ".weight")) for p in qkv]
        v_apart = all(c is not None for c in parts) and GridCodes.cat(parts) is None and GridCodes.cat(parts[:2]) is not None
        nqk = attn.q_proj.out_features + attn.k_proj.out_features
        layers.append(LayerWeights(
            ln1=norm(layer, family.ln1),
            qkv=linear(qkv[:2], None if bqkv is None else bqkv[:nqk], parts[:2]) if v_apart else linear(qkv, bqkv, parts),
            v=linear(qkv[2:], None if bqkv is None else bqkv[nqk:], parts[2:]) if v_apart else None,
            o=linear([attn.o_proj]),
            ln2=norm(layer, family.ln2),
            gate_up=linear([mlp.gate_proj, mlp.up_proj]),
            down=linear([mlp.down_proj]),
            q_norm=norm(attn, "q_norm") if family.qk_norm else None,
            k_norm=norm(attn, "k_norm") if family.qk_norm else None,
            attn_out_norm=norm(layer, family.attn_out_norm),
            mlp_out_norm=norm(layer, family.mlp_out_norm),
            window=windows[index],
            kind=kinds[index],
        ))
    return layers, linear([model.lm_head])


def _fuse(projections: list[torch.nn.Linear], weights: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    fused = torch.cat([w.detach() for w in weights]).to(dtype) if len(weights) > 1 else weights[0].detach().to(dtype)
    if len(weights) > 1 and all(w is p.weight for w, p in zip(weights, projections)) and dtype == weights[0].dtype:
        offset = 0  # share storage: the model's projections become views of the fused weight
        for p in projections:
            rows = p.weight.shape[0]
            p.weight = torch.nn.Parameter(fused[offset:offset + rows], requires_grad=False)
            offset += rows
    return fused


def _decoded(codes: GridCodes | BlockMatrix | None) -> GridCodes | None:
    """Block codes decoded (a GGUF matrix is decoded when it is packed, one layer at a time)."""
    return codes.decode() if isinstance(codes, BlockMatrix) else codes

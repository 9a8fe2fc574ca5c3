"""What a decoder layer computes, per architecture (the transformers config's model_type).

Every supported family runs the same skeleton (engine/model/runner.py); a family says which of its parts
it has. For one layer, with h the residual stream [T, hidden]:

    x = rms(h) * ln1
    q, k, v = split(x @ Wqkv.T (+ bias))                 heads of head_dim; the bias where the model has one
    q, k = rms(q) * q_norm, rms(k) * k_norm               per head, if qk_norm
    q, k = rotary(q), rotary(k)                           the layer type's rotary table
    a = attention(q, k, v) @ Wo.T                         causal; a sliding layer sees its last `window` keys
    a = rms(a) * attn_out_norm                            if sandwich_norms
    h += a
    x = rms(h) * ln2
    m = (act(x @ Wgate.T) * (x @ Wup.T)) @ Wdown.T
    m = rms(m) * mlp_out_norm                             if sandwich_norms
    h += m

then logits = (rms(h) * final_norm) @ Wlm.T, soft-capped (cap * tanh(x / cap)) if the config sets
final_logit_softcapping. (Gemma 3's attn_logit_softcapping is not applied: transformers' Gemma 3 does not
pass it to its attention, so neither do we.) An RMSNorm weight w
multiplies as (norm_offset + w): Gemma stores w - 1. Embeddings are multiplied by sqrt(hidden), rounded to
the model's dtype, if scaled_embeddings.

  llama, mistral   Llama layers (SmolLM2, Llama 3.x, TinyLlama, Mistral; Mistral's sliding_window if set)
  qwen2            Llama layers with q/k/v biases
  qwen3            Llama layers with per-head q/k RMSNorm, no biases
  gemma3_text      Gemma 3: four norms per layer (w + 1), GELU-tanh, scaled embeddings, q/k norm,
                   sliding and full layers (config.layer_types) with their own rotary settings,
                   query_pre_attn_scalar as the attention scale (the attention module's `scaling`),
                   final logit soft-capping when set
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig


class UnsupportedArchitecture(ValueError):
    """The model's architecture is not one the runner implements (the message names those it does)."""


@dataclass(frozen=True)
class Family:
    """One architecture's decoder layer (see the module's docstring). Norm fields name the layer's modules."""
    name: str
    ln1: str  # the norm before attention
    ln2: str  # the norm before the MLP
    attn_out_norm: str | None = None  # sandwich norms: the norm of the attention output, of the MLP output
    mlp_out_norm: str | None = None
    qk_norm: bool = False  # per-head RMSNorm of q and k (self_attn.q_norm / k_norm, [head_dim]) before rotary
    norm_offset: float = 0.0  # RMSNorm weights multiply as (norm_offset + w)
    scaled_embeddings: bool = False  # embeddings * sqrt(hidden) in the model's dtype
    rope_per_layer_type: bool = False  # the rotary module takes the layer type (sliding / full tables)



_LLAMA = Family("llama", "input_layernorm", "post_attention_layernorm")
FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": Family("qwen2", "input_layernorm", "post_attention_layernorm"),
    "qwen3": Family("qwen3", "input_layernorm", "post_attention_layernorm", qk_norm=True),
    "gemma3_text": Family("gemma3_text", "input_layernorm", "pre_feedforward_layernorm",
                          attn_out_norm="post_attention_layernorm", mlp_out_norm="post_feedforward_layernorm",
                          qk_norm=True, norm_offset=1.0, scaled_embeddings=True, rope_per_layer_type=True),
}
SLIDING, FULL = "sliding_attention", "full_attention"


def family_of(config: PretrainedConfig) -> Family:
    """The family of a transformers config; UnsupportedArchitecture (naming the supported ones) otherwise,
    also for a supported family with a feature the runner does not implement."""
    model_type = getattr(config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnsupportedArchitecture(f"unsupported model architecture {model_type!r}; supported: "
                                      f"{', '.join(sorted(FAMILIES))}")
    if getattr(config, "use_bidirectional_attention", False):
        raise UnsupportedArchitecture(f"{model_type} with bidirectional attention is not supported (causal only)")
    unknown = set(getattr(config, "layer_types", None) or []) - {SLIDING, FULL}
    if unknown:
        raise UnsupportedArchitecture(f"{model_type}: unsupported layer types {sorted(unknown)}")
    return family


def layer_types(config: PretrainedConfig) -> list[str]:
    """Each layer's type, SLIDING or FULL: config.layer_types, else Mistral's sliding_window on every layer."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)
    sliding = config.model_type == "mistral" and getattr(config, "sliding_window", None)
    return [SLIDING if sliding else FULL] * config.num_hidden_layers


def layer_windows(config: PretrainedConfig) -> list[int]:
    """Each layer's sliding window in positions (a query at p sees keys p - w + 1 .. p), 0 for a full layer."""
    window = getattr(config, "sliding_window", None) or 0
    return [window if kind == SLIDING else 0 for kind in layer_types(config)]


def final_softcap(config: PretrainedConfig) -> float | None:
    """The cap of the logits (x -> cap * tanh(x / cap)), None when the config sets none."""
    return getattr(config, "final_logit_softcapping", None)


def norm_weight(family: Family, weight: torch.Tensor) -> torch.Tensor:
    """The float32 multiplier of an RMSNorm weight [n]: offset + w, computed as transformers does."""
    return (family.norm_offset + weight.float()).contiguous() if family.norm_offset else weight.float().contiguous()


def embedding_scale(family: Family, config: PretrainedConfig, dtype: torch.dtype) -> torch.Tensor | None:
    """The embeddings' multiplier (a float32 scalar holding sqrt(hidden) rounded to dtype), None if none."""
    if not family.scaled_embeddings:
        return None
    return torch.tensor(config.hidden_size ** 0.5, dtype=torch.float32).to(dtype).float()

"""One packed forward pass over several sessions, each with its own cached KV.

All new tokens of all sequences in a step are concatenated into one [T, hidden] tensor, so the
weight matmuls (the cost on CPU) run once per step for everyone. Attention is done per sequence
against that sequence's own SessionKV, so sessions with different cached lengths and different
numbers of new tokens (prefill chunks, single decode tokens) share one pass without padding.

The decoder layers' weights and submodules are the Hugging Face model's own (Llama family:
Llama, SmolLM, Mistral, Qwen2); only attention and KV handling are ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from engine.kv_cache import SessionKV


@dataclass
class ForwardItem:
    kv: SessionKV  # positions 0..kv.length are cached; new tokens go at kv.length..
    token_ids: list[int]  # new tokens, len >= 1
    needs_logits: bool  # logits of the last new token are wanted (to sample the next one)


class ModelRunner:
    def __init__(self, model: PreTrainedModel):
        self.model = model
        cfg = model.config
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype
        self.max_context = cfg.max_position_embeddings
        inner = model.model
        self._embed = inner.embed_tokens
        self._layers = inner.layers
        self._norm = inner.norm
        self._rotary = inner.rotary_emb
        self._lm_head = model.lm_head
        self._scale = self._layers[0].self_attn.scaling

    def new_kv(self, capacity: int = 0) -> SessionKV:
        return SessionKV(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype, capacity)

    def warmup(self) -> None:
        """One throwaway pass so that the first real turn does not pay for lazy kernel set-up."""
        kv = self.new_kv()
        self.forward([ForwardItem(kv, [0] * 16, True)])
        self.forward([ForwardItem(kv, [0], True)])

    @torch.inference_mode()
    def forward(self, items: list[ForwardItem]) -> torch.Tensor:
        """Run one step; returns float32 logits [num items with needs_logits, vocab], in item order.

        Appends each item's new tokens to its SessionKV (token_ids extended only after success).
        """
        lengths = [len(it.token_ids) for it in items]
        starts = [it.kv.length for it in items]
        for it, n in zip(items, lengths):
            it.kv.ensure_capacity(it.kv.length + n)
        input_ids = torch.tensor([t for it in items for t in it.token_ids], dtype=torch.long)
        positions = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths)])
        hidden = self._embed(input_ids)  # [T, hidden]
        cos, sin = self._rotary(hidden, positions[None])  # [1, T, head_dim]
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # [T, 1, head_dim]
        masks = [_prefix_causal_mask(s, n) for s, n in zip(starts, lengths)]

        for layer_idx, layer in enumerate(self._layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(-1, self.num_heads, self.head_dim)  # [T, Hq, D]
            k = attn.k_proj(x).view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
            v = attn.v_proj(x).view(-1, self.num_kv_heads, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            out = torch.empty_like(q)
            offset = 0
            for it, s, n, mask in zip(items, starts, lengths, masks):
                sl = slice(offset, offset + n)
                it.kv.write(layer_idx, s, k[sl].transpose(0, 1), v[sl].transpose(0, 1))
                keys, values = it.kv.view(layer_idx, s + n)  # [Hkv, s+n, D]
                o = F.scaled_dot_product_attention(
                    q[sl].transpose(0, 1)[None], keys[None], values[None],
                    attn_mask=mask, is_causal=(s == 0 and n > 1), scale=self._scale, enable_gqa=True,
                )  # [1, Hq, n, D]
                out[sl] = o[0].transpose(0, 1)
                offset += n
            hidden = hidden + attn.o_proj(out.view(-1, self.num_heads * self.head_dim))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))

        for it in items:
            it.kv.token_ids.extend(it.token_ids)
        ends = torch.tensor(lengths).cumsum(0) - 1
        rows = [int(e) for it, e in zip(items, ends) if it.needs_logits]
        if not rows:
            return torch.empty(0, self._lm_head.out_features)
        return self._lm_head(self._norm(hidden[rows])).float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _prefix_causal_mask(start: int, n: int) -> torch.Tensor | None:
    """Bool [n, start+n]: query i (at position start+i) sees keys 0..start+i. None when SDPA needs none."""
    if n == 1 or start == 0:
        return None  # a single query sees everything cached; a fresh prefill uses is_causal
    return torch.ones(n, start + n, dtype=torch.bool).tril(diagonal=start)

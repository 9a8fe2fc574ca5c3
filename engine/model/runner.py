"""One packed forward pass over several sessions, each with its own cached KV.

All new tokens of all sequences in a step are concatenated into one [T, hidden] tensor, so the
weight matmuls (the cost on CPU) run once per step for everyone. Decoding sequences (one new token)
and short prefill chunks share one attention call per layer; long prefill chunks attend per sequence
(engine/kernels/attention.py). Sessions with different cached lengths and different numbers of new tokens
share one pass without padding.

Weights are the Hugging Face model's, fused per layer (engine/model/weights.py); the rotary embedding is
the model's own module. What a layer computes is its family's definition (engine/model/families.py):
Llama-family layers without sliding windows in effect run all layers in one C call (FusedLayers) when
the step allows it, every other family and step the per-operation loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from engine.kernels import SHORT_CHUNK, FusedLayers, GridCodes, LayerOps, RaggedAttention, prefill_attention
from engine.kv import KV_DTYPES, SessionKV
from engine.model.embedding import CodesEmbedding
from engine.model.gguf_codes import BlockMatrix, MappedRows
from engine.model.families import FULL, SLIDING, embedding_scale, family_of, final_softcap, norm_weight
from engine.model.weights import fuse_layers

_MAX_TABLE_POSITIONS = 16384  # rotary table rows kept at most; later positions are computed per step
_FIRST_TABLE_POSITIONS = 4096  # rows computed at start, doubled when a step goes past them (Gemma 3's two
# tables of head_dim 256: 17 MB at 4096 positions, 67 MB at 16384)


@dataclass
class ForwardItem:
    kv: SessionKV  # positions 0..kv.length are cached; new tokens go at kv.length..
    token_ids: list[int]  # new tokens, len >= 1
    needs_logits: bool  # logits of the last new token are wanted (to sample the next one)


class ModelRunner:
    def __init__(self, model: PreTrainedModel, matmul_dtype: torch.dtype = torch.float32, native: bool = True,
                 kv_dtype: torch.dtype = torch.float32, grid_codes: bool = True, activations: str = "float32",
                 codes: Mapping[str, GridCodes | BlockMatrix] | None = None,
                 embedding_rows: MappedRows | None = None):
        """matmul_dtype: dtype of the linear layers' weights (engine/model/weights.py); kv_dtype: what the KV
        caches store, float32 or float16 (half the bytes; attention still computes in float32).
        native: use the C kernels when they can be built. grid_codes: read float32 weights that are exact
        GGUF Q4_1/Q8_0 blocks from those codes (engine/kernels/grid.py; bit-identical results).
        activations: "int16" rounds the input of every matmul on grid codes to int16 per block of 32
        (engine/kernels/csrc/linear_i16.c: integer dot products, faster, not bit-identical); "float32" is exact.
        codes: the model's matrices (and embedding) kept as GGUF block codes, by parameter name (a GGUF file
        loaded in place: those parameters are on the meta device). embedding_rows: the embedding's rows read
        from the GGUF file on demand (engine/model/gguf_codes.py), instead of its parameter or codes.
        Raises UnsupportedArchitecture (a ValueError naming the supported ones) for any other architecture."""
        self.model = model
        cfg = model.config
        self.family = family_of(cfg)
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = torch.float32  # activations
        if kv_dtype not in KV_DTYPES.values():
            raise ValueError(f"KV dtype must be one of {sorted(KV_DTYPES)}, not {kv_dtype}")
        self.kv_dtype = kv_dtype
        self.matmul_dtype = matmul_dtype
        self.activations = activations
        self.native = native
        self.max_context = cfg.max_position_embeddings
        inner = model.model
        codes = codes or {}
        embed_name = next(n for n, m in model.named_modules() if m is inner.embed_tokens) + ".weight"
        rows = embedding_rows or codes.get(embed_name)
        self._embed = CodesEmbedding(rows) if rows is not None else inner.embed_tokens
        self._embed_scale = embedding_scale(self.family, cfg, model.dtype)
        self._final_norm = norm_weight(self.family, inner.norm.weight)
        self._final_softcap = final_softcap(cfg)
        self._rotary = inner.rotary_emb
        act_name = getattr(cfg, "hidden_act", None) or getattr(cfg, "hidden_activation", "")
        self._ops = LayerOps(cfg.rms_norm_eps, inner.layers[0].mlp.act_fn, act_name, native)
        self._scale = inner.layers[0].self_attn.scaling
        self._layers, self._lm_head = fuse_layers(model, matmul_dtype, native, grid_codes, activations, codes)
        self.vocab_size = self._lm_head.out_features
        per_kind = self.family.rope_per_layer_type  # else one rotary table for every layer
        self._rope_kinds = [w.kind if per_kind else FULL for w in self._layers]  # each layer's rotary table
        dims = (cfg.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim, cfg.intermediate_size)
        self._fused = (FusedLayers.build(self._layers, self._ops, cfg.rms_norm_eps, self._scale, dims,
                                         [kind == SLIDING for kind in self._rope_kinds]) if native else None)
        self._rotary_table = {kind: self._static_rotary_table(kind) for kind in sorted(set(self._rope_kinds))}

    def _rope(self, kind: str, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's rotary module: cos, sin [1, T, head_dim] of positions [1, T] for layers of this kind."""
        if self.family.rope_per_layer_type:
            return self._rotary(x, positions, kind)
        return self._rotary(x, positions)

    def _static_rotary_table(self, kind: str = FULL, positions: int = _FIRST_TABLE_POSITIONS
                             ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos, sin [positions, head_dim] of the model's rotary embedding for layers of this kind, computed
        once by its own module (a step then indexes rows instead of running ~10 torch ops); None for rotary
        kinds whose tables depend on the sequence (dynamic scaling), which are computed per step."""
        rope_type = getattr(self._rotary, "rope_type", "default")
        if isinstance(rope_type, dict):  # per layer type (Gemma 3)
            rope_type = rope_type.get(kind, "default")
        if rope_type not in ("default", "linear", "llama3"):
            return None
        positions = torch.arange(min(self.max_context, _MAX_TABLE_POSITIONS, positions))
        with torch.inference_mode():
            cos, sin = self._rope(kind, torch.empty(1, dtype=self.dtype), positions[None])
        return cos[0].contiguous(), sin[0].contiguous()

    def weights_summary(self) -> dict:
        """The matmul weights as a step reads them: {"formats": {form: number of matrices}, "bytes": total}
        (forms: Linear.storage)."""
        formats: dict[str, int] = {}
        total = 0
        for lin in [lin for w in self._layers for lin in (w.qkv, w.v, w.o, w.gate_up, w.down) if lin is not None] + [
                self._lm_head]:
            form, nbytes = lin.storage
            formats[form] = formats.get(form, 0) + 1
            total += nbytes
        return {"formats": formats, "bytes": total}

    def new_kv(self, capacity: int = 0) -> SessionKV:
        return SessionKV(self.num_layers, self.num_kv_heads, self.head_dim, self.kv_dtype, capacity)

    def warmup(self) -> None:
        """Throwaway passes so that the first real turn does not pay for lazy kernel set-up (and the build
        of the C kernel)."""
        kv = self.new_kv()
        self.forward([ForwardItem(kv, [0] * 16, True)])
        self.forward([ForwardItem(kv, [0], True)])

    @torch.inference_mode()
    def forward(self, items: list[ForwardItem]) -> torch.Tensor:
        """Run one step; returns float32 logits [num items with needs_logits, vocab], in item order.

        Appends each item's new tokens to its SessionKV (token_ids extended only after success).
        """
        order = sorted(range(len(items)), key=lambda i: len(items[i].token_ids) > 1)  # decoders first (stable)
        packed = [items[i] for i in order]
        lengths = [len(it.token_ids) for it in packed]
        starts = [it.kv.length for it in packed]
        for it, n in zip(packed, lengths):
            it.kv.ensure_capacity(it.kv.length + n)
        input_ids = torch.tensor([t for it in packed for t in it.token_ids], dtype=torch.long)
        positions = torch.tensor([p for s, n in zip(starts, lengths) for p in range(s, s + n)], dtype=torch.long)
        hidden = self._embeddings(input_ids)  # [T, hidden], the residual stream (updated in place)
        end = max(s + n for s, n in zip(starts, lengths))
        rope = {}  # layer kind -> cos, sin [T, head_dim]
        for kind, table in self._rotary_table.items():
            if table is not None and table[0].shape[0] < end <= min(self.max_context, _MAX_TABLE_POSITIONS):
                self._rotary_table[kind] = table = self._static_rotary_table(kind, 2 ** (end - 1).bit_length())
            if table is not None and end <= table[0].shape[0]:
                rope[kind] = tuple(t.index_select(0, positions) for t in table)
            else:
                cos, sin = self._rope(kind, hidden, positions[None])  # [1, T, head_dim]
                rope[kind] = cos[0].contiguous(), sin[0].contiguous()
        short, chunks = [], []  # short: (kv, first row, rows) for the ragged kernel; chunks: long prefills
        offset = 0
        for it, s, n in zip(packed, starts, lengths):
            if n <= SHORT_CHUNK:
                short.append((it.kv, offset, n))
            else:
                chunks.append((it, s, slice(offset, offset + n)))
            offset += n
        ragged = RaggedAttention(short, self.num_heads, self._scale, self.native)
        if not chunks and self._fused is not None and ragged.kernel is not None:
            cos, sin = rope.get(FULL) or rope[SLIDING]
            self._fused(hidden, cos, sin, *rope.get(SLIDING, (cos, sin)), ragged)  # every layer in one C call,
            # bit-identical to _layer_loop
        else:
            self._layer_loop(hidden, rope, ragged, chunks)

        for it in packed:
            it.kv.token_ids.extend(it.token_ids)
        ends = torch.tensor(lengths).cumsum(0) - 1
        row_of = {i: int(ends[j]) for j, i in enumerate(order)}
        rows = [row_of[i] for i, it in enumerate(items) if it.needs_logits]
        if not rows:
            return torch.empty(0, self.vocab_size)
        last = hidden[rows]
        logits = self._lm_head(self._ops.add_rms_norm(last, None, self._final_norm)).float()  # the final norm
        if self._final_softcap is not None:
            logits = torch.tanh(logits / self._final_softcap) * self._final_softcap
        return logits

    def _embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> float32 [T, hidden]: the embedding rows, times the family's scale if it has one."""
        if isinstance(self._embed, CodesEmbedding):
            rows = self._embed(input_ids)
        else:
            rows = F.embedding(input_ids, self._embed.weight).float()  # the table itself, unscaled
        if self._embed_scale is not None:
            rows *= self._embed_scale
        return rows

    def _layer_loop(self, hidden: torch.Tensor, rope: dict, ragged: RaggedAttention, chunks: list) -> None:
        """Every decoder layer, one operation at a time (updates hidden [T, H] in place); long prefill
        chunks (item, start, row slice) through prefill_attention, all other rows through `ragged`.
        rope: cos, sin [T, D] by layer kind."""
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        ops = self._ops
        x = ops.add_rms_norm(hidden, None, self._layers[0].ln1)
        for layer_idx, w in enumerate(self._layers):
            qkv = w.project_qkv(x).view(-1, hq + 2 * hkv, d)
            if w.q_norm is not None:  # per head, before rotary
                ops.head_norms(qkv, w.q_norm, w.k_norm, hq, hkv)
            q, k, v = ops.rotary_qkv(qkv, *rope[self._rope_kinds[layer_idx]], hq, hkv)  # [T, H, D] each
            out = torch.empty(q.shape[0], hq, d)
            ragged(layer_idx, q, k, v, out, window=w.window)
            for it, s, rows in chunks:
                out[rows] = prefill_attention(it.kv, layer_idx, s, q[rows], k[rows], v[rows], self._scale,
                                              use_native=self.native, window=w.window)
            attended = w.o(out.view(-1, hq * d))
            if w.attn_out_norm is not None:
                attended = ops.add_rms_norm(attended, None, w.attn_out_norm)
            x = ops.add_rms_norm(hidden, attended, w.ln2)
            mlp = w.down(ops.gated(w.gate_up(x)))
            if w.mlp_out_norm is not None:
                mlp = ops.add_rms_norm(mlp, None, w.mlp_out_norm)
            if layer_idx + 1 < len(self._layers):
                x = ops.add_rms_norm(hidden, mlp, self._layers[layer_idx + 1].ln1)
            else:
                hidden += mlp

// The kernel library's entry points: every function that Python (through engine/kernels/bindings.py, which
// derives each ctypes signature from the prototypes below) or layers.c calls. Each is defined in the .c
// file named above it, which includes this header. Functions shared only between C files are declared in
// pool.h, strip.h, amx.h and i16.h.
//
// Binding rules (bindings.py): one prototype per declaration, every parameter named; parameter types int,
// float, int64_t or any pointer (passed as an address or None); return type int. Arrays are row-major and
// contiguous, float32 unless said; a nonzero return is the failure status each definition documents.
#pragma once
#include <stdint.h>

// pool.c: starts the kernels' thread pool (threads in all, the caller included); returns workers started
int pool_start(int threads);

// linear.c: y[M, N] = x[M, K] @ W[N, K]^T from float32 panels; columns per strip of a panel
int linear_packed_f32(int M, int N, int K, const float *x, const float *Wp, float *y);
int linear_strip_width(void);

// linear_bf16.c: the same from bfloat16 pair panels; 1 when the CPU has AVX-512 BF16 (else the kernel fails)
int linear_packed_bf16(int M, int N, int K, const float *x, const uint16_t *Wp, float *y);
int linear_bf16_supported(void);

// linear_grid.c: the same from Q4_1 / Q8_0 codes in panels (format: GRID_Q4_1 or GRID_Q8_0, common.h)
int linear_grid_f32(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y);

// linear_i16.c: the same from codes in groups (Q4_1, Q8_0; K-quants through linear_kquant.c), activations
// rounded to int16; AMX tiles on/off/asked
int linear_grid_i16(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y);
int linear_i16_tiles(int use);

// layer_ops.c: residual add + RMSNorm, rotary embedding of q and k, SiLU-gated product
int add_rms_norm_f32(int T, int H, float eps, float *hidden, const float *delta, const float *weight, float *out);
int rotary_qkv_f32(int T, int Hq, int Hkv, int D, const float *qkv, const float *cos, const float *sin, float *q,
                   float *k, float *v);
int silu_mul_f32(int T, int I, const float *gate_up, float *out);

// attention.c: a step's decode rows and short prefill chunks, each against its own KV
int ragged_attention_f32(int B, int Hq, int Hkv, int D, int layer, float scale, const float *q, const float *k_new,
                         const float *v_new, float *out, int kv_half, void *const *bases, const int64_t *caps,
                         const int64_t *starts, const int64_t *rows, const int64_t *offsets,
                         const void *const *pbases, const int64_t *pcaps, const int64_t *plens);

// chunk_attention.c: one long prefill chunk against its KV, in blocks
int chunk_attention_f32(int Hq, int Hkv, int D, int layer, float scale, const float *q, float *out, int64_t n,
                        int64_t start, int kv_half, const void *base, int64_t cap, const void *pbase, int64_t pcap,
                        int64_t plen);

// sampling.c: temperature / top-k / top-p sampling of many rows
int sample_rows_f32(int rows, int V, const float *logits, float *work, const float *temperature,
                    const float *top_p, const int32_t *top_k, const float *u, int64_t *out);

// layers.c: every decoder layer of a step, one weight matrix and one layer's weights as it reads them
// (engine/kernels/fused_layers.py builds them; bindings.py reads these two structs' fields too)
struct matrix {
    const void *panels;   // float32 or bfloat16 panels, when there is no grid
    const uint8_t *grid;  // NULL: none
    int64_t grid_format;  // linear_grid_f32's format; + GRID_INT16: the same codes for linear_grid_i16
};

struct layer_weights {
    const float *ln1, *ln2;
    struct matrix qkv, o, gate_up, down;
    const float *qkv_bias;  // [(Hq + 2 Hkv) D] (Qwen2's attention biases), or NULL
    struct matrix v;        // v [Hkv D, H] apart (grid or panels not NULL): then qkv and its bias hold q and k
    const float *v_bias;    // [Hkv D] with v apart, or NULL
    const float *q_norm, *k_norm;  // [D] per-head norms of q and k before rotary (Qwen3, Gemma 3), or NULL
    const float *attn_out_norm, *mlp_out_norm;  // [H] norms of the attention / MLP outputs (Gemma 3), or NULL
    int64_t window;         // sliding window in positions (0: every earlier position)
    int64_t rope;           // the rotary table this layer reads: 0 (cos, sin) or 1 (cos2, sin2)
};

int forward_layers_f32(int T, int L, int H, int Hq, int Hkv, int D, int I, float eps, float scale,
                       const struct layer_weights *w, int wbf16, int gelu, float *hidden, const float *cos,
                       const float *sin, const float *cos2, const float *sin2, float *scratch, int B, int kv_half,
                       void *const *bases, const int64_t *caps, const int64_t *starts, const int64_t *rows,
                       const int64_t *offsets, const void *const *pbases, const int64_t *pcaps, const int64_t *plens);

// Sliding-window attention (decoder layers that see only the last `window` positions; window 0 = all, as
// ragged_attention_f32 / chunk_attention_f32, which call these with 0)
// attention.c: ragged_attention_f32 with a window
int ragged_attention_window_f32(int B, int Hq, int Hkv, int D, int layer, float scale, int64_t window,
                                const float *q, const float *k_new, const float *v_new, float *out, int kv_half,
                                void *const *bases, const int64_t *caps, const int64_t *starts, const int64_t *rows,
                                const int64_t *offsets, const void *const *pbases, const int64_t *pcaps,
                                const int64_t *plens);
// chunk_attention.c: chunk_attention_f32 with a window
int chunk_attention_window_f32(int Hq, int Hkv, int D, int layer, float scale, int64_t window, const float *q,
                               float *out, int64_t n, int64_t start, int kv_half, const void *base, int64_t cap,
                               const void *pbase, int64_t pcap, int64_t plen);
// layer_ops.c: the GELU-tanh-gated product (Gemma's MLP), as silu_mul_f32
int gelu_tanh_mul_f32(int T, int I, const float *gate_up, float *out);
// layer_ops.c: per-head RMSNorm of q's and k's heads in qkv [T, Hq + 2 Hkv, D], in place
int head_rms_norm_f32(int T, int Hq, int Hkv, int D, float eps, float *qkv, const float *q_norm,
                      const float *k_norm);

// Every decoder layer of a step in one call, when all of the step's attention goes to the ragged
// kernel (decode rows and short prefill chunks; engine/model/runner.py decides). The same kernels, in the
// same order, as the per-operation path of engine/model/runner.py, so the results are bit-identical; what
// goes away is ~10 Python calls per layer and, with them, ~300 GIL hand-offs per step with the
// event loop.
//
//   hidden   [T, H]  residual stream after the embeddings; on return, after the last layer (before
//                    the final norm)
//   cos, sin [T, D]  rotary tables of each row's position; cos2, sin2 the second table (Gemma 3's
//                    sliding layers), read by layers whose `rope` is 1
//   kv_half, bases.. the KV buffers as attention.c takes them (float32 or float16)
//   scratch  floats: T * (3 H + (Hq + 2 Hkv) D + (Hq + 2 Hkv) D + Hq D + 3 I)  (see below)
//   gelu     0: SiLU-gated MLP, 1: GELU-tanh-gated (Gemma)
// A layer may add per-head q/k norms (before rotary), norms of its attention and MLP outputs (before they
// join the residual stream) and a sliding window, as engine/model/families.py's families do.
// Weights per layer (struct layer_weights, kernels.h): RMSNorm vectors [H] and packed panels
// (engine/kernels/linear.py) of
//   qkv [(Hq + 2 Hkv) D, H] (+ its bias, if any; or q and k in one, v apart when their block types
//   differ: then 2 I >= (Hq + 2 Hkv) D), o [H, Hq D], gate_up [2 I, H], down [H, I],
// float32 panels (linear.c), or bfloat16 pair panels (linear_bf16.c) when wbf16 is 1; a float32 matrix
// may have grid codes instead (linear_grid.c, bit-identical results; or linear_i16.c, int16 activations).
#include <stdint.h>

#include "common.h"
#include "kernels.h"

// y [T, N] (+ bias [N], if any), or a kernel's failure status (out of memory)
static int linear_bias(int wbf16, int M, int N, int K, const float *x, const struct matrix *W, const float *bias,
                       float *y);

// the layer's q, k and v [T, (Hq + 2 Hkv) D] with v apart, computed in `tmp` [T, (Hq + 2 Hkv) D] then
// interleaved row by row
static int qkv_apart(int wbf16, int T, int H, int nqk, int nv, const float *x, const struct layer_weights *w,
                     float *tmp, float *qkv) {
    float *qk = tmp, *v = tmp + (int64_t)T * nqk;
    int status = linear_bias(wbf16, T, nqk, H, x, &w->qkv, w->qkv_bias, qk);
    if (!status) status = linear_bias(wbf16, T, nv, H, x, &w->v, w->v_bias, v);
    for (int64_t t = 0; t < T && !status; t++) {
        for (int64_t c = 0; c < nqk; c++) qkv[t * (nqk + nv) + c] = qk[t * nqk + c];
        for (int64_t c = 0; c < nv; c++) qkv[t * (nqk + nv) + nqk + c] = v[t * nv + c];
    }
    return status;
}

// a block's output y [T, H] as it joins the residual stream: norm * rms_normalised(y) in `out` when the
// layer has that norm, else y itself
static const float *out_norm(int T, int H, float eps, const float *y, const float *norm, float *out) {
    if (!norm) return y;
    add_rms_norm_f32(T, H, eps, (float *)y, 0, norm, out);  // (y is only read: no delta)
    return out;
}

// 0, or a kernel's failure status (out of memory)
static inline int linear(int wbf16, int M, int N, int K, const float *x, const struct matrix *W, float *y) {
    if (W->grid && W->grid_format >= GRID_INT16)
        return linear_grid_i16((int)W->grid_format - GRID_INT16, M, N, K, x, W->grid, y);
    if (W->grid) return linear_grid_f32((int)W->grid_format, M, N, K, x, W->grid, y);  // K % 32 == 0 when packed
    if (wbf16) return linear_packed_bf16(M, N, K, x, W->panels, y);  // the caller checked linear_bf16_supported()
    return linear_packed_f32(M, N, K, x, W->panels, y);
}

int forward_layers_f32(int T, int L, int H, int Hq, int Hkv, int D, int I, float eps, float scale,
                       const struct layer_weights *w, int wbf16, int gelu, float *hidden, const float *cos,
                       const float *sin, const float *cos2, const float *sin2, float *scratch, int B, int kv_half,
                       void *const *bases, const int64_t *caps, const int64_t *starts, const int64_t *rows,
                       const int64_t *offsets, const void *const *pbases, const int64_t *pcaps, const int64_t *plens) {
    const int64_t nqkv = (int64_t)(Hq + 2 * Hkv) * D;
    float *x = scratch;                      // [T, H] normalised input of a block
    float *delta = x + (int64_t)T * H;       // [T, H] a block's output, added to hidden
    float *normed = delta + (int64_t)T * H;  // [T, H] a block's output after its own norm (Gemma 3)
    float *qkv = normed + (int64_t)T * H;    // [T, Hq + 2 Hkv, D]
    float *q = qkv + T * nqkv;               // [T, Hq, D]
    float *k = q + (int64_t)T * Hq * D;      // [T, Hkv, D]
    float *v = k + (int64_t)T * Hkv * D;     // [T, Hkv, D]
    float *attn = v + (int64_t)T * Hkv * D;  // [T, Hq, D]
    float *gate_up = attn + (int64_t)T * Hq * D;  // [T, 2 I]
    float *act = gate_up + (int64_t)T * 2 * I;    // [T, I]
    int status = add_rms_norm_f32(T, H, eps, hidden, 0, w[0].ln1, x);
    for (int l = 0; l < L && !status; l++) {
        if (w[l].v.grid || w[l].v.panels)
            status = qkv_apart(wbf16, T, H, (Hq + Hkv) * D, Hkv * D, x, &w[l], gate_up, qkv);
        else
            status = linear_bias(wbf16, T, (int)nqkv, H, x, &w[l].qkv, w[l].qkv_bias, qkv);
        if (status) break;
        if (w[l].q_norm) head_rms_norm_f32(T, Hq, Hkv, D, eps, qkv, w[l].q_norm, w[l].k_norm);
        const float *c = w[l].rope ? cos2 : cos, *s = w[l].rope ? sin2 : sin;
        if ((status = rotary_qkv_f32(T, Hq, Hkv, D, qkv, c, s, q, k, v))) break;
        status = ragged_attention_window_f32(B, Hq, Hkv, D, l, scale, w[l].window, q, k, v, attn, kv_half, bases,
                                             caps, starts, rows, offsets, pbases, pcaps, plens);
        if (status) break;
        if ((status = linear(wbf16, T, H, Hq * D, attn, &w[l].o, delta))) break;
        add_rms_norm_f32(T, H, eps, hidden, out_norm(T, H, eps, delta, w[l].attn_out_norm, normed), w[l].ln2, x);
        if ((status = linear(wbf16, T, 2 * I, H, x, &w[l].gate_up, gate_up))) break;
        if (gelu)
            gelu_tanh_mul_f32(T, I, gate_up, act);
        else
            silu_mul_f32(T, I, gate_up, act);
        if ((status = linear(wbf16, T, H, I, act, &w[l].down, delta))) break;
        const float *mlp = out_norm(T, H, eps, delta, w[l].mlp_out_norm, normed);
        if (l + 1 < L) {
            add_rms_norm_f32(T, H, eps, hidden, mlp, w[l + 1].ln1, x);
        } else {
            for (int64_t i = 0; i < (int64_t)T * H; i++) hidden[i] += mlp[i];
        }
    }
    return status;
}

static int linear_bias(int wbf16, int M, int N, int K, const float *x, const struct matrix *W, const float *bias,
                       float *y) {
    int status = linear(wbf16, M, N, K, x, W, y);
    if (!status && bias)  // y + b, as torch adds it after the matmul
        for (int64_t t = 0; t < M; t++)
            for (int64_t c = 0; c < N; c++) y[t * N + c] += bias[c];
    return status;
}

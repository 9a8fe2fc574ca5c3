// The small per-token operations of a transformer layer, fused so that a decode step does not pay
// torch's per-operation overhead (~5-60 us each, 8 per layer) for vectors of a few hundred floats.
// Each output row depends only on its own input row: batch-invariant. Rows in parallel on the pool.
// Native-width vectors (vec.h): the norm's sum of squares is folded per vector width, so its rounding
// differs between AVX-512 and AVX2 machines (each deterministic); SiLU is elementwise.
//
//   add_rms_norm_f32:  hidden[T, H] += delta (if given); out = weight * (hidden * rsqrt(mean(hidden^2) + eps))
//                      (transformers' LlamaRMSNorm in float32)
//   head_rms_norm_f32: each head [D] of q and k in qkv[T, Hq + 2 Hkv, D], in place: weight * rms_normalised
//                      (q_norm for q's heads, k_norm for k's; Qwen3's and Gemma 3's per-head norms)
//   rotary_qkv_f32:    qkv[T, Hq + 2 Hkv, D] -> q[T, Hq, D], k[T, Hkv, D] rotated by cos/sin[T, D]
//                      (x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1)), v[T, Hkv, D] copied
//   silu_mul_f32:      gate_up[T, 2 I] -> out[T, I] = silu(gate) * up
//   gelu_tanh_mul_f32: gate_up[T, 2 I] -> out[T, I] = gelu_tanh(gate) * up, gelu_tanh(x) =
//                      0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (torch's gelu(approximate="tanh"))
// Row-major contiguous float32.
#include <math.h>
#include <stdint.h>

#include "kernels.h"
#include "pool.h"
#include "vec.h"

struct norm_job {
    int H;
    float eps;
    float *hidden;
    const float *delta, *weight;
    float *out;
};

// one row h[H] (+= d[H], if d): o = w * (h * rsqrt(mean(h^2) + eps)); o may be h (each o[c] is written
// after h[c] is read)
static void rms_row(int H, float eps, float *h, const float *d, const float *w, float *o) {
    int i = 0;
    if (d)
        for (int c = 0; c < H; c++) h[c] += d[c];
    vf acc = {0};
    for (; i + VL <= H; i += VL) {
        vf x = loadf(h + i);
        acc += x * x;
    }
    float ss = sumv(acc);
    for (; i < H; i++) ss += h[i] * h[i];
    float r = 1.0f / sqrtf(ss / (float)H + eps);
    for (int c = 0; c < H; c++) o[c] = w[c] * (h[c] * r);
}

static void norm_row(void *ctx, int t) {
    const struct norm_job *j = ctx;
    rms_row(j->H, j->eps, j->hidden + (int64_t)t * j->H, j->delta ? j->delta + (int64_t)t * j->H : 0, j->weight,
            j->out + (int64_t)t * j->H);
}

int add_rms_norm_f32(int T, int H, float eps, float *hidden, const float *delta, const float *weight, float *out) {
    struct norm_job job = {H, eps, hidden, delta, weight, out};
    pool_run(T, norm_row, &job);
    return 0;
}

struct head_norm_job {
    int Hq, Hkv, D;
    float eps;
    float *qkv;
    const float *q_norm, *k_norm;
};

static void head_norm_row(void *ctx, int t) {
    const struct head_norm_job *j = ctx;
    float *row = j->qkv + (int64_t)t * (j->Hq + 2 * j->Hkv) * j->D;
    for (int h = 0; h < j->Hq + j->Hkv; h++) {
        float *x = row + (int64_t)h * j->D;
        rms_row(j->D, j->eps, x, 0, h < j->Hq ? j->q_norm : j->k_norm, x);
    }
}

int head_rms_norm_f32(int T, int Hq, int Hkv, int D, float eps, float *qkv, const float *q_norm,
                      const float *k_norm) {
    struct head_norm_job job = {Hq, Hkv, D, eps, qkv, q_norm, k_norm};
    pool_run(T, head_norm_row, &job);
    return 0;
}

struct rotary_job {
    int Hq, Hkv, D;
    const float *qkv, *cos, *sin;
    float *q, *k, *v;
};

static void rotate(const float *x, const float *cos, const float *sin, float *y, int D) {
    int half = D / 2;
    for (int i = 0; i < half; i++) y[i] = x[i] * cos[i] - x[i + half] * sin[i];
    for (int i = half; i < D; i++) y[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

static void rotary_row(void *ctx, int t) {
    const struct rotary_job *j = ctx;
    int Hq = j->Hq, Hkv = j->Hkv, D = j->D;
    const float *row = j->qkv + (int64_t)t * (Hq + 2 * Hkv) * D;
    const float *cos = j->cos + (int64_t)t * D, *sin = j->sin + (int64_t)t * D;
    for (int h = 0; h < Hq; h++) rotate(row + h * D, cos, sin, j->q + ((int64_t)t * Hq + h) * D, D);
    for (int h = 0; h < Hkv; h++) rotate(row + (Hq + h) * D, cos, sin, j->k + ((int64_t)t * Hkv + h) * D, D);
    const float *v = row + (Hq + Hkv) * D;
    float *vo = j->v + (int64_t)t * Hkv * D;
    for (int c = 0; c < Hkv * D; c++) vo[c] = v[c];
}

int rotary_qkv_f32(int T, int Hq, int Hkv, int D, const float *qkv, const float *cos, const float *sin, float *q,
                   float *k, float *v) {
    if (D % 2) return 1;
    struct rotary_job job = {Hq, Hkv, D, qkv, cos, sin, q, k, v};
    pool_run(T, rotary_row, &job);
    return 0;
}

struct silu_job {
    int I;
    const float *gate_up;
    float *out;
};

static void silu_row(void *ctx, int t) {
    const struct silu_job *j = ctx;
    int I = j->I, i = 0;
    const float *g = j->gate_up + (int64_t)t * 2 * I, *u = g + I;
    float *o = j->out + (int64_t)t * I;
    for (; i + VL <= I; i += VL) {
        vf x = loadf(g + i);
        storev(o + i, x / (1.0f + expv(-x)) * loadf(u + i));
    }
    for (; i < I; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

int silu_mul_f32(int T, int I, const float *gate_up, float *out) {
    struct silu_job job = {I, gate_up, out};
    pool_run(T, silu_row, &job);
    return 0;
}

// 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)): no cancellation where tanh(u) nears -1
static void gelu_tanh_row(void *ctx, int t) {
    const struct silu_job *j = ctx;
    const float k2 = 1.5957691216057308f;  // 2 sqrt(2 / pi)
    int I = j->I, i = 0;
    const float *g = j->gate_up + (int64_t)t * 2 * I, *u = g + I;
    float *o = j->out + (int64_t)t * I;
    for (; i + VL <= I; i += VL) {
        vf x = loadf(g + i);
        storev(o + i, x / (1.0f + expv(-k2 * (x + 0.044715f * x * x * x))) * loadf(u + i));
    }
    for (; i < I; i++) o[i] = g[i] / (1.0f + expf(-k2 * (g[i] + 0.044715f * g[i] * g[i] * g[i]))) * u[i];
}

int gelu_tanh_mul_f32(int T, int I, const float *gate_up, float *out) {
    struct silu_job job = {I, gate_up, out};
    pool_run(T, gelu_tanh_row, &job);
    return 0;
}

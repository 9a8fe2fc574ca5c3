// Ragged decode attention: one new query token per sequence, each sequence attending to its own KV buffer.
//
// Called once per layer for all decoding sequences of a step (see engine/native.py), so that the Python
// cost does not grow with the batch. For sequence b it first writes the new key/value at position
// starts[b] of its buffer, then attends over positions 0..starts[b] inclusive.
//
// Shapes (float32, contiguous):
//   q      [B, Hq, D]      queries after rotary embedding
//   k_new  [B, Hkv, D]     new keys after rotary embedding; v_new likewise
//   out    [B, Hq, D]
//   bases[b] -> buffer [L, 2, Hkv, caps[b], D] of sequence b (engine/kv_cache.py layout)
// Query head i reads KV head i / (Hq / Hkv) (grouped-query attention, as transformers' repeat_kv).
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define MAX_GROUP 16

static void one_head(const float *q, const float *K, const float *V, float *out, int64_t n, int G, int D,
                     float scale, float *scores) {
    // scores [G, n]
    float maxes[MAX_GROUP];
    for (int g = 0; g < G; g++) maxes[g] = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        const float *k = K + t * D;
        for (int g = 0; g < G; g++) {
            const float *qg = q + g * D;
            float acc = 0.f;
            for (int d = 0; d < D; d++) acc += qg[d] * k[d];
            acc *= scale;
            scores[g * n + t] = acc;
            if (acc > maxes[g]) maxes[g] = acc;
        }
    }
    float sums[MAX_GROUP];
    for (int g = 0; g < G; g++) {
        float s = 0.f, m = maxes[g];
        float *row = scores + g * n;
        for (int64_t t = 0; t < n; t++) {
            float e = expf(row[t] - m);
            row[t] = e;
            s += e;
        }
        sums[g] = s;
        memset(out + g * D, 0, sizeof(float) * D);
    }
    for (int64_t t = 0; t < n; t++) {
        const float *v = V + t * D;
        for (int g = 0; g < G; g++) {
            float p = scores[g * n + t];
            float *o = out + g * D;
            for (int d = 0; d < D; d++) o[d] += p * v[d];
        }
    }
    for (int g = 0; g < G; g++) {
        float inv = 1.f / sums[g];
        for (int d = 0; d < D; d++) out[g * D + d] *= inv;
    }
}

struct attention_job {
    int Hq, Hkv, D, layer, G;
    float scale;
    const float *q, *k_new, *v_new;
    float *out;
    float *const *bases;
    const int64_t *caps, *starts;
    atomic_int failed;
};

static void one_job(void *ctx, int job) {
    struct attention_job *j = ctx;
    int Hq = j->Hq, Hkv = j->Hkv, D = j->D, G = j->G;
    int b = job / Hkv, h = job % Hkv;
    int64_t cap = j->caps[b], s = j->starts[b], n = s + 1;
    float *K = j->bases[b] + ((int64_t)(j->layer * 2 + 0) * Hkv + h) * cap * D;
    float *V = j->bases[b] + ((int64_t)(j->layer * 2 + 1) * Hkv + h) * cap * D;
    memcpy(K + s * D, j->k_new + ((int64_t)b * Hkv + h) * D, sizeof(float) * D);
    memcpy(V + s * D, j->v_new + ((int64_t)b * Hkv + h) * D, sizeof(float) * D);
    float *scores = malloc(sizeof(float) * G * n);
    if (!scores) {
        atomic_store(&j->failed, 1);
        return;
    }
    one_head(j->q + ((int64_t)b * Hq + h * G) * D, K, V, j->out + ((int64_t)b * Hq + h * G) * D, n, G, D, j->scale,
             scores);
    free(scores);
}

int decode_attention_f32(int B, int Hq, int Hkv, int D, int layer, float scale, const float *q, const float *k_new,
                         const float *v_new, float *out, float *const *bases, const int64_t *caps,
                         const int64_t *starts) {
    int G = Hq / Hkv;
    if (G > MAX_GROUP || G * Hkv != Hq) return 1;
    struct attention_job job = {Hq, Hkv, D, layer, G, scale, q, k_new, v_new, out, bases, caps, starts, 0};
    pool_run(B * Hkv, one_job, &job);
    return atomic_load(&job.failed) ? 2 : 0;
}

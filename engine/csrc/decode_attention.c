// Ragged decode attention: one new query token per sequence, each sequence attending to its own KV.
//
// Called once per layer for all decoding sequences of a step (engine/attention.py), so that the Python
// cost does not grow with the batch. A sequence's KV is up to two segments (engine/kv_cache.py): a
// shared, read-only prefix of plens[b] positions (buffer pbases[b], capacity pcaps[b]; plens[b] = 0
// for none) and its own buffer (bases[b], caps[b]) holding positions plens[b].. . The new key/value
// is written at own index starts[b] (= position - plens[b]); attention covers every position up to
// and including it.
//
// Shapes (float32, contiguous):
//   q      [B, Hq, D]      queries after rotary embedding
//   k_new  [B, Hkv, D]     new keys after rotary embedding; v_new likewise
//   out    [B, Hq, D]
//   buffers [L, 2, Hkv, capacity, D] (engine/kv_cache.py layout)
// Query head i reads KV head i / (Hq / Hkv) (grouped-query attention, as transformers' repeat_kv).
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define MAX_GROUP 16

// keys/values of position t: the prefix segment (t < np) or the own one
#define ROW(P, O, t) ((t) < np ? (P) + (t) * D : (O) + ((t) - np) * D)

static void one_head(const float *q, const float *PK, const float *PV, int64_t np, const float *K, const float *V,
                     float *out, int64_t n, int G, int D, float scale, float *scores) {
    // scores [G, n]
    float maxes[MAX_GROUP];
    for (int g = 0; g < G; g++) maxes[g] = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        const float *k = ROW(PK, K, t);
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
        const float *v = ROW(PV, V, t);
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
    const float *const *pbases;
    const int64_t *pcaps, *plens;
    atomic_int failed;
};

static void one_job(void *ctx, int job) {
    struct attention_job *j = ctx;
    int Hq = j->Hq, Hkv = j->Hkv, D = j->D, G = j->G;
    int b = job / Hkv, h = job % Hkv;
    int64_t cap = j->caps[b], s = j->starts[b], np = j->plens[b], pcap = j->pcaps[b], n = np + s + 1;
    float *K = j->bases[b] + ((int64_t)(j->layer * 2 + 0) * Hkv + h) * cap * D;
    float *V = j->bases[b] + ((int64_t)(j->layer * 2 + 1) * Hkv + h) * cap * D;
    const float *PK = np ? j->pbases[b] + ((int64_t)(j->layer * 2 + 0) * Hkv + h) * pcap * D : 0;
    const float *PV = np ? j->pbases[b] + ((int64_t)(j->layer * 2 + 1) * Hkv + h) * pcap * D : 0;
    memcpy(K + s * D, j->k_new + ((int64_t)b * Hkv + h) * D, sizeof(float) * D);
    memcpy(V + s * D, j->v_new + ((int64_t)b * Hkv + h) * D, sizeof(float) * D);
    float *scores = malloc(sizeof(float) * G * n);
    if (!scores) {
        atomic_store(&j->failed, 1);
        return;
    }
    one_head(j->q + ((int64_t)b * Hq + h * G) * D, PK, PV, np, K, V, j->out + ((int64_t)b * Hq + h * G) * D, n, G, D,
             j->scale, scores);
    free(scores);
}

int decode_attention_f32(int B, int Hq, int Hkv, int D, int layer, float scale, const float *q, const float *k_new,
                         const float *v_new, float *out, float *const *bases, const int64_t *caps,
                         const int64_t *starts, const float *const *pbases, const int64_t *pcaps,
                         const int64_t *plens) {
    int G = Hq / Hkv;
    if (G > MAX_GROUP || G * Hkv != Hq) return 1;
    struct attention_job job = {Hq, Hkv, D, layer, G, scale, q, k_new, v_new, out, bases, caps, starts,
                                pbases, pcaps, plens, 0};
    pool_run(B * Hkv, one_job, &job);
    return atomic_load(&job.failed) ? 2 : 0;
}

// Ragged attention: each sequence has a few new query rows (1 when decoding, a short chunk when
// prefilling) and attends to its own KV, causally.
//
// Called once per layer for all such sequences of a step (engine/kernels/attention.py), so that the Python
// cost does not grow with the batch. A sequence's KV is up to two segments (engine/kv/session_kv.py): a
// shared, read-only prefix of plens[b] positions (buffer pbases[b], capacity pcaps[b]; plens[b] = 0
// for none) and its own buffer (bases[b], caps[b]) holding positions plens[b].. . Sequence b's
// rows[b] new keys/values are written at own indices starts[b].. (= position - plens[b]); its new row
// r, at position p = plens[b] + starts[b] + r, attends to every position up to and including p, or with a
// sliding window w > 0 (ragged_attention_window_f32) to positions p - w + 1 .. p only (transformers'
// sliding_window: key position > p - w).
//
// The KV buffers hold float32 or float16 (kv_half = 1: IEEE half, round-to-nearest-even on write,
// widened to float32 on read; all arithmetic is float32 either way).
//
// Shapes (float32 unless said, contiguous; T = all rows of the step, sequence b's rows at offsets[b]..):
//   q      [T, Hq, D]      queries after rotary embedding
//   k_new  [T, Hkv, D]     new keys after rotary embedding; v_new likewise
//   out    [T, Hq, D]      rows of the sequences given are written, others untouched
//   buffers [L, 2, Hkv, capacity, D] of float32 or float16 (engine/kv/session_kv.py layout)
// Query head i reads KV head i / (Hq / Hkv) (grouped-query attention, as transformers' repeat_kv).
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"
#include "vec.h"

#define MAX_GROUP 16

typedef _Float16 half;

// VL (vec.h) keys/values elements as float32 lanes
static inline vf load_kv(const float *p) { return loadf(p); }
static inline float kv_float(float x) { return x; }
static inline vf load_kv_h(const half *p) { return load_halves(p); }
static inline float kv_float_h(half x) { return (float)x; }

// keys/values of position t: the prefix segment (t < np) or the own one
#define ROW(P, O, t) ((t) < np ? (P) + (t) * D : (O) + ((t) - np) * D)

// any head_dim; positions first..n-1; scores: [G, n - first] scratch
#define ONE_HEAD_SCALAR(T, SUFFIX, TO_FLOAT)                                                                 \
    static void one_head_scalar##SUFFIX(const float *q, const T *PK, const T *PV, int64_t np, const T *K,       \
                                        const T *V, float *out, int64_t first, int64_t n, int G, int D,         \
                                        float scale, float *scores) {                                         \
    float maxes[MAX_GROUP];                                                                                   \
    for (int g = 0; g < G; g++) maxes[g] = -INFINITY;                                                         \
    const int64_t cnt = n - first;                                                                            \
    for (int64_t t = first; t < n; t++) {                                                                     \
        const T *k = ROW(PK, K, t);                                                                           \
        for (int g = 0; g < G; g++) {                                                                         \
            const float *qg = q + g * D;                                                                      \
            float acc = 0.f;                                                                                  \
            for (int d = 0; d < D; d++) acc += qg[d] * TO_FLOAT(k[d]);                                        \
            acc *= scale;                                                                                     \
            scores[g * cnt + t - first] = acc;                                                                \
            if (acc > maxes[g]) maxes[g] = acc;                                                               \
        }                                                                                                     \
    }                                                                                                         \
    float sums[MAX_GROUP];                                                                                    \
    for (int g = 0; g < G; g++) {                                                                             \
        float s = 0.f, m = maxes[g];                                                                          \
        float *row = scores + g * cnt;                                                                        \
        for (int64_t t = 0; t < cnt; t++) {                                                                   \
            float e = expf(row[t] - m);                                                                       \
            row[t] = e;                                                                                       \
            s += e;                                                                                           \
        }                                                                                                     \
        sums[g] = s;                                                                                          \
        memset(out + g * D, 0, sizeof(float) * D);                                                            \
    }                                                                                                         \
    for (int64_t t = first; t < n; t++) {                                                                     \
        const T *v = ROW(PV, V, t);                                                                           \
        for (int g = 0; g < G; g++) {                                                                         \
            float p = scores[g * cnt + t - first];                                                            \
            float *o = out + g * D;                                                                           \
            for (int d = 0; d < D; d++) o[d] += p * TO_FLOAT(v[d]);                                           \
        }                                                                                                     \
    }                                                                                                         \
    for (int g = 0; g < G; g++) {                                                                             \
        float inv = 1.f / sums[g];                                                                            \
        for (int d = 0; d < D; d++) out[g * D + d] *= inv;                                                    \
    }                                                                                                         \
}

ONE_HEAD_SCALAR(float, , kv_float)
ONE_HEAD_SCALAR(half, _h, kv_float_h)

// VL vectors of partial sums (vector i: position i) -> one vector of their VL totals, in order.
// Each level adds the two halves of every position's lanes: VL -> VL/2 -> ... -> 1 lanes.
#if VL == 16
static const vi FOLD[4] = {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                           {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
                           {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},
                           {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}};
#elif VL == 8
static const vi FOLD[3] = {{0, 1, 2, 3, 8, 9, 10, 11}, {0, 1, 4, 5, 8, 9, 12, 13}, {0, 2, 4, 6, 8, 10, 12, 14}};
#else
static const vi FOLD[2] = {{0, 1, 4, 5}, {0, 2, 4, 6}};
#endif

static inline vf fold(vf a, vf b, vi lo, int half) {
    return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, lo + half);
}

static inline vf totals(const vf *p) {
    vf level[VL];
    for (int i = 0; i < VL; i++) level[i] = p[i];
    int n = VL, depth = 0;
    for (int half = VL / 2; half >= 1; half /= 2, depth++, n /= 2)
        for (int i = 0; i < n / 2; i++) level[i] = fold(level[2 * i], level[2 * i + 1], FOLD[depth], half);
    return level[0];
}

// One KV head and GG (1-4, a compile-time constant) of its query heads, DIM (64, 128 or 256, compile-time)
// = C native vectors: each key and value is loaded (and widened from float16) once for the GG heads.
// software prefetch of the row AHEAD positions on (its cache lines), ahead of the hardware's
#define AHEAD 16
#define PREFETCH_ROW(p, bytes)                                                            \
    for (int line = 0; line < (int)(bytes); line += 64) __builtin_prefetch((const char *)(p) + line)
// Positions first..n-1, scores of VL at a time; positions past n in the last block repeat position n - 1
// and get weight 0. scores: [GG, n - first rounded up to 16] scratch. Every head's arithmetic, and its order, is the
// same whatever GG is (it depends on the vector width: AVX-512 and AVX2 machines round differently).
#define ONE_HEAD_G(DIM, GG, T, SUFFIX, LOAD)                                                               \
    static void one_head_##DIM##_g##GG##SUFFIX(const float *q, const T *PK, const T *PV, int64_t np,       \
                                               const T *K, const T *V, float *out, int64_t first,           \
                                               int64_t n, float scale, float *scores) {                     \
        enum { D = DIM, C = DIM / VL };                                                                    \
        const int64_t blocks = (n - first + VL - 1) / VL, padded = blocks * VL;                            \
        vf qv[GG][C], m[GG], sum[GG];                                                                      \
        for (int g = 0; g < GG; g++) {                                                                     \
            for (int c = 0; c < C; c++) qv[g][c] = loadf(q + g * D + VL * c);                              \
            m[g] = sum[g] = (vf){0};                                                                       \
        }                                                                                                  \
        for (int64_t blk = 0; blk < blocks; blk++) {                                                       \
            vf p[GG][VL];                                                                                  \
            for (int i = 0; i < VL; i++) {                                                                 \
                int64_t t = first + blk * VL + i < n ? first + blk * VL + i : n - 1;                       \
                const T *k = ROW(PK, K, t);                                                                \
                PREFETCH_ROW(ROW(PK, K, t + AHEAD < n ? t + AHEAD : n - 1), D * sizeof(T));                \
                vf kv[C];                                                                                  \
                for (int c = 0; c < C; c++) kv[c] = LOAD(k + VL * c);                                      \
                for (int g = 0; g < GG; g++) {                                                             \
                    vf acc = qv[g][0] * kv[0];                                                             \
                    for (int c = 1; c < C; c++) acc += qv[g][c] * kv[c];                                   \
                    p[g][i] = acc;                                                                         \
                }                                                                                          \
            }                                                                                              \
            for (int g = 0; g < GG; g++) {                                                                 \
                vf s = totals(p[g]) * scale;                                                               \
                storev(scores + g * padded + blk * VL, s);                                                 \
                m[g] = blk ? vmaxv(m[g], s) : s;                                                           \
            }                                                                                              \
        }                                                                                                  \
        for (int g = 0; g < GG; g++) {                                                                     \
            float *row = scores + g * padded, mx = maxv(m[g]);                                             \
            for (int64_t blk = 0; blk < blocks; blk++) {                                                   \
                vf e = expv(loadf(row + blk * VL) - mx);                                                   \
                e = selectv(IOTA < (float)(n - first - blk * VL), e, (vf){0});                             \
                storev(row + blk * VL, e);                                                                 \
                sum[g] += e;                                                                               \
            }                                                                                              \
        }                                                                                                  \
        vf o[GG][C];                                                                                       \
        for (int g = 0; g < GG; g++)                                                                       \
            for (int c = 0; c < C; c++) o[g][c] = (vf){0};                                                 \
        for (int64_t t = first; t < n; t++) {                                                              \
            const T *v = ROW(PV, V, t);                                                                    \
            PREFETCH_ROW(ROW(PV, V, t + AHEAD < n ? t + AHEAD : n - 1), D * sizeof(T));                    \
            vf vv[C];                                                                                      \
            for (int c = 0; c < C; c++) vv[c] = LOAD(v + VL * c);                                          \
            for (int g = 0; g < GG; g++) {                                                                 \
                float w = scores[g * padded + t - first];                                                  \
                for (int c = 0; c < C; c++) o[g][c] += w * vv[c];                                          \
            }                                                                                              \
        }                                                                                                  \
        for (int g = 0; g < GG; g++) {                                                                     \
            float inv = 1.f / sumv(sum[g]);                                                                \
            for (int c = 0; c < C; c++) storev(out + g * D + VL * c, o[g][c] * inv);                       \
        }                                                                                                  \
    }

#define ONE_HEAD_GROUPS(DIM, T, SUFFIX, LOAD) \
    ONE_HEAD_G(DIM, 1, T, SUFFIX, LOAD)       \
    ONE_HEAD_G(DIM, 2, T, SUFFIX, LOAD)       \
    ONE_HEAD_G(DIM, 3, T, SUFFIX, LOAD)       \
    ONE_HEAD_G(DIM, 4, T, SUFFIX, LOAD)

ONE_HEAD_GROUPS(64, float, , load_kv)
ONE_HEAD_GROUPS(128, float, , load_kv)
ONE_HEAD_GROUPS(256, float, , load_kv)
ONE_HEAD_GROUPS(64, half, _h, load_kv_h)
ONE_HEAD_GROUPS(128, half, _h, load_kv_h)
ONE_HEAD_GROUPS(256, half, _h, load_kv_h)

struct attention_job {
    int B, Hq, Hkv, D, layer, G, kv_half;
    float scale;
    int64_t window;  // 0: none
    const float *q, *k_new, *v_new;
    float *out;
    void *const *bases;
    const int64_t *caps, *starts, *rows, *offsets;
    const void *const *pbases;
    const int64_t *pcaps, *plens;
    int64_t *first_item;  // [B + 1]: items (kv head x row) of sequences before b
    atomic_int failed;
};

// element offset of (kind, head h) in a buffer of capacity cap: [L, 2, Hkv, cap, D]
static inline int64_t head_offset(const struct attention_job *j, int kind, int h, int64_t cap) {
    return ((int64_t)(j->layer * 2 + kind) * j->Hkv + h) * cap * j->D;
}

// item (b, h): write sequence b's new keys/values of KV head h
static void write_job(void *ctx, int item) {
    const struct attention_job *j = ctx;
    int Hkv = j->Hkv, D = j->D, b = item / Hkv, h = item % Hkv;
    int64_t k_at = head_offset(j, 0, h, j->caps[b]) + j->starts[b] * D;
    int64_t v_at = head_offset(j, 1, h, j->caps[b]) + j->starts[b] * D;
    for (int64_t r = 0; r < j->rows[b]; r++) {
        const float *k = j->k_new + ((j->offsets[b] + r) * Hkv + h) * D;
        const float *v = j->v_new + ((j->offsets[b] + r) * Hkv + h) * D;
        if (j->kv_half) {
            half *K = (half *)j->bases[b] + k_at + r * D, *V = (half *)j->bases[b] + v_at + r * D;
            for (int d = 0; d < D; d++) K[d] = (half)k[d], V[d] = (half)v[d];
        } else {
            memcpy((float *)j->bases[b] + k_at + r * D, k, sizeof(float) * D);
            memcpy((float *)j->bases[b] + v_at + r * D, v, sizeof(float) * D);
        }
    }
}

// item: one new row of one sequence against one KV head (its G query heads)
static void attend_job(void *ctx, int item) {
    struct attention_job *j = ctx;
    int Hq = j->Hq, Hkv = j->Hkv, D = j->D, G = j->G, b = 0;
    while (j->first_item[b + 1] <= item) b++;
    int64_t local = item - j->first_item[b], r = local / Hkv;
    int h = (int)(local % Hkv);
    int64_t np = j->plens[b], n = np + j->starts[b] + r + 1;  // positions 0..n-1 are visible, or the window's
    int64_t first = j->window > 0 && n > j->window ? n - j->window : 0;
    int64_t pk = np ? head_offset(j, 0, h, j->pcaps[b]) : 0, pv = np ? head_offset(j, 1, h, j->pcaps[b]) : 0;
    int64_t k_at = head_offset(j, 0, h, j->caps[b]), v_at = head_offset(j, 1, h, j->caps[b]);
    float *scores = malloc(sizeof(float) * G * ((n - first + 15) / 16 * 16));
    if (!scores) {
        atomic_store(&j->failed, 1);
        return;
    }
    int64_t row = j->offsets[b] + r;
    const float *q = j->q + (row * Hq + h * G) * D;
    float *out = j->out + (row * Hq + h * G) * D;
    // the same call for either KV element type T (suffix SFX names the kernels of that type)
// the G query heads of a KV head, up to 4 at a time (one pass over the keys and values per 4 heads)
#define GROUPED(C, SFX)                                                                                 \
    for (int g0 = 0; g0 < G; g0 += 4) {                                                                 \
        const float *qg = q + g0 * D;                                                                   \
        float *og = out + g0 * D;                                                                       \
        switch (G - g0 < 4 ? G - g0 : 4) {                                                              \
            case 1: one_head_##C##_g1##SFX(qg, PK, PV, np, K, V, og, first, n, j->scale, scores); break;\
            case 2: one_head_##C##_g2##SFX(qg, PK, PV, np, K, V, og, first, n, j->scale, scores); break;\
            case 3: one_head_##C##_g3##SFX(qg, PK, PV, np, K, V, og, first, n, j->scale, scores); break;\
            default: one_head_##C##_g4##SFX(qg, PK, PV, np, K, V, og, first, n, j->scale, scores);      \
        }                                                                                               \
    }
#define ATTEND(T, SFX)                                                                                  \
    {                                                                                                   \
        const T *P = j->pbases[b], *O = j->bases[b];                                                    \
        const T *PK = np ? P + pk : 0, *PV = np ? P + pv : 0, *K = O + k_at, *V = O + v_at;             \
        if (D == 64) {                                                                                  \
            GROUPED(64, SFX)                                                                            \
        } else if (D == 128) {                                                                          \
            GROUPED(128, SFX)                                                                           \
        } else if (D == 256) {                                                                          \
            GROUPED(256, SFX)                                                                           \
        } else {                                                                                        \
            one_head_scalar##SFX(q, PK, PV, np, K, V, out, first, n, G, D, j->scale, scores);           \
        }                                                                                               \
    }
    if (j->kv_half)
        ATTEND(half, _h)
    else
        ATTEND(float, )
#undef ATTEND
#undef GROUPED
    free(scores);
}

// kv_half: 0 = the buffers hold float32, 1 = float16; window: 0 = none, else the sliding window (> 0)
int ragged_attention_window_f32(int B, int Hq, int Hkv, int D, int layer, float scale, int64_t window,
                                const float *q, const float *k_new, const float *v_new, float *out, int kv_half,
                                void *const *bases, const int64_t *caps, const int64_t *starts, const int64_t *rows,
                                const int64_t *offsets, const void *const *pbases, const int64_t *pcaps,
                                const int64_t *plens) {
    int G = Hq / Hkv;
    if (window < 0) return 1;
    if (G > MAX_GROUP || G * Hkv != Hq) return 1;
    int64_t first_item[B + 1];
    first_item[0] = 0;
    for (int b = 0; b < B; b++) first_item[b + 1] = first_item[b] + rows[b] * Hkv;
    if (first_item[B] > 0xffff) return 3;  // more items than one pool job takes
    struct attention_job job = {B, Hq, Hkv, D, layer, G, kv_half, scale, window, q, k_new, v_new, out, bases, caps,
                                starts, rows, offsets, pbases, pcaps, plens, first_item, 0};
    pool_run(B * Hkv, write_job, &job);  // every new key is in place before any row attends
    pool_run((int)first_item[B], attend_job, &job);
    return atomic_load(&job.failed) ? 2 : 0;
}

int ragged_attention_f32(int B, int Hq, int Hkv, int D, int layer, float scale, const float *q, const float *k_new,
                         const float *v_new, float *out, int kv_half, void *const *bases, const int64_t *caps,
                         const int64_t *starts, const int64_t *rows, const int64_t *offsets,
                         const void *const *pbases, const int64_t *pcaps, const int64_t *plens) {
    return ragged_attention_window_f32(B, Hq, Hkv, D, layer, scale, 0, q, k_new, v_new, out, kv_half, bases, caps,
                                       starts, rows, offsets, pbases, pcaps, plens);
}

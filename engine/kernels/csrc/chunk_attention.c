// Attention of one long prefill chunk (n new rows of one sequence) against its KV, causally, in
// blocks (the flash-attention order): each item takes QB query rows x the G query heads of one KV
// head, and walks the visible keys KB at a time, keeping a running max and sum per query (online
// softmax), so scores never exist for more than one key block. Compute-bound: two small matrix
// products per block (scores = Q K^T, out += P V) in strip.h's register blocking.
//
// The chunk's own keys/values are already written into the buffers (engine/kernels/attention.py).
// Row r of the chunk is at position p = plen + start + r and sees positions 0 .. p, or with a sliding window
// w > 0 (chunk_attention_window_f32) p - w + 1 .. p (transformers' sliding_window). KV layout and
// segments as in attention.c: a shared prefix of plen positions (pbase, capacity pcap; plen = 0 for
// none) then the own buffer (base, capacity cap) from own index 0; [L, 2, Hkv, capacity, D] of float32,
// or float16 when kv_half (widened exactly; all arithmetic float32).
//
// Shapes (float32, contiguous): q [n, Hq, D] after rotary; out [n, Hq, D] (every element written).
// D must be a multiple of STRIP. Query head i reads KV head i / (Hq / Hkv).
//
// Two pool jobs: first every visible key and value of the layer is copied as float32, keys transposed
// per block (Kt [Hkv][Tp / KB][D][KB], Tp = T rounded up to KB, pad zero: one block's 16 KB contiguous,
// not rows Tp apart that would share L1 sets; Vf [Hkv][Tp][D], pad zero), then the items.
// The copy is T x Hkv x D x 2 floats per layer (~1.5 MB at T = 2000), small next to the products.
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"
#include "pool.h"
#include "strip.h"

#define KB 64  // keys per block
#define QB 16  // query rows per item

typedef _Float16 half;

// C [M, N] (+)= A [M, K] B [K, N], N a multiple of STRIP: the matmuls' register tiles (strip.h)
static void matmul(int M, int N, int K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C,
                   int64_t ldc, int accumulate) {
    for (int c = 0; c < N; c += STRIP) strip_rows(M, K, A, lda, B + c, ldb, C + c, ldc, STRIP, accumulate);
}

struct chunk_job {
    int Hq, Hkv, D, G, layer, kv_half;
    float scale;
    int64_t n, start, T, Tp;  // new rows, own index of the first, visible keys of the last row, T padded
    int64_t window;           // 0: none
    const float *q;
    float *out;
    const void *base, *pbase;
    int64_t cap, pcap, plen;
    float *Kt, *Vf;
    atomic_int failed;
};

static const void *kv_row(const struct chunk_job *j, int kind, int h, int64_t t) {
    const void *buf = t < j->plen ? j->pbase : j->base;
    int64_t cap = t < j->plen ? j->pcap : j->cap, at = t < j->plen ? t : t - j->plen;
    int64_t offset = (((int64_t)j->layer * 2 + kind) * j->Hkv + h) * cap * j->D + at * j->D;
    return j->kv_half ? (const void *)((const half *)buf + offset) : (const void *)((const float *)buf + offset);
}

// item (h, key block): keys t0..t0+KB of KV head h into Kt (transposed) and Vf, as float32; a block
// wholly before the first row's window is never read, and not packed
static void pack_job(void *ctx, int item) {
    const struct chunk_job *j = ctx;
    int D = j->D, blocks = (int)(j->Tp / KB), h = item / blocks;
    int64_t t0 = (int64_t)(item % blocks) * KB;
    if (j->window > 0 && t0 + KB <= j->plen + j->start - j->window + 1) return;
    float *kt = j->Kt + (int64_t)h * D * j->Tp + t0 * D, *vf_ = j->Vf + (int64_t)h * j->Tp * D;
    for (int64_t t = t0; t < t0 + KB; t++) {
        float *v = vf_ + t * D;
        int c = (int)(t - t0);
        if (t >= j->T) {
            for (int d = 0; d < D; d++) kt[d * KB + c] = 0.f, v[d] = 0.f;
            continue;
        }
        const void *k = kv_row(j, 0, h, t), *vv = kv_row(j, 1, h, t);
        if (j->kv_half) {
            for (int d = 0; d < D; d++) kt[d * KB + c] = (float)((const half *)k)[d];
            for (int d = 0; d < D; d++) v[d] = (float)((const half *)vv)[d];
        } else {
            for (int d = 0; d < D; d++) kt[d * KB + c] = ((const float *)k)[d];
            memcpy(v, vv, sizeof(float) * D);
        }
    }
}

// item: query rows r0..r0+QB of KV head h's G query heads (M = rows x G queries, query i = row i / G,
// head i % G); the latest rows first, so that the longest items start first
static void attend_job(void *ctx, int item) {
    struct chunk_job *j = ctx;
    int D = j->D, G = j->G, Hkv = j->Hkv, h = item % Hkv;
    int64_t blocks_q = (j->n + QB - 1) / QB, r0 = (blocks_q - 1 - item / Hkv) * QB;
    int rows = j->n - r0 < QB ? (int)(j->n - r0) : QB, M = rows * G;
    float *scratch = malloc(sizeof(float) * ((size_t)M * (2 * D + KB) + 2 * M));
    if (!scratch) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *Q = scratch, *O = Q + M * D, *S = O + M * D, *m = S + M * KB, *l = m + M;
    for (int r = 0; r < rows; r++) {  // scaled once here, not each score
        const float *src = j->q + ((r0 + r) * j->Hq + h * G) * D;
        for (int e = 0; e < G * D; e++) Q[r * G * D + e] = src[e] * j->scale;
    }
    memset(O, 0, sizeof(float) * M * D);
    for (int i = 0; i < M; i++) m[i] = -INFINITY, l[i] = 0.f;
    const int64_t first_pos = j->plen + j->start + r0, last_pos = first_pos + rows - 1;
    const float *kt = j->Kt + (int64_t)h * D * j->Tp, *vf_ = j->Vf + (int64_t)h * j->Tp * D;
    const int64_t w = j->window, lowest = w > 0 && first_pos >= w ? first_pos - w + 1 : 0;  // first visible key
    for (int64_t t0 = lowest / KB * KB; t0 <= last_pos; t0 += KB) {
        matmul(M, KB, D, Q, D, kt + t0 * D, KB, S, KB, 0);  // S [M, KB] = Q K^T
        for (int i = 0; i < M; i++) {
            float *s = S + i * KB;
            const float limit = (float)(first_pos + i / G - t0);  // keys t0 + c with c <= limit are visible
            const float below = w > 0 ? limit - (float)w : -1.f;    // and with c > below (the window)
            vf mx = (vf){0} - INFINITY;
            if (limit >= KB - 1 && below < 0) {
                for (int c = 0; c < KB; c += VL) mx = vmaxv(mx, loadf(s + c));
            } else {
                for (int c = 0; c < KB; c += VL) {
                    vf col = IOTA + (float)c;
                    vf x = selectv(col <= limit, loadf(s + c), (vf){0} - INFINITY);
                    x = selectv(col > below, x, (vf){0} - INFINITY);
                    storev(s + c, x);
                    mx = vmaxv(mx, x);
                }
            }
            float m_new = fmaxf(m[i], maxv(mx));
            if (m_new == -INFINITY) {  // no visible key yet (a window starting past this block): weight 0
                memset(s, 0, sizeof(float) * KB);
                continue;
            }
            float alpha = expf(m[i] - m_new);  // 0 when m[i] is still -inf
            vf sum = (vf){0};
            for (int c = 0; c < KB; c += VL) {
                vf p = expv(loadf(s + c) - m_new);
                storev(s + c, p);
                sum += p;
            }
            l[i] = l[i] * alpha + sumv(sum);
            m[i] = m_new;
            if (alpha != 1.f)
                for (int d = 0; d < D; d++) O[i * D + d] *= alpha;
        }
        int keys = j->T - t0 < KB ? (int)(j->T - t0) : KB;
        matmul(M, D, keys, S, KB, vf_ + t0 * D, D, O, D, 1);  // O [M, D] += P V
    }
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < G; g++) {
            const float *o = O + (r * G + g) * D;
            float inv = 1.f / l[r * G + g], *y = j->out + ((r0 + r) * j->Hq + h * G + g) * D;
            for (int d = 0; d < D; d++) y[d] = o[d] * inv;
        }
    free(scratch);
}

static struct scratch packed;  // Kt then Vf, kept between calls (the engine thread is the only caller)

// 0 = done; 1 = shapes the kernel does not take; 2 = out of memory. window: 0 = none, else > 0
int chunk_attention_window_f32(int Hq, int Hkv, int D, int layer, float scale, int64_t window, const float *q,
                               float *out, int64_t n, int64_t start, int kv_half, const void *base, int64_t cap,
                               const void *pbase, int64_t pcap, int64_t plen) {
    int G = Hq / Hkv;
    if (G * Hkv != Hq || D % STRIP || n <= 0 || window < 0) return 1;
    int64_t T = plen + start + n, Tp = (T + KB - 1) / KB * KB, blocks_q = (n + QB - 1) / QB;
    if (Hkv * Tp / KB > 0xffff || Hkv * blocks_q > 0xffff) return 1;  // more items than one pool job takes
    if (reserve(&packed, sizeof(float) * 2 * (size_t)Hkv * Tp * D)) return 2;
    float *kt = packed.data;
    struct chunk_job job = {Hq, Hkv, D, G, layer, kv_half, scale, n, start, T, Tp, window, q, out, base, pbase, cap,
                            pcap, plen, kt, kt + (size_t)Hkv * Tp * D, 0};
    pool_run((int)(Hkv * Tp / KB), pack_job, &job);
    pool_run((int)(Hkv * blocks_q), attend_job, &job);
    return atomic_load(&job.failed) ? 2 : 0;
}

int chunk_attention_f32(int Hq, int Hkv, int D, int layer, float scale, const float *q, float *out, int64_t n,
                        int64_t start, int kv_half, const void *base, int64_t cap, const void *pbase, int64_t pcap,
                        int64_t plen) {
    return chunk_attention_window_f32(Hq, Hkv, D, layer, scale, 0, q, out, n, start, kv_half, base, cap, pbase, pcap,
                                      plen);
}

// Temperature / top-k / top-p sampling of many rows in one call (engine/sampling.py defines the
// semantics and holds the torch reference this must match).
//
// Per row, with weights w_i = exp((logit_i - max) / T) (unnormalised probabilities):
//   candidates = the K most likely tokens (K = top_k, or the vocabulary), ordered by weight
//                descending, ties by id ascending;
//   nucleus    = the longest prefix of the candidates whose mass before each token is <= top_p * Z
//                (Z = the candidates' total weight), so at least the top token;
//   draw       = the first nucleus token whose running weight exceeds u * (nucleus weight).
// With top_p >= 1 and no top_k every token is kept and the order is simply by id (no sort).
// Nothing sorts the vocabulary: a small top_k is kept in a bounded heap; otherwise a histogram of
// the weights' binary exponents (bins a factor 2 wide) gives a threshold whose tokens surely hold
// the nucleus (or the top_k), and only those few are sorted.
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"
#include "pool.h"
#include "vec.h"

#define HEAP_MAX 256  // top_k up to this uses the heap
#define BINS 128  // weights are in (0, 1]: float exponents 0..127

typedef struct {
    float w;
    int32_t id;
} cand;

// a before b in candidate order: heavier first, then lower id
static inline int before(cand a, cand b) { return a.w > b.w || (a.w == b.w && a.id < b.id); }

static int cmp_cand(const void *pa, const void *pb) {
    cand a = *(const cand *)pa, b = *(const cand *)pb;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

// min-heap on candidate order: the root is the candidate that comes last
static void sift_down(cand *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && before(h[m], h[l])) m = l;
        if (r < n && before(h[m], h[r])) m = r;
        if (m == i) return;
        cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void sift_up(cand *h, int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!before(h[p], h[i])) return;
        cand t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

// the `cap` first tokens in candidate order, sorted; returns how many (min(cap, V))
static int top_candidates(const float *w, int V, int cap, cand *out) {
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (n == cap && (i % VL) == 0 && i + VL <= V) {  // skip VL tokens at once when none beats the root
            vi beats = loadf(w + i) > (loadf(w + i) * 0.0f + out[0].w);
            int any = 0;
            for (int l = 0; l < VL; l++) any |= beats[l];
            if (!any) {
                i += VL - 1;
                continue;
            }
        }
        cand c = {w[i], i};
        if (n < cap) {
            out[n] = c;
            sift_up(out, n++);
        } else if (c.w > out[0].w) {  // equal weight, higher id: comes later than the root
            out[0] = c;
            sift_down(out, n, 0);
        }
    }
    qsort(out, n, sizeof(cand), cmp_cand);
    return n;
}

// the drawn index among c[0..n): nucleus by top_p * mass, then the draw at u
static int32_t draw(const cand *c, int n, double mass, float top_p, float u) {
    double limit = (double)top_p * mass, before_j = 0.0;
    int kept = 0;
    while (kept < n && before_j <= limit) before_j += c[kept++].w;
    double target = (double)u * before_j, run = 0.0;
    for (int j = 0; j < kept; j++) {
        run += c[j].w;
        if (run > target) return c[j].id;
    }
    return c[kept - 1].id;
}

// the smallest weight threshold (a power of two, or 0) such that the tokens at or above it number at
// least `count` (count > 0), or else weigh more than `mass`
static float threshold(const float *w, int V, double count, double mass) {
    double bin_mass[4][BINS] = {{0}};
    int bin_count[4][BINS] = {{0}};
    int i = 0;
    for (; i + 4 <= V; i += 4)  // four histograms: independent additions
        for (int c = 0; c < 4; c++) {
            uint32_t bits;
            __builtin_memcpy(&bits, w + i + c, 4);
            bin_mass[c][bits >> 23] += w[i + c];
            bin_count[c][bits >> 23]++;
        }
    for (; i < V; i++) {
        uint32_t bits;
        __builtin_memcpy(&bits, w + i, 4);
        bin_mass[0][bits >> 23] += w[i];
        bin_count[0][bits >> 23]++;
    }
    double run_mass = 0.0, run_count = 0.0;
    for (int e = BINS - 1; e > 0; e--) {
        for (int c = 0; c < 4; c++) run_mass += bin_mass[c][e], run_count += bin_count[c][e];
        if (count > 0 ? run_count >= count : run_mass > mass) {
            uint32_t bits = (uint32_t)e << 23;
            float t;
            __builtin_memcpy(&t, &bits, 4);
            return t;
        }
    }
    return 0.0f;
}

typedef struct {
    const float *logits;
    float *work;
    int V;
    const float *temperature, *top_p, *u;
    const int32_t *top_k;
    int64_t *out;
    int failed;
} sample_job;

static void sample_row(void *ctx, int r) {
    sample_job *job = ctx;
    int V = job->V;
    const float *x = job->logits + (int64_t)r * V;
    float *w = job->work + (int64_t)r * V;
    float inv_t = 1.0f / job->temperature[r], top_p = job->top_p[r], u = job->u[r];
    int K = job->top_k[r] > 0 && job->top_k[r] < V ? job->top_k[r] : V;

    float m = x[0];
    int i = 0;
    if (V >= VL) {
        vf vm = loadf(x);
        for (; i + VL <= V; i += VL) vm = vmaxv(vm, loadf(x + i));
        m = maxv(vm);
    }
    for (; i < V; i++) m = x[i] > m ? x[i] : m;
    i = 0;
    vf acc = {0};  // native width (vec.h): the total's rounding depends on it, each weight does not
    for (; i + VL <= V; i += VL) {
        vf e = expv((loadf(x + i) - m) * inv_t);
        storev(w + i, e);
        acc += e;
    }
    double total = sumv(acc);
    for (; i < V; i++) {
        float lane[VL] = {(x[i] - m) * inv_t};
        vf e = expv(loadf(lane));
        w[i] = e[0];
        total += w[i];
    }

    if (top_p >= 1.0f && K == V) {  // everything is kept: draw in id order
        double target = (double)u * total, run = 0.0;
        for (int j = 0; j < V; j++) {
            run += w[j];
            if (run > target) {
                job->out[r] = j;
                return;
            }
        }
        job->out[r] = V - 1;
        return;
    }
    if (K <= HEAP_MAX) {
        cand c[HEAP_MAX];
        int n = top_candidates(w, V, K, c);
        double mass = 0.0;
        for (int j = 0; j < n; j++) mass += c[j].w;
        job->out[r] = draw(c, n, mass, top_p, u);
        return;
    }
    // the candidates: every token at or above a threshold that keeps top_k tokens, or more than the
    // nucleus mass (with a margin for the rounding of the sums), sorted
    float t = K < V ? threshold(w, V, K, 0.0) : threshold(w, V, 0.0, (double)top_p * total * (1.0 + 1e-6));
    int n = 0;
    for (int j = 0; j < V; j++) n += w[j] >= t;
    cand *c = malloc(sizeof(cand) * (size_t)n);
    if (!c) {
        job->failed = 1;
        return;
    }
    n = 0;
    for (int j = 0; j < V; j++)
        if (w[j] >= t) c[n++] = (cand){w[j], j};
    qsort(c, n, sizeof(cand), cmp_cand);
    int keep = K < n ? K : n;
    double mass = total;
    if (K < V) {
        mass = 0.0;
        for (int j = 0; j < keep; j++) mass += c[j].w;
    }
    job->out[r] = draw(c, keep, mass, top_p, u);
    free(c);
}

// logits float32 [rows, V]; work float32 [rows, V] (scratch); per row: temperature > 0, top_p in
// (0, 1], top_k (0 = off), u in [0, 1); out: one token id per row. Returns 0, or 1 if out of memory.
int sample_rows_f32(int rows, int V, const float *logits, float *work, const float *temperature,
                    const float *top_p, const int32_t *top_k, const float *u, int64_t *out) {
    sample_job job = {logits, work, V, temperature, top_p, u, top_k, out, 0};
    pool_run(rows, sample_row, &job);
    return job.failed;
}

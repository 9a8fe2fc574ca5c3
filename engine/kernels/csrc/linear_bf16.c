// y[M, N] = x[M, K] @ W[N, K]^T with bfloat16 weights and activations, float32 sums (AVX-512 BF16).
//
// The --dtype bfloat16 mode: half the weight bytes of linear.c and twice its multiply rate
// (vdpbf16ps: 16 lanes x 2 products per instruction). W is packed like linear.c's panels, with the k
// axis in pairs: Wp[p][k/2][c][k%2] = bf16(W[64 p + c][k]) (uint16, zero padded to an even K), so one
// 64-byte load holds 16 columns x 2 consecutive k. Each x row is rounded to bfloat16 (nearest even)
// once per call. Every output is the same k-ordered sum of pairs whatever M is (batch-invariant).
// Without AVX-512 BF16 at build time, linear_bf16_supported() returns 0 and callers use torch.
#include <stdint.h>
#include <stdlib.h>

#include "common.h"
#include "kernels.h"
#include "pool.h"

int linear_bf16_supported(void) {
#ifdef __AVX512BF16__
    return 1;
#else
    return 0;
#endif
}

#ifdef __AVX512BF16__
#include <immintrin.h>

static inline uint32_t bf16_bits(float f) {  // round to nearest even (finite inputs)
    uint32_t u;
    __builtin_memcpy(&u, &f, 4);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline void store_cols(float *y, const __m512 *acc, int cols) {
    float tmp[PANEL];
    for (int j = 0; j < 4; j++) _mm512_storeu_ps(tmp + 16 * j, acc[j]);
    for (int c = 0; c < cols; c++) y[c] = tmp[c];
}

// ROWS rows of pair-packed x (uint32 per k pair) against one panel
#define ROW_BLOCK(ROWS)                                                                                   \
    static void rows##ROWS(int K2, const uint32_t *x, int64_t ldx, const uint16_t *panel, float *y,       \
                           int64_t ldy, int cols) {                                                       \
        __m512 acc[ROWS][4];                                                                              \
        for (int i = 0; i < ROWS; i++)                                                                    \
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();                                  \
        for (int k = 0; k < K2; k++) {                                                                    \
            const uint16_t *b = panel + (int64_t)k * 2 * PANEL;                                           \
            __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 32);     \
            __m512bh b2 = (__m512bh)_mm512_loadu_si512(b + 64), b3 = (__m512bh)_mm512_loadu_si512(b + 96); \
            for (int i = 0; i < ROWS; i++) {                                                              \
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)x[i * ldx + k]);                            \
                acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);                                           \
                acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);                                           \
                acc[i][2] = _mm512_dpbf16_ps(acc[i][2], a, b2);                                           \
                acc[i][3] = _mm512_dpbf16_ps(acc[i][3], a, b3);                                           \
            }                                                                                             \
        }                                                                                                 \
        for (int i = 0; i < ROWS; i++) store_cols(y + i * ldy, acc[i], cols);                             \
    }

ROW_BLOCK(1)
ROW_BLOCK(2)
ROW_BLOCK(3)
ROW_BLOCK(4)
ROW_BLOCK(5)
ROW_BLOCK(6)

struct bf16_job {
    int M, N, K2;
    const uint32_t *x;
    const uint16_t *Wp;
    float *y;
};

static void bf16_panel(void *ctx, int p) {
    const struct bf16_job *j = ctx;
    int M = j->M, N = j->N, K2 = j->K2;
    const uint16_t *panel = j->Wp + (int64_t)p * K2 * 2 * PANEL;
    FOR_PANEL_RUNS(p, N, PANEL, run, c0, cols) {  // one run: the whole panel
        int i = 0;
        for (; i + 6 <= M; i += 6) rows6(K2, j->x + (int64_t)i * K2, K2, panel, j->y + (int64_t)i * N + c0, N, cols);
        const uint32_t *xi = j->x + (int64_t)i * K2;
        float *yi = j->y + (int64_t)i * N + c0;
        switch (M - i) {
            case 5: rows5(K2, xi, K2, panel, yi, N, cols); break;
            case 4: rows4(K2, xi, K2, panel, yi, N, cols); break;
            case 3: rows3(K2, xi, K2, panel, yi, N, cols); break;
            case 2: rows2(K2, xi, K2, panel, yi, N, cols); break;
            case 1: rows1(K2, xi, K2, panel, yi, N, cols); break;
        }
    }
}
#endif

// Returns 0, 1 without AVX-512 BF16, 2 if out of memory.
int linear_packed_bf16(int M, int N, int K, const float *x, const uint16_t *Wp, float *y) {
#ifdef __AVX512BF16__
    int K2 = (K + 1) / 2;
    uint32_t *xp = malloc(sizeof(uint32_t) * (size_t)M * (size_t)K2);
    if (!xp) return 2;
    for (int64_t i = 0; i < M; i++)
        for (int k = 0; k < K2; k++) {
            uint32_t lo = bf16_bits(x[i * K + 2 * k]), hi = 2 * k + 1 < K ? bf16_bits(x[i * K + 2 * k + 1]) : 0;
            xp[i * K2 + k] = lo | hi << 16;
        }
    struct bf16_job job = {M, N, K2, xp, Wp, y};
    pool_run(NUM_PANELS(N), bf16_panel, &job);
    free(xp);
    return 0;
#else
    (void)M, (void)N, (void)K, (void)x, (void)Wp, (void)y;
    return 1;
#endif
}

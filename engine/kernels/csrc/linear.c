// y[M, N] = x[M, K] @ W[N, K]^T in float32, for the small M of decode steps (MKL's sgemm is slow there).
//
// W is pre-packed into panels of 64 output columns, each in strips of STRIP columns (strip.h: 64 with
// AVX-512, 16 with AVX2): Wp[p][s][k][c] = W[64 p + STRIP s + c][k] (zero padded), so each strip
// streams contiguously. Every output element is the plain k = 0..K-1 sum, one fused
// multiply-add per k, whatever M is and whatever the vector width: a sequence's result does not depend
// on what else is in the batch (batch-invariant), unlike a blocked BLAS whose order changes with M.
// Row-major contiguous float32 arrays.
// Parallel over panels (pool.c); a panel (K x 64 floats, 147 KB for K = 576) stays in L2 while all
// rows of x pass. Register blocking: strip.h.
#include <stdint.h>

#include "common.h"
#include "kernels.h"
#include "pool.h"
#include "strip.h"

// ROWS rows against one strip; LDB and ACCUMULATE are the parameters ldb and accumulate, or constants
// (STRIP, 0) for the matmuls' contiguous strips, which the compiler then folds in (a few % at 16 rows)
#define ROW_BLOCK(ROWS, NAME, LDB, ACCUMULATE)                                                             \
    static void NAME(int K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,  \
                     int cols, int accumulate) {                                                           \
        (void)ldb, (void)accumulate;                                                                       \
        vf acc[ROWS][NV];                                                                                  \
        for (int i = 0; i < ROWS; i++)                                                                     \
            for (int j = 0; j < NV; j++) acc[i][j] = (ACCUMULATE) ? loadf(C + i * ldc + VL * j) : (vf){0};\
        for (int k = 0; k < K; k++) {                                                                      \
            const float *b = B + (int64_t)k * (LDB);                                                       \
            vf bv[NV];                                                                                     \
            for (int j = 0; j < NV; j++) bv[j] = in_register(loadf(b + VL * j)); /* vec.h */               \
            for (int i = 0; i < ROWS; i++) {                                                               \
                float a = A[i * lda + k];                                                                  \
                for (int j = 0; j < NV; j++) acc[i][j] += a * bv[j];                                       \
            }                                                                                              \
        }                                                                                                  \
        for (int i = 0; i < ROWS; i++) {                                                                   \
            if (cols == STRIP)                                                                             \
                for (int j = 0; j < NV; j++) storev(C + i * ldc + VL * j, acc[i][j]);                      \
            else                                                                                           \
                store_strip(C + i * ldc, acc[i], cols);                                                    \
        }                                                                                                  \
    }
#define ROW_BLOCKS(ROWS) ROW_BLOCK(ROWS, rows##ROWS, STRIP, 0) ROW_BLOCK(ROWS, rows##ROWS##_any, ldb, accumulate)

ROW_BLOCKS(1)
ROW_BLOCKS(2)
ROW_BLOCKS(3)
ROW_BLOCKS(4)
ROW_BLOCKS(5)
ROW_BLOCKS(6)

typedef void (*rows_fn)(int, const float *, int64_t, const float *, int64_t, float *, int64_t, int, int);
static const rows_fn ROWS_FN[2][7] = {{0, rows1, rows2, rows3, rows4, rows5, rows6},
                                      {0, rows1_any, rows2_any, rows3_any, rows4_any, rows5_any, rows6_any}};

// M rows in ceil(M / 6) passes of as even a size as possible (16 = 6 + 5 + 5, not 6 + 6 + 4): a pass of
// fewer than 5 rows has too few independent accumulators to hide the fused multiply-add latency
void strip_rows(int M, int K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                int cols, int accumulate) {
    const rows_fn *fn = ROWS_FN[ldb != STRIP || accumulate];
    int passes = (M + MAX_ROWS_F32 - 1) / MAX_ROWS_F32;
    for (int i = 0, p = 0; p < passes; p++) {
        int r = (M - i) / (passes - p) + ((M - i) % (passes - p) != 0);
        fn[r](K, A + (int64_t)i * lda, lda, B, ldb, C + (int64_t)i * ldc, ldc, cols, accumulate);
        i += r;
    }
}

struct linear_job {
    int M, N, K;
    const float *x, *Wp;
    float *y;
};

static void f32_panel(void *ctx, int p) {
    const struct linear_job *j = ctx;
    const float *panel = j->Wp + (int64_t)p * j->K * PANEL;
    FOR_PANEL_RUNS(p, j->N, STRIP, s, c0, cols)
        strip_rows(j->M, j->K, j->x, j->K, panel + (int64_t)s * j->K * STRIP, STRIP, j->y + c0, j->N, cols, 0);
}

int linear_strip_width(void) { return STRIP; }

int linear_packed_f32(int M, int N, int K, const float *x, const float *Wp, float *y) {
    struct linear_job job = {M, N, K, x, Wp, y};
    pool_run(NUM_PANELS(N), f32_panel, &job);
    return 0;
}

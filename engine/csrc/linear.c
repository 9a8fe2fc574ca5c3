// y[M, N] = x[M, K] @ W[N, K]^T in float32, for the small M of decode steps (MKL's sgemm is slow there).
//
// W is pre-packed into panels of 64 output columns: Wp[p][k][c] = W[64 p + c][k] (zero padded), so a
// panel streams contiguously and each k step is 4 vector loads feeding 4 x 4 fused multiply-adds.
// Every output element is the plain k = 0..K-1 sum, one fused multiply-add per k, whatever M is: a
// sequence's result does not depend on what else is in the batch (batch-invariant), unlike a blocked
// BLAS whose order changes with M. Row-major contiguous float32 arrays.
// Parallel over panels (engine/csrc/pool.c); a panel (K x 64 floats, 147 KB for K = 576) stays in L2
// while all rows of x pass,
// 6 rows at a time.
#include <stdint.h>

#include "pool.h"
#include "vec.h"

#define PANEL 64

static inline void store_cols(float *y, const v16 *acc, int cols) {
    float tmp[PANEL];
    __builtin_memcpy(tmp, acc, sizeof tmp);
    for (int c = 0; c < cols; c++) y[c] = tmp[c];
}

// ROWS rows of x (compile-time constant, so the accumulators live in registers) against one panel
#define ROW_BLOCK(ROWS)                                                                                 \
    static void rows##ROWS(int K, const float *x, int64_t ldx, const float *panel, float *y, int64_t ldy, \
                           int cols) {                                                                  \
        v16 acc[ROWS][4];                                                                               \
        for (int i = 0; i < ROWS; i++)                                                                  \
            for (int j = 0; j < 4; j++) acc[i][j] = (v16){0};                                           \
        for (int k = 0; k < K; k++) {                                                                   \
            const float *b = panel + (int64_t)k * PANEL;                                                \
            v16 b0 = load16(b), b1 = load16(b + 16), b2 = load16(b + 32), b3 = load16(b + 48);          \
            for (int i = 0; i < ROWS; i++) {                                                            \
                float a = x[i * ldx + k];                                                               \
                acc[i][0] += a * b0;                                                                    \
                acc[i][1] += a * b1;                                                                    \
                acc[i][2] += a * b2;                                                                    \
                acc[i][3] += a * b3;                                                                    \
            }                                                                                           \
        }                                                                                               \
        for (int i = 0; i < ROWS; i++) store_cols(y + i * ldy, acc[i], cols);                           \
    }

ROW_BLOCK(1)
ROW_BLOCK(2)
ROW_BLOCK(3)
ROW_BLOCK(4)
ROW_BLOCK(5)
ROW_BLOCK(6)

struct linear_job {
    int M, N, K;
    const float *x, *Wp;
    float *y;
};

static void one_panel(void *ctx, int p) {
    const struct linear_job *j = ctx;
    int M = j->M, N = j->N, K = j->K;
    const float *panel = j->Wp + (int64_t)p * K * PANEL;
    int cols = N - p * PANEL < PANEL ? N - p * PANEL : PANEL;
    int i = 0;
    // 6 rows x 64 columns: 24 accumulators + 4 panel vectors fit the 32 vector registers
    for (; i + 6 <= M; i += 6) rows6(K, j->x + (int64_t)i * K, K, panel, j->y + (int64_t)i * N + p * PANEL, N, cols);
    const float *xi = j->x + (int64_t)i * K;
    float *yi = j->y + (int64_t)i * N + p * PANEL;
    switch (M - i) {
        case 5: rows5(K, xi, K, panel, yi, N, cols); break;
        case 4: rows4(K, xi, K, panel, yi, N, cols); break;
        case 3: rows3(K, xi, K, panel, yi, N, cols); break;
        case 2: rows2(K, xi, K, panel, yi, N, cols); break;
        case 1: rows1(K, xi, K, panel, yi, N, cols); break;
    }
}

int linear_packed_f32(int M, int N, int K, const float *x, const float *Wp, float *y) {
    struct linear_job job = {M, N, K, x, Wp, y};
    pool_run((N + PANEL - 1) / PANEL, one_panel, &job);
    return 0;
}

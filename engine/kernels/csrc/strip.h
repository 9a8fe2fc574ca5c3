// Register blocking shared by the matmul kernels (linear.c, linear_grid.c; chunk_attention.c's products):
// a panel of PANEL (common.h) output columns is computed in strips of NV native vectors (vec.h), a few
// rows of x at a time, so that the accumulators (rows x NV vectors) and the panel's vectors fit the
// register file: 32 registers with AVX-512 (one strip of 64 columns, up to 6 rows: 24 accumulators), 16
// with AVX2 (four strips of 16 columns, up to 6 rows: 12 accumulators, 2 panel vectors and a broadcast).
#pragma once
#include <stdint.h>

#include "common.h"
#include "vec.h"

#if VL == 16
#define NV 4
#else
#define NV 2
#endif
#define STRIP (NV * VL)
#define MAX_ROWS_F32 6

static inline void store_strip(float *y, const vf *acc, int cols) {
    float tmp[STRIP];
    __builtin_memcpy(tmp, acc, sizeof tmp);
    for (int c = 0; c < cols; c++) y[c] = tmp[c];
}

// C[i][c] (+)= sum_k A[i * lda + k] * B[k * ldb + c] for rows i < M and the strip's first `cols` columns
// (c < cols <= STRIP; B: row k at B + k * ldb, its first STRIP floats read), each output the plain
// k-ordered sum of fused multiply-adds, accumulating onto C when `accumulate` (defined in linear.c)
void strip_rows(int M, int K, const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                int cols, int accumulate);

// y[M, N] = x[M, K] @ W[N, K]^T in float32, for the small M of decode steps (MKL's sgemm is slow there).
//
// Every output element is computed the same way whatever M is: 16 partial sums over k (lane j takes
// k = j, j+16, ...), then added lane by lane in a fixed order. So a sequence's result does not depend
// on what else is in the batch (batch-invariant), unlike a blocked BLAS whose order changes with M.
// Row-major contiguous float32 arrays. K must be a multiple of 16 (engine/linear.py checks).
// Parallel over blocks of 4 weight rows; each block (4 x K floats) stays in L1 while all rows of x pass.
#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) {
    v16 v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

// pairwise tree in a fixed order (lanes i and i+8, then i and i+4, ...): a few vector adds, not 15 scalar ones
static inline float sum16(v16 v) {
    v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

// full 4 x 4 block: constant bounds, so the 16 accumulators live in registers
static void block4(int K, int N, const float *x, const float *W, float *y, int i0, int j0) {
    const float *w0 = W + (int64_t)j0 * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
    const float *x0 = x + (int64_t)i0 * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
    v16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
    v16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
    for (int k = 0; k < K; k += 16) {
        v16 b0 = load16(w0 + k), b1 = load16(w1 + k), b2 = load16(w2 + k), b3 = load16(w3 + k);
        v16 c = load16(x0 + k);
        a00 += c * b0; a01 += c * b1; a02 += c * b2; a03 += c * b3;
        c = load16(x1 + k);
        a10 += c * b0; a11 += c * b1; a12 += c * b2; a13 += c * b3;
        c = load16(x2 + k);
        a20 += c * b0; a21 += c * b1; a22 += c * b2; a23 += c * b3;
        c = load16(x3 + k);
        a30 += c * b0; a31 += c * b1; a32 += c * b2; a33 += c * b3;
    }
    float *y0 = y + (int64_t)i0 * N + j0, *y1 = y0 + N, *y2 = y1 + N, *y3 = y2 + N;
    y0[0] = sum16(a00); y0[1] = sum16(a01); y0[2] = sum16(a02); y0[3] = sum16(a03);
    y1[0] = sum16(a10); y1[1] = sum16(a11); y1[2] = sum16(a12); y1[3] = sum16(a13);
    y2[0] = sum16(a20); y2[1] = sum16(a21); y2[2] = sum16(a22); y2[3] = sum16(a23);
    y3[0] = sum16(a30); y3[1] = sum16(a31); y3[2] = sum16(a32); y3[3] = sum16(a33);
}

// rows i0..i0+mi of x against weight rows j0..j0+nj (mi, nj <= 4); same per-element order as block4
static void block(int K, int N, const float *x, const float *W, float *y, int i0, int mi, int j0, int nj) {
    v16 acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = (v16){0};
    for (int k = 0; k < K; k += 16) {
        v16 w[4];
        for (int j = 0; j < nj; j++) w[j] = load16(W + (int64_t)(j0 + j) * K + k);
        for (int i = 0; i < mi; i++) {
            v16 xi = load16(x + (int64_t)(i0 + i) * K + k);
            for (int j = 0; j < nj; j++) acc[i][j] += xi * w[j];
        }
    }
    for (int i = 0; i < mi; i++)
        for (int j = 0; j < nj; j++) y[(int64_t)(i0 + i) * N + j0 + j] = sum16(acc[i][j]);
}

int linear_f32(int M, int N, int K, const float *x, const float *W, float *y) {
    if (K % 16) return 1;
#pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < N; j0 += 4) {
        int nj = N - j0 < 4 ? N - j0 : 4;
        for (int i0 = 0; i0 < M; i0 += 4) {
            if (nj == 4 && M - i0 >= 4)
                block4(K, N, x, W, y, i0, j0);
            else
                block(K, N, x, W, y, i0, M - i0 < 4 ? M - i0 : 4, j0, nj);
        }
    }
    return 0;
}

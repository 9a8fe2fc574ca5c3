// y[M, N] = x[M, K] @ W[N, K]^T for float32 weights that lie exactly on a GGUF quantization grid,
// read from their 5- or 8.5-bit codes: the same result, bit for bit, as linear.c on the float32 W.
//
// Q4_1 (decoder layers of a Q4_1 GGUF): per block of 32 consecutive k of one output column,
// W = q * d + m with q in 0..15 and d, m float16; that is the float32 value GGUF's dequantizer
// produced (q * d is exact, so fused or not it is one rounding). Q8_0 (its embeddings / LM head):
// W = q * d, q in -127..127 (exact). Each weight is rebuilt in registers, then every output is the plain
// k-ordered sum of one fused multiply-add per k, as linear.c computes it: so this kernel and linear.c
// are interchangeable for any M, and both are batch-invariant.
//
// Why: a decode step reads every weight once; these codes are 6.4x (Q4_1) and 3.8x (Q8_0) fewer
// bytes than float32, and at a few rows the step is bound by those bytes, not by arithmetic. Up to
// MAX_ROWS rows the weights are rebuilt in registers for each pass of rows; beyond, each strip of a
// panel is rebuilt once into a per-thread float32 scratch (in L2) that linear.c's row kernels then
// read for all rows, so a prefill chunk pays the rebuild once per weight, not once per row.
//
// Panels of 64 output columns (engine/kernels/grid.py packs them), K a multiple of 32, per block b:
//   Q4_1: d[64] f16, m[64] f16, then 32 k rows of 32 bytes: byte j = q[col j] | q[col j + 32] << 4
//                                                                                    1280 bytes
//   Q8_0: d[64] f16, then 32 k rows of 64 int8 (column order)                       2176 bytes
#include <stdint.h>
#include <stdlib.h>

#include "common.h"
#include "kernels.h"
#include "pool.h"
#include "strip.h"

#if VL == 16
#define MAX_ROWS 4  // rows rebuilt in registers: accumulators + rebuilt weights fit the register file
#elif VL == 8
#define MAX_ROWS 2
#else
#define MAX_ROWS 1
#endif

// the weights of VL columns c0.. at one k, from that k's code row (column c: byte c % 32, nibble c / 32)
static inline vf q4_weights(const uint8_t *row, int c0, vf d, vf m) {
    vi q = load_u8(row + c0 % 32);
    q = c0 < 32 ? q & 15 : q >> 4;
    return in_register(__builtin_convertvector(q, vf) * d + m);  // exactly the model's float32 weights
}

static inline vf q8_weights(const uint8_t *row, int c0, vf d) {
    return in_register(__builtin_convertvector(load_s8(row + c0), vf) * d);  // (vec.h: not reassociated)
}

static inline void store_cols(float *y, const vf *acc, int nvec, int cols) {
    float tmp[PANEL];
    __builtin_memcpy(tmp, acc, sizeof(vf) * (size_t)nvec);
    for (int c = 0; c < cols; c++) y[c] = tmp[c];
}

// ROWS rows of x against NVEC vectors of columns C0.. of a panel (all three compile-time constants, so
// that which nibble a vector takes is known when compiling). Each accumulator is its own chain of
// dependent fused multiply-adds: ROWS x NVEC >= ~8 hides their latency. The block's scales go to a
// small array each block and are read from there (L1), leaving the registers to the accumulators.
#define ROW_BLOCK(ROWS, NVEC, C0)                                                                          \
    static void q4_rows##ROWS##_##C0(int K, const float *x, int64_t ldx, const uint8_t *panel, float *y,     \
                                     int64_t ldy, int cols) {                                                \
        vf acc[ROWS][NVEC];                                                                                  \
        float scales[2][NVEC * VL];                                                                          \
        for (int i = 0; i < ROWS; i++)                                                                       \
            for (int j = 0; j < NVEC; j++) acc[i][j] = (vf){0};                                              \
        for (int b = 0; b < K / BLOCK; b++) {                                                                \
            const uint8_t *blk = panel + (int64_t)b * Q4_PANEL_BYTES;                                        \
            for (int j = 0; j < NVEC; j++) {                                                                 \
                storev(scales[0] + VL * j, load_halves((const uint16_t *)blk + C0 + VL * j));                \
                storev(scales[1] + VL * j, load_halves((const uint16_t *)blk + PANEL + C0 + VL * j));        \
            }                                                                                                \
            const uint8_t *codes = blk + 4 * PANEL;                                                          \
            for (int kk = 0; kk < BLOCK; kk++) {                                                             \
                vf w[NVEC];                                                                                  \
                for (int j = 0; j < NVEC; j++)                                                               \
                    w[j] = q4_weights(codes + kk * PANEL / 2, C0 + VL * j, loadf(scales[0] + VL * j),        \
                                      loadf(scales[1] + VL * j));                                            \
                int64_t k = (int64_t)b * BLOCK + kk;                                                         \
                for (int i = 0; i < ROWS; i++) {                                                             \
                    float a = x[i * ldx + k];                                                                \
                    for (int j = 0; j < NVEC; j++) acc[i][j] += a * w[j];                                    \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < ROWS; i++) store_cols(y + i * ldy, acc[i], NVEC, cols);                          \
    }                                                                                                        \
    static void q8_rows##ROWS##_##C0(int K, const float *x, int64_t ldx, const uint8_t *panel, float *y,     \
                                     int64_t ldy, int cols) {                                                \
        vf acc[ROWS][NVEC];                                                                                  \
        float scales[NVEC * VL];                                                                             \
        for (int i = 0; i < ROWS; i++)                                                                       \
            for (int j = 0; j < NVEC; j++) acc[i][j] = (vf){0};                                              \
        for (int b = 0; b < K / BLOCK; b++) {                                                                \
            const uint8_t *blk = panel + (int64_t)b * Q8_PANEL_BYTES;                                        \
            for (int j = 0; j < NVEC; j++)                                                                   \
                storev(scales + VL * j, load_halves((const uint16_t *)blk + C0 + VL * j));                   \
            const uint8_t *codes = blk + 2 * PANEL;                                                          \
            for (int kk = 0; kk < BLOCK; kk++) {                                                             \
                vf w[NVEC];                                                                                  \
                for (int j = 0; j < NVEC; j++)                                                               \
                    w[j] = q8_weights(codes + kk * PANEL, C0 + VL * j, loadf(scales + VL * j));              \
                int64_t k = (int64_t)b * BLOCK + kk;                                                         \
                for (int i = 0; i < ROWS; i++) {                                                             \
                    float a = x[i * ldx + k];                                                                \
                    for (int j = 0; j < NVEC; j++) acc[i][j] += a * w[j];                                    \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < ROWS; i++) store_cols(y + i * ldy, acc[i], NVEC, cols);                          \
    }

typedef void (*rows_fn)(int, const float *, int64_t, const uint8_t *, float *, int64_t, int);
struct calls {
    int width;  // columns per call
    rows_fn q4[2], q8[2];  // calls covering the panel, left to right
};

// Per number of rows: the calls that cover a panel. AVX-512: 4 vectors (the panel) for 1-4 rows;
// AVX2: one row over the panel's 8 vectors, 2 rows over 4 vectors (two calls); SSE: 1 row, 8 vectors.
#if VL == 16
ROW_BLOCK(1, 4, 0)
ROW_BLOCK(2, 4, 0)
ROW_BLOCK(3, 4, 0)
ROW_BLOCK(4, 4, 0)
static const struct calls CALLS[MAX_ROWS + 1] = {
    {0}, {64, {q4_rows1_0}, {q8_rows1_0}}, {64, {q4_rows2_0}, {q8_rows2_0}}, {64, {q4_rows3_0}, {q8_rows3_0}},
    {64, {q4_rows4_0}, {q8_rows4_0}}};
#elif VL == 8
ROW_BLOCK(1, 8, 0)
ROW_BLOCK(2, 4, 0)
ROW_BLOCK(2, 4, 32)
static const struct calls CALLS[MAX_ROWS + 1] = {
    {0}, {64, {q4_rows1_0}, {q8_rows1_0}}, {32, {q4_rows2_0, q4_rows2_32}, {q8_rows2_0, q8_rows2_32}}};
#else
ROW_BLOCK(1, 8, 0)
ROW_BLOCK(1, 8, 32)
static const struct calls CALLS[MAX_ROWS + 1] = {{0}, {32, {q4_rows1_0, q4_rows1_32}, {q8_rows1_0, q8_rows1_32}}};
#endif

// the strip's weights (columns s0.. of the panel) as float32 [K, STRIP], what linear.c's panels hold
static void rebuild_strip(int format, int K, const uint8_t *panel, int s0, float *out) {
    for (int b = 0; b < K / BLOCK; b++) {
        const uint8_t *blk = panel + (int64_t)b * (format == GRID_Q4_1 ? Q4_PANEL_BYTES : Q8_PANEL_BYTES);
        for (int j = 0; j < NV; j++) {
            vf d = load_halves((const uint16_t *)blk + s0 + VL * j);
            vf m = format == GRID_Q4_1 ? load_halves((const uint16_t *)blk + PANEL + s0 + VL * j) : (vf){0};
            for (int kk = 0; kk < BLOCK; kk++) {
                vf w = format == GRID_Q4_1 ? q4_weights(blk + 4 * PANEL + kk * PANEL / 2, s0 + VL * j, d, m)
                                           : q8_weights(blk + 2 * PANEL + kk * PANEL, s0 + VL * j, d);
                __builtin_memcpy(out + ((int64_t)b * BLOCK + kk) * STRIP + VL * j, &w, sizeof w);
            }
        }
    }
}

static __thread struct scratch strip_scratch;  // per pool thread: one rebuilt strip

struct grid_job {
    int format, M, N, K;
    int64_t panel_bytes;
    const float *x;
    const uint8_t *Wp;
    float *y;
    int failed;  // set (racy but only ever to 1) when a scratch allocation failed
};

static void grid_panel(void *ctx, int p) {
    struct grid_job *j = ctx;
    const uint8_t *panel = j->Wp + (int64_t)p * j->panel_bytes;
    if (j->M <= MAX_ROWS) {  // weights rebuilt in registers, for each call
        const struct calls *c = &CALLS[j->M];
        FOR_PANEL_RUNS(p, j->N, c->width, i, c0, cols)
            (j->format == GRID_Q4_1 ? c->q4 : c->q8)[i](j->K, j->x, j->K, panel, j->y + c0, j->N, cols);
        return;
    }
    if (reserve(&strip_scratch, sizeof(float) * (size_t)j->K * STRIP)) {  // else: each strip rebuilt once into it
        j->failed = 1;
        return;
    }
    float *scratch = strip_scratch.data;
    FOR_PANEL_RUNS(p, j->N, STRIP, s, c0, cols) {
        rebuild_strip(j->format, j->K, panel, s * STRIP, scratch);
        strip_rows(j->M, j->K, j->x, j->K, scratch, STRIP, j->y + c0, j->N, cols, 0);
    }
}

// format: GRID_Q4_1 or GRID_Q8_0. Returns 0; 1 when K is not a multiple of 32; 2 when out of memory.
int linear_grid_f32(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y) {
    if (K % BLOCK) return 1;
    int64_t block_bytes = format == GRID_Q4_1 ? Q4_PANEL_BYTES : Q8_PANEL_BYTES;
    struct grid_job job = {format, M, N, K, block_bytes * (K / BLOCK), x, Wp, y, 0};
    pool_run(NUM_PANELS(N), grid_panel, &job);
    return job.failed ? 2 : 0;
}

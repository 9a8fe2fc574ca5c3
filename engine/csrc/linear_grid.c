// y[M, N] = x[M, K] @ W[N, K]^T for float32 weights that lie exactly on a GGUF quantization grid,
// read from their 4.5- or 8.5-bit codes: the same result, bit for bit, as linear.c on the float32 W.
//
// Q4_1 (decoder layers of a Q4_1 GGUF): per block of 32 consecutive k of one output column,
// W = q * d + m with q in 0..15 and d, m float16; that is the float32 value GGUF's dequantizer
// produced (q * d is exact, so fused or not it is one rounding). Q8_0 (its embeddings / LM head):
// W = q * d, q in -127..127 (exact). Each weight is rebuilt in registers, then every output is the plain
// k-ordered sum of one fused multiply-add per k, as linear.c computes it: so this kernel and linear.c
// are interchangeable for any M (engine/linear.py picks by M), and both are batch-invariant.
//
// Why: a decode step reads every weight once; these codes are 5.1x (Q4_1) and 3.8x (Q8_0) fewer
// bytes than float32, and at a few rows the step is bound by those bytes, not by arithmetic. Up to
// MAX_ROWS rows the weights are rebuilt in registers for each pass of rows; beyond, each strip of a
// panel is rebuilt once into a per-thread float32 scratch (in L2) that linear.c's row kernels then
// read for all rows, so a prefill chunk pays the rebuild once per weight, not once per row.
//
// Panels of 64 output columns (engine/grid_weights.py packs them), K a multiple of 32, per block b:
//   Q4_1: d[64] f16, m[64] f16, then 32 k rows of 32 bytes: byte j = q[col j] | q[col j + 32] << 4
//                                                                                    1280 bytes
//   Q8_0: d[64] f16, then 32 k rows of 64 int8 (column order)                       2176 bytes
#include <stdint.h>
#include <stdlib.h>

#include "pool.h"
#include "strip.h"

#define BLOCK 32
#define Q4_BLOCK_BYTES (2 * PANEL * 2 + BLOCK * PANEL / 2)
#define Q8_BLOCK_BYTES (PANEL * 2 + BLOCK * PANEL)
#if VL == 16
#define MAX_ROWS 4  // rows rebuilt in registers: accumulators + rebuilt weights fit the register file
#else
#define MAX_ROWS 2
#endif

#if VL >= 8
#include <immintrin.h>
#endif

// VL bytes widened to int32 lanes (zero- or sign-extended): one vpmovzxbd / vpmovsxbd
static inline vi load_u8(const uint8_t *p) {
#if VL == 16
    return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif VL == 8
    return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vu8 b;
    __builtin_memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vi);
#endif
}

static inline vi load_s8(const uint8_t *p) {
#if VL == 16
    return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif VL == 8
    return (vi)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vs8 b;
    __builtin_memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vi);
#endif
}

static inline vf load_f16(const uint16_t *p) {  // VL float16 -> float32 (exact)
#if VL == 16
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif VL == 8 && defined(__F16C__)
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    vf v;
    for (int i = 0; i < VL; i++) {
        _Float16 h;
        __builtin_memcpy(&h, p + i, 2);
        v[i] = (float)h;
    }
    return v;
#endif
}

// the weights of VL columns c0.. of a strip at one k, from that k's code row
static inline vf q4_weights(const uint8_t *row, int c0, vf d, vf m) {
    vi q = load_u8(row + c0 % 32);  // column c: byte c % 32, nibble c / 32
    q = c0 < 32 ? q & 15 : q >> 4;
    return __builtin_convertvector(q, vf) * d + m;
}

static inline vf q8_weights(const uint8_t *row, int c0, vf d) {
    return __builtin_convertvector(load_s8(row + c0), vf) * d;
}

static inline void store_cols(float *y, const vf *acc, int nvec, int cols) {
    float tmp[PANEL];
    __builtin_memcpy(tmp, acc, sizeof(vf) * (size_t)nvec);
    for (int c = 0; c < cols; c++) y[c] = tmp[c];
}

// ROWS rows of x against NVEC vectors of columns c0.. of a panel (compile-time constants). Each
// accumulator is its own chain of dependent fused multiply-adds, so ROWS x NVEC must be >= ~8 to
// hide their latency: one row takes the whole panel (64 columns), more rows fewer columns.
#define ROW_BLOCK(ROWS, NVEC)                                                                              \
    static void q4_rows##ROWS(int K, const float *x, int64_t ldx, const uint8_t *panel, int c0, float *y,    \
                              int64_t ldy, int cols) {                                                       \
        vf acc[ROWS][NVEC], d[NVEC], m[NVEC];                                                                \
        for (int i = 0; i < ROWS; i++)                                                                       \
            for (int j = 0; j < NVEC; j++) acc[i][j] = (vf){0};                                              \
        for (int b = 0; b < K / BLOCK; b++) {                                                                \
            const uint8_t *blk = panel + (int64_t)b * Q4_BLOCK_BYTES;                                        \
            for (int j = 0; j < NVEC; j++) {                                                                 \
                d[j] = load_f16((const uint16_t *)blk + c0 + VL * j);                                        \
                m[j] = load_f16((const uint16_t *)blk + PANEL + c0 + VL * j);                                \
            }                                                                                                \
            const uint8_t *codes = blk + 4 * PANEL;                                                          \
            for (int kk = 0; kk < BLOCK; kk++) {                                                             \
                vf w[NVEC];                                                                                  \
                for (int j = 0; j < NVEC; j++) w[j] = q4_weights(codes + kk * PANEL / 2, c0 + VL * j, d[j], m[j]); \
                int64_t k = (int64_t)b * BLOCK + kk;                                                         \
                for (int i = 0; i < ROWS; i++) {                                                             \
                    float a = x[i * ldx + k];                                                                \
                    for (int j = 0; j < NVEC; j++) acc[i][j] += a * w[j];                                    \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < ROWS; i++) store_cols(y + i * ldy, acc[i], NVEC, cols);                          \
    }                                                                                                        \
    static void q8_rows##ROWS(int K, const float *x, int64_t ldx, const uint8_t *panel, int c0, float *y,    \
                              int64_t ldy, int cols) {                                                       \
        vf acc[ROWS][NVEC], d[NVEC];                                                                         \
        for (int i = 0; i < ROWS; i++)                                                                       \
            for (int j = 0; j < NVEC; j++) acc[i][j] = (vf){0};                                              \
        for (int b = 0; b < K / BLOCK; b++) {                                                                \
            const uint8_t *blk = panel + (int64_t)b * Q8_BLOCK_BYTES;                                        \
            for (int j = 0; j < NVEC; j++) d[j] = load_f16((const uint16_t *)blk + c0 + VL * j);             \
            const uint8_t *codes = blk + 2 * PANEL;                                                          \
            for (int kk = 0; kk < BLOCK; kk++) {                                                             \
                vf w[NVEC];                                                                                  \
                for (int j = 0; j < NVEC; j++) w[j] = q8_weights(codes + kk * PANEL, c0 + VL * j, d[j]);     \
                int64_t k = (int64_t)b * BLOCK + kk;                                                         \
                for (int i = 0; i < ROWS; i++) {                                                             \
                    float a = x[i * ldx + k];                                                                \
                    for (int j = 0; j < NVEC; j++) acc[i][j] += a * w[j];                                    \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < ROWS; i++) store_cols(y + i * ldy, acc[i], NVEC, cols);                          \
    }

// (rows, vectors of columns per call): one row spans the panel; AVX-512 keeps 4 vectors for up to 4
// rows, AVX2 takes 2 rows over 4 vectors (half a panel)
ROW_BLOCK(1, PANEL / VL)
#if MAX_ROWS == 4
ROW_BLOCK(2, 4)
ROW_BLOCK(3, 4)
ROW_BLOCK(4, 4)
static const int COLS_PER_CALL[MAX_ROWS + 1] = {0, PANEL, 4 * VL, 4 * VL, 4 * VL};
#else
ROW_BLOCK(2, 4)
static const int COLS_PER_CALL[MAX_ROWS + 1] = {0, PANEL, 4 * VL};
#endif

typedef void (*rows_fn)(int, const float *, int64_t, const uint8_t *, int, float *, int64_t, int);
#if MAX_ROWS == 4
static const rows_fn Q4_ROWS[MAX_ROWS + 1] = {0, q4_rows1, q4_rows2, q4_rows3, q4_rows4};
static const rows_fn Q8_ROWS[MAX_ROWS + 1] = {0, q8_rows1, q8_rows2, q8_rows3, q8_rows4};
#else
static const rows_fn Q4_ROWS[MAX_ROWS + 1] = {0, q4_rows1, q4_rows2};
static const rows_fn Q8_ROWS[MAX_ROWS + 1] = {0, q8_rows1, q8_rows2};
#endif

// the strip's weights (columns s0.. of the panel) as float32 [K, STRIP], what linear.c's panels hold
static void rebuild_strip(int format, int K, const uint8_t *panel, int s0, float *out) {
    for (int b = 0; b < K / BLOCK; b++) {
        const uint8_t *blk = panel + (int64_t)b * (format == 0 ? Q4_BLOCK_BYTES : Q8_BLOCK_BYTES);
        for (int j = 0; j < NV; j++) {
            vf d = load_f16((const uint16_t *)blk + s0 + VL * j);
            vf m = format == 0 ? load_f16((const uint16_t *)blk + PANEL + s0 + VL * j) : (vf){0};
            for (int kk = 0; kk < BLOCK; kk++) {
                vf w = format == 0 ? q4_weights(blk + 4 * PANEL + kk * PANEL / 2, s0 + VL * j, d, m)
                                   : q8_weights(blk + 2 * PANEL + kk * PANEL, s0 + VL * j, d);
                __builtin_memcpy(out + ((int64_t)b * BLOCK + kk) * STRIP + VL * j, &w, sizeof w);
            }
        }
    }
}

static __thread float *scratch;  // per pool thread: one rebuilt strip
static __thread int64_t scratch_floats;

struct grid_job {
    int format, M, N, K;
    int64_t panel_bytes;
    const float *x;
    const uint8_t *Wp;
    float *y;
    int failed;  // set (racy but only ever to 1) when a scratch allocation failed
};

static void one_panel(void *ctx, int p) {
    struct grid_job *j = ctx;
    const uint8_t *panel = j->Wp + (int64_t)p * j->panel_bytes;
    if (j->M <= MAX_ROWS) {  // weights rebuilt in registers, for each call
        int width = COLS_PER_CALL[j->M];
        for (int c = 0; c < PANEL; c += width) {
            int c0 = p * PANEL + c, cols = j->N - c0 < width ? j->N - c0 : width;
            if (cols <= 0) break;
            (j->format == 0 ? Q4_ROWS : Q8_ROWS)[j->M](j->K, j->x, j->K, panel, c, j->y + c0, j->N, cols);
        }
        return;
    }
    int64_t need = (int64_t)j->K * STRIP;  // else: each strip rebuilt once into the scratch
    if (scratch_floats < need) {
        free(scratch);
        scratch = malloc(sizeof(float) * (size_t)need);
        scratch_floats = scratch ? need : 0;
        if (!scratch) {
            j->failed = 1;
            return;
        }
    }
    for (int s = 0; s < PANEL / STRIP; s++) {
        int c0 = p * PANEL + s * STRIP, cols = j->N - c0 < STRIP ? j->N - c0 : STRIP;
        if (cols <= 0) break;
        rebuild_strip(j->format, j->K, panel, s * STRIP, scratch);
        strip_rows_f32(j->M, j->K, j->x, scratch, j->y + c0, j->N, cols);
    }
}

// format: 0 = Q4_1, 1 = Q8_0. Returns 0; 1 when K is not a multiple of 32; 2 when out of memory.
int linear_grid_f32(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y) {
    if (K % BLOCK) return 1;
    int64_t block_bytes = format == 0 ? Q4_BLOCK_BYTES : Q8_BLOCK_BYTES;
    struct grid_job job = {format, M, N, K, block_bytes * (K / BLOCK), x, Wp, y, 0};
    pool_run((N + PANEL - 1) / PANEL, one_panel, &job);
    return job.failed ? 2 : 0;
}

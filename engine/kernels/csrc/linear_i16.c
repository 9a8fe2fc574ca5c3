// y[M, N] = x[M, K] @ W[N, K]^T for weights kept as GGUF Q4_1 / Q8_0 / Q5 codes (as linear_grid.c), with the
// activations rounded to int16 per block of 32 inputs: integer dot products instead of rebuilding each
// weight as a float.
//
// Per row and block b of 32 k: s = amax|x| / 32767, v[k] = round(x[k] / s) (|v| <= 32767, ~16 bits;
// the weights stay exact). Per output c, with the block's codes q, scale d and (Q4_1, Q5_1) minimum m:
//   dot = sum_k v[k] q[c][k]                   exact in int32 (vpmaddwd: 2 products per lane)
//   acc = fma(float(dot), d * s, acc)          then, Q4_1, Q5_1:  acc = fma(m, sum_k x[k], acc)
// in block order, starting from 0. Each output depends only on its own row's inputs, with the same
// operations whatever M is: batch-invariant. Not bit-identical to the float32 kernels (the rounding of
// x changes the sums by ~2^-16 relative); bench/agreement.py measures what that does to answers.
//
// Why: linear_grid.c spends 5 vector operations per 8 weights (widen, mask, convert, fma to rebuild the
// weight, fma to use it), and that, not the bytes, bounds a decode step there. Here a vector of codes,
// widened once to int16, serves 2 k of VL columns in one vpmaddwd: ~1.5 operations per 8 weights at 1
// row, and, for many rows, twice the products per instruction of float32 fma with AVX2 (and with
// AVX-512 VNNI's vpdpwssd).
//
// Weights in groups of 16 output columns (engine/kernels/grid.py packs them), K a multiple of 32;
// per group, per block of 32 k (column c = byte i / 2 of every 32-byte row):
//   Q4_1: d[16] f16, m[16] f16, then 8 rows (k quads j) of 32 bytes:
//         byte i = q[c][4j + i % 2] | q[c][4j + 2 + i % 2] << 4                                 320 bytes
//   Q8_0: d[16] f16, then 16 rows (k pairs j) of 32 int8: byte i = q[c][2j + i % 2]           544 bytes
//   Q5_1: Q4_1's layout with q = the low 4 bits, then 2 rows of fifth bits: bit 2 (j % 4) of byte i of
//         row j / 4 = bit 4 of q[c][4j + i % 2], the next bit that of q[c][4j + 2 + i % 2]         384 bytes
//         (GGUF's Q5_1, and its Q5_0 as q + 16 with m = -16 d)
// Widened to int16, a 32-byte row is 16 columns x 2 consecutive k: the operand layout of vpmaddwd.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amx.h"
#include "common.h"
#include "i16.h"
#include "kernels.h"
#include "pool.h"
#include "vec.h"

#define CHUNK_ROWS 64  // rows of one work item (their int16 activations stay in L2)
#define TILE_CHUNK_ROWS 256  // the same with AMX tiles: a group's codes are converted once per chunk
#define ITEM_GROUPS 4  // groups of a work item, at most: 64 columns, 23 KB of codes for K = 576 (items of one
                       // group, 5.8 KB, are 1.2x slower than linear_grid.c streaming the weights from RAM at 1 row)
// ROWS rows of int16 activations v (row stride K; block scales s and sums xs, row stride K / 32) against
// one group's codes (FMT: GRID_Q4_1, GRID_Q8_0 or GRID_Q5_1); y (row stride ldy) gets the group's first `cols` outputs.
// The integer sums of SPAN blocks go to memory (L1) before their float epilogue: kept in registers with
// the float sums, they spilled inside the integer loop (36 moves per 16 vpmaddwd at 4 rows, AVX2).
#define SPAN 16
#define PREFETCH_BLOCKS 8  // 2.5 KB ahead (Q4_1). AVX2 machine, 120 matrices of 30 layers + the LM head from
                           // RAM, against none (runtime switch, one library, alternated): 1.19x at 1 row,
                           // 1.13x at 4, 1.08x at 16 (4 blocks: 1.12, 1.08, 1.03; 16: 1.11, 1.13, 1.10)
#define ROW_BLOCK(FMT, NAME, ROWS)                                                                           \
    static void NAME(int K, const int16_t *v, const float *s, const float *xs, const uint8_t *group, float *y, \
                     int64_t ldy, int cols) {                                                                \
        const int nb = K / BLOCK;                                                                            \
        const int64_t block_bytes = FMT == GRID_Q4_1 ? Q4_GROUP_BYTES                                        \
                                    : FMT == GRID_Q5_1 ? Q5_GROUP_BYTES : Q8_GROUP_BYTES;                    \
        enum { NIBBLES = FMT != GRID_Q8_0 };  /* Q4_1, Q5_1: k quads of nibble pairs */                       \
        vf acc[ROWS][NG];                                                                                    \
        vi sums[SPAN][ROWS][NG];                                                                             \
        for (int r = 0; r < ROWS; r++)                                                                       \
            for (int g = 0; g < NG; g++) acc[r][g] = (vf){0};                                                \
        for (int b0 = 0; b0 < nb; b0 += SPAN) {                                                              \
            int span = nb - b0 < SPAN ? nb - b0 : SPAN;                                                      \
            for (int bb = 0; bb < span; bb++) {                                                              \
                const int b = b0 + bb;                                                                       \
                const uint8_t *codes = group + b * block_bytes + (NIBBLES ? 4 : 2) * GROUP;                  \
                for (int pf = 0; pf < block_bytes; pf += 64) /* 8 blocks ahead, past the group's end too */  \
                    __builtin_prefetch(group + (b + PREFETCH_BLOCKS) * block_bytes + pf);                    \
                vi dot[ROWS][NG];                                                                            \
                for (int r = 0; r < ROWS; r++)                                                               \
                    for (int g = 0; g < NG; g++) dot[r][g] = (vi){0};                                        \
                for (int j = 0; j < (NIBBLES ? BLOCK / 4 : BLOCK / 2); j++) {                                \
                    vw w0[NG], w1[NG];                                                                       \
                    for (int g = 0; g < NG; g++) {                                                           \
                        if (NIBBLES) {  /* a nibble pair each: k quad j = k pairs 2j (low), 2j + 1 (high) */  \
                            vw u = widen_u8(codes + 32 * j + 2 * VL * g);                                    \
                            w0[g] = u & 15;                                                                  \
                            w1[g] = u >> 4;                                                                  \
                            if (FMT == GRID_Q5_1) { /* fifth bits: 2 per byte of row j / 4 of the plane */   \
                                vw h = widen_u8(codes + 8 * 32 + 32 * (j / 4) + 2 * VL * g) >> (2 * (j % 4)); \
                                w0[g] |= (h & 1) << 4;                                                       \
                                w1[g] |= (h & 2) << 3;                                                       \
                            }                                                                                \
                        } else {                                                                             \
                            w0[g] = w1[g] = widen_s8(codes + 32 * j + 2 * VL * g);                            \
                        }                                                                                    \
                    }                                                                                        \
                    for (int r = 0; r < ROWS; r++) {                                                         \
                        const int16_t *vr = v + (int64_t)r * K + b * BLOCK + (NIBBLES ? 4 : 2) * j;          \
                        int32_t a0 = pair_at(vr);                                                            \
                        for (int g = 0; g < NG; g++) {                                                       \
                            dot[r][g] = madd(dot[r][g], w0[g], a0);                                          \
                            if (NIBBLES) dot[r][g] = madd(dot[r][g], w1[g], pair_at(vr + 2));                \
                            dot[r][g] = in_register_int(dot[r][g]); /* one chain (vec.h) */                  \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
                for (int r = 0; r < ROWS; r++)                                                               \
                    for (int g = 0; g < NG; g++) sums[bb][r][g] = dot[r][g];                                 \
            }                                                                                                \
            for (int bb = 0; bb < span; bb++) {                                                              \
                const int b = b0 + bb;                                                                       \
                const uint8_t *blk = group + b * block_bytes;                                                \
                for (int g = 0; g < NG; g++) {                                                               \
                    vf d = load_halves(blk + 2 * VL * g);                                                    \
                    vf m = NIBBLES ? load_halves(blk + 2 * GROUP + 2 * VL * g) : (vf){0};                    \
                    for (int r = 0; r < ROWS; r++) {                                                         \
                        vf f = __builtin_convertvector(sums[bb][r][g], vf);                                  \
                        acc[r][g] = in_register(acc[r][g] + f * in_register(d * s[(int64_t)r * nb + b]));    \
                        if (NIBBLES) acc[r][g] = in_register(acc[r][g] + m * xs[(int64_t)r * nb + b]);       \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < ROWS; r++) store_group(y + r * ldy, acc[r], cols);                               \
    }
#define ROW_BLOCKS(ROWS)                           \
    ROW_BLOCK(GRID_Q4_1, q4_rows##ROWS, ROWS)      \
    ROW_BLOCK(GRID_Q8_0, q8_rows##ROWS, ROWS)      \
    ROW_BLOCK(GRID_Q5_1, q5_rows##ROWS, ROWS)


ROW_BLOCKS(1)
#if MAX_ROWS >= 4
ROW_BLOCKS(2)
ROW_BLOCKS(3)
ROW_BLOCKS(4)
#endif
#if MAX_ROWS >= 8
ROW_BLOCKS(5)
ROW_BLOCKS(6)
ROW_BLOCKS(7)
ROW_BLOCKS(8)
#endif

#if MAX_ROWS == 8
static const rows_fn ROWS_FN[3][MAX_ROWS + 1] = {
    {0, q4_rows1, q4_rows2, q4_rows3, q4_rows4, q4_rows5, q4_rows6, q4_rows7, q4_rows8},
    {0, q8_rows1, q8_rows2, q8_rows3, q8_rows4, q8_rows5, q8_rows6, q8_rows7, q8_rows8},
    {0, q5_rows1, q5_rows2, q5_rows3, q5_rows4, q5_rows5, q5_rows6, q5_rows7, q5_rows8}};
#elif MAX_ROWS == 4
static const rows_fn ROWS_FN[3][MAX_ROWS + 1] = {{0, q4_rows1, q4_rows2, q4_rows3, q4_rows4},
                                                  {0, q8_rows1, q8_rows2, q8_rows3, q8_rows4},
                                                  {0, q5_rows1, q5_rows2, q5_rows3, q5_rows4}};
#else
static const rows_fn ROWS_FN[3][MAX_ROWS + 1] = {{0, q4_rows1}, {0, q8_rows1}, {0, q5_rows1}};
#endif
// ROWS_FN's row of a format (Q4_1, Q8_0, Q5_1); NULL for the K-quants
static const rows_fn *own_rows(int format) {
    return format == GRID_Q5_1 ? ROWS_FN[2] : format <= GRID_Q8_0 ? ROWS_FN[format] : 0;
}

// x rounded per block: v [M, K] int16, s [M, K / 32] (amax / 32767; NaN when the block holds NaN or an
// infinity, which then reaches every output of the row, as in the float kernels), xs [M, K / 32] = the
// block's sum of x, halves folded onto each other (16, 8, 4, 2, 1: the same order at every VL); when hi
// is not NULL, also v as linear_amx.c's bfloat16 planes: 256 hi and lo for v = 256 hi + lo, lo = v & 255
static void quantize_row(int K, const float *x, int16_t *v, float *s, float *xs, uint16_t *hi, uint16_t *lo) {
    const vi magnitude = (vi){0} + 0x7fffffff;
    for (int b = 0; b < K / BLOCK; b++) {
        const float *xb = x + b * BLOCK;
        vf amax = {0};
        vi nonfinite = {0};
        for (int i = 0; i < BLOCK / VL; i++) {
            vf a = loadf(xb + VL * i), m;
            vi bits;
            memcpy(&bits, &a, sizeof bits);
            bits &= magnitude;
            memcpy(&m, &bits, sizeof m);
            nonfinite |= bits >= 0x7f800000;  // infinity or NaN
            amax = vmaxv(m, amax);
        }
        int finite = 1;
        for (int i = 0; i < VL; i++) finite &= nonfinite[i] == 0;
        float am = maxv(amax);
        float inv = finite && am > 0 ? 32767.0f / am : 0.0f;
        __asm__("" : "+m"(inv));  // rounded once: -fassociative-math would turn x * (c / a) into x * c / a
        for (int i = 0; i < BLOCK / VL; i++) {
            vf t = in_register(loadf(xb + VL * i) * inv);  // |t| <= 32767 (rounded: not fused into the next add)
            t = in_register(t + 12582912.0f) - 12582912.0f;  // to the nearest integer, ties to even (1.5 2^23)
            vi q = __builtin_convertvector(t, vi);
            vh q16 = __builtin_convertvector(q, vh);
            memcpy(v + b * BLOCK + VL * i, &q16, sizeof q16);
            if (hi) {  // both exact in float32 and bfloat16 (8 significant bits): the top halves
                vf high = __builtin_convertvector(q - (q & 255), vf), low = __builtin_convertvector(q & 255, vf);
                vu32 hb, lb;
                memcpy(&hb, &high, sizeof hb);
                memcpy(&lb, &low, sizeof lb);
                vh h16 = __builtin_convertvector(hb >> 16, vh), l16 = __builtin_convertvector(lb >> 16, vh);
                memcpy(hi + b * BLOCK + VL * i, &h16, sizeof h16);
                memcpy(lo + b * BLOCK + VL * i, &l16, sizeof l16);
            }
        }
        vf part[BLOCK / VL];  // the sum by halving folds: across this block's vectors, then within one
        for (int i = 0; i < BLOCK / VL; i++) part[i] = loadf(xb + VL * i);
        for (int n = BLOCK / VL; n > 1; n /= 2)
            for (int i = 0; i < n / 2; i++) part[i] += part[i + n / 2];
        s[b] = finite ? am / 32767.0f : NAN;
        xs[b] = sumv(part[0]);
    }
}

struct i16_job {
    int format, M, N, K, items, item_groups;  // items (of item_groups groups) per chunk of rows
    int chunk_rows;  // CHUNK_ROWS, or TILE_CHUNK_ROWS with AMX tiles
    const float *x;
    const uint8_t *Wp;
    float *y;
    int16_t *v;
    float *s, *xs;
    uint16_t *hi, *lo;  // NULL: no tiles; else v as linear_amx.c's bfloat16 planes [M, K]
};

static void quantize_item(void *ctx, int r) {
    struct i16_job *j = ctx;
    int nb = j->K / BLOCK;
    quantize_row(j->K, j->x + (int64_t)r * j->K, j->v + (int64_t)r * j->K, j->s + (int64_t)r * nb,
                 j->xs + (int64_t)r * nb, j->hi ? j->hi + (int64_t)r * j->K : 0, j->hi ? j->lo + (int64_t)r * j->K : 0);
}

// bytes of one group's codes over K inputs, in a format's layout
static int64_t group_bytes(int format, int K) {
    switch (format) {
        case GRID_Q4_1: return (int64_t)(K / BLOCK) * Q4_GROUP_BYTES;
        case GRID_Q8_0: return (int64_t)(K / BLOCK) * Q8_GROUP_BYTES;
        case GRID_Q5_1: return (int64_t)(K / BLOCK) * Q5_GROUP_BYTES;
        case GRID_Q4_K: return (int64_t)(K / SUPER) * Q4K_GROUP_BYTES;
        case GRID_Q5_K: return (int64_t)(K / SUPER) * Q5K_GROUP_BYTES;
        default: return (int64_t)(K / SUPER) * Q6K_GROUP_BYTES;
    }
}

// one chunk of up to CHUNK_ROWS rows against one group of 16 columns, in passes of as even a size as possible
static void chunk_group(const struct i16_job *j, int r0, int rows, int g) {
    int nb = j->K / BLOCK, c0 = g * GROUP, cols = j->N - c0 < GROUP ? j->N - c0 : GROUP;
    const uint8_t *group = j->Wp + g * group_bytes(j->format, j->K);
    int passes = (rows + MAX_ROWS - 1) / MAX_ROWS;
    for (int i = r0, p = 0; p < passes; p++) {
        int n = (rows - (i - r0) + (passes - p) - 1) / (passes - p);
        rows_fn fn = own_rows(j->format) ? own_rows(j->format)[n] : kquant_rows(j->format, n);
        fn(j->K, j->v + (int64_t)i * j->K, j->s + (int64_t)i * nb, j->xs + (int64_t)i * nb, group,
           j->y + (int64_t)i * j->N + c0, j->N, cols);
        i += n;
    }
}

static __thread struct scratch tile_codes;  // the calling thread's codes rewritten as B tiles (linear_amx.c)

// the first rows / 16 * 16 rows of a chunk (Q4_1) on AMX tiles, groups g0 .. g1 - 1 (converted once,
// then 3 at a time); returns the rows done (0 when out of memory)
static int tile_rows(const struct i16_job *j, int r0, int rows, int g0, int g1) {
    int nb = j->K / BLOCK, tiles = rows / 16;
    size_t need = (size_t)(g1 - g0) * nb * AMX_B_BYTES;
    if (reserve(&tile_codes, need)) return 0;
    uint8_t *converted = tile_codes.data;
    const int64_t stride = group_bytes(GRID_Q4_1, j->K);
    for (int g = g0; g < g1; g++)
        amx_convert(j->K, j->Wp + g * stride, converted + (size_t)(g - g0) * nb * AMX_B_BYTES);
    amx_begin();
    for (int t = 0; t < tiles; t++) {  // each 16 rows against every group (their activations stay in L1)
        int64_t r = r0 + 16 * t;
        for (int g = g0; g < g1; g += 3) {
            int n = g1 - g < 3 ? g1 - g : 3, cols[3];
            const uint8_t *groups[3], *conv[3];
            for (int i = 0; i < n; i++) {
                int c0 = (g + i) * GROUP;
                cols[i] = j->N - c0 < GROUP ? j->N - c0 : GROUP;
                groups[i] = j->Wp + (g + i) * stride;
                conv[i] = converted + (size_t)(g + i - g0) * nb * AMX_B_BYTES;
            }
            amx_rows(j->K, j->hi + r * j->K, j->lo + r * j->K, j->s + r * nb, j->xs + r * nb, groups, conv, n,
                     j->y + r * j->N + g * GROUP, j->N, cols);
        }
    }
    amx_end();
    return 16 * tiles;
}

// item = (chunk of rows, item_groups consecutive groups), chunk-major: consecutive items share rows
static void group_item(void *ctx, int item) {
    struct i16_job *j = ctx;
    int groups = (j->N + GROUP - 1) / GROUP, chunk = item / j->items, g0 = item % j->items * j->item_groups;
    int g1 = g0 + j->item_groups < groups ? g0 + j->item_groups : groups;
    int r0 = chunk * j->chunk_rows, rows = j->M - r0 < j->chunk_rows ? j->M - r0 : j->chunk_rows, done = 0;
    if (j->hi && rows >= 16) done = tile_rows(j, r0, rows, g0, g1);
    if (done < rows)
        for (int g = g0; g < g1; g++) chunk_group(j, r0 + done, rows - done, g);
}

// AMX tiles for 16 rows at a time: -1 until first asked, then 0 or 1 (linear_i16_tiles)
static int use_tiles = -1;

// use: 1 = AMX tiles where the machine has them (the default), 0 = vector units only, -1 = ask;
// returns whether tiles are used (the results are the same bits either way: a test and benchmark knob)
int linear_i16_tiles(int use) {
    if (use >= 0 || use_tiles < 0) use_tiles = use != 0 && amx_ready();
    return use_tiles;
}

// groups per item: ITEM_GROUPS, or fewer when that gives every thread the same number of items (576
// columns = 36 groups: 9 items of 4 leave a thread idle for one item; 12 items of 3 do not); with AMX
// tiles, 6 or 3 (linear_amx.c takes 3 groups at a time)
static int item_groups(int groups, int tiles) {
    int threads = pool_threads();
    if (tiles) return (groups + 5) / 6 % threads == 0 ? 6 : 3;
    for (int n = ITEM_GROUPS; n > ITEM_GROUPS / 2; n--)
        if ((groups + n - 1) / n % threads == 0) return n;
    return ITEM_GROUPS;
}

static __thread struct scratch activations;  // the calling thread's rounded activations

// format: GRID_Q4_1 or GRID_Q8_0 (groups layout above), or a K-quant (linear_kquant.c's layout). Returns 0;
// 1 when K is not a multiple of the format's block (32; 256 for the K-quants) or the format is unknown; 2
// when out of memory.
int linear_grid_i16(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y) {
    int k_quant = format >= GRID_Q4_K && format <= GRID_Q6_K;
    if (K % BLOCK || format < GRID_Q4_1 || format > GRID_Q5_1 || (k_quant && K % SUPER)) return 1;
    int tiles = format == GRID_Q4_1 && M >= 32 && linear_i16_tiles(-1);  // (16 rows: 0.95x the vector path)
    size_t nb = (size_t)(K / BLOCK), need = (size_t)M * ((tiles ? 6 : 2) * (size_t)K + 8 * nb);
    if (reserve(&activations, need)) return 2;
    float *s = activations.data;
    int groups = (N + GROUP - 1) / GROUP, per_item = item_groups(groups, tiles);
    struct i16_job job = {format, M, N, K, (groups + per_item - 1) / per_item, per_item, tiles ? TILE_CHUNK_ROWS : CHUNK_ROWS, x, Wp, y,
                          (int16_t *)(s + 2 * (size_t)M * nb), s, s + (size_t)M * nb, 0, 0};
    if (tiles) {
        job.hi = (uint16_t *)(job.v + (size_t)M * K);
        job.lo = job.hi + (size_t)M * K;
    }
    if (M <= 4) {  // not worth waking the pool's workers for
        for (int r = 0; r < M; r++) quantize_item(&job, r);
    } else {
        pool_run(M, quantize_item, &job);
    }
    pool_run(((M + job.chunk_rows - 1) / job.chunk_rows) * job.items, group_item, &job);
    return 0;
}

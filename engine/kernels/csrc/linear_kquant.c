// The rows of linear_grid_i16 for weights in GGUF's K-quants (Q4_K, Q5_K, Q6_K, the blocks of the
// "Q4_K_M" files people download), against the same int16 activations as linear_i16.c: per row and block
// of 32 inputs, v int16, scale s and sum xs (linear_i16.c's quantize_row).
//
// A K-quant super-block covers 256 inputs of one output with a float16 d (and dmin) and small integer
// scales per sub-block; the value of code q (GGUF's own dequantization, gguf.quants):
//   Q4_K, Q5_K: sub-blocks of 32, sc and mn 6-bit:  w = (d sc) q - (dmin mn)    q 0..15 / 0..31
//   Q6_K:       sub-blocks of 16, sc int8:           w = (d sc) q                q -32..31
// d sc and dmin mn are exact in float32. Per output c and block b of 32 inputs:
//   dot = sum_k v[k] q[c][k]       exact in int32 (two, one per sub-block of 16, for Q6_K)
//   acc = fma(float(dot), (d sc) s, acc)            then Q4_K / Q5_K:  acc = fma(-(dmin mn), xs, acc)
// in block order from 0: the same operations whatever the batch (batch-invariant), as linear_i16.c.
//
// Layout (engine/kernels/kquant.py packs it): groups of 16 output columns; per group and super-block a
// head of scales, then the codes of its 8 blocks in linear_i16.c's layouts (Q4_K: Q4_1's k quads of nibble
// pairs; Q5_K: Q8_0's k pairs, one byte a code; Q6_K: q + 32 (0..63) as Q4_1's nibbles of the low 4 bits,
// then 4 rows of 32 bytes of the top 2 bits: bits 4 (j % 2) .. + 1 of byte i of row j / 2 for the low
// nibble of quad j's byte i, the next two for its high nibble):
//   Q4_K, Q5_K: d[16] f16 | -dmin[16] f16 | sc[8][16] uint8 | mn[8][16] uint8 | codes     (common.h)
//   Q6_K:       d[16] f16 | sc[16][16] int8 | codes
// Q4_K and Q6_K keep the file's 4.5 and 6.6 bits a weight (4.6, 6.6); Q5_K takes 8 (file: 5.5).
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "i16.h"
#include "vec.h"

// VL bytes as float32 lanes (exact; vec.h's widening loads: a generic conversion went byte by byte)
static inline vf u8_floats(const uint8_t *p) { return __builtin_convertvector(load_u8(p), vf); }

static inline vf s8_floats(const uint8_t *p) { return __builtin_convertvector(load_s8(p), vf); }

#define SUB (SUPER / BLOCK)  // blocks of 32 per super-block: 8
#define PREFETCH_AHEAD 2  // super-blocks ahead (4.7 KB for Q4_K, past the group's end too)
#define PREFETCH_SPAN(bytes) (((bytes) / SUB + 63) / 64 * 64)  // prefetched per block: 1/8 of a super-block
// FMT: GRID_Q4_K, GRID_Q5_K or GRID_Q6_K. sums: one per sub-block (16 for Q6_K), kept in memory (L1) until
// the super-block's float epilogue, as linear_i16.c does with its SPAN.
#define KQ_ROW_BLOCK(FMT, NAME, ROWS)                                                                        \
    static void NAME(int K, const int16_t *v, const float *s, const float *xs, const uint8_t *group, float *y, \
                     int64_t ldy, int cols) {                                                                \
        const int nb = K / BLOCK;                                                                            \
        const int64_t head = FMT == GRID_Q6_K ? Q6K_HEAD_BYTES : Q4K_HEAD_BYTES;                             \
        const int64_t bytes = FMT == GRID_Q4_K ? Q4K_GROUP_BYTES : FMT == GRID_Q5_K ? Q5K_GROUP_BYTES        \
                                                                                    : Q6K_GROUP_BYTES;       \
        const int64_t code_bytes = FMT == GRID_Q4_K ? BLOCK * GROUP / 2                                      \
                                   : FMT == GRID_Q6_K ? BLOCK * GROUP * 3 / 4 : BLOCK * GROUP;               \
        enum { NIBBLES = FMT != GRID_Q5_K }; /* k quads of nibble pairs */                                   \
        vf acc[ROWS][NG];                                                                                    \
        vi sums[2 * SUB][ROWS][NG];                                                                          \
        for (int r = 0; r < ROWS; r++)                                                                       \
            for (int g = 0; g < NG; g++) acc[r][g] = (vf){0};                                                \
        for (int sb = 0; sb < K / SUPER; sb++) {                                                             \
            const uint8_t *sup = group + sb * bytes;                                                         \
            for (int bb = 0; bb < SUB; bb++) {                                                               \
                const int b = sb * SUB + bb;                                                                 \
                const uint8_t *codes = sup + head + bb * code_bytes;                                         \
                for (int64_t pf = bb * PREFETCH_SPAN(bytes); pf < (bb + 1) * PREFETCH_SPAN(bytes); pf += 64)    \
                    __builtin_prefetch(sup + PREFETCH_AHEAD * bytes + pf); /* an eighth a block, spread */       \
                vi dot[ROWS][NG];                                                                            \
                for (int r = 0; r < ROWS; r++)                                                               \
                    for (int g = 0; g < NG; g++) dot[r][g] = (vi){0};                                        \
                for (int j = 0; j < (NIBBLES ? BLOCK / 4 : BLOCK / 2); j++) {                                \
                    if (FMT == GRID_Q6_K && j == BLOCK / 8) { /* the second sub-block of 16 */               \
                        for (int r = 0; r < ROWS; r++)                                                       \
                            for (int g = 0; g < NG; g++) sums[2 * bb][r][g] = dot[r][g], dot[r][g] = (vi){0}; \
                    }                                                                                        \
                    vw w0[NG], w1[NG];                                                                       \
                    for (int g = 0; g < NG; g++) {                                                           \
                        if (NIBBLES) {                                                                       \
                            vw u = widen_u8(codes + 32 * j + 2 * VL * g);                                    \
                            w0[g] = u & 15;                                                                  \
                            w1[g] = u >> 4;                                                                  \
                            if (FMT == GRID_Q6_K) { /* the top 2 bits, then q - 32 */                        \
                                vw h = widen_u8(codes + 8 * 32 + 32 * (j / 2) + 2 * VL * g) >> (4 * (j % 2)); \
                                w0[g] = (w0[g] | (h & 3) << 4) - 32;                                         \
                                w1[g] = (w1[g] | (h & 12) << 2) - 32;                                        \
                            }                                                                                \
                        } else {                                                                             \
                            w0[g] = w1[g] = widen_u8(codes + 32 * j + 2 * VL * g);                           \
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
                    for (int g = 0; g < NG; g++) sums[FMT == GRID_Q6_K ? 2 * bb + 1 : bb][r][g] = dot[r][g]; \
            }                                                                                                \
            for (int bb = 0; bb < SUB; bb++) {                                                               \
                const int b = sb * SUB + bb;                                                                 \
                for (int g = 0; g < NG; g++) {                                                               \
                    vf d = load_halves(sup + 2 * VL * g);                                                    \
                    if (FMT == GRID_Q6_K) {                                                                  \
                        const uint8_t *sc = sup + 2 * GROUP + 2 * bb * GROUP + VL * g;                       \
                        vf d0 = in_register(d * s8_floats(sc)), d1 = in_register(d * s8_floats(sc + GROUP)); \
                        for (int r = 0; r < ROWS; r++) {                                                     \
                            float sr = s[(int64_t)r * nb + b];                                               \
                            vf f0 = __builtin_convertvector(sums[2 * bb][r][g], vf);                         \
                            vf f1 = __builtin_convertvector(sums[2 * bb + 1][r][g], vf);                     \
                            acc[r][g] = in_register(acc[r][g] + f0 * in_register(d0 * sr));                  \
                            acc[r][g] = in_register(acc[r][g] + f1 * in_register(d1 * sr));                  \
                        }                                                                                    \
                    } else {                                                                                 \
                        const uint8_t *sc = sup + 4 * GROUP + bb * GROUP + VL * g;                           \
                        vf ds = in_register(d * u8_floats(sc));                                              \
                        vf m = in_register(load_halves(sup + 2 * GROUP + 2 * VL * g) * u8_floats(sc + SUB * GROUP)); \
                        for (int r = 0; r < ROWS; r++) {                                                     \
                            vf f = __builtin_convertvector(sums[bb][r][g], vf);                              \
                            acc[r][g] = in_register(acc[r][g] + f * in_register(ds * s[(int64_t)r * nb + b])); \
                            acc[r][g] = in_register(acc[r][g] + m * xs[(int64_t)r * nb + b]);                \
                        }                                                                                    \
                    }                                                                                        \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
        for (int r = 0; r < ROWS; r++) store_group(y + r * ldy, acc[r], cols);                               \
    }
#define KQ_ROW_BLOCKS(ROWS)                           \
    KQ_ROW_BLOCK(GRID_Q4_K, q4k_rows##ROWS, ROWS)     \
    KQ_ROW_BLOCK(GRID_Q5_K, q5k_rows##ROWS, ROWS)     \
    KQ_ROW_BLOCK(GRID_Q6_K, q6k_rows##ROWS, ROWS)

KQ_ROW_BLOCKS(1)
#if MAX_ROWS >= 4
KQ_ROW_BLOCKS(2)
KQ_ROW_BLOCKS(3)
KQ_ROW_BLOCKS(4)
#endif
#if MAX_ROWS >= 8
KQ_ROW_BLOCKS(5)
KQ_ROW_BLOCKS(6)
KQ_ROW_BLOCKS(7)
KQ_ROW_BLOCKS(8)
#endif

#if MAX_ROWS == 8
static const rows_fn KQ_ROWS[3][MAX_ROWS + 1] = {
    {0, q4k_rows1, q4k_rows2, q4k_rows3, q4k_rows4, q4k_rows5, q4k_rows6, q4k_rows7, q4k_rows8},
    {0, q5k_rows1, q5k_rows2, q5k_rows3, q5k_rows4, q5k_rows5, q5k_rows6, q5k_rows7, q5k_rows8},
    {0, q6k_rows1, q6k_rows2, q6k_rows3, q6k_rows4, q6k_rows5, q6k_rows6, q6k_rows7, q6k_rows8}};
#elif MAX_ROWS == 4
static const rows_fn KQ_ROWS[3][MAX_ROWS + 1] = {{0, q4k_rows1, q4k_rows2, q4k_rows3, q4k_rows4},
                                                  {0, q5k_rows1, q5k_rows2, q5k_rows3, q5k_rows4},
                                                  {0, q6k_rows1, q6k_rows2, q6k_rows3, q6k_rows4}};
#else
static const rows_fn KQ_ROWS[3][MAX_ROWS + 1] = {{0, q4k_rows1}, {0, q5k_rows1}, {0, q6k_rows1}};
#endif

rows_fn kquant_rows(int format, int rows) { return KQ_ROWS[format - GRID_Q4_K][rows]; }

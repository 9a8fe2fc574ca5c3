// linear_i16.c's Q4_1 products on AMX tiles (Intel Sapphire Rapids and later), 16 rows at a time: the
// same dot products, exactly, and the same float epilogue in the same order, so every output has the bits
// of the vector path (rows of a batch may take either; the result does not depend on which).
//
// The tiles multiply bfloat16 pairs into float32 sums (TDPBF16PS). Each int16 activation v = 256 hi + lo
// (hi signed, lo in 0..255) is kept as two bfloat16 planes, 256 hi and lo (each exact: 8 significant
// bits), and each code q as a bfloat16: a block's dot product sum_k q (256 hi + lo), two tile products
// into one sum, adds integers whose magnitudes total less than 2^24 (32 x 32767 x 15), so every float32
// partial sum is exact whatever the order, and the tile's result is the integer dot product as a float:
// cvt(dot) of the vector path. (Q8_0's codes reach 2^7: not exact there; its matrix, the LM head, stays
// on the vector path.) A block's sums leave the tiles for the float epilogue of linear_i16.c:
//   A: 16 rows x 32 k of the 256 hi or the lo plane (written by linear_i16.c, [M, K] uint16 each)
//   B: 16 k pairs x 16 columns x (q[2p], q[2p + 1]): amx_convert rewrites a group's codes, 1 KB per block
//   C: 16 x 16 float32, stored to L1 and scaled by the vector units while the next block multiplies
// A block's two A tiles serve 3 groups (B, C tiles 2-7), and the epilogue of the block before runs on the
// vector units while this block's tiles multiply. Measured on cached Q4_1 3072 x 576 against the vector
// path: 1.66x at 512 rows, 1.43x at 64, 0.97x at 16 (linear_i16.c uses the tiles from 32 rows). Loading
// the A tiles once per group, or splitting v in int8 halves for AMX-INT8 (twice the sums to store), gives
// 1.0-1.2x at 512 rows.
#include <stdint.h>
#include <string.h>

#include "amx.h"
#include "kernels.h"
#include "vec.h"

#if defined(__AMX_BF16__) && defined(__AMX_TILE__) && defined(__AVX512BW__) && VL == 16
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int permitted;
static pthread_once_t asked = PTHREAD_ONCE_INIT;

// Linux hands out the 8 KB of tile state only to processes that ask (once, for all their threads)
static void ask(void) {
    unsigned long features = 0;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return;
    if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &features) != 0) return;
    permitted = (features >> XFEATURE_XTILEDATA) & 1;
}

int amx_ready(void) {
    pthread_once(&asked, ask);
    return permitted;
}

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];  // bytes per row of tile i
    uint8_t rows[16];
};

// 8 tiles of 16 rows x 64 bytes (see above). A constant in memory: GCC 12 drops stores to a local
// configuration as dead (it does not see ldtilecfg read them).
static const struct tile_config CONFIG = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

void amx_begin(void) { _tile_loadconfig(&CONFIG); }  // (per work item: torch's oneDNN may use tiles on this thread)

void amx_end(void) { _tile_release(); }

static inline __m512i bf16_bits(__m512i q) {  // q as bfloat16 in the low half of each lane (exact: q < 2^8)
    return _mm512_srli_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(q)), 16);
}

void amx_convert(int K, const uint8_t *group, uint8_t *out) {
    const __m512i nibble = _mm512_set1_epi32(15);
    for (int b = 0; b < K / 32; b++) {
        const uint8_t *codes = group + (int64_t)b * Q4_GROUP_BYTES + 64;
        uint8_t *dst = out + (int64_t)b * AMX_B_BYTES;  // [k pair 0..15][16 columns] uint32
        for (int j = 0; j < 8; j++) {  // word c = (k 4j | k 4j + 2 << 4) | (k 4j + 1 | k 4j + 3 << 4) << 8
            __m512i x = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(codes + 32 * j)));
            __m512i k0 = bf16_bits(_mm512_and_si512(x, nibble)), k1 = bf16_bits(_mm512_and_si512(_mm512_srli_epi32(x, 8), nibble));
            __m512i k2 = bf16_bits(_mm512_and_si512(_mm512_srli_epi32(x, 4), nibble)), k3 = bf16_bits(_mm512_srli_epi32(x, 12));
            _mm512_storeu_si512(dst + 64 * (2 * j), _mm512_or_si512(k0, _mm512_slli_epi32(k1, 16)));
            _mm512_storeu_si512(dst + 64 * (2 * j + 1), _mm512_or_si512(k2, _mm512_slli_epi32(k3, 16)));
        }
    }
}

// one block's products for group g: B tile, C tile (A: tiles 0, 1)
#define GROUP_PRODUCTS(B, C, g)                                      \
    do {                                                             \
        _tile_loadd(B, converted[g] + (int64_t)b * AMX_B_BYTES, 64); \
        _tile_zero(C);                                               \
        _tile_dpbf16ps(C, 0, B);                                     \
        _tile_dpbf16ps(C, 1, B);                                     \
    } while (0)

// Per block: the A tiles (256 hi, lo) once for up to 3 groups (B, C: tiles 2, 3 / 4, 5 / 6, 7), then the
// epilogue of the block before, then this block's stores. The float sums stay in L1.
void amx_rows(int K, const uint16_t *hi, const uint16_t *lo, const float *s, const float *xs, const uint8_t *const *groups,
              const uint8_t *const *converted, int ngroups, float *y, int64_t ldy, const int *cols) {
    const int nb = K / 32;
    float c[2][3][16][16] __attribute__((aligned(64)));  // sums of block b in c[b % 2]
    float acc[3][16][16] __attribute__((aligned(64)));
    memset(acc, 0, sizeof acc);
    for (int b = 0; b <= nb; b++) {
        if (b < nb) {
            _tile_loadd(0, hi + 32 * b, 2 * K);
            _tile_loadd(1, lo + 32 * b, 2 * K);
            GROUP_PRODUCTS(2, 3, 0);
            if (ngroups > 1) GROUP_PRODUCTS(4, 5, 1);
            if (ngroups > 2) GROUP_PRODUCTS(6, 7, 2);
        }
        if (b >= 1) {  // while the tiles multiply: the previous block's epilogue
            const int p = b - 1;
            for (int g = 0; g < ngroups; g++) {
                const uint8_t *blk = groups[g] + p * Q4_GROUP_BYTES;
                vf d = load_halves(blk), m = load_halves(blk + 32);
#pragma GCC unroll 16
                for (int r = 0; r < 16; r++) {
                    vf f = loadf(c[p & 1][g][r]), a = loadf(acc[g][r]);
                    a = in_register(a + f * in_register(d * s[(int64_t)r * nb + p]));
                    a = in_register(a + m * xs[(int64_t)r * nb + p]);
                    storev(acc[g][r], a);
                }
            }
        }
        if (b < nb) {
            _tile_stored(3, c[b & 1][0], 64);
            if (ngroups > 1) _tile_stored(5, c[b & 1][1], 64);
            if (ngroups > 2) _tile_stored(7, c[b & 1][2], 64);
        }
    }
    for (int g = 0; g < ngroups; g++)
        for (int r = 0; r < 16; r++) {
            if (cols[g] == 16) {
                storev(y + r * ldy + 16 * g, loadf(acc[g][r]));
            } else {
                for (int i = 0; i < cols[g]; i++) y[r * ldy + 16 * g + i] = acc[g][r][i];
            }
        }
}

#else  // no AMX on this machine (or a forced vector width): the vector path does everything

int amx_ready(void) { return 0; }
void amx_begin(void) {}
void amx_end(void) {}
void amx_convert(int K, const uint8_t *group, uint8_t *out) { (void)K, (void)group, (void)out; }
void amx_rows(int K, const uint16_t *hi, const uint16_t *lo, const float *s, const float *xs, const uint8_t *const *groups,
              const uint8_t *const *converted, int ngroups, float *y, int64_t ldy, const int *cols) {
    (void)K, (void)hi, (void)lo, (void)s, (void)xs, (void)groups, (void)converted, (void)ngroups, (void)y, (void)ldy;
    (void)cols;
}
#endif

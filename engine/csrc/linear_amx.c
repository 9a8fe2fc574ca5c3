// linear_i16.c's products on AMX tiles (Intel Sapphire Rapids and later: AMX-INT8), for 16 rows at a time:
// the same integer dot products, exactly, and the same float epilogue in the same order, so every output
// has the bits of the vector path (rows of a batch may take either; the result does not depend on which).
//
// AMX multiplies bytes, so each int16 activation is split as v = 256 hi + lo (hi signed, lo unsigned) and
// dot = 256 (hi . q) + (lo . q), both exact in int32 (|hi . q| < 2^20). One tile product (TDPB*D) takes
// ~13 cycles whatever its K, and the float epilogue is per block of 32 k, so a product covers one block:
//   A: 16 rows x 32 bytes (one block of lo or hi; read in place, row stride K)
//   B: 8 rows (k quads) x 64 bytes: 16 columns x 4 consecutive k   (amx_convert rewrites a group's codes)
//   C: 16 x 16 int32, stored to L1 and scaled by the vector units while the next block multiplies
// Q4_1 codes are unsigned (TDPBUUD lo, TDPBSUD hi), Q8_0 signed (TDPBUSD lo, TDPBSSD hi).
// Measured here (Xeon, 2 cores): ~5 ns per tile product; 4 products and the epilogue per block of
// 16 rows x 32 columns.
#include <stdint.h>
#include <string.h>

#include "amx.h"
#include "vec.h"

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__AVX512BW__) && VL == 16
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

// A: lo, hi (16 rows x 32 bytes); B: two groups (8 x 64); C: four (16 x 64). A constant in memory: GCC 12
// drops stores to a local configuration as dead (it does not see ldtilecfg read them)
static const struct tile_config CONFIG = {
    .palette = 1,
    .colsb = {32, 32, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 8, 8, 16, 16, 16, 16},
};

void amx_begin(void) { _tile_loadconfig(&CONFIG); }  // (per work item: torch's oneDNN may use tiles on this thread)

void amx_end(void) { _tile_release(); }

void amx_convert(int format, int K, const uint8_t *group, uint8_t *out) {
    const int nb = K / 32, block_bytes = format == 0 ? AMX_Q4_BYTES : AMX_Q8_BYTES;
    const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                           22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i nibbles = _mm512_set1_epi32(0x0f0f);
    for (int b = 0; b < nb; b++) {
        const uint8_t *codes = group + (int64_t)b * block_bytes + (format == 0 ? 64 : 32);
        uint8_t *dst = out + (int64_t)b * AMX_B_BYTES;
        for (int r = 0; r < 8; r++) {  // B row r: k 4r .. 4r + 3 of each column
            __m512i x;
            if (format == 0) {  // word c = (k 4r | k 4r + 2 << 4) | (k 4r + 1 | k 4r + 3 << 4) << 8
                x = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(codes + 32 * r)));
                x = _mm512_or_si512(_mm512_and_si512(x, nibbles),
                                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(x, 4), nibbles), 16));
            } else {  // rows 2r, 2r + 1 (k pairs): word c of each, interleaved
                x = _mm512_permutexvar_epi16(pairs, _mm512_loadu_si512(codes + 64 * r));
            }
            _mm512_storeu_si512(dst + 64 * r, x);
        }
    }
}

// the float epilogue of one block for ngroups groups, as linear_i16.c's ROW_BLOCK does it per output
static inline void scale_block(int format, int nb, int b, const int32_t (*c)[16][16], const uint8_t *const *groups,
                               int ngroups, const float *s, const float *xs, float (*acc)[16][16]) {
    const int64_t block_bytes = format == 0 ? AMX_Q4_BYTES : AMX_Q8_BYTES;
    for (int g = 0; g < ngroups; g++) {
        const uint8_t *blk = groups[g] + b * block_bytes;
        vf d = load_halves(blk), m = format == 0 ? load_halves(blk + 32) : (vf){0};
        for (int r = 0; r < 16; r++) {
            vi lo, hi;
            memcpy(&lo, c[2 * g][r], sizeof lo);
            memcpy(&hi, c[2 * g + 1][r], sizeof hi);
            vf f = __builtin_convertvector(lo + (hi << 8), vf), a = loadf(acc[g][r]);
            a = in_register(a + f * in_register(d * s[(int64_t)r * nb + b]));
            if (format == 0) a = in_register(a + m * xs[(int64_t)r * nb + b]);
            storev(acc[g][r], a);
        }
    }
}

#define PRODUCTS(LO, HI)                            \
    do {                                            \
        _tile_zero(4);                              \
        _tile_zero(5);                              \
        LO(4, 0, 2);                                \
        HI(5, 1, 2);                                \
        if (ngroups == 2) {                         \
            _tile_zero(6);                          \
            _tile_zero(7);                          \
            LO(6, 0, 3);                            \
            HI(7, 1, 3);                            \
        }                                           \
    } while (0)

void amx_rows16(int format, int K, const uint8_t *lo, const int8_t *hi, const float *s, const float *xs,
                const uint8_t *const *groups, const uint8_t *const *converted, int ngroups, float *y, int64_t ldy,
                const int *cols) {
    const int nb = K / 32;
    int32_t c[2][4][16][16] __attribute__((aligned(64)));  // C tiles of blocks b (even/odd), two groups x lo/hi
    float acc[2][16][16] __attribute__((aligned(64)));
    memset(acc, 0, sizeof acc);
    for (int b = 0; b <= nb; b++) {
        if (b < nb) {
            _tile_loadd(0, lo + 32 * b, K);
            _tile_loadd(1, hi + 32 * b, K);
            _tile_loadd(2, converted[0] + (int64_t)b * AMX_B_BYTES, 64);
            if (ngroups == 2) _tile_loadd(3, converted[1] + (int64_t)b * AMX_B_BYTES, 64);
            if (format == 0) {
                PRODUCTS(_tile_dpbuud, _tile_dpbsud);
            } else {
                PRODUCTS(_tile_dpbusd, _tile_dpbssd);
            }
        }
        // while the tiles multiply: the previous block's epilogue
        if (b > 0) scale_block(format, nb, b - 1, c[(b - 1) & 1], groups, ngroups, s, xs, acc);
        if (b < nb) {
            _tile_stored(4, c[b & 1][0], 64);
            _tile_stored(5, c[b & 1][1], 64);
            if (ngroups == 2) {
                _tile_stored(6, c[b & 1][2], 64);
                _tile_stored(7, c[b & 1][3], 64);
            }
        }
    }
    for (int g = 0; g < ngroups; g++)
        for (int r = 0; r < 16; r++) memcpy(y + r * ldy + 16 * g, acc[g][r], sizeof(float) * cols[g]);
}

#else  // no AMX-INT8 on this machine (or a forced vector width): the vector path does everything

int amx_ready(void) { return 0; }
void amx_begin(void) {}
void amx_end(void) {}
void amx_convert(int format, int K, const uint8_t *group, uint8_t *out) {
    (void)format, (void)K, (void)group, (void)out;
}
void amx_rows16(int format, int K, const uint8_t *lo, const int8_t *hi, const float *s, const float *xs,
                const uint8_t *const *groups, const uint8_t *const *converted, int ngroups, float *y, int64_t ldy,
                const int *cols) {
    (void)format, (void)K, (void)lo, (void)hi, (void)s, (void)xs, (void)groups, (void)converted, (void)ngroups;
    (void)y, (void)ldy, (void)cols;
}
#endif

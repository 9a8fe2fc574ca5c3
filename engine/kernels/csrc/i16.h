// What linear_i16.c (Q4_1, Q8_0) and linear_kquant.c (Q4_K, Q5_K, Q6_K) share: int16 activations (one
// row per block of 32 inputs: v int16, scale s, sum xs) against codes widened to int16 in pairs of
// consecutive k, the operand layout of vpmaddwd / vpdpwssd.
#pragma once
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "vec.h"

#define NG (GROUP / VL)  // vectors per group of columns: 1 (AVX-512), 2 (AVX2), 4
#if VL == 16
#define MAX_ROWS 8  // rows per pass: int32 sums (rows x NG) + 2 NG code vectors fit the register file
#elif VL == 8
#define MAX_ROWS 4
#else
#define MAX_ROWS 1
#endif

typedef int16_t vw __attribute__((vector_size(VL * 4)));   // VL lanes (columns) x 2 consecutive k
typedef uint8_t vub __attribute__((vector_size(VL * 2)));  // the codes of one vw
typedef int8_t vsb __attribute__((vector_size(VL * 2)));
typedef int16_t vh __attribute__((vector_size(VL * 2)));  // one vi narrowed
typedef uint32_t vu32 __attribute__((vector_size(VL * 4)));

// acc + per lane (w[2i] * a[k] + w[2i + 1] * a[k + 1]), pair = a[k] | a[k + 1] << 16: exact
static inline vi madd(vi acc, vw w, int32_t pair) {
#if VL == 16 && defined(__AVX512VNNI__)
    return (vi)_mm512_dpwssd_epi32((__m512i)acc, (__m512i)w, _mm512_set1_epi32(pair));
#elif VL == 16 && defined(__AVX512BW__)
    return acc + (vi)_mm512_madd_epi16((__m512i)w, _mm512_set1_epi32(pair));
#elif VL == 8 && defined(__AVX2__)
    return acc + (vi)_mm256_madd_epi16((__m256i)w, _mm256_set1_epi32(pair));
#else
    vi p;
    memcpy(&p, &w, sizeof p);
    return acc + ((p << 16) >> 16) * (int16_t)(pair & 0xffff) + (p >> 16) * (int16_t)(pair >> 16);
#endif
}

// 2 VL codes widened to int16: zero-extended (Q4_1, a nibble pair each) or sign-extended (Q8_0); one
// vpmovzxbw / vpmovsxbw (GCC's generic conversion took 128-bit halves and a vinserti128)
static inline vw widen_u8(const uint8_t *p) {
#if VL == 16 && defined(__AVX512BW__)
    return (vw)_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)p));
#elif VL == 8 && defined(__AVX2__)
    return (vw)_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
#else
    vub b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vw);
#endif
}

static inline vw widen_s8(const uint8_t *p) {
#if VL == 16 && defined(__AVX512BW__)
    return (vw)_mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)p));
#elif VL == 8 && defined(__AVX2__)
    return (vw)_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p));
#else
    vsb b;
    memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vw);
#endif
}

static inline int32_t pair_at(const int16_t *v) {
    int32_t p;
    memcpy(&p, v, sizeof p);
    return p;
}


static inline void store_group(float *y, const vf *acc, int cols) {
    if (cols == GROUP) {  // (a memcpy of variable size is a libc call: 5% of a 16-row step)
        for (int g = 0; g < NG; g++) storev(y + VL * g, acc[g]);
        return;
    }
    float tmp[GROUP];
    memcpy(tmp, acc, sizeof tmp);
    for (int c = 0; c < cols; c++) y[c] = tmp[c];
}

// ROWS rows of int16 activations v (row stride K; block scales s and sums xs, row stride K / 32) against
// one group's codes; y (row stride ldy) gets the group's first `cols` outputs
typedef void (*rows_fn)(int K, const int16_t *v, const float *s, const float *xs, const uint8_t *group, float *y,
                        int64_t ldy, int cols);

// linear_kquant.c: the function for `rows` rows (1..MAX_ROWS) of a K-quant format (GRID_Q4_K..GRID_Q6_K)
rows_fn kquant_rows(int format, int rows);

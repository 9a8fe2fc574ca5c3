// Native-width float32 vectors, what one register holds (AVX-512: 16 lanes, AVX2: 8, else 4), and the
// few operations the kernels need. (Wider-than-native GCC vectors are split into pairs but spilled
// around every operation: 16-lane code ran ~10x slower on AVX2 machines.) Every reduction here has a
// fixed order, so results depend only on the inputs, never on the batch or the thread that computes
// them; where a reduction folds lanes, its rounding depends on VL (each machine is deterministic).
#pragma once
#include <stdint.h>

#if defined(CHATSERVER_VL)  // a forced width: tests run the 16-lane code on AVX2 machines (split, slow)
#define VL CHATSERVER_VL
#elif defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint8_t vu8 __attribute__((vector_size(VL)));
typedef int8_t vs8 __attribute__((vector_size(VL)));

// lane indices 0, 1, ..., VL - 1
#if VL == 16
static const vf IOTA = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#elif VL == 8
static const vf IOTA = {0, 1, 2, 3, 4, 5, 6, 7};
#else
static const vf IOTA = {0, 1, 2, 3};
#endif

static inline vf loadf(const float *p) {
    vf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void storev(float *p, vf v) { __builtin_memcpy(p, &v, sizeof v); }

#if VL >= 8 && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#endif

// v, materialised in a register here, opaque to the optimiser. Two uses: (1) GCC otherwise folds a
// loaded vector into every multiply-add that uses it as a memory operand, which at 1-4 rows makes the
// matmuls bound by loads (linear.c: 12 loads per 8 FMAs at 4 rows, 1.3x slower than 5 rows); (2) with
// -fassociative-math it may rewrite a * (q * d) as (a * d) * q, which rounds differently (seen in the
// 4-lane build of linear_grid.c): a rebuilt weight must be exactly the float32 the model holds.
// in_register_int: the same for int32 lanes (linear_i16.c keeps each integer sum one chain with it).
#if (VL == 16 && !defined(__AVX512F__)) || (VL == 8 && !defined(__AVX__))
#define IN_REGISTER "+m"  // a width forced wider than the machine's (CHATSERVER_VL): several registers
#elif defined(__AVX512F__)
#define IN_REGISTER "+v"
#else
#define IN_REGISTER "+x"
#endif
static inline vf in_register(vf v) {
    __asm__("" : IN_REGISTER(v));
    return v;
}

static inline vi in_register_int(vi v) {
    __asm__("" : IN_REGISTER(v));
    return v;
}

// VL bytes widened to int32 lanes (zero- or sign-extended): one vpmovzxbd / vpmovsxbd
static inline vi load_u8(const uint8_t *p) {
#if VL == 16 && defined(__AVX512F__)
    return (vi)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif VL == 8 && defined(__AVX2__)
    return (vi)_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vu8 b;
    __builtin_memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vi);
#endif
}

static inline vi load_s8(const uint8_t *p) {
#if VL == 16 && defined(__AVX512F__)
    return (vi)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p));
#elif VL == 8 && defined(__AVX2__)
    return (vi)_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
#else
    vs8 b;
    __builtin_memcpy(&b, p, sizeof b);
    return __builtin_convertvector(b, vi);
#endif
}

// VL IEEE half values (at p) widened to float32 lanes (exact)
static inline vf load_halves(const void *p) {
#if VL == 16 && defined(__AVX512F__)
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif VL == 8 && defined(__F16C__)
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    vf v;
    for (int i = 0; i < VL; i++) {
        _Float16 h;
        __builtin_memcpy(&h, (const char *)p + 2 * i, 2);
        v[i] = (float)h;
    }
    return v;
#endif
}

// lanes of a where mask is set (-1), else of b
static inline vf selectv(vi mask, vf a, vf b) {
    vi ia, ib;
    __builtin_memcpy(&ia, &a, sizeof ia);
    __builtin_memcpy(&ib, &b, sizeof ib);
    vi r = (ia & mask) | (ib & ~mask);
    vf f;
    __builtin_memcpy(&f, &r, sizeof f);
    return f;
}

static inline vf vmaxv(vf a, vf b) { return selectv(a > b, a, b); }

// sum of the VL lanes: halves folded onto each other (VL/2, ..., 1), in registers where the machine has
// them (GCC's lane-array version stored the vector and reloaded overlapping parts: store-forwarding stalls)
static inline float sumv(vf v) {
#if (VL == 16 && defined(__AVX512F__)) || (VL == 8 && defined(__AVX__))
#if VL == 16
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256((__m512)v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd((__m512)v), 1)));
#else
    __m256 h = (__m256)v;
#endif
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));  // lanes 0, 1 += lanes 2, 3
    q = _mm_add_ss(q, _mm_movehdup_ps(q));   // lane 0 += lane 1
    return _mm_cvtss_f32(q);
#else
    float lanes[VL];
    __builtin_memcpy(lanes, &v, sizeof lanes);
    for (int w = VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) lanes[i] += lanes[i + w];
    return lanes[0];
#endif
}

static inline float maxv(vf v) {
    float lanes[VL];
    __builtin_memcpy(lanes, &v, sizeof lanes);
    float m = lanes[0];
    for (int i = 1; i < VL; i++) m = lanes[i] > m ? lanes[i] : m;
    return m;
}

// exp(x) lane-wise (Cephes' expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp);
// x < -87 gives 0, x > 88.3 gives exp(88.3) (~2.4e38, finite). Elementwise: a lane's value does not
// depend on the vector width.
static inline vf expv(vf x) {
    const vf zero = {0};
    vi tiny = x < -87.0f;
    x = selectv(tiny, zero - 87.0f, x);
    x = selectv(x > 88.3f, zero + 88.3f, x);
    vf fx = x * 1.44269504088896341f + 0.5f;
    vf fl = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
    fl = fl + __builtin_convertvector(fl > fx, vf);  // floor: the conversion truncates toward zero
    x = x - fl * 0.693359375f + fl * 2.12194440e-4f;
    vf y = x * 1.9875691500e-4f + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * x * x + x + 1.0f;
    vi bits = (__builtin_convertvector(fl, vi) + 127) << 23;  // 2^floor
    vf scale;
    __builtin_memcpy(&scale, &bits, sizeof scale);
    return selectv(tiny, zero, y * scale);
}

// 16-lane float32 vectors (one AVX-512 register; GCC splits them on narrower CPUs) and the few
// operations the kernels need. Every reduction here has a fixed order, so results depend only on
// the inputs, never on the batch or the thread that computes them.
#pragma once
#include <stdint.h>

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));

// Native-width vectors: what one register holds (AVX-512: 16 floats, AVX2: 8, else 4). GCC lowers
// v16 to pairs of registers without AVX-512 but spills them around every operation, so the matmul
// kernels, whose results do not depend on the lane count (each output is its own k-ordered sum),
// are written in these instead.
#if defined(__AVX512F__)
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

static inline vf loadf(const float *p) {
    vf v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline v16 load16(const float *p) {
    v16 v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

static inline void store16(float *p, v16 v) { __builtin_memcpy(p, &v, sizeof v); }

// sum of the 16 lanes: halves folded onto each other (8, 4, 2, 1)
static inline float sum16(v16 v) {
    float lanes[16];
    __builtin_memcpy(lanes, &v, sizeof lanes);
    for (int w = 8; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) lanes[i] += lanes[i + w];
    return lanes[0];
}

static inline float max16(v16 v) {
    float lanes[16];
    __builtin_memcpy(lanes, &v, sizeof lanes);
    float m = lanes[0];
    for (int i = 1; i < 16; i++) m = lanes[i] > m ? lanes[i] : m;
    return m;
}

static inline v16 as_float(v16i v) {
    v16 f;
    __builtin_memcpy(&f, &v, sizeof f);
    return f;
}

static inline v16i as_int(v16 v) {
    v16i i;
    __builtin_memcpy(&i, &v, sizeof i);
    return i;
}

// lanes of a where mask is set (-1), else of b
static inline v16 select16(v16i mask, v16 a, v16 b) { return as_float((as_int(a) & mask) | (as_int(b) & ~mask)); }

static inline v16 vmax16(v16 a, v16 b) { return select16(a > b, a, b); }

// exp(x) lane-wise (Cephes' expf: range reduction by ln 2, degree-6 polynomial; ~1 ulp);
// x < -87 gives 0, x > 88.3 gives exp(88.3) (~2.4e38, finite)
static inline v16 exp16(v16 x) {
    const v16 zero = {0};
    v16i tiny = x < -87.0f;
    x = select16(tiny, zero - 87.0f, x);
    x = select16(x > 88.3f, zero + 88.3f, x);
    v16 fx = x * 1.44269504088896341f + 0.5f;
    v16 fl = __builtin_convertvector(__builtin_convertvector(fx, v16i), v16);
    fl = fl + __builtin_convertvector(fl > fx, v16);  // floor: the conversion truncates toward zero
    x = x - fl * 0.693359375f + fl * 2.12194440e-4f;
    v16 y = x * 1.9875691500e-4f + 1.3981999507e-3f;
    y = y * x + 8.3334519073e-3f;
    y = y * x + 4.1665795894e-2f;
    y = y * x + 1.6666665459e-1f;
    y = y * x + 5.0000001201e-1f;
    y = y * x * x + x + 1.0f;
    y = y * as_float((__builtin_convertvector(fl, v16i) + 127) << 23);  // * 2^floor
    return as_float(as_int(y) & ~tiny);
}

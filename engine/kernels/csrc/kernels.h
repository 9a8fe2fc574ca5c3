// The kernels' C entry points (each in its own file), for engine/csrc/layers.c which chains them.
#pragma once
#include <stdint.h>

int linear_packed_f32(int M, int N, int K, const float *x, const float *Wp, float *y);
int linear_grid_f32(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y);
int linear_i16_tiles(int use);
int linear_grid_i16(int format, int M, int N, int K, const float *x, const uint8_t *Wp, float *y);
int linear_packed_bf16(int M, int N, int K, const float *x, const uint16_t *Wp, float *y);
int add_rms_norm_f32(int T, int H, float eps, float *hidden, const float *delta, const float *weight, float *out);
int rotary_qkv_f32(int T, int Hq, int Hkv, int D, const float *qkv, const float *cos, const float *sin, float *q,
                   float *k, float *v);
int silu_mul_f32(int T, int I, const float *gate_up, float *out);
int ragged_attention_f32(int B, int Hq, int Hkv, int D, int layer, float scale, const float *q, const float *k_new,
                         const float *v_new, float *out, int kv_half, void *const *bases, const int64_t *caps,
                         const int64_t *starts, const int64_t *rows, const int64_t *offsets,
                         const void *const *pbases, const int64_t *pcaps, const int64_t *plens);

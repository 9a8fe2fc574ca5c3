// engine/csrc/linear_amx.c: linear_i16.c's integer products for 16 rows at a time on AMX-INT8 tiles.
#pragma once
#include <stdint.h>

#define AMX_Q4_BYTES 320  // one block of one group, linear_i16.c's layouts
#define AMX_Q8_BYTES 544
#define AMX_B_BYTES 512   // one block of one group as a B tile (8 rows of 16 columns x 4 k)

int amx_ready(void);  // 1 when the process may use AMX-INT8 tiles (asks Linux once); 0 without AMX
void amx_begin(void);  // configures this thread's tiles; amx_end releases them
void amx_end(void);
// a group's codes (K / 32 blocks) rewritten as B tiles: out [K / 32][AMX_B_BYTES]
void amx_convert(int format, int K, const uint8_t *group, uint8_t *out);
// y[16, 16 ngroups] (row stride ldy; cols[g] columns of group g) for 16 rows of activations split as
// v = 256 hi + lo (lo, hi [16, K], row stride K; s, xs [16, K / 32]) against ngroups (1, 2) consecutive
// groups and their converted codes: linear_i16.c's results, bit for bit
void amx_rows16(int format, int K, const uint8_t *lo, const int8_t *hi, const float *s, const float *xs,
                const uint8_t *const *groups, const uint8_t *const *converted, int ngroups, float *y, int64_t ldy,
                const int *cols);

// linear_amx.c, for linear_i16.c: its Q4_1 products for 16 rows at a time on AMX tiles. Codes in linear_i16.c's
// groups (Q4_GROUP_BYTES a block, common.h).
#pragma once
#include <stdint.h>

#include "common.h"

#define AMX_B_BYTES 1024  // one block of one group as a B tile

int amx_ready(void);   // 1 when the process may use AMX tiles (asks Linux once); 0 without AMX
void amx_begin(void);  // configures this thread's tiles; amx_end releases them
void amx_end(void);
// a Q4_1 group's codes (K / 32 blocks) rewritten as B tiles: out [K / 32][AMX_B_BYTES]
void amx_convert(int K, const uint8_t *group, uint8_t *out);
// y[16, 16 ngroups] (row stride ldy; cols[g] columns of group g) for 16 rows of activations v = 256 hi + lo
// given as bfloat16 planes of 256 hi and lo ([16, K] each, row stride K; s, xs [16, K / 32]) against
// ngroups (1 to 3) consecutive groups and their converted codes: linear_i16.c's results, bit for bit
void amx_rows(int K, const uint16_t *hi, const uint16_t *lo, const float *s, const float *xs, const uint8_t *const *groups,
              const uint8_t *const *converted, int ngroups, float *y, int64_t ldy, const int *cols);

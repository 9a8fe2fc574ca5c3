// Layout constants and small helpers shared by the kernels. The constants are the only definition, for C
// and Python alike: engine/kernels/bindings.py reads every `#define NAME <integer>` of this file, and
// engine/kernels/grid.py and linear.py pack weights with those values.
#pragma once
#include <stdint.h>
#include <stdlib.h>

// Packed weight matrices W [N outputs, K inputs]
#define PANEL 64  // output columns per panel: linear.c (float32), linear_bf16.c, linear_grid.c
#define BLOCK 32  // inputs per quantization block (GGUF Q4_1 / Q8_0): linear_grid.c, linear_i16.c
#define SUPER 256  // inputs per super-block of the GGUF K-quants (Q4_K, Q5_K, Q6_K): linear_kquant.c
#define GROUP 16  // output columns per group: linear_i16.c, linear_amx.c

// Grid formats: the `format` argument of linear_grid_f32 (Q4_1, Q8_0) and linear_grid_i16 (all)
#define GRID_Q4_1 0
#define GRID_Q8_0 1
#define GRID_Q4_K 2
#define GRID_Q5_K 3
#define GRID_Q6_K 4
#define GRID_Q5_1 5  // linear_grid_i16 only: Q5_0 (as m = -16 d) and Q5_1
#define GRID_INT16 8  // added to a format in layers.c's struct matrix: those codes go to linear_grid_i16

// Bytes of one block of 32 inputs: of a panel (linear_grid.c's layout) and of a group (linear_i16.c's)
#define Q4_PANEL_BYTES (2 * PANEL * 2 + BLOCK * PANEL / 2)  // d[64], m[64] f16, 32 k x 32 nibble pairs
#define Q8_PANEL_BYTES (PANEL * 2 + BLOCK * PANEL)          // d[64] f16, 32 k x 64 int8
#define Q4_GROUP_BYTES (4 * GROUP + BLOCK * GROUP / 2)      // d[16], m[16] f16, 8 k quads x 32 bytes
#define Q8_GROUP_BYTES (2 * GROUP + BLOCK * GROUP)          // d[16] f16, 16 k pairs x 32 int8
#define Q5_GROUP_BYTES (4 * GROUP + BLOCK * GROUP / 2 + BLOCK * GROUP / 8)  // Q4_1's + 2 rows of fifth bits

// Bytes of one super-block of 256 inputs of a group of 16 outputs (linear_kquant.c's layout): a head of
// scales, then the codes of its 8 blocks of 32 inputs
#define Q4K_HEAD_BYTES (4 * GROUP + 16 * GROUP)  // d[16], -dmin[16] f16, sc[8][16], mn[8][16] uint8
#define Q6K_HEAD_BYTES (2 * GROUP + 16 * GROUP)  // d[16] f16, sc[16][16] int8 (per 16 inputs)
#define Q4K_GROUP_BYTES (Q4K_HEAD_BYTES + 8 * (BLOCK * GROUP / 2))  // codes as Q4_1's: 8 k quads x 32 bytes
#define Q5K_GROUP_BYTES (Q4K_HEAD_BYTES + 8 * (BLOCK * GROUP))      // codes as Q8_0's (uint8 0..31)
#define Q6K_GROUP_BYTES (Q6K_HEAD_BYTES + 8 * (BLOCK * GROUP * 3 / 4))  // Q4_1's nibbles + 4 rows of 2 high bits

// Work items of a matmul parallel over output panels (pool_run's items): one per PANEL outputs of N
#define NUM_PANELS(N) (((N) + PANEL - 1) / PANEL)

// The output columns of panel p (p * PANEL .. p * PANEL + PANEL - 1) in runs of `width` (a divisor of PANEL):
// run i covers outputs c0 .. c0 + cols - 1, with cols = width except where the matrix's N outputs end;
// runs wholly past N are not visited. The loop variables i, c0, cols are declared by the macro.
#define FOR_PANEL_RUNS(p, N, width, i, c0, cols) \
    for (int i = 0, c0 = (p) * PANEL, cols;      \
         i * (width) < PANEL && (cols = (N) - c0 < (width) ? (N) - c0 : (width)) > 0; i++, c0 += (width))

// A buffer kept between calls: `static` for the engine thread's, `static __thread` for one per pool thread.
struct scratch {
    void *data;    // 64-byte aligned
    size_t bytes;  // what data holds (0: nothing)
};

// Makes s hold at least `bytes` (reallocated when it holds fewer; contents are not kept). 0, or 1 when out
// of memory (s is then empty).
static inline int reserve(struct scratch *s, size_t bytes) {
    if (s->bytes >= bytes) return 0;
    free(s->data);
    s->data = aligned_alloc(64, (bytes + 63) / 64 * 64);
    s->bytes = s->data ? bytes : 0;
    return s->data == NULL;
}

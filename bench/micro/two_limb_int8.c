// Scratch microbenchmark for the next kernel (not used by the engine): one row of activations against a
// 3072 x 576 Q4_1 matrix (SmolLM2's gate/up), single thread, weights cached, AVX2. Two ways:
//   float  - what linear_grid.c does today: each weight rebuilt as float32 q * d + m, then one FMA
//   int8x2 - activations as two int8 limbs per block of 32 (x = s * (xh + xl / 128)), vpmaddubsw of the
//            4-bit codes against each limb, int16 sums, one float FMA per block and column
// The second is what bench/agreement.py --activations emulates as "two int8 limbs" (60/60 answers).
// Build and run: gcc -O3 -march=native -o /tmp/two_limb bench/micro/two_limb_int8.c && /tmp/two_limb
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define N 3072
#define K 576
#define B (K/32)
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
uint8_t *codes; // per (group of 8 cols, block): 4 x 32 bytes: load j holds quads 2j (low nibbles) and 2j+1 (high): lane = col, byte = k in quad
float *dsc, *msc; int8_t xh[K], xl[K]; float xs[B], xsum[B]; float y[N];
static void run(void){
  const __m256i lo = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  for (int g0 = 0; g0 < N/8; g0 += 4) {           // 4 groups of 8 columns (32 columns) per pass
    __m256 acc[4] = {0};
    for (int b = 0; b < B; b++) {
      __m256i ah[4] = {0}, al[4] = {0};
      for (int q = 0; q < 8; q++) {                // k quads of the block
        __m256i bh = _mm256_set1_epi32(*(const int32_t *)(xh + b*32 + 4*q));
        __m256i bl = _mm256_set1_epi32(*(const int32_t *)(xl + b*32 + 4*q));
        for (int g = 0; g < 4; g++) {
          __m256i v = _mm256_loadu_si256((const __m256i *)(codes + ((int64_t)(g0+g)*B + b)*128 + (q/2)*32));
          __m256i w = (q & 1) ? _mm256_and_si256(_mm256_srli_epi16(v, 4), lo) : _mm256_and_si256(v, lo);
          ah[g] = _mm256_add_epi16(ah[g], _mm256_maddubs_epi16(w, bh));
          al[g] = _mm256_add_epi16(al[g], _mm256_maddubs_epi16(w, bl));
        }
      }
      for (int g = 0; g < 4; g++) {
        __m256i dot = _mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(ah[g], ones), 7), _mm256_madd_epi16(al[g], ones));
        __m256 d = _mm256_loadu_ps(dsc + ((int64_t)(g0+g)*B + b)*8), m = _mm256_loadu_ps(msc + ((int64_t)(g0+g)*B + b)*8);
        acc[g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(d, _mm256_set1_ps(xs[b])), acc[g]);
        acc[g] = _mm256_fmadd_ps(m, _mm256_set1_ps(xsum[b]), acc[g]);
      }
    }
    for (int g = 0; g < 4; g++) _mm256_storeu_ps(y + (g0+g)*8, acc[g]);
  }
}
static uint8_t *fcodes; static _Float16 *fd, *fm;  // linear_grid.c's Q4_1 panel layout, 64 columns
static void run_float(void) {
  for (int p = 0; p < N/64; p++) {
    __m256 acc[8] = {0};
    for (int b = 0; b < B; b++) {
      const uint8_t *blk = fcodes + ((int64_t)p*B + b)*1024;
      __m256 d[8], m[8];
      for (int j = 0; j < 8; j++) { d[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(fd + ((int64_t)p*B + b)*64 + 8*j)));
                                    m[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(fm + ((int64_t)p*B + b)*64 + 8*j))); }
      for (int kk = 0; kk < 32; kk++) {
        __m256 a = _mm256_set1_ps((float)xh[b*32 + kk]);
        for (int j = 0; j < 8; j++) {
          __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + kk*32 + (8*j)%32)));
          q = j < 4 ? _mm256_and_si256(q, _mm256_set1_epi32(15)) : _mm256_srli_epi32(q, 4);
          acc[j] = _mm256_fmadd_ps(a, _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), d[j], m[j]), acc[j]);
        }
      }
    }
    for (int j = 0; j < 8; j++) _mm256_storeu_ps(y + p*64 + 8*j, acc[j]);
  }
}

int main(){
  codes = aligned_alloc(64, (size_t)N/8*B*128); dsc = aligned_alloc(64, sizeof(float)*N*B); msc = aligned_alloc(64, sizeof(float)*N*B);
  for (size_t i = 0; i < (size_t)N/8*B*128; i++) codes[i] = rand();
  for (int i = 0; i < N*B; i++) { dsc[i] = 1e-3f*(rand()%100); msc[i] = -1e-3f*(rand()%100); }
  for (int k = 0; k < K; k++) { xh[k] = rand()%255-127; xl[k] = rand()%129-64; }
  for (int b = 0; b < B; b++) { xs[b] = 0.01f; xsum[b] = 1.0f; }
  fcodes = aligned_alloc(64, (size_t)N/64*B*1024); fd = aligned_alloc(64, 2*(size_t)N*B); fm = aligned_alloc(64, 2*(size_t)N*B);
  for (size_t i = 0; i < (size_t)N/64*B*1024; i++) fcodes[i] = rand();
  for (int i = 0; i < N*B; i++) { fd[i] = (_Float16)(1e-3f*(rand()%100)); fm[i] = (_Float16)(-1e-3f*(rand()%100)); }
  double best[2] = {1e9, 1e9};  // interleaved, best of 7 rounds of 300 calls each
  for (int r = 0; r < 7; r++)
    for (int w = 0; w < 2; w++) {
      double t0 = now();
      for (int i = 0; i < 300; i++) w ? run() : run_float();
      double t = (now() - t0) / 300;
      if (t < best[w]) best[w] = t;
    }
  printf("| kernel | ms per 3072 x 576 | ns per 8 weights |\n|---|---:|---:|\n");
  printf("| float rebuild (today) | %.3f | %.2f |\n| two int8 limbs | %.3f | %.2f |\nratio %.2fx\n", best[0]*1e3,
         best[0]*1e9/(N*K/8.0), best[1]*1e3, best[1]*1e9/(N*K/8.0), best[0]/best[1]);
}

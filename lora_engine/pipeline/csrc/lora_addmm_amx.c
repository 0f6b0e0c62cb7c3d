/* out = bf16(orig + alpha * (b @ a)) in ONE pass over the weight, for bfloat16 weights on x86 CPUs with AMX.
 *
 * What this is for: the swap's inner operation on CPU bf16 weights (lora_engine/torch_cpu_kernel.py loads it
 * with ctypes). torch's CPU `addmm(orig, b, a, out=w)` copies `orig` into `w` and then adds `b @ a` in place:
 * two passes over the weight (2.2-2.5x a plain copy of the touched weights on full-size SDXL shapes). Here
 * each 16 x 32 block of the product is computed in AMX tiles, added to the block of `orig` in registers and
 * written to `out` once, with non-temporal stores of whole cache lines (nothing reads the weight again until
 * the next denoising step, so there is no point pulling its lines into the cache first).
 *
 * What it is not: a general GEMM (the inner dimension is a LoRA rank, 1..128), or anything for fp32/fp16
 * weights or accelerators: those keep torch's addmm.
 *
 * Arithmetic: the products of bf16 factors are exact in fp32 and summed in fp32 by the tile unit; then
 * `orig + alpha * sum` is one fused multiply-add in fp32, rounded to bf16 once (round to nearest even).
 * The result depends only on the inputs, so writing an adapter twice gives identical weights; `out` may be
 * `orig` itself (a layer at its original value is updated in place by the same arithmetic).
 * Subnormal numbers (below 1.2e-38) count as zero, as the tile unit and vcvtneps2bf16 treat them: factors
 * and sums that small are read as zero and results that small are written as zero, in the scalar code for
 * the leftover rows and columns too, so every position follows the same rules.
 */
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define KT_MAX 32 /* bf16 elements of the inner dimension one tile row holds (64 bytes) */
#define R_MAX 128 /* ranks up to 4 tiles deep; larger ones are left to torch */

typedef struct {
  uint8_t palette_id, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tile_config;

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static inline float flush(float f) { /* a subnormal becomes a zero of the same sign */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7F800000u) == 0) u &= 0x80000000u;
  memcpy(&f, &u, 4);
  return f;
}
static inline uint16_t f32_to_bf16(float f) { /* like vcvtneps2bf16: flush, round to nearest even (no NaN here) */
  uint32_t u;
  f = flush(f);
  memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static inline __m512 load_bf16(const uint16_t *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }
static inline size_t round64(size_t n) { return (n + 63) / 64 * 64 + 64; }

/* 1 when this CPU has AMX-BF16 and AVX512-BF16 and the kernel granted this process the tile state. */
int lw_available(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const int amx = ((d >> 22) & 1) && ((d >> 24) & 1), avx512f = (b >> 16) & 1;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
  const int avx512bf16 = (a >> 5) & 1;
  if (!(amx && avx512f && avx512bf16)) return 0;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

/* out[m,n] = bf16(orig[m,n] + alpha * (b[m,r] @ a[r,n])); all bf16, row-major, contiguous.
 * Returns 0 on success, 1 for a rank outside 1..R_MAX, 2 when scratch memory cannot be allocated.
 * Call lw_available() once first. */
int lw_addmm_bf16(uint16_t *out, const uint16_t *orig, const uint16_t *b, const uint16_t *a, int64_t m, int64_t n,
                  int64_t r, float alpha, int nthreads) {
  if (r < 1 || r > R_MAX) return 1;
  int64_t kpad = (r + 1) & ~(int64_t)1; /* tiles take the inner dimension in pairs */
  if (kpad > KT_MAX) kpad = (kpad + KT_MAX - 1) / KT_MAX * KT_MAX;
  const int64_t kt = kpad < KT_MAX ? kpad : KT_MAX, ktiles = kpad / kt;
  const int64_t mb = m / 16, nb = n / 16;
  uint16_t *bp = (uint16_t *)aligned_alloc(64, round64((size_t)(mb * 16 * kpad * 2)));
  uint16_t *ap = (uint16_t *)aligned_alloc(64, round64((size_t)(nb * kpad * 16 * 2)));
  if (!bp || !ap) {
    free(bp);
    free(ap);
    return 2;
  }
  const int stream = (((uintptr_t)out & 63) == 0) && ((n * 2) % 64 == 0);
#pragma omp parallel num_threads(nthreads)
  {
    /* b's rows padded to kpad; a packed per 16 columns in pairs of rows ("VNNI"): [n/16][kpad/2][16][2] */
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < mb * 16; i++)
      for (int64_t k = 0; k < kpad; k++) bp[i * kpad + k] = k < r ? b[i * r + k] : 0;
#pragma omp for schedule(static)
    for (int64_t jb = 0; jb < nb; jb++)
      for (int64_t p = 0; p < kpad / 2; p++)
        for (int64_t c = 0; c < 16; c++) {
          uint16_t *q = ap + ((jb * (kpad / 2) + p) * 16 + c) * 2;
          q[0] = 2 * p < r ? a[(2 * p) * n + jb * 16 + c] : 0;
          q[1] = 2 * p + 1 < r ? a[(2 * p + 1) * n + jb * 16 + c] : 0;
        }

    tile_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    cfg.rows[0] = 16, cfg.colsb[0] = 64;                  /* C, left:  16 x 16 fp32 */
    cfg.rows[3] = 16, cfg.colsb[3] = 64;                  /* C, right: 16 x 16 fp32 */
    cfg.rows[1] = 16, cfg.colsb[1] = (uint16_t)(kt * 2);  /* 16 rows of b, kt deep */
    cfg.rows[2] = (uint8_t)(kt / 2), cfg.colsb[2] = 64;   /* packed a, left 16 columns */
    cfg.rows[4] = (uint8_t)(kt / 2), cfg.colsb[4] = 64;   /* packed a, right 16 columns */
    _tile_loadconfig(&cfg);
    float acc[16 * 32] __attribute__((aligned(64)));
    const __m512 va = _mm512_set1_ps(alpha);
#pragma omp for schedule(static) nowait
    for (int64_t ib = 0; ib < mb; ib++) {
      const uint16_t *brow = bp + ib * 16 * kpad;
      int64_t jb = 0;
      for (; jb + 2 <= nb; jb += 2) { /* 16 x 32: each output row is one whole 64-byte line */
        _tile_zero(0);
        _tile_zero(3);
        for (int64_t t = 0; t < ktiles; t++) {
          _tile_loadd(1, brow + t * kt, kpad * 2);
          _tile_loadd(2, ap + (jb * (kpad / 2) + t * kt / 2) * 32, 64);
          _tile_loadd(4, ap + ((jb + 1) * (kpad / 2) + t * kt / 2) * 32, 64);
          _tile_dpbf16ps(0, 1, 2);
          _tile_dpbf16ps(3, 1, 4);
        }
        _tile_stored(0, acc, 128);
        _tile_stored(3, acc + 16, 128);
        for (int rr = 0; rr < 16; rr++) {
          const int64_t off = (ib * 16 + rr) * n + jb * 16;
          const __m512 lo = _mm512_fmadd_ps(va, _mm512_load_ps(acc + 32 * rr), load_bf16(orig + off));
          const __m512 hi = _mm512_fmadd_ps(va, _mm512_load_ps(acc + 32 * rr + 16), load_bf16(orig + off + 16));
          const __m512i line = _mm512_inserti64x4(_mm512_castsi256_si512(to_bf16(lo)), to_bf16(hi), 1);
          if (stream)
            _mm512_stream_si512((__m512i *)(out + off), line);
          else
            _mm512_storeu_si512(out + off, line);
        }
      }
      if (jb < nb) { /* an odd last block of 16 columns */
        _tile_zero(0);
        for (int64_t t = 0; t < ktiles; t++) {
          _tile_loadd(1, brow + t * kt, kpad * 2);
          _tile_loadd(2, ap + (jb * (kpad / 2) + t * kt / 2) * 32, 64);
          _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, acc, 64);
        for (int rr = 0; rr < 16; rr++) {
          const int64_t off = (ib * 16 + rr) * n + jb * 16;
          _mm256_storeu_si256((__m256i *)(out + off),
                              to_bf16(_mm512_fmadd_ps(va, _mm512_load_ps(acc + 16 * rr), load_bf16(orig + off))));
        }
      }
    }
    _tile_release();
    _mm_sfence(); /* non-temporal stores are visible before the caller goes on */

    /* what the 16 x 16 blocks leave over: the last m % 16 rows, the last n % 16 columns (scalar, fp32) */
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; i++) {
      for (int64_t j = i < mb * 16 ? nb * 16 : 0; j < n; j++) {
        float sum = 0.f;
        for (int64_t k = 0; k < r; k++)
          sum = flush(sum + flush(bf16_to_f32(b[i * r + k])) * flush(bf16_to_f32(a[k * n + j])));
        out[i * n + j] = f32_to_bf16(__builtin_fmaf(alpha, sum, bf16_to_f32(orig[i * n + j])));
      }
    }
  }
  free(bp);
  free(ap);
  return 0;
}

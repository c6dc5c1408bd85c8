// A BLIS-style single-threaded sgemm with fused epilogues (formats/kernels.md).
//
// Blocking: columns of B in blocks of NC, K in blocks of at most KC (split evenly), rows of A in
// blocks of MC. Each (KC x NC) block of B is packed into NR-wide column panels (zero-padded at
// the right edge) that stay in L1 while the MR x NR micro-kernel walks down the rows of A, which
// it reads in place through a row stride and a column stride (so A or its transpose; no packing:
// at batch 1 the weights are the large operand and each is used once). The micro-kernel keeps its
// tile in registers over the K block and writes it to a small aligned tile; the epilogue applies
// partial sums, bias, GELU or the residual to the valid part of that tile.
//
// Two micro-kernels, chosen at run time: AVX-512 (6 x 32, 12 zmm accumulators) and AVX2 + FMA
// (6 x 16, 12 ymm accumulators).

#include "CKernels.h"
#include "internal.h"
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <pthread.h>

#define MR 6
#define NR_MAX 32
#define MC 96
#define NC 2048

static int isa = -1;   // 0: none, 1: AVX2 + FMA, 2: AVX-512F

static int detect(void) {
    if (isa < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        isa = avx2 ? (__builtin_cpu_supports("avx512f") ? 2 : 1) : 0;
    }
    return isa;
}

int lc_sgemm_available(void) { return detect() > 0; }

int lc_sgemm_isa(void) { return detect(); }

void lc_sgemm_force_isa(int level) {
    if (level < 0) { isa = -1; detect(); return; }   /* back to what the CPU has */
    detect();
    if (level <= isa) isa = level;
}

// dst[i][j] = src[j][i] for an 8 x 8 block (row strides ss and ds): 8 rows of 8 loaded and
// transposed in registers.
__attribute__((target("avx2,fma")))
static inline void transpose8x8(const float *src, long ss, float *dst, long ds) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ss);
    __m256 r2 = _mm256_loadu_ps(src + 2 * ss), r3 = _mm256_loadu_ps(src + 3 * ss);
    __m256 r4 = _mm256_loadu_ps(src + 4 * ss), r5 = _mm256_loadu_ps(src + 5 * ss);
    __m256 r6 = _mm256_loadu_ps(src + 6 * ss), r7 = _mm256_loadu_ps(src + 7 * ss);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + ds, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ds, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ds, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ds, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ds, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ds, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ds, _mm256_permute2f128_ps(s3, s7, 0x31));
}

int lc_transpose_columns(const float *w, int rows, int columns, int c0, int c1, float *wt) {
    if (detect() == 0) return 0;
    // 32-row blocks down the band, 8 x 8 blocks inside; edges element by element.
    for (int r0 = 0; r0 < rows; r0 += 32) {
        int r1 = r0 + 32 < rows ? r0 + 32 : rows;
        int c = c0;
        for (; c + 8 <= c1; c += 8) {
            int r = r0;
            for (; r + 8 <= r1; r += 8) transpose8x8(w + (long)r * columns + c, columns, wt + (long)c * rows + r, rows);
            for (; r < r1; r++) for (int i = 0; i < 8; i++) wt[(long)(c + i) * rows + r] = w[(long)r * columns + c + i];
        }
        for (; c < c1; c++) for (int r = r0; r < r1; r++) wt[(long)c * rows + r] = w[(long)r * columns + c];
    }
    return 1;
}

// Packs B[pc.., jc..] (kc x nc, element (p, j) at b[p*rsb + j*csb]) into nr-wide panels.
__attribute__((target("avx2,fma")))
static void pack_b(int kc, int nc, int nr, const float *b, long rsb, long csb, float *packed) {
    for (int j = 0; j < nc; j += nr) {
        int w = nc - j < nr ? nc - j : nr;
        float *dst = packed + (long)j * kc;
        if (csb == 1 && w == nr) {
            const float *src = b + (long)j;
            for (int p = 0; p < kc; p++) {
                for (int q = 0; q < nr; q += 8) _mm256_store_ps(dst + q, _mm256_loadu_ps(src + q));
                src += rsb; dst += nr;
            }
        } else if (csb == 1) {
            const float *src = b + (long)j;
            for (int p = 0; p < kc; p++) {
                int q = 0;
                for (; q < w; q++) dst[q] = src[q];
                for (; q < nr; q++) dst[q] = 0;
                src += rsb; dst += nr;
            }
        } else if (rsb == 1) {
            // B transposed, each column contiguous along K (training's weight gradients): 8 x 8
            // blocks, 8 columns' runs of 8 loaded and transposed in registers, stored as 8 rows
            // of the panel (element by element, the panel was written 4 bytes at a time, a cache
            // line apart).
            int q = 0;
            for (; q + 8 <= w; q += 8) {
                const float *src = b + (long)(j + q) * csb;
                int p = 0;
                for (; p + 8 <= kc; p += 8) transpose8x8(src + p, csb, dst + (long)p * nr + q, nr);
                for (; p < kc; p++) for (int i = 0; i < 8; i++) dst[(long)p * nr + q + i] = src[(long)i * csb + p];
            }
            for (; q < nr; q++) {
                if (q < w) {
                    const float *src = b + (long)(j + q) * csb;
                    for (int p = 0; p < kc; p++) dst[(long)p * nr + q] = src[p];
                } else {
                    for (int p = 0; p < kc; p++) dst[(long)p * nr + q] = 0;
                }
            }
        } else {
            // B transposed (column stride > 1): read each column's run along K once.
            for (int q = 0; q < nr; q++) {
                if (q < w) {
                    const float *src = b + (long)(j + q) * csb;
                    for (int p = 0; p < kc; p++) dst[(long)p * nr + q] = src[(long)p * rsb];
                } else {
                    for (int p = 0; p < kc; p++) dst[(long)p * nr + q] = 0;
                }
            }
        }
    }
}

// erf(x) by the rational approximation of Kernels.erf8 (x P(x^2) / Q(x^2) on [-4, 4]) with
// fused multiply-adds, and 1 / Q by three Newton steps from an exponent-trick guess instead of
// a division (the division alone cost about as much as the rest of the GELU: a 16-wide vdivps
// issues once per 10 cycles or so). Q lies in [-2.40, -0.0142] on [-4, 4], where the guess is
// within 12.5% and three steps leave at most 2 ulp (checked over every float of the range).
// The 8- and 16-wide versions are the same operations, lane for lane (the same bits); against
// the Swift loop (mul, add, divide) they differ by a few ulp.
static const float erf_p[7] = {-2.72614225801306e-10f, 2.77068142495902e-08f, -2.10102402082508e-06f, -5.69250639462346e-05f,
                               -7.34990630326855e-04f, -2.95459980854025e-03f, -1.60960333262415e-02f};
static const float erf_q[5] = {-1.45660718464996e-05f, -2.13374055278905e-04f, -1.68282697438203e-03f, -7.37332916720468e-03f,
                               -1.42647390514189e-02f};
#define RECIP_MAGIC 0x7EF311C3

__attribute__((target("avx512f")))
static inline __m512 erf16(__m512 x) {
    x = _mm512_min_ps(x, _mm512_set1_ps(4.0f));
    x = _mm512_max_ps(x, _mm512_set1_ps(-4.0f));
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(erf_p[0]), q = _mm512_set1_ps(erf_q[0]);
    for (int i = 1; i < 7; i++) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(erf_p[i]));
    for (int i = 1; i < 5; i++) q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(erf_q[i]));
    __m512 a = _mm512_sub_ps(_mm512_setzero_ps(), q);   // |Q|
    __m512 r = _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_set1_epi32(RECIP_MAGIC), _mm512_castps_si512(a)));
    for (int i = 0; i < 3; i++) r = _mm512_mul_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(2.0f)));
    return _mm512_mul_ps(_mm512_mul_ps(x, p), _mm512_sub_ps(_mm512_setzero_ps(), r));
}

__attribute__((target("avx2,fma")))
static inline __m256 erf8(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(4.0f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-4.0f));
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(erf_p[0]), q = _mm256_set1_ps(erf_q[0]);
    for (int i = 1; i < 7; i++) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(erf_p[i]));
    for (int i = 1; i < 5; i++) q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(erf_q[i]));
    __m256 a = _mm256_sub_ps(_mm256_setzero_ps(), q);
    __m256 r = _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32(RECIP_MAGIC), _mm256_castps_si256(a)));
    for (int i = 0; i < 3; i++) r = _mm256_mul_ps(r, _mm256_fnmadd_ps(a, r, _mm256_set1_ps(2.0f)));
    return _mm256_mul_ps(_mm256_mul_ps(x, p), _mm256_sub_ps(_mm256_setzero_ps(), r));
}

// gelu(v) = h + h erf(v / sqrt 2) with h = v / 2 (one fused multiply-add).
__attribute__((target("avx512f")))
static inline __m512 gelu16(__m512 v) {
    __m512 erf = erf16(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)));
    __m512 h = _mm512_mul_ps(_mm512_set1_ps(0.5f), v);
    return _mm512_fmadd_ps(h, erf, h);
}

__attribute__((target("avx2,fma")))
static inline __m256 gelu8(__m256 v) {
    __m256 erf = erf8(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)));
    __m256 h = _mm256_mul_ps(_mm256_set1_ps(0.5f), v);
    return _mm256_fmadd_ps(h, erf, h);
}

__attribute__((target("avx512f")))
static inline __m512 exp16(__m512 xin) {
    __m512 x = _mm512_min_ps(xin, _mm512_set1_ps(88.0f));
    __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 magic = _mm512_set1_ps(12582912.0f);
    __m512 t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), magic);
    __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_add_ps(_mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f))),
                             _mm512_mul_ps(n, _mm512_set1_ps(2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    __m512 er = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r), _mm512_set1_ps(1.0f));
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000)),
                                                      _mm512_set1_epi32(127)), 23);
    __m512 out = _mm512_mul_ps(er, _mm512_castsi512_ps(bits));
    return _mm512_mask_mov_ps(out, tiny, _mm512_setzero_ps());
}

__attribute__((target("avx512f")))
static inline __m512 gelu_derivative16(__m512 v) {
    __m512 erf = erf16(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752f)));
    __m512 cdf = _mm512_mul_ps(_mm512_set1_ps(0.5f), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
    __m512 e = exp16(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(-0.5f), v), v));
    return _mm512_add_ps(cdf, _mm512_mul_ps(_mm512_mul_ps(v, e), _mm512_set1_ps(0.3989422804014327f)));
}

// out[q] = v[q] * gelu'(h[q]) for q < n (the GELU_GRAD epilogue of an edge tile's row).
__attribute__((target("avx512f"), noinline))
static void gelu_grad_row(const float *v, const float *h, float *out, int n) {
    for (int q = 0; q < n; q += 16) {
        __mmask16 mk = n - q >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - q)) - 1);
        __m512 d = gelu_derivative16(_mm512_maskz_loadu_ps(mk, h + q));
        _mm512_mask_storeu_ps(out + q, mk, _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, v + q), d));
    }
}

// The epilogue of one row of a full 6 x 32 tile straight from its two accumulators: the same
// arithmetic as `epilogue` below (which serves edge tiles), 16 wide. cr: the row in C at the
// tile's first column; dr: the same place in D (RESIDUAL).
__attribute__((target("avx512f"), always_inline))
static inline void finish_row512(__m512 v0, __m512 v1, int row, float *cr, float *dr, const lc_epilogue *e, int addC, int last) {
    if (addC) { v0 = _mm512_add_ps(_mm512_loadu_ps(cr), v0); v1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), v1); }
    if (last) {
        if (e->bias) { __m512 b = _mm512_set1_ps(e->bias[row]); v0 = _mm512_add_ps(v0, b); v1 = _mm512_add_ps(v1, b); }
        if (e->kind == LC_EPILOGUE_BIAS_GELU) { v0 = gelu16(v0); v1 = gelu16(v1); }
        if (e->kind == LC_EPILOGUE_BIAS_GELU_KEEP) {
            _mm512_storeu_ps(dr, gelu16(v0)); _mm512_storeu_ps(dr + 16, gelu16(v1));
        }
        if (e->kind == LC_EPILOGUE_GELU_GRAD) {
            v0 = _mm512_mul_ps(v0, gelu_derivative16(_mm512_loadu_ps(dr)));
            v1 = _mm512_mul_ps(v1, gelu_derivative16(_mm512_loadu_ps(dr + 16)));
        }
        if (e->kind == LC_EPILOGUE_RESIDUAL) {
            __m512 sc = _mm512_set1_ps(e->scale[row]);
            _mm512_storeu_ps(dr, _mm512_add_ps(_mm512_loadu_ps(dr), _mm512_mul_ps(sc, v0)));
            _mm512_storeu_ps(dr + 16, _mm512_add_ps(_mm512_loadu_ps(dr + 16), _mm512_mul_ps(sc, v1)));
            return;
        }
    }
    _mm512_storeu_ps(cr, v0); _mm512_storeu_ps(cr + 16, v1);
}

// The same for qgemm.c (inlined here, where the kernel finishes its tiles from registers).
__attribute__((target("avx512f")))
void lc_finish_row512(__m512 v0, __m512 v1, int row, float *cr, float *dr, const lc_epilogue *e, int addC, int last) {
    finish_row512(v0, v1, row, cr, dr, e, addC, last);
}

// tile[MR][16] = A[rows (clamped to mr)][0..kc) * panel[kc][16]; A element (i, p) at a[i*rsa + p*csa].
// pf, when given: 6 * kc floats to prefetch while the tile runs (the next tile's rows).
__attribute__((target("avx2,fma")))
static void kernel_avx2(int kc, int mr, const float *a, long rsa, long csa, const float *bp, float *tile, const float *pf) {
    const float *a0 = a, *a1 = a + (mr > 1 ? rsa : 0), *a2 = a + (mr > 2 ? 2 * rsa : 0);
    const float *a3 = a + (mr > 3 ? 3 * rsa : 0), *a4 = a + (mr > 4 ? 4 * rsa : 0), *a5 = a + (mr > 5 ? 5 * rsa : 0);
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    long off = 0;
    for (int p = 0; p < kc; p++, off += csa) {
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
        bp += 16;
        if (pf) _mm_prefetch((const char *)(pf + 6 * (long)p), _MM_HINT_T0);
        __m256 x;
        x = _mm256_broadcast_ss(a0 + off); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + off); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + off); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + off); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a4 + off); c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a5 + off); c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    const int t = NR_MAX;
    _mm256_store_ps(tile + 0 * t, c00); _mm256_store_ps(tile + 0 * t + 8, c01);
    _mm256_store_ps(tile + 1 * t, c10); _mm256_store_ps(tile + 1 * t + 8, c11);
    _mm256_store_ps(tile + 2 * t, c20); _mm256_store_ps(tile + 2 * t + 8, c21);
    _mm256_store_ps(tile + 3 * t, c30); _mm256_store_ps(tile + 3 * t + 8, c31);
    _mm256_store_ps(tile + 4 * t, c40); _mm256_store_ps(tile + 4 * t + 8, c41);
    _mm256_store_ps(tile + 5 * t, c50); _mm256_store_ps(tile + 5 * t + 8, c51);
}

// The left 16 columns of a 32-wide panel into tile[MR][16]: an edge panel of at most 16 valid
// columns (batch 1's 196 = 6 x 32 + 4, 784 = 24 x 32 + 16) at about half the full kernel's cost.
// Each column's sum is the same operations in the same order as in kernel_avx512.
__attribute__((target("avx512f")))
static void kernel_avx512_half(int kc, int mr, const float *a, long rsa, long csa, const float *bp, float *tile, const float *pf) {
    const float *a0 = a, *a1 = a + (mr > 1 ? rsa : 0), *a2 = a + (mr > 2 ? 2 * rsa : 0);
    const float *a3 = a + (mr > 3 ? 3 * rsa : 0), *a4 = a + (mr > 4 ? 4 * rsa : 0), *a5 = a + (mr > 5 ? 5 * rsa : 0);
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps();
    __m512 c3 = _mm512_setzero_ps(), c4 = _mm512_setzero_ps(), c5 = _mm512_setzero_ps();
    long off = 0;
    for (int p = 0; p < kc; p++, off += csa) {
        __m512 b0 = _mm512_load_ps(bp);
        bp += 32;
        if (pf) _mm_prefetch((const char *)(pf + 6 * (long)p), _MM_HINT_T0);
        c0 = _mm512_fmadd_ps(_mm512_set1_ps(a0[off]), b0, c0);
        c1 = _mm512_fmadd_ps(_mm512_set1_ps(a1[off]), b0, c1);
        c2 = _mm512_fmadd_ps(_mm512_set1_ps(a2[off]), b0, c2);
        c3 = _mm512_fmadd_ps(_mm512_set1_ps(a3[off]), b0, c3);
        c4 = _mm512_fmadd_ps(_mm512_set1_ps(a4[off]), b0, c4);
        c5 = _mm512_fmadd_ps(_mm512_set1_ps(a5[off]), b0, c5);
    }
    const int t = NR_MAX;
    _mm512_store_ps(tile + 0 * t, c0); _mm512_store_ps(tile + 1 * t, c1); _mm512_store_ps(tile + 2 * t, c2);
    _mm512_store_ps(tile + 3 * t, c3); _mm512_store_ps(tile + 4 * t, c4); _mm512_store_ps(tile + 5 * t, c5);
}

// tile[MR][32] as above, 32 wide; or, when `c` is given (a full 6 x 32 tile), the epilogue
// applied straight from the registers to rows r.. and columns j.. of C (and D).
__attribute__((target("avx512f")))
static void kernel_avx512(int kc, int mr, const float *a, long rsa, long csa, const float *bp, float *tile,
                          float *c, long ldc, int r, int j, const lc_epilogue *e, int first, int last, const float *pf) {
    const float *a0 = a, *a1 = a + (mr > 1 ? rsa : 0), *a2 = a + (mr > 2 ? 2 * rsa : 0);
    const float *a3 = a + (mr > 3 ? 3 * rsa : 0), *a4 = a + (mr > 4 ? 4 * rsa : 0), *a5 = a + (mr > 5 ? 5 * rsa : 0);
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
    __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(), c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
    __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
    long off = 0;
    for (int p = 0; p < kc; p++, off += csa) {
        __m512 b0 = _mm512_load_ps(bp), b1 = _mm512_load_ps(bp + 16);
        bp += 32;
        if (pf) _mm_prefetch((const char *)(pf + 6 * (long)p), _MM_HINT_T0);
        __m512 x;
        x = _mm512_set1_ps(a0[off]); c00 = _mm512_fmadd_ps(x, b0, c00); c01 = _mm512_fmadd_ps(x, b1, c01);
        x = _mm512_set1_ps(a1[off]); c10 = _mm512_fmadd_ps(x, b0, c10); c11 = _mm512_fmadd_ps(x, b1, c11);
        x = _mm512_set1_ps(a2[off]); c20 = _mm512_fmadd_ps(x, b0, c20); c21 = _mm512_fmadd_ps(x, b1, c21);
        x = _mm512_set1_ps(a3[off]); c30 = _mm512_fmadd_ps(x, b0, c30); c31 = _mm512_fmadd_ps(x, b1, c31);
        x = _mm512_set1_ps(a4[off]); c40 = _mm512_fmadd_ps(x, b0, c40); c41 = _mm512_fmadd_ps(x, b1, c41);
        x = _mm512_set1_ps(a5[off]); c50 = _mm512_fmadd_ps(x, b0, c50); c51 = _mm512_fmadd_ps(x, b1, c51);
    }
    if (c) {
        int addC = e->kind == LC_EPILOGUE_ACCUMULATE || !first;
        float *cr = lc_c_at(c, ldc, e, r, j);
        float *dr = e->dst ? e->dst + (long)r * e->ldd + j : NULL;   /* RESIDUAL, BIAS_GELU_KEEP, GELU_GRAD */
        long dd = e->ldd, cs = lc_c_step(ldc, e);
        finish_row512(c00, c01, r + 0, cr, dr, e, addC, last); cr += cs; if (dr) dr += dd;
        finish_row512(c10, c11, r + 1, cr, dr, e, addC, last); cr += cs; if (dr) dr += dd;
        finish_row512(c20, c21, r + 2, cr, dr, e, addC, last); cr += cs; if (dr) dr += dd;
        finish_row512(c30, c31, r + 3, cr, dr, e, addC, last); cr += cs; if (dr) dr += dd;
        finish_row512(c40, c41, r + 4, cr, dr, e, addC, last); cr += cs; if (dr) dr += dd;
        finish_row512(c50, c51, r + 5, cr, dr, e, addC, last);
        return;
    }
    const int t = NR_MAX;
    _mm512_store_ps(tile + 0 * t, c00); _mm512_store_ps(tile + 0 * t + 16, c01);
    _mm512_store_ps(tile + 1 * t, c10); _mm512_store_ps(tile + 1 * t + 16, c11);
    _mm512_store_ps(tile + 2 * t, c20); _mm512_store_ps(tile + 2 * t + 16, c21);
    _mm512_store_ps(tile + 3 * t, c30); _mm512_store_ps(tile + 3 * t + 16, c31);
    _mm512_store_ps(tile + 4 * t, c40); _mm512_store_ps(tile + 4 * t + 16, c41);
    _mm512_store_ps(tile + 5 * t, c50); _mm512_store_ps(tile + 5 * t + 16, c51);
}

// Applies one K block's tile (row stride NR_MAX) to rows [r, r+mr) and columns [j, j+nr).
// first: the first K block (nothing of this product in C yet); last: the final one.
__attribute__((target("avx2,fma")))
void lc_tile_epilogue(const float *tile, int mr, int nr, int r, int j, float *c, long ldc,
                      const lc_epilogue *e, int first, int last) {
    int kind = e->kind;
    int addC = kind == LC_EPILOGUE_ACCUMULATE || !first;
    for (int i = 0; i < mr; i++) {
        float row[NR_MAX] __attribute__((aligned(32)));
        const float *t = tile + i * NR_MAX;
        float *cr = lc_c_at(c, ldc, e, r + i, j);
        int full = nr & ~7;
        // row = tile (+ what C holds)
        for (int q = 0; q < full; q += 8) {
            __m256 v = _mm256_load_ps(t + q);
            if (addC) v = _mm256_add_ps(_mm256_loadu_ps(cr + q), v);
            _mm256_store_ps(row + q, v);
        }
        for (int q = full; q < nr; q++) row[q] = addC ? cr[q] + t[q] : t[q];
        if (!last) { memcpy(cr, row, (size_t)nr * sizeof(float)); continue; }
        if (e->bias) {
            __m256 bb = _mm256_set1_ps(e->bias[r + i]);
            for (int q = 0; q < NR_MAX; q += 8) _mm256_store_ps(row + q, _mm256_add_ps(_mm256_load_ps(row + q), bb));
        }
        if (kind == LC_EPILOGUE_BIAS_GELU) {
            for (int q = 0; q < nr; q += 8) _mm256_store_ps(row + q, gelu8(_mm256_load_ps(row + q)));
        }
        if (kind == LC_EPILOGUE_GELU_GRAD) {
            gelu_grad_row(row, e->dst + (long)(r + i) * e->ldd + j, cr, nr);
            continue;
        }
        if (kind == LC_EPILOGUE_BIAS_GELU_KEEP) {
            float act[NR_MAX] __attribute__((aligned(32)));
            for (int q = 0; q < nr; q += 8) _mm256_store_ps(act + q, gelu8(_mm256_load_ps(row + q)));
            memcpy(e->dst + (long)(r + i) * e->ldd + j, act, (size_t)nr * sizeof(float));
        }
        if (kind == LC_EPILOGUE_RESIDUAL) {
            float *dr = e->dst + (long)(r + i) * e->ldd + j;
            __m256 s = _mm256_set1_ps(e->scale[r + i]);
            for (int q = 0; q < full; q += 8)
                _mm256_storeu_ps(dr + q, _mm256_add_ps(_mm256_loadu_ps(dr + q), _mm256_mul_ps(s, _mm256_load_ps(row + q))));
            float sc = e->scale[r + i];
            for (int q = full; q < nr; q++) dr[q] = dr[q] + sc * row[q];
        } else {
            memcpy(cr, row, (size_t)nr * sizeof(float));
            // Packed C: a tile that ends inside its panel is the product's last (tiles never cross
            // a panel, and only the last panel is short) or, at the last panel, its 16-column lead,
            // whose tail tile is written after it. The columns after it are the panel's padding,
            // which the products that read this layout read: zeroed here, in the task that owns
            // these rows, instead of by a serial pass before the product.
            int end = e->packed ? j % e->packed + nr : 0;
            if (end && end < e->packed) memset(cr + nr, 0, (size_t)(e->packed - end) * sizeof(float));
        }
    }
}

// A tile the full kernel cannot finish in registers (edge rows or columns, or AVX2) into `tile`
// (row stride NR_MAX): the 16-wide kernel for at most 16 columns, else the full one.
static void edge_tile(int wide, int w, int kc, int h, const float *ap, long rsa, long csa, const float *bp, float *tile,
                      const lc_epilogue *e, int first, int last, const float *pf) {
    if (wide && w <= 16) kernel_avx512_half(kc, h, ap, rsa, csa, bp, tile, pf);
    else if (wide) kernel_avx512(kc, h, ap, rsa, csa, bp, tile, NULL, 0, 0, 0, e, first, last, pf);
    else kernel_avx2(kc, h, ap, rsa, csa, bp, tile, pf);
}

// Per-thread buffers grow as needed and are freed when their thread ends (callers run on the
// pool's workers, Dispatch's, and short-lived threads).
static __thread float *thread_buffers[LC_BUFFER_COUNT];
static __thread size_t thread_capacities[LC_BUFFER_COUNT];
static pthread_key_t buffers_key;
static pthread_once_t buffers_key_once = PTHREAD_ONCE_INIT;
static void free_buffers(void *p) {
    float **b = p;
    for (int i = 0; i < LC_BUFFER_COUNT; i++) { free(b[i]); b[i] = NULL; }
}
static void make_buffers_key(void) { pthread_key_create(&buffers_key, free_buffers); }

float *lc_thread_buffer(int which, size_t need) {
    if (need <= thread_capacities[which]) return thread_buffers[which];
    float *p = aligned_alloc(64, (need * sizeof(float) + 63) / 64 * 64);
    if (!p) { fprintf(stderr, "liteclip: out of memory for a %zu-float kernel buffer\n", need); abort(); }
    free(thread_buffers[which]);
    thread_buffers[which] = p;
    thread_capacities[which] = need;
    pthread_once(&buffers_key_once, make_buffers_key);
    pthread_setspecific(buffers_key, thread_buffers);   // the destructor frees them all
    return p;
}

// Few columns and large row-major weights (batch 1's later stages): every element of A is used
// for few columns, so the product streams A from memory. Here K is not split and each 6-row
// tile of A runs against all of B's panels (packed whole, kept in L2) before the next; the next
// tile's rows (contiguous: 6 K floats) are prefetched while the first panel runs, so the stream
// is one sequential read ahead of use instead of demand misses row segment by row segment.
// Measured on one core, A cold (formats/kernels.md): 3072 x 49 x 768 in 3.2-3.6 -> 2.1-2.2 ms.
static int streams_a(int m, int n, int k, long rsa, long csa, int nr) {
    long npad = (long)(n + nr - 1) / nr * nr;
    return csa == 1 && rsa == k && k > 0 && (long)k * npad * 4 <= (1L << 20) && (long)m * k * 4 > (1L << 20);
}

// The same for B too large to pack whole (batch 8's stages 2 and 3, training's products): B in
// chunks of columns of at most 1 MiB packed, all of A streamed over each chunk in turn. Returns
// the chunk width (a multiple of nr, the chunks as even as that allows), or 0.
static int column_chunk(int m, int n, int k, long rsa, long csa, int nr) {
    if (csa != 1 || rsa != k || k <= 0 || (long)m * k * 4 <= (1L << 20)) return 0;
    long most = (1L << 20) / ((long)k * 4) / nr * nr;
    if (most < nr || n <= most) return 0;
    long chunks = (n + most - 1) / most;
    return (int)(((n + chunks - 1) / chunks + nr - 1) / nr * nr);
}

// The last few columns of a product whose last panel holds at most 4 (batch 1's stage 2: 196 =
// 6 x 32 + 4), or 17 or 18 (stage 3: 49 = 32 + 16 + 1): instead of a 16-wide pass for them
// (four times the multiply-adds for 4 columns), each is 6 dot products of A's rows (contiguous)
// with that column of B, copied contiguous after the panels. Vectors run along K, so each sum
// is added in a different order from the panels' (within the products' tolerance, not the
// same bits).
#define TAIL_MAX 4

static int tail_columns(int n, int nr, int wide) {
    int last = n - (n - 1) / nr * nr;
    if (!wide) return 0;
    if (last <= TAIL_MAX) return last;
    return last > 16 && last - 16 <= 2 ? last - 16 : 0;
}

// Columns of the last panel the 16-wide kernel does before the tail (0 or 16).
static int tail_lead(int n, int nr) { return n - (n - 1) / nr * nr > 16 ? 16 : 0; }

static void pack_tail(int k, int n, int t, const float *b, long rsb, long csb, float *dst) {
    for (int q = 0; q < t; q++) {
        const float *src = b + (long)(n - t + q) * csb;
        for (int p = 0; p < k; p++) dst[(long)q * k + p] = src[(long)p * rsb];
    }
}

// The same from B already packed (nr columns per panel): column j is panel j / nr's column j % nr.
static void pack_tail_packed(int k, int n, int t, const float *packed, int nr, float *dst) {
    for (int q = 0; q < t; q++) {
        int j = n - t + q;
        pack_tail(k, 1, 1, packed + (long)(j / nr) * k * nr + j % nr, nr, 0, dst + (long)q * k);
    }
}

// tile[i][q] = sum over p of A[i][p] * bcol[q][p] for rows i < mr (A row-major, row stride k):
// two columns at a time, each load of A's rows serving both.
__attribute__((target("avx512f")))
static void dot_tail(int k, int mr, const float *a, const float *bcol, int t, float *tile) {
    const float *a0 = a, *a1 = a + (mr > 1 ? k : 0), *a2 = a + (mr > 2 ? 2L * k : 0);
    const float *a3 = a + (mr > 3 ? 3L * k : 0), *a4 = a + (mr > 4 ? 4L * k : 0), *a5 = a + (mr > 5 ? 5L * k : 0);
    for (int q = 0; q < t; q += 2) {
        const float *b0 = bcol + (long)q * k, *b1 = q + 1 < t ? b0 + k : b0;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0;
        __m512 u0 = s0, u1 = s0, u2 = s0, u3 = s0, u4 = s0, u5 = s0;
        for (int p = 0; p < k; p += 16) {
            __mmask16 mk = k - p >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - p)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(mk, b0 + p), w = _mm512_maskz_loadu_ps(mk, b1 + p), x;
            x = _mm512_maskz_loadu_ps(mk, a0 + p); s0 = _mm512_fmadd_ps(x, v, s0); u0 = _mm512_fmadd_ps(x, w, u0);
            x = _mm512_maskz_loadu_ps(mk, a1 + p); s1 = _mm512_fmadd_ps(x, v, s1); u1 = _mm512_fmadd_ps(x, w, u1);
            x = _mm512_maskz_loadu_ps(mk, a2 + p); s2 = _mm512_fmadd_ps(x, v, s2); u2 = _mm512_fmadd_ps(x, w, u2);
            x = _mm512_maskz_loadu_ps(mk, a3 + p); s3 = _mm512_fmadd_ps(x, v, s3); u3 = _mm512_fmadd_ps(x, w, u3);
            x = _mm512_maskz_loadu_ps(mk, a4 + p); s4 = _mm512_fmadd_ps(x, v, s4); u4 = _mm512_fmadd_ps(x, w, u4);
            x = _mm512_maskz_loadu_ps(mk, a5 + p); s5 = _mm512_fmadd_ps(x, v, s5); u5 = _mm512_fmadd_ps(x, w, u5);
        }
        float v0[6] = {_mm512_reduce_add_ps(s0), _mm512_reduce_add_ps(s1), _mm512_reduce_add_ps(s2),
                       _mm512_reduce_add_ps(s3), _mm512_reduce_add_ps(s4), _mm512_reduce_add_ps(s5)};
        for (int i = 0; i < mr; i++) tile[i * NR_MAX + q] = v0[i];
        if (q + 1 < t) {
            float v1[6] = {_mm512_reduce_add_ps(u0), _mm512_reduce_add_ps(u1), _mm512_reduce_add_ps(u2),
                           _mm512_reduce_add_ps(u3), _mm512_reduce_add_ps(u4), _mm512_reduce_add_ps(u5)};
            for (int i = 0; i < mr; i++) tile[i * NR_MAX + q + 1] = v1[i];
        }
    }
}

// Rows [r0, r1) of such a product from B already packed whole (`packed`, K x padded N, then
// `tail`'s columns contiguous when tail_columns says so).
// Columns j0 .. j0 + n of C (B's packed from its column j0).
static void row_tiles(int r0, int r1, int m, int n, int j0, int k, const float *a, const float *packed,
                      const float *tail, float *c, long ldc, const lc_epilogue *e, int wide, int nr) {
    float tile[MR * NR_MAX] __attribute__((aligned(64)));
    int t = tail_columns(n, nr, wide), lead = tail_lead(n, nr);
    for (int ir = r0; ir < r1; ir += MR) {
        int h = m - ir < MR ? m - ir : MR;
        const float *ap = a + (long)ir * k;
        const float *next = ir + MR < r1 ? ap + (long)MR * k : NULL;
        for (int jr = 0; jr < n; jr += nr) {
            int w = n - jr < nr ? n - jr : nr;
            const float *bp = packed + (long)jr * k, *pf = jr == 0 ? next : NULL;
            if (wide && h == MR && w == nr) {
                kernel_avx512(k, h, ap, k, 1, bp, tile, c, ldc, ir, j0 + jr, e, 1, 1, pf);
                continue;
            }
            if (t && jr + nr >= n) {   // the last panel: 16 columns or none, then the tail's dot products
                if (lead) {
                    kernel_avx512_half(k, h, ap, k, 1, bp, tile, pf);
                    lc_tile_epilogue(tile, h, 16, ir, j0 + jr, c, ldc, e, 1, 1);
                }
                dot_tail(k, h, ap, tail, t, tile);
                lc_tile_epilogue(tile, h, t, ir, j0 + jr + lead, c, ldc, e, 1, 1);
                continue;
            }
            edge_tile(wide, w, k, h, ap, k, 1, bp, tile, e, 1, 1, pf);
            lc_tile_epilogue(tile, h, w, ir, j0 + jr, c, ldc, e, 1, 1);
        }
    }
}

// The calling thread's buffer for B packed whole (the panels, then room for the tail columns),
// with the tail columns already copied in; the panels are the caller's to pack.
static float *whole_b_buffer(int k, int n, int nr, int wide, const float *b, long rsb, long csb, const float **tail) {
    size_t panels = (size_t)k * (size_t)((n + nr - 1) / nr * nr);
    float *packed = lc_thread_buffer(LC_BUFFER_PACK, panels + (size_t)TAIL_MAX * k + NR_MAX);
    pack_tail(k, n, tail_columns(n, nr, wide), b, rsb, csb, packed + panels);
    *tail = packed + panels;
    return packed;
}

// Where a product's tail columns go when B is already packed: the calling thread's pack buffer
// (unused then), filled from the packed panels.
static float *packed_tail(int k, int n, int nr, int wide, const float *packed) {
    float *tail = lc_thread_buffer(LC_BUFFER_PACK, (size_t)TAIL_MAX * k + NR_MAX);
    pack_tail_packed(k, n, tail_columns(n, nr, wide), packed, nr, tail);
    return tail;
}

// prepacked: b is B in the packed layout (rsb, csb unused).
static void row_tile_product(int m, int n, int k, const float *a, const float *b, long rsb, long csb, int prepacked,
                             float *c, long ldc, const lc_epilogue *e, int wide, int nr) {
    const float *packed = b, *tail;
    if (prepacked) {
        tail = packed_tail(k, n, nr, wide, b);
    } else {
        float *buffer = whole_b_buffer(k, n, nr, wide, b, rsb, csb, &tail);
        pack_b(k, n, nr, b, rsb, csb, buffer);
        packed = buffer;
    }
    row_tiles(0, m, m, n, 0, k, a, packed, tail, c, ldc, e, wide, nr);
}

// The same product over the pool: B packed once into the caller's buffer (one task per panel),
// then the rows in chunks that the cores claim one at a time. Split into one part per core,
// every core packed all of B for its own rows, and a core that lost time to anything else held
// up the whole product while the other waited.
typedef struct {
    int m, n, j0, k, nr, wide, chunk;
    const float *a, *b;
    long rsb, csb, ldc;
    float *c;
    const float *packed, *tail;
    const lc_epilogue *e;
} shared_b_job;

static void pack_panel_task(void *p, long i) {
    const shared_b_job *j = p;
    int j0 = (int)i * j->nr, w = j->n - j0 < j->nr ? j->n - j0 : j->nr;
    pack_b(j->k, w, j->nr, j->b + (long)j0 * j->csb, j->rsb, j->csb, (float *)j->packed + (long)j0 * j->k);
}

static void row_chunk_task(void *p, long i) {
    const shared_b_job *j = p;
    int r0 = (int)i * j->chunk, r1 = r0 + j->chunk < j->m ? r0 + j->chunk : j->m;
    row_tiles(r0, r1, j->m, j->n, j->j0, j->k, j->a, j->packed, j->tail, j->c, j->ldc, j->e, j->wide, j->nr);
}

static int parallel_rows(int m, int n, int k, const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                         int prepacked, float *c, long ldc, const lc_epilogue *e) {
    if (m <= 0 || n <= 0 || detect() == 0) return 0;
    int wide = isa == 2, nr = wide ? 32 : 16, cores = lc_pool_threads();
    if (cores < 2) return 0;
    int width = streams_a(m, n, k, rsa, csa, nr) ? n : column_chunk(m, n, k, rsa, csa, nr);
    if (width == 0) return 0;
    int chunk = (m + 4 * cores - 1) / (4 * cores);   /* about four chunks per core */
    chunk = (chunk + MR - 1) / MR * MR;
    if (chunk < 4 * MR) chunk = 4 * MR;
    for (int j0 = 0; j0 < n; j0 += width) {
        int w = n - j0 < width ? n - j0 : width;
        shared_b_job job = {m, w, j0, k, nr, wide, chunk, a, NULL, rsb, csb, ldc, c, NULL, NULL, e};
        if (prepacked) {
            job.packed = b + (long)j0 * k;   /* j0 is a multiple of nr: panel j0 / nr */
            job.tail = packed_tail(k, w, nr, wide, job.packed);
        } else {
            job.b = b + (long)j0 * csb;
            job.packed = whole_b_buffer(k, w, nr, wide, job.b, rsb, csb, &job.tail);
            lc_parallel((w + nr - 1) / nr, pack_panel_task, &job);
        }
        lc_parallel((m + chunk - 1) / chunk, row_chunk_task, &job);
    }
    return 1;
}

int lc_sgemm_parallel_rows(int m, int n, int k, const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                           float *c, long ldc, const lc_epilogue *e) {
    return parallel_rows(m, n, k, a, rsa, csa, b, rsb, csb, 0, c, ldc, e);
}

int lc_sgemm_parallel_rows_packed_b(int m, int n, int k, const float *a, long rsa, long csa, const float *packed_b,
                                    float *c, long ldc, const lc_epilogue *e) {
    return parallel_rows(m, n, k, a, rsa, csa, packed_b, 0, 0, 1, c, ldc, e);
}

int lc_sgemm_panel_width(void) { return detect() == 2 ? 32 : 16; }

// prepacked: b is B in the packed layout (whole K per panel): each K block of a panel is read
// where it lies instead of being packed.
static void sgemm(int m, int n, int k, const float *a, long rsa, long csa, const float *b, long rsb, long csb, int prepacked,
                  float *c, long ldc, const lc_epilogue *e) {
    if (m <= 0 || n <= 0 || detect() == 0) return;
    int wide = isa == 2;
    int nr = wide ? 32 : 16;
    if (streams_a(m, n, k, rsa, csa, nr)) { row_tile_product(m, n, k, a, b, rsb, csb, prepacked, c, ldc, e, wide, nr); return; }
    int kc_cap = wide ? 256 : 384;
    int kblocks = k <= 0 ? 1 : (k + kc_cap - 1) / kc_cap;
    int kc_max = k <= 0 ? 0 : (k + kblocks - 1) / kblocks;
    int ncap = n < NC ? n : NC;
    size_t need = (size_t)kc_max * (size_t)((ncap + nr - 1) / nr * nr) + NR_MAX;
    float *pack_buffer = prepacked ? NULL : lc_thread_buffer(LC_BUFFER_PACK, need);
    float tile[MR * NR_MAX] __attribute__((aligned(64)));
    for (int jc = 0; jc < n; jc += NC) {
        int nc = n - jc < NC ? n - jc : NC;
        for (int kb = 0, pc = 0; kb < kblocks; kb++) {
            int kc = kb == kblocks - 1 ? k - pc : kc_max;
            int first = kb == 0, last = kb == kblocks - 1;
            if (!prepacked) pack_b(kc, nc, nr, b + (long)pc * rsb + (long)jc * csb, rsb, csb, pack_buffer);
            for (int ic = 0; ic < m; ic += MC) {
                int mc = m - ic < MC ? m - ic : MC;
                for (int jr = 0; jr < nc; jr += nr) {
                    int w = nc - jr < nr ? nc - jr : nr;
                    const float *bp = prepacked ? b + (long)(jc + jr) * k + (long)pc * nr : pack_buffer + (long)jr * kc;
                    for (int ir = 0; ir < mc; ir += MR) {
                        int h = mc - ir < MR ? mc - ir : MR;
                        const float *ap = a + (long)(ic + ir) * rsa + (long)pc * csa;
                        if (wide && h == MR && w == nr) {
                            kernel_avx512(kc, h, ap, rsa, csa, bp, tile, c, ldc, ic + ir, jc + jr, e, first, last, NULL);
                            continue;
                        }
                        edge_tile(wide, w, kc, h, ap, rsa, csa, bp, tile, e, first, last, NULL);
                        lc_tile_epilogue(tile, h, w, ic + ir, jc + jr, c, ldc, e, first, last);
                    }
                }
            }
            pc += kc;
        }
    }
}

void lc_sgemm_strided(int m, int n, int k, const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                      float *c, long ldc, const lc_epilogue *e) {
    sgemm(m, n, k, a, rsa, csa, b, rsb, csb, 0, c, ldc, e);
}

void lc_sgemm_packed_b(int m, int n, int k, const float *a, long rsa, long csa, const float *packed_b,
                       float *c, long ldc, const lc_epilogue *e) {
    sgemm(m, n, k, a, rsa, csa, packed_b, 0, 0, 1, c, ldc, e);
}

void lc_sgemm(int m, int n, int k, const float *a, long lda, const float *b, long ldb,
              float *c, long ldc, const lc_epilogue *e) {
    lc_sgemm_strided(m, n, k, a, lda, 1, b, ldb, 1, c, ldc, e);
}

// MARK: element-wise GELU and its derivative (training's plain path), same arithmetic as
// Kernels.geluVector / geluDerivative / exp8 (Sources/LiteCLIP/Model/Layers/GELU.swift).

__attribute__((target("avx512f")))
static void gelu_run512(float *x, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

__attribute__((target("avx512f")))
static void gelu_backward_run512(const float *x, float *dy, long n) {
    long i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dy + i, _mm512_mul_ps(_mm512_loadu_ps(dy + i), gelu_derivative16(_mm512_loadu_ps(x + i))));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 d = gelu_derivative16(_mm512_maskz_loadu_ps(m, x + i));
        _mm512_mask_storeu_ps(dy + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), d));
    }
}

__attribute__((target("avx2,fma")))
static void gelu_run256(float *x, long n) {
    long i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float t[8] __attribute__((aligned(32))) = {0};
        memcpy(t, x + i, (size_t)(n - i) * sizeof(float));
        _mm256_store_ps(t, gelu8(_mm256_load_ps(t)));
        memcpy(x + i, t, (size_t)(n - i) * sizeof(float));
    }
}

int lc_gelu(float *x, long n) {
    int level = detect();
    if (level == 2) gelu_run512(x, n);
    else if (level == 1) gelu_run256(x, n);
    else return 0;
    return 1;
}

int lc_gelu_backward(const float *x, float *dy, long n) {
    if (detect() != 2) return 0;
    gelu_backward_run512(x, dy, n);
    return 1;
}

// The machine's multiply-add ceiling: 12 independent chains of vector FMAs per thread (enough to
// cover the latency), `iterations` steps each, on every pool thread at once. Returns the flops
// done (the caller times the call); 0 without AVX2.
#define FMA_CHAINS(NAME, TARGET, VW)                                                                    \
__attribute__((target(TARGET)))                                                                         \
static float NAME(long iterations) {                                                                    \
    _Pragma("clang fp contract(fast)")                                                                  \
    typedef float vf __attribute__((vector_size(VW * 4)));                                              \
    vf a[12], m = (vf){} + 0.9999f, c = (vf){} + 0.0001f;                                               \
    for (int i = 0; i < 12; i++) a[i] = (vf){} + 0.001f * (float)i;                                     \
    for (long n = 0; n < iterations; n++)                                                               \
        for (int i = 0; i < 12; i++) a[i] = a[i] * m + c;                                               \
    for (int i = 1; i < 12; i++) a[0] += a[i];                                                          \
    float s = 0;                                                                                        \
    for (int l = 0; l < VW; l++) s += a[0][l];                                                          \
    return s;                                                                                           \
}

FMA_CHAINS(fma_chains512, "avx512f", 16)
FMA_CHAINS(fma_chains256, "avx2,fma", 8)

typedef struct { long iterations; volatile float sink; } fma_job;

static void fma_task(void *p, long i) {
    (void)i;
    fma_job *j = p;
    j->sink = isa == 2 ? fma_chains512(j->iterations) : fma_chains256(j->iterations);
}

double lc_fma_peak_flops(long iterations) {
    if (detect() == 0) return 0;
    int threads = lc_pool_threads();
    fma_job job = {iterations, 0};
    lc_parallel(threads, fma_task, &job);
    return (double)threads * (double)iterations * 12.0 * (isa == 2 ? 16 : 8) * 2.0;
}

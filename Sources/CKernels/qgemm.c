// int8 products for quantised weights (formats/kernels.md, "int8"; formats/lcw.md, "int8").
//
// C[r][j] = epilogue(((float)(acc[r][j] - 128 * rowsum[r]) * wscale[r]) * xscale[j]), where
// acc[r][j] = sum_p A[r][p] * Bu[p][j] in int32: A the int8 weights (symmetric, per row), Bu the
// activations quantised per column to -127..127 and stored offset by 128 as u8 (so u8 x s8
// products, what VNNI's vpdpbusd multiplies), rowsum[r] = sum_p A[r][p] undoing the offset.
// Integer sums are exact, so every path (AVX-512 VNNI, AVX2, the Swift reference)
// gives the same bits; the float steps are the same operations in the same order.
//
// Quantised columns are packed in panels of 32 columns: panel q holds columns 32q.. as K/4
// groups of 128 bytes, column c's 4 values of K rows 4g..4g+3 at bytes [4c, 4c+4) of group g.
// Columns past n are zero (value 128, scale 0). K must be a multiple of 4.

#include "CKernels.h"
#include "internal.h"
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define QNR 32
#define QMC 96

static int qisa = -1;   // 0: none (no AVX2), 1: AVX2 (vpmaddubsw, sign trick), 2: AVX-512 VNNI

static int qdetect(void) {
    if (qisa < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        int vnni = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vnni");
        qisa = vnni ? 2 : (avx2 ? 1 : 0);
    }
    return qisa;
}

int lc_qgemm_isa(void) { return qdetect(); }

void lc_qgemm_force_isa(int level) {
    if (level < 0) { qisa = -1; qdetect(); return; }
    qdetect();
    if (level <= qisa) qisa = level;
}

long lc_quantized_columns_bytes(int k, int n) { return (long)((n + QNR - 1) / QNR) * QNR * k; }

// MARK: - Activations: quantise and pack columns

// Columns [j0, j0 + w) (w <= 8, contiguous: csx == 1) into their panel, AVX2.
__attribute__((target("avx2,fma")))
static void quantize8(int k, const float *x, long rsx, int w, uint8_t *panel, int c0, float *scales) {
    __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lanes);
    __m256 sign = _mm256_set1_ps(-0.0f), m = _mm256_setzero_ps();
    for (int p = 0; p < k; p++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_maskload_ps(x + (long)p * rsx, valid)));
    float absmax[8], inv[8];
    _mm256_storeu_ps(absmax, m);
    for (int c = 0; c < 8; c++) {
        inv[c] = absmax[c] > 0 ? 127.0f / absmax[c] : 0.0f;
        if (c < w) scales[c] = absmax[c] / 127.0f;
    }
    __m256 vinv = _mm256_loadu_ps(inv);
    __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127), off = _mm256_set1_epi32(128);
    for (int g = 0; g < k / 4; g++) {
        __m256i word = _mm256_setzero_si256();
        for (int t = 0; t < 4; t++) {
            __m256 v = _mm256_mul_ps(_mm256_maskload_ps(x + (long)(4 * g + t) * rsx, valid), vinv);
            __m256i q = _mm256_cvtps_epi32(v);                     // round to nearest even
            q = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(q, lo), hi), off);
            word = _mm256_or_si256(word, _mm256_slli_epi32(q, 8 * t));
        }
        _mm256_storeu_si256((__m256i *)(panel + (long)g * 128 + 4 * c0), word);
    }
}

void lc_quantize_columns(int k, int n, const float *x, long rsx, long csx, uint8_t *packed, float *scales) {
    int panels = (n + QNR - 1) / QNR;
    memset(packed, 128, (size_t)lc_quantized_columns_bytes(k, n));
    for (int q = 0; q < panels; q++) {
        uint8_t *panel = packed + (long)q * QNR * k;
        for (int c0 = 0; c0 < QNR && q * QNR + c0 < n; c0 += 8) {
            int j = q * QNR + c0, w = n - j < 8 ? n - j : 8;
            if (csx == 1 && qdetect() >= 1) { quantize8(k, x + j, rsx, w, panel, c0, scales + j); continue; }
            for (int c = 0; c < w; c++) {
                const float *col = x + (long)(j + c) * csx;
                float absmax = 0;
                for (int p = 0; p < k; p++) { float a = fabsf(col[(long)p * rsx]); absmax = a > absmax ? a : absmax; }
                float inv = absmax > 0 ? 127.0f / absmax : 0.0f;
                scales[j + c] = absmax / 127.0f;
                for (int p = 0; p < k; p++) {
                    long qv = lrintf(col[(long)p * rsx] * inv);
                    qv = qv < -127 ? -127 : (qv > 127 ? 127 : qv);
                    panel[(long)(p / 4) * 128 + 4 * (c0 + c) + p % 4] = (uint8_t)(qv + 128);
                }
            }
        }
    }
}

// MARK: - Integer micro-kernels: tile[MR][32] = A[rows][0..k) . panel (int32)

// Where a full 6 x 32 tile is finished in registers: rows r.. and columns j.. of C.
typedef struct {
    float *c; long ldc; int r, j;
    const lc_epilogue *e; const int32_t *rowsum; const float *wscale, *xscale;
} qfinish;

__attribute__((target("avx512f")))
static inline __m512 dequant16(__m512i acc, int32_t off, float ws, const float *xs) {
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_set1_epi32(off)));
    return _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(ws)), _mm512_loadu_ps(xs));
}

// tile = the int32 sums; or, with f (a full 6 x 32 tile), the tile dequantised and finished in
// registers (the same operations as lc_qgemm's loop below, 16 wide).
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void qkernel_vnni(int groups, int mr, const int8_t *a, long lda, const uint8_t *bp, int32_t *tile, const qfinish *f) {
    const int8_t *a0 = a, *a1 = a + (mr > 1 ? lda : 0), *a2 = a + (mr > 2 ? 2 * lda : 0);
    const int8_t *a3 = a + (mr > 3 ? 3 * lda : 0), *a4 = a + (mr > 4 ? 4 * lda : 0), *a5 = a + (mr > 5 ? 5 * lda : 0);
    __m512i c00 = _mm512_setzero_si512(), c01 = _mm512_setzero_si512(), c10 = _mm512_setzero_si512(), c11 = _mm512_setzero_si512();
    __m512i c20 = _mm512_setzero_si512(), c21 = _mm512_setzero_si512(), c30 = _mm512_setzero_si512(), c31 = _mm512_setzero_si512();
    __m512i c40 = _mm512_setzero_si512(), c41 = _mm512_setzero_si512(), c50 = _mm512_setzero_si512(), c51 = _mm512_setzero_si512();
    for (int g = 0; g < groups; g++) {
        __m512i b0 = _mm512_loadu_si512(bp), b1 = _mm512_loadu_si512(bp + 64);
        bp += 128;
        int32_t w;
        __m512i x;
#define ROW(ar, lo, hi) memcpy(&w, ar + 4 * g, 4); x = _mm512_set1_epi32(w); \
        lo = _mm512_dpbusd_epi32(lo, b0, x); hi = _mm512_dpbusd_epi32(hi, b1, x);
        ROW(a0, c00, c01) ROW(a1, c10, c11) ROW(a2, c20, c21) ROW(a3, c30, c31) ROW(a4, c40, c41) ROW(a5, c50, c51)
#undef ROW
    }
    if (f) {
        const lc_epilogue *e = f->e;
        float *cr = lc_c_at(f->c, f->ldc, e, f->r, f->j); long cs = lc_c_step(f->ldc, e);
        float *dr = e->kind == LC_EPILOGUE_RESIDUAL ? e->dst + (long)f->r * e->ldd + f->j : NULL;
        int addC = e->kind == LC_EPILOGUE_ACCUMULATE;
        const float *xs = f->xscale + f->j;
#define FIN(lo, hi, i) { int row = f->r + i; int32_t off = 128 * f->rowsum[row]; float ws = f->wscale[row]; \
        lc_finish_row512(dequant16(lo, off, ws, xs), dequant16(hi, off, ws, xs + 16), row, cr, dr, e, addC, 1); \
        cr += cs; if (dr) dr += e->ldd; }
        FIN(c00, c01, 0) FIN(c10, c11, 1) FIN(c20, c21, 2) FIN(c30, c31, 3) FIN(c40, c41, 4) FIN(c50, c51, 5)
#undef FIN
        return;
    }
    _mm512_storeu_si512(tile + 0 * QNR, c00); _mm512_storeu_si512(tile + 0 * QNR + 16, c01);
    _mm512_storeu_si512(tile + 1 * QNR, c10); _mm512_storeu_si512(tile + 1 * QNR + 16, c11);
    _mm512_storeu_si512(tile + 2 * QNR, c20); _mm512_storeu_si512(tile + 2 * QNR + 16, c21);
    _mm512_storeu_si512(tile + 3 * QNR, c30); _mm512_storeu_si512(tile + 3 * QNR + 16, c31);
    _mm512_storeu_si512(tile + 4 * QNR, c40); _mm512_storeu_si512(tile + 4 * QNR + 16, c41);
    _mm512_storeu_si512(tile + 5 * QNR, c50); _mm512_storeu_si512(tile + 5 * QNR + 16, c51);
}

// AVX2 (no VNNI): vpmaddubsw multiplies u8 by s8 and adds pairs into s16, which saturates for
// u8 activations up to 255. So the activations are taken back to s8 (x - 128: the top bit
// flipped) and the classic sign trick keeps every pair in range: |w| (u8, at most 127) times x
// with w's sign applied (s8, -127...127) gives w * x, and a pair is at most 2 * 127 * 127 =
// 32258. vpmaddwd with ones then sums the pairs into int32. The tile holds the true dot products
// sum w * (x - 128), i.e. acc - 128 * rowsum of the VNNI kernel: lc_qgemm takes that into account.
__attribute__((target("avx2,fma")))
static void qkernel_avx2(int groups, int mr, const int8_t *a, long lda, const uint8_t *bp, int32_t *tile) {
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (int half = 0; half < 2; half++) {
        for (int r0 = 0; r0 < LC_MR; r0 += 3) {
            const int8_t *a0 = a + (r0 < mr ? (long)r0 * lda : 0);
            const int8_t *a1 = a + (r0 + 1 < mr ? (long)(r0 + 1) * lda : 0);
            const int8_t *a2 = a + (r0 + 2 < mr ? (long)(r0 + 2) * lda : 0);
            __m256i c00 = _mm256_setzero_si256(), c01 = _mm256_setzero_si256(), c10 = _mm256_setzero_si256();
            __m256i c11 = _mm256_setzero_si256(), c20 = _mm256_setzero_si256(), c21 = _mm256_setzero_si256();
            const uint8_t *b = bp + half * 64;
            for (int g = 0; g < groups; g++, b += 128) {
                __m256i b0 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b), flip);
                __m256i b1 = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(b + 32)), flip);
                int32_t w4;
                __m256i w, wa;
#define ROW(ar, lo, hi) memcpy(&w4, ar + 4 * g, 4); w = _mm256_set1_epi32(w4); wa = _mm256_abs_epi8(w); \
                lo = _mm256_add_epi32(lo, _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(b0, w)), ones)); \
                hi = _mm256_add_epi32(hi, _mm256_madd_epi16(_mm256_maddubs_epi16(wa, _mm256_sign_epi8(b1, w)), ones));
                ROW(a0, c00, c01) ROW(a1, c10, c11) ROW(a2, c20, c21)
#undef ROW
            }
            int32_t *t = tile + r0 * QNR + half * 16;
            _mm256_storeu_si256((__m256i *)t, c00); _mm256_storeu_si256((__m256i *)(t + 8), c01);
            _mm256_storeu_si256((__m256i *)(t + QNR), c10); _mm256_storeu_si256((__m256i *)(t + QNR + 8), c11);
            _mm256_storeu_si256((__m256i *)(t + 2 * QNR), c20); _mm256_storeu_si256((__m256i *)(t + 2 * QNR + 8), c21);
        }
    }
}

void lc_qgemm(int m, int n, int k, const int8_t *a, long lda, const float *wscale, const int32_t *rowsum,
              const uint8_t *b, const float *xscale, float *c, long ldc, const lc_epilogue *e) {
    if (m <= 0 || n <= 0 || qdetect() == 0) return;
    int groups = k / 4, vnni = qisa == 2;
    int32_t itile[LC_MR * QNR] __attribute__((aligned(64)));
    float tile[LC_MR * LC_NR_MAX] __attribute__((aligned(64)));
    for (int ic = 0; ic < m; ic += QMC) {
        int mc = m - ic < QMC ? m - ic : QMC;
        for (int jr = 0; jr < n; jr += QNR) {
            int w = n - jr < QNR ? n - jr : QNR;
            const uint8_t *bp = b + (long)jr * k;
            for (int ir = 0; ir < mc; ir += LC_MR) {
                int h = mc - ir < LC_MR ? mc - ir : LC_MR, r = ic + ir;
                const int8_t *ap = a + (long)r * lda;
                if (vnni && h == LC_MR && w == QNR) {
                    qfinish f = {c, ldc, r, jr, e, rowsum, wscale, xscale};
                    qkernel_vnni(groups, h, ap, lda, bp, itile, &f);
                    continue;
                }
                if (vnni) qkernel_vnni(groups, h, ap, lda, bp, itile, NULL);
                else qkernel_avx2(groups, h, ap, lda, bp, itile);
                for (int i = 0; i < h; i++) {
                    int32_t off = vnni ? 128 * rowsum[r + i] : 0;   // the AVX2 tile is already sum w * (x - 128)
                    float ws = wscale[r + i];
                    for (int q = 0; q < w; q++) tile[i * LC_NR_MAX + q] = ((float)(itile[i * QNR + q] - off) * ws) * xscale[jr + q];
                }
                lc_tile_epilogue(tile, h, w, r, jr, c, ldc, e, 1, 1);
            }
        }
    }
}

// ConvNeXt's depthwise k x k convolution followed by its LayerNorm over channels, in one pass
// per block of image rows (formats/kernels.md): the block's conv output for every channel stays
// in cache while the norm reads it back. Planes are [C][B][H*W]; zero padding k/2.

#include "CKernels.h"
#include "internal.h"
#include <stdlib.h>
#include <string.h>
#include <math.h>

// The calling thread's padded-strip scratch.
static float *scratch(size_t n) { return lc_thread_buffer(LC_BUFFER_DWCONV, n); }

// Four output rows at a time over one vector of columns: each input row of the strip is loaded
// once per tap column (kx) and feeds every one of the four output rows it touches (ky = i - o),
// so a block of four rows costs (K + 3) * K loads for 4 * K * K multiply-adds. Each output still
// sums bias, then its taps ky = 0..K-1, kx = 0..K-1 in that order, with fused multiply-adds.
#define DW_ROWS4(KK)                                                                                    \
    for (int i = 0; i < (KK) + 3; i++) {                                                                \
        const float *in = s + (long)(r - r0 + i) * PW + j;                                              \
        for (int kx = 0; kx < (KK); kx++) {                                                             \
            vf v; memcpy(&v, in + kx, sizeof v);                                                        \
            if (i < (KK)) a0 += kw[i * (KK) + kx] * v;                                                  \
            if (i >= 1 && i - 1 < (KK)) a1 += kw[(i - 1) * (KK) + kx] * v;                              \
            if (i >= 2 && i - 2 < (KK)) a2 += kw[(i - 2) * (KK) + kx] * v;                              \
            if (i >= 3 && i - 3 < (KK)) a3 += kw[(i - 3) * (KK) + kx] * v;                              \
        }                                                                                               \
    }

// The same for two vectors of columns at once (j and j + VW): each weight is loaded once for
// both (rows of 32 columns or more). The same sums in the same order as DW_ROWS4.
#define DW_ROWS4X2(KK, VW)                                                                                \
    for (int i = 0; i < (KK) + 3; i++) {                                                                \
        const float *in = s + (long)(r - r0 + i) * PW + j;                                              \
        for (int kx = 0; kx < (KK); kx++) {                                                             \
            vf v, u; memcpy(&v, in + kx, sizeof v); memcpy(&u, in + kx + VW, sizeof u);                 \
            if (i < (KK)) { float q = kw[i * (KK) + kx]; a0 += q * v; b0 += q * u; }                    \
            if (i >= 1 && i - 1 < (KK)) { float q = kw[(i - 1) * (KK) + kx]; a1 += q * v; b1 += q * u; } \
            if (i >= 2 && i - 2 < (KK)) { float q = kw[(i - 2) * (KK) + kx]; a2 += q * v; b2 += q * u; } \
            if (i >= 3 && i - 3 < (KK)) { float q = kw[(i - 3) * (KK) + kx]; a3 += q * v; b3 += q * u; } \
        }                                                                                               \
    }

// One implementation, instantiated for 16-wide (AVX-512) and 8-wide (AVX2) vectors through
// clang's vector extensions. Loads and stores are unaligned (memcpy of a vector).
#define DWLN_IMPL(NAME, TARGET, VW)                                                                     \
/* The conv of channels [c0, c1) over output rows [r0, r1) of image b. */                               \
__attribute__((target(TARGET)))                                                                         \
static void NAME##_conv(const float *x, int B, int H, int W, int K, const float *wt, const float *dwb,   \
                        float *y, int b, int r0, int r1, int c0, int c1) {                              \
    _Pragma("clang fp contract(fast)")                                                                  \
    typedef float vf __attribute__((vector_size(VW * 4)));                                              \
    const int pad = K / 2, PW = W + 2 * pad + VW, rows = r1 - r0 + 2 * pad;                             \
    const long HW = (long)H * W;                                                                        \
    /* + 3 zero rows: a last group of fewer than four output rows reads them and drops the result */    \
    float *s = scratch((size_t)(rows + 3) * PW + VW);                                                   \
    /* Zeroed once per call: the borders and any rows outside the image stay zero, and each             \
       channel overwrites only the image part of the rows inside it. */                                 \
    memset(s, 0, sizeof(float) * ((size_t)(rows + 3) * PW + VW));                                       \
    const int rlo = r0 - pad < 0 ? pad - r0 : 0, rhi = r1 + pad > H ? H - r0 + pad : rows;              \
    for (int c = c0; c < c1; c++) {                                                                     \
        const float *plane = x + ((long)c * B + b) * HW;                                                \
        for (int rr = rlo; rr < rhi; rr++) {                                                            \
            const float *src = plane + (long)(r0 - pad + rr) * W;                                       \
            float *d = s + (long)rr * PW + pad;                                                         \
            int q = 0;                                                                                  \
            for (; q + VW <= W; q += VW) { vf v; memcpy(&v, src + q, sizeof v); memcpy(d + q, &v, sizeof v); }\
            for (; q < W; q++) d[q] = src[q];                                                           \
        }                                                                                               \
        const float *kw = wt + (long)c * K * K;                                                         \
        vf bias = (vf){} + dwb[c];                                                                      \
        for (int r = r0; r < r1; r += 4) {                                                              \
            int nrow = r1 - r < 4 ? r1 - r : 4;                                                         \
            float *out = y + ((long)c * B + b) * HW + (long)r * W;                                      \
            int j = 0;                                                                                  \
            if (K == 7) for (; j + VW < W; j += 2 * VW) {                                               \
                vf a0 = bias, a1 = bias, a2 = bias, a3 = bias, b0 = bias, b1 = bias, b2 = bias, b3 = bias; \
                DW_ROWS4X2(7, VW)                                      \
                int n = W - j - VW < VW ? W - j - VW : VW;                                              \
                vf acc[4] = {a0, a1, a2, a3}, bcc[4] = {b0, b1, b2, b3};                                \
                for (int o = 0; o < nrow; o++) {                                                        \
                    memcpy(out + (long)o * W + j, &acc[o], sizeof(float) * VW);                         \
                    memcpy(out + (long)o * W + j + VW, &bcc[o], sizeof(float) * n);                     \
                }                                                                                       \
            }                                                                                           \
            for (; j < W; j += VW) {                                                                    \
                vf a0 = bias, a1 = bias, a2 = bias, a3 = bias;                                          \
                if (K == 7) { _Pragma("clang loop unroll(full)") DW_ROWS4(7) }                          \
                else { DW_ROWS4(K) }                                                                    \
                int n = W - j < VW ? W - j : VW;                                                        \
                vf acc[4] = {a0, a1, a2, a3};                                                           \
                for (int o = 0; o < nrow; o++) memcpy(out + (long)o * W + j, &acc[o], sizeof(float) * n); \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}                                                                                                       \
/* LayerNorm over the C channels (planes P apart) of columns [q0, q0 + n), in place. */                \
__attribute__((target(TARGET)))                                                                         \
static void NAME##_norm(float *y, int C, long P, long q0, int n, const float *lnw, const float *lnb,     \
                        float eps) {                                                                    \
    _Pragma("clang fp contract(fast)")                                                                  \
    typedef float vf __attribute__((vector_size(VW * 4)));                                              \
    const float inv = 1.0f / (float)C;                                                                  \
    int j = 0;                                                                                          \
    /* Four vectors of columns at a time: four independent sums per channel (the adds of one column   \
       chain otherwise) and four adjacent lines per load group. Each column's sums are as below. */   \
    for (; j + 4 * VW <= n; j += 4 * VW) {                                                              \
        vf m0 = {}, m1 = {}, m2 = {}, m3 = {}, q0v = {}, q1v = {}, q2v = {}, q3v = {};                \
        for (int c = 0; c < C; c++) {                                                                   \
            const float *p = y + c * P + q0 + j; vf v0, v1, v2, v3;                                     \
            memcpy(&v0, p, sizeof v0); memcpy(&v1, p + VW, sizeof v1);                                  \
            memcpy(&v2, p + 2 * VW, sizeof v2); memcpy(&v3, p + 3 * VW, sizeof v3);                     \
            m0 += v0; m1 += v1; m2 += v2; m3 += v3;                                                     \
        }                                                                                               \
        m0 *= inv; m1 *= inv; m2 *= inv; m3 *= inv;                                                     \
        for (int c = 0; c < C; c++) {                                                                   \
            const float *p = y + c * P + q0 + j; vf v0, v1, v2, v3;                                     \
            memcpy(&v0, p, sizeof v0); memcpy(&v1, p + VW, sizeof v1);                                  \
            memcpy(&v2, p + 2 * VW, sizeof v2); memcpy(&v3, p + 3 * VW, sizeof v3);                     \
            v0 -= m0; v1 -= m1; v2 -= m2; v3 -= m3;                                                     \
            q0v += v0 * v0; q1v += v1 * v1; q2v += v2 * v2; q3v += v3 * v3;                             \
        }                                                                                               \
        vf r0v = 1.0f / __builtin_elementwise_sqrt(q0v * inv + eps);                                    \
        vf r1v = 1.0f / __builtin_elementwise_sqrt(q1v * inv + eps);                                    \
        vf r2v = 1.0f / __builtin_elementwise_sqrt(q2v * inv + eps);                                    \
        vf r3v = 1.0f / __builtin_elementwise_sqrt(q3v * inv + eps);                                    \
        for (int c = 0; c < C; c++) {                                                                   \
            float *p = y + c * P + q0 + j; vf v0, v1, v2, v3;                                           \
            memcpy(&v0, p, sizeof v0); memcpy(&v1, p + VW, sizeof v1);                                  \
            memcpy(&v2, p + 2 * VW, sizeof v2); memcpy(&v3, p + 3 * VW, sizeof v3);                     \
            v0 = (v0 - m0) * r0v * lnw[c] + lnb[c]; v1 = (v1 - m1) * r1v * lnw[c] + lnb[c];             \
            v2 = (v2 - m2) * r2v * lnw[c] + lnb[c]; v3 = (v3 - m3) * r3v * lnw[c] + lnb[c];             \
            memcpy(p, &v0, sizeof v0); memcpy(p + VW, &v1, sizeof v1);                                  \
            memcpy(p + 2 * VW, &v2, sizeof v2); memcpy(p + 3 * VW, &v3, sizeof v3);                     \
        }                                                                                               \
    }                                                                                                   \
    for (; j + VW <= n; j += VW) {                                                                      \
        vf m = {}, q = {};                                                                              \
        for (int c = 0; c < C; c++) { vf v; memcpy(&v, y + c * P + q0 + j, sizeof v); m += v; }         \
        m *= inv;                                                                                       \
        for (int c = 0; c < C; c++) { vf v; memcpy(&v, y + c * P + q0 + j, sizeof v); v -= m; q += v * v; } \
        vf rs = 1.0f / __builtin_elementwise_sqrt(q * inv + eps);                                       \
        for (int c = 0; c < C; c++) {                                                                   \
            float *p = y + c * P + q0 + j;                                                              \
            vf v; memcpy(&v, p, sizeof v);                                                              \
            v = (v - m) * rs * lnw[c] + lnb[c];                                                         \
            memcpy(p, &v, sizeof v);                                                                    \
        }                                                                                               \
    }                                                                                                   \
    for (; j < n; j++) {                                                                                \
        float m = 0, q = 0;                                                                             \
        for (int c = 0; c < C; c++) m += y[c * P + q0 + j];                                             \
        m *= inv;                                                                                       \
        for (int c = 0; c < C; c++) { float d = y[c * P + q0 + j] - m; q += d * d; }                    \
        float rs = 1.0f / sqrtf(q * inv + eps);                                                         \
        for (int c = 0; c < C; c++) { float *p = y + c * P + q0 + j; *p = (*p - m) * rs * lnw[c] + lnb[c]; } \
    }                                                                                                   \
}                                                                                                       \
__attribute__((target(TARGET)))                                                                         \
static void NAME(const float *x, int C, int B, int H, int W, int K, const float *wt, const float *dwb,  \
                 const float *lnw, const float *lnb, float eps, float *y, int b, int r0, int r1) {      \
    NAME##_conv(x, B, H, W, K, wt, dwb, y, b, r0, r1, 0, C);                                           \
    /* the conv alone when lnw is NULL (training keeps the norm's statistics itself) */                 \
    if (lnw) NAME##_norm(y, C, (long)B * H * W, (long)b * H * W + (long)r0 * W, (r1 - r0) * W, lnw, lnb, eps); \
}

DWLN_IMPL(dwln_avx512, "avx512f", 16)
DWLN_IMPL(dwln_avx2, "avx2,fma", 8)

int lc_dwconv_layernorm_rows(int channels, int height, int width, int batch, int cores) {
    /* A block's output (C x rows x W) stays in L2 (384 KiB) while the norm reads it back; with
       fewer images than cores, each image splits into a multiple of `cores` blocks. */
    const long budget = 98304;
    long total = (long)channels * height * width;
    int blocks = (int)((total + budget - 1) / budget);
    if (blocks < 1) blocks = 1;
    if (batch < cores) {
        int least = (cores + batch - 1) / batch;
        if (blocks < least) blocks = least;
        blocks = (blocks + cores - 1) / cores * cores;
    }
    int rows = (height + blocks - 1) / blocks;
    int whole = (rows + 3) / 4 * 4;   /* whole groups of four rows (the conv's register block) */
    if ((height + whole - 1) / whole == blocks) rows = whole;
    return rows < 1 ? 1 : rows;
}

void lc_dwconv_channels(const float *x, int batch, int h, int w, int k, const float *weight,
                        const float *conv_bias, float *y, int image, int channel_start, int channel_end) {
    if (lc_sgemm_isa() == 2 && w > 8)
        dwln_avx512_conv(x, batch, h, w, k, weight, conv_bias, y, image, 0, h, channel_start, channel_end);
    else
        dwln_avx2_conv(x, batch, h, w, k, weight, conv_bias, y, image, 0, h, channel_start, channel_end);
}

void lc_layernorm_channels(float *y, int channels, long columns, long column_start, int count,
                           const float *norm_weight, const float *norm_bias, float eps) {
    if (lc_sgemm_isa() == 2)
        dwln_avx512_norm(y, channels, columns, column_start, count, norm_weight, norm_bias, eps);
    else
        dwln_avx2_norm(y, channels, columns, column_start, count, norm_weight, norm_bias, eps);
}

void lc_dwconv_layernorm(const float *x, int channels, int batch, int h, int w, int k, const float *weight,
                         const float *conv_bias, const float *norm_weight, const float *norm_bias, float eps,
                         float *y, int image, int row_start, int row_end) {
    /* Rows of at most 8 columns (stage 3's 7 x 7) fill an 8-wide vector better than a 16-wide one. */
    if (lc_sgemm_isa() == 2 && w > 8)
        dwln_avx512(x, channels, batch, h, w, k, weight, conv_bias, norm_weight, norm_bias, eps, y, image, row_start, row_end);
    else
        dwln_avx2(x, channels, batch, h, w, k, weight, conv_bias, norm_weight, norm_bias, eps, y, image, row_start, row_end);
}

// The depthwise conv's weight gradient for channels [c0, c1): dW[c][ky][kx] += sum over images,
// rows and columns of x_padded[r + ky][j + kx] * dy[r][j] (each image's sum in float, added in
// double, as the Swift loop it replaces). Four taps at a time share each load of dy. Each row of
// dy is copied zero-padded to whole vectors, so rows narrower than a vector (14 and 7 columns)
// and the ends of the others run as vectors too (the padding adds zeros).
#define DWGRAD_IMPL(NAME, TARGET, VW)                                                                   \
__attribute__((target(TARGET)))                                                                         \
static void NAME(const float *x, const float *dy, int C, int B, int H, int W, int K, int c0, int c1,    \
                 float *dw) {                                                                           \
    typedef float vf __attribute__((vector_size(VW * 4)));                                              \
    const int pad = K / 2, PW = W + 2 * pad + VW, PH = H + 2 * pad, GW = (W + VW - 1) / VW * VW;        \
    const long HW = (long)H * W;                                                                        \
    float *s = scratch((size_t)PH * PW + VW + (size_t)H * GW);                                          \
    float *gp = s + (size_t)PH * PW + VW;   /* dy, rows padded to GW */                                 \
    double acc[64];                                                                                     \
    memset(s, 0, sizeof(float) * ((size_t)PH * PW + VW + (size_t)H * GW));                              \
    for (int c = c0; c < c1; c++) {                                                                     \
        for (int i = 0; i < K * K; i++) acc[i] = 0;                                                     \
        for (int b = 0; b < B; b++) {                                                                   \
            const float *plane = x + ((long)c * B + b) * HW, *g = dy + ((long)c * B + b) * HW;          \
            /* borders and padding stay zero: only the image parts are written */                      \
            for (int r = 0; r < H; r++) memcpy(s + (long)(r + pad) * PW + pad, plane + (long)r * W, sizeof(float) * W); \
            for (int r = 0; r < H; r++) memcpy(gp + (long)r * GW, g + (long)r * W, sizeof(float) * W); \
            for (int ky = 0; ky < K; ky++) {                                                            \
                for (int kx0 = 0; kx0 < K; kx0 += 4) {                                                  \
                    int nt = K - kx0 < 4 ? K - kx0 : 4;                                                 \
                    vf a0 = {}, a1 = {}, a2 = {}, a3 = {};                                              \
                    for (int r = 0; r < H; r++) {                                                       \
                        const float *src = s + (long)(r + ky) * PW + kx0, *gr = gp + (long)r * GW;      \
                        for (int j = 0; j < GW; j += VW) {                                              \
                            vf gv, v0, v1, v2, v3;                                                      \
                            memcpy(&gv, gr + j, sizeof gv);                                             \
                            memcpy(&v0, src + j, sizeof v0); memcpy(&v1, src + j + 1, sizeof v1);       \
                            memcpy(&v2, src + j + 2, sizeof v2); memcpy(&v3, src + j + 3, sizeof v3);   \
                            a0 += v0 * gv; a1 += v1 * gv; a2 += v2 * gv; a3 += v3 * gv;                 \
                        }                                                                               \
                    }                                                                                   \
                    float tot[4] = {0, 0, 0, 0};                                                        \
                    for (int l = 0; l < VW; l++) { tot[0] += a0[l]; tot[1] += a1[l]; tot[2] += a2[l]; tot[3] += a3[l]; } \
                    for (int q = 0; q < nt; q++) acc[ky * K + kx0 + q] += (double)tot[q];               \
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        for (int i = 0; i < K * K; i++) dw[(long)c * K * K + i] += (float)acc[i];                       \
    }                                                                                                   \
}

DWGRAD_IMPL(dwgrad_avx512, "avx512f", 16)
DWGRAD_IMPL(dwgrad_avx2, "avx2,fma", 8)

void lc_dwconv_weight_grad(const float *x, const float *dy, int channels, int batch, int h, int w, int k,
                           int channel_start, int channel_end, float *dweight) {
    if (lc_sgemm_isa() == 2) dwgrad_avx512(x, dy, channels, batch, h, w, k, channel_start, channel_end, dweight);
    else dwgrad_avx2(x, dy, channels, batch, h, w, k, channel_start, channel_end, dweight);
}

// ConvNeXt's depthwise k x k convolution followed by its LayerNorm over channels, in one pass
// per block of image rows (formats/kernels.md): the block's conv output for every channel stays
// in cache while the norm reads it back. Planes are [C][B][H*W]; zero padding k/2.

#include "CKernels.h"
#include <stdlib.h>
#include <string.h>
#include <math.h>

static __thread float *dw_scratch = NULL;
static __thread size_t dw_capacity = 0;

static float *scratch(size_t n) {
    if (n > dw_capacity) {
        free(dw_scratch);
        dw_scratch = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        dw_capacity = n;
    }
    return dw_scratch;
}

// One implementation, instantiated for 16-wide (AVX-512) and 8-wide (AVX2) vectors through
// clang's vector extensions. Loads and stores are unaligned (memcpy of a vector).
#define DWLN_IMPL(NAME, TARGET, VW)                                                                     \
__attribute__((target(TARGET)))                                                                         \
static void NAME(const float *x, int C, int B, int H, int W, int K, const float *wt, const float *dwb,  \
                 const float *lnw, const float *lnb, float eps, float *y, int b, int r0, int r1) {      \
    typedef float vf __attribute__((vector_size(VW * 4)));                                              \
    const int pad = K / 2, PW = W + 2 * pad + VW, rows = r1 - r0 + 2 * pad;                             \
    const long HW = (long)H * W, P = (long)B * HW;                                                      \
    float *s = scratch((size_t)rows * PW + VW);                                                         \
    for (int c = 0; c < C; c++) {                                                                       \
        const float *plane = x + ((long)c * B + b) * HW;                                                \
        for (int rr = 0; rr < rows; rr++) {                                                             \
            int row = r0 - pad + rr;                                                                    \
            float *d = s + (long)rr * PW;                                                               \
            memset(d, 0, sizeof(float) * pad);                                                          \
            if (row >= 0 && row < H) memcpy(d + pad, plane + (long)row * W, sizeof(float) * W);         \
            else memset(d + pad, 0, sizeof(float) * W);                                                 \
            memset(d + pad + W, 0, sizeof(float) * (PW - pad - W));                                    \
        }                                                                                               \
        const float *kw = wt + (long)c * K * K;                                                         \
        vf bias = (vf){} + dwb[c];                                                                      \
        /* Four output rows at a time: four independent accumulator chains (one chain would             \
           wait on the FMA latency at every tap), each summing its taps in the same order. */           \
        int r = r0;                                                                                     \
        for (; r + 4 <= r1; r += 4) {                                                                   \
            float *out = y + ((long)c * B + b) * HW + (long)r * W;                                      \
            for (int j = 0; j < W; j += VW) {                                                           \
                vf a0 = bias, a1 = bias, a2 = bias, a3 = bias;                                          \
                for (int ky = 0; ky < K; ky++) {                                                        \
                    const float *in = s + (long)(r - r0 + ky) * PW + j;                                 \
                    const float *wr = kw + ky * K;                                                      \
                    for (int kx = 0; kx < K; kx++) {                                                    \
                        vf v0, v1, v2, v3;                                                              \
                        memcpy(&v0, in + kx, sizeof v0); memcpy(&v1, in + PW + kx, sizeof v1);          \
                        memcpy(&v2, in + 2 * PW + kx, sizeof v2); memcpy(&v3, in + 3 * PW + kx, sizeof v3);\
                        float wv = wr[kx];                                                              \
                        a0 += wv * v0; a1 += wv * v1; a2 += wv * v2; a3 += wv * v3;                     \
                    }                                                                                   \
                }                                                                                       \
                if (j + VW <= W) {                                                                    \
                    memcpy(out + j, &a0, sizeof a0); memcpy(out + W + j, &a1, sizeof a1);               \
                    memcpy(out + 2 * W + j, &a2, sizeof a2); memcpy(out + 3 * W + j, &a3, sizeof a3);   \
                } else {                                                                                \
                    int n = W - j;                                                                      \
                    memcpy(out + j, &a0, sizeof(float) * n); memcpy(out + W + j, &a1, sizeof(float) * n);\
                    memcpy(out + 2 * W + j, &a2, sizeof(float) * n); memcpy(out + 3 * W + j, &a3, sizeof(float) * n);\
                }                                                                                       \
            }                                                                                           \
        }                                                                                               \
        for (; r < r1; r++) {                                                                           \
            float *out = y + ((long)c * B + b) * HW + (long)r * W;                                      \
            for (int j = 0; j < W; j += VW) {                                                           \
                vf acc = bias;                                                                          \
                for (int ky = 0; ky < K; ky++) {                                                        \
                    const float *in = s + (long)(r - r0 + ky) * PW + j;                                 \
                    const float *wr = kw + ky * K;                                                      \
                    for (int kx = 0; kx < K; kx++) {                                                    \
                        vf v; memcpy(&v, in + kx, sizeof v);                                            \
                        acc += wr[kx] * v;                                                              \
                    }                                                                                   \
                }                                                                                       \
                memcpy(out + j, &acc, sizeof(float) * (W - j < VW ? W - j : VW));                       \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    if (!lnw) return;   /* the conv alone (training keeps the norm's statistics itself) */              \
    /* LayerNorm over channels of columns [q0, q0 + n), in place. */                                    \
    const long q0 = (long)b * HW + (long)r0 * W;                                                        \
    const int n = (r1 - r0) * W;                                                                        \
    const float inv = 1.0f / (float)C;                                                                  \
    int j = 0;                                                                                          \
    for (; j + VW <= n; j += VW) {                                                                      \
        vf m = {}, q = {};                                                                              \
        for (int c = 0; c < C; c++) { vf v; memcpy(&v, y + c * P + q0 + j, sizeof v); m += v; }         \
        m *= inv;                                                                                       \
        for (int c = 0; c < C; c++) { vf v; memcpy(&v, y + c * P + q0 + j, sizeof v); v -= m; q += v * v; } \
        vf rs;                                                                                          \
        for (int l = 0; l < VW; l++) rs[l] = 1.0f / sqrtf(q[l] * inv + eps);                            \
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
}

DWLN_IMPL(dwln_avx512, "avx512f", 16)
DWLN_IMPL(dwln_avx2, "avx2,fma", 8)

int lc_dwconv_layernorm_rows(int channels, int width) {
    int r = 24576 / (channels * width > 0 ? channels * width : 1);
    r = r / 4 * 4;   /* whole groups of four rows (see the conv loop) */
    return r < 4 ? 4 : r;
}

void lc_dwconv_layernorm(const float *x, int channels, int batch, int h, int w, int k, const float *weight,
                         const float *conv_bias, const float *norm_weight, const float *norm_bias, float eps,
                         float *y, int image, int row_start, int row_end) {
    if (lc_sgemm_isa() == 2)
        dwln_avx512(x, channels, batch, h, w, k, weight, conv_bias, norm_weight, norm_bias, eps, y, image, row_start, row_end);
    else
        dwln_avx2(x, channels, batch, h, w, k, weight, conv_bias, norm_weight, norm_bias, eps, y, image, row_start, row_end);
}

// ConvNeXt's downsampling at inference: LayerNorm over channels, then the 2 x 2 stride-2 patch
// conv's im2col, in one pass per output row (formats/kernels.md). Planes are [C][B][H*W]; the
// columns come out as [C*4][B*Ho*Wo], row (c, ky, kx), as Kernels.patchColumns lays them out.
// The norm is Kernels.layerNormChannelsForward's arithmetic, operation for operation (sums over
// channels in order, no fused multiply-adds: CKernels builds with -ffp-contract=off), so the
// result is the same bits as the two Swift passes it replaces.

#include "CKernels.h"
#include "internal.h"

#define MAX_W 1024

#define LNPATCH_IMPL(NAME, TARGET)                                                                      \
__attribute__((target(TARGET)))                                                                         \
static void NAME(const float *x, int C, int B, int H, int W, const float *g, const float *beta, float eps, \
                 float *col, int b, int oy) {                                                           \
    const long HW = (long)H * W, plane = (long)B * HW;                                                  \
    const int ho = H / 2, wo = W / 2;                                                                   \
    const long cols = (long)B * ho * wo, at = ((long)b * ho + oy) * wo;                                 \
    const float inv = 1 / (float)C;                                                                     \
    /* The two input rows of the output row are adjacent in each plane: one run of 2W columns per \
       channel and pass (runs of W = 14 to 56 floats were mostly loop overhead). */              \
    float m[2 * MAX_W], s[2 * MAX_W];                                                                   \
    const int n = 2 * W;                                                                                \
    const float *row0 = x + (long)b * HW + (long)(2 * oy) * W;                                          \
    for (int j = 0; j < n; j++) { m[j] = 0; s[j] = 0; }                                                 \
    for (int c = 0; c < C; c++) { const float *r = row0 + c * plane; for (int j = 0; j < n; j++) m[j] += r[j]; } \
    for (int j = 0; j < n; j++) m[j] *= inv;                                                            \
    for (int c = 0; c < C; c++) {                                                                       \
        const float *r = row0 + c * plane;                                                              \
        for (int j = 0; j < n; j++) { float d = r[j] - m[j]; s[j] += d * d; }                           \
    }                                                                                                   \
    for (int j = 0; j < n; j++) s[j] = 1 / __builtin_sqrtf(s[j] * inv + eps);                           \
    for (int c = 0; c < C; c++) {                                                                       \
        const float gc = g[c], bc = beta[c];                                                            \
        for (int ky = 0; ky < 2; ky++) {                                                                \
            const float *r = row0 + c * plane + ky * W, *mk = m + ky * W, *sk = s + ky * W;             \
            float *even = col + ((long)c * 4 + ky * 2) * cols + at, *odd = even + cols;                 \
            for (int ox = 0; ox < wo; ox++) {                                                           \
                even[ox] = (r[2 * ox] - mk[2 * ox]) * sk[2 * ox] * gc + bc;                             \
                odd[ox] = (r[2 * ox + 1] - mk[2 * ox + 1]) * sk[2 * ox + 1] * gc + bc;                  \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}

LNPATCH_IMPL(lnpatch_avx512, "avx512f")
LNPATCH_IMPL(lnpatch_avx2, "avx2,fma")
LNPATCH_IMPL(lnpatch_plain, "sse2")

int lc_layernorm_patchify2(const float *x, int channels, int batch, int h, int w, const float *norm_weight,
                           const float *norm_bias, float eps, float *columns, int image, int out_row) {
    if (w > MAX_W || h % 2 || w % 2) return 0;
    int level = lc_sgemm_isa();
    if (level == 2) lnpatch_avx512(x, channels, batch, h, w, norm_weight, norm_bias, eps, columns, image, out_row);
    else if (level == 1) lnpatch_avx2(x, channels, batch, h, w, norm_weight, norm_bias, eps, columns, image, out_row);
    else lnpatch_plain(x, channels, batch, h, w, norm_weight, norm_bias, eps, columns, image, out_row);
    return 1;
}

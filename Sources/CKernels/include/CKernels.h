#ifndef CKERNELS_H
#define CKERNELS_H

#include <stdint.h>
#include <stddef.h>

/// Matrix products for ConvNeXt's pointwise layers with the pass that follows each one fused into
/// the product's own tiles (formats/kernels.md). AVX2 + FMA; `lc_sgemm_available()` says whether
/// this CPU has them (callers fall back to OpenBLAS plus separate passes when it does not).

/// What happens to each finished tile of `A * B` (row r of the product, column j):
enum {
    /// C[r][j] = sum (+ bias[r] when bias is given).
    LC_EPILOGUE_STORE = 0,
    /// C[r][j] = gelu(sum + bias[r]), the erf GELU of `lc_gelu` (same bits).
    LC_EPILOGUE_BIAS_GELU = 1,
    /// D[r][j] += scale[r] * (sum + bias[r]): ConvNeXt's layer scale and residual. C is scratch
    /// (partial sums when K is split); D is the residual stream.
    LC_EPILOGUE_RESIDUAL = 2,
    /// C[r][j] += sum (+ bias[r] when given).
    LC_EPILOGUE_ACCUMULATE = 3,
    /// C[r][j] = sum + bias[r] and D[r][j] = gelu(C[r][j]): training's fc1, which keeps both the
    /// pre-activation (for GELU's derivative) and the activation (fc2's input).
    LC_EPILOGUE_BIAS_GELU_KEEP = 4,
    /// C[r][j] = sum * gelu'(D[r][j]) (D read, row stride ldd): training's dL/dhpre straight from
    /// fc2's input-gradient product. AVX-512 only (`lc_sgemm_isa() == 2`).
    LC_EPILOGUE_GELU_GRAD = 5,
};

typedef struct {
    int kind;
    const float *bias;    /* per row, or NULL (RESIDUAL and BIAS_GELU need it) */
    const float *scale;   /* RESIDUAL: per row */
    float *dst;           /* RESIDUAL, BIAS_GELU_KEEP, GELU_GRAD: D (row stride ldd) */
    long ldd;
    /* STORE and BIAS_GELU: 0 for C row-major (ldc); else C in the packed layout a product reads
       its B in (`lc_sgemm_panel_width()` columns per panel, each panel `panel` floats: rows x
       width): element (r, j) at c[(j / packed) * panel + r * packed + j % packed]. */
    int packed;
    long panel;
} lc_epilogue;

/// 1 when the CPU has AVX2 and FMA.
int lc_sgemm_available(void);

/// The micro-kernel in use: 0 none, 1 AVX2 + FMA (6 x 16), 2 AVX-512 (6 x 32).
int lc_sgemm_isa(void);

/// Uses at most `level` (to measure or test one kernel against the other); never more than the
/// CPU has; a negative level goes back to the widest the CPU has.
void lc_sgemm_force_isa(int level);

/// As `lc_sgemm` with any strides: A element (i, p) at a[i*rsa + p*csa], B element (p, j) at
/// b[p*rsb + j*csb] (so either may be a transpose).
void lc_sgemm_strided(int m, int n, int k, const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                      float *c, long ldc, const lc_epilogue *epilogue);

/// As `lc_sgemm_strided` over the pool's threads when the product is one that streams A (row-major
/// A of more than 1 MiB, lda = K, and B small enough to pack whole in L2: batch 1's later stages):
/// B packed once, rows claimed in chunks. Returns 0 without doing anything for other products.
int lc_sgemm_parallel_rows(int m, int n, int k, const float *a, long rsa, long csa, const float *b, long rsb, long csb,
                           float *c, long ldc, const lc_epilogue *epilogue);

/// Columns per panel of B's packed layout (32 with AVX-512, 16 with AVX2): panel q holds columns
/// [q * width, q * width + width) for every row of K, `width` floats per row, K * width floats
/// per panel, the last one's missing columns zero. An epilogue with `packed` writes it.
int lc_sgemm_panel_width(void);

/// As `lc_sgemm_strided` with B already in the packed layout (`lc_sgemm_panel_width()`): a hidden
/// layer written packed by the product before (fc1) read without packing it again (fc2).
void lc_sgemm_packed_b(int m, int n, int k, const float *a, long rsa, long csa, const float *packed_b,
                       float *c, long ldc, const lc_epilogue *epilogue);

/// As `lc_sgemm_parallel_rows` with B already packed (as `lc_sgemm_packed_b`).
int lc_sgemm_parallel_rows_packed_b(int m, int n, int k, const float *a, long rsa, long csa, const float *packed_b,
                                    float *c, long ldc, const lc_epilogue *epilogue);

/// wt[c][r] = w[r][c] for columns [c0, c1) of a rows x columns row-major matrix (wt is columns x
/// rows); 0 without touching wt where the CPU has no AVX2.
int lc_transpose_columns(const float *w, int rows, int columns, int c0, int c1, float *wt);

/// C[M x N] <- epilogue(A[M x K] * B[K x N]); all row-major with leading dimensions lda, ldb,
/// ldc. Runs on the calling thread (callers split M or N over the cores).
void lc_sgemm(int m, int n, int k, const float *a, long lda, const float *b, long ldb,
              float *c, long ldc, const lc_epilogue *epilogue);

/// x = gelu(x) over n floats, the same arithmetic as the fused BIAS_GELU epilogue (the erf GELU
/// of Kernels.geluVector to a few ulp); returns 0 without touching x where the CPU has no AVX2
/// (the caller runs its own loop).
int lc_gelu(float *x, long n);

/// dy *= gelu'(x) (Kernels.geluDerivative to a few ulp, with lc_gelu's erf); 0 without AVX-512.
int lc_gelu_backward(const float *x, float *dy, long n);

/// OpenBLAS's cblas_sgemm (row-major), loaded on first use with one thread; 0 when absent.
int lc_blas_available(void);
void lc_blas_sgemm(int trans_a, int trans_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                   float beta, float *c, int ldc);

/// ConvNeXt's depthwise k x k conv (stride 1, zero padding k/2) then LayerNorm over channels,
/// for output rows [row_start, row_end) of one image, into y (planes [C][B][H*W]; y must not be
/// x). Callers split images and row blocks over the cores; needs lc_sgemm_available(). With
/// norm_weight NULL: the conv alone.
void lc_dwconv_layernorm(const float *x, int channels, int batch, int h, int w, int k, const float *weight,
                         const float *conv_bias, const float *norm_weight, const float *norm_bias, float eps,
                         float *y, int image, int row_start, int row_end);

/// The conv of `lc_dwconv_layernorm` alone, for channels [channel_start, channel_end) over every
/// row of one image (batch 1's small planes split by channels: no halo rows read twice, and
/// each core writes whole planes).
void lc_dwconv_channels(const float *x, int batch, int h, int w, int k, const float *weight,
                        const float *conv_bias, float *y, int image, int channel_start, int channel_end);

/// The norm of `lc_dwconv_layernorm` alone: LayerNorm over `channels` planes `columns` floats
/// apart, in place, for columns [column_start, column_start + count); the same operations per
/// column.
void lc_layernorm_channels(float *y, int channels, long columns, long column_start, int count,
                           const float *norm_weight, const float *norm_bias, float eps);

/// ConvNeXt's downsampling LayerNorm over channels, written straight into the 2 x 2 stride-2 patch
/// conv's columns (`[C*4][B*(H/2)*(W/2)]`, row (c, ky, kx)) for output row `out_row` of image
/// `image`; the same bits as Kernels.layerNormChannelsForward then Kernels.patchColumns. x is
/// not changed. Returns 0 without writing when H or W is odd or W > 1024.
int lc_layernorm_patchify2(const float *x, int channels, int batch, int h, int w, const float *norm_weight,
                           const float *norm_bias, float eps, float *columns, int image, int out_row);

/// The depthwise conv's weight gradient for channels [channel_start, channel_end), accumulated
/// into dweight (C, 1, k, k); x and dy are planes [C][B][H*W]. k at most 8.
void lc_dwconv_weight_grad(const float *x, const float *dy, int channels, int batch, int h, int w, int k,
                           int channel_start, int channel_end, float *dweight);

/// Rows per block for `lc_dwconv_layernorm` that keep a block's output (C x rows x W) in L2 and,
/// for fewer images than cores, give every core a share of each image.
int lc_dwconv_layernorm_rows(int channels, int height, int width, int batch, int cores);

/// A task of `lc_parallel`: runs task number `index` of the job whose context is `ctx`.
typedef void (*lc_task_fn)(void *ctx, long index);

/// Runs fn(ctx, 0..<count) on the pool's threads and the caller's, returning when all are done.
/// Workers spin briefly between jobs, so back-to-back calls start in microseconds. A call made
/// while the pool is busy (nested, or from another thread) runs its tasks on the calling thread.
void lc_parallel(long count, lc_task_fn fn, void *ctx);

/// The threads `lc_parallel` uses: the workers plus the caller (starts the workers).
int lc_pool_threads(void);

/// Runs `iterations` steps of 12 independent vector FMA chains on every pool thread at once (the
/// widest vectors the kernels use) and returns the flops done: timed by the caller, the
/// machine's multiply-add ceiling, against which the benchmarks' GFLOP/s are read.
double lc_fma_peak_flops(long iterations);

/// Reads one byte every `stride` bytes of [start, start + bytes): maps a file mapping's pages
/// ahead of use. With the kernel's fault-around (64 KiB by default), a stride of 64 KiB maps
/// 16 pages per fault, cheaper than MADV_POPULATE_READ's page-by-page walk.
void lc_touch_pages(const void *start, size_t bytes, size_t stride);

/// A buffer of at least `count` floats (64-byte aligned) owned by the calling thread, for use
/// within one task: the next call on the same thread may move it. Freed when the thread ends.
float *lc_task_scratch(size_t count);

/// int8 products (qgemm.c): the micro-kernel in use, 0 none (no AVX2: the caller runs Swift
/// loops), 1 AVX2 (vpmaddubsw with the sign trick), 2 AVX-512 VNNI.
int lc_qgemm_isa(void);

/// Uses at most `level` (tests and benchmarks); a negative level goes back to the best there is.
void lc_qgemm_force_isa(int level);

/// Bytes of `lc_quantize_columns`'s output for K x N (N rounded up to whole 32-column panels).
long lc_quantized_columns_bytes(int k, int n);

/// Quantises each column j of X (K x N, element (p, j) at x[p*rsx + j*csx]) symmetrically to
/// -127..127 with scale max|X[:, j]| / 127 (scales[j]; values x * (127 / max), rounded to
/// nearest even), stored + 128 as u8 and packed as qgemm.c describes. K a multiple of 4.
void lc_quantize_columns(int k, int n, const float *x, long rsx, long csx, uint8_t *packed, float *scales);

/// C[M x N] <- epilogue(((acc - 128 * rowsum[r]) * wscale[r]) * xscale[j]) with acc the int32
/// sums of int8 A (M x K, row stride lda) times the packed columns b (from column 0 of a
/// 32-column panel); runs on the calling thread. Needs lc_qgemm_isa() > 0.
void lc_qgemm(int m, int n, int k, const int8_t *a, long lda, const float *wscale, const int32_t *rowsum,
              const uint8_t *b, const float *xscale, float *c, long ldc, const lc_epilogue *epilogue);

#endif

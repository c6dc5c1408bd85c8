// One core, the depthwise 7 x 7 conv + channel LayerNorm (lc_dwconv_layernorm) over every row
// block of every image of one ConvNeXt stage, as the fused block runs it: the best of REPS runs.
// Built and run by scripts/bench-kernels (against the release build's CKernels objects).
// Usage: dwconv C SIZE BATCH REPS [DUMP]   (DUMP: write the output planes there, to compare builds)
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "CKernels.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: dwconv C SIZE BATCH REPS [DUMP]\n"); return 2; }
    int C = atoi(argv[1]), H = atoi(argv[2]), W = H, B = atoi(argv[3]), reps = atoi(argv[4]), K = 7;
    long P = (long)B * H * W;
    float *x = aligned_alloc(64, sizeof(float) * C * P), *y = aligned_alloc(64, sizeof(float) * C * P);
    float *wt = malloc(sizeof(float) * C * K * K), *bias = malloc(sizeof(float) * C);
    float *lw = malloc(sizeof(float) * C), *lb = malloc(sizeof(float) * C);
    for (long i = 0; i < C * P; i++) { x[i] = (float)(i % 97) * 0.01f - 0.5f; y[i] = 0; }
    for (int i = 0; i < C * K * K; i++) wt[i] = 0.01f * (float)(i % 13) - 0.06f;
    for (int i = 0; i < C; i++) { bias[i] = 0.1f; lw[i] = 1.0f + 0.01f * (float)(i % 7); lb[i] = 0.02f * (float)(i % 5); }
    int rows = lc_dwconv_layernorm_rows(C, H, W, B, 1);
    double best = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        for (int b = 0; b < B; b++)
            for (int r = 0; r < H; r += rows)
                lc_dwconv_layernorm(x, C, B, H, W, K, wt, bias, lw, lb, 1e-6f, y, b, r, r + rows < H ? r + rows : H);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    if (argc > 5) { FILE *f = fopen(argv[5], "wb"); fwrite(y, sizeof(float), (size_t)(C * P), f); fclose(f); }
    printf("dwconv+LN C=%d %dx%d batch %d (rows per block %d): %.3f ms, %.1f GFLOP/s, one core\n",
           C, H, W, B, rows, best * 1e3, 2.0 * K * K * C * P / best / 1e9);
    return 0;
}

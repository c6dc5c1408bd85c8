// One core, the downsampling's LayerNorm + 2 x 2 patch columns (lc_layernorm_patchify2) over
// every output row of every image of one ConvNeXt stage boundary: the best of REPS runs.
// Built and run by scripts/bench-kernels. Usage: lnpatch C SIZE BATCH REPS [DUMP]
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "CKernels.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: lnpatch C SIZE BATCH REPS [DUMP]\n"); return 2; }
    int C = atoi(argv[1]), H = atoi(argv[2]), W = H, B = atoi(argv[3]), reps = atoi(argv[4]);
    long P = (long)B * H * W;
    float *x = aligned_alloc(64, sizeof(float) * C * P), *col = aligned_alloc(64, sizeof(float) * C * P);
    float *g = malloc(sizeof(float) * C), *beta = malloc(sizeof(float) * C);
    for (long i = 0; i < C * P; i++) x[i] = (float)(i % 89) * 0.01f - 0.4f;
    for (int i = 0; i < C; i++) { g[i] = 1.0f + 0.01f * (float)(i % 7); beta[i] = 0.02f * (float)(i % 5); }
    double best = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        for (int b = 0; b < B; b++)
            for (int oy = 0; oy < H / 2; oy++) lc_layernorm_patchify2(x, C, B, H, W, g, beta, 1e-6f, col, b, oy);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    if (argc > 5) { FILE *f = fopen(argv[5], "wb"); fwrite(col, sizeof(float), (size_t)(C * P), f); fclose(f); }
    printf("lnpatch C=%d %dx%d batch %d: %.3f ms, %.2f ns per input value, one core\n",
           C, H, W, B, best * 1e3, best / (double)(C * P) * 1e9);
    return 0;
}

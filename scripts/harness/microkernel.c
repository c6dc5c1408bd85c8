// One core, the 6 x 32 AVX-512 micro-kernel of sgemm.c on its own (A's 6 rows and one packed B
// panel in cache), finishing its tile from the registers with the plain store epilogue and with
// fc1's bias + GELU, at the K of each ConvNeXt stage's fc1 (96, 192, 384, 768), next to the
// core's multiply-add ceiling (sgemm.c's 12 FMA chains). The GELU's share of fc1's time falls as
// K grows: it is per output, the multiply-adds are K per output.
// Built by scripts/bench-kernels from sgemm.c's source (its kernels are static), with the other
// CKernels objects. Usage: microkernel REPS
#include "../../Sources/CKernels/sgemm.c"
#include <stdio.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

// GFLOP/s of `calls` kernel calls at depth kc (best of reps).
static double kernel_rate(int kc, int kind, int reps, long calls) {
    float *a = aligned_alloc(64, sizeof(float) * 6 * (size_t)kc), *bp = aligned_alloc(64, sizeof(float) * 32 * (size_t)kc);
    float *c = aligned_alloc(64, sizeof(float) * 6 * 32), tile[6 * 32] __attribute__((aligned(64)));
    float bias[6] = {0.1f, -0.2f, 0.05f, 0.3f, -0.1f, 0.0f};
    for (int i = 0; i < 6 * kc; i++) a[i] = 0.01f * (float)(i % 17) - 0.08f;
    for (int i = 0; i < 32 * kc; i++) bp[i] = 0.01f * (float)(i % 13) - 0.06f;
    lc_epilogue e = {0};
    e.kind = kind;
    if (kind == LC_EPILOGUE_BIAS_GELU) e.bias = bias;
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (long i = 0; i < calls; i++) kernel_avx512(kc, 6, a, kc, 1, bp, tile, c, 32, 0, 0, &e, 1, 1, NULL);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    volatile float sink = c[0];
    (void)sink;
    free(a); free(bp); free(c);
    return 2.0 * 6 * 32 * kc * (double)calls / best / 1e9;
}

static double ceiling(int reps) {
    long iterations = 20000000;
    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        volatile float sink = fma_chains512(iterations);
        (void)sink;
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return (double)iterations * 12 * 16 * 2 / best / 1e9;
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (detect() != 2) { printf("microkernel: no AVX-512 here (the 6 x 32 kernel is AVX-512 only)\n"); return 0; }
    // The ceiling before and after the kernels, the higher kept: the clock moves between runs.
    double peak = ceiling(reps), rate[4][2];
    int ks[4] = {96, 192, 384, 768};
    for (int i = 0; i < 4; i++) {
        long calls = 40000000L / ks[i];
        rate[i][0] = kernel_rate(ks[i], LC_EPILOGUE_STORE, reps, calls);
        rate[i][1] = kernel_rate(ks[i], LC_EPILOGUE_BIAS_GELU, reps, calls);
    }
    double after = ceiling(reps);
    if (after > peak) peak = after;
    printf("one core's multiply-add ceiling (12 FMA chains, no loads; the better of before and after): %.1f GFLOP/s\n", peak);
    for (int i = 0; i < 4; i++) {
        double plain = rate[i][0], gelu = rate[i][1];
        printf("6 x 32 kernel, K %3d: store %6.1f GFLOP/s (%3.0f%%), bias + GELU %6.1f GFLOP/s (%3.0f%%): "
               "the GELU %4.1f%% of fc1's time\n", ks[i], plain, 100 * plain / peak, gelu, 100 * gelu / peak,
               100 * (1 - gelu / plain));
    }
    return 0;
}

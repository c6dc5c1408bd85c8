// Every core, the depthwise 7 x 7 conv + channel LayerNorm of one ConvNeXt block as the fused
// block drives it (Kernels.depthwiseConvLayerNorm), against the way it was driven before, runs of
// the two taking turns: the best of REPS each. Built and run by scripts/bench-kernels.
// - fewer images than cores (batch 1): now the conv by 4 x cores chunks of channels, then the norm
//   by one chunk of columns per core; before, row blocks of lc_dwconv_layernorm_rows (conv + norm).
// - otherwise: row blocks either way; now claimed in interleaved order (units 0, half, 1, half + 1,
//   ...), before in order (neighbouring images on the two cores share a cache line at every
//   channel's boundary between them).
// The two must give the same bits (checked). Usage: dwconv2 C SIZE BATCH REPS
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "CKernels.h"

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

typedef struct {
    const float *x, *wt, *bias, *lw, *lb;
    float *y;
    int C, H, W, B, rows, blocks, interleaved, chunks, parts;
} Job;

static void row_block(void *p, long t) {
    Job *j = p;
    long units = (long)j->B * j->blocks, half = (units + 1) / 2;
    long u = j->interleaved ? (t % 2 == 0 ? t / 2 : half + t / 2) : t;
    int image = (int)(u / j->blocks), r0 = (int)(u % j->blocks) * j->rows, r1 = r0 + j->rows < j->H ? r0 + j->rows : j->H;
    lc_dwconv_layernorm(j->x, j->C, j->B, j->H, j->W, 7, j->wt, j->bias, j->lw, j->lb, 1e-6f, j->y, image, r0, r1);
}

static void channel_chunk(void *p, long u) {
    Job *j = p;
    lc_dwconv_channels(j->x, j->B, j->H, j->W, 7, j->wt, j->bias, j->y, 0,
                       (int)((long)j->C * u / j->chunks), (int)((long)j->C * (u + 1) / j->chunks));
}

static void column_chunk(void *p, long u) {
    Job *j = p;
    long n = (long)j->H * j->W, vectors = (n + 15) / 16;
    long q0 = vectors * u / j->parts * 16, q1 = vectors * (u + 1) / j->parts * 16;
    if (q1 > n) q1 = n;
    if (q1 > q0) lc_layernorm_channels(j->y, j->C, n, q0, (int)(q1 - q0), j->lw, j->lb, 1e-6f);
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: dwconv2 C SIZE BATCH REPS\n"); return 2; }
    int C = atoi(argv[1]), H = atoi(argv[2]), W = H, B = atoi(argv[3]), reps = atoi(argv[4]), K = 7;
    long P = (long)B * H * W;
    float *x = aligned_alloc(64, sizeof(float) * C * P), *before = aligned_alloc(64, sizeof(float) * C * P);
    float *after = aligned_alloc(64, sizeof(float) * C * P);
    float *wt = malloc(sizeof(float) * C * K * K), *bias = malloc(sizeof(float) * C);
    float *lw = malloc(sizeof(float) * C), *lb = malloc(sizeof(float) * C);
    for (long i = 0; i < C * P; i++) x[i] = (float)(i % 97) * 0.01f - 0.5f;
    for (int i = 0; i < C * K * K; i++) wt[i] = 0.01f * (float)(i % 13) - 0.06f;
    for (int i = 0; i < C; i++) { bias[i] = 0.1f; lw[i] = 1.0f + 0.01f * (float)(i % 7); lb[i] = 0.02f * (float)(i % 5); }
    int cores = lc_pool_threads();
    int rows = lc_dwconv_layernorm_rows(C, H, W, B, cores);
    if (rows > H) rows = H;
    long vectors = (P + 15) / 16;
    Job j = {x, wt, bias, lw, lb, NULL, C, H, W, B, rows, (H + rows - 1) / rows, 0, 4 * cores,
             (int)(cores < vectors ? cores : vectors)};
    double best[2] = {1e9, 1e9};
    for (int rep = 0; rep < reps; rep++) {
        for (int now_way = 0; now_way < 2; now_way++) {
            j.y = now_way ? after : before;
            double t0 = now();
            if (!now_way) {
                j.interleaved = 0;
                lc_parallel((long)B * j.blocks, row_block, &j);
            } else if (B < cores) {
                lc_parallel(j.chunks, channel_chunk, &j);
                lc_parallel(j.parts, column_chunk, &j);
            } else {
                j.interleaved = 1;
                lc_parallel((long)B * j.blocks, row_block, &j);
            }
            double dt = now() - t0;
            if (dt < best[now_way]) best[now_way] = dt;
        }
    }
    int same = memcmp(before, after, sizeof(float) * C * P) == 0;
    printf("dwconv+LN C=%d %dx%d batch %d, %d threads: %s %.3f ms, now %.3f ms (%.2fx)%s\n", C, H, W, B, cores,
           B < cores ? "by rows" : "images in order", best[0] * 1e3, best[1] * 1e3, best[0] / best[1],
           same ? "" : "  DIFFERENT BITS");
    return same ? 0 : 1;
}

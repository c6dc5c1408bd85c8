// OpenBLAS, loaded only when a product must run on it (a CPU without AVX2, or
// `liteclip bench --kernels openblas`). Not linked: linking it starts its worker threads at
// process start, which spin for a while on the core the process needs (seen as a third of a
// short command's time in sched_yield).

#include "CKernels.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>

typedef void (*sgemm_fn)(int order, int transa, int transb, int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, float beta, float *c, int ldc);
static sgemm_fn sgemm = NULL;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
    const char *names[] = {"libopenblas.so.0", "libopenblas.so", "libblas.so.3"};
    for (int i = 0; i < 3 && !sgemm; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) continue;
        void (*threads)(int) = (void (*)(int))dlsym(h, "openblas_set_num_threads");
        if (threads) threads(1);   // our callers split the work over the cores themselves
        sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    }
}

int lc_blas_available(void) {
    pthread_once(&once, load);
    return sgemm != NULL;
}

void lc_blas_sgemm(int trans_a, int trans_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                   float beta, float *c, int ldc) {
    pthread_once(&once, load);
    // CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112
    sgemm(101, trans_a ? 112 : 111, trans_b ? 112 : 111, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

// A small pool of worker threads for the compute passes (formats/kernels.md, "Threads").
//
// DispatchQueue.concurrentPerform costs 150-200 us per call on Linux here (its workers sleep
// between calls), and the image tower at batch 1 makes about a hundred parallel calls of about
// a millisecond each. These workers spin for a short while after each job before they sleep, so
// back-to-back calls start within a few microseconds.
//
// One job at a time: a caller that finds the pool busy (a nested call, or a second thread)
// runs its tasks itself, in order. Tasks are claimed through one 64-bit ticket, job number in
// the high half and next index in the low half, so a worker still holding an old job's ticket
// can never claim a task of the next one.

#include "CKernels.h"
#include "internal.h"
#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 63
#define SPIN_NS 400000L   /* how long an idle worker keeps spinning before it sleeps */

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pthread_once_t started = PTHREAD_ONCE_INIT;
static int workers;

static _Atomic unsigned long ticket;        /* job << 32 | next index */
static _Atomic long done_count, sleepers;
static _Atomic(lc_task_fn) job_fn;
static _Atomic(void *) job_ctx;
static _Atomic long job_count;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

// Claims and runs tasks of the current job until none is left.
static void drain(void) {
    for (;;) {
        unsigned long v = atomic_load(&ticket);
        long i = (long)(v & 0xffffffffUL);
        long n = atomic_load_explicit(&job_count, memory_order_relaxed);
        if (i >= n) return;
        lc_task_fn fn = atomic_load_explicit(&job_fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&job_ctx, memory_order_relaxed);
        // Succeeds only while the ticket still names this job, so fn, ctx and n were its own.
        if (!atomic_compare_exchange_weak(&ticket, &v, v + 1)) continue;
        fn(ctx, i);
        atomic_fetch_add(&done_count, 1);
    }
}

static void *worker(void *unused) {
    (void)unused;
    unsigned long seen = atomic_load(&ticket) >> 32;
    for (;;) {
        long start = now_ns();
        int spins = 0;
        while ((atomic_load(&ticket) >> 32) == seen) {
            relax();
            if ((++spins & 255) || now_ns() - start < SPIN_NS) continue;
            pthread_mutex_lock(&sleep_lock);
            atomic_fetch_add(&sleepers, 1);
            while ((atomic_load(&ticket) >> 32) == seen) pthread_cond_wait(&wake, &sleep_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&sleep_lock);
        }
        seen = atomic_load(&ticket) >> 32;
        drain();
    }
    return NULL;
}

static void start_workers(void) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cpus > 1 ? (int)(cpus - 1 > MAX_WORKERS ? MAX_WORKERS : cpus - 1) : 0;
    for (int w = 0; w < want; w++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, NULL) != 0) break;
        pthread_detach(t);
        workers++;
    }
}

int lc_pool_threads(void) {
    pthread_once(&started, start_workers);
    return workers + 1;
}

void lc_parallel(long count, lc_task_fn fn, void *ctx) {
    if (count <= 0) return;
    if (count == 1 || lc_pool_threads() == 1 || pthread_mutex_trylock(&busy) != 0) {
        for (long i = 0; i < count; i++) fn(ctx, i);
        return;
    }
    // First close the finished job's ticket (a new job number with no claimable index), then
    // write the new job, then publish it under a second number. A worker that read the old
    // ticket and then this job's fields can no longer claim with it: its compare-and-swap fails.
    // (Writing the fields while the old ticket still stood let such a worker claim a task of the
    // new job under the old ticket, which the new ticket then handed out again: a task ran twice
    // and the job's completion count ran ahead, so lc_parallel could return while a task still
    // ran. A C stress of 4 million two- and three-task jobs saw 8 to 1,589 tasks run twice.)
    unsigned long job = (atomic_load(&ticket) >> 32) + 1;
    atomic_store(&ticket, ((job & 0xffffffffUL) << 32) | 0xffffffffUL);
    atomic_store_explicit(&job_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&job_count, count, memory_order_relaxed);
    atomic_store(&done_count, 0);
    atomic_store(&ticket, ((job + 1) & 0xffffffffUL) << 32);   /* publishes the job (seq_cst) */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&wake);
        pthread_mutex_unlock(&sleep_lock);
    }
    drain();
    while (atomic_load(&done_count) < count) relax();
    pthread_mutex_unlock(&busy);
}

// A scratch of the calling thread for tasks claimed one by one (the column-blocked MLP's hidden
// block); not the buffers sgemm or the depthwise pass use inside their calls.
float *lc_task_scratch(size_t count) { return lc_thread_buffer(LC_BUFFER_TASK, count); }

void lc_touch_pages(const void *start, size_t bytes, size_t stride) {
    const volatile unsigned char *p = start;
    if (stride == 0) stride = 4096;
    for (size_t o = 0; o < bytes; o += stride) (void)p[o];
    if (bytes > 0) (void)p[bytes - 1];
}

// Mapping a file's pages ahead of use, two ways, each on a fresh read-only mapping with the
// page cache warm: madvise(MADV_POPULATE_READ) over the whole file, and lc_touch_pages (a read
// every 64 KiB; the kernel's fault-around maps the pages around each). Best of REPS each.
// Built and run by scripts/bench-kernels when given a file. Usage: mapping FILE REPS
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "CKernels.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: mapping FILE REPS\n"); return 2; }
    int fd = open(argv[1], O_RDONLY), reps = atoi(argv[2]);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) { perror(argv[1]); return 1; }
    size_t n = (size_t)st.st_size;
    double best[2] = {1e9, 1e9};
    for (int r = 0; r < reps; r++) {
        for (int way = 0; way < 2; way++) {
            void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) { perror("mmap"); return 1; }
            double t0 = now();
            if (way == 0) madvise(p, n, MADV_POPULATE_READ);
            else lc_touch_pages(p, n, 65536);
            double dt = now() - t0;
            if (dt < best[way]) best[way] = dt;
            munmap(p, n);
        }
    }
    printf("mapping %.0f MB: MADV_POPULATE_READ %.2f ms, a read every 64 KiB %.2f ms (best of %d, page cache warm)\n",
           (double)n / 1e6, best[0] * 1e3, best[1] * 1e3, reps);
    return 0;
}

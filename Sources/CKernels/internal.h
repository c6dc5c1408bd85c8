// Shared between the kernels' C files; not part of the module's interface.
#ifndef CKERNELS_INTERNAL_H
#define CKERNELS_INTERNAL_H

#include "CKernels.h"

#define LC_MR 6
#define LC_NR_MAX 32

/// The calling thread's scratch buffers, one per use so that none moves another's: sgemm's
/// packed B, the depthwise pass's padded strip, and `lc_task_scratch`'s (pool.c).
enum { LC_BUFFER_PACK, LC_BUFFER_DWCONV, LC_BUFFER_TASK, LC_BUFFER_COUNT };

/// Buffer `which` of the calling thread with room for at least `need` floats (64-byte aligned;
/// its contents do not survive growth). All of a thread's buffers are freed when it ends.
float *lc_thread_buffer(int which, size_t need);

/// Where C's element (r, j) lives: row-major with leading dimension ldc, or in the packed layout
/// when the epilogue says so (a tile never crosses a panel: its first column is a multiple of
/// the panel width, or within the panel's last 16 columns).
static inline float *lc_c_at(float *c, long ldc, const lc_epilogue *e, int r, int j) {
    if (!e->packed) return c + (long)r * ldc + j;
    return c + (long)(j / e->packed) * e->panel + (long)r * e->packed + j % e->packed;
}

/// Floats from one row of C to the next (within a panel when packed).
static inline long lc_c_step(long ldc, const lc_epilogue *e) { return e->packed ? e->packed : ldc; }

/// Applies a finished tile (row stride LC_NR_MAX) to rows [r, r+mr) and columns [j, j+nr) of C
/// as the epilogue says (sgemm.c). first: nothing of this product in C yet; last: the final K block.
void lc_tile_epilogue(const float *tile, int mr, int nr, int r, int j, float *c, long ldc,
                      const lc_epilogue *e, int first, int last);

/// The epilogue of one row of a full 32-wide tile straight from its two 16-wide halves (sgemm.c):
/// cr is C at the row's first column, dr the same place in D (RESIDUAL); addC adds what C holds.
#include <immintrin.h>
__attribute__((target("avx512f")))
void lc_finish_row512(__m512 v0, __m512 v1, int row, float *cr, float *dr, const lc_epilogue *e, int addC, int last);

#endif

#ifndef CSYSTEM_H
#define CSYSTEM_H
#include <stdint.h>
#include <stddef.h>

/// Linux calls that glibc declares only under _GNU_SOURCE, which Swift's Glibc module does not
/// define. Each returns what the call returns (-1 with errno set on failure).

/// copy_file_range(2): copies `count` bytes from `in_fd` at `in_offset` to `out_fd` at its
/// current position, inside the kernel (no pages mapped into the process).
long lc_copy_file_range(int in_fd, int64_t in_offset, int out_fd, size_t count);

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writeback of the range's dirty pages
/// without waiting for it.
int lc_start_writeback(int fd, int64_t offset, int64_t count);

#endif

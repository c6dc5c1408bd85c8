#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include "CSystem.h"

long lc_copy_file_range(int in_fd, int64_t in_offset, int out_fd, size_t count) {
    off64_t off = (off64_t)in_offset;
    return (long)copy_file_range(in_fd, &off, out_fd, NULL, count, 0);
}

int lc_start_writeback(int fd, int64_t offset, int64_t count) {
    return sync_file_range(fd, (off64_t)offset, (off64_t)count, SYNC_FILE_RANGE_WRITE);
}

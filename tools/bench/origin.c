/*
 * Origin benchmark helper: downloads URL into OUT through the origin module
 * with N connections (the file split into N ranges), and prints the seconds
 * it took. tools/bench/origin runs it beside the curl command line.
 *
 * usage: dopa-bench-origin URL OUT N
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "origin.h"

struct state {
    int fd;
    int pending;
    int failed;
    int64_t size;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_data(void *ctx, origin_file *f, uint64_t id, uint64_t offset, const void *data,
                   size_t len)
{
    (void)f;
    (void)id;
    struct state *s = ctx;
    const char *p = data;
    while (len > 0) {
        ssize_t n = pwrite(s->fd, p, len, (off_t)offset);
        if (n <= 0)
            return -1;
        p += n;
        offset += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static void on_info(void *ctx, origin_file *f, const origin_file_info *info)
{
    (void)f;
    ((struct state *)ctx)->size = info->size;
}

static void on_done(void *ctx, origin_file *f, uint64_t id, const origin_error *err)
{
    (void)f;
    (void)id;
    struct state *s = ctx;
    s->pending--;
    if (err != NULL) {
        fprintf(stderr, "dopa-bench-origin: %s\n", err->message);
        s->failed = 1;
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: dopa-bench-origin URL OUT N\n");
        return 2;
    }
    unsigned n = (unsigned)atoi(argv[3]);
    struct state s = {.size = -1};
    s.fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (s.fd < 0 || n == 0) {
        perror(argv[2]);
        return 1;
    }
    double t0 = now();
    origin *o = NULL;
    origin_file *f = NULL;
    origin_file_options opts = {.url = argv[1], .known_size = -1, .connections = n};
    origin_sink sink = {.on_info = on_info, .on_data = on_data, .on_done = on_done, .ctx = &s};
    if (origin_new(NULL, &o) != ORIGIN_OK || origin_file_open(o, &opts, &sink, &f) != ORIGIN_OK)
        return 1;
    /* One connection: a single request for the whole file, as curl does.
     * More: learn the size first, then one range per connection. */
    if (n == 1) {
        origin_fetch(f, 0, ORIGIN_TO_END, NULL);
        s.pending = 1;
    } else {
        origin_probe(f, NULL);
        s.pending = 1;
        while (s.pending > 0)
            origin_poll(o, 100);
        if (s.failed || s.size < 0)
            return 1;
        uint64_t size = (uint64_t)s.size, part = (size + n - 1) / n;
        for (uint64_t off = 0; off < size; off += part) {
            origin_fetch(f, off, off + part <= size ? part : size - off, NULL);
            s.pending++;
        }
    }
    while (s.pending > 0)
        origin_poll(o, 100);
    origin_free(o);
    if (close(s.fd) != 0 || s.failed)
        return 1;
    printf("%.3f\n", now() - t0);
    return 0;
}

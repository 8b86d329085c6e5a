/*
 * failmalloc: an LD_PRELOAD library that makes one allocation of a whole
 * program fail, for the campaigns that run a real program (dopad reading
 * its configuration) rather than a function linked into a test.
 *
 *   DOPA_FAILMALLOC_AT      the allocation to fail, counting from 1 (malloc,
 *                           calloc, realloc to a new size, aligned ones);
 *                           unset: none fails
 *   DOPA_FAILMALLOC_REPORT  where "struck N" or "untouched N" is written at
 *                           exit (N: the allocations counted)
 *
 * It passes the rest to glibc's own allocator (__libc_malloc and its
 * kin). Not for sanitizer builds, whose runtime owns malloc.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_long counted;
static atomic_int struck;

/* Whether this allocation is the one to fail. */
static int strike(void)
{
    static long at = -1;
    if (at < 0) {
        const char *v = getenv("DOPA_FAILMALLOC_AT");
        at = v != NULL ? strtol(v, NULL, 10) : 0;
    }
    long n = atomic_fetch_add(&counted, 1) + 1;
    if (at > 0 && n == at) {
        atomic_store(&struck, 1);
        errno = ENOMEM;
        return 1;
    }
    return 0;
}

void *malloc(size_t size)
{
    return strike() ? NULL : __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
    return strike() ? NULL : __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    if (p != NULL && size == 0)
        return __libc_realloc(p, size);
    return strike() ? NULL : __libc_realloc(p, size);
}

void free(void *p)
{
    __libc_free(p);
}

void *memalign(size_t align, size_t size)
{
    return strike() ? NULL : __libc_memalign(align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    return memalign(align, size);
}

int posix_memalign(void **out, size_t align, size_t size)
{
    void *p = memalign(align, size);
    if (p == NULL)
        return ENOMEM;
    *out = p;
    return 0;
}

/* Written with open and write: fopen would allocate, and be counted. */
__attribute__((destructor)) static void report(void)
{
    const char *path = getenv("DOPA_FAILMALLOC_REPORT");
    if (path == NULL)
        return;
    char line[64];
    int n = snprintf(line, sizeof line, "%s %ld\n", atomic_load(&struck) ? "struck" : "untouched",
                     atomic_load(&counted));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) != n)
        (void)0; /* the test finds the report short and says so */
    close(fd);
}

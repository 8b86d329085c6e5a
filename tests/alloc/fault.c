/*
 * The allocation fault injector of fault.h. The test programs that use it
 * are linked with -Wl,--wrap for each allocator below: dopa's static
 * libraries then call these wrappers, which call the real allocator (libc's,
 * or ASan's in a sanitizer build) unless the armed allocation is reached.
 */
#include "fault.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

static _Thread_local int armed, struck;
static _Thread_local size_t nth, counted;

/* 1 when this allocation is the one to fail. */
static int should_fail(void)
{
    if (!armed)
        return 0;
    if (++counted != nth)
        return 0;
    struck = 1;
    errno = ENOMEM;
    return 1;
}

void fault_arm(size_t n)
{
    nth = n;
    counted = 0;
    struck = 0;
    armed = 1;
}

int fault_disarm(void)
{
    armed = 0;
    return struck;
}

size_t fault_count(void)
{
    return counted;
}

void *__real_malloc(size_t n);
void *__real_calloc(size_t count, size_t size);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
char *__real_strndup(const char *s, size_t n);
void *__real_sodium_malloc(size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t count, size_t size);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);
char *__wrap_strndup(const char *s, size_t n);
void *__wrap_sodium_malloc(size_t n);

void *__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t count, size_t size)
{
    return should_fail() ? NULL : __real_calloc(count, size);
}

void *__wrap_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return should_fail() ? NULL : __real_strdup(s);
}

char *__wrap_strndup(const char *s, size_t n)
{
    return should_fail() ? NULL : __real_strndup(s, n);
}

void *__wrap_sodium_malloc(size_t n)
{
    return should_fail() ? NULL : __real_sodium_malloc(n);
}

/* SQLite's own allocator, with the same fault in front of it. */
static sqlite3_mem_methods sqlite_real;

static void *sqlite_malloc(int n)
{
    return should_fail() ? NULL : sqlite_real.xMalloc(n);
}

static void *sqlite_realloc(void *p, int n)
{
    return should_fail() ? NULL : sqlite_real.xRealloc(p, n);
}

void fault_init(void)
{
    sqlite3_mem_methods m;
    if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &sqlite_real) != SQLITE_OK) {
        fprintf(stderr, "fault_init: SQLite is initialised already\n");
        return;
    }
    m = sqlite_real;
    m.xMalloc = sqlite_malloc;
    m.xRealloc = sqlite_realloc;
    if (sqlite3_config(SQLITE_CONFIG_MALLOC, &m) != SQLITE_OK)
        fprintf(stderr, "fault_init: SQLite refused the allocator\n");
}

fault_figures fault_campaign(const fault_op *op, void *ctx, size_t limit)
{
    fault_figures fig = {0, 0, 0};
    for (size_t n = 1; n <= limit; n++) {
        if (op->prepare != NULL)
            op->prepare(ctx);
        fault_arm(n);
        int result = op->op(ctx);
        int hit = fault_disarm();
        op->check(ctx, result, hit);
        if (!hit) {
            fig.finished = 1;
            break;
        }
        fig.points++;
        fig.errors += result != 0;
    }
    printf("  %s: %zu allocation points, %zu failed with an error, %zu survived%s\n", op->name,
           fig.points, fig.errors, fig.points - fig.errors, fig.finished ? "" : " (limit reached)");
    fflush(stdout);
    return fig;
}

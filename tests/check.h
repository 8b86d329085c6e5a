/*
 * check.h: the small test harness every dopa test program uses.
 *
 *     static void test_something(void) { CHECK(x == 1); CHECK_INT(f(), 0); }
 *     int main(int argc, char **argv) {
 *         return check_run(argc, argv, (struct check_case[]){
 *             CASE(test_something), {0}});
 *     }
 *
 * A failed CHECK prints where and why and ends that test case; the program
 * runs every case (or those named on its command line), prints one line per
 * case, and exits non-zero if any failed. check_tmpdir() gives each case a
 * fresh directory that is removed after it.
 */
#ifndef DOPA_CHECK_H
#define DOPA_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct check_case {
    const char *name;
    void (*fn)(void);
};

#define CASE(fn)                                                                                   \
    {                                                                                              \
#fn, fn                                                                                    \
    }

static jmp_buf check_jump;
static char check_dir[4096];
/* Runs after every case, passed or failed (set it in main). */
static void (*check_cleanup)(void);

static void check_failed(const char *file, int line, const char *what)
{
    fprintf(stderr, "  %s:%d: %s\n", file, line, what);
    longjmp(check_jump, 1);
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_failed(__FILE__, __LINE__, "CHECK(" #cond ") failed");                           \
    } while (0)

#define CHECK_INT(actual, expected)                                                                \
    do {                                                                                           \
        long long check_a_ = (long long)(actual), check_e_ = (long long)(expected);                \
        if (check_a_ != check_e_) {                                                                \
            char check_msg_[512];                                                                  \
            snprintf(check_msg_, sizeof check_msg_, "%s is %lld, expected %s (%lld)", #actual,     \
                     check_a_, #expected, check_e_);                                               \
            check_failed(__FILE__, __LINE__, check_msg_);                                          \
        }                                                                                          \
    } while (0)

#define CHECK_STR(actual, expected)                                                                \
    do {                                                                                           \
        const char *check_a_ = (actual), *check_e_ = (expected);                                   \
        if (check_a_ == NULL || strcmp(check_a_, check_e_) != 0) {                                 \
            char check_msg_[1024];                                                                 \
            snprintf(check_msg_, sizeof check_msg_, "%s is \"%.400s\", expected \"%.400s\"",       \
                     #actual, check_a_ ? check_a_ : "(null)", check_e_);                           \
            check_failed(__FILE__, __LINE__, check_msg_);                                          \
        }                                                                                          \
    } while (0)

/* CHECK that a string contains a substring. */
#define CHECK_HAS(haystack, needle)                                                                \
    do {                                                                                           \
        const char *check_h_ = (haystack), *check_n_ = (needle);                                   \
        if (check_h_ == NULL || strstr(check_h_, check_n_) == NULL) {                              \
            char check_msg_[1024];                                                                 \
            snprintf(check_msg_, sizeof check_msg_, "%s is \"%.400s\", which lacks \"%.400s\"",    \
                     #haystack, check_h_ ? check_h_ : "(null)", check_n_);                         \
            check_failed(__FILE__, __LINE__, check_msg_);                                          \
        }                                                                                          \
    } while (0)

static int check_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* A fresh directory for the running case, removed when the case ends. */
static inline const char *check_tmpdir(void)
{
    if (check_dir[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(check_dir, sizeof check_dir, "%s/dopa-test.XXXXXX", base ? base : "/tmp");
        if (mkdtemp(check_dir) == NULL) {
            check_dir[0] = '\0';
            check_failed(__FILE__, __LINE__, "mkdtemp failed");
        }
    }
    return check_dir;
}

/* Joins the case's directory and a name; the string lives until the case ends. */
static char *check_paths[256];
static int check_n_paths;

static inline const char *check_path(const char *name)
{
    const char *dir = check_tmpdir();
    size_t d = strlen(dir), n = strlen(name);
    char *b = malloc(d + n + 2);
    if (b == NULL || check_n_paths == (int)(sizeof check_paths / sizeof check_paths[0])) {
        free(b);
        check_failed(__FILE__, __LINE__, "too many check_path calls in one case");
    }
    memcpy(b, dir, d);
    b[d] = '/';
    memcpy(b + d + 1, name, n + 1);
    check_paths[check_n_paths++] = b;
    return b;
}

/* Monotonic seconds, for the cases that bound or measure a time. */
static inline double check_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void check_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Writes text to the file at path (made or emptied); the case fails if it
 * cannot. */
static inline void check_write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    fputs(text, f);
    CHECK(fclose(f) == 0);
}

static inline int check_run(int argc, char **argv, const struct check_case *cases)
{
    /* volatile: these live across the setjmp below. */
    volatile int failed = 0, ran = 0;
    for (const struct check_case *volatile c = cases; c->name != NULL; c++) {
        if (argc > 1) {
            int wanted = 0;
            for (int i = 1; i < argc; i++)
                wanted |= strcmp(argv[i], c->name) == 0;
            if (!wanted)
                continue;
        }
        ran++;
        volatile int ok = 1;
        if (setjmp(check_jump) == 0)
            c->fn();
        else
            ok = 0;
        if (check_cleanup != NULL)
            check_cleanup();
        while (check_n_paths > 0)
            free(check_paths[--check_n_paths]);
        if (check_dir[0] != '\0') {
            nftw(check_dir, check_rm, 16, FTW_DEPTH | FTW_PHYS);
            check_dir[0] = '\0';
        }
        printf("%s %s\n", ok ? "ok  " : "FAIL", c->name);
        fflush(stdout);
        failed += !ok;
    }
    if (ran == 0) {
        fprintf(stderr, "no test case matched\n");
        return 2;
    }
    printf("%d of %d cases passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}

#endif

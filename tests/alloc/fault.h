/*
 * Allocation faults for tests, as SQLite's and curl's suites inject them:
 * the Nth allocation from now fails, for N = 1, 2, 3, ... until the
 * operation runs through without reaching it.
 *
 * What is counted: every allocation dopa's own code makes (malloc, calloc,
 * realloc, strdup, strndup and sodium_malloc, wrapped at link time with
 * -Wl,--wrap, so that the real ones stay those of libc or of ASan) and
 * every one SQLite makes (its allocator hook). Only the thread that armed
 * the fault counts: the engine's helper threads and nng's run on
 * unaffected. Allocations inside other libraries (libcurl, nng, libsodium,
 * libc's own) are not counted.
 */
#ifndef DOPA_TEST_FAULT_H
#define DOPA_TEST_FAULT_H

#include <stddef.h>

/* Installs the SQLite allocator hook; call before anything uses SQLite. */
void fault_init(void);

/* The nth allocation (1 for the next) on this thread fails, once. */
void fault_arm(size_t nth);
/* Stops counting; 1 when the armed allocation was reached (and failed). */
int fault_disarm(void);
/* Allocations counted since fault_arm. */
size_t fault_count(void);

/* A campaign's figures: points is how many allocations were made to fail
 * in turn, errors how many of those the operation reported as failures
 * (the others it survived, as SQLite does with some of its own). */
typedef struct fault_figures {
    size_t points, errors;
    int finished; /* a last run reached no armed failure */
} fault_figures;

/* What a campaign runs: prepare (may be NULL) before arming, op armed
 * (0 for success), then check, given op's result and whether the fault
 * struck: it is where the test looks at the state the failure left. */
typedef struct fault_op {
    const char *name;
    void (*prepare)(void *ctx);
    int (*op)(void *ctx);
    void (*check)(void *ctx, int result, int struck);
} fault_op;

/* Runs op with the 1st, 2nd, ... allocation failing until a run reaches
 * no armed failure (or for `limit` runs). Prints one line of figures. */
fault_figures fault_campaign(const fault_op *op, void *ctx, size_t limit);

#endif

/*
 * Jobs benchmark helper: through libdopa against a running dopad, creates N
 * jobs, lists them, and cancels them, timing each kind of operation; a
 * plain round trip (whoami) measured in the same run is the baseline.
 *
 * usage: dopa-bench-jobs SOCKET N
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "dopa.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: dopa-bench-jobs SOCKET N\n");
        return 2;
    }
    size_t n = (size_t)strtoul(argv[2], NULL, 10);
    dopa_manager *m = NULL;
    if (n == 0 || dopa_connect(argv[1], &m) != DOPA_OK) {
        fprintf(stderr, "dopa-bench-jobs: cannot connect to %s\n", argv[1]);
        return 1;
    }
    dopa_id *ids = calloc(n, sizeof *ids);
    const int pings = 2000;
    double t0 = now();
    for (int i = 0; i < pings; i++)
        if (dopa_whoami(m, NULL, NULL, 0) != DOPA_OK)
            return 1;
    double ping = (now() - t0) / pings;

    t0 = now();
    for (size_t i = 0; i < n; i++) {
        char name[64];
        snprintf(name, sizeof name, "bench job %zu", i);
        int err = dopa_job_create(m, name, DOPA_JOB_DOWNLOAD, &ids[i]);
        if (err != DOPA_OK) {
            fprintf(stderr, "create %zu: %s: %s\n", i, dopa_strerror(err), dopa_last_message());
            return 1;
        }
    }
    double create = (now() - t0) / (double)n;

    double best_list = 1e9;
    size_t listed = 0;
    for (int r = 0; r < 3; r++) {
        dopa_job_info **jobs;
        t0 = now();
        if (dopa_job_list(m, 0, &jobs, &listed) != DOPA_OK)
            return 1;
        double t = now() - t0;
        best_list = t < best_list ? t : best_list;
        dopa_free(jobs);
    }
    if (listed != n) {
        fprintf(stderr, "listed %zu jobs, expected %zu\n", listed, n);
        return 1;
    }

    t0 = now();
    for (size_t i = 0; i < n; i++)
        if (dopa_job_cancel(m, &ids[i]) != DOPA_OK)
            return 1;
    double cancel = (now() - t0) / (double)n;

    printf("jobs: %zu, through libdopa over the control socket\n", n);
    printf("round trip (whoami):  %8.1f us   (baseline)\n", ping * 1e6);
    printf("create:               %8.1f us   %6.1f x round trip\n", create * 1e6, create / ping);
    printf("cancel:               %8.1f us   %6.1f x round trip\n", cancel * 1e6, cancel / ping);
    printf("list all %zu jobs:  %8.3f s    %6.1f us per job (target: under 1 s) %s\n", n, best_list,
           best_list / (double)n * 1e6, best_list < 1.0 ? "PASS" : "FAIL");
    free(ids);
    dopa_disconnect(m);
    return best_list < 1.0 ? 0 : 1;
}

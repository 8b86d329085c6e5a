/* dopad for tests (daemon.h). */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "daemon.h"
#include "dopa.h"
#include "proc.h"

int test_dopad_start(test_dopad *d, const char *program, const char *dir, const char *settings)
{
    if (test_dopad_spawn(d, program, dir, settings) != 0)
        return -1;
    return test_dopad_ready(d);
}

int test_dopad_spawn(test_dopad *d, const char *program, const char *dir, const char *settings)
{
    char conf[4300];
    snprintf(d->sock, sizeof d->sock, "%.4000s/run/control.sock", dir);
    snprintf(d->state, sizeof d->state, "%.4000s/state", dir);
    snprintf(d->log, sizeof d->log, "%.4000s/dopad.log", dir);
    snprintf(conf, sizeof conf, "%.4000s/dopad.conf", dir);
    const char *argv[] = {program,       "--socket", d->sock,
                          "--state-dir", d->state,   settings ? "--config" : NULL,
                          conf,          NULL};
    if (settings != NULL) {
        FILE *f = fopen(conf, "w");
        if (f == NULL)
            return -1;
        fprintf(f, "[dopad]\n%s\n", settings);
        fclose(f);
    }
    d->pid = test_spawn(argv, d->log, TEST_AS_ME, 0);
    return d->pid > 0 ? 0 : -1;
}

int test_dopad_ready(test_dopad *d)
{
    for (int i = 0; i < 1000; i++) {
        dopa_manager *m = NULL;
        if (dopa_connect(d->sock, &m) == DOPA_OK) {
            int ok = dopa_whoami(m, NULL, NULL, 0) == DOPA_OK;
            dopa_disconnect(m);
            if (ok)
                return 0;
        }
        if (waitpid(d->pid, NULL, WNOHANG) != 0) {
            fprintf(stderr, "  dopad died at start; see %s\n", d->log);
            d->pid = -1;
            return -1;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fprintf(stderr, "  dopad did not answer in 10 s; see %s\n", d->log);
    test_dopad_stop(d, SIGKILL);
    return -1;
}

void test_dopad_stop(test_dopad *d, int sig)
{
    test_stop(d->pid, sig);
    d->pid = -1;
}

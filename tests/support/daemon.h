/*
 * dopad for tests: the real daemon on a socket and state directory under a
 * test's directory, optionally with settings in a configuration file,
 * started and stopped by its pid.
 */
#ifndef DOPA_TEST_DAEMON_H
#define DOPA_TEST_DAEMON_H

#include <sys/types.h>

typedef struct test_dopad {
    pid_t pid;
    char sock[4200];  /* dir/run/control.sock */
    char state[4200]; /* dir/state */
    char log[4200];   /* dir/dopad.log: what it said */
} test_dopad;

/* Starts `program` (dopad) for `dir`. With `settings` (lines of the [dopad]
 * section) it reads them from dir/dopad.conf. Waits until dopad answers;
 * returns 0, or -1 when it died or did not answer within 10 s. */
int test_dopad_start(test_dopad *d, const char *program, const char *dir, const char *settings);

/* The two halves of test_dopad_start, for a test that wants dopad at a
 * moment before it answers: spawn returns 0 once the process runs (-1 if
 * it could not be started), ready waits as test_dopad_start does. */
int test_dopad_spawn(test_dopad *d, const char *program, const char *dir, const char *settings);
int test_dopad_ready(test_dopad *d);

/* Sends sig and reaps it (SIGKILL after 5 s); pid becomes -1. */
void test_dopad_stop(test_dopad *d, int sig);

#endif

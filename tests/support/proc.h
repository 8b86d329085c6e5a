/*
 * Child processes for tests: start a program (optionally as another user),
 * capture what it prints, wait with a deadline, and stop it by its pid. A
 * child dies with the test process (PR_SET_PDEATHSIG), so a crashed test
 * leaves nothing running.
 */
#ifndef DOPA_TEST_PROC_H
#define DOPA_TEST_PROC_H

#include <stddef.h>
#include <sys/types.h>

#define TEST_AS_ME ((uid_t)-1)

/* Starts argv[0] with argv; stdout and stderr go to out_path (appended) or
 * /dev/null. With uid != TEST_AS_ME the child takes uid and gid (and no
 * other groups) first. Returns the pid, or -1. */
pid_t test_spawn(const char *const argv[], const char *out_path, uid_t uid, gid_t gid);

/* In a child: runs argv[0] with argv; when it cannot, says so on stderr
 * and exits 127. */
_Noreturn void test_exec(const char *const argv[]);

/* Waits for pid up to timeout_s; returns its exit status (128+signal when
 * killed), or -1 on timeout (the child is then killed and reaped). */
int test_wait(pid_t pid, int timeout_s);

/* Prints the stack of every thread of pid to stderr (gdb, else eu-stack;
 * a line saying so when neither is on the machine), pid left running: what
 * a child that should have ended waits on, before it is killed. */
void test_print_stacks(pid_t pid);

/* test_spawn + test_wait, with the output (stdout and stderr) in out. */
int test_run(const char *const argv[], char *out, size_t len, int timeout_s, uid_t uid, gid_t gid);

/* Sends sig to pid and reaps it (SIGKILL after 5 s if it lingers). */
void test_stop(pid_t pid, int sig);

/* A second user for tests that run as root: "dopa-<program name>", made
 * with useradd when missing (*created then says to remove it with
 * test_user_remove). Returns 0, or -1 when it cannot be had. */
int test_user(uid_t *uid, gid_t *gid, int *created);
void test_user_remove(void);

/* The scratch directory of a test program: $TMPDIR/dopa-<tag>.XXXXXX, mode
 * 0755 (a second user's jobs may need to reach it), removed with all it
 * holds when the program exits (after the atexit handlers registered
 * later, such as one that stops a server living in it). The same one on
 * every call; NULL when it cannot be made. */
const char *test_scratch_dir(const char *tag);

#endif

/*
 * What the crash and storage fault tests share: nginx serving pattern files
 * at a few fixed rates, dopad started with or without the faultfs
 * interposer, and dopad's store read from outside (the job's durable state,
 * and whether the pieces it counts as done hold the right bytes).
 *
 * Functions return 0 (or a count) on success and -1 on failure, with a
 * line on stderr; the test programs turn that into CHECKs.
 */
#ifndef DOPA_FAULTS_FIXTURE_H
#define DOPA_FAULTS_FIXTURE_H

#include <stdint.h>

#include "daemon.h"
#include "dopa.h"
#include "nginx.h"

/* The scratch directory of a test program (test_scratch_dir) with nginx
 * in it (faults_nginx_start), both gone when the program exits. 0, or -1
 * with a line on stderr. */
int faults_setup(test_nginx *web, const char *tag);

/* nginx under dir/nginx, serving dir/nginx/www with rate limits by folder:
 * /r4/ at 4 MB/s, /r8/ at 8 MB/s, /r16/ at 16 MB/s, /r32/ at 32 MB/s. */
int faults_nginx_start(test_nginx *web, const char *dir);

/* "http://127.0.0.1:PORT/path" */
void faults_url(const test_nginx *web, const char *path, char *out, size_t len);

/* Starts dopad for dir (as test_dopad_start). With ctl, dopad runs with
 * faultfs preloaded, its rules in ctl and its log in log. `wait` 0 returns
 * as soon as the process runs (test_dopad_spawn). */
int faults_dopad_start(test_dopad *d, const char *dir, const char *ctl, const char *log, int wait);

/* Stops dopad with SIGTERM; -1 (with the lines on stderr) when its log
 * has a sanitizer's report (ASan, LSan at exit, UBSan) from any of its
 * runs. */
int faults_dopad_stop(test_dopad *d);

/* Writes the faultfs rules (replacing the file at once: dopad never reads
 * half of it), then waits long enough for dopad to have seen them. */
int faults_rules(const char *ctl, const char *rules);

/* How many lines of the faultfs log start with `prefix` ("fdatasync EIO",
 * "lost"); with bytes, the sum of the second field of those lines. */
long long faults_log_count(const char *log, const char *prefix, long long *bytes);

/* The job as dopad's store has it (what survives a kill -9). */
typedef struct faults_stored {
    int found;            /* the job has a row */
    int state;            /* enum dopa_state */
    int file_transferred; /* file 0: every piece done and checked */
    int file_completed;   /* file 0: moved into place */
    int64_t size;         /* file 0's size, -1 while unknown */
    uint32_t piece_size;
    uint64_t pieces; /* file 0's committed pieces */
    uint64_t bytes;  /* their bytes */
    char tmp_path[4200];
    char path[4200]; /* its destination */
    int undelivered; /* JobTransferred events not yet answered by a client */
} faults_stored;

int faults_store_read(const char *db_path, const dopa_id *id, faults_stored *out);

/* Compares committed pieces of file 0 with the pattern of `seed`: every
 * one when samples is 0, else that many chosen at random. They are read
 * from the temporary file, or from the destination once a Complete moved
 * it there. Returns how many differ (the first in *bad_piece), or -1 when
 * the store or the file cannot be read. */
long long faults_check_committed(const char *db_path, const dopa_id *id, unsigned seed,
                                 unsigned samples, uint64_t *bad_piece);

/* Whether the file is `len` bytes of the pattern of `seed` (0), differs
 * (1, with a line on stderr), or cannot be read (-1). */
int faults_file_is(const char *path, unsigned seed, uint64_t len);

/* Polls the job until its state is `state` or limit_s passes; 0 when it
 * got there (*info, if info is not NULL, then describes it: for
 * dopa_free()), -1 otherwise (*info NULL). */
int faults_wait_state(dopa_manager *m, const dopa_id *id, int state, double limit_s,
                      dopa_job_info **info);

/* Lines of dopad's log that hold `text`. */
int faults_log_has(const char *log, const char *text);

double faults_now(void); /* monotonic seconds */
void faults_sleep_ms(int ms);

#endif

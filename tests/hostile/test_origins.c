/*
 * Hostile origins, end to end: the real dopad and dopa command line against
 * the misbehaving loopback server (tests/support/faultsrv.h): an origin
 * that ignores Range, sends a wrong Content-Range, sends a body without
 * end, or replaces the file while the job runs (saying so, or not, or in
 * the middle of a response), without a manifest, with one and with an
 * expected SHA-256. Whatever it does, a job ends TRANSFERRED with exactly
 * one version of the content, never a blend and never longer than the
 * manifest or the size says, or in ERROR with a message that says why.
 * Each case prints the bytes the origin sent and how the job ended.
 * DOPAD, DOPA_CLI and DOPA_MANIFEST name the binaries.
 */
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/faultsrv.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "hostile.h"

static test_faultsrv *srv;
static test_dopad dopad = {.pid = -1};
static const char *scratch;
static char manifest_v1[4300], manifest_v2[4300], key_pub[4300];
static char sha_v1[65];

/* Runs dopa with the arguments as this process: its exit status, with
 * what it printed in out (which may be NULL). */
#define cli_args(out, len, timeout_s, ...)                                                         \
    hostile_cli_list(DOPA_CLI, dopad.sock, TEST_AS_ME, 0, out, len, timeout_s, __VA_ARGS__)
#define cli(out, len, ...) cli_args(out, len, 60, __VA_ARGS__, (char *)NULL)

static void url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", test_faultsrv_port(srv), path);
}

/* A job under way: what it fetches and how it is checked. */
struct job {
    const char *path;  /* on the server */
    const char *check; /* NULL, "--manifest" or "--sha256" */
    const char *value; /* the manifest file or the hash */
    const char *range; /* a --range, or NULL */
    uint64_t v2_size;  /* the size of the server's version 2, if not FAULT_SIZE */
    char id[64];
    char dest[4200];
    char tmp[4200];
};

/* Creates, adds the file, sets short timers and resumes. */
static void start_job(struct job *j)
{
    char u[256], out[4096];
    url(u, sizeof u, j->path);
    /* A destination of its own: path, check and a number. */
    static unsigned jobs_started;
    snprintf(j->dest, sizeof j->dest, "%s/%u%s%s", check_tmpdir(), ++jobs_started, j->path,
             j->check   ? j->check + 1
             : j->range ? "-range"
                        : "");
    for (char *p = j->dest + strlen(check_tmpdir()) + 1; *p; p++)
        if (*p == '/')
            *p = '_';
    CHECK_INT(cli(out, sizeof out, "create", j->path), 0);
    hostile_first_line(out, j->id, sizeof j->id);
    CHECK_INT(strlen(j->id), 36);
    int rc;
    if (j->check != NULL)
        rc = cli(out, sizeof out, "add-file", j->id, u, j->dest, j->check, j->value);
    else if (j->range != NULL)
        rc = cli(out, sizeof out, "add-file", j->id, u, j->dest, "--range", j->range);
    else
        rc = cli(out, sizeof out, "add-file", j->id, u, j->dest);
    CHECK_INT(rc, 0);
    /* Retries come quickly, and a job that gets nowhere gives up soon. */
    CHECK_INT(cli(out, sizeof out, "set-min-retry-delay", j->id, "1"), 0);
    CHECK_INT(cli(out, sizeof out, "set-no-progress-timeout", j->id, "5"), 0);
    CHECK_INT(cli(out, sizeof out, "--json", "files", j->id), 0);
    CHECK_INT(hostile_json_text(out, "temporary_name", j->tmp, sizeof j->tmp), 0);
    CHECK_INT(cli(out, sizeof out, "resume", j->id), 0);
}

/* How a job ended. */
struct outcome {
    int transferred;   /* else ERROR */
    char state[32];    /* as dopa names it */
    char message[600]; /* the error's message, if any */
    char json[8192];   /* dopa --json info */
    long long tmp_size;
    long long bytes_total;
};

/* What the job's destination holds: 1 or 2 for exactly that version. */
static int content_of(const struct job *j, char *what, size_t len)
{
    return hostile_which_version(j->dest, FAULT_SEED, FAULT_SIZE, FAULT_SEED2,
                                 j->v2_size ? j->v2_size : FAULT_SIZE, what, len);
}

/* Waits up to timeout_s for the job to end (TRANSFERRED or ERROR) and
 * says how it stands then. */
static struct outcome settle_job(struct job *j, int timeout_s)
{
    struct outcome o = {0};
    char out[8192], secs[16];
    snprintf(secs, sizeof secs, "%d", timeout_s);
    cli_args(out, sizeof out, timeout_s + 10, "wait", j->id, "--timeout", secs, (char *)NULL);
    CHECK_INT(cli(o.json, sizeof o.json, "--json", "info", j->id), 0);
    hostile_json_text(o.json, "state", o.state, sizeof o.state);
    hostile_json_text(o.json, "message", o.message, sizeof o.message);
    const char *t = strstr(o.json, "\"bytes_total\":");
    o.bytes_total = t != NULL ? atoll(t + strlen("\"bytes_total\":")) : -1;
    o.tmp_size = hostile_file_size(j->tmp);
    o.transferred = strcmp(o.state, "TRANSFERRED") == 0;
    return o;
}

/* settle_job, and the job must have ended; then Complete: a transferred
 * file moves into place, a failed job shows nothing, and neither leaves a
 * temporary file behind. */
static struct outcome finish_job(struct job *j, int timeout_s)
{
    struct outcome o = settle_job(j, timeout_s);
    char out[4096];
    if (!o.transferred && strcmp(o.state, "ERROR") != 0) {
        printf("  %s: still %s after %d s (%s), origin sent %llu bytes\n", j->path, o.state,
               timeout_s, o.message, test_faultsrv_bytes(srv, j->path));
        CHECK(0); /* a job must end, one way or the other */
    }
    CHECK_INT(cli(out, sizeof out, "complete", j->id), 0);
    if (!o.transferred && hostile_file_size(j->dest) >= 0) {
        char what[256];
        content_of(j, what, sizeof what);
        printf("  %s: failed (%s), yet Complete showed %s; %s\n", j->path, o.message, what, out);
        CHECK(0);
    }
    CHECK(hostile_file_size(j->tmp) < 0);
    return o;
}

/* Prints a case's figure: what the origin sent and how the job ended. */
static void report(const struct job *j, const struct outcome *o, const char *content)
{
    const char *how = j->check ? j->check + 2 : j->range ? "range" : "-";
    printf("  %-20s %-9s origin sent %9llu B; %s, output: %s%s%s\n", j->path, how,
           test_faultsrv_bytes(srv, j->path), o->state,
           strcmp(content, "missing") == 0 ? "none" : content, o->message[0] ? "; " : "",
           o->message);
    fflush(stdout);
}

/* Ends the job and checks it: TRANSFERRED with exactly `version` (1 or 2)
 * when version > 0, else ERROR with `said` in the message. Either way the
 * temporary file was never longer than `max_size`. */
static struct outcome expect_job(struct job *j, int version, const char *said, uint64_t max_size)
{
    struct outcome o = finish_job(j, 40);
    char what[256];
    int got = content_of(j, what, sizeof what);
    report(j, &o, what);
    CHECK(o.tmp_size <= (long long)max_size);
    if (version > 0) {
        CHECK_STR(o.state, "TRANSFERRED");
        CHECK_INT(got, version);
    } else {
        CHECK_STR(o.state, "ERROR");
        CHECK_HAS(o.message, said);
    }
    return o;
}

/* ------------------------------------------------------------------ */

static void test_an_origin_ignoring_range_yields_the_file_once(void)
{
    struct job plain = {.path = "/ignore-range"};
    struct job checked = {.path = "/ignore-range", .check = "--manifest", .value = manifest_v1};
    struct job ranged = {.path = "/ignore-range", .range = "100000:50000"};
    start_job(&plain);
    start_job(&checked);
    start_job(&ranged);
    expect_job(&plain, 1, NULL, FAULT_SIZE);
    expect_job(&checked, 1, NULL, FAULT_SIZE);
    /* A range not at 0 cannot be had from it: the whole file is never
     * spliced in at the wrong offset. */
    expect_job(&ranged, 0, "the server sent the whole file", 50000);
    /* The size probe and one whole file for each job (the probe's body is
     * cut off, but the kernel may have taken some of it). */
    unsigned long long sent = test_faultsrv_bytes(srv, "/ignore-range");
    printf("  /ignore-range: %.2f x the file for three jobs\n", (double)sent / FAULT_SIZE);
}

static void test_a_wrong_content_range_is_never_written(void)
{
    struct job jobs[] = {
        {.path = "/wrong-start"},
        {.path = "/wrong-start", .check = "--manifest", .value = manifest_v1},
        {.path = "/cl-mismatch", .check = "--manifest", .value = manifest_v1},
        {.path = "/bigger"},
    };
    for (size_t i = 0; i < 4; i++)
        start_job(&jobs[i]);
    struct outcome o = expect_job(&jobs[0], 0, "malformed Content-Range", 0);
    CHECK_HAS(o.json, "\"bytes_transferred\":0,");
    o = expect_job(&jobs[1], 0, "asked for bytes from 0, got Content-Range bytes 1-", 0);
    CHECK_HAS(o.json, "\"bytes_transferred\":0,");
    o = expect_job(&jobs[2], 0, "but Content-Length", 0);
    CHECK_HAS(o.json, "\"bytes_transferred\":0,");
    /* More than asked for is cut where the range ends. */
    expect_job(&jobs[3], 1, NULL, FAULT_SIZE);
}

static void test_an_endless_body_is_cut_where_the_file_ends(void)
{
    struct job jobs[] = {
        {.path = "/endless"},
        {.path = "/endless200", .check = "--manifest", .value = manifest_v1},
        {.path = "/endless200"},
        {.path = "/endless200", .check = "--sha256", .value = sha_v1},
    };
    for (size_t i = 0; i < 4; i++)
        start_job(&jobs[i]);
    struct outcome o = expect_job(&jobs[0], 1, NULL, FAULT_SIZE);
    CHECK_INT(o.bytes_total, FAULT_SIZE);
    o = expect_job(&jobs[1], 1, NULL, FAULT_SIZE);
    CHECK_INT(o.bytes_total, FAULT_SIZE);
    /* Without a manifest nothing says where the file ends. */
    expect_job(&jobs[2], 0, "does not say how large the file is", 0);
    expect_job(&jobs[3], 0, "does not say how large the file is", 0);
    /* dopad hangs up once it has what it asked for: the server got rid of
     * no more than the socket buffers took, far below its 64 MiB. */
    unsigned long long endless = test_faultsrv_bytes(srv, "/endless");
    unsigned long long endless200 = test_faultsrv_bytes(srv, "/endless200");
    printf("  endless bodies: the origin got rid of %.1f MiB (/endless) and %.1f MiB "
           "(/endless200) for 1 MiB files\n",
           (double)endless / (1 << 20), (double)endless200 / (1 << 20));
    CHECK(endless < 24ull << 20);
    CHECK(endless200 < 24ull << 20);
}

static void test_an_origin_changing_mid_job_never_yields_a_blend(void)
{
    /* Each mode of change, without a check, with the manifest of version
     * 1 and with its SHA-256. */
    const char *modes[] = {"etag", "grow", "quiet", "mid"};
    struct job jobs[4][3];
    char paths[4][3][64];
    for (int m = 0; m < 4; m++) {
        for (int c = 0; c < 3; c++) {
            snprintf(paths[m][c], sizeof paths[m][c], "/flip-%s/%s", modes[m],
                     c == 0   ? "plain"
                     : c == 1 ? "manifest"
                              : "sha256");
            jobs[m][c] = (struct job){.path = paths[m][c],
                                      .v2_size = m == 1 ? FAULT_SIZE2 : FAULT_SIZE,
                                      .check = c == 0   ? NULL
                                               : c == 1 ? "--manifest"
                                                        : "--sha256",
                                      .value = c == 1 ? manifest_v1 : sha_v1};
            start_job(&jobs[m][c]);
        }
    }
    /* A change the origin tells of (a new ETag) starts the file again: the
     * output is the new version alone, as long as the new version is. */
    struct outcome o = expect_job(&jobs[0][0], 2, NULL, FAULT_SIZE);
    CHECK(strstr(o.json, "\"error_count\":0,") == NULL); /* it went through the change */
    o = expect_job(&jobs[1][0], 2, NULL, FAULT_SIZE2);
    CHECK_INT(o.bytes_total, FAULT_SIZE2);
    /* A change nobody tells of cannot be seen without a check; still the
     * file is never longer than the origin says. */
    for (int m = 2; m < 4; m++) {
        o = finish_job(&jobs[m][0], 40);
        char what[256];
        content_of(&jobs[m][0], what, sizeof what);
        report(&jobs[m][0], &o, what);
        CHECK_STR(o.state, "TRANSFERRED");
        CHECK_INT(hostile_file_size(jobs[m][0].dest), FAULT_SIZE);
    }
    /* With the manifest of version 1, version 2 is refused piece by piece
     * or by its size; with the SHA-256, at the end. Nothing is shown. */
    expect_job(&jobs[0][1], 0, "does not match the manifest", FAULT_SIZE);
    expect_job(&jobs[1][1], 0, "the origin has 1118576 bytes, the manifest says 1048576",
               FAULT_SIZE);
    expect_job(&jobs[2][1], 0, "does not match the manifest", FAULT_SIZE);
    expect_job(&jobs[3][1], 0, "does not match the manifest", FAULT_SIZE);
    for (int m = 0; m < 4; m++)
        expect_job(&jobs[m][2], 0, "SHA-256 is not the expected one",
                   m == 1 ? FAULT_SIZE2 : FAULT_SIZE);
}

/* An origin that keeps contradicting itself must not keep a job busy for
 * ever: one whose 206 runs on past its Content-Range (each try brings the
 * same 100 bytes again), and one whose size flips between two values
 * (each try fetches the whole file again). */
static void test_an_origin_that_never_stops_lying_ends_in_error(void)
{
    struct job jobs[] = {{.path = "/overlong"}, {.path = "/changing-size"}};
    struct outcome o[2];
    for (size_t i = 0; i < 2; i++)
        start_job(&jobs[i]);
    /* Five seconds without progress is the limit they were given; they
     * run side by side, so the second has had its 30 s by the first's end. */
    for (size_t i = 0; i < 2; i++) {
        o[i] = settle_job(&jobs[i], i == 0 ? 30 : 1);
        report(&jobs[i], &o[i], "unknown yet, after 30 s");
    }
    for (size_t i = 0; i < 2; i++)
        CHECK_STR(o[i].state, "ERROR");
}

/* ------------------------------------------------------------------ */

static void teardown(void)
{
    test_dopad_stop(&dopad, SIGKILL);
    test_faultsrv_stop(srv);
}

/* dopa-manifest's "sha256:" line for a manifest, into hex. */
static int manifest_sha256(const char *manifest, char hex[65])
{
    char out[8192];
    const char *argv[] = {DOPA_MANIFEST, "show", manifest, NULL};
    if (test_run(argv, out, sizeof out, 30, TEST_AS_ME, 0) != 0)
        return -1;
    const char *s = strstr(out, "sha256:");
    if (s == NULL)
        return -1;
    s += strlen("sha256:");
    s += strspn(s, " ");
    if (strspn(s, "0123456789abcdef") < 64)
        return -1;
    memcpy(hex, s, 64);
    hex[64] = '\0';
    return 0;
}

/* The two versions on disk, a publisher key, and a manifest of each (made
 * by dopa-manifest, 64 KiB pieces); dopad trusting the key. */
static int setup(void)
{
    char v1[1024], v2[1024], key[1024], out[4096], settings[4600];
    if ((scratch = test_scratch_dir("hostile-origins")) == NULL)
        return -1;
    atexit(teardown);
    if ((srv = test_faultsrv_start()) == NULL)
        return -1;
    snprintf(v1, sizeof v1, "%.900s/v1", scratch);
    snprintf(v2, sizeof v2, "%.900s/v2", scratch);
    snprintf(key, sizeof key, "%.900s/publisher.key", scratch);
    snprintf(key_pub, sizeof key_pub, "%s.pub", key);
    snprintf(manifest_v1, sizeof manifest_v1, "%s.dopa-manifest", v1);
    snprintf(manifest_v2, sizeof manifest_v2, "%s.dopa-manifest", v2);
    if (hostile_write_pattern(v1, FAULT_SEED, FAULT_SIZE) != 0 ||
        hostile_write_pattern(v2, FAULT_SEED2, FAULT_SIZE2) != 0)
        return -1;
    const char *keygen[] = {DOPA_MANIFEST, "keygen", "-o", key, NULL};
    const char *make1[] = {DOPA_MANIFEST, "create", v1, "--key", key, "--piece-size", "64K", NULL};
    const char *make2[] = {DOPA_MANIFEST, "create", v2, "--key", key, "--piece-size", "64K", NULL};
    if (test_run(keygen, out, sizeof out, 30, TEST_AS_ME, 0) != 0 ||
        test_run(make1, out, sizeof out, 30, TEST_AS_ME, 0) != 0 ||
        test_run(make2, out, sizeof out, 30, TEST_AS_ME, 0) != 0 ||
        manifest_sha256(manifest_v1, sha_v1) != 0) {
        fprintf(stderr, "dopa-manifest failed: %s\n", out);
        return -1;
    }
    snprintf(settings, sizeof settings, "trusted-key = %s\nmax-running = 16", key_pub);
    return test_dopad_start(&dopad, DOPAD, scratch, settings);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }

    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_an_origin_ignoring_range_yields_the_file_once),
                         CASE(test_a_wrong_content_range_is_never_written),
                         CASE(test_an_endless_body_is_cut_where_the_file_ends),
                         CASE(test_an_origin_changing_mid_job_never_yields_a_blend),
                         CASE(test_an_origin_that_never_stops_lying_ends_in_error),
                         {0},
                     });
}

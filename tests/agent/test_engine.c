/*
 * The job engine in-process, against a real nginx: the BITS state machine,
 * Complete and Cancel, ranges, hashes and manifests, timers on an
 * injectable clock, priorities, restarts, owners, and local-file safety.
 * Requests go straight to engine_handle, as the control server sends them.
 */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#include "../check.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "agent.h"
#include "engine_internal.h" /* engine_reconfigure, engine_error */

static test_nginx web;
static const char *fixture; /* the scratch directory */
static agent_engine *E;
static int64_t skew_ms;      /* added to the monotonic clock */
static int64_t wall_skew_ms; /* added to the wall clock */

static int64_t now_mono(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + skew_ms;
}

static int64_t now_wall(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + wall_skew_ms;
}

static const agent_clock fake_clock = {.wall_ms = now_wall, .mono_ms = now_mono};
static validate_secret_key *publisher;
static cb_config notify_config; /* for the next engine_open */
static const char *plugin_dir;  /* likewise */

static void open_engine_with(const char *dir, unsigned max_running, uint64_t inactivity_ms)
{
    validate_public_key key = *validate_secret_key_public(publisher);
    engine_config cfg = {.state_dir = dir,
                         .max_running = max_running,
                         .inactivity_ms = inactivity_ms,
                         .clock = &fake_clock,
                         .trusted_keys = &key,
                         .n_trusted_keys = 1,
                         .origin = origin_config_default(),
                         .notify = notify_config,
                         .plugin_dir = plugin_dir,
                         .validate_helper = DOPA_VALIDATE,
                         .plugin_timeout_ms = 10000};
    validate_error why = {0};
    if (engine_open(&cfg, &E, &why) != DOPA_OK)
        fprintf(stderr, "  engine_open: %s\n", why.text);
    CHECK(E != NULL);
}

static void open_engine(void)
{
    skew_ms = wall_skew_ms = 0;
    open_engine_with(check_path("state"), 4, 0);
}

static void close_engine(void)
{
    engine_close(E);
    E = NULL;
}

/* After each case: a failed one may have left the engine open. */
static void after_case(void)
{
    if (E != NULL)
        close_engine();
    skew_ms = wall_skew_ms = 0;
    memset(&notify_config, 0, sizeof notify_config);
    plugin_dir = NULL;
}

/* ------------------------------------------------------------------ */
/* Requests                                                           */

static proto_reply reply;

static int handle(uint32_t uid, proto_request *r)
{
    proto_reply_clear(&reply);
    CHECK_INT(engine_handle(E, uid, r, &reply, NULL, NULL), 0);
    return (int)reply.status;
}

static proto_request *request(int op, const dopa_id *id)
{
    static proto_request r;
    memset(&r, 0, sizeof r);
    r.op = op;
    if (id != NULL)
        r.id = *id;
    return &r;
}

static dopa_id create(uint32_t uid, const char *name)
{
    proto_request *r = request(PROTO_CREATE, NULL);
    snprintf(r->name, sizeof r->name, "%s", name);
    CHECK_INT(handle(uid, r), DOPA_OK);
    CHECK(reply.has_id);
    return reply.id;
}

static int add_file_with(uint32_t uid, const dopa_id *id, const char *url, const char *path,
                         const dopa_range *ranges, size_t n_ranges, const uint8_t *sha256,
                         const validate_manifest *m)
{
    proto_request *r = request(PROTO_ADD_FILE, id);
    snprintf(r->url, sizeof r->url, "%s", url);
    snprintf(r->path, sizeof r->path, "%s", path);
    for (size_t i = 0; i < n_ranges; i++)
        r->ranges[i] = ranges[i];
    r->n_ranges = n_ranges;
    if (sha256 != NULL) {
        memcpy(r->sha256, sha256, 32);
        r->has_sha256 = 1;
    }
    if (m != NULL) {
        r->manifest = m->encoded;
        r->manifest_len = m->encoded_len;
    }
    return handle(uid, r);
}

static int add_file(const dopa_id *id, const char *url, const char *path)
{
    return add_file_with(0, id, url, path, NULL, 0, NULL, NULL);
}

static int op(uint32_t uid, int code, const dopa_id *id)
{
    return handle(uid, request(code, id));
}

static int set_seconds(const dopa_id *id, int code, uint64_t seconds)
{
    proto_request *r = request(code, id);
    r->seconds = seconds;
    return handle(0, r);
}

static dopa_job_info info(const dopa_id *id)
{
    CHECK_INT(handle(0, request(PROTO_GET, id)), DOPA_OK);
    return reply.jobs[0];
}

static void step(int times)
{
    for (int i = 0; i < times; i++)
        CHECK_INT(engine_step(E, 20), DOPA_OK);
}

/* Runs the engine until the job reaches `state`; fails after `limit` s. */
static dopa_job_info run_until(const dopa_id *id, int state, double limit)
{
    double end = check_now() + limit;
    for (;;) {
        dopa_job_info j = info(id);
        if (j.state == state)
            return j;
        if (check_now() > end) {
            fprintf(stderr, "  job is %s, waited for %s; error: %s\n", dopa_state_name(j.state),
                    dopa_state_name(state), j.has_error ? j.error.message : "none");
            CHECK(0);
        }
        CHECK_INT(engine_step(E, 20), DOPA_OK);
    }
}

static void url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", web.port, path);
}

/* The file holds exactly the pattern bytes of `seed` for [offset, +len). */
static void check_content(const char *path, unsigned seed, uint64_t offset, uint64_t len)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK_INT(st.st_size, len);
    static unsigned char buf[65536];
    for (uint64_t done = 0; done < len;) {
        ssize_t n = read(fd, buf, sizeof buf);
        CHECK(n > 0);
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != test_pattern_byte(seed, (size_t)(offset + done + (uint64_t)i))) {
                fprintf(stderr, "  %s: byte %llu differs\n", path,
                        (unsigned long long)(done + (uint64_t)i));
                CHECK(0);
            }
        done += (uint64_t)n;
    }
    close(fd);
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

static const char *temp_of(const dopa_id *id, uint32_t index, const char *dest)
{
    static char tmp[8192];
    CHECK(fileops_temp_name(dest, id, index, tmp, sizeof tmp) == 0);
    return tmp;
}

#define SIZE_A (3 * 1024 * 1024 + 777)

/* ------------------------------------------------------------------ */

static void test_new_job_waits_suspended_for_files_and_resume(void)
{
    open_engine();
    dopa_id id = create(0, "first");
    dopa_job_info j = info(&id);
    CHECK_INT(j.state, DOPA_STATE_SUSPENDED);
    CHECK_STR(j.display_name, "first");
    CHECK_INT(j.priority, DOPA_PRIORITY_NORMAL);
    CHECK_INT(j.minimum_retry_delay, DOPA_DEFAULT_MIN_RETRY_DELAY);
    CHECK_INT(j.no_progress_timeout, DOPA_DEFAULT_NO_PROGRESS_TIMEOUT);
    CHECK(j.created > 0 && j.created == j.modified);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_ESTATE); /* no files yet */
    step(5);
    CHECK_INT(info(&id).state, DOPA_STATE_SUSPENDED);
    close_engine();
}

static void test_complete_makes_the_file_appear(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    const char *dest = check_path("a.bin");
    dopa_id id = create(0, "one file");
    CHECK_INT(add_file(&id, u, dest), DOPA_OK);
    const char *tmp = temp_of(&id, 0, dest);
    CHECK(exists(tmp));
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    dopa_job_info j = run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    CHECK_INT(j.bytes_total, SIZE_A);
    CHECK_INT(j.bytes_transferred, SIZE_A);
    CHECK_INT(j.files_transferred, 1);
    CHECK_INT(j.bytes_from_origin, SIZE_A);
    CHECK(j.transfer_completed > 0);
    CHECK_INT(handle(0, request(PROTO_LIST_FILES, &id)), DOPA_OK);
    CHECK_INT(reply.n_files, 1);
    CHECK_INT(reply.files[0].bytes_from_origin, SIZE_A); /* per file, by source */
    CHECK_INT(reply.files[0].bytes_from_peers, 0);
    CHECK(!exists(dest)); /* invisible until Complete */
    check_content(tmp, 1, 0, SIZE_A);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    CHECK_INT(reply.partial, 0);
    check_content(dest, 1, 0, SIZE_A);
    CHECK(!exists(tmp));
    CHECK_INT(info(&id).state, DOPA_STATE_ACKNOWLEDGED);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_ESTATE);
    CHECK_INT(op(0, PROTO_CANCEL, &id), DOPA_ESTATE);
    close_engine();
}

static void test_several_files_and_ranges(void)
{
    open_engine();
    char a[256], b[256];
    url(a, sizeof a, "/data/a.bin");
    url(b, sizeof b, "/data/b.bin");
    dopa_id id = create(0, "three files");
    const dopa_range ranges[] = {{10, 1000}, {1048000, 70000}, {SIZE_A - 5, DOPA_LENGTH_TO_EOF}};
    CHECK_INT(add_file(&id, a, check_path("whole-a")), DOPA_OK);
    CHECK_INT(add_file(&id, b, check_path("whole-b")), DOPA_OK);
    CHECK_INT(add_file_with(0, &id, a, check_path("parts-a"), ranges, 3, NULL, NULL), DOPA_OK);
    CHECK_INT(info(&id).files_total, 3);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("whole-a"), 1, 0, SIZE_A);
    check_content(check_path("whole-b"), 2, 0, 100000);
    /* The ranges, concatenated. */
    int fd = open(check_path("parts-a"), O_RDONLY);
    static unsigned char got[1000 + 70000 + 5];
    CHECK(read(fd, got, sizeof got) == (ssize_t)sizeof got);
    CHECK(read(fd, got, 1) == 0);
    close(fd);
    for (size_t i = 0; i < sizeof got; i++) {
        size_t remote = i < 1000    ? 10 + i
                        : i < 71000 ? 1048000 + (i - 1000)
                                    : SIZE_A - 5 + (i - 71000);
        CHECK(got[i] == test_pattern_byte(1, remote));
    }
    close_engine();
}

static void test_cancel_removes_the_temporary_files(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/slow/s.bin");
    dopa_id id = create(0, "cancelled");
    CHECK_INT(add_file(&id, u, check_path("s.bin")), DOPA_OK);
    const char *tmp = temp_of(&id, 0, check_path("s.bin"));
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRING, 10);
    CHECK(exists(tmp));
    CHECK_INT(op(0, PROTO_CANCEL, &id), DOPA_OK);
    CHECK(!exists(tmp));
    CHECK(!exists(check_path("s.bin")));
    CHECK_INT(info(&id).state, DOPA_STATE_CANCELLED);
    step(3);
    close_engine();
}

static void test_complete_before_transferred_is_partial(void)
{
    open_engine();
    char good[256], bad[256];
    url(good, sizeof good, "/data/b.bin");
    url(bad, sizeof bad, "/data/missing.bin");
    dopa_id id = create(0, "partial");
    CHECK_INT(add_file(&id, good, check_path("good")), DOPA_OK);
    CHECK_INT(add_file(&id, bad, check_path("bad")), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    dopa_job_info j = run_until(&id, DOPA_STATE_ERROR, 20);
    CHECK(j.has_error);
    CHECK_INT(j.error.context, DOPA_CONTEXT_REMOTE_FILE);
    CHECK_INT(j.error.code, ORIGIN_ENOT_FOUND);
    CHECK_INT(j.error.http_status, 404);
    CHECK_INT(j.error.file, 1);
    CHECK_INT(j.files_transferred, 1);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    CHECK_INT(reply.partial, 1);
    check_content(check_path("good"), 2, 0, 100000);
    CHECK(!exists(check_path("bad")));
    CHECK(!exists(temp_of(&id, 1, check_path("bad"))));
    close_engine();
}

static void test_suspend_and_resume_from_every_state(void)
{
    open_engine();
    char slow[256], flaky[256], gone[256], fast[256];
    url(slow, sizeof slow, "/slow/s.bin");
    url(flaky, sizeof flaky, "/flaky/never.bin");
    url(gone, sizeof gone, "/data/missing.bin");
    url(fast, sizeof fast, "/data/b.bin");
    dopa_id a = create(0, "transferring"), b = create(0, "transient"), c = create(0, "error"),
            d = create(0, "transferred");
    CHECK_INT(add_file(&a, slow, check_path("a")), DOPA_OK);
    CHECK_INT(add_file(&b, flaky, check_path("b")), DOPA_OK);
    CHECK_INT(add_file(&c, gone, check_path("c")), DOPA_OK);
    CHECK_INT(add_file(&d, fast, check_path("d")), DOPA_OK);
    const dopa_id *all[] = {&a, &b, &c, &d};
    const int states[] = {DOPA_STATE_TRANSFERRING, DOPA_STATE_TRANSIENT_ERROR, DOPA_STATE_ERROR,
                          DOPA_STATE_TRANSFERRED};
    for (int i = 0; i < 4; i++)
        CHECK_INT(op(0, PROTO_RESUME, all[i]), DOPA_OK);
    for (int i = 0; i < 4; i++) {
        run_until(all[i], states[i], 20);
        CHECK_INT(op(0, PROTO_SUSPEND, all[i]), DOPA_OK);
        CHECK_INT(info(all[i]).state, DOPA_STATE_SUSPENDED);
        step(3);
        CHECK_INT(info(all[i]).state, DOPA_STATE_SUSPENDED); /* stays put */
    }
    /* Resume: the transferred job is TRANSFERRED again at once, the rest
     * go back to work (and meet their error again). */
    CHECK_INT(op(0, PROTO_RESUME, &d), DOPA_OK);
    CHECK_INT(info(&d).state, DOPA_STATE_TRANSFERRED);
    CHECK_INT(op(0, PROTO_RESUME, &c), DOPA_OK);
    CHECK(!info(&c).has_error); /* resuming an ERROR job clears it */
    run_until(&c, DOPA_STATE_ERROR, 20);
    CHECK_INT(op(0, PROTO_RESUME, &a), DOPA_OK);
    run_until(&a, DOPA_STATE_TRANSFERRING, 10);
    for (int i = 0; i < 4; i++)
        CHECK_INT(op(0, PROTO_CANCEL, all[i]), DOPA_OK);
    close_engine();
}

static void test_transient_errors_retry_after_the_minimum_delay(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/flaky/later.bin");
    unlink(check_path("www-later"));
    char served[1024];
    snprintf(served, sizeof served, "%s/flaky/later.bin", web.root);
    unlink(served);
    dopa_id id = create(0, "flaky");
    CHECK_INT(add_file(&id, u, check_path("later")), DOPA_OK);
    CHECK_INT(set_seconds(&id, PROTO_SET_RETRY_DELAY, 60), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    dopa_job_info j = run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    CHECK_INT(j.error_count, 1);
    CHECK_INT(j.error.http_status, 503);
    CHECK_INT(j.error.context, DOPA_CONTEXT_REMOTE_FILE);
    /* Not before the delay... */
    skew_ms += 30000;
    step(10);
    CHECK_INT(info(&id).state, DOPA_STATE_TRANSIENT_ERROR);
    CHECK_INT(info(&id).error_count, 1);
    /* ...after it, another try, which fails again. */
    skew_ms += 31000;
    step(2);
    j = run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    CHECK_INT(j.error_count, 2);
    /* The file appears on the server: the next try succeeds. */
    CHECK(test_nginx_put(&web, "flaky/later.bin", 5000, 8) == 0);
    skew_ms += 61000;
    run_until(&id, DOPA_STATE_TRANSFERRED, 10);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("later"), 8, 0, 5000);
    unlink(served);
    close_engine();
}

static void test_no_progress_timeout_makes_the_error_final(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/flaky/never.bin");
    dopa_id id = create(0, "hopeless");
    CHECK_INT(add_file(&id, u, check_path("never")), DOPA_OK);
    CHECK_INT(set_seconds(&id, PROTO_SET_RETRY_DELAY, 60), DOPA_OK);
    CHECK_INT(set_seconds(&id, PROTO_SET_NO_PROGRESS, 150), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    skew_ms += 61000;
    step(2);
    run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    CHECK_INT(info(&id).error_count, 2);
    skew_ms += 100000; /* 161 s without progress */
    step(2);
    dopa_job_info j = info(&id);
    CHECK_INT(j.state, DOPA_STATE_ERROR);
    CHECK(j.has_error);
    CHECK_INT(j.error.http_status, 503);
    close_engine();
}

static void test_inactive_jobs_are_cancelled(void)
{
    skew_ms = wall_skew_ms = 0;
    open_engine_with(check_path("state"), 4, 3600 * 1000);
    char u[256];
    url(u, sizeof u, "/data/b.bin");
    dopa_id idle = create(0, "idle"), busy = create(0, "touched");
    CHECK_INT(add_file(&idle, u, check_path("idle")), DOPA_OK);
    CHECK_INT(add_file(&busy, u, check_path("busy")), DOPA_OK);
    const char *tmp = temp_of(&idle, 0, check_path("idle"));
    CHECK(exists(tmp));
    /* The wall clock jumping ahead (NTP fixing a bad clock) is not time. */
    wall_skew_ms += 10 * 3600 * 1000;
    step(2);
    CHECK_INT(info(&idle).state, DOPA_STATE_SUSPENDED);
    skew_ms += 3000 * 1000;
    CHECK_INT(set_seconds(&busy, PROTO_SET_RETRY_DELAY, 100), DOPA_OK); /* a touch */
    skew_ms += 1000 * 1000;
    step(2);
    CHECK_INT(info(&idle).state, DOPA_STATE_CANCELLED);
    CHECK(!exists(tmp));
    CHECK_INT(info(&busy).state, DOPA_STATE_SUSPENDED);
    /* A job just made, with nothing added yet, is not inactive, however
     * long the machine has been up. */
    skew_ms += 100 * 3600 * 1000;
    dopa_id fresh = create(0, "fresh");
    step(2);
    CHECK_INT(info(&fresh).state, DOPA_STATE_SUSPENDED);
    close_engine();
}

static void test_higher_priority_runs_first(void)
{
    skew_ms = wall_skew_ms = 0;
    open_engine_with(check_path("state"), 1, 0);
    char u[256];
    url(u, sizeof u, "/slow/s.bin");
    dopa_id low = create(0, "low"), high = create(0, "foreground");
    CHECK_INT(add_file(&low, u, check_path("low")), DOPA_OK);
    CHECK_INT(add_file(&high, u, check_path("high")), DOPA_OK);
    proto_request *r = request(PROTO_SET_PRIORITY, &low);
    r->priority = DOPA_PRIORITY_LOW;
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &low), DOPA_OK);
    run_until(&low, DOPA_STATE_TRANSFERRING, 10);
    r = request(PROTO_SET_PRIORITY, &high);
    r->priority = DOPA_PRIORITY_FOREGROUND;
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &high), DOPA_OK);
    /* One at a time: the foreground job takes the slot. */
    run_until(&high, DOPA_STATE_TRANSFERRING, 10);
    CHECK_INT(info(&low).state, DOPA_STATE_QUEUED);
    r = request(PROTO_SET_PRIORITY, &high);
    r->priority = 9;
    CHECK_INT(handle(0, r), DOPA_EINVAL);
    CHECK_INT(op(0, PROTO_CANCEL, &high), DOPA_OK);
    run_until(&low, DOPA_STATE_TRANSFERRING, 10);
    CHECK_INT(op(0, PROTO_CANCEL, &low), DOPA_OK);
    close_engine();
}

static void test_expected_sha256_is_checked_at_the_end(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/b.bin");
    static unsigned char content[100000];
    test_pattern_fill(2, 0, content, sizeof content);
    uint8_t good[32], bad[32];
    validate_sha256(content, sizeof content, good);
    memcpy(bad, good, 32);
    bad[0] ^= 1;
    dopa_id ok = create(0, "right hash"), wrong = create(0, "wrong hash");
    CHECK_INT(add_file_with(0, &ok, u, check_path("ok"), NULL, 0, good, NULL), DOPA_OK);
    CHECK_INT(add_file_with(0, &wrong, u, check_path("wrong"), NULL, 0, bad, NULL), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &ok), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &wrong), DOPA_OK);
    run_until(&ok, DOPA_STATE_TRANSFERRED, 20);
    dopa_job_info j = run_until(&wrong, DOPA_STATE_ERROR, 20);
    CHECK_INT(j.error.context, DOPA_CONTEXT_VALIDATION);
    CHECK_INT(j.error.code, VALIDATE_EFILE_HASH);
    CHECK_INT(j.bytes_transferred, 0); /* progress reset */
    CHECK_INT(op(0, PROTO_COMPLETE, &ok), DOPA_OK);
    check_content(check_path("ok"), 2, 0, 100000);
    close_engine();
}

static validate_manifest *manifest_for(unsigned seed, size_t len, uint32_t piece_size)
{
    unsigned char *content = malloc(len);
    test_pattern_fill(seed, 0, content, len);
    validate_digester *dg = NULL;
    validate_digest d;
    validate_manifest *m = NULL;
    CHECK_INT(validate_digester_new(piece_size, &dg), VALIDATE_OK);
    CHECK_INT(validate_digester_update(dg, content, len), VALIDATE_OK);
    CHECK_INT(validate_digester_finish(dg, &d), VALIDATE_OK);
    validate_digester_free(dg);
    CHECK_INT(validate_manifest_sign(&d, 1, 0, publisher, &m), VALIDATE_OK);
    validate_digest_clear(&d);
    free(content);
    return m;
}

static void test_manifests_check_every_piece(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    validate_manifest *right = manifest_for(1, SIZE_A, 65536);
    validate_manifest *other = manifest_for(9, SIZE_A, 65536); /* same size, other bytes */
    dopa_id good = create(0, "manifest"), bad = create(0, "lying origin");
    CHECK_INT(add_file_with(0, &good, u, check_path("good"), NULL, 0, NULL, right), DOPA_OK);
    CHECK_INT(info(&good).bytes_total, SIZE_A); /* known from the manifest at once */
    CHECK_INT(add_file_with(0, &bad, u, check_path("bad"), NULL, 0, NULL, other), DOPA_OK);
    CHECK_INT(set_seconds(&bad, PROTO_SET_RETRY_DELAY, 1), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &good), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &bad), DOPA_OK);
    run_until(&good, DOPA_STATE_TRANSFERRED, 20);
    /* The first bad piece stops the request; after repeated failures the
     * job gives up. Not one byte of it counts as transferred. */
    dopa_job_info j = run_until(&bad, DOPA_STATE_TRANSIENT_ERROR, 20);
    CHECK_INT(j.error.context, DOPA_CONTEXT_VALIDATION);
    CHECK_INT(j.error.code, VALIDATE_EPIECE_HASH);
    CHECK_INT(j.bytes_transferred, 0);
    for (int i = 0; i < 4 && info(&bad).state != DOPA_STATE_ERROR; i++) {
        skew_ms += 2000;
        step(3);
        for (int k = 0; k < 100 && info(&bad).state != DOPA_STATE_TRANSIENT_ERROR &&
                        info(&bad).state != DOPA_STATE_ERROR;
             k++)
            step(1);
    }
    CHECK_INT(info(&bad).state, DOPA_STATE_ERROR);
    CHECK_INT(op(0, PROTO_COMPLETE, &good), DOPA_OK);
    check_content(check_path("good"), 1, 0, SIZE_A);

    /* A manifest from a key nobody trusts is refused when the file is added. */
    validate_secret_key *stranger = NULL;
    CHECK_INT(validate_secret_key_generate(&stranger), VALIDATE_OK);
    validate_secret_key *saved = publisher;
    publisher = stranger;
    validate_manifest *foreign = manifest_for(1, SIZE_A, 65536);
    publisher = saved;
    dopa_id third = create(0, "untrusted");
    CHECK_INT(add_file_with(0, &third, u, check_path("third"), NULL, 0, NULL, foreign),
              DOPA_EMANIFEST);
    CHECK_HAS(reply.message, "untrusted key");
    CHECK_INT(info(&third).files_total, 0);
    validate_manifest_free(foreign);
    validate_secret_key_free(stranger);
    validate_manifest_free(right);
    validate_manifest_free(other);
    close_engine();
}

static void test_restart_resumes_with_the_pieces_it_had(void)
{
    open_engine();
    CHECK(test_nginx_put(&web, "slow/r.bin", 8 * 1024 * 1024, 13) == 0);
    long long before = test_nginx_bytes_sent(&web, "/slow/r.bin");
    char u[256];
    url(u, sizeof u, "/slow/r.bin");
    dopa_id id = create(0, "restarted");
    CHECK_INT(add_file(&id, u, check_path("r")), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRING, 10);
    double end = check_now() + 20;
    while (info(&id).bytes_transferred < 3 * 1024 * 1024 && check_now() < end)
        step(1);
    uint64_t had = info(&id).bytes_transferred;
    CHECK(had >= 3 * 1024 * 1024);
    close_engine(); /* dopad stops (its last commit is kept) */

    skew_ms = 0;
    open_engine_with(check_path("state"), 4, 0);
    dopa_job_info j = info(&id);
    CHECK_INT(j.state, DOPA_STATE_QUEUED); /* it was running: it runs again */
    CHECK(j.bytes_transferred >= had - 1024 * 1024);
    run_until(&id, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("r"), 13, 0, 8 * 1024 * 1024);
    close_engine();
    /* nginx sent the file about once: what was done was not fetched again. */
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    long long sent = test_nginx_bytes_sent(&web, "/slow/r.bin") - before;
    printf("  restart: nginx sent %lld bytes for an 8 MiB file\n", sent);
    CHECK(sent < 8 * 1024 * 1024 + 3 * 1024 * 1024);
}

static void test_owners_see_only_their_jobs(void)
{
    open_engine();
    dopa_id mine = create(1000, "user job"), roots = create(0, "root job");
    CHECK_INT(handle(1000, request(PROTO_GET, &roots)), DOPA_ENOTFOUND);
    CHECK_INT(op(1000, PROTO_CANCEL, &roots), DOPA_ENOTFOUND);
    CHECK_INT(op(1000, PROTO_SUSPEND, &roots), DOPA_ENOTFOUND);
    CHECK_INT(handle(1001, request(PROTO_GET, &mine)), DOPA_ENOTFOUND);
    CHECK_INT(handle(1000, request(PROTO_GET, &mine)), DOPA_OK);
    CHECK_INT(reply.jobs[0].owner, 1000);
    proto_request *r = request(PROTO_LIST, NULL);
    CHECK_INT(handle(1000, r), DOPA_OK);
    CHECK_INT(reply.n_jobs, 1);
    r = request(PROTO_LIST, NULL);
    r->all_users = 1;
    CHECK_INT(handle(1000, r), DOPA_EACCESS);
    r = request(PROTO_LIST, NULL);
    r->all_users = 1;
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK_INT(reply.n_jobs, 2);
    r = request(PROTO_LIST, NULL);
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK_INT(reply.n_jobs, 1); /* without all_users, root lists its own */
    CHECK_INT(handle(0, request(PROTO_GET, &mine)), DOPA_OK); /* root sees all */
    CHECK_INT(op(1000, PROTO_TAKE_OWNERSHIP, &mine), DOPA_EACCESS);
    CHECK_INT(op(0, PROTO_TAKE_OWNERSHIP, &mine), DOPA_OK);
    CHECK_INT(handle(1000, request(PROTO_GET, &mine)), DOPA_ENOTFOUND);
    close_engine();
}

struct fake_call {
    int answered;
    proto_reply got;
};

static void record_reply(engine_call *call, const proto_reply *r)
{
    struct fake_call *fc = (struct fake_call *)call;
    fc->answered = 1;
    fc->got = *r;
    fc->got.jobs = NULL;
    if (r->n_jobs == 1) {
        fc->got.jobs = malloc(sizeof *fc->got.jobs);
        fc->got.jobs[0] = r->jobs[0];
    }
}

static void test_wait_answers_on_change_or_timeout(void)
{
    open_engine();
    dopa_id id = create(0, "watched");
    uint64_t version = info(&id).version;
    struct fake_call fc = {0};
    proto_request *r = request(PROTO_WAIT, &id);
    r->seen = version;
    r->timeout_ms = 10000;
    proto_reply_clear(&reply);
    CHECK_INT(engine_handle(E, 0, r, &reply, (engine_call *)&fc, record_reply), ENGINE_DEFERRED);
    step(2);
    CHECK(!fc.answered);
    proto_request *s = request(PROTO_SET_NAME, &id);
    snprintf(s->name, sizeof s->name, "renamed");
    CHECK_INT(handle(0, s), DOPA_OK);
    step(1);
    CHECK(fc.answered);
    CHECK_STR(fc.got.jobs[0].display_name, "renamed");
    CHECK(fc.got.jobs[0].version > version);
    free(fc.got.jobs);

    /* Unchanged: answered when the time is up. */
    struct fake_call idle = {0};
    uint64_t now_version = info(&id).version;
    r = request(PROTO_WAIT, &id);
    r->seen = now_version;
    r->timeout_ms = 5000;
    proto_reply_clear(&reply);
    CHECK_INT(engine_handle(E, 0, r, &reply, (engine_call *)&idle, record_reply), ENGINE_DEFERRED);
    skew_ms += 6000;
    step(1);
    CHECK(idle.answered);
    free(idle.got.jobs);
    /* A stale version answers at once. */
    r = request(PROTO_WAIT, &id);
    r->seen = 1;
    r->timeout_ms = 5000;
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK_INT(reply.n_jobs, 1);
    close_engine();
}

static void test_add_file_refuses_bad_requests(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    dopa_id id = create(0, "picky");
    CHECK_INT(add_file(&id, u, "relative/path"), DOPA_EINVAL);
    CHECK_INT(add_file(&id, u, "/tmp/../etc/x"), DOPA_EINVAL);
    CHECK_INT(add_file(&id, u, "/tmp/dir/"), DOPA_EINVAL);
    CHECK_INT(add_file(&id, "ftp://127.0.0.1/x", check_path("x")), DOPA_EINVAL);
    CHECK_INT(add_file(&id, "file:relative", check_path("x")), DOPA_EINVAL);
    CHECK_INT(add_file(&id, u, "/nonexistent-dir/x"), DOPA_EIO);
    CHECK_HAS(reply.message, "No such file");
    CHECK_INT(add_file(&id, u, check_path("once")), DOPA_OK);
    CHECK_INT(add_file(&id, u, check_path("once")), DOPA_EINVAL); /* twice in one job */
    const dopa_range empty[] = {{0, 0}};
    const dopa_range overlap[] = {{0, 100}, {50, 100}};
    const dopa_range eof_first[] = {{0, DOPA_LENGTH_TO_EOF}, {10, 10}};
    CHECK_INT(add_file_with(0, &id, u, check_path("r1"), empty, 1, NULL, NULL), DOPA_EINVAL);
    CHECK_INT(add_file_with(0, &id, u, check_path("r2"), overlap, 2, NULL, NULL), DOPA_EINVAL);
    CHECK_INT(add_file_with(0, &id, u, check_path("r3"), eof_first, 2, NULL, NULL), DOPA_EINVAL);
    validate_manifest *m = manifest_for(1, SIZE_A, 65536);
    const dopa_range one[] = {{0, 10}};
    CHECK_INT(add_file_with(0, &id, u, check_path("r4"), one, 1, NULL, m), DOPA_EINVAL);
    validate_manifest_free(m);
    CHECK_INT(info(&id).files_total, 1);
    proto_request *r = request(PROTO_CREATE, NULL);
    r->type = 7;
    CHECK_INT(handle(0, r), DOPA_EINVAL);
    CHECK_INT(set_seconds(&id, PROTO_SET_RETRY_DELAY, 0), DOPA_EINVAL);
    r = request(PROTO_SET_PROXY, &id);
    r->proxy_usage = DOPA_PROXY_OVERRIDE;
    CHECK_INT(handle(0, r), DOPA_EINVAL); /* an override needs a proxy */
    snprintf(r->proxy, sizeof r->proxy, "http://127.0.0.1:3128");
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK_INT(handle(0, request(PROTO_GET_PROXY, &id)), DOPA_OK);
    CHECK_STR(reply.proxy, "http://127.0.0.1:3128");
    CHECK_INT(reply.proxy_usage, DOPA_PROXY_OVERRIDE);
    close_engine();
}

static void test_planted_links_are_not_followed(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/b.bin");
    const char *victim = check_path("victim");
    int fd = open(victim, O_WRONLY | O_CREAT, 0644);
    CHECK(write(fd, "keep", 4) == 4);
    close(fd);

    /* A symlink at the destination is replaced by the file, not followed. */
    dopa_id a = create(0, "dest link");
    CHECK(symlink(victim, check_path("dest")) == 0);
    CHECK_INT(add_file(&a, u, check_path("dest")), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &a), DOPA_OK);
    run_until(&a, DOPA_STATE_TRANSFERRED, 20);
    CHECK_INT(op(0, PROTO_COMPLETE, &a), DOPA_OK);
    struct stat st;
    CHECK(lstat(check_path("dest"), &st) == 0 && S_ISREG(st.st_mode));
    check_content(check_path("dest"), 2, 0, 100000);

    /* A temporary file swapped for a symlink is not written through. */
    dopa_id b = create(0, "temp link");
    CHECK_INT(add_file(&b, u, check_path("other")), DOPA_OK);
    const char *tmp = temp_of(&b, 0, check_path("other"));
    CHECK(unlink(tmp) == 0);
    CHECK(symlink(victim, tmp) == 0);
    CHECK_INT(op(0, PROTO_RESUME, &b), DOPA_OK);
    dopa_job_info j = run_until(&b, DOPA_STATE_ERROR, 20);
    CHECK_INT(j.error.context, DOPA_CONTEXT_LOCAL_FILE);
    char buf[16] = "";
    fd = open(victim, O_RDONLY);
    CHECK(read(fd, buf, sizeof buf) == 4);
    close(fd);
    CHECK(memcmp(buf, "keep", 4) == 0);
    CHECK_INT(op(0, PROTO_CANCEL, &b), DOPA_OK);
    CHECK(lstat(tmp, &st) != 0); /* the planted link is gone, its target kept */
    CHECK(lstat(victim, &st) == 0);
    close_engine();
}

static void test_a_file_changed_on_the_server_is_fetched_anew(void)
{
    open_engine();
    CHECK(test_nginx_put(&web, "slow/c.bin", 8 * 1024 * 1024, 30) == 0);
    CHECK(test_nginx_set_mtime(&web, "slow/c.bin", 1600000000) == 0);
    char u[256];
    url(u, sizeof u, "/slow/c.bin");
    dopa_id id = create(0, "moving target");
    CHECK_INT(add_file(&id, u, check_path("c")), DOPA_OK);
    CHECK_INT(set_seconds(&id, PROTO_SET_RETRY_DELAY, 1), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    double end = check_now() + 20;
    while (info(&id).bytes_transferred < 2 * 1024 * 1024 && check_now() < end)
        step(1);
    /* The publisher replaces it with a smaller, different file, and the
     * job's next request (after a pause) finds out. The request under way
     * would still read the old file to its end: nginx keeps it open. */
    CHECK_INT(op(0, PROTO_SUSPEND, &id), DOPA_OK);
    CHECK(test_nginx_put(&web, "slow/c.bin", 1024 * 1024 + 17, 31) == 0);
    CHECK(test_nginx_set_mtime(&web, "slow/c.bin", 1600000100) == 0);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    for (int i = 0; i < 200 && info(&id).state != DOPA_STATE_TRANSFERRED; i++) {
        if (info(&id).state == DOPA_STATE_TRANSIENT_ERROR)
            skew_ms += 2000;
        step(1);
    }
    dopa_job_info j = run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    CHECK_INT(j.bytes_total, 1024 * 1024 + 17);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("c"), 31, 0, 1024 * 1024 + 17); /* only the new version */
    close_engine();
}

static void test_cancel_while_pieces_wait_stays_cancelled(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/slow/s.bin");
    dopa_id id = create(0, "cancel mid-commit");
    CHECK_INT(add_file(&id, u, check_path("s")), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRING, 10);
    step(3);
    CHECK_INT(op(0, PROTO_CANCEL, &id), DOPA_OK);
    step(30);
    dopa_job_info j = info(&id);
    CHECK_INT(j.state, DOPA_STATE_CANCELLED);
    CHECK(!j.has_error);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_ESTATE);
    close_engine();
}

static void test_whole_file_check_is_void_after_suspend_or_cancel(void)
{
    open_engine();
    CHECK(test_nginx_put(&web, "data/h.bin", 96 * 1024 * 1024, 40) == 0);
    char u[256];
    url(u, sizeof u, "/data/h.bin");
    uint8_t sha[32];
    validate_sha256_state st;
    validate_sha256_init(&st);
    static unsigned char buf[1 << 20];
    for (size_t off = 0; off < 96u * 1024 * 1024; off += sizeof buf) {
        test_pattern_fill(40, off, buf, sizeof buf);
        validate_sha256_update(&st, buf, sizeof buf);
    }
    validate_sha256_final(&st, sha);
    dopa_id a = create(0, "suspended in the check"), b = create(0, "cancelled in the check"),
            c = create(0, "closed in the check");
    CHECK_INT(add_file_with(0, &a, u, check_path("a"), NULL, 0, sha, NULL), DOPA_OK);
    CHECK_INT(add_file_with(0, &b, u, check_path("b"), NULL, 0, sha, NULL), DOPA_OK);
    CHECK_INT(add_file_with(0, &c, u, check_path("c"), NULL, 0, sha, NULL), DOPA_OK);
    const dopa_id *ids[] = {&a, &b, &c};
    for (int i = 0; i < 3; i++)
        CHECK_INT(op(0, PROTO_RESUME, ids[i]), DOPA_OK);
    /* Wait until every byte is in: the check runs, the state is not yet
     * TRANSFERRED. */
    double end = check_now() + 30;
    for (int i = 0; i < 3; i++)
        while (info(ids[i]).bytes_transferred < 96u * 1024 * 1024 && check_now() < end)
            step(1);
    CHECK_INT(op(0, PROTO_SUSPEND, &a), DOPA_OK);
    CHECK_INT(op(0, PROTO_CANCEL, &b), DOPA_OK);
    close_engine(); /* with c's check in flight: it must be waited for */
    open_engine_with(check_path("state"), 4, 0);
    for (int i = 0; i < 20; i++)
        step(5);
    CHECK_INT(info(&a).state, DOPA_STATE_SUSPENDED);
    CHECK_INT(handle(0, request(PROTO_GET, &b)), DOPA_ENOTFOUND); /* gone for good */
    run_until(&c, DOPA_STATE_TRANSFERRED, 30); /* checked again after the restart */
    CHECK_INT(op(0, PROTO_RESUME, &a), DOPA_OK);
    run_until(&a, DOPA_STATE_TRANSFERRED, 30);
    close_engine();
}

static void test_complete_can_be_repeated_after_a_crash(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/b.bin");
    dopa_id id = create(0, "half completed");
    CHECK_INT(add_file(&id, u, check_path("b")), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    /* As if a Complete renamed the file and died before recording it. */
    CHECK(rename(temp_of(&id, 0, check_path("b")), check_path("b")) == 0);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("b"), 2, 0, 100000);
    close_engine();
}

static void test_a_swapped_directory_is_not_written(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/b.bin");
    CHECK(mkdir(check_path("dl"), 0755) == 0);
    CHECK(mkdir(check_path("elsewhere"), 0755) == 0);
    dopa_id id = create(0, "moved under");
    CHECK_INT(add_file(&id, u, check_path("dl/b")), DOPA_OK);
    /* The directory is swapped for a symlink to another one. */
    CHECK(rename(check_path("dl"), check_path("dl-old")) == 0);
    CHECK(symlink(check_path("elsewhere"), check_path("dl")) == 0);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    dopa_job_info j = run_until(&id, DOPA_STATE_ERROR, 20);
    CHECK_INT(j.error.context, DOPA_CONTEXT_LOCAL_FILE);
    CHECK_HAS(j.error.message, "no longer the one");
    DIR *d = opendir(check_path("elsewhere"));
    struct dirent *e;
    int entries = 0;
    while ((e = readdir(d)) != NULL)
        entries += e->d_name[0] != '.' || strlen(e->d_name) > 2;
    closedir(d);
    CHECK_INT(entries, 0); /* nothing was made there */
    close_engine();
}

static void test_retry_after_is_honoured(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/busy");
    dopa_id id = create(0, "busy server");
    CHECK_INT(add_file(&id, u, check_path("x")), DOPA_OK);
    CHECK_INT(set_seconds(&id, PROTO_SET_RETRY_DELAY, 60), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    skew_ms += 61000; /* past MinimumRetryDelay, not past Retry-After: 120 */
    step(3);
    CHECK_INT(info(&id).state, DOPA_STATE_TRANSIENT_ERROR);
    CHECK_INT(info(&id).error_count, 1);
    skew_ms += 60000;
    step(2);
    run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    CHECK_INT(info(&id).error_count, 2);
    close_engine();
}

static void test_no_progress_time_survives_a_restart(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/flaky/never.bin");
    dopa_id id = create(0, "stalled across restarts");
    CHECK_INT(add_file(&id, u, check_path("n")), DOPA_OK);
    CHECK_INT(set_seconds(&id, PROTO_SET_NO_PROGRESS, 150), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSIENT_ERROR, 10);
    close_engine();
    wall_skew_ms = 200 * 1000; /* dopad was down for 200 s */
    open_engine_with(check_path("state"), 4, 0);
    step(2);
    CHECK_INT(info(&id).state, DOPA_STATE_ERROR);
    close_engine();
}

static void test_long_paths_and_local_sources_are_refused(void)
{
    open_engine();
    char u[256], path[DOPA_PATH_MAX + 1];
    url(u, sizeof u, "/data/b.bin");
    dopa_id id = create(0, "limits");
    /* A destination whose temporary name would not fit in a path. */
    memset(path, 'x', DOPA_PATH_MAX - 10);
    path[0] = '/';
    memcpy(path + DOPA_PATH_MAX - 13, "/f", 3);
    CHECK_INT(add_file(&id, u, path), DOPA_EINVAL);
    CHECK_HAS(reply.message, "too long");
    if (geteuid() == 0) {
        /* A root dopad reads file:// itself: only root's jobs may. */
        dopa_id theirs = create(1000, "user's");
        CHECK_INT(add_file_with(1000, &theirs, "file:///etc/shadow", check_path("s"), NULL, 0, NULL,
                                NULL),
                  DOPA_EACCESS);
        CHECK_HAS(reply.message, "only for root's jobs");
    }
    /* A FIFO as a local source is refused, not waited on. */
    CHECK(mkfifo(check_path("fifo"), 0600) == 0);
    char fifo_url[8300];
    snprintf(fifo_url, sizeof fifo_url, "file://%s", check_path("fifo"));
    CHECK_INT(add_file(&id, fifo_url, check_path("f")), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    dopa_job_info j = run_until(&id, DOPA_STATE_ERROR, 10);
    CHECK_HAS(j.error.message, "not a regular file");
    close_engine();
}

/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* Notifications                                                      */

static const uint8_t client_a[16] = {0xa1}, client_b[16] = {0xb2};

static int reg(uint32_t uid, const dopa_id *id, const uint8_t client[16])
{
    proto_request *r = request(PROTO_REGISTER, id);
    memcpy(r->client, client, 16);
    return handle(uid, r);
}

static int set_flags(const dopa_id *id, uint32_t flags)
{
    proto_request *r = request(PROTO_SET_NOTIFY_FLAGS, id);
    r->flags = flags;
    return handle(0, r);
}

/* The events a client holds now (a poll that does not wait). */
static size_t poll_events(uint32_t uid, const uint8_t client[16], proto_event *out, size_t max)
{
    proto_request *r = request(PROTO_EVENTS, NULL);
    memcpy(r->client, client, 16);
    CHECK_INT(handle(uid, r), DOPA_OK);
    size_t n = reply.n_events < max ? reply.n_events : max;
    memcpy(out, reply.events, n * sizeof *out);
    return reply.n_events;
}

static int answer(uint32_t uid, const uint8_t client[16], uint64_t event, int ok)
{
    proto_request *r = request(PROTO_EVENT_DONE, NULL);
    memcpy(r->client, client, 16);
    r->event = event;
    r->ok = (uint64_t)ok;
    return handle(uid, r);
}

/* The first event of a kind (for a job, if not NULL) among events, or NULL. */
static const proto_event *find_event(const proto_event *ev, size_t n, int kind, const dopa_id *job)
{
    for (size_t i = 0; i < n; i++)
        if ((int)ev[i].kind == kind &&
            (job == NULL || memcmp(ev[i].job.bytes, job->bytes, 16) == 0))
            return &ev[i];
    return NULL;
}

/* Steps the engine until the client holds an event of this kind for the
 * job; returns its id (0 after `limit` seconds). */
static uint64_t await_event(uint32_t uid, const uint8_t client[16], int kind, const dopa_id *job,
                            double limit)
{
    double end = check_now() + limit;
    proto_event ev[PROTO_EVENT_PAGE];
    for (;;) {
        size_t n = poll_events(uid, client, ev, PROTO_EVENT_PAGE);
        const proto_event *e = find_event(ev, n, kind, job);
        if (e != NULL)
            return e->id;
        if (check_now() > end)
            return 0;
        step(1);
    }
}

/* An hour later (the client, silent that long, registers again). */
static void later(const dopa_id *id, const uint8_t client[16])
{
    skew_ms += 3600 * 1000;
    step(3);
    CHECK_INT(reg(0, id, client), DOPA_OK);
    step(3);
}

/* A job of uid with one file of data/b.bin, not resumed yet. */
static dopa_id started_job(uint32_t uid, const char *name, const char *dest)
{
    char u[256];
    url(u, sizeof u, "/data/b.bin");
    dopa_id id = create(uid, name);
    CHECK_INT(add_file_with(uid, &id, u, dest, NULL, 0, NULL, NULL), DOPA_OK);
    return id;
}

static void test_events_reach_the_registered_client_once(void)
{
    open_engine();
    dopa_id id = started_job(0, "told", check_path("told"));
    CHECK_INT(info(&id).notify_flags, DOPA_NOTIFY_DEFAULT);
    CHECK_INT(reg(0, &id, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    uint64_t ev = await_event(0, client_a, CB_JOB_TRANSFERRED, &id, 5);
    CHECK(ev != 0);
    /* Held until answered: a lost reply loses nothing. */
    proto_event got[PROTO_EVENT_PAGE];
    CHECK_INT(poll_events(0, client_a, got, PROTO_EVENT_PAGE), 1);
    CHECK_INT(got[0].id, ev);
    CHECK_INT(got[0].file, -1);
    CHECK_INT(answer(0, client_a, ev, 1), DOPA_OK);
    CHECK_INT(answer(0, client_a, ev, 1), DOPA_OK); /* twice is harmless */
    later(&id, client_a);
    CHECK_INT(poll_events(0, client_a, got, PROTO_EVENT_PAGE), 0);

    /* JobError, once, for a job that fails for good. */
    char u[256];
    url(u, sizeof u, "/data/missing.bin");
    dopa_id bad = create(0, "broken");
    CHECK_INT(add_file(&bad, u, check_path("broken")), DOPA_OK);
    CHECK_INT(reg(0, &bad, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &bad), DOPA_OK);
    run_until(&bad, DOPA_STATE_ERROR, 20);
    ev = await_event(0, client_a, CB_JOB_ERROR, &bad, 5);
    CHECK(ev != 0);
    CHECK_INT(answer(0, client_a, ev, 0), DOPA_OK); /* a failed JobError is not repeated */
    later(&bad, client_a);
    CHECK_INT(poll_events(0, client_a, got, PROTO_EVENT_PAGE), 0);

    /* Without the flag, nothing. */
    dopa_id quiet = started_job(0, "quiet", check_path("quiet"));
    CHECK_INT(set_flags(&quiet, DOPA_NOTIFY_JOB_ERROR), DOPA_OK);
    CHECK_INT(reg(0, &quiet, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &quiet), DOPA_OK);
    run_until(&quiet, DOPA_STATE_TRANSFERRED, 20);
    CHECK_INT(await_event(0, client_a, CB_JOB_TRANSFERRED, &quiet, 1), 0);
    CHECK_INT(set_flags(&quiet, 0x20), DOPA_EINVAL);
    close_engine();
}

static void test_a_failed_transferred_comes_again_with_a_growing_interval(void)
{
    notify_config.retry_first_ms = 10000;
    open_engine();
    dopa_id id = started_job(0, "stubborn", check_path("stubborn"));
    CHECK_INT(reg(0, &id, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    int deliveries = 0;
    int64_t waits[] = {10000, 20000, 40000};
    for (int attempt = 0; attempt < 4; attempt++) {
        uint64_t ev = await_event(0, client_a, CB_JOB_TRANSFERRED, &id, 2);
        CHECK(ev != 0);
        deliveries++;
        CHECK_INT(answer(0, client_a, ev, attempt == 3), DOPA_OK);
        if (attempt == 3)
            break;
        /* Not again before its interval (which doubles), then again. */
        skew_ms += waits[attempt] - 1000;
        step(2);
        CHECK_INT(await_event(0, client_a, CB_JOB_TRANSFERRED, &id, 0), 0);
        skew_ms += 1000;
    }
    CHECK_INT(deliveries, 4);
    later(&id, client_a);
    CHECK_INT(await_event(0, client_a, CB_JOB_TRANSFERRED, &id, 0.2), 0);
    close_engine();
}

static void test_unanswered_events_survive_a_restart(void)
{
    open_engine();
    dopa_id told = started_job(0, "told", check_path("told"));
    dopa_id untold = started_job(0, "untold", check_path("untold"));
    CHECK_INT(reg(0, &told, client_a), DOPA_OK);
    CHECK_INT(reg(0, &untold, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &told), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &untold), DOPA_OK);
    run_until(&told, DOPA_STATE_TRANSFERRED, 20);
    run_until(&untold, DOPA_STATE_TRANSFERRED, 20);
    uint64_t a = await_event(0, client_a, CB_JOB_TRANSFERRED, &told, 5);
    uint64_t b = await_event(0, client_a, CB_JOB_TRANSFERRED, &untold, 5);
    CHECK(a != 0 && b != 0);
    CHECK_INT(answer(0, client_a, a, 1), DOPA_OK);
    /* b was handed out but not answered when dopad stopped. */
    close_engine();

    open_engine_with(check_path("state"), 4, 0);
    /* The old client is unknown now; it registers again. */
    proto_request *r = request(PROTO_EVENTS, NULL);
    memcpy(r->client, client_a, 16);
    CHECK_INT(handle(0, r), DOPA_ENOTFOUND);
    CHECK_INT(reg(0, &told, client_a), DOPA_OK);
    CHECK_INT(reg(0, &untold, client_a), DOPA_OK);
    uint64_t again = await_event(0, client_a, CB_JOB_TRANSFERRED, &untold, 5);
    CHECK(again != 0);
    CHECK_INT(await_event(0, client_a, CB_JOB_TRANSFERRED, &told, 0.5), 0);
    CHECK_INT(answer(0, client_a, again, 1), DOPA_OK);
    close_engine();
    /* Answered: gone for good. */
    open_engine_with(check_path("state"), 4, 0);
    CHECK_INT(reg(0, &untold, client_a), DOPA_OK);
    CHECK_INT(await_event(0, client_a, CB_JOB_TRANSFERRED, &untold, 1.5), 0);
    close_engine();
}

/* A second user when running as root, else ourselves. */
static void other_user(uid_t *uid, gid_t *gid, int *created)
{
    *created = 0;
    *uid = geteuid();
    *gid = getegid();
    if (geteuid() == 0)
        CHECK_INT(test_user(uid, gid, created), 0);
}

static int wait_for_file(const char *path, char *out, size_t len, double limit)
{
    double end = check_now() + limit;
    while (check_now() < end) {
        FILE *f = fopen(path, "r");
        if (f != NULL) {
            size_t n = fread(out, 1, len - 1, f);
            out[n] = '\0';
            fclose(f);
            if (n > 0 && out[n - 1] == '\n')
                return 0;
        }
        step(1);
    }
    return -1;
}

static int set_cmdline(uint32_t uid, const dopa_id *id, const char *const *argv)
{
    proto_request *r = request(PROTO_SET_NOTIFY_CMDLINE, id);
    for (r->n_args = 0; argv[r->n_args] != NULL; r->n_args++)
        snprintf(r->args[r->n_args], sizeof r->args[0], "%s", argv[r->n_args]);
    return handle(uid, r);
}

static void test_the_command_runs_as_the_owner_without_a_client(void)
{
    uid_t uid;
    gid_t gid;
    int created;
    other_user(&uid, &gid, &created);
    if (uid == geteuid())
        printf("  (not root: the command runs as this user)\n");
    CHECK(chmod(check_tmpdir(), 0755) == 0);
    char dir[1024], out[1024], script[1400];
    snprintf(dir, sizeof dir, "%.900s/theirs", check_tmpdir());
    CHECK(mkdir(dir, 0755) == 0);
    CHECK(chown(dir, uid, gid) == 0);
    open_engine();
    char dest[1100], said[1100];
    snprintf(dest, sizeof dest, "%s/file", dir);
    snprintf(said, sizeof said, "%s/said", dir);
    dopa_id id = started_job(uid, "commanded", dest);
    snprintf(script, sizeof script, "echo \"$(id -u) $DOPA_EVENT $DOPA_JOB_ID $1\" > %s", said);
    const char *argv[] = {"/bin/sh", "-c", script, "sh", "one arg; not a shell's", NULL};
    CHECK_INT(set_cmdline(uid, &id, argv), DOPA_OK);
    const char *relative[] = {"sh", "-c", "true", NULL};
    CHECK_INT(set_cmdline(uid, &id, relative), DOPA_EINVAL);
    CHECK_INT(handle(uid, request(PROTO_GET_NOTIFY, &id)), DOPA_OK);
    CHECK_INT(reply.n_args, 5);
    CHECK_STR(reply.args[4], "one arg; not a shell's");
    CHECK_INT(op(uid, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    CHECK_INT(wait_for_file(said, out, sizeof out, 10), 0);
    char want[256], text[37];
    dopa_id_format(&id, text);
    snprintf(want, sizeof want, "%u JobTransferred %s one arg; not a shell's\n", (unsigned)uid,
             text);
    CHECK_STR(out, want);
    close_engine();
    if (created)
        test_user_remove();
}

static void test_a_stuck_client_holds_up_only_its_own_user(void)
{
    if (geteuid() != 0) {
        printf("  skipped: needs root for a second user\n");
        return;
    }
    uid_t uid;
    gid_t gid;
    int created;
    CHECK_INT(test_user(&uid, &gid, &created), 0);
    CHECK(chmod(check_tmpdir(), 0755) == 0);
    char dir[1024];
    snprintf(dir, sizeof dir, "%.900s/theirs", check_tmpdir());
    CHECK(mkdir(dir, 0755) == 0);
    CHECK(chown(dir, uid, gid) == 0);
    open_engine_with(check_path("state"), 8, 0);
    /* Root: five jobs, one client that takes events and never answers. */
    dopa_id mine[5];
    for (int i = 0; i < 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "mine%d", i);
        mine[i] = started_job(0, name, check_path(name));
        CHECK_INT(reg(0, &mine[i], client_a), DOPA_OK);
        CHECK_INT(op(0, PROTO_RESUME, &mine[i]), DOPA_OK);
    }
    for (int i = 0; i < 5; i++)
        run_until(&mine[i], DOPA_STATE_TRANSFERRED, 20);
    step(3);
    proto_event held[PROTO_EVENT_PAGE];
    CHECK_INT(poll_events(0, client_a, held, PROTO_EVENT_PAGE), 4); /* the fifth waits */
    /* The other user's notification goes through meanwhile. */
    char dest[1100];
    snprintf(dest, sizeof dest, "%s/file", dir);
    dopa_id theirs = started_job(uid, "theirs", dest);
    CHECK_INT(reg(uid, &theirs, client_b), DOPA_OK);
    CHECK_INT(op(uid, PROTO_RESUME, &theirs), DOPA_OK);
    run_until(&theirs, DOPA_STATE_TRANSFERRED, 20);
    uint64_t ev = await_event(uid, client_b, CB_JOB_TRANSFERRED, &theirs, 5);
    CHECK(ev != 0);
    CHECK_INT(answer(uid, client_b, ev, 1), DOPA_OK);
    /* A client of another user cannot answer for root's. */
    CHECK_INT(answer(uid, client_a, held[0].id, 1), DOPA_ENOTFOUND);
    /* One answered: the fifth comes. */
    CHECK_INT(answer(0, client_a, held[0].id, 1), DOPA_OK);
    step(3);
    proto_event now[PROTO_EVENT_PAGE];
    CHECK_INT(poll_events(0, client_a, now, PROTO_EVENT_PAGE), 4);
    int fifth = 0;
    for (int i = 0; i < 4; i++)
        fifth += find_event(held, 4, CB_JOB_TRANSFERRED, &now[i].job) == NULL;
    CHECK_INT(fifth, 1);
    close_engine();
    if (created)
        test_user_remove();
}

static void test_a_client_that_goes_away_gives_its_events_back(void)
{
    open_engine();
    dopa_id id = started_job(0, "orphan", check_path("orphan"));
    CHECK_INT(reg(0, &id, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 20);
    CHECK(await_event(0, client_a, CB_JOB_TRANSFERRED, &id, 5) != 0);
    /* Silent for a minute while it holds an event: its callback may be
     * long at work, so it is kept... */
    skew_ms += 61000;
    step(2);
    proto_request *r = request(PROTO_EVENTS, NULL);
    memcpy(r->client, client_a, 16);
    int64_t polled = skew_ms;
    CHECK_INT(handle(0, r), DOPA_OK);
    /* ...but not beyond the time an answer may take (5 minutes). */
    skew_ms = polled + 301000;
    step(2);
    r = request(PROTO_EVENTS, NULL);
    memcpy(r->client, client_a, 16);
    CHECK_INT(handle(0, r), DOPA_ENOTFOUND);
    /* ...and the next one to register gets the event. */
    CHECK_INT(reg(0, &id, client_b), DOPA_OK);
    uint64_t ev = await_event(0, client_b, CB_JOB_TRANSFERRED, &id, 5);
    CHECK(ev != 0);
    CHECK_INT(answer(0, client_b, ev, 1), DOPA_OK);
    close_engine();
}

/* ------------------------------------------------------------------ */
/* Validation                                                         */

static int set_validation(uint32_t uid, const dopa_id *id, uint64_t file, uint64_t valid)
{
    proto_request *r = request(PROTO_SET_VALIDATION, id);
    r->start = file;
    r->valid = valid;
    return handle(uid, r);
}

static dopa_file_info file_info(const dopa_id *id, uint64_t index)
{
    proto_request *r = request(PROTO_LIST_FILES, id);
    r->start = index;
    CHECK_INT(handle(0, r), DOPA_OK);
    CHECK(reply.n_files > 0);
    return reply.files[0];
}

/* Runs the job until its file waits for a verdict; checks FileTransferred
 * reached the client. */
static void until_pending(const dopa_id *id)
{
    double end = check_now() + 20;
    while (file_info(id, 0).validation != DOPA_VALIDATION_PENDING) {
        CHECK(check_now() < end);
        step(1);
    }
    CHECK_INT(info(id).state, DOPA_STATE_TRANSFERRING);
    uint64_t ev = await_event(0, client_a, CB_FILE_TRANSFERRED, id, 5);
    CHECK(ev != 0);
    CHECK_INT(answer(0, client_a, ev, 1), DOPA_OK);
}

static void test_an_origin_file_the_client_rejects_fails_the_job(void)
{
    open_engine();
    char u[256];
    url(u, sizeof u, "/data/a.bin");
    dopa_id id = create(0, "judged");
    CHECK_INT(add_file(&id, u, check_path("judged")), DOPA_OK);
    CHECK_INT(set_flags(&id, DOPA_NOTIFY_DEFAULT | DOPA_NOTIFY_FILE_TRANSFERRED), DOPA_OK);
    CHECK_INT(reg(0, &id, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    until_pending(&id);
    /* The temporary file holds the content to judge. */
    dopa_file_info f = file_info(&id, 0);
    check_content(f.temporary_name, 1, 0, SIZE_A);
    CHECK_INT(set_validation(0, &id, 0, 0), DOPA_OK);
    dopa_job_info j = info(&id);
    CHECK_INT(j.state, DOPA_STATE_ERROR);
    CHECK_INT(j.error.context, DOPA_CONTEXT_VALIDATION);
    CHECK_INT(j.error.code, DOPA_EVALIDATION);
    CHECK_INT(j.error.file, 0);
    CHECK_INT(j.bytes_transferred, 0);
    CHECK_INT(file_info(&id, 0).validation, DOPA_VALIDATION_INVALID);
    struct stat st;
    CHECK(stat(f.temporary_name, &st) == 0);
    CHECK_INT(st.st_size, 0); /* nothing of the rejected content stays */
    CHECK(await_event(0, client_a, CB_JOB_ERROR, &id, 5) != 0);
    CHECK_INT(set_validation(0, &id, 0, 1), DOPA_ESTATE); /* nothing waits now */

    /* Resumed, it is fetched and judged again. */
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    until_pending(&id);
    CHECK_INT(set_validation(0, &id, 0, 1), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 10);
    CHECK_INT(file_info(&id, 0).validation, DOPA_VALIDATION_VALID);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("judged"), 1, 0, SIZE_A);
    close_engine();
}

static void test_a_peer_file_the_client_rejects_is_fetched_again_from_the_origin(void)
{
    open_engine();
    CHECK(test_nginx_put(&web, "data/p.bin", 300000, 21) == 0);
    long long before = test_nginx_bytes_sent(&web, "/data/p.bin");
    char u[256];
    url(u, sizeof u, "/data/p.bin");
    dopa_id id = create(0, "peered");
    CHECK_INT(add_file(&id, u, check_path("peered")), DOPA_OK);
    CHECK_INT(set_flags(&id, DOPA_NOTIFY_FILE_TRANSFERRED), DOPA_OK);
    CHECK_INT(reg(0, &id, client_a), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
    until_pending(&id);
    /* As if peers had sent part of it. */
    agent_file *f = engine_find(E, &id)->files[0];
    f->from_peers = 100000;
    f->from_origin -= 100000;
    CHECK_INT(set_validation(0, &id, 0, 0), DOPA_OK);
    dopa_job_info j = info(&id);
    CHECK(j.state != DOPA_STATE_ERROR);
    CHECK_INT(j.has_error, 0);
    CHECK(f->origin_only);
    /* Fetched again, from the origin alone, and judged again. */
    until_pending(&id);
    CHECK_INT(file_info(&id, 0).bytes_from_peers, 0);
    CHECK_INT(file_info(&id, 0).bytes_from_origin, 300000);
    CHECK_INT(set_validation(0, &id, 0, 1), DOPA_OK);
    run_until(&id, DOPA_STATE_TRANSFERRED, 10);
    CHECK_INT(op(0, PROTO_COMPLETE, &id), DOPA_OK);
    check_content(check_path("peered"), 21, 0, 300000);
    close_engine();
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    /* Twice the file, and the first time's probe of its size. */
    long long sent = test_nginx_bytes_sent(&web, "/data/p.bin") - before;
    CHECK(sent >= 2 * 300000 && sent <= 2 * 300000 + 1);
}

static void test_no_verdict_in_time_takes_the_default(void)
{
    open_engine();
    for (int valid = 0; valid <= 1; valid++) {
        char name[32];
        snprintf(name, sizeof name, "default%d", valid);
        dopa_id id = started_job(0, name, check_path(name));
        CHECK_INT(set_flags(&id, DOPA_NOTIFY_FILE_TRANSFERRED), DOPA_OK);
        proto_request *r = request(PROTO_SET_VALIDATION_POLICY, &id);
        r->seconds = 30;
        r->valid = (uint64_t)valid;
        CHECK_INT(handle(0, r), DOPA_OK);
        CHECK_INT(info(&id).validation_timeout, 30);
        CHECK_INT(info(&id).validation_default_valid, valid);
        CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
        double end = check_now() + 20;
        while (file_info(&id, 0).validation != DOPA_VALIDATION_PENDING && check_now() < end)
            step(1);
        skew_ms += 29000;
        step(2);
        CHECK_INT(file_info(&id, 0).validation, DOPA_VALIDATION_PENDING);
        skew_ms += 1500;
        step(2);
        CHECK_INT(info(&id).state, valid ? DOPA_STATE_TRANSFERRED : DOPA_STATE_ERROR);
    }
    close_engine();
}

static void test_files_awaiting_verdicts_take_no_running_slot(void)
{
    open_engine_with(check_path("state"), 1, 0);
    /* Nobody ever answers for this one... */
    dopa_id judged = started_job(0, "judged", check_path("judged"));
    CHECK_INT(set_flags(&judged, DOPA_NOTIFY_FILE_TRANSFERRED), DOPA_OK);
    CHECK_INT(op(0, PROTO_RESUME, &judged), DOPA_OK);
    double end = check_now() + 20;
    while (file_info(&judged, 0).validation != DOPA_VALIDATION_PENDING && check_now() < end)
        step(1);
    /* ...and with one running slot, another job still goes through. */
    dopa_id next = started_job(0, "next", check_path("next"));
    CHECK_INT(op(0, PROTO_RESUME, &next), DOPA_OK);
    run_until(&next, DOPA_STATE_TRANSFERRED, 20);
    CHECK_INT(info(&judged).state, DOPA_STATE_TRANSFERRING);
    /* Rejected while suspended: the bytes go all the same. */
    CHECK_INT(op(0, PROTO_SUSPEND, &judged), DOPA_OK);
    const char *tmp = temp_of(&judged, 0, check_path("judged"));
    struct stat st;
    CHECK(stat(tmp, &st) == 0 && st.st_size == 100000);
    CHECK_INT(set_validation(0, &judged, 0, 0), DOPA_OK);
    CHECK(stat(tmp, &st) == 0);
    CHECK_INT(st.st_size, 0);
    CHECK_INT(info(&judged).state, DOPA_STATE_ERROR);
    close_engine();
}

static void test_taking_ownership_drops_the_notify_settings(void)
{
    open_engine();
    dopa_id id = create(1000, "theirs");
    const char *argv[] = {"/bin/sh", "-c", "id > /tmp/owned", NULL};
    CHECK_INT(set_cmdline(1000, &id, argv), DOPA_OK);
    CHECK_INT(reg(1000, &id, client_b), DOPA_OK);
    CHECK_INT(op(0, PROTO_TAKE_OWNERSHIP, &id), DOPA_OK);
    /* Root's job runs nothing of the old owner's, as root. */
    CHECK_INT(handle(0, request(PROTO_GET_NOTIFY, &id)), DOPA_OK);
    CHECK_INT(reply.n_args, 0);
    CHECK(engine_find(E, &id)->client == NULL);
    close_engine();
}

static void test_validation_requests_are_checked(void)
{
    open_engine();
    dopa_id id = started_job(0, "checked", check_path("checked"));
    CHECK_INT(set_validation(0, &id, 0, 1), DOPA_ESTATE); /* nothing waits */
    CHECK_INT(set_validation(0, &id, 1, 1), DOPA_EINVAL); /* no such file */
    CHECK_INT(set_validation(0, &id, 0, 2), DOPA_EINVAL);
    CHECK_INT(set_validation(1001, &id, 0, 1), DOPA_ENOTFOUND); /* not theirs */
    proto_request *r = request(PROTO_SET_VALIDATION_POLICY, &id);
    r->seconds = 0;
    r->valid = 1;
    CHECK_INT(handle(0, r), DOPA_EINVAL);
    CHECK_INT(info(&id).validation_default_valid, 0); /* refused: nothing changed */
    CHECK_INT(info(&id).validation_timeout, DOPA_DEFAULT_VALIDATION_TIMEOUT);
    CHECK_INT(reg(1001, &id, client_b), DOPA_ENOTFOUND);
    r = request(PROTO_SET_NOTIFY_FLAGS, &id);
    r->flags = DOPA_NOTIFY_ALL;
    CHECK_INT(handle(1001, r), DOPA_ENOTFOUND);
    close_engine();
}

static void test_validator_plugins_judge_the_file(void)
{
    /* Each plugin in a directory of its own. */
    const char *names[] = {"accept_all", "says_invalid"};
    for (int i = 0; i < 2; i++) {
        char dir[1024], src[1024], dst[1200];
        snprintf(dir, sizeof dir, "%.900s/plugins-%s", check_tmpdir(), names[i]);
        CHECK(mkdir(dir, 0755) == 0);
        snprintf(src, sizeof src, "%s/%s.so", PLUGIN_DIR, names[i]);
        snprintf(dst, sizeof dst, "%s/%s.so", dir, names[i]);
        CHECK(link(src, dst) == 0 || symlink(src, dst) == 0);
        plugin_dir = dir;
        open_engine();
        dopa_id id = started_job(0, names[i], check_path(names[i]));
        CHECK_INT(op(0, PROTO_RESUME, &id), DOPA_OK);
        dopa_job_info j = run_until(&id, i == 0 ? DOPA_STATE_TRANSFERRED : DOPA_STATE_ERROR, 20);
        if (i == 1) {
            CHECK_INT(j.error.context, DOPA_CONTEXT_VALIDATION);
            CHECK_INT(j.error.code, VALIDATE_EPLUGIN_REJECTED);
            CHECK_INT(j.bytes_transferred, 0);
        }
        close_engine();
    }
}

/* ------------------------------------------------------------------ */

static void teardown(void)
{
    test_nginx_stop(&web);
    validate_secret_key_free(publisher);
}

static int setup(void)
{
    if ((fixture = test_scratch_dir("engine")) == NULL)
        return -1;
    atexit(teardown);
    test_nginx_config cfg = {
        .server = "location /slow/ { limit_rate 2m; }"
                  "location /flaky/ { try_files $uri =503; }"
                  "location = /busy { add_header Retry-After 120 always; return 503; }",
    };
    if (test_nginx_start(&web, fixture, &cfg) != 0)
        return -1;
    char dir[1024];
    const char *subdirs[] = {"data", "slow", "flaky"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(dir, sizeof dir, "%s/%s", web.root, subdirs[i]);
        mkdir(dir, 0755);
    }
    if (validate_secret_key_generate(&publisher) != VALIDATE_OK)
        return -1;
    return test_nginx_put(&web, "data/a.bin", SIZE_A, 1) == 0 &&
                   test_nginx_put(&web, "data/b.bin", 100000, 2) == 0 &&
                   test_nginx_put(&web, "slow/s.bin", 20 * 1024 * 1024, 3) == 0
               ? 0
               : -1;
}

/* A failure keeps the code of the module that met it, through every layer,
 * and says what failed: on the caller's record when there is no handle
 * yet, on the engine's when there is. */
static void test_errors_keep_their_module_code_and_say_what_failed(void)
{
    uint8_t group[PEER_GROUP_KEY_BYTES];
    peer_group_key_generate(group);
    peer_node_config peer = {.group_key = group, .listen = "bogus://127.0.0.1:1"};
    engine_config cfg = {.state_dir = check_path("state"),
                         .clock = &fake_clock,
                         .origin = origin_config_default(),
                         .peer = &peer};
    validate_error why = {0};
    CHECK_INT(engine_open(&cfg, &E, &why), PEER_EADDRESS); /* not flattened to DOPA_EINVAL */
    CHECK(E == NULL);
    CHECK_INT(why.code, PEER_EADDRESS);
    CHECK_HAS(why.text, "bogus://127.0.0.1:1");

    char dir[4200];
    check_write_text(check_path("a-file"), "not a directory");
    snprintf(dir, sizeof dir, "%s/state", check_path("a-file"));
    engine_config plain = {
        .state_dir = dir, .clock = &fake_clock, .origin = origin_config_default()};
    why = (validate_error){0};
    CHECK_INT(engine_open(&plain, &E, &why), DOPA_EIO);
    CHECK_INT(why.code, DOPA_EIO);
    CHECK_HAS(why.text, dir);

    peer.listen = "tcp://127.0.0.1:0";
    why = (validate_error){0};
    CHECK_INT(engine_open(&cfg, &E, &why), DOPA_OK);
    CHECK(E != NULL);
    CHECK_INT(engine_error(E)->code, 0);
    const char *bad[] = {"udp://127.0.0.1:9"};
    peer_node_config next = peer;
    next.peers = bad;
    next.n_peers = 1;
    engine_config changed = cfg;
    changed.peer = &next;
    CHECK_INT(engine_reconfigure(E, &changed), PEER_EADDRESS);
    CHECK_INT(engine_error(E)->code, PEER_EADDRESS);
    CHECK_HAS(engine_error(E)->text, "udp://127.0.0.1:9");
    CHECK_INT(engine_reconfigure(E, &cfg), DOPA_OK);
    CHECK_INT(engine_error(E)->code, 0);
    close_engine();
}

int main(int argc, char **argv)
{
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    check_cleanup = after_case;
    int rc =
        check_run(argc, argv,
                  (struct check_case[]){
                      CASE(test_new_job_waits_suspended_for_files_and_resume),
                      CASE(test_complete_makes_the_file_appear),
                      CASE(test_several_files_and_ranges),
                      CASE(test_cancel_removes_the_temporary_files),
                      CASE(test_complete_before_transferred_is_partial),
                      CASE(test_suspend_and_resume_from_every_state),
                      CASE(test_transient_errors_retry_after_the_minimum_delay),
                      CASE(test_no_progress_timeout_makes_the_error_final),
                      CASE(test_inactive_jobs_are_cancelled),
                      CASE(test_higher_priority_runs_first),
                      CASE(test_expected_sha256_is_checked_at_the_end),
                      CASE(test_manifests_check_every_piece),
                      CASE(test_restart_resumes_with_the_pieces_it_had),
                      CASE(test_owners_see_only_their_jobs),
                      CASE(test_wait_answers_on_change_or_timeout),
                      CASE(test_add_file_refuses_bad_requests),
                      CASE(test_planted_links_are_not_followed),
                      CASE(test_a_file_changed_on_the_server_is_fetched_anew),
                      CASE(test_cancel_while_pieces_wait_stays_cancelled),
                      CASE(test_whole_file_check_is_void_after_suspend_or_cancel),
                      CASE(test_complete_can_be_repeated_after_a_crash),
                      CASE(test_a_swapped_directory_is_not_written),
                      CASE(test_retry_after_is_honoured),
                      CASE(test_no_progress_time_survives_a_restart),
                      CASE(test_long_paths_and_local_sources_are_refused),
                      CASE(test_events_reach_the_registered_client_once),
                      CASE(test_a_failed_transferred_comes_again_with_a_growing_interval),
                      CASE(test_unanswered_events_survive_a_restart),
                      CASE(test_the_command_runs_as_the_owner_without_a_client),
                      CASE(test_a_stuck_client_holds_up_only_its_own_user),
                      CASE(test_a_client_that_goes_away_gives_its_events_back),
                      CASE(test_an_origin_file_the_client_rejects_fails_the_job),
                      CASE(test_a_peer_file_the_client_rejects_is_fetched_again_from_the_origin),
                      CASE(test_no_verdict_in_time_takes_the_default),
                      CASE(test_validation_requests_are_checked),
                      CASE(test_files_awaiting_verdicts_take_no_running_slot),
                      CASE(test_taking_ownership_drops_the_notify_settings),
                      CASE(test_validator_plugins_judge_the_file),
                      CASE(test_errors_keep_their_module_code_and_say_what_failed),
                      {0},
                  });
    proto_reply_clear(&reply);
    return rc;
}

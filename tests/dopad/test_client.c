/*
 * libdopa's ABI (dopa.h) against the real dopad: the version it says, the
 * opaque job and file information read through accessors (and what they
 * say given NULL), the lists handed out as one allocation ended by NULL,
 * and the open structs read and filled only as far as their size says.
 * A file:// source stands in for an origin. DOPAD names the daemon,
 * PROJECT_VERSION the version the build says.
 */
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../check.h"
#include "../support/daemon.h"
#include "dopa.h"

static test_dopad daemon_ = {.pid = -1};
static dopa_manager *mgr;

static void start(void)
{
    CHECK_INT(test_dopad_start(&daemon_, DOPAD, check_tmpdir(), NULL), 0);
    CHECK_INT(dopa_connect(daemon_.sock, &mgr), DOPA_OK);
}

static void after_case(void)
{
    dopa_disconnect(mgr);
    mgr = NULL;
    if (daemon_.pid > 0)
        test_dopad_stop(&daemon_, SIGTERM);
}

/* A job of one file: `name` under the case's directory, of `bytes` bytes,
 * fetched from a file:// source to name.out. */
static dopa_id job_of(const char *name, size_t bytes)
{
    char source[4200], url[4300], out[4200];
    snprintf(source, sizeof source, "%.4000s/%s", check_tmpdir(), name);
    snprintf(out, sizeof out, "%.4000s/%s.out", check_tmpdir(), name);
    snprintf(url, sizeof url, "file://%s", source);
    FILE *f = fopen(source, "w");
    CHECK(f != NULL);
    for (size_t i = 0; i < bytes; i++)
        fputc('a' + (int)(i % 26), f);
    CHECK_INT(fclose(f), 0);
    dopa_id id;
    CHECK_INT(dopa_job_create(mgr, name, DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &id, url, out, NULL), DOPA_OK);
    return id;
}

static void test_the_library_says_the_version_of_its_header(void)
{
    char header[64];
    snprintf(header, sizeof header, "%d.%d.%d", DOPA_VERSION_MAJOR, DOPA_VERSION_MINOR,
             DOPA_VERSION_PATCH);
    CHECK_STR(dopa_version(), header);
    CHECK_STR(dopa_version(), PROJECT_VERSION);
}

static void test_accessors_given_null_say_nothing_and_do_not_crash(void)
{
    static const dopa_id zero;
    CHECK(memcmp(dopa_job_info_id(NULL), &zero, sizeof zero) == 0);
    CHECK_INT(dopa_job_info_state(NULL), -1);
    CHECK_INT(dopa_job_info_type(NULL), -1);
    CHECK_INT(dopa_job_info_priority(NULL), -1);
    CHECK_INT(dopa_job_info_proxy_usage(NULL), -1);
    CHECK_INT(dopa_job_info_error_file(NULL), -1);
    CHECK_INT(dopa_job_info_error_context(NULL), DOPA_CONTEXT_NONE);
    CHECK_STR(dopa_job_info_display_name(NULL), "");
    CHECK_STR(dopa_job_info_description(NULL), "");
    CHECK_STR(dopa_job_info_error_message(NULL), "");
    CHECK_INT(dopa_job_info_owner(NULL), 0);
    CHECK_INT(dopa_job_info_bytes_total(NULL), 0);
    CHECK_INT(dopa_job_info_bytes_transferred(NULL), 0);
    CHECK_INT(dopa_job_info_files_total(NULL), 0);
    CHECK_INT(dopa_job_info_files_transferred(NULL), 0);
    CHECK_INT(dopa_job_info_bytes_from_origin(NULL), 0);
    CHECK_INT(dopa_job_info_bytes_from_peers(NULL), 0);
    CHECK_INT(dopa_job_info_bytes_from_cache(NULL), 0);
    CHECK_INT(dopa_job_info_bytes_uploaded(NULL), 0);
    CHECK_INT(dopa_job_info_created(NULL), 0);
    CHECK_INT(dopa_job_info_modified(NULL), 0);
    CHECK_INT(dopa_job_info_transfer_completed(NULL), 0);
    CHECK_INT(dopa_job_info_error_count(NULL), 0);
    CHECK_INT(dopa_job_info_has_error(NULL), 0);
    CHECK_INT(dopa_job_info_error_code(NULL), 0);
    CHECK_INT(dopa_job_info_error_http_status(NULL), 0);
    CHECK_INT(dopa_job_info_minimum_retry_delay(NULL), 0);
    CHECK_INT(dopa_job_info_no_progress_timeout(NULL), 0);
    CHECK_INT(dopa_job_info_version(NULL), 0);
    CHECK_INT(dopa_job_info_notify_flags(NULL), 0);
    CHECK_INT(dopa_job_info_validation_timeout(NULL), 0);
    CHECK_INT(dopa_job_info_validation_default_valid(NULL), 0);
    CHECK_STR(dopa_file_info_remote_url(NULL), "");
    CHECK_STR(dopa_file_info_local_name(NULL), "");
    CHECK_STR(dopa_file_info_temporary_name(NULL), "");
    CHECK_INT(dopa_file_info_bytes_total(NULL), 0);
    CHECK_INT(dopa_file_info_bytes_transferred(NULL), 0);
    CHECK_INT(dopa_file_info_bytes_from_origin(NULL), 0);
    CHECK_INT(dopa_file_info_bytes_from_peers(NULL), 0);
    CHECK_INT(dopa_file_info_bytes_from_cache(NULL), 0);
    CHECK_INT(dopa_file_info_ranges(NULL), 0);
    CHECK_INT(dopa_file_info_is_transferred(NULL), 0);
    CHECK_INT(dopa_file_info_has_manifest(NULL), 0);
    CHECK_INT(dopa_file_info_has_sha256(NULL), 0);
    CHECK_INT(dopa_file_info_validation(NULL), DOPA_VALIDATION_NONE);
    dopa_free(NULL);
}

static void test_the_accessors_read_what_the_job_was_given(void)
{
    start();
    dopa_id id = job_of("settings.bin", 1000);
    CHECK_INT(dopa_job_set_description(mgr, &id, "read back"), DOPA_OK);
    CHECK_INT(dopa_job_set_priority(mgr, &id, DOPA_PRIORITY_LOW), DOPA_OK);
    CHECK_INT(dopa_job_set_minimum_retry_delay(mgr, &id, 61), DOPA_OK);
    CHECK_INT(dopa_job_set_no_progress_timeout(mgr, &id, 3601), DOPA_OK);
    CHECK_INT(dopa_job_set_proxy(mgr, &id, DOPA_PROXY_NONE, NULL, NULL), DOPA_OK);
    CHECK_INT(dopa_job_set_notify_flags(mgr, &id, DOPA_NOTIFY_JOB_ERROR), DOPA_OK);
    CHECK_INT(dopa_job_set_validation_policy(mgr, &id, 42, 1), DOPA_OK);
    dopa_job_info *j = NULL;
    CHECK_INT(dopa_job_get(mgr, &id, &j), DOPA_OK);
    CHECK(j != NULL);
    CHECK(memcmp(dopa_job_info_id(j), &id, sizeof id) == 0);
    CHECK_INT(dopa_job_info_type(j), DOPA_JOB_DOWNLOAD);
    CHECK_INT(dopa_job_info_owner(j), getuid());
    CHECK_INT(dopa_job_info_state(j), DOPA_STATE_SUSPENDED);
    CHECK_INT(dopa_job_info_priority(j), DOPA_PRIORITY_LOW);
    CHECK_STR(dopa_job_info_display_name(j), "settings.bin");
    CHECK_STR(dopa_job_info_description(j), "read back");
    CHECK_INT(dopa_job_info_files_total(j), 1);
    CHECK_INT(dopa_job_info_files_transferred(j), 0);
    CHECK_INT(dopa_job_info_minimum_retry_delay(j), 61);
    CHECK_INT(dopa_job_info_no_progress_timeout(j), 3601);
    CHECK_INT(dopa_job_info_proxy_usage(j), DOPA_PROXY_NONE);
    CHECK_INT(dopa_job_info_notify_flags(j), DOPA_NOTIFY_JOB_ERROR);
    CHECK_INT(dopa_job_info_validation_timeout(j), 42);
    CHECK_INT(dopa_job_info_validation_default_valid(j), 1);
    CHECK_INT(dopa_job_info_has_error(j), 0);
    CHECK(dopa_job_info_created(j) > 0);
    CHECK(dopa_job_info_modified(j) >= dopa_job_info_created(j));
    CHECK_INT(dopa_job_info_transfer_completed(j), 0);
    uint64_t seen = dopa_job_info_version(j);
    dopa_free(j);

    /* It transfers; dopa_job_wait hands out the new state as a new object. */
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    double end = check_now() + 30;
    for (;;) {
        CHECK_INT(dopa_job_wait(mgr, &id, seen, 5000, &j), DOPA_OK);
        seen = dopa_job_info_version(j);
        int state = dopa_job_info_state(j);
        if (state == DOPA_STATE_TRANSFERRED)
            break;
        dopa_free(j);
        CHECK(state != DOPA_STATE_ERROR && check_now() < end);
    }
    CHECK_INT(dopa_job_info_bytes_total(j), 1000);
    CHECK_INT(dopa_job_info_bytes_transferred(j), 1000);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), 1000);
    CHECK_INT(dopa_job_info_bytes_from_peers(j) + dopa_job_info_bytes_from_cache(j), 0);
    CHECK_INT(dopa_job_info_files_transferred(j), 1);
    CHECK(dopa_job_info_transfer_completed(j) > 0);
    dopa_free(j);

    dopa_file_info **files = NULL;
    size_t n = 0;
    CHECK_INT(dopa_job_list_files(mgr, &id, &files, &n), DOPA_OK);
    CHECK_INT(n, 1);
    CHECK(files[1] == NULL);
    CHECK_HAS(dopa_file_info_remote_url(files[0]), "file://");
    CHECK_HAS(dopa_file_info_local_name(files[0]), "settings.bin.out");
    CHECK(dopa_file_info_temporary_name(files[0])[0] == '/');
    CHECK_INT(dopa_file_info_bytes_total(files[0]), 1000);
    CHECK_INT(dopa_file_info_bytes_transferred(files[0]), 1000);
    CHECK_INT(dopa_file_info_bytes_from_origin(files[0]), 1000);
    CHECK_INT(dopa_file_info_ranges(files[0]), 0);
    CHECK_INT(dopa_file_info_is_transferred(files[0]), 1);
    CHECK_INT(dopa_file_info_has_manifest(files[0]), 0);
    CHECK_INT(dopa_file_info_has_sha256(files[0]), 0);
    dopa_free(files);
    CHECK_INT(dopa_job_complete(mgr, &id, NULL), DOPA_OK);
}

static void test_an_error_is_read_through_the_accessors(void)
{
    start();
    dopa_id id;
    CHECK_INT(dopa_job_create(mgr, "missing", DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(mgr, &id, "file:///nonexistent/dopa-test-source",
                                check_path("missing.out"), NULL),
              DOPA_OK);
    CHECK_INT(dopa_job_resume(mgr, &id), DOPA_OK);
    dopa_job_info *j = NULL;
    double end = check_now() + 30;
    for (;;) {
        CHECK_INT(dopa_job_get(mgr, &id, &j), DOPA_OK);
        if (dopa_job_info_state(j) == DOPA_STATE_ERROR)
            break;
        dopa_free(j);
        CHECK(check_now() < end);
        check_sleep_ms(20);
    }
    CHECK_INT(dopa_job_info_has_error(j), 1);
    CHECK_INT(dopa_job_info_error_context(j), DOPA_CONTEXT_REMOTE_FILE);
    CHECK_INT(dopa_job_info_error_file(j), 0);
    CHECK(dopa_job_info_error_code(j) != 0);
    CHECK_INT(dopa_job_info_error_http_status(j), 0);
    CHECK_HAS(dopa_job_info_error_message(j), "file://");
    dopa_free(j);
}

static void test_lists_are_one_allocation_ended_by_null(void)
{
    start();
    dopa_job_info **jobs = NULL;
    size_t n = 99;
    CHECK_INT(dopa_job_list(mgr, 0, &jobs, &n), DOPA_OK);
    CHECK_INT(n, 0);
    CHECK(jobs != NULL && jobs[0] == NULL);
    dopa_free(jobs);
    dopa_id ids[3];
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "listed%d", i);
        ids[i] = job_of(name, 10);
    }
    CHECK_INT(dopa_job_list(mgr, 0, &jobs, &n), DOPA_OK);
    CHECK_INT(n, 3);
    CHECK(jobs[3] == NULL);
    for (size_t i = 0; i < n; i++) { /* oldest first */
        CHECK(memcmp(dopa_job_info_id(jobs[i]), &ids[i], sizeof ids[i]) == 0);
        CHECK_INT(dopa_job_info_files_total(jobs[i]), 1);
    }
    dopa_free(jobs); /* the entries with it: a leak check would see them */
}

static void test_bad_arguments_are_refused_with_nothing_to_free(void)
{
    start();
    dopa_id id = job_of("bad.bin", 10);
    static int stale; /* what the out-parameters hold before: they are cleared */
    dopa_job_info *j = (void *)&stale;
    CHECK_INT(dopa_job_get(mgr, NULL, &j), DOPA_EINVAL);
    CHECK(j == NULL);
    CHECK_INT(dopa_job_get(mgr, &id, NULL), DOPA_EINVAL);
    CHECK_INT(dopa_job_wait(mgr, &id, 0, 0, NULL), DOPA_EINVAL);
    dopa_job_info **jobs = (void *)&stale;
    size_t n;
    CHECK_INT(dopa_job_list(mgr, 0, &jobs, NULL), DOPA_EINVAL);
    CHECK(jobs == NULL);
    CHECK_INT(dopa_job_list(mgr, 0, NULL, &n), DOPA_EINVAL);
    dopa_file_info **files = (void *)&stale;
    CHECK_INT(dopa_job_list_files(mgr, NULL, &files, &n), DOPA_EINVAL);
    CHECK(files == NULL);
    dopa_id unknown = {{1, 2, 3}};
    CHECK_INT(dopa_job_get(mgr, &unknown, &j), DOPA_ENOTFOUND);
    CHECK(j == NULL);
    char **argv = (void *)&stale;
    CHECK_INT(dopa_job_get_notify(mgr, &unknown, NULL, &argv), DOPA_ENOTFOUND);
    CHECK(argv == NULL);
}

/* A program built against a later dopa.h passes larger structs; one built
 * against this one, these. Too small a size is refused before dopad is
 * asked. */
static void test_open_structs_are_used_as_far_as_their_size_says(void)
{
    start();
    struct {
        dopa_agent_stats stats;
        uint64_t later; /* a member this library does not know */
    } newer = {.stats.size = sizeof newer, .later = 42};
    CHECK_INT(dopa_agent_stats_get(mgr, &newer.stats), DOPA_OK);
    CHECK_INT(newer.stats.size, sizeof newer); /* the caller's, kept */
    CHECK_INT(newer.later, 42);                /* not the library's to fill */
    dopa_agent_stats stats = DOPA_AGENT_STATS_INIT;
    CHECK_INT(dopa_agent_stats_get(mgr, &stats), DOPA_OK);
    CHECK_INT(stats.size, sizeof stats);
    CHECK_INT(stats.jobs, newer.stats.jobs);
    dopa_agent_stats unset = {0};
    CHECK_INT(dopa_agent_stats_get(mgr, &unset), DOPA_EINVAL);
    unset.size = offsetof(dopa_agent_stats, peer_url); /* short of a member */
    CHECK_INT(dopa_agent_stats_get(mgr, &unset), DOPA_EINVAL);
    CHECK_INT(unset.jobs, 0);
    CHECK_INT(dopa_agent_stats_get(mgr, NULL), DOPA_EINVAL);

    dopa_id id = job_of("sized.bin", 10);
    char url[4300];
    snprintf(url, sizeof url, "file://%s/sized.bin", check_tmpdir());
    uint8_t sha[32] = {0};
    dopa_file_options none = {.expected_sha256 = sha};
    CHECK_INT(dopa_job_add_file(mgr, &id, url, check_path("two.out"), &none), DOPA_EINVAL);
    struct {
        dopa_file_options options;
        uint64_t later;
    } larger = {.options = {.size = sizeof larger}, .later = 7};
    CHECK_INT(dopa_job_add_file(mgr, &id, url, check_path("two.out"), &larger.options), DOPA_OK);

    dopa_callbacks unsized = {0};
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, &unsized), DOPA_EINVAL);
    struct {
        dopa_callbacks callbacks;
        void (*later)(void);
    } more = {.callbacks = {.size = sizeof more}};
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, &more.callbacks), DOPA_OK);
    dopa_callbacks cb = DOPA_CALLBACKS_INIT;
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, &cb), DOPA_OK);
    CHECK_INT(dopa_job_set_callbacks(mgr, &id, NULL), DOPA_OK);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_the_library_says_the_version_of_its_header),
                         CASE(test_accessors_given_null_say_nothing_and_do_not_crash),
                         CASE(test_the_accessors_read_what_the_job_was_given),
                         CASE(test_an_error_is_read_through_the_accessors),
                         CASE(test_lists_are_one_allocation_ended_by_null),
                         CASE(test_bad_arguments_are_refused_with_nothing_to_free),
                         CASE(test_open_structs_are_used_as_far_as_their_size_says),
                         {0},
                     });
}

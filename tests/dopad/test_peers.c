/*
 * Peers end to end on loopback, no root needed: several real dopad agents
 * with one group key and each other as configured peers, nginx as the
 * origin (a little throttled, like a distant one). The swarm tests in
 * network namespaces (tests/swarm) add discovery and hostile peers; these
 * run everywhere. DOPAD names what the build made.
 */
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "dopa.h"
#include "peer.h"
#include "validate.h"

#define AGENTS     5
#define SIZE_BIG   (24 * 1024 * 1024 + 4321)
#define SIZE_SMALL (3 * 1024 * 1024 + 5)

static test_nginx web;
static const char *fixture;
static char group_key[600], other_key[600], pub_key[800];
static uint8_t *manifest_big, *manifest_small;
static size_t manifest_big_len, manifest_small_len;
static uint8_t sha_small[32];
static int ports[AGENTS];
static int configured = AGENTS; /* agents named as each other's peers */
static int silent_fd = -1;      /* an origin that never answers (silent_origin) */

typedef struct agent {
    test_dopad d;
    dopa_manager *m;
} agent;
static agent agents[AGENTS];

static void show_log(int i)
{
    FILE *f = fopen(agents[i].d.log, "r");
    char line[1024];
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        fprintf(stderr, "  %d| %s", i, line);
    if (f != NULL)
        fclose(f);
}

/* Agent i with the others as peers; `key` is its group key file, `extra`
 * more [peers] settings (with "tls-" in them, over tls+tcp://). */
static void start_agent_with(int i, const char *key, const char *extra)
{
    char settings[4096];
    const char *scheme = strstr(extra, "tls-") != NULL ? "tls+tcp" : "tcp";
    int n = snprintf(settings, sizeof settings,
                     "trusted-key = %s\n[peers]\ngroup-key = %s\nlisten = %s://127.0.0.1:%d\n"
                     "beacons = no\npiece-timeout = 2\n%s",
                     pub_key, key, scheme, ports[i], extra);
    for (int k = 0; k < configured; k++)
        if (k != i)
            n += snprintf(settings + n, sizeof settings - (size_t)n, "peer = %s://127.0.0.1:%d\n",
                          scheme, ports[k]);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/agent%d", check_tmpdir(), i);
    mkdir(dir, 0700);
    if (test_dopad_start(&agents[i].d, DOPAD, dir, settings) != 0) {
        show_log(i);
        CHECK(0);
    }
    CHECK_INT(dopa_connect(agents[i].d.sock, &agents[i].m), DOPA_OK);
}

static void start_agent(int i, const char *key)
{
    start_agent_with(i, key, "");
}

static void stop_agent(int i)
{
    if (agents[i].m != NULL)
        dopa_disconnect(agents[i].m);
    agents[i].m = NULL;
    if (agents[i].d.pid > 0)
        test_dopad_stop(&agents[i].d, SIGTERM);
}

static void after_case(void)
{
    configured = AGENTS;
    if (silent_fd >= 0)
        close(silent_fd);
    silent_fd = -1;
    for (int i = 0; i < AGENTS; i++)
        stop_agent(i);
}

/* A job of agent i for `name` at the origin on `port`, with its manifest
 * (or only its SHA-256). */
static dopa_id fetch_from(int i, int port, const char *name, const char *out, int with_manifest)
{
    char u[256];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/%s", port, name);
    int big = strcmp(name, "big.bin") == 0;
    dopa_file_options o = DOPA_FILE_OPTIONS_INIT;
    if (with_manifest) {
        o.manifest = big ? manifest_big : manifest_small;
        o.manifest_len = big ? manifest_big_len : manifest_small_len;
    } else {
        o.expected_sha256 = sha_small;
    }
    dopa_id id;
    CHECK_INT(dopa_job_create(agents[i].m, out, DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(agents[i].m, &id, u, check_path(out), &o), DOPA_OK);
    return id;
}

/* The same from nginx. */
static dopa_id fetch(int i, const char *name, const char *out, int with_manifest)
{
    return fetch_from(i, web.port, name, out, with_manifest);
}

/* Waits until agent i's job is in `state`; fails after `limit` seconds.
 * Returns its information then, for dopa_free(). */
static dopa_job_info *wait_state(int i, const dopa_id *id, int state, double limit)
{
    dopa_job_info *j;
    double end = check_now() + limit;
    for (;;) {
        CHECK_INT(dopa_job_get(agents[i].m, id, &j), DOPA_OK);
        if (dopa_job_info_state(j) == state)
            return j;
        if (check_now() > end) {
            fprintf(stderr, "  agent %d: job is %s, waited for %s (%s)\n", i,
                    dopa_state_name(dopa_job_info_state(j)), dopa_state_name(state),
                    dopa_job_info_has_error(j) ? dopa_job_info_error_message(j) : "no error");
            show_log(i);
            CHECK(0);
        }
        dopa_free(j);
        check_sleep_ms(20);
    }
}

/* The file holds exactly the origin's bytes. */
static int same_as_origin(const char *path, size_t size, unsigned seed)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return 0;
    static unsigned char got[1 << 16], want[1 << 16];
    size_t off = 0, n;
    int same = 1;
    while (same && (n = fread(got, 1, sizeof got, f)) > 0) {
        test_pattern_fill(seed, off, want, n);
        same = memcmp(got, want, n) == 0;
        off += n;
    }
    fclose(f);
    return same && off == size;
}

static void complete(int i, const dopa_id *id)
{
    CHECK_INT(dopa_job_complete(agents[i].m, id, NULL), DOPA_OK);
}

/* ------------------------------------------------------------------ */

static void test_agents_starting_together_share_the_origin(void)
{
    long long before = test_nginx_bytes_sent(&web, "/big.bin");
    for (int i = 0; i < 3; i++)
        start_agent(i, group_key);
    dopa_id ids[3];
    char out[3][32];
    for (int i = 0; i < 3; i++) {
        snprintf(out[i], sizeof out[i], "big%d.bin", i);
        ids[i] = fetch(i, "big.bin", out[i], 1);
    }
    for (int i = 0; i < 3; i++)
        CHECK_INT(dopa_job_resume(agents[i].m, &ids[i]), DOPA_OK);
    for (int i = 0; i < 3; i++) {
        dopa_job_info *j = wait_state(i, &ids[i], DOPA_STATE_TRANSFERRED, 60);
        CHECK(dopa_job_info_bytes_from_peers(j) > 0);
        CHECK_INT(dopa_job_info_bytes_from_origin(j) + dopa_job_info_bytes_from_peers(j), SIZE_BIG);
        dopa_free(j);
        complete(i, &ids[i]);
        CHECK(same_as_origin(check_path(out[i]), SIZE_BIG, 7));
    }
    long long sent = test_nginx_bytes_sent(&web, "/big.bin") - before;
    printf("  3 agents together: the origin sent %.2f x the file\n", (double)sent / SIZE_BIG);
    CHECK(sent < SIZE_BIG * 3 / 2);

    /* One more, later: everything from the others, nothing from the origin. */
    start_agent(3, group_key);
    dopa_id late = fetch(3, "big.bin", "late.bin", 1);
    CHECK_INT(dopa_job_resume(agents[3].m, &late), DOPA_OK);
    dopa_job_info *j = wait_state(3, &late, DOPA_STATE_TRANSFERRED, 60);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), 0);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_BIG);
    dopa_free(j);
    complete(3, &late);
    CHECK(same_as_origin(check_path("late.bin"), SIZE_BIG, 7));
    CHECK_INT(test_nginx_bytes_sent(&web, "/big.bin") - before, sent);

    /* The others said what they sent; the agent says what it received. */
    uint64_t uploaded = 0;
    for (int i = 0; i < 3; i++) {
        dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
        CHECK_INT(dopa_agent_stats_get(agents[i].m, &s), DOPA_OK);
        uploaded += s.uploaded;
        CHECK_INT(s.bans, 0);
        CHECK_INT(s.cache_entries, 1);
    }
    dopa_agent_stats s3 = DOPA_AGENT_STATS_INIT;
    CHECK_INT(dopa_agent_stats_get(agents[3].m, &s3), DOPA_OK);
    CHECK_INT(s3.from_peers, SIZE_BIG);
    CHECK(uploaded >= (uint64_t)SIZE_BIG + (uint64_t)sent / 2);
}

static void test_agents_joining_a_swarm_under_way_share_the_origin(void)
{
    long long before = test_nginx_bytes_sent(&web, "/big.bin");
    configured = 3; /* no peer that never answers: every answer counts */
    for (int i = 0; i < 3; i++)
        start_agent(i, group_key);
    dopa_id ids[3];
    char out[3][32];
    for (int i = 0; i < 3; i++) {
        snprintf(out[i], sizeof out[i], "joined%d.bin", i);
        ids[i] = fetch(i, "big.bin", out[i], 1);
    }
    /* Each joins while the ones before it hold part of the file. */
    for (int i = 0; i < 3; i++) {
        CHECK_INT(dopa_job_resume(agents[i].m, &ids[i]), DOPA_OK);
        double end = check_now() + 10;
        uint64_t got;
        do {
            dopa_job_info *j;
            check_sleep_ms(20);
            CHECK_INT(dopa_job_get(agents[i].m, &ids[i], &j), DOPA_OK);
            got = dopa_job_info_bytes_transferred(j);
            dopa_free(j);
        } while (i < 2 && got < SIZE_BIG / 4 && check_now() < end);
    }
    for (int i = 0; i < 3; i++) {
        dopa_free(wait_state(i, &ids[i], DOPA_STATE_TRANSFERRED, 60));
        complete(i, &ids[i]);
        CHECK(same_as_origin(check_path(out[i]), SIZE_BIG, 7));
    }
    long long sent = test_nginx_bytes_sent(&web, "/big.bin") - before;
    printf("  3 agents joining one after another: the origin sent %.2f x the file\n",
           (double)sent / SIZE_BIG);
    CHECK(sent < SIZE_BIG * 3 / 2);
}

static void test_content_known_by_its_sha256_comes_from_peers_checked_at_the_end(void)
{
    start_agent(0, group_key);
    start_agent(1, group_key);
    long long before = test_nginx_bytes_sent(&web, "/small.bin");
    dopa_id a = fetch(0, "small.bin", "first.bin", 0);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_job_info *j = wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), SIZE_SMALL);
    dopa_free(j);
    dopa_id b = fetch(1, "small.bin", "second.bin", 0);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_SMALL);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), 0);
    dopa_free(j);
    complete(1, &b);
    CHECK(same_as_origin(check_path("second.bin"), SIZE_SMALL, 8));
    /* The first agent's copy, and the byte each agent asked for to learn
     * the size (without a manifest nothing else tells it). */
    CHECK(test_nginx_bytes_sent(&web, "/small.bin") - before <= SIZE_SMALL + 2);
}

static void test_a_rejected_peer_file_is_fetched_again_from_the_origin(void)
{
    start_agent(0, group_key);
    start_agent(1, group_key);
    dopa_id a = fetch(0, "small.bin", "seed.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30));

    long long before = test_nginx_bytes_sent(&web, "/small.bin");
    dopa_id b = fetch(1, "small.bin", "judged.bin", 1);
    CHECK_INT(dopa_job_set_notify_flags(agents[1].m, &b,
                                        DOPA_NOTIFY_DEFAULT | DOPA_NOTIFY_FILE_TRANSFERRED),
              DOPA_OK);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    /* The file waits for a verdict with every byte from the peer. */
    dopa_file_info **files;
    size_t n;
    double end = check_now() + 30;
    for (;;) {
        CHECK_INT(dopa_job_list_files(agents[1].m, &b, &files, &n), DOPA_OK);
        int waiting = dopa_file_info_validation(files[0]) == DOPA_VALIDATION_PENDING;
        uint64_t from_peers = dopa_file_info_bytes_from_peers(files[0]);
        dopa_free(files);
        if (waiting) {
            CHECK_INT(from_peers, SIZE_SMALL);
            break;
        }
        CHECK(check_now() < end);
        check_sleep_ms(20);
    }
    CHECK_INT(dopa_file_set_validation_state(agents[1].m, &b, 0, 0), DOPA_OK);
    /* Thrown away and fetched again from the origin alone. */
    end = check_now() + 30;
    for (;;) {
        CHECK_INT(dopa_job_list_files(agents[1].m, &b, &files, &n), DOPA_OK);
        const dopa_file_info *f = files[0];
        int waiting = dopa_file_info_validation(f) == DOPA_VALIDATION_PENDING &&
                      dopa_file_info_bytes_transferred(f) == SIZE_SMALL;
        uint64_t from_origin = dopa_file_info_bytes_from_origin(f),
                 from_peers = dopa_file_info_bytes_from_peers(f);
        dopa_free(files);
        if (waiting) {
            CHECK_INT(from_origin, SIZE_SMALL);
            CHECK_INT(from_peers, 0);
            break;
        }
        CHECK(check_now() < end);
        check_sleep_ms(20);
    }
    CHECK_INT(test_nginx_bytes_sent(&web, "/small.bin") - before, SIZE_SMALL);
    CHECK_INT(dopa_file_set_validation_state(agents[1].m, &b, 0, 1), DOPA_OK);
    dopa_free(wait_state(1, &b, DOPA_STATE_TRANSFERRED, 30));
    complete(1, &b);
    CHECK(same_as_origin(check_path("judged.bin"), SIZE_SMALL, 8));
}

static void test_an_agent_with_another_group_key_gets_nothing(void)
{
    start_agent(0, group_key);
    dopa_id a = fetch(0, "small.bin", "held.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30));
    start_agent(1, other_key);
    dopa_id b = fetch(1, "small.bin", "outsider.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), 0);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), SIZE_SMALL);
    dopa_free(j);
    dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
    CHECK_INT(dopa_agent_stats_get(agents[0].m, &s), DOPA_OK);
    CHECK(s.refused > 0); /* its requests were not answered */
    CHECK_INT(s.uploaded, 0);
    printf("  the outsider's %llu messages went unanswered\n", (unsigned long long)s.refused);
}

static void test_peers_finish_without_the_origin(void)
{
    start_agent(0, group_key);
    start_agent(1, group_key);
    dopa_id a = fetch(0, "big.bin", "kept.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 60));
    test_nginx_stop(&web); /* the origin is gone */
    dopa_id b = fetch(1, "big.bin", "orphan.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 60);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), 0);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_BIG);
    dopa_free(j);
    complete(1, &b);
    CHECK(same_as_origin(check_path("orphan.bin"), SIZE_BIG, 7));
}

static uint64_t cache_entries(int i)
{
    dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
    CHECK_INT(dopa_agent_stats_get(agents[i].m, &s), DOPA_OK);
    return s.cache_entries;
}

/* Agent 0 fetches a file to `out` and keeps its content in its cache: the
 * only entry there. */
static void fetch_into_cache(const char *name, const char *out)
{
    dopa_id a = fetch(0, name, out, 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30));
    double end = check_now() + 10;
    while (cache_entries(0) != 1 && check_now() < end)
        check_sleep_ms(20);
    CHECK_INT(cache_entries(0), 1);
}

static void test_the_cache_keeps_what_fits_and_forgets_the_least_recently_used(void)
{
    /* Room for the big file or the small one, not both. */
    char extra[128];
    snprintf(extra, sizeof extra, "cache-size = %d\n", SIZE_BIG + SIZE_SMALL / 2);
    start_agent_with(0, group_key, extra);
    fetch_into_cache("small.bin", "small.bin");
    dopa_id b = fetch(0, "big.bin", "big.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &b), DOPA_OK);
    dopa_free(wait_state(0, &b, DOPA_STATE_TRANSFERRED, 60));
    /* The big one pushed the small one out. */
    dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
    double end = check_now() + 10;
    do {
        check_sleep_ms(20);
        CHECK_INT(dopa_agent_stats_get(agents[0].m, &s), DOPA_OK);
    } while (s.cache_bytes != SIZE_BIG && check_now() < end);
    CHECK_INT(s.cache_entries, 1);
    CHECK_INT(s.cache_bytes, SIZE_BIG);
    CHECK(s.cache_bytes <= s.cache_limit);

    /* What the cache holds survives a restart and is still served. */
    stop_agent(0);
    start_agent_with(0, group_key, extra);
    CHECK_INT(cache_entries(0), 1);
    start_agent(1, group_key);
    dopa_id c = fetch(1, "big.bin", "again.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &c), DOPA_OK);
    dopa_job_info *j = wait_state(1, &c, DOPA_STATE_TRANSFERRED, 60);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_BIG);
    dopa_free(j);

    /* And it ages out. */
    stop_agent(0);
    start_agent_with(0, group_key, "cache-age = 1\n");
    end = check_now() + 10;
    while (cache_entries(0) != 0 && check_now() < end)
        check_sleep_ms(50);
    CHECK_INT(cache_entries(0), 0);
}

static void test_bytes_from_a_cache_host_count_as_cache(void)
{
    start_agent_with(0, group_key, "is-cache-host = yes\n");
    start_agent(1, group_key);
    dopa_id a = fetch(0, "small.bin", "site-cache.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30));
    dopa_id b = fetch(1, "small.bin", "from-cache.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_cache(j), SIZE_SMALL);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), 0);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), 0);
    dopa_free(j);
    dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
    CHECK_INT(dopa_agent_stats_get(agents[1].m, &s), DOPA_OK);
    CHECK_INT(s.from_cache, SIZE_SMALL);
}

/* A socket on loopback that listens and never accepts: the kernel
 * completes each connection and nothing is ever said on it, as by an origin
 * that takes connections and never answers. Its port in *port; -1 if it
 * cannot be made. */
static int silent_origin(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *port = ntohs(a.sin_port);
    return fd;
}

/* Pieces the origin was asked for while no peer had them: once a peer
 * holds them, a request that brings no byte for 3 s (STALL_MS in
 * agent/daemon/fetch.c) is cancelled and counted, and the peer brings
 * them. Before, they stayed with the request until curl gave up on it:
 * after its 30 s connect timeout, or here, connected and silent, after
 * 60 s under its low-speed limit. */
static void test_a_silent_origin_hands_its_pieces_to_a_peer_within_seconds(void)
{
    configured = 2; /* the seed (0) and the agent (1) */
    start_agent(0, group_key);
    fetch_into_cache("small.bin", "seed.bin");
    stop_agent(0); /* back once the agent's origin has claimed pieces */

    int port = 0;
    silent_fd = silent_origin(&port);
    CHECK(silent_fd >= 0);
    start_agent(1, group_key);
    double t0 = check_now();
    dopa_id b = fetch_from(1, port, "small.bin", "unanswered.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    /* A connection waits to be accepted: a request has claimed its pieces. */
    struct pollfd p = {.fd = silent_fd, .events = POLLIN};
    CHECK_INT(poll(&p, 1, 10000), 1);
    double asked = check_now() - t0;
    start_agent(0, group_key);
    CHECK_INT(cache_entries(0), 1); /* the seed holds the whole file again */
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 90);
    double took = check_now() - t0;
    uint64_t from_peers = dopa_job_info_bytes_from_peers(j),
             from_origin = dopa_job_info_bytes_from_origin(j);
    dopa_free(j);
    dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
    CHECK_INT(dopa_agent_stats_get(agents[1].m, &s), DOPA_OK);
    printf("  an origin that never answers: asked %.1f s after the start, the file all from the "
           "peer after %.1f s; %llu origin requests given up\n",
           asked, took, (unsigned long long)s.origin_failures);
    CHECK_INT(from_peers, SIZE_SMALL);
    CHECK_INT(from_origin, 0);
    CHECK(s.origin_failures >= 1);
    CHECK(took < 15); /* curl alone: 60 s */
    complete(1, &b);
    CHECK(same_as_origin(check_path("unanswered.bin"), SIZE_SMALL, 8));
}

static void test_uploads_keep_to_the_rate_limit(void)
{
    start_agent_with(0, group_key, "upload-rate = 4M\n");
    dopa_id a = fetch(0, "big.bin", "seed.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 60));
    start_agent(1, group_key);
    double t0 = check_now();
    dopa_id b = fetch(1, "big.bin", "slow.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    /* 24 MiB at 4 MB/s, one second's worth up front: about 5.3 s. */
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 60);
    double took = check_now() - t0;
    printf("  24 MiB from a peer limited to 4 MB/s took %.1f s (%.1f MB/s)\n", took,
           SIZE_BIG / took / 1e6);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_BIG);
    dopa_free(j);
    CHECK(SIZE_BIG / took <= 4.0e6 * 1.25);
}

/* A CA and a certificate for 127.0.0.1 signed by it, under dir/name. */
static void make_certs(const char *dir, const char *name)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "(cd '%s' && mkdir -p %s && cd %s && "
             "openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=ca -days 2 -keyout ca.key "
             "  -out ca.pem && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout agent.key "
             "  -out agent.csr && "
             "printf 'subjectAltName=IP:127.0.0.1\\n' >ext && "
             "openssl x509 -req -in agent.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "  -extfile ext -out agent.pem) >/dev/null 2>&1",
             dir, name, name);
    CHECK_INT(system(cmd), 0);
}

static void test_peers_can_talk_over_tls(void)
{
    const char *dir = check_tmpdir();
    make_certs(dir, "good");
    make_certs(dir, "stranger");
    char tls[13000], stranger[13000];
    snprintf(tls, sizeof tls,
             "tls-cert = %s/good/agent.pem\ntls-key = %s/good/agent.key\n"
             "tls-ca = %s/good/ca.pem\n",
             dir, dir, dir);
    /* The right group key, but a certificate from another CA. */
    snprintf(stranger, sizeof stranger,
             "tls-cert = %s/stranger/agent.pem\n"
             "tls-key = %s/stranger/agent.key\ntls-ca = %s/stranger/ca.pem\n",
             dir, dir, dir);
    start_agent_with(0, group_key, tls);
    start_agent_with(1, group_key, tls);
    start_agent_with(2, group_key, stranger);
    dopa_id a = fetch(0, "small.bin", "tls-seed.bin", 1);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30));
    dopa_id b = fetch(1, "small.bin", "tls-peer.bin", 1);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_SMALL);
    dopa_free(j);
    complete(1, &b);
    CHECK(same_as_origin(check_path("tls-peer.bin"), SIZE_SMALL, 8));
    dopa_id c = fetch(2, "small.bin", "tls-stranger.bin", 1);
    CHECK_INT(dopa_job_resume(agents[2].m, &c), DOPA_OK);
    j = wait_state(2, &c, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), 0);
    CHECK_INT(dopa_job_info_bytes_from_origin(j), SIZE_SMALL);
    dopa_free(j);
}

/* ------------------------------------------------------------------ */

static int make_manifest(const char *name, validate_secret_key *sk, uint8_t **out, size_t *len,
                         uint8_t sha[32])
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", web.root, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    validate_digest d = {0};
    validate_manifest *m = NULL;
    int err = validate_digest_fd(fileno(f), VALIDATE_PIECE_SIZE_DEFAULT, &d, NULL);
    fclose(f);
    if (err == 0)
        err = validate_manifest_sign(&d, 1, 0, sk, &m);
    if (err == 0) {
        *out = malloc(m->encoded_len);
        memcpy(*out, m->encoded, m->encoded_len);
        *len = m->encoded_len;
        if (sha != NULL)
            memcpy(sha, d.sha256, 32);
    }
    validate_manifest_free(m);
    validate_digest_clear(&d);
    return err == 0 ? 0 : -1;
}

static void teardown(void)
{
    for (int i = 0; i < AGENTS; i++)
        stop_agent(i);
    test_nginx_stop(&web);
}

static int setup(void)
{
    if ((fixture = test_scratch_dir("peers")) == NULL)
        return -1;
    atexit(teardown);
    test_nginx_config cfg = {.server = "limit_rate 30m;"};
    if (test_nginx_start(&web, fixture, &cfg) != 0 ||
        test_nginx_put(&web, "big.bin", SIZE_BIG, 7) != 0 ||
        test_nginx_put(&web, "small.bin", SIZE_SMALL, 8) != 0)
        return -1;
    uint8_t key[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    snprintf(group_key, sizeof group_key, "%s/group.key", fixture);
    snprintf(other_key, sizeof other_key, "%s/other.key", fixture);
    peer_group_key_generate(key);
    if (peer_group_key_save(key, group_key, 0, &why) != 0)
        return -1;
    peer_group_key_generate(key);
    if (peer_group_key_save(key, other_key, 0, &why) != 0)
        return -1;
    validate_secret_key *sk;
    char sk_path[700];
    snprintf(sk_path, sizeof sk_path, "%s/publisher.key", fixture);
    snprintf(pub_key, sizeof pub_key, "%s.pub", sk_path);
    if (validate_secret_key_generate(&sk) != 0 ||
        validate_secret_key_save(sk, sk_path, 0, &why) != 0 ||
        make_manifest("big.bin", sk, &manifest_big, &manifest_big_len, NULL) != 0 ||
        make_manifest("small.bin", sk, &manifest_small, &manifest_small_len, sha_small) != 0)
        return -1;
    validate_secret_key_free(sk);
    for (int i = 0; i < AGENTS; i++) {
        ports[i] = test_free_port();
        for (int k = 0; k < i; k++)
            if (ports[k] == ports[i])
                return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_agents_starting_together_share_the_origin),
                         CASE(test_agents_joining_a_swarm_under_way_share_the_origin),
                         CASE(test_content_known_by_its_sha256_comes_from_peers_checked_at_the_end),
                         CASE(test_a_rejected_peer_file_is_fetched_again_from_the_origin),
                         CASE(test_an_agent_with_another_group_key_gets_nothing),
                         CASE(test_the_cache_keeps_what_fits_and_forgets_the_least_recently_used),
                         CASE(test_bytes_from_a_cache_host_count_as_cache),
                         CASE(test_a_silent_origin_hands_its_pieces_to_a_peer_within_seconds),
                         CASE(test_uploads_keep_to_the_rate_limit),
                         CASE(test_peers_can_talk_over_tls),
                         CASE(test_peers_finish_without_the_origin), /* last: it stops the origin */
                         {0},
                     });
}

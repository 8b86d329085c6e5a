/*
 * dopad's metrics endpoint ([metrics] listen), through real HTTP requests
 * on loopback to a real dopad, with nginx as the origin: the text is in
 * Prometheus's format and its numbers are the ones `dopa_agent_stats_get`
 * and the job list give, job states, peers and cache included; other paths
 * get 404; clients that hang up do not stop it; without the setting
 * nothing listens; a bad address is refused with its file and line, a port
 * in use stops dopad with a clear message; SIGHUP moves, stops and starts
 * the endpoint. DOPAD names the daemon.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "../support/prom.h"
#include "dopa.h"
#include "peer.h"
#include "validate.h"

#define SIZE_A    (1024 * 1024 + 777)
#define SIZE_SLOW (4 * 1024 * 1024)
#define AGENTS    2

static test_nginx web;
static const char *fixture;
static char group_key[600];
static uint8_t sha_a[32];

typedef struct agent {
    test_dopad d;
    dopa_manager *m;
    int port; /* of its metrics endpoint */
} agent;
static agent agents[AGENTS] = {{.d.pid = -1}, {.d.pid = -1}};

/* What agent i has logged so far. */
static const char *log_text(int i)
{
    static char text[65536];
    text[0] = '\0';
    FILE *f = fopen(agents[i].d.log, "r");
    if (f != NULL) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    return text;
}

/* The port of the last "metrics: serving http://HOST:PORT/metrics" in the log. */
static int logged_port(int i)
{
    const char *text = log_text(i), *at = NULL, *p = text;
    while ((p = strstr(p, "metrics: serving http://")) != NULL)
        at = p++;
    CHECK(at != NULL);
    const char *colon = strchr(at + strlen("metrics: serving http://"), ':');
    CHECK(colon != NULL);
    return atoi(colon + 1);
}

/* Starts agent i with `settings` (after "[dopad]") in its own directory. */
static void start_agent(int i, const char *settings)
{
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/agent%d", check_tmpdir(), i);
    mkdir(dir, 0700);
    if (test_dopad_start(&agents[i].d, DOPAD, dir, settings) != 0) {
        fprintf(stderr, "  dopad said:\n%s", log_text(i));
        CHECK(0);
    }
    CHECK_INT(dopa_connect(agents[i].d.sock, &agents[i].m), DOPA_OK);
    agents[i].port = strstr(settings, "[metrics]") != NULL ? logged_port(i) : 0;
}

/* Stops agent i with SIGTERM: it must exit with status 0, its log free of
 * sanitizer reports. */
static void stop_agent_cleanly(int i)
{
    if (agents[i].m != NULL)
        dopa_disconnect(agents[i].m);
    agents[i].m = NULL;
    CHECK(kill(agents[i].d.pid, SIGTERM) == 0);
    int status = test_wait(agents[i].d.pid, 10);
    agents[i].d.pid = -1;
    const char *said = log_text(i);
    if (status != 0 || strstr(said, "Sanitizer") != NULL || strstr(said, "runtime error") != NULL)
        fprintf(stderr, "  dopad said:\n%s", said);
    CHECK_INT(status, 0);
    CHECK(strstr(said, "Sanitizer") == NULL && strstr(said, "runtime error") == NULL);
}

static void stop_agent(int i)
{
    if (agents[i].m != NULL)
        dopa_disconnect(agents[i].m);
    agents[i].m = NULL;
    if (agents[i].d.pid > 0)
        test_dopad_stop(&agents[i].d, SIGTERM);
}

/* ------------------------------------------------------------------ */
/* HTTP, by hand                                                      */

static int connect_to(const char *host, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    CHECK(inet_pton(AF_INET, host, &a.sin_addr) == 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* As much of src as fits in dst. */
static void copy_text(char *dst, size_t len, const char *src)
{
    size_t n = strlen(src);
    n = n < len ? n : len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Sends `request` (whole, as text) to host:port and reads the response
 * until the server closes (or 5 s pass). Returns the status, 0 when no
 * response came, -1 when the connection was refused. head gets the status
 * line and headers, body what follows them. */
static int http_raw(const char *host, int port, const char *request, char *head, size_t head_len,
                    char *body, size_t body_len)
{
    static char buf[1 << 16];
    head[0] = body[0] = '\0';
    int fd = connect_to(host, port);
    if (fd < 0)
        return -1;
    size_t len = strlen(request), got = 0;
    CHECK(write(fd, request, len) == (ssize_t)len);
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0)
        got += (size_t)n;
    close(fd);
    buf[got] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.1 ", 9) != 0 || end == NULL)
        return 0;
    *end = '\0';
    copy_text(head, head_len, buf);
    copy_text(body, body_len, end + 4);
    return atoi(buf + 9);
}

/* GET path from 127.0.0.1:port, the connection closed after it. */
static int http_get(int port, const char *path, char *body, size_t body_len)
{
    char req[512], head[4096];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n",
             path, port);
    return http_raw("127.0.0.1", port, req, head, sizeof head, body, body_len);
}

/* ------------------------------------------------------------------ */
/* The exposition text                                                */

/* Checks the text's shape: lines that end in a newline, a HELP and a TYPE
 * before the first sample of each family, counters ending in _total,
 * every name starting with dopa_, no series twice. */
static void check_format(const char *text)
{
    CHECK(text[0] != '\0');
    CHECK(text[strlen(text) - 1] == '\n');
    char copy[1 << 15];
    CHECK(strlen(text) < sizeof copy);
    snprintf(copy, sizeof copy, "%s", text);
    char seen[128][128];
    int n_seen = 0;
    for (char *line = strtok(copy, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (line[0] == '#') {
            CHECK(strncmp(line, "# HELP dopa_", 12) == 0 || strncmp(line, "# TYPE dopa_", 12) == 0);
            if (strncmp(line, "# TYPE ", 7) == 0) {
                const char *type = strrchr(line, ' ') + 1;
                size_t name_len = (size_t)(type - 1 - (line + 7));
                CHECK(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0);
                CHECK((strcmp(type, "counter") == 0) ==
                      (name_len > 6 && strncmp(line + 7 + name_len - 6, "_total", 6) == 0));
            }
            continue;
        }
        char name[128], help[160], type[160];
        size_t k = strcspn(line, "{ ");
        CHECK(k > 5 && k < sizeof name && strncmp(line, "dopa_", 5) == 0);
        memcpy(name, line, k);
        name[k] = '\0';
        snprintf(help, sizeof help, "# HELP %s ", name);
        snprintf(type, sizeof type, "# TYPE %s ", name);
        const char *h = strstr(text, help), *t = strstr(text, type), *s = strstr(text, line);
        CHECK(h != NULL && t != NULL && h < s && t < s);
        size_t series = strcspn(line, " ");
        CHECK(series < sizeof seen[0]);
        for (int i = 0; i < n_seen; i++)
            CHECK(strncmp(seen[i], line, series) != 0 || seen[i][series] != '\0');
        CHECK(n_seen < 128);
        memcpy(seen[n_seen], line, series);
        seen[n_seen++][series] = '\0';
        char *end;
        strtod(line + series + 1, &end);
        CHECK(end != line + series + 1 && *end == '\0');
    }
}

static uint64_t sample_u64(const char *text, const char *series)
{
    double v = prom_sample(text, series);
    CHECK(v >= 0 && v < 9007199254740992.0 && v == (double)(uint64_t)v);
    return (uint64_t)v;
}

/* The endpoint's text for agent i, checked for its shape. */
static const char *scrape(int i)
{
    static char body[1 << 15];
    char head[4096], req[256];
    snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK_INT(http_raw("127.0.0.1", agents[i].port, req, head, sizeof head, body, sizeof body),
              200);
    CHECK_HAS(head, "Content-Type: text/plain; version=0.0.4");
    check_format(body);
    return body;
}

static const char *const state_labels[] = {"queued",      "connecting",   "transferring",
                                           "suspended",   "error",        "transient_error",
                                           "transferred", "acknowledged", "cancelled"};

/* The counters in the text are those dopa_agent_stats_get gives. Read
 * between two calls that agree, so that nothing moved meanwhile. */
static void check_matches_stats(int i, dopa_agent_stats *out)
{
    const char *text = NULL;
    dopa_agent_stats a = DOPA_AGENT_STATS_INIT, b = DOPA_AGENT_STATS_INIT;
    for (int tries = 0;; tries++) {
        CHECK_INT(dopa_agent_stats_get(agents[i].m, &a), DOPA_OK);
        text = scrape(i);
        CHECK_INT(dopa_agent_stats_get(agents[i].m, &b), DOPA_OK);
        if (memcmp(&a, &b, sizeof a) == 0)
            break;
        CHECK(tries < 50);
        check_sleep_ms(100);
    }
    CHECK_INT(sample_u64(text, "dopa_received_bytes_total{source=\"origin\"}"), a.from_origin);
    CHECK_INT(sample_u64(text, "dopa_received_bytes_total{source=\"peers\"}"), a.from_peers);
    CHECK_INT(sample_u64(text, "dopa_received_bytes_total{source=\"cache\"}"), a.from_cache);
    CHECK_INT(sample_u64(text, "dopa_uploaded_bytes_total"), a.uploaded);
    CHECK_INT(sample_u64(text, "dopa_peers"), a.peers);
    CHECK_INT(sample_u64(text, "dopa_peers_banned"), a.banned);
    CHECK_INT(sample_u64(text, "dopa_peer_bans_total"), a.bans);
    CHECK_INT(sample_u64(text, "dopa_peer_bad_pieces_total"), a.bad_pieces);
    CHECK_INT(sample_u64(text, "dopa_peer_timeouts_total"), a.timeouts);
    CHECK_INT(sample_u64(text, "dopa_peer_messages_refused_total"), a.refused);
    CHECK_INT(sample_u64(text, "dopa_cache_entries"), a.cache_entries);
    CHECK_INT(sample_u64(text, "dopa_cache_bytes"), a.cache_bytes);
    CHECK_INT(sample_u64(text, "dopa_cache_limit_bytes"), a.cache_limit);
    uint64_t all = a.from_origin + a.from_peers + a.from_cache;
    double share = all ? (double)(a.from_peers + a.from_cache) / (double)all : 0;
    double got = prom_sample(text, "dopa_peer_share_ratio");
    CHECK(got > share - 1e-6 && got < share + 1e-6);
    uint64_t jobs = 0;
    for (size_t s = 0; s < sizeof state_labels / sizeof state_labels[0]; s++) {
        char series[64];
        snprintf(series, sizeof series, "dopa_jobs{state=\"%s\"}", state_labels[s]);
        jobs += sample_u64(text, series);
    }
    CHECK_INT(jobs, a.jobs);
    char build[128], version[64];
    CHECK_INT(dopa_whoami(agents[i].m, NULL, version, sizeof version), DOPA_OK);
    snprintf(build, sizeof build, "dopa_build_info{version=\"%s\"}", version);
    CHECK_INT(sample_u64(text, build), 1);
    double started = prom_sample(text, "dopa_start_time_seconds");
    CHECK(started > (double)time(NULL) - 600 && started <= (double)time(NULL) + 1);
    if (out != NULL)
        *out = a;
}

/* The jobs in each state in the text are those the job list gives. */
static void check_job_states(int i, const uint64_t want[9])
{
    const char *text = scrape(i);
    dopa_job_info **jobs;
    size_t n;
    CHECK_INT(dopa_job_list(agents[i].m, 0, &jobs, &n), DOPA_OK);
    uint64_t listed[9] = {0};
    for (size_t k = 0; k < n; k++) {
        int state = dopa_job_info_state(jobs[k]);
        CHECK(state >= 0 && state < 9);
        listed[state]++;
    }
    dopa_free(jobs);
    for (int s = 0; s < 9; s++) {
        char series[64];
        snprintf(series, sizeof series, "dopa_jobs{state=\"%s\"}", state_labels[s]);
        uint64_t got = sample_u64(text, series);
        if (got != listed[s] || got != want[s])
            fprintf(stderr, "  %s: metrics %llu, listed %llu, expected %llu\n", series,
                    (unsigned long long)got, (unsigned long long)listed[s],
                    (unsigned long long)want[s]);
        CHECK_INT(got, listed[s]);
        CHECK_INT(got, want[s]);
    }
}

/* ------------------------------------------------------------------ */
/* Jobs                                                               */

static dopa_id add_job(int i, const char *path, const char *out, const dopa_file_options *o)
{
    char u[256];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/%s", web.port, path);
    dopa_id id;
    CHECK_INT(dopa_job_create(agents[i].m, out, DOPA_JOB_DOWNLOAD, &id), DOPA_OK);
    CHECK_INT(dopa_job_add_file(agents[i].m, &id, u, check_path(out), o), DOPA_OK);
    return id;
}

/* Waits up to `limit` seconds for the job to reach `state` (and, for
 * TRANSFERRING, to have some bytes). Returns its information then, for
 * dopa_free(). */
static dopa_job_info *wait_state(int i, const dopa_id *id, int state, double limit)
{
    dopa_job_info *j;
    double end = check_now() + limit;
    for (;;) {
        CHECK_INT(dopa_job_get(agents[i].m, id, &j), DOPA_OK);
        if (dopa_job_info_state(j) == state &&
            (state != DOPA_STATE_TRANSFERRING || dopa_job_info_bytes_transferred(j) > 0))
            return j;
        if (check_now() > end) {
            fprintf(stderr, "  job is %s, waited for %s (%s)\n",
                    dopa_state_name(dopa_job_info_state(j)), dopa_state_name(state),
                    dopa_job_info_has_error(j) ? dopa_job_info_error_message(j) : "no error");
            CHECK(0);
        }
        dopa_free(j);
        check_sleep_ms(20);
    }
}

/* ------------------------------------------------------------------ */
/* Sockets of a process                                               */

/* The TCP ports pid listens on (IPv4 and IPv6); how many. */
static int listening_ports(pid_t pid, int *ports, int max)
{
    char path[128], link[128];
    unsigned long inodes[256];
    int n_inodes = 0, n = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    CHECK(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n_inodes < 256) {
        char fd_path[400];
        snprintf(fd_path, sizeof fd_path, "%s/%s", path, e->d_name);
        ssize_t k = readlink(fd_path, link, sizeof link - 1);
        if (k <= 0)
            continue;
        link[k] = '\0';
        if (strncmp(link, "socket:[", 8) == 0)
            inodes[n_inodes++] = strtoul(link + 8, NULL, 10);
    }
    closedir(d);
    const char *tables[] = {"tcp", "tcp6"};
    for (int t = 0; t < 2; t++) {
        snprintf(path, sizeof path, "/proc/%d/net/%s", (int)pid, tables[t]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        char line[512];
        while (fgets(line, sizeof line, f) != NULL) {
            char local[128], remote[128], st[8];
            unsigned long inode;
            if (sscanf(line, " %*s %127s %127s %7s %*s %*s %*s %*s %*s %lu", local, remote, st,
                       &inode) != 4 ||
                strcmp(st, "0A") != 0)
                continue;
            for (int k = 0; k < n_inodes; k++)
                if (inodes[k] == inode && n < max)
                    ports[n++] = (int)strtol(strrchr(local, ':') + 1, NULL, 16);
        }
        fclose(f);
    }
    return n;
}

/* ------------------------------------------------------------------ */

static void test_the_counters_and_job_states_are_those_dopad_reports(void)
{
    start_agent(0, "max-running = 1\n[metrics]\nlisten = 127.0.0.1:0\n");
    int ports[8];
    CHECK_INT(listening_ports(agents[0].d.pid, ports, 8), 1);
    CHECK_INT(ports[0], agents[0].port);
    uint64_t states[9] = {0};
    check_matches_stats(0, NULL);
    check_job_states(0, states);

    /* One job of each state that stays put. */
    dopa_id done = add_job(0, "data/a.bin", "done.bin", NULL);
    CHECK_INT(dopa_job_resume(agents[0].m, &done), DOPA_OK);
    dopa_free(wait_state(0, &done, DOPA_STATE_TRANSFERRED, 30));
    CHECK_INT(dopa_job_complete(agents[0].m, &done, NULL), DOPA_OK);
    dopa_id transferred = add_job(0, "data/a.bin", "transferred.bin", NULL);
    CHECK_INT(dopa_job_resume(agents[0].m, &transferred), DOPA_OK);
    dopa_free(wait_state(0, &transferred, DOPA_STATE_TRANSFERRED, 30));
    dopa_id failed = add_job(0, "data/missing.bin", "missing.bin", NULL);
    CHECK_INT(dopa_job_resume(agents[0].m, &failed), DOPA_OK);
    dopa_free(wait_state(0, &failed, DOPA_STATE_ERROR, 30));
    add_job(0, "data/a.bin", "suspended.bin", NULL);
    dopa_id cancelled = add_job(0, "data/a.bin", "cancelled.bin", NULL);
    CHECK_INT(dopa_job_cancel(agents[0].m, &cancelled), DOPA_OK);
    /* One running (slowly) and, with max-running = 1, one waiting for it. */
    dopa_id running = add_job(0, "slow/s.bin", "running.bin", NULL);
    CHECK_INT(dopa_job_resume(agents[0].m, &running), DOPA_OK);
    dopa_free(wait_state(0, &running, DOPA_STATE_TRANSFERRING, 30));
    dopa_id queued = add_job(0, "slow/s.bin", "queued.bin", NULL);
    CHECK_INT(dopa_job_resume(agents[0].m, &queued), DOPA_OK);
    dopa_free(wait_state(0, &queued, DOPA_STATE_QUEUED, 30));
    states[DOPA_STATE_ACKNOWLEDGED] = states[DOPA_STATE_TRANSFERRED] = 1;
    states[DOPA_STATE_ERROR] = states[DOPA_STATE_SUSPENDED] = states[DOPA_STATE_CANCELLED] = 1;
    states[DOPA_STATE_TRANSFERRING] = states[DOPA_STATE_QUEUED] = 1;
    check_job_states(0, states);

    /* Stopped, the slow ones leave the counters still. (The waiting one
     * first: stopping the running one first would let it start.) */
    CHECK_INT(dopa_job_suspend(agents[0].m, &queued), DOPA_OK);
    CHECK_INT(dopa_job_suspend(agents[0].m, &running), DOPA_OK);
    dopa_job_info *slow = wait_state(0, &running, DOPA_STATE_SUSPENDED, 30);
    states[DOPA_STATE_TRANSFERRING] = states[DOPA_STATE_QUEUED] = 0;
    states[DOPA_STATE_SUSPENDED] = 3;
    check_job_states(0, states);
    dopa_agent_stats st;
    check_matches_stats(0, &st);
    CHECK_INT(st.jobs, 7);
    CHECK_INT(st.from_origin, 2 * SIZE_A + dopa_job_info_bytes_from_origin(slow));
    dopa_free(slow);
    CHECK_INT(st.from_peers + st.from_cache + st.uploaded, 0);
    stop_agent_cleanly(0);
}

static void test_peer_and_cache_counters_are_those_dopad_reports(void)
{
    int peer_ports[AGENTS];
    for (int i = 0; i < AGENTS; i++)
        CHECK((peer_ports[i] = test_free_port()) > 0);
    CHECK(peer_ports[0] != peer_ports[1]);
    for (int i = 0; i < AGENTS; i++) {
        char settings[2048];
        snprintf(settings, sizeof settings,
                 "[peers]\ngroup-key = %s\nlisten = tcp://127.0.0.1:%d\npeer = tcp://127.0.0.1:%d\n"
                 "beacons = no\ncache-size = 50M\n[metrics]\nlisten = 127.0.0.1:0\n",
                 group_key, peer_ports[i], peer_ports[1 - i]);
        start_agent(i, settings);
    }
    /* Known by its SHA-256: the second agent takes it from the first. */
    dopa_file_options o = {.size = sizeof o, .expected_sha256 = sha_a};
    dopa_id a = add_job(0, "data/a.bin", "first.bin", &o);
    CHECK_INT(dopa_job_resume(agents[0].m, &a), DOPA_OK);
    dopa_free(wait_state(0, &a, DOPA_STATE_TRANSFERRED, 30));
    dopa_id b = add_job(1, "data/a.bin", "second.bin", &o);
    CHECK_INT(dopa_job_resume(agents[1].m, &b), DOPA_OK);
    dopa_job_info *j = wait_state(1, &b, DOPA_STATE_TRANSFERRED, 30);
    CHECK_INT(dopa_job_info_bytes_from_peers(j), SIZE_A);
    dopa_free(j);
    /* The first agent's cache takes its copy in the background. */
    dopa_agent_stats s[AGENTS] = {DOPA_AGENT_STATS_INIT, DOPA_AGENT_STATS_INIT};
    double end = check_now() + 30;
    do {
        check_sleep_ms(50);
        CHECK(check_now() < end);
        CHECK_INT(dopa_agent_stats_get(agents[0].m, &s[0]), DOPA_OK);
    } while (s[0].cache_entries == 0);
    for (int i = 0; i < AGENTS; i++)
        check_matches_stats(i, &s[i]);
    CHECK_INT(s[1].from_peers, SIZE_A);
    CHECK(s[0].uploaded >= SIZE_A);
    CHECK_INT(s[0].cache_entries, 1);
    CHECK_INT(s[0].cache_bytes, SIZE_A);
    CHECK_INT(s[0].cache_limit, 50000000);
    for (int i = 0; i < AGENTS; i++)
        CHECK_INT(s[i].peers, 1);
    CHECK(prom_sample(scrape(1), "dopa_peer_share_ratio") > 0.99);
    CHECK(prom_sample(scrape(0), "dopa_peer_share_ratio") == 0);
    for (int i = 0; i < AGENTS; i++)
        stop_agent_cleanly(i);
}

static void test_other_paths_and_methods_get_errors(void)
{
    start_agent(0, "[metrics]\nlisten = 127.0.0.1:0\n");
    static char body[1 << 15];
    char head[4096];
    int port = agents[0].port;
    CHECK_INT(http_get(port, "/", body, sizeof body), 404);
    CHECK_INT(http_get(port, "/metricsx", body, sizeof body), 404);
    CHECK_INT(http_get(port, "/metrics/more", body, sizeof body), 404);
    CHECK_INT(http_get(port, "/other", body, sizeof body), 404);
    CHECK_INT(http_get(port, "/metrics?name[]=dopa_peers", body, sizeof body), 200);
    CHECK_HAS(body, "\ndopa_peers 0\n");
    CHECK_INT(http_raw("127.0.0.1", port,
                       "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Length: 0\r\n\r\n",
                       head, sizeof head, body, sizeof body),
              405);
    /* HEAD: the headers of a GET, without its body. */
    CHECK_INT(http_raw("127.0.0.1", port,
                       "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", head,
                       sizeof head, body, sizeof body),
              200);
    CHECK_HAS(head, "Content-Type: text/plain; version=0.0.4");
    CHECK_STR(body, "");
    /* A GET with a body is refused: nothing of it is read into memory. */
    CHECK_INT(http_raw("127.0.0.1", port,
                       "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Length: 1000000\r\n\r\nxxxx",
                       head, sizeof head, body, sizeof body),
              400);
    /* Two requests on one connection: both answered. */
    CHECK_INT(http_raw("127.0.0.1", port,
                       "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                       head, sizeof head, body, sizeof body),
              200);
    const char *second = strstr(body, "HTTP/1.1 200 OK\r\n");
    CHECK(second != NULL);
    CHECK_HAS(second, "dopa_cache_limit_bytes 0\n");
    stop_agent_cleanly(0);
}

static void test_clients_that_hang_up_do_not_stop_the_endpoint(void)
{
    start_agent(0, "[metrics]\nlisten = 127.0.0.1:0\n");
    int port = agents[0].port;
    const char *partial[] = {"", "GET /metr", "GET /metrics HTTP/1.1\r\nHost: x\r\n",
                             "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"};
    for (int round = 0; round < 50; round++) {
        for (size_t k = 0; k < sizeof partial / sizeof partial[0]; k++) {
            int fd = connect_to("127.0.0.1", port);
            CHECK(fd >= 0);
            size_t len = strlen(partial[k]);
            CHECK(write(fd, partial[k], len) == (ssize_t)len);
            if (round % 2 == 1) {
                /* A reset, not a close. */
                struct linger l = {1, 0};
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
            }
            close(fd);
        }
    }
    /* Some that hang on, idle or halfway through a request. */
    int idle[20];
    for (int k = 0; k < 20; k++) {
        idle[k] = connect_to("127.0.0.1", port);
        CHECK(idle[k] >= 0);
        if (k % 2 == 1)
            CHECK(write(idle[k], "GET /met", 8) == 8);
    }
    double t0 = check_now();
    check_matches_stats(0, NULL);
    CHECK(check_now() - t0 < 5);
    for (int k = 0; k < 20; k++)
        close(idle[k]);
    /* dopad's own work goes on. */
    dopa_id id = add_job(0, "data/a.bin", "after.bin", NULL);
    CHECK_INT(dopa_job_resume(agents[0].m, &id), DOPA_OK);
    dopa_free(wait_state(0, &id, DOPA_STATE_TRANSFERRED, 30));
    check_matches_stats(0, NULL);
    stop_agent_cleanly(0);
}

static void test_without_the_setting_nothing_listens(void)
{
    start_agent(0, "max-running = 2\n");
    int ports[8];
    CHECK_INT(listening_ports(agents[0].d.pid, ports, 8), 0);
    CHECK(strstr(log_text(0), "metrics") == NULL);
    stop_agent_cleanly(0);
}

static void test_bad_addresses_are_refused_with_file_and_line(void)
{
    const struct {
        const char *text;
        const char *said;
    } bad[] = {
        {"[metrics]\nlisten = 9464\n", "bad.conf:2: listen 9464: need ADDRESS:PORT"},
        {"[dopad]\n[metrics]\n\nlisten = :9464\n", "bad.conf:4: listen :9464: need ADDRESS:PORT"},
        {"[metrics]\nlisten = localhost:9464\n", "bad.conf:2: listen localhost:9464: need"},
        {"[metrics]\nlisten = 127.0.0.1:65536\n", "bad.conf:2: listen 127.0.0.1:65536: need"},
        {"[metrics]\nlisten = 127.0.0.1:\n", "bad.conf:2: listen 127.0.0.1:: need"},
        {"[metrics]\nlisten = ::1:9464\n", "bad.conf:2: listen ::1:9464: need"},
        {"[metrics]\nlisten = [::1]\n", "bad.conf:2: listen [::1]: need"},
        {"[metrics]\nlisten = http://127.0.0.1:9464\n", "bad.conf:2: listen http://"},
        {"[metrics]\nlisten = 127.0.0.1:9464/metrics\n", "bad.conf:2: listen 127.0.0.1:9464/"},
        {"[metrics]\nport = 9464\n", "bad.conf:2: unknown setting port in [metrics]"},
        {"[metrics]\nlisten =\n", "bad.conf:2: listen: no value"},
    };
    char out[4096];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        check_write_text(check_path("bad.conf"), bad[i].text);
        const char *argv[] = {DOPAD,
                              "--config",
                              check_path("bad.conf"),
                              "--socket",
                              check_path("c.sock"),
                              "--state-dir",
                              check_path("state"),
                              NULL};
        CHECK_INT(test_run(argv, out, sizeof out, 10, TEST_AS_ME, 0), 2);
        CHECK_HAS(out, bad[i].said);
    }
}

static void test_a_port_in_use_stops_dopad_with_a_clear_error(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK(fd >= 0);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1) == 0 &&
          getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    int port = ntohs(a.sin_port);
    char conf[256], out[4096], said[256];
    snprintf(conf, sizeof conf, "[metrics]\nlisten = 127.0.0.1:%d\n", port);
    check_write_text(check_path("taken.conf"), conf);
    const char *argv[] = {DOPAD,
                          "--config",
                          check_path("taken.conf"),
                          "--socket",
                          check_path("c.sock"),
                          "--state-dir",
                          check_path("state"),
                          NULL};
    int rc = test_run(argv, out, sizeof out, 10, TEST_AS_ME, 0);
    close(fd);
    CHECK_INT(rc, 1);
    snprintf(said, sizeof said, "dopad: metrics endpoint: cannot listen on 127.0.0.1:%d: ", port);
    CHECK_HAS(out, said);
    CHECK_HAS(out, "in use");
    /* It let go of what it had taken: the same start works now. */
    start_agent(0, conf);
    CHECK_INT(agents[0].port, port);
    check_matches_stats(0, NULL);
    stop_agent_cleanly(0);
}

static int count_in_log(const char *what)
{
    int n = 0;
    for (const char *p = log_text(0); (p = strstr(p, what)) != NULL; p++)
        n++;
    return n;
}

/* SIGHUP to agent 0; waits until it logged how the reload ended: `end`
 * once more than before. */
static void reload_until(const char *end)
{
    int before = count_in_log(end), logged = before;
    CHECK(kill(agents[0].d.pid, SIGHUP) == 0);
    for (double limit = check_now() + 20; logged == before && check_now() < limit;
         check_sleep_ms(20))
        logged = count_in_log(end);
    CHECK_INT(logged, before + 1);
}

static void reload(void)
{
    reload_until("wait for a restart");
}

/* Agent 0's configuration file, with `settings` after "[dopad]". */
static void rewrite(const char *settings)
{
    char text[4096];
    snprintf(text, sizeof text, "[dopad]\n%s\n", settings);
    check_write_text(check_path("agent0/dopad.conf"), text);
}

static void test_sighup_moves_stops_and_starts_the_endpoint(void)
{
    static char body[1 << 15];
    int p1 = test_free_port(), p2 = test_free_port();
    CHECK(p1 > 0 && p2 > 0 && p1 != p2);
    char settings[512], said[512];
    snprintf(settings, sizeof settings, "[metrics]\nlisten = 127.0.0.1:%d\n", p1);
    start_agent(0, settings);
    CHECK_INT(agents[0].port, p1);

    /* Elsewhere: the old port closes, the new one serves. */
    snprintf(settings, sizeof settings, "[metrics]\nlisten = 127.0.0.1:%d\n", p2);
    rewrite(settings);
    reload();
    snprintf(said, sizeof said, "reload: [metrics] listen: 127.0.0.1:%d (was 127.0.0.1:%d)", p2,
             p1);
    CHECK_HAS(log_text(0), said);
    CHECK_HAS(log_text(0), "reload: 1 settings changed, 0 wait for a restart");
    CHECK_INT(http_get(p1, "/metrics", body, sizeof body), -1);
    agents[0].port = p2;
    check_matches_stats(0, NULL);

    /* The same port on another loopback address: the old one lets go first. */
    snprintf(settings, sizeof settings, "[metrics]\nlisten = 127.0.0.2:%d\n", p2);
    rewrite(settings);
    reload();
    snprintf(said, sizeof said, "reload: [metrics] listen: 127.0.0.2:%d (was 127.0.0.1:%d)", p2,
             p2);
    CHECK_HAS(log_text(0), said);
    char head[4096], req[128];
    snprintf(req, sizeof req, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK_INT(http_raw("127.0.0.2", p2, req, head, sizeof head, body, sizeof body), 200);
    CHECK_INT(http_raw("127.0.0.1", p2, req, head, sizeof head, body, sizeof body), -1);

    /* A port in use: said, and the running endpoint stays. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 1) == 0 &&
          getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    int taken = ntohs(a.sin_port);
    snprintf(settings, sizeof settings, "[metrics]\nlisten = 127.0.0.1:%d\n", taken);
    rewrite(settings);
    reload();
    close(fd);
    snprintf(said, sizeof said,
             "reload: [metrics] listen 127.0.0.1:%d: cannot listen on 127.0.0.1:%d: ", taken,
             taken);
    CHECK_HAS(log_text(0), said);
    snprintf(said, sizeof said, "; 127.0.0.2:%d stays in force", p2);
    CHECK_HAS(log_text(0), said);
    CHECK_INT(http_raw("127.0.0.2", p2, req, head, sizeof head, body, sizeof body), 200);

    /* A bad value: its line, and nothing changes. */
    rewrite("max-running = 3\n[metrics]\nlisten = 127.0.0.1\n");
    reload_until("nothing changed");
    CHECK_HAS(log_text(0), "dopad.conf:4: listen 127.0.0.1: need ADDRESS:PORT");
    CHECK_INT(http_raw("127.0.0.2", p2, req, head, sizeof head, body, sizeof body), 200);

    /* Taken out: nothing listens. */
    rewrite("max-running = 3\n");
    reload();
    snprintf(said, sizeof said, "reload: [metrics] listen: (none) (was 127.0.0.2:%d)", p2);
    CHECK_HAS(log_text(0), said);
    int ports[8];
    CHECK_INT(listening_ports(agents[0].d.pid, ports, 8), 0);

    /* Back again, without a restart. */
    snprintf(settings, sizeof settings, "[metrics]\nlisten = 127.0.0.1:%d\n", p1);
    rewrite(settings);
    reload();
    agents[0].port = p1;
    check_matches_stats(0, NULL);
    CHECK_INT(listening_ports(agents[0].d.pid, ports, 8), 1);
    stop_agent_cleanly(0);
}

/* ------------------------------------------------------------------ */

static void after_case(void)
{
    for (int i = 0; i < AGENTS; i++) {
        stop_agent(i);
        agents[i].port = 0;
    }
}

static void teardown(void)
{
    after_case();
    test_nginx_stop(&web);
}

static int setup(void)
{
    if ((fixture = test_scratch_dir("metrics")) == NULL)
        return -1;
    atexit(teardown);
    test_nginx_config cfg = {.server = "location /slow/ { limit_rate 64k; }"};
    char dir[1024];
    if (test_nginx_start(&web, fixture, &cfg) != 0)
        return -1;
    snprintf(dir, sizeof dir, "%s/data", web.root);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/slow", web.root);
    mkdir(dir, 0755);
    if (test_nginx_put(&web, "data/a.bin", SIZE_A, 1) != 0 ||
        test_nginx_put(&web, "slow/s.bin", SIZE_SLOW, 2) != 0)
        return -1;
    uint8_t key[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    char path[1100];
    snprintf(group_key, sizeof group_key, "%s/group.key", fixture);
    peer_group_key_generate(key);
    if (peer_group_key_save(key, group_key, 0, &why) != 0)
        return -1;
    snprintf(path, sizeof path, "%s/data/a.bin", web.root);
    FILE *f = fopen(path, "rb");
    validate_digest d = {0};
    int err = f == NULL ? -1 : validate_digest_fd(fileno(f), VALIDATE_PIECE_SIZE_DEFAULT, &d, NULL);
    if (f != NULL)
        fclose(f);
    if (err == 0)
        memcpy(sha_a, d.sha256, sizeof sha_a);
    validate_digest_clear(&d);
    return err == 0 ? 0 : -1;
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
                         CASE(test_the_counters_and_job_states_are_those_dopad_reports),
                         CASE(test_peer_and_cache_counters_are_those_dopad_reports),
                         CASE(test_other_paths_and_methods_get_errors),
                         CASE(test_clients_that_hang_up_do_not_stop_the_endpoint),
                         CASE(test_without_the_setting_nothing_listens),
                         CASE(test_bad_addresses_are_refused_with_file_and_line),
                         CASE(test_a_port_in_use_stops_dopad_with_a_clear_error),
                         CASE(test_sighup_moves_stops_and_starts_the_endpoint),
                         {0},
                     });
}

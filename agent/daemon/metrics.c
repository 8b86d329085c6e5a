/*
 * The metrics endpoint: the agent's counters in the Prometheus text format
 * (version 0.0.4) at http://ADDRESS/metrics, on nng's HTTP server. The
 * metrics and their meaning are listed in dopad(8).
 *
 * Threads: nng calls on_request on one of its own threads. The counters
 * belong to the engine thread, so the request is posted to a mailbox
 * (work.h; its aio with a cancel function and a time limit), which wakes
 * the engine; the engine thread reads the counters once in
 * metrics_run_queued (engine_stats, engine_state_counts), renders them
 * once into a buffer of fixed size, and answers every request delivered
 * with a copy. Whoever takes a request out of the mailbox finishes it,
 * exactly once: the engine thread delivering it, or the cancel function
 * withdrawing it when nng gives up on it (time limit, connection or
 * server closing).
 *
 * Bounds: at most MAX_WAITING requests wait at once (more get 503 at
 * once), a request may carry no body, and a request not answered within
 * ANSWER_MS closes its connection. The text must fit TEXT_MAX bytes.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include "engine_internal.h"

#define MAX_WAITING  32
#define ANSWER_MS    10000
#define TEXT_MAX     8192
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Closing the old server releases its port a moment later (nng closes the
 * socket on its reaper thread): reopening the same port tries this long. */
#define REBIND_MS 2000

struct metrics {
    agent_engine *e;
    int64_t started_ms; /* wall clock, for dopa_start_time_seconds */
    nng_http_server *server;
    char address[METRICS_LISTEN_MAX + 16]; /* HOST:PORT, the port as bound */
    pthread_mutex_t lock;                  /* guards closing; held while posting and withdrawing */
    int closing;
    mailbox waiting;     /* requests for the engine thread */
    char text[TEXT_MAX]; /* the engine thread's */
    size_t text_len;     /* what it holds, 0 when it did not fit */
};

/* A request waiting for the engine thread. */
typedef struct request {
    work w;
    metrics *m;
    nng_aio *aio;
} request;

int metrics_parse_listen(const char *listen, char *host, size_t host_len, unsigned *port,
                         int *is_loopback)
{
    char buf[METRICS_LISTEN_MAX + 1];
    size_t n = strlen(listen);
    if (n == 0 || n >= sizeof buf)
        return -1;
    memcpy(buf, listen, n + 1);
    char *colon = strrchr(buf, ':');
    if (colon == NULL)
        return -1;
    *colon = '\0';
    const char *digits = colon + 1;
    size_t nd = strlen(digits);
    if (nd == 0 || nd > 5 || strspn(digits, "0123456789") != nd)
        return -1;
    unsigned long p = strtoul(digits, NULL, 10);
    if (p > 65535)
        return -1;
    int loopback;
    if (buf[0] == '[') {
        size_t hl = strlen(buf);
        struct in6_addr a6;
        if (hl < 3 || buf[hl - 1] != ']')
            return -1;
        buf[hl - 1] = '\0';
        if (inet_pton(AF_INET6, buf + 1, &a6) != 1)
            return -1;
        loopback =
            IN6_IS_ADDR_LOOPBACK(&a6) || (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
        buf[hl - 1] = ']';
    } else {
        struct in_addr a4;
        if (inet_pton(AF_INET, buf, &a4) != 1)
            return -1;
        loopback = (ntohl(a4.s_addr) >> 24) == 127;
    }
    if (strlen(buf) >= host_len)
        return -1;
    snprintf(host, host_len, "%s", buf);
    *port = (unsigned)p;
    *is_loopback = loopback;
    return 0;
}

/* The text being made: len bytes at buf, at of them used. */
struct text {
    char *buf;
    size_t len, at;
};

/* Appends to the text; returns -1 once it no longer fits. */
__attribute__((format(printf, 2, 3))) static int put(struct text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->buf + t->at, t->len - t->at, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= t->len - t->at)
        return -1;
    t->at += (size_t)n;
    return 0;
}

/* A metric family's HELP and TYPE lines. */
static int family(struct text *t, const char *name, const char *type, const char *help)
{
    return put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int one(struct text *t, const char *name, const char *type, const char *help, uint64_t value)
{
    if (family(t, name, type, help) != 0)
        return -1;
    return put(t, "%s %" PRIu64 "\n", name, value);
}

/* A label value, escaped as the text format wants (\\, \", \n). */
static void label_value(const char *in, char *out, size_t len)
{
    size_t k = 0;
    for (; *in != '\0' && k + 2 < len; in++) {
        if (*in == '\\' || *in == '"' || *in == '\n')
            out[k++] = '\\';
        out[k++] = *in == '\n' ? 'n' : *in;
    }
    out[k] = '\0';
}

size_t metrics_render(const dopa_agent_stats *st, const uint64_t states[AGENT_JOB_STATES],
                      int64_t started_ms, char *buf, size_t len)
{
    struct text t = {buf, len, 0};
    char version[64];
    uint64_t received = st->from_origin + st->from_peers + st->from_cache;
    double share = received ? (double)(st->from_peers + st->from_cache) / (double)received : 0.0;
    label_value(AGENT_VERSION, version, sizeof version);
    int bad =
        family(&t, "dopa_build_info", "gauge", "The dopad version, as a label; always 1.") ||
        put(&t, "dopa_build_info{version=\"%s\"} 1\n", version) ||
        family(&t, "dopa_start_time_seconds", "gauge",
               "When dopad started, in seconds since the Unix epoch.") ||
        put(&t, "dopa_start_time_seconds %.3f\n", (double)started_ms / 1000) ||
        family(&t, "dopa_received_bytes_total", "counter",
               "Bytes received for jobs since dopad started, by source: the origin, LAN peers, "
               "cache hosts.") ||
        put(&t,
            "dopa_received_bytes_total{source=\"origin\"} %" PRIu64 "\n"
            "dopa_received_bytes_total{source=\"peers\"} %" PRIu64 "\n"
            "dopa_received_bytes_total{source=\"cache\"} %" PRIu64 "\n",
            st->from_origin, st->from_peers, st->from_cache) ||
        family(&t, "dopa_peer_share_ratio", "gauge",
               "Of the bytes received since dopad started, the share that came from peers and "
               "cache hosts (0 before any).") ||
        put(&t, "dopa_peer_share_ratio %.6g\n", share) ||
        one(&t, "dopa_uploaded_bytes_total", "counter",
            "Piece bytes sent to peers since dopad started.", st->uploaded) ||
        family(&t, "dopa_jobs", "gauge",
               "Jobs dopad knows now, by state (final jobs stay for a while after they end).");
    for (int s = 0; s < AGENT_JOB_STATES && !bad; s++) {
        char name[32];
        snprintf(name, sizeof name, "%s", dopa_state_name(s));
        for (char *p = name; *p != '\0'; p++)
            *p = (char)tolower((unsigned char)*p);
        bad = put(&t, "dopa_jobs{state=\"%s\"} %" PRIu64 "\n", name, states[s]);
    }
    bad =
        bad || one(&t, "dopa_peers", "gauge", "Peers of the group known now.", st->peers) ||
        one(&t, "dopa_peers_banned", "gauge", "Peers banned now.", st->banned) ||
        one(&t, "dopa_peer_bans_total", "counter", "Peers banned since dopad started.", st->bans) ||
        one(&t, "dopa_peer_bad_pieces_total", "counter",
            "Pieces from peers that failed their check since dopad started.", st->bad_pieces) ||
        one(&t, "dopa_peer_timeouts_total", "counter",
            "Piece requests to peers that ran out of time since dopad started.", st->timeouts) ||
        one(&t, "dopa_peer_messages_refused_total", "counter",
            "Peer messages refused (not of the group, stale or replayed) since dopad started.",
            st->refused) ||
        one(&t, "dopa_cache_entries", "gauge", "Contents in the content cache.",
            st->cache_entries) ||
        one(&t, "dopa_cache_bytes", "gauge", "Bytes in the content cache.", st->cache_bytes) ||
        one(&t, "dopa_cache_limit_bytes", "gauge", "The content cache's size limit (0: no cache).",
            st->cache_limit) ||
        one(&t, "dopa_origin_failures_total", "counter",
            "Origin requests that failed or stalled while peers went on, since dopad started.",
            st->origin_failures) ||
        one(&t, "dopa_origin_requests_peak", "gauge",
            "The most origin requests at once since dopad started.", st->origin_peak) ||
        one(&t, "dopa_peer_control_sent_total", "counter",
            "Peer messages other than pieces sent (availability, beacons) since dopad started.",
            st->control_sent) ||
        one(&t, "dopa_peer_control_received_total", "counter",
            "Peer messages other than pieces received since dopad started.", st->control_received);
    return bad ? 0 : t.at;
}

/* Answers a request with a response of its own (res NULL: closes it). */
static void answer(nng_aio *aio, nng_http_res *res, int rv)
{
    nng_aio_set_output(aio, 0, res);
    nng_aio_finish(aio, res != NULL ? 0 : rv);
}

static int is_request_for(const work *w, const void *aio)
{
    return ((const request *)w)->aio == aio;
}

/* nng's thread: a request nng gave up on. Its argument is the endpoint,
 * not the request: nng may call this after the engine answered and freed
 * the request (a time limit expiring as the answer goes out). */
static void on_cancel(nng_aio *aio, void *arg, int rv)
{
    metrics *m = arg;
    pthread_mutex_lock(&m->lock); /* (not between on_request's defer and post) */
    work *w = mailbox_withdraw(&m->waiting, is_request_for, aio);
    pthread_mutex_unlock(&m->lock);
    if (w != NULL) {
        answer(aio, NULL, rv);
        free(w);
    } /* else the engine thread has it, and answers it */
}

/* The engine thread: answers with the text metrics_run_queued made (a
 * request left when the endpoint closes: closes its connection). */
static void on_answer(work *w, int status)
{
    request *r = (request *)w;
    metrics *m = r->m;
    nng_http_res *res = NULL;
    if (status != WORK_RAN) {
        answer(r->aio, NULL, NNG_ECLOSED);
        free(r);
        return;
    }
    size_t len = m->text_len;
    if (len == 0 ? nng_http_res_alloc_error(&res, NNG_HTTP_STATUS_INTERNAL_SERVER_ERROR) != 0
                 : nng_http_res_alloc(&res) != 0 ||
                       nng_http_res_set_header(res, "Content-Type", CONTENT_TYPE) != 0 ||
                       nng_http_res_copy_data(res, m->text, len) != 0) {
        nng_http_res_free(res);
        res = NULL;
    }
    answer(r->aio, res, NNG_ENOMEM);
    free(r);
}

/* nng's thread: GET (or HEAD) /metrics. */
static void on_request(nng_aio *aio)
{
    metrics *m = nng_http_handler_get_data(nng_aio_get_input(aio, 1));
    request *r = malloc(sizeof *r);
    pthread_mutex_lock(&m->lock);
    if (r == NULL || m->closing || mailbox_count(&m->waiting) >= MAX_WAITING) {
        int closing = m->closing;
        pthread_mutex_unlock(&m->lock);
        free(r);
        nng_http_res *res = NULL;
        if (closing || nng_http_res_alloc_error(&res, NNG_HTTP_STATUS_SERVICE_UNAVAILABLE) != 0)
            res = NULL;
        answer(aio, res, NNG_ECLOSED);
        return;
    }
    /* Under the lock: metrics_close sets closing before it stops the
     * server, and on_cancel waits for the lock, so the aio cannot be
     * cancelled between here and the mailbox. */
    *r = (request){.w = {.done = on_answer}, .m = m, .aio = aio};
    nng_aio_set_timeout(aio, ANSWER_MS);
    nng_aio_defer(aio, on_cancel, m);
    mailbox_post(&m->waiting, &r->w);
    pthread_mutex_unlock(&m->lock);
}

void metrics_run_queued(metrics *m)
{
    if (m == NULL || mailbox_count(&m->waiting) == 0)
        return;
    dopa_agent_stats st;
    uint64_t states[AGENT_JOB_STATES];
    engine_stats(m->e, &st);
    engine_state_counts(m->e, states);
    m->text_len = metrics_render(&st, states, m->started_ms, m->text, sizeof m->text);
    if (m->text_len == 0)
        agent_log("error", "metrics: the text outgrew its %d bytes", TEXT_MAX);
    mailbox_deliver(&m->waiting);
}

/* Holds, fills and starts the server for url; 0 or an nng error. */
static int start_server(metrics *m, const char *url)
{
    nng_url *u = NULL;
    nng_http_handler *h = NULL;
    int rv;
    if ((rv = nng_url_parse(&u, url)) != 0)
        return rv;
    rv = nng_http_server_hold(&m->server, u);
    nng_url_free(u);
    if (rv != 0) {
        m->server = NULL;
        return rv;
    }
    if ((rv = nng_http_handler_alloc(&h, "/metrics", on_request)) != 0 ||
        (rv = nng_http_handler_set_data(h, m, NULL)) != 0 ||
        (rv = nng_http_handler_collect_body(h, true, 0)) != 0 ||
        (rv = nng_http_server_add_handler(m->server, h)) != 0) {
        if (h != NULL)
            nng_http_handler_free(h);
        goto fail;
    }
    /* The server owns the handler from here. */
    if ((rv = nng_http_server_start(m->server)) != 0)
        goto fail;
    return 0;
fail:
    nng_http_server_release(m->server);
    m->server = NULL;
    return rv;
}

int metrics_open(agent_engine *e, const char *listen, int64_t started_ms, int retry_in_use,
                 metrics **out, validate_error *why)
{
    char host[METRICS_LISTEN_MAX + 1], url[METRICS_LISTEN_MAX + 16];
    unsigned port;
    int loopback, rv;
    if (metrics_parse_listen(listen, host, sizeof host, &port, &loopback) != 0) {
        validate_error_set(why, DOPA_EINVAL, "%s: not ADDRESS:PORT", listen);
        return DOPA_EINVAL;
    }
    metrics *m = calloc(1, sizeof *m);
    if (m == NULL) {
        validate_error_set(why, DOPA_ENOMEM, "out of memory");
        return DOPA_ENOMEM;
    }
    m->e = e;
    m->started_ms = started_ms;
    pthread_mutex_init(&m->lock, NULL);
    mailbox_init(&m->waiting, engine_wake, e);
    snprintf(url, sizeof url, "http://%s:%u", host, port);
    rv = start_server(m, url);
    for (int waited = 0; rv == NNG_EADDRINUSE && retry_in_use && waited < REBIND_MS; waited += 50) {
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
        rv = start_server(m, url);
    }
    if (rv != 0) {
        validate_error_set(why, DOPA_EIO, "cannot listen on %s: %s", listen, nng_strerror(rv));
        mailbox_destroy(&m->waiting);
        pthread_mutex_destroy(&m->lock);
        free(m);
        return DOPA_EIO;
    }
    nng_sockaddr sa;
    if (port == 0 && nng_http_server_get_addr(m->server, &sa) == 0)
        port = ntohs(sa.s_family == NNG_AF_INET6 ? sa.s_in6.sa_port : sa.s_in.sa_port);
    snprintf(m->address, sizeof m->address, "%s:%u", host, port);
    *out = m;
    return DOPA_OK;
}

const char *metrics_address(const metrics *m)
{
    return m->address;
}

void metrics_close(metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    m->closing = 1;
    pthread_mutex_unlock(&m->lock);
    /* Closes every connection, which cancels the requests still queued,
     * and waits until none is left. */
    nng_http_server_stop(m->server);
    nng_http_server_release(m->server);
    mailbox_destroy(&m->waiting);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

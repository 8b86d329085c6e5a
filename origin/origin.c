/*
 * The origin fetcher: range requests over libcurl's multi interface.
 *
 * Structure: an origin owns files; a file owns requests (byte ranges asked
 * for by the caller, in order); a request that is running has one transfer
 * (a curl easy handle). A request may need several transfers in turn when a
 * server answers a range with less than was asked (a short 206).
 *
 * Every response is checked before its first byte is handed on (check_response):
 * status, Content-Range against what was asked, size and validators against
 * what is known. The write callback never passes on a byte beyond the range.
 *
 * Re-entrancy: the sink's callbacks run inside libcurl (on_info, on_data,
 * during curl_multi_perform or curl_easy_pause) or inside our own walk of
 * finished transfers (on_info, on_done). While either is under way `depth`
 * is above zero, and cancelling a transfer or closing a file only detaches
 * it: the detached transfers ("graves") and files are freed at the next safe
 * point of origin_poll. After every callback the code checks whether what it
 * holds was detached meanwhile.
 *
 * Redirects are followed here, not by libcurl, so that a redirect to another
 * host does not carry the caller's custom headers there (libcurl drops only
 * Authorization and Cookie) and only http and https are followed.
 *
 * file:// transfers are asked for in chunks (FILE_CHUNK), because libcurl
 * reads a local file to the end within one call.
 *
 * Rate limits (overall, and per transfer for a file) are token buckets: a
 * write callback that finds a bucket empty pauses its transfer
 * (CURL_WRITEFUNC_PAUSE), and origin_poll unpauses it once tokens have come
 * back. libcurl's own CURLOPT_MAX_RECV_SPEED_LARGE is not used: on a fast
 * link it lets a whole socket buffer through at once.
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "origin.h"

#define DEFAULT_MAX_CONNECTIONS    16
#define DEFAULT_CONNECT_TIMEOUT_MS 30000L
#define DEFAULT_LOW_SPEED_TIME     60L
#define DEFAULT_LOW_SPEED_LIMIT    1024L
#define DEFAULT_MAX_REDIRECTS      10
#define RECV_BUFFER                (256L * 1024L)
#define FILE_CHUNK                 (8ull * 1024 * 1024)

typedef struct transfer transfer;
typedef struct request request;

/* A token bucket for a rate limit in bytes per second (rate 0: no limit).
 * Tokens may go negative: a write callback takes what curl hands it. */
typedef struct bucket {
    uint64_t rate;
    double tokens, burst;
    uint64_t refilled_ns;
} bucket;

struct request {
    uint64_t id;
    origin_file *f;
    uint64_t offset; /* next byte to deliver */
    uint64_t end;    /* one past the last byte asked for, or ORIGIN_TO_END */
    int is_probe;
    transfer *t; /* running transfer, or NULL while queued */
    char *url;   /* where a redirect sent it, or NULL for the file's URL */
    unsigned redirects;
    int strip_headers; /* redirected to another host: no custom headers there */
    request *prev, *next;
};

struct transfer {
    origin *o;
    request *r; /* NULL once detached (cancelled, file closed) */
    CURL *easy;
    struct curl_slist *headers;
    uint64_t start;      /* first byte this transfer asked for */
    uint64_t want_end;   /* one past the last byte it asked for, or ORIGIN_TO_END */
    uint64_t range_last; /* last byte the 206 said it carries, or UINT64_MAX */
    long status;         /* of the final response, once checked */
    int is_redirect;     /* a 3xx: its body is not content */
    uint64_t got;        /* bytes it delivered */
    int checked;         /* the response passed check_response */
    int stopped;         /* we stopped it: every byte asked for had arrived */
    int sent_if_range;   /* the request carried If-Range */
    int paused;
    bucket limit; /* the file's per-transfer rate limit */
    int has_err;
    origin_error err;
    char errbuf[CURL_ERROR_SIZE];
    transfer *next_paused, *next_grave;
};

struct origin_file {
    origin *o;
    origin_sink sink;
    char *url;
    char *shown_url; /* url without credentials or query, for messages */
    char *host;      /* the URL's host: redirects elsewhere drop custom headers */
    int is_file_scheme;
    enum origin_proxy_mode proxy_mode;
    char *proxy, *proxy_bypass, *client_cert, *client_key, *ca_file;
    struct curl_slist *headers;
    unsigned connections;
    unsigned active;
    uint64_t max_rate;
    origin_file_info info;
    int closed;
    request *first, *last;
    origin_file *prev, *next;
    origin_file *next_dead;
};

struct origin {
    CURLM *multi;
    origin_config cfg;
    char *user_agent;
    unsigned active;
    uint64_t next_id;
    int depth;    /* inside libcurl or our own callbacks: frees are deferred */
    bucket limit; /* the overall rate limit */
    transfer *paused;
    transfer *graves;
    origin_file *files_first, *files_last;
    origin_file *dead_files;
};

static const char *const messages[] = {
    [ORIGIN_ENOMEM - ORIGIN_ENOMEM] = "out of memory",
    [ORIGIN_EINVAL - ORIGIN_ENOMEM] = "invalid argument",
    [ORIGIN_ECANCELED - ORIGIN_ENOMEM] = "request cancelled",
    [ORIGIN_EABORTED - ORIGIN_ENOMEM] = "transfer aborted by its receiver",
    [ORIGIN_ERESOLVE - ORIGIN_ENOMEM] = "could not resolve host",
    [ORIGIN_ECONNECT - ORIGIN_ENOMEM] = "could not connect",
    [ORIGIN_ETIMEOUT - ORIGIN_ENOMEM] = "transfer timed out or stalled",
    [ORIGIN_ERECV - ORIGIN_ENOMEM] = "connection reset or closed early",
    [ORIGIN_ESERVER - ORIGIN_ENOMEM] = "server error",
    [ORIGIN_ETHROTTLED - ORIGIN_ENOMEM] = "server asked to retry later",
    [ORIGIN_EBAD_RESPONSE - ORIGIN_ENOMEM] = "server response does not match the request",
    [ORIGIN_ENOT_FOUND - ORIGIN_ENOMEM] = "remote file not found",
    [ORIGIN_EFORBIDDEN - ORIGIN_ENOMEM] = "access to the remote file denied",
    [ORIGIN_EHTTP - ORIGIN_ENOMEM] = "request refused by the server",
    [ORIGIN_ERANGE - ORIGIN_ENOMEM] = "range beyond the end of the remote file",
    [ORIGIN_ENORANGES - ORIGIN_ENOMEM] = "server sent the whole file for a range request",
    [ORIGIN_ECHANGED - ORIGIN_ENOMEM] = "remote content changed",
    [ORIGIN_ETLS - ORIGIN_ENOMEM] = "TLS failure (handshake or certificate)",
    [ORIGIN_EREDIRECT - ORIGIN_ENOMEM] = "too many or broken redirects",
    [ORIGIN_EPROTOCOL - ORIGIN_ENOMEM] = "URL scheme not allowed",
    [ORIGIN_ETRANSFER - ORIGIN_ENOMEM] = "transfer failed",
};

const char *origin_strerror(int err)
{
    if (err == ORIGIN_OK)
        return "success";
    if (err >= ORIGIN_ENOMEM && err < ORIGIN_ERR_END)
        return messages[err - ORIGIN_ENOMEM];
    return "unknown error";
}

int origin_err_is_transient(int err)
{
    return err >= ORIGIN_ERESOLVE && err <= ORIGIN_ENORANGES;
}

origin_config origin_config_default(void)
{
    origin_config c = {
        .max_connections = DEFAULT_MAX_CONNECTIONS,
        .connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS,
        .low_speed_limit = DEFAULT_LOW_SPEED_LIMIT,
        .low_speed_time = DEFAULT_LOW_SPEED_TIME,
        .max_redirects = DEFAULT_MAX_REDIRECTS,
    };
    return c;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void bucket_init(bucket *b, uint64_t rate)
{
    b->rate = rate;
    /* A tenth of a second's worth, so a limit holds over short spans. */
    b->burst = (double)rate / 10;
    b->tokens = b->burst;
    b->refilled_ns = now_ns();
}

static void bucket_refill(bucket *b, uint64_t now)
{
    if (b->rate == 0)
        return;
    b->tokens += (double)(now - b->refilled_ns) * (double)b->rate / 1e9;
    if (b->tokens > b->burst)
        b->tokens = b->burst;
    b->refilled_ns = now;
}

static int bucket_ready(const bucket *b)
{
    return b->rate == 0 || b->tokens > 0;
}

static void bucket_take(bucket *b, size_t n)
{
    if (b->rate > 0)
        b->tokens -= (double)n;
}

/* Milliseconds until the bucket has tokens again (0 if it has). */
static int bucket_wait_ms(const bucket *b)
{
    if (bucket_ready(b))
        return 0;
    double ms = -b->tokens * 1000.0 / (double)b->rate;
    return ms >= 1000 ? 1000 : (int)ms + 1;
}

/* The receive buffer for a transfer: small enough under a rate limit that
 * one write callback does not overshoot it by much. */
static long recv_buffer_for(uint64_t rate)
{
    if (rate == 0)
        return RECV_BUFFER;
    uint64_t b = rate / 8;
    return b < 16384 ? 16384 : b > (uint64_t)RECV_BUFFER ? RECV_BUFFER : (long)b;
}

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* ------------------------------------------------------------------ */
/* Errors                                                             */

__attribute__((format(printf, 3, 4))) static void set_error(transfer *t, int code, const char *fmt,
                                                            ...)
{
    if (t->has_err)
        return; /* the first cause is the one worth reporting */
    t->has_err = 1;
    t->err.code = code;
    t->err.is_transient = origin_err_is_transient(code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err.message, sizeof t->err.message, fmt, ap);
    va_end(ap);
}

static int code_for_status(long status)
{
    if (status == 404 || status == 410)
        return ORIGIN_ENOT_FOUND;
    if (status == 401 || status == 403 || status == 407)
        return ORIGIN_EFORBIDDEN;
    if (status == 412)
        return ORIGIN_ECHANGED;
    if (status == 416)
        return ORIGIN_ERANGE;
    if (status == 408 || status == 425)
        return ORIGIN_ETIMEOUT;
    if (status == 429)
        return ORIGIN_ETHROTTLED;
    if (status == 501 || status == 505)
        return ORIGIN_EHTTP; /* not implemented, version not supported: it will stay so */
    if (status >= 500)
        return ORIGIN_ESERVER;
    return ORIGIN_EHTTP;
}

static int code_for_curl(CURLcode rc)
{
    switch (rc) {
    case CURLE_OUT_OF_MEMORY:
        return ORIGIN_ENOMEM;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return ORIGIN_ERESOLVE;
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR: /* a reset during the handshake, mostly */
    case CURLE_PROXY:
        return ORIGIN_ECONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return ORIGIN_ETIMEOUT;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
        return ORIGIN_ERECV;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
        return ORIGIN_EBAD_RESPONSE;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
        return ORIGIN_ETLS;
    case CURLE_TOO_MANY_REDIRECTS:
        return ORIGIN_EREDIRECT;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return ORIGIN_EPROTOCOL;
    case CURLE_FILE_COULDNT_READ_FILE:
    case CURLE_REMOTE_FILE_NOT_FOUND:
        return ORIGIN_ENOT_FOUND;
    case CURLE_RANGE_ERROR:
        return ORIGIN_ENORANGES;
    case CURLE_BAD_DOWNLOAD_RESUME:
        return ORIGIN_ERANGE;
    default:
        return ORIGIN_ETRANSFER;
    }
}

/* ------------------------------------------------------------------ */
/* Request lists                                                      */

static void request_unlink(request *r)
{
    origin_file *f = r->f;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        f->first = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        f->last = r->prev;
    r->prev = r->next = NULL;
}

static request *request_find(origin_file *f, uint64_t id)
{
    for (request *r = f->first; r != NULL; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Transfers                                                          */

static void paused_remove(origin *o, transfer *t)
{
    for (transfer **p = &o->paused; *p != NULL; p = &(*p)->next_paused) {
        if (*p == t) {
            *p = t->next_paused;
            break;
        }
    }
    t->next_paused = NULL;
    t->paused = 0;
}

/* Removes a transfer from the multi handle and frees it; only at depth 0. */
static void transfer_free(transfer *t)
{
    origin *o = t->o;
    if (t->paused)
        paused_remove(o, t);
    curl_multi_remove_handle(o->multi, t->easy);
    curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    o->active--;
    free(t);
}

/* Separates a transfer from its request; frees it now or at the next safe
 * point. */
static void transfer_detach(transfer *t)
{
    origin *o = t->o;
    if (t->r != NULL) {
        t->r->f->active--;
        t->r->t = NULL;
        t->r = NULL;
    }
    if (o->depth > 0) {
        t->next_grave = o->graves;
        o->graves = t;
    } else {
        transfer_free(t);
    }
}

static const char *header_value(CURL *easy, const char *name)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || h == NULL)
        return NULL;
    return h->value;
}

/* Parses "bytes A-B/T" (T may be "*"); *total is -1 for "*". */
static int parse_content_range(const char *v, uint64_t *a, uint64_t *b, int64_t *total)
{
    unsigned long long x, y, z;
    int n = 0;
    if (v == NULL || strncmp(v, "bytes ", 6) != 0 || v[6] < '0' || v[6] > '9')
        return -1;
    if (sscanf(v, "bytes %llu-%llu/%llu%n", &x, &y, &z, &n) == 3 && v[n] == '\0') {
        if (z > INT64_MAX || y >= z)
            return -1;
        *total = (int64_t)z;
    } else if (sscanf(v, "bytes %llu-%llu/*%n", &x, &y, &n) == 2 && v[n] == '\0') {
        *total = -1;
    } else {
        return -1;
    }
    if (y < x)
        return -1;
    *a = x;
    *b = y;
    return 0;
}

/* Calls on_info; the caller must re-check what it holds afterwards. */
static void notify_info(origin_file *f)
{
    if (f->sink.on_info != NULL && !f->closed)
        f->sink.on_info(f->sink.ctx, f, &f->info);
}

/* The If-Range value for the file: a strong ETag, else Last-Modified, else none. */
static const char *if_range_value(const origin_file *f)
{
    if (f->info.etag[0] != '\0' && strncmp(f->info.etag, "W/", 2) != 0)
        return f->info.etag;
    if (f->info.last_modified[0] != '\0')
        return f->info.last_modified;
    return NULL;
}

/* What a response says about the file, gathered before anything is kept. */
struct seen {
    int64_t size;        /* -1 if the response does not say */
    const char *etag;    /* NULL if absent (or too long to keep) */
    const char *lm;      /* NULL if absent */
    char file_mtime[32]; /* file:// modification time, as a validator */
};

/* Compares what a response says with what is known; sets the error and
 * returns -1 on a contradiction. `whole_body` is a 200 answering a request
 * that carried If-Range: then a missing validator is a change too. */
static int compare_seen(transfer *t, const struct seen *s, int whole_body)
{
    origin_file *f = t->r->f;
    if (s->size >= 0 && f->info.size >= 0 && s->size != f->info.size) {
        set_error(t, ORIGIN_ECHANGED, "%s: size is now %" PRId64 " bytes, was %" PRId64,
                  f->shown_url, s->size, f->info.size);
        return -1;
    }
    if (f->info.etag[0] != '\0' && s->etag != NULL && strcmp(s->etag, f->info.etag) != 0) {
        set_error(t, ORIGIN_ECHANGED, "%s: ETag is now %s, was %s", f->shown_url, s->etag,
                  f->info.etag);
        return -1;
    }
    if (f->info.last_modified[0] != '\0' && s->lm != NULL &&
        strcmp(s->lm, f->info.last_modified) != 0) {
        set_error(t, ORIGIN_ECHANGED, "%s: last modified %s, was %s", f->shown_url, s->lm,
                  f->info.last_modified);
        return -1;
    }
    if (whole_body && t->sent_if_range &&
        ((f->info.etag[0] != '\0' && s->etag == NULL) ||
         (f->info.etag[0] == '\0' && f->info.last_modified[0] != '\0' && s->lm == NULL))) {
        set_error(t, ORIGIN_ECHANGED,
                  "%s: the server sent the whole file without its validator; it may have "
                  "changed",
                  f->shown_url);
        return -1;
    }
    return 0;
}

/* Records what was learned; returns 1 if anything is new. */
static int learn_seen(origin_file *f, const struct seen *s)
{
    int learned = 0;
    if (f->info.size < 0 && s->size >= 0) {
        f->info.size = s->size;
        learned = 1;
    }
    if (f->info.etag[0] == '\0' && s->etag != NULL) {
        snprintf(f->info.etag, sizeof f->info.etag, "%s", s->etag);
        learned = 1;
    }
    if (f->info.last_modified[0] == '\0' && s->lm != NULL) {
        snprintf(f->info.last_modified, sizeof f->info.last_modified, "%s", s->lm);
        learned = 1;
    }
    return learned;
}

static void read_validators(transfer *t, struct seen *s)
{
    origin_file *f = t->r->f;
    s->etag = header_value(t->easy, "ETag");
    s->lm = header_value(t->easy, "Last-Modified");
    if (s->etag != NULL && strlen(s->etag) >= sizeof f->info.etag)
        s->etag = NULL; /* too long to keep: not used as a validator */
    if (s->lm != NULL && strlen(s->lm) >= sizeof f->info.last_modified)
        s->lm = NULL;
}

static long http_version_of(CURL *easy)
{
    long v = 0;
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &v);
    switch (v) {
    case CURL_HTTP_VERSION_1_0:
        return 10;
    case CURL_HTTP_VERSION_1_1:
        return 11;
    case CURL_HTTP_VERSION_2_0:
        return 20;
    case CURL_HTTP_VERSION_3:
        return 30;
    default:
        return 0;
    }
}

/* Judges the final response of a transfer before any of its bytes is used:
 * status, Content-Range against what was asked, size and validators
 * against what is known. Returns 0 to accept (and learns what it says), -1
 * (error set) to refuse, 1 for a redirect. Sets *learned when on_info is
 * owed; the caller calls it at a point where it can re-check. */
static int check_response(transfer *t, int *learned)
{
    request *r = t->r;
    origin_file *f = r->f;
    struct seen s = {.size = -1};
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    t->status = status;
    t->err.http_status = status;
    *learned = 0;

    if (f->is_file_scheme) {
        /* A local file: its size (from a probe) and its modification time
         * stand for the validators. */
        curl_off_t len = -1, mtime = -1;
        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
        curl_easy_getinfo(t->easy, CURLINFO_FILETIME_T, &mtime);
        if (r->is_probe)
            s.size = len;
        if (mtime >= 0) {
            snprintf(s.file_mtime, sizeof s.file_mtime, "@%lld", (long long)mtime);
            s.lm = s.file_mtime;
        }
        if (compare_seen(t, &s, 0) != 0)
            return -1;
        *learned = learn_seen(f, &s);
        f->info.http_version = 0;
        return 0;
    }

    f->info.http_version = http_version_of(t->easy);
    if (status >= 300 && status < 400) {
        t->is_redirect = 1;
        return 1;
    }
    read_validators(t, &s);
    if (status == 206) {
        uint64_t a, b;
        curl_off_t len = -1;
        const char *cr = header_value(t->easy, "Content-Range");
        if (parse_content_range(cr, &a, &b, &s.size) != 0) {
            set_error(t, ORIGIN_EBAD_RESPONSE, "%s: 206 with a malformed Content-Range: %s",
                      f->shown_url, cr ? cr : "(none)");
            return -1;
        }
        if (a != t->start) {
            set_error(t, ORIGIN_EBAD_RESPONSE,
                      "%s: asked for bytes from %" PRIu64 ", got Content-Range %s", f->shown_url,
                      t->start, cr);
            return -1;
        }
        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
        if (len >= 0 && (uint64_t)len != b - a + 1) {
            set_error(t, ORIGIN_EBAD_RESPONSE,
                      "%s: Content-Range %s but Content-Length %" CURL_FORMAT_CURL_OFF_T,
                      f->shown_url, cr, len);
            return -1;
        }
        if (compare_seen(t, &s, 0) != 0)
            return -1;
        t->range_last = b;
        if (f->info.accepts_ranges != 1) {
            f->info.accepts_ranges = 1;
            *learned = 1;
        }
    } else if (status == 200) {
        curl_off_t len = -1;
        curl_easy_getinfo(t->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &len);
        s.size = len;
        if (compare_seen(t, &s, 1) != 0)
            return -1;
        if (f->info.accepts_ranges != 0 && (t->start > 0 || t->want_end != ORIGIN_TO_END)) {
            f->info.accepts_ranges = 0;
            *learned = 1;
        }
        if (t->start != 0) {
            /* The body starts at byte 0, not where we asked: never splice it. */
            *learned |= learn_seen(f, &s);
            set_error(t, ORIGIN_ENORANGES,
                      "%s: asked for bytes from %" PRIu64 ", the server sent the whole file",
                      f->shown_url, t->start);
            return -1;
        }
    } else {
        set_error(t, ORIGIN_EBAD_RESPONSE, "%s: unexpected HTTP status %ld", f->shown_url, status);
        return -1;
    }
    *learned |= learn_seen(f, &s);
    /* A request to the end of the file ends where the file does. */
    if (r->end == ORIGIN_TO_END && f->info.size >= 0)
        r->end = (uint64_t)f->info.size;
    return 0;
}

/* Pauses a transfer for the rate limits; returns 1 if it must wait. */
static int throttle(transfer *t, size_t len)
{
    origin *o = t->o;
    if ((o->limit.rate == 0 && t->limit.rate == 0) || t->r->f->is_file_scheme)
        return 0; /* file:// transfers cannot be paused */
    uint64_t now = now_ns();
    bucket_refill(&o->limit, now);
    bucket_refill(&t->limit, now);
    if (!bucket_ready(&o->limit) || !bucket_ready(&t->limit)) {
        if (!t->paused) {
            t->paused = 1;
            t->next_paused = o->paused;
            o->paused = t;
        }
        return 1;
    }
    bucket_take(&o->limit, len);
    bucket_take(&t->limit, len);
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    transfer *t = userdata;
    size_t len = size * nmemb;
    request *r = t->r;
    if (r == NULL || t->has_err || t->stopped)
        return 0; /* detached, refused or done: stop */
    if (!t->checked) {
        int learned = 0;
        int verdict = check_response(t, &learned);
        if (learned)
            notify_info(r->f);
        if (t->r != r)
            return 0; /* on_info cancelled it */
        if (verdict < 0)
            return 0;
        t->checked = 1;
    }
    if (t->is_redirect)
        return len; /* the body of a redirect is not content */
    if (r->is_probe) {
        t->stopped = 1;
        return 0;
    }
    if (throttle(t, len))
        return CURL_WRITEFUNC_PAUSE;

    /* Never beyond what was asked, nor beyond what a 206 said it carries. */
    uint64_t end = r->end;
    if (t->range_last != UINT64_MAX && t->range_last + 1 < end)
        end = t->range_last + 1;
    size_t use = len;
    if (end != ORIGIN_TO_END && use > end - r->offset)
        use = (size_t)(end - r->offset);
    if (use > 0) {
        origin_file *f = r->f;
        uint64_t id = r->id, offset = r->offset;
        int rc = f->sink.on_data(f->sink.ctx, f, id, offset, data, use);
        if (t->r != r)
            return 0; /* cancelled from inside on_data */
        if (rc != 0) {
            set_error(t, ORIGIN_EABORTED, "%s: receiver refused the data at offset %" PRIu64,
                      f->shown_url, offset);
            return 0;
        }
        r->offset += use;
        t->got += use;
    }
    if (use < len) {
        if (r->offset == r->end) {
            t->stopped = 1; /* every byte asked for is here: stop */
        } else {
            set_error(t, ORIGIN_EBAD_RESPONSE,
                      "%s: the server sent more than its Content-Range (bytes %" PRIu64 "-%" PRIu64
                      ")",
                      r->f->shown_url, t->start, t->range_last);
        }
        return 0;
    }
    return len;
}

static int append_header(struct curl_slist **list, const char *line)
{
    struct curl_slist *n = curl_slist_append(*list, line);
    if (n == NULL)
        return -1;
    *list = n;
    return 0;
}

static int build_headers(transfer *t)
{
    request *r = t->r;
    origin_file *f = r->f;
    if (!r->strip_headers)
        for (struct curl_slist *h = f->headers; h != NULL; h = h->next)
            if (append_header(&t->headers, h->data) != 0)
                return -1;
    const char *v = if_range_value(f);
    if (v != NULL && !r->is_probe && !f->is_file_scheme) {
        char line[320];
        snprintf(line, sizeof line, "If-Range: %s", v);
        if (append_header(&t->headers, line) != 0)
            return -1;
        t->sent_if_range = 1;
    }
    return 0;
}

static int transfer_start(origin *o, request *r)
{
    origin_file *f = r->f;
    transfer *t = calloc(1, sizeof *t);
    if (t == NULL)
        return ORIGIN_ENOMEM;
    t->o = o;
    t->r = r;
    t->start = r->offset;
    t->want_end = r->end;
    if (f->is_file_scheme && !r->is_probe &&
        (t->want_end == ORIGIN_TO_END || t->want_end - t->start > FILE_CHUNK))
        t->want_end = t->start + FILE_CHUNK;
    t->range_last = UINT64_MAX;
    t->easy = curl_easy_init();
    if (t->easy == NULL || build_headers(t) != 0) {
        curl_slist_free_all(t->headers);
        if (t->easy != NULL)
            curl_easy_cleanup(t->easy);
        free(t);
        return ORIGIN_ENOMEM;
    }
    CURL *e = t->easy;
    char range[64];
    if (r->is_probe)
        snprintf(range, sizeof range, "0-0");
    else if (t->want_end == ORIGIN_TO_END)
        snprintf(range, sizeof range, "%" PRIu64 "-", t->start);
    else
        snprintf(range, sizeof range, "%" PRIu64 "-%" PRIu64, t->start, t->want_end - 1);

    curl_easy_setopt(e, CURLOPT_URL, r->url != NULL ? r->url : f->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https,file");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_FILETIME, 1L);
    bucket_init(&t->limit, f->max_rate);
    long buffer = recv_buffer_for(f->max_rate);
    if (recv_buffer_for(o->limit.rate) < buffer)
        buffer = recv_buffer_for(o->limit.rate);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, buffer);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
    curl_easy_setopt(e, CURLOPT_USERAGENT, o->user_agent);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->cfg.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    if (f->is_file_scheme && r->is_probe)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else
        curl_easy_setopt(e, CURLOPT_RANGE, range);

    /* A throttled transfer must not be mistaken for a stalled one: the
     * low-speed limit stays below a quarter of its share of the rate. */
    uint64_t low = (uint64_t)o->cfg.low_speed_limit;
    if (o->cfg.max_rate > 0 && low > o->cfg.max_rate / (4u * o->cfg.max_connections))
        low = o->cfg.max_rate / (4u * o->cfg.max_connections);
    if (f->max_rate > 0 && low > f->max_rate / 4)
        low = f->max_rate / 4;
    if (low > 0) {
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, (long)low);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, o->cfg.low_speed_time);
    }

    switch (f->proxy_mode) {
    case ORIGIN_PROXY_SYSTEM:
        break;
    case ORIGIN_PROXY_NONE:
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        break;
    case ORIGIN_PROXY_EXPLICIT:
        curl_easy_setopt(e, CURLOPT_PROXY, f->proxy);
        curl_easy_setopt(e, CURLOPT_NOPROXY, f->proxy_bypass ? f->proxy_bypass : "");
        break;
    }
    if (f->ca_file != NULL)
        curl_easy_setopt(e, CURLOPT_CAINFO, f->ca_file);
    if (f->client_cert != NULL)
        curl_easy_setopt(e, CURLOPT_SSLCERT, f->client_cert);
    if (f->client_key != NULL)
        curl_easy_setopt(e, CURLOPT_SSLKEY, f->client_key);

    if (curl_multi_add_handle(o->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        curl_slist_free_all(t->headers);
        free(t);
        return ORIGIN_ETRANSFER;
    }
    r->t = t;
    f->active++;
    o->active++;
    return ORIGIN_OK;
}

/* Starts queued requests while the limits allow; only at depth 0. */
static void start_queued(origin *o)
{
    for (origin_file *f = o->files_first; f != NULL; f = f->next) {
        for (request *r = f->first; r != NULL; r = r->next) {
            if (o->active >= o->cfg.max_connections)
                return;
            if (f->active >= f->connections)
                break;
            if (r->t == NULL && transfer_start(o, r) != ORIGIN_OK)
                return; /* out of memory: try again on the next poll */
        }
    }
}

static void request_free(request *r)
{
    free(r->url);
    free(r);
}

/* Ends a request: unlinks it, reports, frees. */
static void request_finish(request *r, const origin_error *err)
{
    origin_file *f = r->f;
    uint64_t id = r->id;
    request_unlink(r);
    request_free(r);
    if (!f->closed)
        f->sink.on_done(f->sink.ctx, f, id, err);
}

/* The host of a URL, lower-cased, or NULL. */
static char *host_of(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL, *out = NULL;
    if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        out = strdup(host);
        for (char *p = out; p != NULL && *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p - 'A' + 'a');
    }
    curl_free(host);
    curl_url_cleanup(u);
    return out;
}

/* Follows a redirect: the request starts again at the new URL. Returns 0,
 * or -1 with the error set. */
static int follow_redirect(transfer *t)
{
    request *r = t->r;
    origin_file *f = r->f;
    char *location = NULL;
    curl_easy_getinfo(t->easy, CURLINFO_REDIRECT_URL, &location);
    if (location == NULL) {
        set_error(t, ORIGIN_EREDIRECT, "%s: HTTP %ld without a usable Location", f->shown_url,
                  t->status);
        return -1;
    }
    if (r->redirects >= t->o->cfg.max_redirects) {
        set_error(t, ORIGIN_EREDIRECT, "%s: more than %u redirects", f->shown_url,
                  t->o->cfg.max_redirects);
        return -1;
    }
    if (strncmp(location, "http://", 7) != 0 && strncmp(location, "https://", 8) != 0) {
        set_error(t, ORIGIN_EPROTOCOL, "%s: redirect to a scheme other than http(s) refused",
                  f->shown_url);
        return -1;
    }
    char *copy = strdup(location), *host = host_of(location);
    if (copy == NULL) {
        free(host);
        set_error(t, ORIGIN_ENOMEM, "%s: out of memory", f->shown_url);
        return -1;
    }
    if (host == NULL || f->host == NULL || strcmp(host, f->host) != 0)
        r->strip_headers = 1;
    free(host);
    free(r->url);
    r->url = copy;
    r->redirects++;
    return 0;
}

/* A transfer of a request ended (CURLMSG_DONE): decide the request's fate.
 * Runs at depth > 0, so nothing is freed under it. */
static void transfer_done(transfer *t, CURLcode rc)
{
    request *r = t->r;
    if (r == NULL)
        return; /* detached while running: already among the graves */
    origin_file *f = r->f;
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    t->err.http_status = status;

    if (!t->has_err && (rc == CURLE_OK || t->stopped) && !t->checked) {
        /* A response without a body: an empty file, a probe of file://, a
         * redirect. */
        int learned = 0;
        int verdict = check_response(t, &learned);
        if (learned)
            notify_info(f);
        if (t->r != r)
            return;
        if (verdict >= 0)
            t->checked = 1;
    }
    if (!t->has_err && rc == CURLE_HTTP_RETURNED_ERROR) {
        curl_off_t retry = 0;
        curl_easy_getinfo(t->easy, CURLINFO_RETRY_AFTER, &retry);
        int code = code_for_status(status);
        if (status == 503 && retry > 0)
            code = ORIGIN_ETHROTTLED;
        /* A 416 may say how big the file is: "bytes * / SIZE", no blanks.
         * When that is exactly where a request to the end stands, the file
         * simply ended there (an empty file, a 206 "a-b/ *" run out). */
        int64_t total = -1;
        const char *cr = header_value(t->easy, "Content-Range");
        if (status == 416 && cr != NULL && sscanf(cr, "bytes */%" SCNd64, &total) == 1 &&
            total >= 0) {
            struct seen s = {.size = total};
            if (compare_seen(t, &s, 0) == 0) {
                if (learn_seen(f, &s)) {
                    notify_info(f);
                    if (t->r != r)
                        return;
                }
                if ((r->is_probe && total == 0) ||
                    (r->end == ORIGIN_TO_END && (uint64_t)total == r->offset)) {
                    r->end = r->offset;
                    t->checked = 1;
                }
            }
        }
        if (!t->checked && !t->has_err) {
            set_error(t, code, "%s: HTTP %ld%s%s", f->shown_url, status, t->errbuf[0] ? ": " : "",
                      t->errbuf);
            t->err.retry_after = (long)retry;
        }
    } else if (!t->has_err && rc != CURLE_OK && !t->stopped) {
        set_error(t, code_for_curl(rc), "%s: %s", f->shown_url,
                  t->errbuf[0] ? t->errbuf : curl_easy_strerror(rc));
    }

    if (!t->has_err && t->is_redirect) {
        if (follow_redirect(t) == 0) {
            transfer_detach(t); /* queued again, at the new URL */
            return;
        }
    }
    if (!t->has_err && !r->is_probe && r->offset < r->end) {
        uint64_t size = f->info.size >= 0 ? (uint64_t)f->info.size : UINT64_MAX;
        if (r->end == ORIGIN_TO_END && t->status == 200 && size == UINT64_MAX) {
            /* A 200 without a length, read to its end: that was the file. */
            struct seen s = {.size = (int64_t)r->offset};
            learn_seen(f, &s);
            r->end = r->offset;
            notify_info(f);
            if (t->r != r)
                return;
        } else if (f->is_file_scheme && t->got == t->want_end - t->start && t->got > 0) {
            transfer_detach(t); /* one chunk of a local file: the next one */
            return;
        } else if (r->offset >= size || (f->is_file_scheme && t->got < t->want_end - t->start)) {
            if (f->is_file_scheme && r->end == ORIGIN_TO_END) {
                r->end = r->offset; /* read to the end of the local file */
            } else {
                set_error(t, ORIGIN_ERANGE,
                          "%s: asked for bytes up to %" PRIu64 ", the file ends at %" PRIu64,
                          f->shown_url, r->end, r->offset);
            }
        } else if (t->range_last != UINT64_MAX && t->got > 0 &&
                   t->range_last + 1 == t->start + t->got) {
            /* A short but honest 206: ask again for the rest. */
            transfer_detach(t);
            return;
        } else {
            set_error(t, ORIGIN_ERECV,
                      "%s: response ended after %" PRIu64 " of the bytes asked for from %" PRIu64,
                      f->shown_url, t->got, t->start);
        }
    }
    origin_error err = t->err;
    int failed = t->has_err;
    transfer_detach(t);
    request_finish(r, failed ? &err : NULL);
}

/* Reports finished transfers; returns how many. */
static int process_messages(origin *o)
{
    CURLMsg *m;
    int left, done = 0;
    o->depth++;
    while ((m = curl_multi_info_read(o->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        done++;
        transfer *t = NULL;
        CURLcode rc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        transfer_done(t, rc);
    }
    o->depth--;
    return done;
}

static void file_free(origin_file *f)
{
    curl_slist_free_all(f->headers);
    free(f->url);
    free(f->shown_url);
    free(f->host);
    free(f->proxy);
    free(f->proxy_bypass);
    free(f->client_cert);
    free(f->client_key);
    free(f->ca_file);
    free(f);
}

/* Frees what was detached while it could not be; only at depth 0. */
static void bury_dead(origin *o)
{
    if (o->depth > 0)
        return;
    while (o->graves != NULL) {
        transfer *t = o->graves;
        o->graves = t->next_grave;
        transfer_free(t);
    }
    while (o->dead_files != NULL) {
        origin_file *f = o->dead_files;
        o->dead_files = f->next_dead;
        file_free(f);
    }
}

/* Resumes the paused transfers whose buckets have tokens again. */
static void unpause(origin *o)
{
    if (o->paused == NULL)
        return;
    uint64_t now = now_ns();
    bucket_refill(&o->limit, now);
    transfer *list = o->paused;
    o->paused = NULL;
    o->depth++;
    while (list != NULL) {
        transfer *t = list;
        list = t->next_paused;
        t->next_paused = NULL;
        t->paused = 0;
        bucket_refill(&t->limit, now);
        if (t->r != NULL && !t->has_err && bucket_ready(&o->limit) && bucket_ready(&t->limit)) {
            /* May call on_body at once, which may pause it again. If libcurl
             * fails here it drops the held data, so the transfer must end. */
            CURLcode rc = curl_easy_pause(t->easy, CURLPAUSE_CONT);
            if (rc != CURLE_OK && t->r != NULL) /* (a no-op if on_body set the cause) */
                set_error(t, ORIGIN_ETRANSFER, "%s: resuming the transfer failed: %s",
                          t->r->f->shown_url, curl_easy_strerror(rc));
        } else if (t->r != NULL && !t->has_err) {
            t->paused = 1;
            t->next_paused = o->paused;
            o->paused = t;
        }
    }
    o->depth--;
}

/* How long until some paused transfer may go on, in ms; -1 if none waits. */
static int refill_wait_ms(const origin *o)
{
    int best = -1;
    for (const transfer *t = o->paused; t != NULL; t = t->next_paused) {
        int a = bucket_wait_ms(&o->limit), b = bucket_wait_ms(&t->limit);
        int w = a > b ? a : b;
        if (best < 0 || w < best)
            best = w;
    }
    return best;
}

/* Moves transfers on; *finished (if not NULL) says whether any ended. */
static int perform(origin *o, int *finished)
{
    int running = 0;
    o->depth++;
    CURLMcode mc = curl_multi_perform(o->multi, &running);
    o->depth--;
    int done = process_messages(o);
    if (finished != NULL)
        *finished = done > 0;
    bury_dead(o);
    start_queued(o);
    return mc == CURLM_OK ? ORIGIN_OK : ORIGIN_ETRANSFER;
}

void origin_set_max_rate(origin *o, uint64_t rate)
{
    if (rate == o->cfg.max_rate)
        return;
    o->cfg.max_rate = rate;
    /* Paused transfers go on at the next origin_poll if the new bucket
     * has tokens. */
    bucket_init(&o->limit, rate);
}

int origin_poll(origin *o, int timeout_ms)
{
    if (o->depth > 0)
        return ORIGIN_EINVAL; /* from inside a callback */
    start_queued(o);
    unpause(o);
    bury_dead(o);
    int finished = 0;
    int err = perform(o, &finished);
    if (err != ORIGIN_OK)
        return err;
    if (finished)
        return ORIGIN_OK; /* the caller has news to act on before any wait */
    int wait = refill_wait_ms(o);
    if (wait >= 0 && wait < timeout_ms)
        timeout_ms = wait;
    if (curl_multi_poll(o->multi, NULL, 0, timeout_ms < 0 ? 0 : timeout_ms, NULL) != CURLM_OK)
        return ORIGIN_ETRANSFER;
    unpause(o);
    bury_dead(o);
    return perform(o, NULL);
}

void origin_wakeup(origin *o)
{
    curl_multi_wakeup(o->multi);
}

unsigned origin_active(const origin *o)
{
    return o->active;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result;

static void global_init(void)
{
    global_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int origin_new(const origin_config *cfg, origin **out)
{
    pthread_once(&global_once, global_init);
    if (global_result != CURLE_OK)
        return ORIGIN_ETRANSFER;
    origin *o = calloc(1, sizeof *o);
    if (o == NULL)
        return ORIGIN_ENOMEM;
    o->cfg = cfg != NULL ? *cfg : origin_config_default();
    origin_config d = origin_config_default();
    if (o->cfg.max_connections == 0)
        o->cfg.max_connections = d.max_connections;
    if (o->cfg.connect_timeout_ms <= 0)
        o->cfg.connect_timeout_ms = d.connect_timeout_ms;
    if (o->cfg.low_speed_time <= 0)
        o->cfg.low_speed_time = d.low_speed_time;
    if (o->cfg.max_redirects == 0)
        o->cfg.max_redirects = d.max_redirects;
    o->cfg.user_agent = NULL;
    o->user_agent =
        strdup(cfg != NULL && cfg->user_agent != NULL ? cfg->user_agent : "dopa/" DOPA_VERSION);
    o->multi = curl_multi_init();
    if (o->user_agent == NULL || o->multi == NULL) {
        free(o->user_agent);
        if (o->multi != NULL)
            curl_multi_cleanup(o->multi);
        free(o);
        return ORIGIN_ENOMEM;
    }
    o->next_id = 1;
    bucket_init(&o->limit, o->cfg.max_rate);
    *out = o;
    return ORIGIN_OK;
}

void origin_free(origin *o)
{
    if (o == NULL)
        return;
    o->depth = 0;
    while (o->files_first != NULL)
        origin_file_close(o->files_first);
    bury_dead(o);
    curl_multi_cleanup(o->multi);
    free(o->user_agent);
    free(o);
}

/* "scheme://host[:port]/path" of a URL: no credentials, no query. */
static char *shown_url(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL, *out = NULL;
    if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK) {
        curl_url_get(u, CURLUPART_HOST, &host, 0);
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        size_t n = strlen(scheme) + strlen(path) + (host ? strlen(host) : 0) +
                   (port ? strlen(port) : 0) + 8;
        out = malloc(n);
        if (out != NULL)
            snprintf(out, n, "%s://%s%s%s%s", scheme, host ? host : "", port ? ":" : "",
                     port ? port : "", path);
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return out;
}

int origin_file_open(origin *o, const origin_file_options *opts, const origin_sink *sink,
                     origin_file **out)
{
    if (o == NULL || opts == NULL || opts->url == NULL || sink == NULL || sink->on_data == NULL ||
        sink->on_done == NULL || out == NULL)
        return ORIGIN_EINVAL;
    if (opts->proxy_mode == ORIGIN_PROXY_EXPLICIT && opts->proxy == NULL)
        return ORIGIN_EINVAL;
    if (strncmp(opts->url, "http://", 7) != 0 && strncmp(opts->url, "https://", 8) != 0 &&
        strncmp(opts->url, "file://", 7) != 0)
        return ORIGIN_EPROTOCOL;
    if (opts->known_etag != NULL &&
        strlen(opts->known_etag) >= sizeof(((origin_file_info *)0)->etag))
        return ORIGIN_EINVAL;
    if (opts->known_last_modified != NULL &&
        strlen(opts->known_last_modified) >= sizeof(((origin_file_info *)0)->last_modified))
        return ORIGIN_EINVAL;

    origin_file *f = calloc(1, sizeof *f);
    if (f == NULL)
        return ORIGIN_ENOMEM;
    f->o = o;
    f->sink = *sink;
    f->is_file_scheme = strncmp(opts->url, "file://", 7) == 0;
    f->proxy_mode = opts->proxy_mode;
    f->connections = opts->connections ? opts->connections : 1;
    f->max_rate = opts->max_rate;
    f->info.size = opts->known_size >= 0 ? opts->known_size : -1;
    f->info.accepts_ranges = -1;
    if (opts->known_etag != NULL)
        snprintf(f->info.etag, sizeof f->info.etag, "%s", opts->known_etag);
    if (opts->known_last_modified != NULL)
        snprintf(f->info.last_modified, sizeof f->info.last_modified, "%s",
                 opts->known_last_modified);
    f->url = strdup(opts->url);
    f->shown_url = shown_url(opts->url);
    f->host = f->is_file_scheme ? NULL : host_of(opts->url);
    f->proxy = dup_or_null(opts->proxy);
    f->proxy_bypass = dup_or_null(opts->proxy_bypass);
    f->client_cert = dup_or_null(opts->client_cert);
    f->client_key = dup_or_null(opts->client_key);
    f->ca_file = dup_or_null(opts->ca_file);
    int failed = f->url == NULL || (opts->proxy && !f->proxy) ||
                 (opts->proxy_bypass && !f->proxy_bypass) ||
                 (opts->client_cert && !f->client_cert) || (opts->client_key && !f->client_key) ||
                 (opts->ca_file && !f->ca_file);
    int err = failed ? ORIGIN_ENOMEM : ORIGIN_OK;
    if (err == ORIGIN_OK && f->shown_url == NULL)
        err = ORIGIN_EINVAL; /* curl could not parse the URL */
    for (size_t i = 0; err == ORIGIN_OK && i < opts->n_headers; i++) {
        const char *h = opts->headers[i];
        if (h == NULL || strchr(h, ':') == NULL || strpbrk(h, "\r\n") != NULL) {
            err = ORIGIN_EINVAL;
            break;
        }
        struct curl_slist *n = curl_slist_append(f->headers, h);
        if (n == NULL)
            err = ORIGIN_ENOMEM;
        else
            f->headers = n;
    }
    if (err != ORIGIN_OK) {
        f->next_dead = o->dead_files;
        o->dead_files = f;
        if (o->depth == 0)
            bury_dead(o);
        return err;
    }
    f->prev = o->files_last;
    if (o->files_last != NULL)
        o->files_last->next = f;
    else
        o->files_first = f;
    o->files_last = f;
    *out = f;
    return ORIGIN_OK;
}

void origin_file_close(origin_file *f)
{
    if (f == NULL || f->closed)
        return;
    origin *o = f->o;
    f->closed = 1;
    while (f->first != NULL) {
        request *r = f->first;
        if (r->t != NULL)
            transfer_detach(r->t);
        request_unlink(r);
        request_free(r);
    }
    if (f->prev != NULL)
        f->prev->next = f->next;
    else
        o->files_first = f->next;
    if (f->next != NULL)
        f->next->prev = f->prev;
    else
        o->files_last = f->prev;
    f->next_dead = o->dead_files;
    o->dead_files = f;
    if (o->depth == 0)
        bury_dead(o);
}

const origin_file_info *origin_file_get_info(const origin_file *f)
{
    return &f->info;
}

static int add_request(origin_file *f, uint64_t offset, uint64_t end, int is_probe, uint64_t *id)
{
    if (f->closed)
        return ORIGIN_EINVAL;
    request *r = calloc(1, sizeof *r);
    if (r == NULL)
        return ORIGIN_ENOMEM;
    r->id = f->o->next_id++;
    r->f = f;
    r->offset = offset;
    r->end = end;
    r->is_probe = is_probe;
    r->prev = f->last;
    if (f->last != NULL)
        f->last->next = r;
    else
        f->first = r;
    f->last = r;
    if (id != NULL)
        *id = r->id;
    return ORIGIN_OK;
}

int origin_fetch(origin_file *f, uint64_t offset, uint64_t length, uint64_t *id)
{
    if (f == NULL || length == 0)
        return ORIGIN_EINVAL;
    uint64_t end = ORIGIN_TO_END;
    if (offset == ORIGIN_TO_END)
        return ORIGIN_EINVAL;
    if (length != ORIGIN_TO_END) {
        if (length > UINT64_MAX - 1 - offset) /* end must stay below ORIGIN_TO_END */
            return ORIGIN_EINVAL;
        end = offset + length;
    }
    return add_request(f, offset, end, 0, id);
}

int origin_probe(origin_file *f, uint64_t *id)
{
    if (f == NULL)
        return ORIGIN_EINVAL;
    return add_request(f, 0, 1, 1, id);
}

void origin_cancel(origin_file *f, uint64_t id)
{
    request *r = request_find(f, id);
    if (r == NULL)
        return;
    if (r->t != NULL)
        transfer_detach(r->t);
    request_unlink(r);
    request_free(r);
}

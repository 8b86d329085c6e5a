/*
 * origin: fetching byte ranges of remote files over HTTP(S) and file://,
 * with libcurl's multi interface.
 *
 * One `origin` is one event loop: a curl multi handle and the transfers it
 * drives. It belongs to the thread that calls origin_poll(); every function
 * here must be called from that thread, except origin_wakeup(). Callers open
 * an `origin_file` per remote file, ask for byte ranges, and receive
 * (offset, bytes) through the file's sink, then one completion per request.
 *
 * What it guarantees:
 *  - bytes are delivered in order within a request, each at its true offset,
 *    never beyond the range asked for, never from a response whose
 *    Content-Range, size or validators do not match;
 *  - once a file's size, ETag or Last-Modified is known (for file:// its
 *    modification time), every later request carries If-Range and every
 *    response is checked against them, so content that changes on the server
 *    ends requests with ORIGIN_ECHANGED instead of mixing two versions;
 *  - redirects are followed only to http and https, and custom headers are
 *    not sent to another host than the file's;
 *  - every failure is classified transient (try again later) or permanent,
 *    with the HTTP status, any Retry-After, and curl's own message.
 *
 * Error codes: 0 or ORIGIN_E* (range 200..299); origin_strerror() names them.
 */
#ifndef DOPA_ORIGIN_H
#define DOPA_ORIGIN_H

#include <stddef.h>
#include <stdint.h>

enum origin_err {
    ORIGIN_OK = 0,
    ORIGIN_ENOMEM = 200, /* out of memory */
    ORIGIN_EINVAL,       /* bad argument */
    ORIGIN_ECANCELED,    /* the request was cancelled by the caller */
    ORIGIN_EABORTED,     /* the sink refused the data */
    /* transient: worth trying again later */
    ORIGIN_ERESOLVE,      /* host name (or proxy) could not be resolved */
    ORIGIN_ECONNECT,      /* could not connect */
    ORIGIN_ETIMEOUT,      /* timed out, or slower than the low-speed limit */
    ORIGIN_ERECV,         /* connection reset or closed early */
    ORIGIN_ESERVER,       /* HTTP 5xx */
    ORIGIN_ETHROTTLED,    /* HTTP 429 (or 503 with Retry-After): wait and retry */
    ORIGIN_EBAD_RESPONSE, /* a response that contradicts the request */
    ORIGIN_ENORANGES,     /* a 200 for a range not at 0 (some CDNs do it on a miss) */
    /* permanent: retrying will not help */
    ORIGIN_ENOT_FOUND, /* 404, 410, or a missing file:// */
    ORIGIN_EFORBIDDEN, /* 401, 403 */
    ORIGIN_EHTTP,      /* another 4xx, 501, 505 */
    ORIGIN_ERANGE,     /* range beyond the end of the remote file (416) */
    ORIGIN_ECHANGED,   /* the remote content changed during the job */
    ORIGIN_ETLS,       /* TLS handshake or certificate verification failed */
    ORIGIN_EREDIRECT,  /* too many redirects, or one without a usable Location */
    ORIGIN_EPROTOCOL,  /* scheme not allowed (only http, https, file; redirects only http(s)) */
    ORIGIN_ETRANSFER,  /* another local or library failure */
    ORIGIN_ERR_END
};

/* The message for an ORIGIN_E* code; never NULL. */
const char *origin_strerror(int err);

/* True for the codes worth retrying later. */
int origin_err_is_transient(int err);

/* How a request ended. */
typedef struct origin_error {
    int code;          /* ORIGIN_E* */
    int is_transient;  /* origin_err_is_transient(code) */
    long http_status;  /* final HTTP status, 0 when there was none */
    long retry_after;  /* seconds the server asked for (Retry-After), else 0 */
    char message[512]; /* what happened, with the URL and curl's message */
} origin_error;

/* What is known about a remote file. */
typedef struct origin_file_info {
    int64_t size;           /* bytes, or -1 while unknown */
    char etag[256];         /* strong or weak ETag as sent, "" when none */
    char last_modified[64]; /* Last-Modified as sent, "" when none */
    int accepts_ranges;     /* 1 yes, 0 the server ignored a Range, -1 unknown */
    long http_version;      /* of the last response: 10, 11, 20, 30; 0 for file:// */
} origin_file_info;

enum origin_proxy_mode {
    ORIGIN_PROXY_SYSTEM, /* what the environment says (http_proxy, no_proxy, ...) */
    ORIGIN_PROXY_NONE,   /* connect directly, whatever the environment says */
    ORIGIN_PROXY_EXPLICIT,
};

typedef struct origin_file_options {
    const char *url; /* http://, https:// or file:// */
    enum origin_proxy_mode proxy_mode;
    const char *proxy;          /* for ORIGIN_PROXY_EXPLICIT: "http://host:port" */
    const char *proxy_bypass;   /* for ORIGIN_PROXY_EXPLICIT: "host1,host2,.domain" */
    const char *const *headers; /* extra request headers "Name: value" */
    size_t n_headers;
    const char *client_cert; /* PEM client certificate file, or NULL */
    const char *client_key;  /* its PEM private key, or NULL (then in client_cert) */
    const char *ca_file;     /* CA bundle; NULL for the system store */
    unsigned connections;    /* transfers at once for this file; 0 means 1 */
    uint64_t max_rate;       /* bytes/s per transfer; 0 for no limit */
    /* What an earlier run learned (a resumed job): later responses must
     * match. Leave size -1 and the strings NULL when nothing is known. */
    int64_t known_size;
    const char *known_etag;
    const char *known_last_modified;
} origin_file_options;

typedef struct origin origin;
typedef struct origin_file origin_file;

/* How a file reports to its owner. Callbacks run on the origin's thread,
 * inside origin_poll(). From any of them the caller may call origin_fetch,
 * origin_probe, origin_cancel, origin_file_open and origin_file_close (frees
 * are deferred to a safe point); it must not call origin_poll (which then
 * fails with ORIGIN_EINVAL) or origin_free. */
typedef struct origin_sink {
    /* The file's size or validators became known (optional). */
    void (*on_info)(void *ctx, origin_file *f, const origin_file_info *info);
    /* Bytes of request `id` at `offset`. Return 0 to go on; anything else
     * ends the request with ORIGIN_EABORTED. */
    int (*on_data)(void *ctx, origin_file *f, uint64_t id, uint64_t offset, const void *data,
                   size_t len);
    /* Request `id` ended: err is NULL on success, when every byte asked for
     * was delivered. Not called for cancelled requests. */
    void (*on_done)(void *ctx, origin_file *f, uint64_t id, const origin_error *err);
    void *ctx;
} origin_sink;

typedef struct origin_config {
    unsigned max_connections; /* transfers at once over all files; 0 means 16 */
    uint64_t max_rate;        /* bytes/s over all transfers; 0 for no limit */
    long connect_timeout_ms;  /* 0 means 30 s */
    long low_speed_limit;     /* bytes/s; a transfer slower than this ... */
    long low_speed_time;      /* ... for this many seconds fails; 0 means 60 s */
    unsigned max_redirects;   /* 0 means 10 */
    const char *user_agent;   /* NULL means "dopa/<version>" */
} origin_config;

/* Returns the configuration with every default filled in. */
origin_config origin_config_default(void);

int origin_new(const origin_config *cfg, origin **out);
/* Closes every file (without callbacks) and frees the loop. */
void origin_free(origin *o);

/* Runs the loop: waits up to timeout_ms for network activity (or a wakeup),
 * moves the transfers along, and runs the callbacks. Returns 0, ORIGIN_EINVAL
 * when called from a callback, or ORIGIN_ETRANSFER when libcurl's multi
 * interface fails. */
int origin_poll(origin *o, int timeout_ms);

/* Makes a concurrent or future origin_poll return early. The only function
 * that may be called from any thread. */
void origin_wakeup(origin *o);

/* Transfers running now (all files). */
unsigned origin_active(const origin *o);

/* Sets the overall rate limit (bytes/s over all transfers; 0: none) from
 * now on, for the transfers running and those to come; a running transfer
 * keeps the low-speed limit and receive buffer it started with. From the
 * origin's thread, callbacks included. */
void origin_set_max_rate(origin *o, uint64_t rate);

int origin_file_open(origin *o, const origin_file_options *opts, const origin_sink *sink,
                     origin_file **out);
/* Cancels the file's requests (without callbacks) and frees it. */
void origin_file_close(origin_file *f);

const origin_file_info *origin_file_get_info(const origin_file *f);

#define ORIGIN_TO_END UINT64_MAX

/* Asks for `length` bytes at `offset` (ORIGIN_TO_END: to the end of the file)
 * and returns the request's id (never 0). length 0 is refused. */
int origin_fetch(origin_file *f, uint64_t offset, uint64_t length, uint64_t *id);

/* Learns the file's size and validators without fetching its content:
 * on_info, then on_done for the returned request id. */
int origin_probe(origin_file *f, uint64_t *id);

/* Cancels a request: no more callbacks for it. Unknown ids are ignored. */
void origin_cancel(origin_file *f, uint64_t id);

#endif /* DOPA_ORIGIN_H */

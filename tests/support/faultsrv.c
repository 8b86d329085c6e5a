/* The misbehaving HTTP server; see faultsrv.h. One thread accepts, one
 * thread serves each connection; stop shuts every socket down and joins. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "faultsrv.h"
#include "nginx.h"

#define MAX_CONNS   256
#define ENDLESS_CAP (64ull * 1024 * 1024)

struct conn {
    test_faultsrv *srv;
    int fd;
    pthread_t thread;
    int used;
    int done; /* the thread finished; join it to reuse the slot */
};

struct test_faultsrv {
    int listen_fd;
    int port;
    pthread_t acceptor;
    pthread_mutex_t lock;
    int stopping;
    struct conn conns[MAX_CONNS];
    struct path_count {
        char path[64];
        int hits;
        char if_range[128];
        unsigned long long bytes; /* body bytes sent, counted when a response ends */
    } counts[64];
};

/* One response under way: where it goes and the body bytes sent so far. */
struct out {
    int fd;
    uint64_t sent;
};

static int send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Sends bytes [from, from + len) of the version made with `seed`. */
static int send_version(struct out *o, unsigned seed, uint64_t from, uint64_t len)
{
    unsigned char buf[16384];
    while (len > 0) {
        size_t k = len < sizeof buf ? (size_t)len : sizeof buf;
        test_pattern_fill(seed, (size_t)from, buf, k);
        if (send_all(o->fd, buf, k) != 0)
            return -1;
        o->sent += k;
        from += k;
        len -= k;
    }
    return 0;
}

static int send_pattern(struct out *o, uint64_t from, uint64_t len)
{
    return send_version(o, FAULT_SEED, from, len);
}

/* The counters of a path (the lock held); with `add`, a free slot is
 * taken for a path not seen yet. NULL when there is none (or no room). */
static struct path_count *count_of(test_faultsrv *s, const char *path, int add)
{
    for (size_t i = 0; i < sizeof s->counts / sizeof s->counts[0]; i++) {
        struct path_count *c = &s->counts[i];
        if (c->path[0] == '\0' && add)
            snprintf(c->path, sizeof c->path, "%s", path);
        if (strcmp(c->path, path) == 0)
            return c;
    }
    return NULL;
}

static int count_hit(test_faultsrv *s, const char *path, const char *if_range)
{
    pthread_mutex_lock(&s->lock);
    int n = 0;
    struct path_count *c = count_of(s, path, 1);
    if (c != NULL) {
        n = ++c->hits;
        snprintf(c->if_range, sizeof c->if_range, "%s", if_range);
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

void test_faultsrv_if_range(test_faultsrv *s, const char *path, char *out, size_t len)
{
    pthread_mutex_lock(&s->lock);
    const struct path_count *c = count_of(s, path, 0);
    snprintf(out, len, "%s", c != NULL ? c->if_range : "");
    pthread_mutex_unlock(&s->lock);
}

int test_faultsrv_hits(test_faultsrv *s, const char *path)
{
    pthread_mutex_lock(&s->lock);
    const struct path_count *c = count_of(s, path, 0);
    int n = c != NULL ? c->hits : 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}

unsigned long long test_faultsrv_bytes(test_faultsrv *s, const char *path)
{
    pthread_mutex_lock(&s->lock);
    const struct path_count *c = count_of(s, path, 0);
    unsigned long long n = c != NULL ? c->bytes : 0;
    pthread_mutex_unlock(&s->lock);
    return n;
}

static void add_bytes(test_faultsrv *s, const char *path, uint64_t n)
{
    pthread_mutex_lock(&s->lock);
    struct path_count *c = count_of(s, path, 0);
    if (c != NULL)
        c->bytes += n;
    pthread_mutex_unlock(&s->lock);
}

/* Reads one request head; fills path and the range (to = UINT64_MAX for
 * "a-" or when there is no Range; has_range says which). */
static int read_request(int fd, char *path, size_t path_len, uint64_t *from, uint64_t *to,
                        int *has_range, char *if_range, size_t if_range_len)
{
    char buf[8192];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL)
            break;
    }
    if (strncmp(buf, "GET /", 5) != 0)
        return -1;
    size_t n = strcspn(buf + 4, " \r\n");
    if (n >= path_len)
        return -1;
    memcpy(path, buf + 4, n);
    path[n] = '\0';
    if_range[0] = '\0';
    const char *ir = strcasestr(buf, "\r\nIf-Range: ");
    if (ir != NULL) {
        ir += strlen("\r\nIf-Range: ");
        size_t k = strcspn(ir, "\r\n");
        if (k >= if_range_len)
            k = if_range_len - 1;
        memcpy(if_range, ir, k);
        if_range[k] = '\0';
    }
    *has_range = 0;
    *from = 0;
    *to = UINT64_MAX;
    const char *r = strcasestr(buf, "\r\nRange: bytes=");
    if (r != NULL) {
        unsigned long long a, b;
        r += strlen("\r\nRange: bytes=");
        if (sscanf(r, "%llu-%llu", &a, &b) == 2) {
            *from = a;
            *to = b;
            *has_range = 1;
        } else if (sscanf(r, "%llu-", &a) == 1) {
            *from = a;
            *has_range = 1;
        }
    }
    return 0;
}

/* The answer to a range that starts at or past the end of a file. */
static void send_416(int fd, uint64_t size)
{
    char head[256];
    snprintf(head, sizeof head,
             "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%llu\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n",
             (unsigned long long)size);
    send_all(fd, head, strlen(head));
}

/* The fixed paths: the one file, misbehaving as the path says. */
static void answer(test_faultsrv *s, struct out *o, const char *path, uint64_t from, uint64_t to,
                   int hit)
{
    int fd = o->fd;
    char head[1024];
    const uint64_t size = FAULT_SIZE;
    if (to >= size)
        to = size - 1;
    uint64_t len = to >= from ? to - from + 1 : 0;
    const char *etag = "\"v1\"";
    char etag_buf[32];

    if (strcmp(path, "/503-date") == 0) {
        char date[64];
        time_t when = time(NULL) + 30;
        struct tm tm;
        gmtime_r(&when, &tm);
        strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        snprintf(head, sizeof head,
                 "HTTP/1.1 503 Busy\r\nRetry-After: %s\r\nContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n",
                 date);
        send_all(fd, head, strlen(head));
        return;
    }
    if (strcmp(path, "/empty416") == 0) {
        snprintf(head, sizeof head,
                 "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\n"
                 "Content-Length: 0\r\nConnection: close\r\n\r\n");
        send_all(fd, head, strlen(head));
        return;
    }
    if (strcmp(path, "/chunked200") == 0) {
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        if (send_all(fd, head, strlen(head)) != 0)
            return;
        for (uint64_t off = 0; off < size; off += 4096) {
            char line[32];
            snprintf(line, sizeof line, "%x\r\n", 4096);
            if (send_all(fd, line, strlen(line)) != 0 || send_pattern(o, off, 4096) != 0 ||
                send_all(fd, "\r\n", 2) != 0)
                return;
        }
        send_all(fd, "0\r\n\r\n", 5);
        return;
    }
    if (strcmp(path, "/429") == 0 || strcmp(path, "/503") == 0) {
        int code = atoi(path + 1);
        snprintf(head, sizeof head,
                 "HTTP/1.1 %d Busy\r\nRetry-After: %d\r\nContent-Length: 0\r\n"
                 "Connection: close\r\n\r\n",
                 code, code == 429 ? 3 : 7);
        send_all(fd, head, strlen(head));
        return;
    }
    if (strcmp(path, "/ignore-range") == 0 || strcmp(path, "/endless200") == 0 ||
        (strcmp(path, "/drop-etag") == 0 && hit > 1)) {
        int endless = strcmp(path, "/endless200") == 0;
        int with_etag = strcmp(path, "/ignore-range") == 0;
        char length[64] = "";
        if (!endless)
            snprintf(length, sizeof length, "Content-Length: %llu\r\n", (unsigned long long)size);
        snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\n%s%s%s%sConnection: close\r\n\r\n", length,
                 with_etag ? "ETag: " : "", with_etag ? etag : "", with_etag ? "\r\n" : "");
        if (send_all(fd, head, strlen(head)) == 0)
            send_pattern(o, 0, endless ? ENDLESS_CAP : size);
        return;
    }
    if (from >= size) {
        send_416(fd, size);
        return;
    }

    uint64_t cr_from = from, cr_to = to, total = size, body = len;
    char length_override[64] = "";
    char validators[256];
    snprintf(validators, sizeof validators, "ETag: %s\r\n", "\"v1\"");
    if (strcmp(path, "/wrong-start") == 0)
        cr_from = from + 1, body = len - 1;
    if (strcmp(path, "/bigger") == 0)
        cr_to = size - 1, body = size - from;
    if ((strcmp(path, "/short") == 0 || strcmp(path, "/short-changing") == 0) && len > 65536)
        cr_to = from + 65535, body = 65536;
    if (strcmp(path, "/short-changing") == 0 && hit > 1)
        snprintf(validators, sizeof validators, "ETag: \"s2\"\r\n");
    if (strcmp(path, "/lm-only") == 0)
        snprintf(validators, sizeof validators, "Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n");
    if (strcmp(path, "/weak-etag") == 0)
        snprintf(validators, sizeof validators,
                 "ETag: W/\"w1\"\r\nLast-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n");
    if (strcmp(path, "/cl-mismatch") == 0)
        snprintf(length_override, sizeof length_override, "Content-Length: %llu\r\n",
                 (unsigned long long)(2 * len));
    if (strcmp(path, "/overlong") == 0 && len > 100)
        cr_to = from + 99; /* and the body below runs on past it */
    if (strcmp(path, "/changing-size") == 0 && hit > 1)
        total = size + 1;
    if (strcmp(path, "/changing-etag") == 0) {
        snprintf(etag_buf, sizeof etag_buf, "\"e%d\"", hit);
        etag = etag_buf;
        snprintf(validators, sizeof validators, "ETag: %s\r\n", etag);
    }
    int endless = strcmp(path, "/endless") == 0 || strcmp(path, "/overlong") == 0;
    int star = strcmp(path, "/star") == 0;
    int chunked = strcmp(path, "/chunked") == 0;
    char length[64] = "";
    if (chunked)
        snprintf(length, sizeof length, "Transfer-Encoding: chunked\r\n");
    else if (length_override[0] != '\0')
        snprintf(length, sizeof length, "%s", length_override);
    else if (!endless)
        snprintf(length, sizeof length, "Content-Length: %llu\r\n", (unsigned long long)body);
    char total_text[32];
    snprintf(total_text, sizeof total_text, "%llu", (unsigned long long)total);
    snprintf(head, sizeof head,
             "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %llu-%llu/%s\r\n%s"
             "%sConnection: close\r\n\r\n",
             (unsigned long long)cr_from, (unsigned long long)cr_to, star ? "*" : total_text,
             length, validators);
    if (send_all(fd, head, strlen(head)) != 0)
        return;

    if (strcmp(path, "/close-mid") == 0) {
        send_pattern(o, from, len / 2);
    } else if (strcmp(path, "/overlong") == 0) {
        send_pattern(o, from, len > 100 ? 200 : len);
    } else if (endless) {
        send_pattern(o, from, ENDLESS_CAP);
    } else if (chunked) {
        for (uint64_t off = from; off <= to; off += 1000) {
            uint64_t k = to + 1 - off < 1000 ? to + 1 - off : 1000;
            char line[32];
            snprintf(line, sizeof line, "%llx\r\n", (unsigned long long)k);
            if (send_all(fd, line, strlen(line)) != 0 || send_pattern(o, off, k) != 0 ||
                send_all(fd, "\r\n", 2) != 0)
                return;
        }
        send_all(fd, "0\r\n\r\n", 5);
    } else if (strcmp(path, "/stall") == 0) {
        for (uint64_t off = from; off <= to; off++) {
            if (send_pattern(o, off, 1) != 0)
                return;
            for (int i = 0; i < 20; i++) {
                pthread_mutex_lock(&s->lock);
                int stop = s->stopping;
                pthread_mutex_unlock(&s->lock);
                if (stop)
                    return;
                struct timespec ts = {0, 100 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
    } else {
        send_pattern(o, cr_from, body);
    }
}

/* The /flip-MODE/TAG paths: a file that becomes version 2 once
 * FAULT_FLIP_AFTER body bytes have been sent for the path (see faultsrv.h). */
static void answer_flip(test_faultsrv *s, struct out *o, const char *path, uint64_t from,
                        uint64_t to, int has_range, const char *if_range)
{
    const char *mode = path + strlen("/flip-");
    int mid = strncmp(mode, "mid/", 4) == 0;
    int quiet = strncmp(mode, "quiet/", 6) == 0;
    int grow = strncmp(mode, "grow/", 5) == 0;
    uint64_t before = test_faultsrv_bytes(s, path);
    int v2 = before >= FAULT_FLIP_AFTER;
    uint64_t size = v2 && grow ? FAULT_SIZE2 : FAULT_SIZE;
    unsigned seed = v2 ? FAULT_SEED2 : FAULT_SEED;
    /* Only the honest modes say that the content changed. */
    const char *etag = v2 && !quiet && !mid ? "\"v2\"" : "\"v1\"";
    char head[512];

    if (!has_range || (if_range[0] != '\0' && strcmp(if_range, etag) != 0)) {
        /* What a server does when the If-Range no longer holds: the whole
         * current version. */
        snprintf(head, sizeof head,
                 "HTTP/1.1 200 OK\r\nContent-Length: %llu\r\nETag: %s\r\n"
                 "Connection: close\r\n\r\n",
                 (unsigned long long)size, etag);
        if (send_all(o->fd, head, strlen(head)) == 0)
            send_version(o, seed, 0, size);
        return;
    }
    if (from >= size) {
        send_416(o->fd, size);
        return;
    }
    if (to >= size)
        to = size - 1;
    if (!mid && to - from >= 65536)
        to = from + 65535; /* short responses: many requests, so the change falls among them */
    snprintf(head, sizeof head,
             "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %llu-%llu/%llu\r\n"
             "Content-Length: %llu\r\nETag: %s\r\nConnection: close\r\n\r\n",
             (unsigned long long)from, (unsigned long long)to, (unsigned long long)size,
             (unsigned long long)(to - from + 1), etag);
    if (send_all(o->fd, head, strlen(head)) != 0)
        return;
    uint64_t len = to - from + 1;
    if (mid) {
        /* The file is rewritten while this response runs: version 1 up to
         * the flip, version 2 after it, under the same ETag. */
        uint64_t old = before < FAULT_FLIP_AFTER ? FAULT_FLIP_AFTER - before : 0;
        if (old > len)
            old = len;
        if (send_version(o, FAULT_SEED, from, old) == 0)
            send_version(o, FAULT_SEED2, from + old, len - old);
        return;
    }
    send_version(o, seed, from, len);
}

static void respond(test_faultsrv *s, int fd)
{
    char path[64], if_range[128];
    uint64_t from, to;
    int has_range;
    if (read_request(fd, path, sizeof path, &from, &to, &has_range, if_range, sizeof if_range) != 0)
        return;
    int hit = count_hit(s, path, if_range);
    struct out o = {.fd = fd};
    if (strncmp(path, "/flip-", 6) == 0)
        answer_flip(s, &o, path, from, to, has_range, if_range);
    else
        answer(s, &o, path, from, to, hit);
    add_bytes(s, path, o.sent);
}

static void *serve(void *arg)
{
    struct conn *c = arg;
    respond(c->srv, c->fd);
    shutdown(c->fd, SHUT_WR);
    /* Let the client read everything before the close. */
    char sink[4096];
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    while (poll(&p, 1, 2000) > 0 && recv(c->fd, sink, sizeof sink, 0) > 0)
        ;
    pthread_mutex_lock(&c->srv->lock);
    c->done = 1;
    pthread_mutex_unlock(&c->srv->lock);
    return NULL;
}

static void *accept_loop(void *arg)
{
    test_faultsrv *s = arg;
    for (;;) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) {
            pthread_mutex_lock(&s->lock);
            int stop = s->stopping;
            pthread_mutex_unlock(&s->lock);
            if (stop)
                return NULL;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        pthread_mutex_lock(&s->lock);
        struct conn *c = NULL;
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *k = &s->conns[i];
            if (k->used && k->done) { /* reap a finished connection */
                pthread_join(k->thread, NULL);
                close(k->fd);
                k->used = k->done = 0;
            }
            if (!k->used && c == NULL)
                c = k;
        }
        if (c == NULL || s->stopping) {
            pthread_mutex_unlock(&s->lock);
            close(fd);
            continue;
        }
        c->used = 1;
        c->done = 0;
        c->fd = fd;
        c->srv = s;
        if (pthread_create(&c->thread, NULL, serve, c) != 0) {
            c->used = 0;
            close(fd);
        }
        pthread_mutex_unlock(&s->lock);
    }
}

test_faultsrv *test_faultsrv_start(void)
{
    test_faultsrv *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NULL;
    pthread_mutex_init(&s->lock, NULL);
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (s->listen_fd < 0 || bind(s->listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(s->listen_fd, 64) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &len) != 0 ||
        pthread_create(&s->acceptor, NULL, accept_loop, s) != 0) {
        if (s->listen_fd >= 0)
            close(s->listen_fd);
        free(s);
        return NULL;
    }
    s->port = ntohs(a.sin_port);
    return s;
}

int test_faultsrv_port(const test_faultsrv *s)
{
    return s->port;
}

void test_faultsrv_stop(test_faultsrv *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = 1;
    pthread_mutex_unlock(&s->lock);
    shutdown(s->listen_fd, SHUT_RDWR);
    pthread_join(s->acceptor, NULL);
    close(s->listen_fd);
    for (int i = 0; i < MAX_CONNS; i++) {
        if (!s->conns[i].used)
            continue;
        shutdown(s->conns[i].fd, SHUT_RDWR);
        pthread_join(s->conns[i].thread, NULL);
        close(s->conns[i].fd);
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/*
 * A real nginx for tests: started on free loopback ports with its own
 * configuration and directories under a test's temporary directory, in the
 * foreground without a master process, and stopped by its pid.
 */
#ifndef DOPA_TEST_NGINX_H
#define DOPA_TEST_NGINX_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct test_nginx {
    pid_t pid;
    int port;        /* plain HTTP on 127.0.0.1 */
    int tls_port;    /* HTTPS (HTTP/2 enabled) when TLS was asked for, else 0 */
    int extra_port;  /* a further free port, written where the config says {PORT2} */
    char dir[512];   /* nginx's prefix: conf, logs, temp files */
    char root[600];  /* document root: dir/www */
    char certs[600]; /* with TLS: dir/certs (ca.pem, server.pem, client.pem, client.key) */
} test_nginx;

/* Where to put extra configuration. `server` goes inside the plain server
 * block (and the TLS one), `http` inside the http block; in both, {PORT2}
 * stands for extra_port, picked afresh on each start attempt. */
typedef struct test_nginx_config {
    const char *server;
    const char *http;
    int tls;           /* also serve HTTPS with a test CA */
    int tls_client_ca; /* with tls: ask for (not demand) a client certificate
                        * from the test CA; $ssl_client_verify tells */
} test_nginx_config;

/* Starts nginx under `dir` (created if needed). Returns 0, or -1 with a
 * message on stderr (nginx missing, failed to start, ...). */
int test_nginx_start(test_nginx *n, const char *dir, const test_nginx_config *cfg);

/* Stops nginx (SIGTERM, then SIGKILL after 5 s) and reaps it. */
void test_nginx_stop(test_nginx *n);

/* The body bytes nginx has sent for `uri` so far, from the log of every
 * response it keeps in dir/bytes.log (written a moment after each). */
long long test_nginx_bytes_sent(const test_nginx *n, const char *uri);

/* Writes `len` deterministic pseudo-random bytes (from `seed`) to the
 * document root under `name`; returns 0 or -1. */
int test_nginx_put(const test_nginx *n, const char *name, size_t len, unsigned seed);

/* Sets a served file's modification time (which nginx's ETag follows). */
int test_nginx_set_mtime(const test_nginx *n, const char *name, long mtime);

/* The byte test_nginx_put writes at `offset` for `seed`. */
unsigned char test_pattern_byte(unsigned seed, size_t offset);

/* Fills buf with the pattern bytes [offset, offset + len). */
void test_pattern_fill(unsigned seed, size_t offset, unsigned char *buf, size_t len);

/* Compares bytes [offset, offset + len) of the file at path with the
 * pattern of `seed`. Returns 0 when they are equal; 1 when one differs or
 * the file ends first, with *at (if not NULL) the first such offset; -1
 * when the file cannot be read. */
int test_pattern_differs(const char *path, unsigned seed, uint64_t offset, uint64_t len,
                         uint64_t *at);

/* A free TCP port on 127.0.0.1 (free when asked; may be taken later). */
int test_free_port(void);

#endif

/* The nginx test fixture; see nginx.h. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "nginx.h"

#define NGINX_BIN "/usr/sbin/nginx"

unsigned char test_pattern_byte(unsigned seed, size_t offset)
{
    uint64_t x = (uint64_t)offset * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 31;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 29;
    return (unsigned char)x;
}

void test_pattern_fill(unsigned seed, size_t offset, unsigned char *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = test_pattern_byte(seed, offset + i);
}

int test_pattern_differs(const char *path, unsigned seed, uint64_t offset, uint64_t len,
                         uint64_t *at)
{
    const size_t size = 1 << 16;
    unsigned char *buf = malloc(size);
    int fd = buf != NULL ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0) {
        free(buf);
        return -1;
    }
    uint64_t done = 0;
    int result = 0;
    while (done < len) {
        size_t want = len - done < size ? (size_t)(len - done) : size;
        ssize_t n = pread(fd, buf, want, (off_t)(offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            result = -1;
            break;
        }
        for (size_t i = 0; i < (size_t)n && result == 0; i++)
            if (buf[i] != test_pattern_byte(seed, (size_t)(offset + done + i))) {
                result = 1;
                done += i;
            }
        if (result != 0)
            break;
        if (n == 0) {
            result = 1; /* the file ends first */
            break;
        }
        done += (uint64_t)n;
    }
    close(fd);
    free(buf);
    if (result == 1 && at != NULL)
        *at = offset + done;
    return result;
}

int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

static int can_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int run_quiet(const char *cmd)
{
    int rc = system(cmd);
    return rc == 0 ? 0 : -1;
}

/* A CA, a server certificate for 127.0.0.1/localhost and a client
 * certificate, made with the openssl command line. */
static int make_certs(const char *dir)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "set -e; cd '%s'; exec >openssl.log 2>&1;"
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=dopa-test-ca "
             "  -keyout ca.key -out ca.pem;"
             "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
             "  -out server.csr;"
             "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' >server.ext;"
             "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "  -extfile server.ext -out server.pem;"
             "openssl req -newkey rsa:2048 -nodes -subj /CN=dopa-test-client -keyout client.key "
             "  -out client.csr;"
             "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
             "  -out client.pem",
             dir);
    return run_quiet(cmd);
}

/* Copies text with every "{PORT2}" replaced by the port. */
static char *with_port(const char *text, int port)
{
    size_t len = strlen(text), count = 0;
    for (const char *p = strstr(text, "{PORT2}"); p != NULL; p = strstr(p + 1, "{PORT2}"))
        count++;
    char *out = malloc(len + count * 8 + 1), *o = out;
    if (out == NULL)
        return NULL;
    for (const char *p = text; *p;) {
        if (strncmp(p, "{PORT2}", 7) == 0) {
            o += sprintf(o, "%d", port);
            p += 7;
        } else {
            *o++ = *p++;
        }
    }
    *o = '\0';
    return out;
}

static int write_config(test_nginx *n, const test_nginx_config *cfg)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/nginx.conf", n->dir);
    char *server = with_port(cfg && cfg->server ? cfg->server : "", n->extra_port);
    char *http = with_port(cfg && cfg->http ? cfg->http : "", n->extra_port);
    FILE *f = server && http ? fopen(path, "w") : NULL;
    if (f == NULL) {
        free(server);
        free(http);
        return -1;
    }
    fprintf(f,
            "daemon off;\n"
            "master_process off;\n"
            "error_log %s/error.log info;\n"
            "pid %s/nginx.pid;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            "  access_log %s/access.log;\n"
            "  log_format bytes '$uri $status $body_bytes_sent';\n"
            "  access_log %s/bytes.log bytes;\n"
            "  client_body_temp_path %s/tmp/body;\n"
            "  proxy_temp_path %s/tmp/proxy;\n"
            "  fastcgi_temp_path %s/tmp/fastcgi;\n"
            "  uwsgi_temp_path %s/tmp/uwsgi;\n"
            "  scgi_temp_path %s/tmp/scgi;\n"
            "  default_type application/octet-stream;\n"
            "  sendfile on;\n"
            "  keepalive_requests 100000;\n"
            "  %s\n"
            "  server {\n"
            "    listen 127.0.0.1:%d;\n"
            "    root %s;\n"
            "    %s\n"
            "  }\n",
            n->dir, n->dir, n->dir, n->dir, n->dir, n->dir, n->dir, n->dir, n->dir, http, n->port,
            n->root, server);
    char client[1400] = "";
    if (n->tls_port != 0 && cfg->tls_client_ca)
        snprintf(client, sizeof client,
                 "ssl_client_certificate %s/ca.pem; ssl_verify_client optional;", n->certs);
    if (n->tls_port != 0)
        fprintf(f,
                "  server {\n"
                "    listen 127.0.0.1:%d ssl http2;\n"
                "    root %s;\n"
                "    ssl_certificate %s/server.pem;\n"
                "    ssl_certificate_key %s/server.key;\n"
                "    %s\n"
                "    %s\n"
                "  }\n",
                n->tls_port, n->root, n->certs, n->certs, client, server);
    fprintf(f, "}\n");
    free(server);
    free(http);
    return fclose(f);
}

int test_nginx_start(test_nginx *n, const char *dir, const test_nginx_config *cfg)
{
    memset(n, 0, sizeof *n);
    if (access(NGINX_BIN, X_OK) != 0) {
        fprintf(stderr, "nginx not found at " NGINX_BIN ": run tools/install-deps test\n");
        return -1;
    }
    snprintf(n->dir, sizeof n->dir, "%s", dir);
    snprintf(n->root, sizeof n->root, "%s/www", dir);
    snprintf(n->certs, sizeof n->certs, "%s/certs", dir);
    char path[1024];
    mkdir(dir, 0755);
    mkdir(n->root, 0755);
    snprintf(path, sizeof path, "%s/tmp", dir);
    mkdir(path, 0755);
    if (cfg != NULL && cfg->tls) {
        mkdir(n->certs, 0755);
        if (make_certs(n->certs) != 0) {
            fprintf(stderr, "could not make test certificates (see %s/openssl.log)\n", n->certs);
            return -1;
        }
    }

    for (int attempt = 0; attempt < 5; attempt++) {
        n->port = test_free_port();
        n->tls_port = cfg != NULL && cfg->tls ? test_free_port() : 0;
        n->extra_port = test_free_port();
        if (n->port < 0 || n->tls_port < 0 || write_config(n, cfg) != 0)
            return -1;
        char conf[1024], err[1024];
        snprintf(conf, sizeof conf, "%s/nginx.conf", dir);
        snprintf(err, sizeof err, "%s/stderr.log", dir);
        pid_t pid = fork();
        if (pid < 0)
            return -1;
        if (pid == 0) {
            /* If the test process dies, nginx goes with it. */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            int fd = open(err, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
            }
            execl(NGINX_BIN, "nginx", "-p", dir, "-c", conf, "-e", err, (char *)NULL);
            _exit(127);
        }
        n->pid = pid;
        for (int i = 0; i < 500; i++) {
            int status;
            if (waitpid(pid, &status, WNOHANG) == pid) {
                n->pid = 0;
                break; /* exited: maybe the port was taken; try another */
            }
            int wants_extra = cfg != NULL && cfg->http != NULL && strstr(cfg->http, "{PORT2}");
            if (can_connect(n->port) && (n->tls_port == 0 || can_connect(n->tls_port)) &&
                (!wants_extra || can_connect(n->extra_port)))
                return 0;
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        if (n->pid != 0) {
            test_nginx_stop(n);
            break;
        }
    }
    fprintf(stderr, "nginx did not start; see %s/stderr.log and %s/error.log\n", dir, dir);
    return -1;
}

void test_nginx_stop(test_nginx *n)
{
    if (n->pid <= 0)
        return;
    kill(n->pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(n->pid, NULL, WNOHANG) == n->pid) {
            n->pid = 0;
            return;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(n->pid, SIGKILL);
    waitpid(n->pid, NULL, 0);
    n->pid = 0;
}

int test_nginx_put(const test_nginx *n, const char *name, size_t len, unsigned seed)
{
    char path[1024], tmp[1100];
    snprintf(path, sizeof path, "%s/%s", n->root, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (f == NULL)
        return -1;
    unsigned char buf[65536];
    for (size_t off = 0; off < len; off += sizeof buf) {
        size_t k = len - off < sizeof buf ? len - off : sizeof buf;
        test_pattern_fill(seed, off, buf, k);
        if (fwrite(buf, 1, k, f) != k) {
            fclose(f);
            return -1;
        }
    }
    if (fclose(f) != 0)
        return -1;
    /* Replace atomically, as a publisher would; the new inode gets a new
     * mtime and so a new ETag. */
    return rename(tmp, path);
}

int test_nginx_set_mtime(const test_nginx *n, const char *name, long mtime)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", n->root, name);
    struct timeval tv[2] = {{.tv_sec = mtime}, {.tv_sec = mtime}};
    return utimes(path, tv);
}

long long test_nginx_bytes_sent(const test_nginx *n, const char *uri)
{
    char path[700], line[2048];
    snprintf(path, sizeof path, "%s/bytes.log", n->dir);
    FILE *f = fopen(path, "r");
    long long total = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof line, f) != NULL) {
        char u[1024];
        long long bytes;
        int status;
        if (sscanf(line, "%1023s %d %lld", u, &status, &bytes) == 3 && strcmp(u, uri) == 0)
            total += bytes;
    }
    fclose(f);
    return total;
}

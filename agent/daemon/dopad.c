/*
 * dopad: the dopa daemon. Runs in the foreground, logs to stderr, keeps its
 * jobs under a state directory and listens on a control socket. As root it
 * is the system instance (/run/dopa/control.sock, /var/lib/dopa); as
 * another user, a per-user instance ($XDG_RUNTIME_DIR/dopa/control.sock,
 * $XDG_STATE_HOME/dopa). SIGTERM and SIGINT stop it cleanly; SIGHUP reads
 * the configuration again.
 *
 * Settings come from the command line, else from the configuration file
 * (--config, or /etc/dopa/dopa.conf for the system instance and
 * $XDG_CONFIG_HOME/dopa/dopa.conf for a user's, when they exist), else
 * from the defaults. The file is INI, read with inih; a bad line stops
 * dopad with the file name and line number. On SIGHUP the same file is
 * read and checked whole before anything changes: a bad one is logged with
 * its file and line and the running settings stay; from a good one, the
 * settings that can change at run time apply, and the others are logged as
 * needing a restart and keep their value.
 *
 * Under systemd (Type=notify) dopad tells the service manager when it is
 * ready, reloading and stopping, with a status line of its jobs and peers.
 *
 * With [metrics] listen it also serves its counters to Prometheus over HTTP
 * (agent/daemon/metrics.c); its main loop answers those requests after each
 * engine turn.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <ini.h>
#include <libgen.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* The engine's run-time setters and counters (engine_reconfigure,
 * engine_stats) are dopad's alone, so they live in the internal header. */
#include "engine_internal.h"

#define MAX_KEYS  32
#define MAX_PEERS 64

/* dopad's exit statuses, as dopad(8) and --help list them. */
enum exit_code {
    EXIT_OK = 0,    /* stopped by SIGTERM or SIGINT */
    EXIT_START = 1, /* could not start: state directory, lock, database, socket */
    EXIT_USAGE = 2, /* a bad option or setting, an unreadable configuration or group key */
};

static atomic_int stopping, reload_wanted;
static agent_engine *engine;
static metrics *metrics_server; /* the metrics endpoint, NULL when off */
static int64_t started_ms;      /* wall clock */

/* What the command line or the configuration file set. */
struct settings {
    char socket[4096];
    char state_dir[4096];
    unsigned max_running;
    uint64_t inactivity_ms;
    validate_public_key keys[MAX_KEYS];
    size_t n_keys;
    char plugin_dir[4096];
    char validate_helper[4096];
    int64_t plugin_timeout_ms;
    int64_t notify_retry_ms, notify_retry_max_ms, notify_command_timeout_ms;
    uint64_t origin_rate;
    /* [peers] */
    char group_key[4096];
    char tls_cert[4096], tls_key[4096], tls_ca[4096];
    char listen[PEER_URL_MAX + 1];
    char peers[MAX_PEERS][PEER_URL_MAX + 1];
    size_t n_peers;
    char cache_hosts[MAX_PEERS][PEER_URL_MAX + 1];
    size_t n_cache_hosts;
    int is_cache_host, beacons; /* beacons: 0 unset, 1 on, 2 off */
    char beacon_group[64];
    unsigned long beacon_port;
    int64_t beacon_interval_ms, piece_timeout_ms, ban_ms;
    uint64_t upload_rate, cache_bytes;
    int has_cache_size;
    int64_t cache_age_ms;
    unsigned long max_connections, max_queued, in_flight, ban_after;
    char peer_keys[512]; /* the [peers] keys given, "a, b": named when they do nothing */
    /* [metrics] */
    char metrics_listen[METRICS_LISTEN_MAX + 1]; /* "" when off */
    char error[600];                             /* the first bad setting */
};

static int set_max_running(struct settings *s, const char *v)
{
    char *end;
    unsigned long n = strtoul(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || n == 0 || n > 64) {
        snprintf(s->error, sizeof s->error, "max-running %s: need 1 to 64", v);
        return -1;
    }
    s->max_running = (unsigned)n;
    return 0;
}

/* A duration in seconds ("90", "0.5") between min_ms and max_ms. */
static int set_seconds(struct settings *s, const char *name, const char *v, int64_t min_ms,
                       int64_t max_ms, int64_t *out)
{
    char *end;
    errno = 0;
    double ms = strtod(v, &end) * 1000;
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || !isfinite(ms) ||
        ms < (double)min_ms || ms > (double)max_ms) {
        snprintf(s->error, sizeof s->error, "%s %s: need seconds, from %g to %g", name, v,
                 (double)min_ms / 1000, (double)max_ms / 1000);
        return -1;
    }
    *out = (int64_t)ms;
    return 0;
}

static int set_inactivity(struct settings *s, const char *v)
{
    int64_t ms;
    if (set_seconds(s, "inactivity-timeout", v, 1000, 10ll * 365 * 24 * 3600 * 1000, &ms) != 0)
        return -1;
    s->inactivity_ms = (uint64_t)ms;
    return 0;
}

static int add_key(struct settings *s, const char *v)
{
    char why[512];
    if (s->n_keys == MAX_KEYS) {
        snprintf(s->error, sizeof s->error, "at most %d trusted keys", MAX_KEYS);
        return -1;
    }
    if (strncmp(v, "dopa-pub1:", 10) == 0) {
        if (validate_public_key_parse(v, &s->keys[s->n_keys]) != VALIDATE_OK) {
            snprintf(s->error, sizeof s->error, "trusted-key %s: not a dopa public key", v);
            return -1;
        }
    } else if (validate_public_key_load(v, &s->keys[s->n_keys], why, sizeof why) != VALIDATE_OK) {
        /* The loader's own words: a file that is missing, unreadable or too
         * big, memory that ran out, or not a key. */
        snprintf(s->error, sizeof s->error, "trusted-key: %s", why);
        return -1;
    }
    s->n_keys++;
    return 0;
}

static int set_path(struct settings *s, char *dst, size_t len, const char *name, const char *v)
{
    if (v[0] != '/' || strlen(v) >= len) {
        snprintf(s->error, sizeof s->error, "%s %s: need an absolute path", name, v);
        return -1;
    }
    snprintf(dst, len, "%s", v);
    return 0;
}

static int set_count(struct settings *s, const char *name, const char *v, unsigned long min,
                     unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || n < min || n > max) {
        snprintf(s->error, sizeof s->error, "%s %s: need a whole number from %lu to %lu", name, v,
                 min, max);
        return -1;
    }
    *out = n;
    return 0;
}

static int set_bool(struct settings *s, const char *name, const char *v, int *out)
{
    if (strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "on") == 0)
        *out = 1;
    else if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 || strcmp(v, "off") == 0)
        *out = 0;
    else {
        snprintf(s->error, sizeof s->error, "%s %s: need yes or no", name, v);
        return -1;
    }
    return 0;
}

/* Bytes (or bytes per second), with an optional K, M or G (powers of 1000). */
static int set_bytes(struct settings *s, const char *name, const char *v, const char *what,
                     uint64_t *out)
{
    char *end;
    errno = 0;
    double n = strtod(v, &end);
    double unit = 1;
    if (*end == 'K' || *end == 'k')
        unit = 1e3, end++;
    else if (*end == 'M' || *end == 'm')
        unit = 1e6, end++;
    else if (*end == 'G' || *end == 'g')
        unit = 1e9, end++;
    if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0 || !isfinite(n) || n * unit > 1e12) {
        snprintf(s->error, sizeof s->error, "%s %s: need %s, such as 5000000 or 5M", name, v, what);
        return -1;
    }
    *out = (uint64_t)(n * unit);
    return 0;
}

static int set_url(struct settings *s, const char *name, const char *v, char *dst, size_t len)
{
    if ((strncmp(v, "tcp://", 6) != 0 && strncmp(v, "tls+tcp://", 10) != 0) || strlen(v) >= len ||
        strrchr(v, ':') == v + (strncmp(v, "tcp", 3) == 0 ? 3 : 7)) {
        snprintf(s->error, sizeof s->error, "%s %s: need tcp://HOST:PORT", name, v);
        return -1;
    }
    snprintf(dst, len, "%s", v);
    return 0;
}

static int add_url(struct settings *s, const char *name, const char *v,
                   char (*list)[PEER_URL_MAX + 1], size_t *n)
{
    if (*n == MAX_PEERS) {
        snprintf(s->error, sizeof s->error, "at most %d %s entries", MAX_PEERS, name);
        return -1;
    }
    if (set_url(s, name, v, list[*n], PEER_URL_MAX + 1) != 0)
        return -1;
    (*n)++;
    return 0;
}

/* One "name = value" of [peers]. */
static int peer_setting(struct settings *s, const char *name, const char *v)
{
    if (strcmp(name, "group-key") == 0)
        return set_path(s, s->group_key, sizeof s->group_key, name, v);
    if (strcmp(name, "tls-cert") == 0)
        return set_path(s, s->tls_cert, sizeof s->tls_cert, name, v);
    if (strcmp(name, "tls-key") == 0)
        return set_path(s, s->tls_key, sizeof s->tls_key, name, v);
    if (strcmp(name, "tls-ca") == 0)
        return set_path(s, s->tls_ca, sizeof s->tls_ca, name, v);
    if (strcmp(name, "listen") == 0)
        return set_url(s, name, v, s->listen, sizeof s->listen);
    if (strcmp(name, "peer") == 0)
        return add_url(s, name, v, s->peers, &s->n_peers);
    if (strcmp(name, "cache-host") == 0)
        return add_url(s, name, v, s->cache_hosts, &s->n_cache_hosts);
    if (strcmp(name, "is-cache-host") == 0)
        return set_bool(s, name, v, &s->is_cache_host);
    if (strcmp(name, "beacons") == 0) {
        int on;
        if (set_bool(s, name, v, &on) != 0)
            return -1;
        s->beacons = on ? 1 : 2;
        return 0;
    }
    if (strcmp(name, "beacon-group") == 0) {
        struct in_addr a;
        if (inet_pton(AF_INET, v, &a) != 1 || (ntohl(a.s_addr) >> 28) != 14) {
            snprintf(s->error, sizeof s->error, "%s %s: need an IPv4 multicast address", name, v);
            return -1;
        }
        snprintf(s->beacon_group, sizeof s->beacon_group, "%s", v);
        return 0;
    }
    if (strcmp(name, "beacon-port") == 0)
        return set_count(s, name, v, 1, 65535, &s->beacon_port);
    if (strcmp(name, "beacon-interval") == 0)
        return set_seconds(s, name, v, 100, 3600 * 1000, &s->beacon_interval_ms);
    if (strcmp(name, "upload-rate") == 0)
        return set_bytes(s, name, v, "bytes per second (0: no limit)", &s->upload_rate);
    if (strcmp(name, "cache-size") == 0) {
        s->has_cache_size = 1;
        return set_bytes(s, name, v, "bytes (0: no cache)", &s->cache_bytes);
    }
    if (strcmp(name, "cache-age") == 0)
        return set_seconds(s, name, v, 1000, 3650ll * 24 * 3600 * 1000, &s->cache_age_ms);
    if (strcmp(name, "max-connections") == 0)
        return set_count(s, name, v, 1, 4096, &s->max_connections);
    if (strcmp(name, "max-queued") == 0)
        return set_count(s, name, v, 1, 16, &s->max_queued);
    if (strcmp(name, "requests-in-flight") == 0)
        return set_count(s, name, v, 1, 64, &s->in_flight);
    if (strcmp(name, "piece-timeout") == 0)
        return set_seconds(s, name, v, 100, 600 * 1000, &s->piece_timeout_ms);
    if (strcmp(name, "ban-after") == 0)
        return set_count(s, name, v, 1, 1000, &s->ban_after);
    if (strcmp(name, "ban-time") == 0)
        return set_seconds(s, name, v, 1000, 30ll * 24 * 3600 * 1000, &s->ban_ms);
    snprintf(s->error, sizeof s->error, "unknown setting %s in [peers]", name);
    return -1;
}

/* One "name = value" of [metrics]. */
static int metrics_setting(struct settings *s, const char *name, const char *v)
{
    if (strcmp(name, "listen") == 0) {
        char host[METRICS_LISTEN_MAX + 1];
        unsigned port;
        int loopback;
        if (metrics_parse_listen(v, host, sizeof host, &port, &loopback) != 0) {
            snprintf(s->error, sizeof s->error,
                     "%s %s: need ADDRESS:PORT with a numeric address, such as 127.0.0.1:9464 "
                     "or [::1]:9464",
                     name, v);
            return -1;
        }
        snprintf(s->metrics_listen, sizeof s->metrics_listen, "%s", v);
        return 0;
    }
    snprintf(s->error, sizeof s->error, "unknown setting %s in [metrics]", name);
    return -1;
}

/* The value without a trailing comment. inih ends a value at a ";" that
 * follows a blank, but not at a "#" (as the library is built, and it
 * cannot be told at run time everywhere): a "#" that starts the value or
 * follows a blank starts a comment too, as it does at the start of a line.
 * A "#" inside a word ("tcp://h:1#x") is part of the value. */
static const char *without_comment(const char *value, char *buf, size_t len)
{
    snprintf(buf, len, "%s", value);
    for (char *p = buf; *p != '\0'; p++)
        if (*p == '#' && (p == buf || p[-1] == ' ' || p[-1] == '\t')) {
            *p = '\0';
            break;
        }
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = '\0';
    return buf;
}

/* Remembers that a [peers] key was given (once each). */
static void note_peer_key(struct settings *s, const char *name)
{
    size_t n = strlen(s->peer_keys), k = strlen(name);
    for (const char *p = s->peer_keys; (p = strstr(p, name)) != NULL; p += k)
        if ((p == s->peer_keys || p[-1] == ' ') && (p[k] == ',' || p[k] == '\0'))
            return;
    snprintf(s->peer_keys + n, sizeof s->peer_keys - n, "%s%s", n ? ", " : "", name);
}

/* inih's callback: one "name = value" of a section. Returns 0 to mark
 * the line as bad (the first bad line's message is kept). */
static int on_setting(void *user, const char *section, const char *name, const char *raw)
{
    struct settings *s = user;
    char saved[sizeof s->error], buf[4200];
    snprintf(saved, sizeof saved, "%s", s->error);
    const char *value = without_comment(raw, buf, sizeof buf);
    int rc;
    if (value[0] == '\0') {
        snprintf(s->error, sizeof s->error, "%s: no value", name);
        rc = -1;
    } else if (strcmp(section, "peers") == 0) {
        rc = peer_setting(s, name, value);
        if (rc == 0)
            note_peer_key(s, name);
    } else if (strcmp(section, "metrics") == 0) {
        rc = metrics_setting(s, name, value);
    } else if (strcmp(section, "dopad") != 0) {
        snprintf(s->error, sizeof s->error, "unknown section [%s]", section);
        rc = -1;
    } else if (strcmp(name, "socket") == 0) {
        rc = set_path(s, s->socket, sizeof s->socket, name, value);
    } else if (strcmp(name, "state-dir") == 0) {
        rc = set_path(s, s->state_dir, sizeof s->state_dir, name, value);
    } else if (strcmp(name, "max-running") == 0) {
        rc = set_max_running(s, value);
    } else if (strcmp(name, "inactivity-timeout") == 0) {
        rc = set_inactivity(s, value);
    } else if (strcmp(name, "trusted-key") == 0) {
        rc = add_key(s, value);
    } else if (strcmp(name, "plugin-dir") == 0) {
        rc = set_path(s, s->plugin_dir, sizeof s->plugin_dir, name, value);
    } else if (strcmp(name, "validate-helper") == 0) {
        rc = set_path(s, s->validate_helper, sizeof s->validate_helper, name, value);
    } else if (strcmp(name, "plugin-timeout") == 0) {
        rc = set_seconds(s, name, value, 100, 3600 * 1000, &s->plugin_timeout_ms);
    } else if (strcmp(name, "notify-retry") == 0) {
        rc = set_seconds(s, name, value, 10, 24 * 3600 * 1000, &s->notify_retry_ms);
    } else if (strcmp(name, "notify-retry-max") == 0) {
        rc = set_seconds(s, name, value, 10, 7 * 24 * 3600 * 1000ll, &s->notify_retry_max_ms);
    } else if (strcmp(name, "notify-command-timeout") == 0) {
        rc = set_seconds(s, name, value, 100, 24 * 3600 * 1000, &s->notify_command_timeout_ms);
    } else if (strcmp(name, "origin-rate") == 0) {
        rc = set_bytes(s, name, value, "bytes per second (0: no limit)", &s->origin_rate);
    } else {
        snprintf(s->error, sizeof s->error, "unknown setting %s in [dopad]", name);
        rc = -1;
    }
    if (rc != 0 && saved[0] != '\0')
        snprintf(s->error, sizeof s->error, "%s", saved); /* keep the first */
    return rc == 0;
}

/* Reads the configuration file into s; explicit says a missing file is an
 * error. On failure msg says what is wrong, with the file and line. */
static int read_config(const char *path, int explicit, struct settings *s, char *msg, size_t len)
{
    struct stat st;
    if (!explicit && stat(path, &st) != 0)
        return 0;
    int line = ini_parse(path, on_setting, s);
    if (line == -1) {
        snprintf(msg, len, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (line == -2) {
        snprintf(msg, len, "%s: out of memory", path);
        return -1;
    }
    if (line > 0) {
        snprintf(msg, len, "%s:%d: %s", path, line,
                 s->error[0] ? s->error : "not a \"name = value\" line");
        return -1;
    }
    return 0;
}

static const char usage_text[] =
    "usage: dopad [options]\n"
    "  --socket PATH              control socket (default: /run/dopa/control.sock as root,\n"
    "                             else $XDG_RUNTIME_DIR/dopa/control.sock)\n"
    "  --state-dir DIR            jobs database (default: /var/lib/dopa as root,\n"
    "                             else $XDG_STATE_HOME/dopa or ~/.local/state/dopa)\n"
    "  --max-running N            jobs transferring at once (default 4)\n"
    "  --inactivity-timeout SECS  cancel jobs untouched this long (default 90 days)\n"
    "  --trusted-key KEY          a publisher key (file or dopa-pub1:...) whose manifests\n"
    "                             are accepted; repeat for more\n"
    "  --config FILE              settings file (INI, section [dopad]; keys: socket,\n"
    "                             state-dir, max-running, inactivity-timeout, trusted-key,\n"
    "                             plugin-dir, plugin-timeout, validate-helper, notify-retry,\n"
    "                             notify-retry-max, notify-command-timeout; section\n"
    "                             [peers]: group-key, listen, peer, cache-host, ...;\n"
    "                             section [metrics]: listen (ADDRESS:PORT of the\n"
    "                             Prometheus endpoint, off by default);\n"
    "                             every key is in dopa.conf(5));\n"
    "                             default /etc/dopa/dopa.conf as root, else\n"
    "                             $XDG_CONFIG_HOME/dopa/dopa.conf, when it exists\n"
    "  --check                    read the configuration (and the keys it names), say\n"
    "                             whether it is good, and exit (status 0 or 2)\n"
    "  --help                     this text\n"
    "  --version                  print dopad's version\n"
    "\n"
    "signals: SIGTERM or SIGINT stop dopad; SIGHUP reads the configuration file again.\n"
    "exit status: 0 stopped by a signal; 1 could not start (state directory, lock,\n"
    "database, socket); 2 bad option, setting, configuration file or group key.\n";

/* ------------------------------------------------------------------ */
/* The service manager (sd_notify(3))                                  */

/* systemd's notification socket, taken from NOTIFY_SOCKET at start ("":
 * none). The protocol is one datagram of "NAME=value" lines to that
 * AF_UNIX socket (a path, or an abstract name written with "@"), stable
 * and documented for implementations without libsystemd; this sender is
 * all dopad needs of the library. */
static char notify_path[sizeof((struct sockaddr_un *)0)->sun_path];

static void notify_take_socket(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path != NULL && (path[0] == '/' || path[0] == '@') && strlen(path) < sizeof notify_path)
        snprintf(notify_path, sizeof notify_path, "%s", path);
    /* Not handed down to the plugin helper and notify commands. */
    unsetenv("NOTIFY_SOCKET");
}

__attribute__((format(printf, 1, 2))) static void notify_manager(const char *fmt, ...)
{
    if (notify_path[0] == '\0')
        return;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof text)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(notify_path);
    memcpy(sa.sun_path, notify_path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: no NUL at the end, the length says */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, text, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        agent_log("warning", "cannot tell the service manager %s: %s", text, strerror(errno));
    close(fd);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* STATUS= for `systemctl status`: the jobs and peers, when they changed,
 * at most once a second. */
static void notify_status(int now)
{
    static char last[200];
    static int64_t last_at;
    if (notify_path[0] == '\0' || (!now && mono_ms() - last_at < 1000))
        return;
    last_at = mono_ms();
    dopa_agent_stats st;
    engine_stats(engine, &st);
    char text[200];
    if (st.peer_url[0] == '\0')
        snprintf(text, sizeof text, "%llu jobs; origin only (no group key)",
                 (unsigned long long)st.jobs);
    else
        snprintf(text, sizeof text, "%llu jobs; %llu peers (%llu banned); serving on %s",
                 (unsigned long long)st.jobs, (unsigned long long)st.peers,
                 (unsigned long long)st.banned, st.peer_url);
    if (!now && strcmp(text, last) == 0)
        return;
    snprintf(last, sizeof last, "%s", text);
    notify_manager("STATUS=%s", text);
}

/* ------------------------------------------------------------------ */
/* Settings: from the file and the command line to the engine          */

static struct settings cli;     /* the command line's */
static struct settings running; /* in force: what the engine was given */
static char config_path[4096];  /* "" when there is none to read */
static int config_explicit;     /* --config: it must exist */
static uint8_t group_key[PEER_GROUP_KEY_BYTES];
static const char *peer_urls[MAX_PEERS], *cache_urls[MAX_PEERS];
static peer_node_config peer_cfg;
static engine_config engine_cfg;

static int default_paths(char *socket_path, size_t socket_len, char *state_dir, size_t state_len,
                         char *msg, size_t msg_len)
{
    if (geteuid() == 0) {
        snprintf(socket_path, socket_len, "/run/dopa/control.sock");
        snprintf(state_dir, state_len, "/var/lib/dopa");
        return 0;
    }
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (runtime == NULL || runtime[0] != '/') {
        snprintf(msg, msg_len, "XDG_RUNTIME_DIR is not set; give --socket PATH");
        return -1;
    }
    snprintf(socket_path, socket_len, "%s/dopa/control.sock", runtime);
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (state != NULL && state[0] == '/')
        snprintf(state_dir, state_len, "%s/dopa", state);
    else if (home != NULL && home[0] == '/')
        snprintf(state_dir, state_len, "%s/.local/state/dopa", home);
    else {
        snprintf(msg, msg_len, "neither XDG_STATE_HOME nor HOME is set; give --state-dir DIR");
        return -1;
    }
    return 0;
}

/* What the file said, completed: the command line over it, the defaults
 * that depend on the machine, and the checks across keys. The same at
 * start and on SIGHUP. */
static int complete_settings(struct settings *s, char *msg, size_t len)
{
    if (cli.socket[0])
        snprintf(s->socket, sizeof s->socket, "%s", cli.socket);
    if (cli.state_dir[0])
        snprintf(s->state_dir, sizeof s->state_dir, "%s", cli.state_dir);
    if (cli.max_running)
        s->max_running = cli.max_running;
    if (cli.inactivity_ms)
        s->inactivity_ms = cli.inactivity_ms;
    for (size_t i = 0; i < cli.n_keys; i++) {
        if (s->n_keys == MAX_KEYS) {
            snprintf(msg, len, "at most %d trusted keys", MAX_KEYS);
            return -1;
        }
        s->keys[s->n_keys++] = cli.keys[i];
    }
    char def_socket[4096], def_state[4096];
    if ((s->socket[0] == '\0' || s->state_dir[0] == '\0') &&
        default_paths(def_socket, sizeof def_socket, def_state, sizeof def_state, msg, len) != 0)
        return -1;
    if (s->socket[0] == '\0')
        snprintf(s->socket, sizeof s->socket, "%s", def_socket);
    if (s->state_dir[0] == '\0')
        snprintf(s->state_dir, sizeof s->state_dir, "%s", def_state);
    if (s->plugin_dir[0] != '\0' && s->validate_helper[0] == '\0') {
        /* dopa-validate: beside dopad (a build tree), else where it is
         * installed, DOPA_VALIDATE_HELPER from dopad's directory. */
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) {
            snprintf(msg, len, "cannot find dopa-validate: %s; set validate-helper",
                     n < 0 ? strerror(errno) : "no path to dopad");
            return -1;
        }
        self[n] = '\0';
        const char *dir = dirname(self);
        snprintf(s->validate_helper, sizeof s->validate_helper, "%.4000s/dopa-validate", dir);
        if (access(s->validate_helper, X_OK) != 0) {
            snprintf(s->validate_helper, sizeof s->validate_helper, "%.3000s/%s", dir,
                     DOPA_VALIDATE_HELPER);
            if (access(s->validate_helper, X_OK) != 0) {
                snprintf(msg, len,
                         "plugin-dir is set but dopa-validate is neither beside dopad nor at "
                         "%.3000s; set validate-helper",
                         s->validate_helper);
                return -1;
            }
        }
    }
    if (!s->has_cache_size)
        s->cache_bytes = 4000000000ull;
    s->beacons = s->beacons == 2 ? 2 : 1; /* unset is on */
    if (s->group_key[0] == '\0' &&
        (s->n_peers > 0 || s->n_cache_hosts > 0 || s->listen[0] != '\0')) {
        snprintf(msg, len, "[peers] needs group-key (make one with `dopa group-key FILE`)");
        return -1;
    }
    return 0;
}

/* [peers] keys without a group key do nothing: said, not silently dropped. */
static void warn_ignored_peer_keys(const struct settings *s)
{
    if (s->group_key[0] == '\0' && s->peer_keys[0] != '\0')
        agent_log("warning", "%s: [peers] %s: no effect without group-key (peers are off)",
                  config_path, s->peer_keys);
}

/* The engine's and the peer node's configurations from s (which must
 * outlive them: they point into it). */
static void make_configs(struct settings *s)
{
    for (size_t i = 0; i < s->n_peers; i++)
        peer_urls[i] = s->peers[i];
    for (size_t i = 0; i < s->n_cache_hosts; i++)
        cache_urls[i] = s->cache_hosts[i];
    peer_cfg = (peer_node_config){
        .group_key = group_key,
        .listen = s->listen[0] ? s->listen : "tcp://0.0.0.0:7880",
        .peers = peer_urls,
        .n_peers = s->n_peers,
        .cache_hosts = cache_urls,
        .n_cache_hosts = s->n_cache_hosts,
        .cache_host = s->is_cache_host,
        .beacons = s->beacons != 2,
        .beacon_group = s->beacon_group[0] ? s->beacon_group : NULL,
        .beacon_port = (uint16_t)s->beacon_port,
        .beacon_interval_ms = (uint32_t)s->beacon_interval_ms,
        .upload_rate = s->upload_rate,
        .max_connections = (unsigned)s->max_connections,
        .max_queued = (unsigned)s->max_queued,
        .in_flight = (unsigned)s->in_flight,
        .piece_timeout_ms = (uint32_t)s->piece_timeout_ms,
        .ban_after = (unsigned)s->ban_after,
        .ban_seconds = (uint32_t)(s->ban_ms / 1000),
        .tls_cert = s->tls_cert[0] ? s->tls_cert : NULL,
        .tls_key = s->tls_key[0] ? s->tls_key : NULL,
        .tls_ca = s->tls_ca[0] ? s->tls_ca : NULL,
    };
    engine_cfg = (engine_config){.origin = origin_config_default(),
                                 .peer = s->group_key[0] ? &peer_cfg : NULL,
                                 .cache_bytes = s->cache_bytes,
                                 .cache_age_ms = (uint64_t)s->cache_age_ms,
                                 .state_dir = s->state_dir,
                                 .max_running = s->max_running,
                                 .inactivity_ms = s->inactivity_ms,
                                 .trusted_keys = s->keys,
                                 .n_trusted_keys = s->n_keys,
                                 .plugin_dir = s->plugin_dir[0] ? s->plugin_dir : NULL,
                                 .validate_helper = s->validate_helper,
                                 .plugin_timeout_ms = (uint32_t)s->plugin_timeout_ms,
                                 .notify = {.retry_first_ms = s->notify_retry_ms,
                                            .retry_max_ms = s->notify_retry_max_ms,
                                            .command_timeout_ms = s->notify_command_timeout_ms}};
    engine_cfg.origin.max_rate = s->origin_rate;
}

/* ------------------------------------------------------------------ */
/* SIGHUP                                                             */

/* One setting as SIGHUP sees it: where it lives in struct settings, how
 * to show it, and whether it can change while dopad runs. The keys not
 * here (trusted-key, peer, cache-host) are lists, compared apart. */
enum field_kind { F_TEXT, F_UINT, F_ULONG, F_BYTES, F_MS, F_MS_U64, F_BOOL, F_ON_OFF };
struct field {
    const char *key;
    size_t offset, size;
    enum field_kind kind;
    int is_peers; /* a [peers] key: nothing runs it without a group key */
    int reloads;  /* applied on SIGHUP; else it needs a restart */
};
#define FIELD(key, member, kind, is_peers, reloads)                                                \
    {                                                                                              \
        key, offsetof(struct settings, member), sizeof(((struct settings *)0)->member), kind,      \
            is_peers, reloads                                                                      \
    }
static const struct field fields[] = {
    FIELD("socket", socket, F_TEXT, 0, 0),
    FIELD("state-dir", state_dir, F_TEXT, 0, 0),
    FIELD("max-running", max_running, F_UINT, 0, 1),
    FIELD("inactivity-timeout", inactivity_ms, F_MS_U64, 0, 1),
    /* A running helper or notification keeps what it started with. */
    FIELD("plugin-dir", plugin_dir, F_TEXT, 0, 0),
    FIELD("validate-helper", validate_helper, F_TEXT, 0, 0),
    FIELD("plugin-timeout", plugin_timeout_ms, F_MS, 0, 1),
    FIELD("origin-rate", origin_rate, F_BYTES, 0, 1),
    FIELD("notify-retry", notify_retry_ms, F_MS, 0, 0),
    FIELD("notify-retry-max", notify_retry_max_ms, F_MS, 0, 0),
    FIELD("notify-command-timeout", notify_command_timeout_ms, F_MS, 0, 0),
    /* The node's identity, listener, TLS and beacons are made when it opens. */
    FIELD("group-key", group_key, F_TEXT, 1, 0),
    FIELD("tls-cert", tls_cert, F_TEXT, 1, 0),
    FIELD("tls-key", tls_key, F_TEXT, 1, 0),
    FIELD("tls-ca", tls_ca, F_TEXT, 1, 0),
    FIELD("listen", listen, F_TEXT, 1, 0),
    FIELD("is-cache-host", is_cache_host, F_BOOL, 1, 0),
    FIELD("beacons", beacons, F_ON_OFF, 1, 0),
    FIELD("beacon-group", beacon_group, F_TEXT, 1, 0),
    FIELD("beacon-port", beacon_port, F_ULONG, 1, 0),
    FIELD("beacon-interval", beacon_interval_ms, F_MS, 1, 0),
    FIELD("max-connections", max_connections, F_ULONG, 1, 0),
    FIELD("upload-rate", upload_rate, F_BYTES, 1, 1),
    FIELD("cache-size", cache_bytes, F_BYTES, 1, 1),
    FIELD("cache-age", cache_age_ms, F_MS, 1, 1),
    FIELD("max-queued", max_queued, F_ULONG, 1, 1),
    FIELD("requests-in-flight", in_flight, F_ULONG, 1, 1),
    FIELD("piece-timeout", piece_timeout_ms, F_MS, 1, 1),
    FIELD("ban-after", ban_after, F_ULONG, 1, 1),
    FIELD("ban-time", ban_ms, F_MS, 1, 1),
};

/* The field's value in s, for the log ("default" for an unset number). */
static void field_text(const struct field *f, const struct settings *s, char *out, size_t len)
{
    const char *p = (const char *)s + f->offset;
    unsigned long long n = 0;
    switch (f->kind) {
    case F_TEXT:
        snprintf(out, len, "%s", p[0] ? p : "(none)");
        return;
    case F_BOOL:
        snprintf(out, len, "%s", *(const int *)(const void *)p ? "yes" : "no");
        return;
    case F_ON_OFF:
        snprintf(out, len, "%s", *(const int *)(const void *)p == 2 ? "no" : "yes");
        return;
    case F_BYTES:
        snprintf(out, len, "%llu", (unsigned long long)*(const uint64_t *)(const void *)p);
        return;
    case F_UINT:
        n = *(const unsigned *)(const void *)p;
        break;
    case F_ULONG:
        n = *(const unsigned long *)(const void *)p;
        break;
    case F_MS:
        n = (unsigned long long)*(const int64_t *)(const void *)p;
        break;
    case F_MS_U64:
        n = *(const uint64_t *)(const void *)p;
        break;
    }
    if (n == 0)
        snprintf(out, len, "the default");
    else if (f->kind == F_MS || f->kind == F_MS_U64)
        snprintf(out, len, "%g s", (double)n / 1000);
    else
        snprintf(out, len, "%llu", n);
}

static int field_differs(const struct field *f, const struct settings *a, const struct settings *b)
{
    const char *x = (const char *)a + f->offset, *y = (const char *)b + f->offset;
    return f->kind == F_TEXT ? strcmp(x, y) != 0 : memcmp(x, y, f->size) != 0;
}

/* A list key: applied (copied into running) when it changed. */
static int list_changed(const char *key, int changed, size_t n, size_t was, int *applied)
{
    if (changed) {
        agent_log("info", "reload: %s: %zu given (was %zu)", key, n, was);
        (*applied)++;
    }
    return changed;
}

/* ------------------------------------------------------------------ */
/* The metrics endpoint                                               */

static void log_metrics(const char *listen)
{
    char host[METRICS_LISTEN_MAX + 1];
    unsigned port;
    int loopback = 1;
    metrics_parse_listen(listen, host, sizeof host, &port, &loopback);
    agent_log("info", "metrics: serving http://%s/metrics", metrics_address(metrics_server));
    if (!loopback)
        agent_log("warning",
                  "metrics: %s is not a loopback address: whoever reaches it can read the "
                  "counters (the endpoint has no authentication)",
                  listen);
}

static unsigned listen_port(const char *listen)
{
    char host[METRICS_LISTEN_MAX + 1];
    unsigned port = 0;
    int loopback;
    metrics_parse_listen(listen, host, sizeof host, &port, &loopback);
    return port;
}

/* [metrics] listen changed on SIGHUP: applied at once. The old endpoint
 * stays until the new one listens, unless they share a port (or the new
 * one is none): then it goes first, and comes back if the new one fails.
 * Returns 1 when the change applied. */
static int reload_metrics(const char *want)
{
    char why[600], was[METRICS_LISTEN_MAX + 10];
    const char *now = want[0] ? want : "(none)";
    snprintf(was, sizeof was, "%s", running.metrics_listen[0] ? running.metrics_listen : "(none)");
    int same_port = want[0] != '\0' && running.metrics_listen[0] != '\0' &&
                    listen_port(want) != 0 && listen_port(want) == listen_port(was);
    if (want[0] == '\0' || same_port) {
        metrics_close(metrics_server);
        metrics_server = NULL;
    }
    metrics *next = NULL;
    if (want[0] != '\0' &&
        metrics_open(engine, want, started_ms, same_port, &next, why, sizeof why) != DOPA_OK) {
        agent_log("error", "reload: [metrics] listen %s: %s; %s stays in force", now, why, was);
        if (metrics_server == NULL && running.metrics_listen[0] != '\0' &&
            metrics_open(engine, running.metrics_listen, started_ms, 1, &metrics_server, why,
                         sizeof why) != DOPA_OK) {
            agent_log("error", "reload: [metrics] listen %s again: %s; the metrics endpoint is off",
                      was, why);
            running.metrics_listen[0] = '\0';
        }
        return 0;
    }
    metrics_close(metrics_server);
    metrics_server = next;
    snprintf(running.metrics_listen, sizeof running.metrics_listen, "%s", want);
    agent_log("info", "reload: [metrics] listen: %s (was %s)", now, was);
    if (metrics_server != NULL)
        log_metrics(want);
    return 1;
}

/* SIGHUP, on the engine's thread: the file again, checked whole, then
 * what can change applied and the rest named. */
static void reload(void)
{
    notify_manager("RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)mono_ms() * 1000);
    static struct settings next;
    memset(&next, 0, sizeof next);
    char msg[5000];
    uint8_t key[PEER_GROUP_KEY_BYTES];
    int applied = 0, kept = 0;
    if (config_path[0] == '\0') {
        agent_log("warning", "reload: no configuration file to read (neither "
                             "XDG_CONFIG_HOME nor HOME is set)");
        goto done;
    }
    struct stat st;
    if (config_explicit || stat(config_path, &st) == 0)
        agent_log("info", "reload: reading %s", config_path);
    else
        agent_log("info", "reload: %s does not exist: the defaults apply", config_path);
    if (read_config(config_path, config_explicit, &next, msg, sizeof msg) != 0 ||
        complete_settings(&next, msg, sizeof msg) != 0) {
        agent_log("error", "reload: %s; nothing changed", msg);
        goto done;
    }
    if (next.group_key[0] != '\0' &&
        peer_group_key_load(next.group_key, key, msg, sizeof msg) != PEER_OK) {
        agent_log("error", "reload: group-key %s: %s; nothing changed", next.group_key, msg);
        goto done;
    }
    warn_ignored_peer_keys(&next);
    if (next.group_key[0] != '\0' && strcmp(next.group_key, running.group_key) == 0 &&
        sodium_memcmp(key, group_key, sizeof key) != 0) {
        agent_log("warning",
                  "reload: the key in group-key %s changed: it needs a restart of "
                  "dopad; the group stays the one it joined",
                  next.group_key);
        kept++;
    }
    sodium_memzero(key, sizeof key);
    /* Without a group key running, the other [peers] keys wait for the
     * restart that group-key's change asks for. */
    int peers_run = running.group_key[0] != '\0';
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const struct field *f = &fields[i];
        if (!field_differs(f, &running, &next) ||
            (f->is_peers && !peers_run && strcmp(f->key, "group-key") != 0))
            continue;
        char was[4200], now[4200];
        field_text(f, &running, was, sizeof was);
        field_text(f, &next, now, sizeof now);
        if (f->reloads) {
            memcpy((char *)&running + f->offset, (const char *)&next + f->offset, f->size);
            agent_log("info", "reload: %s: %s (was %s)", f->key, now, was);
            applied++;
        } else {
            agent_log("warning", "reload: %s: %s needs a restart of dopad; %s stays in force",
                      f->key, now, was);
            kept++;
        }
    }
    if (list_changed("trusted-key",
                     next.n_keys != running.n_keys ||
                         memcmp(next.keys, running.keys, next.n_keys * sizeof next.keys[0]) != 0,
                     next.n_keys, running.n_keys, &applied)) {
        memcpy(running.keys, next.keys, sizeof next.keys);
        running.n_keys = next.n_keys;
    }
    if (peers_run && list_changed("peer",
                                  next.n_peers != running.n_peers ||
                                      memcmp(next.peers, running.peers, sizeof next.peers) != 0,
                                  next.n_peers, running.n_peers, &applied)) {
        memcpy(running.peers, next.peers, sizeof next.peers);
        running.n_peers = next.n_peers;
    }
    if (peers_run && list_changed("cache-host",
                                  next.n_cache_hosts != running.n_cache_hosts ||
                                      memcmp(next.cache_hosts, running.cache_hosts,
                                             sizeof next.cache_hosts) != 0,
                                  next.n_cache_hosts, running.n_cache_hosts, &applied)) {
        memcpy(running.cache_hosts, next.cache_hosts, sizeof next.cache_hosts);
        running.n_cache_hosts = next.n_cache_hosts;
    }
    if (strcmp(next.metrics_listen, running.metrics_listen) != 0)
        applied += reload_metrics(next.metrics_listen);
    make_configs(&running);
    if (engine_reconfigure(engine, &engine_cfg, msg, sizeof msg) != DOPA_OK)
        agent_log("warning", "reload: %s", msg);
    agent_log("info", "reload: %d settings changed, %d wait for a restart", applied, kept);
done:
    notify_manager("READY=1");
    notify_status(1);
}

/* Waits for the signals on its own thread (the others block them). */
static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            atomic_store(&reload_wanted, 1);
            engine_wakeup(engine);
        } else if (sig == SIGTERM || sig == SIGINT) {
            atomic_store(&stopping, 1);
            engine_wakeup(engine);
            return NULL;
        }
    }
}

/* The open-files limit goes up to the hard one: a peer port serves many
 * connections, and the soft default of 1024 is soon used up. The peer node
 * keeps a reserve of its own below whatever limit this leaves. */
static void raise_open_files(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        agent_log("warning", "open files stay limited to %llu: %s", (unsigned long long)was,
                  strerror(errno));
}

/* Stopping is bounded: once SIGTERM has come, dopad is gone within
 * STOP_BOUND_MS even when a library call never returns (nng's close of a
 * wedged socket). The engine's writes are durable before anything that
 * could hang (engine_flush, with the store in WAL and synchronous=FULL), so
 * what is abandoned here is only the tidying. */
#define STOP_BOUND_MS 4000
static void *stop_deadline(void *arg)
{
    (void)arg;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += STOP_BOUND_MS / 1000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        ;
    agent_log("error",
              "stopping took over %d s (a socket that does not close): leaving now; "
              "the jobs are stored",
              STOP_BOUND_MS / 1000);
    _exit(EXIT_OK);
    return NULL;
}

/* mkdir -p for the state directory's parents (the last gets mode 0700). */
static int make_parents(const char *path)
{
    char buf[8192];
    snprintf(buf, sizeof buf, "%.4095s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"state-dir", required_argument, NULL, 'd'},
        {"max-running", required_argument, NULL, 'm'},
        {"inactivity-timeout", required_argument, NULL, 'i'},
        {"trusted-key", required_argument, NULL, 'k'},
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    notify_take_socket(); /* before any thread: it changes the environment */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    started_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    const char *config = NULL;
    int check_only = 0;
    char why[5000];
    int c, rc = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1 && rc == 0) {
        switch (c) {
        case 's':
            rc = set_path(&cli, cli.socket, sizeof cli.socket, "--socket", optarg);
            break;
        case 'd':
            rc = set_path(&cli, cli.state_dir, sizeof cli.state_dir, "--state-dir", optarg);
            break;
        case 'm':
            rc = set_max_running(&cli, optarg);
            break;
        case 'i':
            rc = set_inactivity(&cli, optarg);
            break;
        case 'k':
            rc = add_key(&cli, optarg);
            break;
        case 'c':
            config = optarg;
            break;
        case 'C':
            check_only = 1;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return EXIT_OK;
        case 'V':
            printf("dopad %s\n", DOPA_VERSION);
            return EXIT_OK;
        default:
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    if (rc != 0) {
        fprintf(stderr, "dopad: %s\n", cli.error);
        return EXIT_USAGE;
    }
    if (optind != argc) {
        fprintf(stderr, "dopad: unexpected argument %s\n", argv[optind]);
        return EXIT_USAGE;
    }
    /* The file first; the command line wins where both say something. */
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    config_explicit = config != NULL;
    if (config != NULL)
        snprintf(config_path, sizeof config_path, "%s", config);
    else if (geteuid() == 0)
        snprintf(config_path, sizeof config_path, "/etc/dopa/dopa.conf");
    else if (xdg != NULL && xdg[0] == '/')
        snprintf(config_path, sizeof config_path, "%s/dopa/dopa.conf", xdg);
    else if (home != NULL && home[0] == '/')
        snprintf(config_path, sizeof config_path, "%s/.config/dopa/dopa.conf", home);
    struct settings *s = &running;
    if ((config_path[0] != '\0' &&
         read_config(config_path, config_explicit, s, why, sizeof why) != 0) ||
        complete_settings(s, why, sizeof why) != 0) {
        fprintf(stderr, "dopad: %s\n", why);
        return EXIT_USAGE;
    }
    /* Peers: only with a group key. */
    if (s->group_key[0] != '\0' &&
        peer_group_key_load(s->group_key, group_key, why, sizeof why) != PEER_OK) {
        fprintf(stderr, "dopad: group-key %s: %s\n", s->group_key, why);
        return EXIT_USAGE;
    }
    make_configs(s);
    warn_ignored_peer_keys(s);
    if (check_only) {
        printf("dopad: %s: good\n", config_path[0] != '\0' ? config_path : "no configuration file");
        return EXIT_OK;
    }
    const char *socket_path = s->socket, *state_dir = s->state_dir;

    /* Signals go to one thread; every thread made after this inherits the
     * blocked mask. */
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(022);
    raise_open_files();

    if (make_parents(state_dir) != 0) {
        fprintf(stderr, "dopad: %s: %s\n", state_dir, strerror(errno));
        return EXIT_START;
    }
    char lock_path[8300];
    snprintf(lock_path, sizeof lock_path, "%.4095s/dopad.lock", state_dir);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "dopad: %s: %s\n", lock_path,
                lock < 0 ? strerror(errno) : "another dopad uses this state directory");
        return EXIT_START;
    }
    if (engine_open(&engine_cfg, &engine, why, sizeof why) != DOPA_OK) {
        fprintf(stderr, "dopad: %s\n", why);
        return EXIT_START;
    }
    int system_instance = geteuid() == 0;
    control *ctl = NULL;
    if (control_open(engine, socket_path, system_instance ? 0755 : 0700,
                     system_instance ? 0666 : 0600, &ctl, why, sizeof why) != DOPA_OK) {
        fprintf(stderr, "dopad: %s\n", why);
        engine_close(engine);
        return EXIT_START;
    }
    if (s->metrics_listen[0] != '\0' && metrics_open(engine, s->metrics_listen, started_ms, 0,
                                                     &metrics_server, why, sizeof why) != DOPA_OK) {
        fprintf(stderr, "dopad: metrics endpoint: %s\n", why);
        control_close(ctl);
        engine_close(engine);
        return EXIT_START;
    }
    pthread_t sig_thread;
    pthread_create(&sig_thread, NULL, signal_thread, &set);
    agent_log("info", "dopad %s: %zu jobs, listening on %s, state in %s", AGENT_VERSION,
              engine_job_count(engine), socket_path, state_dir);
    if (engine_cfg.peer != NULL)
        agent_log("info", "peers: serving on %s, %zu configured peers, %zu cache hosts, beacons %s",
                  engine_peer_url(engine), s->n_peers, s->n_cache_hosts,
                  engine_cfg.peer->beacons ? "on" : "off");
    if (metrics_server != NULL)
        log_metrics(s->metrics_listen);
    notify_manager("READY=1");
    notify_status(1);

    while (!atomic_load(&stopping)) {
        engine_step(engine, 1000);
        metrics_run_queued(metrics_server);
        if (atomic_exchange(&reload_wanted, 0))
            reload();
        notify_status(0);
    }

    agent_log("info", "stopping");
    notify_manager("STOPPING=1");
    pthread_t deadline;
    pthread_create(&deadline, NULL, stop_deadline, NULL);
    engine_flush(engine);
    /* The signal thread wakes the engine: it goes first. */
    pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    metrics_close(metrics_server);
    control_close(ctl);
    engine_close(engine);
    close(lock);
    return EXIT_OK;
}

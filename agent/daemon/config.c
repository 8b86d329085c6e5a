/*
 * dopad's settings (config.h): the parser of dopa.conf(5) around inih, the
 * command line's options, the defaults and checks that complete them, the
 * engine's configuration made from them, and the table of keys SIGHUP
 * compares.
 *
 * Every parser of a value writes into the config_settings it is given and,
 * when the value is bad, says why in its error field; inih's callback
 * keeps the first such message, which config_read reports with the file
 * and line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <libgen.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

/* ------------------------------------------------------------------ */
/* The file and the command line                                      */

static int set_max_running(config_settings *s, const char *v)
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
static int set_seconds(config_settings *s, const char *name, const char *v, int64_t min_ms,
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

static int set_inactivity(config_settings *s, const char *v)
{
    int64_t ms;
    if (set_seconds(s, "inactivity-timeout", v, 1000, 10ll * 365 * 24 * 3600 * 1000, &ms) != 0)
        return -1;
    s->inactivity_ms = (uint64_t)ms;
    return 0;
}

static int add_key(config_settings *s, const char *v)
{
    validate_error why = {0};
    if (s->n_keys == CONFIG_MAX_KEYS) {
        snprintf(s->error, sizeof s->error, "at most %d trusted keys", CONFIG_MAX_KEYS);
        return -1;
    }
    if (strncmp(v, "dopa-pub1:", 10) == 0) {
        if (validate_public_key_parse(v, &s->keys[s->n_keys]) != VALIDATE_OK) {
            snprintf(s->error, sizeof s->error, "trusted-key %s: not a dopa public key", v);
            return -1;
        }
    } else if (validate_public_key_load(v, &s->keys[s->n_keys], &why) != VALIDATE_OK) {
        /* The loader's own words: a file that is missing, unreadable or too
         * big, memory that ran out, or not a key. */
        snprintf(s->error, sizeof s->error, "trusted-key: %s", why.text);
        return -1;
    }
    s->n_keys++;
    return 0;
}

static int set_path(config_settings *s, char *dst, size_t len, const char *name, const char *v)
{
    if (v[0] != '/' || strlen(v) >= len) {
        snprintf(s->error, sizeof s->error, "%s %s: need an absolute path", name, v);
        return -1;
    }
    snprintf(dst, len, "%s", v);
    return 0;
}

static int set_count(config_settings *s, const char *name, const char *v, unsigned long min,
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

static int set_bool(config_settings *s, const char *name, const char *v, int *out)
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
static int set_bytes(config_settings *s, const char *name, const char *v, const char *what,
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

static int set_url(config_settings *s, const char *name, const char *v, char *dst, size_t len)
{
    if ((strncmp(v, "tcp://", 6) != 0 && strncmp(v, "tls+tcp://", 10) != 0) || strlen(v) >= len ||
        strrchr(v, ':') == v + (strncmp(v, "tcp", 3) == 0 ? 3 : 7)) {
        snprintf(s->error, sizeof s->error, "%s %s: need tcp://HOST:PORT", name, v);
        return -1;
    }
    snprintf(dst, len, "%s", v);
    return 0;
}

static int add_url(config_settings *s, const char *name, const char *v,
                   char (*list)[PEER_URL_MAX + 1], size_t *n)
{
    if (*n == CONFIG_MAX_PEERS) {
        snprintf(s->error, sizeof s->error, "at most %d %s entries", CONFIG_MAX_PEERS, name);
        return -1;
    }
    if (set_url(s, name, v, list[*n], PEER_URL_MAX + 1) != 0)
        return -1;
    (*n)++;
    return 0;
}

/* One "name = value" of [peers]. */
static int peer_setting(config_settings *s, const char *name, const char *v)
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
static int metrics_setting(config_settings *s, const char *name, const char *v)
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
static void note_peer_key(config_settings *s, const char *name)
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
    config_settings *s = user;
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

int config_read(const char *path, int is_explicit, config_settings *s, validate_error *why)
{
    struct stat st;
    if (!is_explicit && stat(path, &st) != 0)
        return 0;
    int line = ini_parse(path, on_setting, s);
    if (line == -1) {
        return validate_error_set(why, DOPA_EIO, "%s: %s", path, strerror(errno));
    }
    if (line == -2) {
        return validate_error_set(why, DOPA_ENOMEM, "%s: out of memory", path);
    }
    if (line > 0) {
        return validate_error_set(why, DOPA_EINVAL, "%s:%d: %s", path, line,
                                  s->error[0] ? s->error : "not a \"name = value\" line");
    }
    return 0;
}

int config_set_option(config_settings *s, const char *option, const char *value)
{
    if (strcmp(option, "socket") == 0)
        return set_path(s, s->socket, sizeof s->socket, "--socket", value);
    if (strcmp(option, "state-dir") == 0)
        return set_path(s, s->state_dir, sizeof s->state_dir, "--state-dir", value);
    if (strcmp(option, "max-running") == 0)
        return set_max_running(s, value);
    if (strcmp(option, "inactivity-timeout") == 0)
        return set_inactivity(s, value);
    if (strcmp(option, "trusted-key") == 0)
        return add_key(s, value);
    snprintf(s->error, sizeof s->error, "unknown option --%s", option);
    return -1;
}

/* ------------------------------------------------------------------ */
/* Where the file is, and what the machine gives by default            */

void config_file_path(const char *given, char *path, size_t len)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    path[0] = '\0';
    if (given != NULL)
        snprintf(path, len, "%s", given);
    else if (geteuid() == 0)
        snprintf(path, len, "/etc/dopa/dopa.conf");
    else if (xdg != NULL && xdg[0] == '/')
        snprintf(path, len, "%s/dopa/dopa.conf", xdg);
    else if (home != NULL && home[0] == '/')
        snprintf(path, len, "%s/.config/dopa/dopa.conf", home);
}

static int default_paths(char *socket_path, size_t socket_len, char *state_dir, size_t state_len,
                         validate_error *why)
{
    if (geteuid() == 0) {
        snprintf(socket_path, socket_len, "/run/dopa/control.sock");
        snprintf(state_dir, state_len, "/var/lib/dopa");
        return 0;
    }
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (runtime == NULL || runtime[0] != '/') {
        return validate_error_set(why, DOPA_EINVAL,
                                  "XDG_RUNTIME_DIR is not set; give --socket PATH");
    }
    snprintf(socket_path, socket_len, "%s/dopa/control.sock", runtime);
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (state != NULL && state[0] == '/')
        snprintf(state_dir, state_len, "%s/dopa", state);
    else if (home != NULL && home[0] == '/')
        snprintf(state_dir, state_len, "%s/.local/state/dopa", home);
    else {
        return validate_error_set(why, DOPA_EINVAL,
                                  "neither XDG_STATE_HOME nor HOME is set; give --state-dir DIR");
    }
    return 0;
}

int config_complete(config_settings *s, const config_settings *cli, validate_error *why)
{
    if (cli->socket[0])
        snprintf(s->socket, sizeof s->socket, "%s", cli->socket);
    if (cli->state_dir[0])
        snprintf(s->state_dir, sizeof s->state_dir, "%s", cli->state_dir);
    if (cli->max_running)
        s->max_running = cli->max_running;
    if (cli->inactivity_ms)
        s->inactivity_ms = cli->inactivity_ms;
    for (size_t i = 0; i < cli->n_keys; i++) {
        if (s->n_keys == CONFIG_MAX_KEYS) {
            return validate_error_set(why, DOPA_EINVAL, "at most %d trusted keys", CONFIG_MAX_KEYS);
        }
        s->keys[s->n_keys++] = cli->keys[i];
    }
    char def_socket[4096], def_state[4096];
    int err;
    if ((s->socket[0] == '\0' || s->state_dir[0] == '\0') &&
        (err = default_paths(def_socket, sizeof def_socket, def_state, sizeof def_state, why)) != 0)
        return err;
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
            return validate_error_set(why, DOPA_EINVAL,
                                      "cannot find dopa-validate: %s; set validate-helper",
                                      n < 0 ? strerror(errno) : "no path to dopad");
        }
        self[n] = '\0';
        const char *dir = dirname(self);
        snprintf(s->validate_helper, sizeof s->validate_helper, "%.4000s/dopa-validate", dir);
        if (access(s->validate_helper, X_OK) != 0) {
            snprintf(s->validate_helper, sizeof s->validate_helper, "%.3000s/%s", dir,
                     DOPA_VALIDATE_HELPER);
            if (access(s->validate_helper, X_OK) != 0) {
                return validate_error_set(
                    why, DOPA_EINVAL,
                    "plugin-dir is set but dopa-validate is neither beside dopad nor at "
                    "%.800s; set validate-helper",
                    s->validate_helper);
            }
        }
    }
    if (!s->has_cache_size)
        s->cache_bytes = 4000000000ull;
    s->beacons = s->beacons == 2 ? 2 : 1; /* unset is on */
    if (s->group_key[0] == '\0' &&
        (s->n_peers > 0 || s->n_cache_hosts > 0 || s->listen[0] != '\0')) {
        return validate_error_set(why, DOPA_EINVAL,
                                  "[peers] needs group-key (make one with `dopa group-key FILE`)");
    }
    return 0;
}

/* [peers] keys without a group key do nothing: said, not silently dropped. */
void config_warn_ignored_peer_keys(const config_settings *s, const char *path)
{
    if (s->group_key[0] == '\0' && s->peer_keys[0] != '\0')
        agent_log("warning", "%s: [peers] %s: no effect without group-key (peers are off)", path,
                  s->peer_keys);
}

/* ------------------------------------------------------------------ */
/* The engine's configuration                                         */

void config_engine_make(config_engine *out, const config_settings *s, const uint8_t *group_key)
{
    for (size_t i = 0; i < s->n_peers; i++)
        out->peer_urls[i] = s->peers[i];
    for (size_t i = 0; i < s->n_cache_hosts; i++)
        out->cache_urls[i] = s->cache_hosts[i];
    out->peer = (peer_node_config){
        .group_key = group_key,
        .listen = s->listen[0] ? s->listen : "tcp://0.0.0.0:7880",
        .peers = out->peer_urls,
        .n_peers = s->n_peers,
        .cache_hosts = out->cache_urls,
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
    out->engine = (engine_config){.origin = origin_config_default(),
                                  .peer = s->group_key[0] ? &out->peer : NULL,
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
    out->engine.origin.max_rate = s->origin_rate;
}

/* ------------------------------------------------------------------ */
/* SIGHUP                                                             */

/* One setting as SIGHUP sees it: where it lives in config_settings, how
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
        key, offsetof(config_settings, member), sizeof(((config_settings *)0)->member), kind,      \
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
static void field_text(const struct field *f, const config_settings *s, char *out, size_t len)
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

static int field_differs(const struct field *f, const config_settings *a, const config_settings *b)
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

void config_apply_changes(config_settings *running, const config_settings *next, int *applied,
                          int *kept)
{
    /* Without a group key running, the other [peers] keys wait for the
     * restart that group-key's change asks for. */
    int peers_run = running->group_key[0] != '\0';
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const struct field *f = &fields[i];
        if (!field_differs(f, running, next) ||
            (f->is_peers && !peers_run && strcmp(f->key, "group-key") != 0))
            continue;
        char was[4200], now[4200];
        field_text(f, running, was, sizeof was);
        field_text(f, next, now, sizeof now);
        if (f->reloads) {
            memcpy((char *)running + f->offset, (const char *)next + f->offset, f->size);
            agent_log("info", "reload: %s: %s (was %s)", f->key, now, was);
            (*applied)++;
        } else {
            agent_log("warning", "reload: %s: %s needs a restart of dopad; %s stays in force",
                      f->key, now, was);
            (*kept)++;
        }
    }
    if (list_changed("trusted-key",
                     next->n_keys != running->n_keys ||
                         memcmp(next->keys, running->keys, next->n_keys * sizeof next->keys[0]) !=
                             0,
                     next->n_keys, running->n_keys, applied)) {
        memcpy(running->keys, next->keys, sizeof next->keys);
        running->n_keys = next->n_keys;
    }
    if (peers_run && list_changed("peer",
                                  next->n_peers != running->n_peers ||
                                      memcmp(next->peers, running->peers, sizeof next->peers) != 0,
                                  next->n_peers, running->n_peers, applied)) {
        memcpy(running->peers, next->peers, sizeof next->peers);
        running->n_peers = next->n_peers;
    }
    if (peers_run && list_changed("cache-host",
                                  next->n_cache_hosts != running->n_cache_hosts ||
                                      memcmp(next->cache_hosts, running->cache_hosts,
                                             sizeof next->cache_hosts) != 0,
                                  next->n_cache_hosts, running->n_cache_hosts, applied)) {
        memcpy(running->cache_hosts, next->cache_hosts, sizeof next->cache_hosts);
        running->n_cache_hosts = next->n_cache_hosts;
    }
}

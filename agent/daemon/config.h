/*
 * config: dopad's settings, from dopa.conf(5) and the command line to the
 * engine's configuration.
 *
 * The settings file is INI, read with inih, in sections [dopad], [peers]
 * and [metrics]; a few of [dopad]'s keys are also options of dopad, and
 * the command line wins where both say something. config_read fills a
 * config_settings from the file, config_set_option from one option;
 * config_complete puts the two together with the defaults that depend on
 * the machine and checks what spans keys; config_engine_make turns the
 * result into the engine's and the peer node's configurations; and
 * config_apply_changes is SIGHUP's comparison of the settings in force
 * with the file's new ones. Nothing here keeps state of its own: each
 * function works on the settings it is given. The group key file is not
 * read here (peer_group_key_load): its bytes come to config_engine_make.
 */
#ifndef DOPA_AGENT_CONFIG_H
#define DOPA_AGENT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "agent.h"

#define CONFIG_MAX_KEYS  32 /* trusted-key entries */
#define CONFIG_MAX_PEERS 64 /* peer entries, and cache-host entries */

/* What the command line or the configuration file set: zeros and "" for
 * what they did not. About 50 KB: callers keep it off the stack. */
typedef struct config_settings {
    char socket[4096];
    char state_dir[4096];
    unsigned max_running;
    uint64_t inactivity_ms;
    validate_public_key keys[CONFIG_MAX_KEYS];
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
    char peers[CONFIG_MAX_PEERS][PEER_URL_MAX + 1];
    size_t n_peers;
    char cache_hosts[CONFIG_MAX_PEERS][PEER_URL_MAX + 1];
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
    char error[VALIDATE_ERROR_TEXT + 64];        /* the first bad setting */
} config_settings;

/* The settings file to read: `given` (--config) when not NULL, else
 * /etc/dopa/dopa.conf for root and $XDG_CONFIG_HOME/dopa/dopa.conf (or
 * ~/.config/dopa/dopa.conf) for another user; "" when there is none to
 * read (neither variable is set). */
void config_file_path(const char *given, char *path, size_t len);

/* Reads the settings file at path into s, over what s holds. is_explicit
 * says a missing file is an error; else it leaves s as it was. Returns 0,
 * or a DOPA_E* code with why saying what is wrong, with the file and line. */
int config_read(const char *path, int is_explicit, config_settings *s, validate_error *why);

/* One command-line option into s: option is its long name without the
 * dashes ("socket", "state-dir", "max-running", "inactivity-timeout",
 * "trusted-key"). Returns 0, or -1 with s->error saying what is wrong. */
int config_set_option(config_settings *s, const char *option, const char *value);

/* What the file said (s), completed: the command line's settings (cli)
 * over it, the defaults that depend on the machine (paths under root or
 * the user's XDG directories, dopa-validate beside dopad or where it is
 * installed), and the checks across keys. The same at start and on
 * SIGHUP. Returns 0, or a DOPA_E* code with why saying what is wrong. */
int config_complete(config_settings *s, const config_settings *cli, validate_error *why);

/* Logs a warning naming the [peers] keys of s that do nothing because it
 * has no group key; path is the file they came from. */
void config_warn_ignored_peer_keys(const config_settings *s, const char *path);

/* The engine's configuration, with the peer node's and the lists it
 * points to. */
typedef struct config_engine {
    engine_config engine; /* .peer is &peer, or NULL without a group key */
    peer_node_config peer;
    const char *peer_urls[CONFIG_MAX_PEERS], *cache_urls[CONFIG_MAX_PEERS];
} config_engine;

/* Fills out from s and the group key's bytes (PEER_GROUP_KEY_BYTES).
 * out points into s and group_key: both must outlive it. */
void config_engine_make(config_engine *out, const config_settings *s, const uint8_t *group_key);

/* SIGHUP: each key whose value in next differs from running's is logged
 * ("reload: KEY: NOW (was WAS)"), and copied into running when it can
 * change while dopad runs; the others are logged as needing a restart and
 * keep running's value. While running has no group key, the [peers] keys
 * other than group-key are passed over (they wait for that restart).
 * [metrics] listen is the caller's: it opens the endpoint. Adds the keys
 * applied to *applied and those that wait to *kept. */
void config_apply_changes(config_settings *running, const config_settings *next, int *applied,
                          int *kept);

#endif

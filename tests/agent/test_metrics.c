/*
 * The metrics endpoint's text and its listen addresses, without a dopad:
 * every counter lands in its own series (each given a value of its own, so
 * that no two can be swapped unseen), every job state has its line, the
 * text stays within the buffer it is given, and only numeric ADDRESS:PORT
 * pairs are accepted. dopad.metrics serves the same text over HTTP.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"
#include "../support/prom.h"
#include "agent.h"

static void test_each_counter_has_its_own_series(void)
{
    dopa_agent_stats st = {.jobs = 45,
                           .from_origin = 1000,
                           .from_peers = 2000,
                           .from_cache = 1000,
                           .uploaded = 4,
                           .peers = 5,
                           .banned = 6,
                           .bans = 7,
                           .bad_pieces = 8,
                           .timeouts = 9,
                           .refused = 10,
                           .cache_entries = 11,
                           .cache_bytes = 12,
                           .cache_limit = 13,
                           .origin_failures = 14,
                           .origin_peak = 15,
                           .control_sent = 16,
                           .control_received = 17};
    uint64_t states[AGENT_JOB_STATES];
    for (int s = 0; s < AGENT_JOB_STATES; s++)
        states[s] = 100 + (uint64_t)s;
    static char text[8192];
    size_t len = metrics_render(&st, states, 1700000000123, text, sizeof text);
    CHECK(len > 0 && len == strlen(text));
    CHECK(text[len - 1] == '\n');
    CHECK_INT(prom_sample(text, "dopa_received_bytes_total{source=\"origin\"}"), 1000);
    CHECK_INT(prom_sample(text, "dopa_received_bytes_total{source=\"peers\"}"), 2000);
    CHECK_INT(prom_sample(text, "dopa_received_bytes_total{source=\"cache\"}"), 1000);
    CHECK(prom_sample(text, "dopa_peer_share_ratio") == 0.75);
    CHECK_INT(prom_sample(text, "dopa_uploaded_bytes_total"), 4);
    CHECK_INT(prom_sample(text, "dopa_peers"), 5);
    CHECK_INT(prom_sample(text, "dopa_peers_banned"), 6);
    CHECK_INT(prom_sample(text, "dopa_peer_bans_total"), 7);
    CHECK_INT(prom_sample(text, "dopa_peer_bad_pieces_total"), 8);
    CHECK_INT(prom_sample(text, "dopa_peer_timeouts_total"), 9);
    CHECK_INT(prom_sample(text, "dopa_peer_messages_refused_total"), 10);
    CHECK_INT(prom_sample(text, "dopa_cache_entries"), 11);
    CHECK_INT(prom_sample(text, "dopa_cache_bytes"), 12);
    CHECK_INT(prom_sample(text, "dopa_cache_limit_bytes"), 13);
    CHECK_INT(prom_sample(text, "dopa_origin_failures_total"), 14);
    CHECK_INT(prom_sample(text, "dopa_origin_requests_peak"), 15);
    CHECK_INT(prom_sample(text, "dopa_peer_control_sent_total"), 16);
    CHECK_INT(prom_sample(text, "dopa_peer_control_received_total"), 17);
    CHECK(prom_sample(text, "dopa_start_time_seconds") == 1700000000.123);
    CHECK_INT(prom_sample(text, "dopa_build_info{version=\"" AGENT_VERSION "\"}"), 1);
    const char *names[] = {"queued",          "connecting",  "transferring", "suspended", "error",
                           "transient_error", "transferred", "acknowledged", "cancelled"};
    CHECK_INT(sizeof names / sizeof names[0], AGENT_JOB_STATES);
    for (int s = 0; s < AGENT_JOB_STATES; s++) {
        char series[64];
        snprintf(series, sizeof series, "dopa_jobs{state=\"%s\"}", names[s]);
        CHECK_INT(prom_sample(text, series), 100 + s);
    }
    /* Every family says what it is, and its type, once. */
    const char *families[] = {"dopa_build_info gauge",
                              "dopa_start_time_seconds gauge",
                              "dopa_received_bytes_total counter",
                              "dopa_peer_share_ratio gauge",
                              "dopa_uploaded_bytes_total counter",
                              "dopa_jobs gauge",
                              "dopa_peers gauge",
                              "dopa_peers_banned gauge",
                              "dopa_peer_bans_total counter",
                              "dopa_peer_bad_pieces_total counter",
                              "dopa_peer_timeouts_total counter",
                              "dopa_peer_messages_refused_total counter",
                              "dopa_cache_entries gauge",
                              "dopa_cache_bytes gauge",
                              "dopa_cache_limit_bytes gauge",
                              "dopa_origin_failures_total counter",
                              "dopa_origin_requests_peak gauge",
                              "dopa_peer_control_sent_total counter",
                              "dopa_peer_control_received_total counter"};
    int types = 0;
    for (const char *p = text; (p = strstr(p, "# TYPE ")) != NULL; p++)
        types++;
    CHECK_INT(types, sizeof families / sizeof families[0]);
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        char line[128], help[128];
        snprintf(line, sizeof line, "\n# TYPE %s\n", families[i]);
        CHECK_HAS(text, line);
        snprintf(help, sizeof help, "# HELP %.*s ", (int)strcspn(families[i], " "), families[i]);
        CHECK_HAS(text, help);
    }
}

static void test_nothing_received_is_a_share_of_zero(void)
{
    dopa_agent_stats st = {0};
    uint64_t states[AGENT_JOB_STATES] = {0};
    char text[8192];
    CHECK(metrics_render(&st, states, 0, text, sizeof text) > 0);
    CHECK(prom_sample(text, "dopa_peer_share_ratio") == 0);
    CHECK(prom_sample(text, "dopa_jobs{state=\"cancelled\"}") == 0);
}

static void test_the_text_never_outgrows_its_buffer(void)
{
    dopa_agent_stats st = {.from_origin = UINT64_MAX, .cache_limit = UINT64_MAX};
    uint64_t states[AGENT_JOB_STATES];
    for (int s = 0; s < AGENT_JOB_STATES; s++)
        states[s] = UINT64_MAX;
    static char text[8192];
    size_t full = metrics_render(&st, states, INT64_MAX, text, sizeof text);
    CHECK(full > 0 && full < sizeof text);
    CHECK_HAS(text, "dopa_cache_limit_bytes 18446744073709551615\n");
    /* Each shorter buffer: refused, and nothing written past it. */
    static char small[8192 + 16];
    for (size_t len = 0; len <= full; len += len < 64 ? 1 : 97) {
        memset(small, 'x', sizeof small);
        CHECK_INT(metrics_render(&st, states, INT64_MAX, small, len), 0);
        for (size_t k = len; k < sizeof small; k++)
            CHECK(small[k] == 'x');
    }
    CHECK_INT(metrics_render(&st, states, INT64_MAX, small, full + 1), full);
}

static void test_listen_addresses(void)
{
    const struct {
        const char *listen;
        const char *host;
        unsigned port;
        int loopback;
    } good[] = {
        {"127.0.0.1:9464", "127.0.0.1", 9464, 1},
        {"127.1.2.3:1", "127.1.2.3", 1, 1},
        {"0.0.0.0:9464", "0.0.0.0", 9464, 0},
        {"192.0.2.7:65535", "192.0.2.7", 65535, 0},
        {"127.0.0.1:0", "127.0.0.1", 0, 1},
        {"[::1]:9464", "[::1]", 9464, 1},
        {"[::]:9464", "[::]", 9464, 0},
        {"[::ffff:127.0.0.1]:9464", "[::ffff:127.0.0.1]", 9464, 1},
        {"[fe80::1]:80", "[fe80::1]", 80, 0},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char host[METRICS_LISTEN_MAX + 1];
        unsigned port = 99;
        int loopback = -1;
        CHECK_INT(metrics_parse_listen(good[i].listen, host, sizeof host, &port, &loopback), 0);
        CHECK_STR(host, good[i].host);
        CHECK_INT(port, good[i].port);
        CHECK_INT(loopback, good[i].loopback);
    }
    const char *bad[] = {
        "",
        "9464",
        ":9464",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:099999",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1:80x",
        "127.0.0.1 :80",
        "localhost:9464",
        "example.com:80",
        "::1:9464",
        "[::1]",
        "[::1]:",
        "[::1:9464",
        "[]:9464",
        "[127.0.0.1]:9464",
        "http://127.0.0.1:9464",
        "127.0.0.1:9464/metrics",
        "256.0.0.1:80",
        "[::1]:9464:1",
        "127.0.0.1:9464 # a comment",
        "[0000:0000:0000:0000:0000:0000:0000:0001]:9464:extra-long-text-beyond-the-limit"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char host[METRICS_LISTEN_MAX + 1];
        unsigned port;
        int loopback;
        if (metrics_parse_listen(bad[i], host, sizeof host, &port, &loopback) != -1) {
            fprintf(stderr, "  accepted: \"%s\"\n", bad[i]);
            CHECK(0);
        }
    }
    /* The host must fit the caller's buffer. */
    char tiny[4];
    unsigned port;
    int loopback;
    CHECK_INT(metrics_parse_listen("127.0.0.1:80", tiny, sizeof tiny, &port, &loopback), -1);
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_each_counter_has_its_own_series),
                         CASE(test_nothing_received_is_a_share_of_zero),
                         CASE(test_the_text_never_outgrows_its_buffer),
                         CASE(test_listen_addresses),
                         {0},
                     });
}

/*
 * The peer node against real peers on loopback: an honest node serving
 * offered content, and rogue peers (child processes answering with the
 * wire format directly) that send bad pieces, refuse, stall, or hold
 * another group's key. The test plays the agent: its swarm callbacks check
 * each piece against its hash, as the engine does.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <sodium.h>

#include "../check.h"
#include "../support/nginx.h"
#include "peer.h"
#include "validate.h"

#define PIECE  (64 * 1024)
#define PIECES 16
#define SIZE   (PIECE * PIECES - 1000) /* the last piece is short */

static uint8_t content[SIZE], hashes[PIECES * 32], cid[PEER_CID_BYTES];
static uint8_t group[PEER_GROUP_KEY_BYTES], other_group[PEER_GROUP_KEY_BYTES];
static pid_t rogue_pid;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static uint32_t piece_len(uint64_t i)
{
    return i + 1 < PIECES ? PIECE : SIZE - PIECE * (PIECES - 1);
}

/* ------------------------------------------------------------------ */
/* The agent's side of a swarm                                        */

typedef struct fetch {
    int done[PIECES], claimed[PIECES];
    int good, bad;
} fetch;

static int on_claim(void *ctx, uint64_t piece, int take)
{
    fetch *f = ctx;
    if (f->done[piece] || f->claimed[piece])
        return 0;
    if (take)
        f->claimed[piece] = 1;
    return 1;
}

static int on_piece(void *ctx, uint64_t piece, const uint8_t *data, size_t len, int cache_host,
                    uint64_t sender, void *handle, int *took)
{
    (void)cache_host;
    (void)sender;
    (void)handle;
    (void)took;
    fetch *f = ctx;
    f->claimed[piece] = 0;
    uint8_t h[32];
    validate_blake2b(data, len, h);
    if (len != piece_len(piece) || memcmp(h, hashes + piece * 32, 32) != 0) {
        f->bad++;
        return PEER_VERDICT_BAD;
    }
    f->done[piece] = 1;
    f->good++;
    return PEER_VERDICT_GOOD;
}

static void on_lost(void *ctx, uint64_t piece)
{
    ((fetch *)ctx)->claimed[piece] = 0;
}

static peer_swarm_ops ops_for(fetch *f)
{
    return (peer_swarm_ops){.claim = on_claim, .piece = on_piece, .lost = on_lost, .ctx = f};
}

static peer_node *open_node(const uint8_t *key, const char *listen, const char *peer,
                            uint32_t piece_timeout_ms)
{
    const char *peers[1] = {peer};
    peer_node_config cfg = {
        .group_key = key,
        .listen = listen,
        .peers = peers,
        .n_peers = peer != NULL,
        .piece_timeout_ms = piece_timeout_ms,
    };
    peer_node *n = NULL;
    char why[256];
    int err = peer_node_open(&cfg, &n, why, sizeof why);
    if (err != PEER_OK)
        fprintf(stderr, "  peer_node_open: %s\n", why);
    CHECK_INT(err, PEER_OK);
    return n;
}

/* Turns of the nodes until cond(ctx) or the time runs out. */
static int run_until(peer_node *a, peer_node *b, int (*cond)(void *), void *ctx, int limit_ms)
{
    int64_t end = now_ms() + limit_ms;
    while (!cond(ctx)) {
        if (now_ms() > end)
            return 0;
        peer_node_step(a);
        if (b != NULL)
            peer_node_step(b);
        sleep_ms(5);
    }
    return 1;
}

static int all_done(void *ctx)
{
    fetch *f = ctx;
    for (int i = 0; i < PIECES; i++)
        if (!f->done[i])
            return 0;
    return 1;
}

static peer_node *stats_node;
static uint64_t stat_bans(void)
{
    peer_stats s;
    peer_node_stats(stats_node, &s);
    return s.bans;
}

static int banned_once(void *ctx)
{
    (void)ctx;
    return stat_bans() >= 1;
}

static peer_swarm *origin_swarm;
static int origin_may_all(void *ctx)
{
    (void)ctx;
    for (uint64_t p = 0; p < PIECES; p++)
        if (!peer_swarm_origin_may(origin_swarm, p))
            return 0;
    return 1;
}

static int has_sources(void *ctx)
{
    return peer_swarm_sources(ctx) > 0;
}

/* ------------------------------------------------------------------ */
/* Rogue peers                                                        */

enum rogue_mode { ROGUE_LIAR, ROGUE_REFUSER, ROGUE_SILENT };

/* A child answering HAVE_REQ with HAVE_ALL and PIECE_REQ as the mode says. */
static void rogue_main(const char *url, enum rogue_mode mode)
{
    peer_wire_key key;
    peer_wire_key_derive(group, &key);
    nng_socket s;
    if (nng_rep0_open(&s) != 0 || nng_listen(s, url, NULL, 0) != 0)
        _exit(3);
    static uint8_t garbage[PIECE];
    randombytes_buf(garbage, sizeof garbage);
    for (;;) {
        nng_msg *msg;
        if (nng_recvmsg(s, &msg, 0) != 0)
            _exit(4);
        peer_msg req, rep;
        if (peer_wire_open(&key, nng_msg_body(msg), nng_msg_len(msg), &req) != PEER_OK) {
            nng_msg_free(msg);
            continue;
        }
        memset(&rep, 0, sizeof rep);
        randombytes_buf(rep.head.sender, sizeof rep.head.sender);
        rep.head.time_ms = (int64_t)time(NULL) * 1000;
        rep.head.request_id = req.head.request_id;
        memcpy(rep.cid, req.cid, sizeof rep.cid);
        if (req.head.type == PEER_MSG_HAVE_REQ) {
            rep.head.type = PEER_MSG_HAVE_REP;
            rep.have_status = PEER_HAVE_ALL;
            rep.piece_count = PIECES;
        } else {
            rep.head.type = PEER_MSG_PIECE_REP;
            rep.piece = req.piece;
            if (mode == ROGUE_SILENT) {
                nng_msg_free(msg);
                /* A REP socket answers in order: never answering a piece
                 * means never answering anything again. Just wait. */
                for (;;)
                    pause();
            }
            rep.piece_status = mode == ROGUE_LIAR ? PEER_PIECE_OK : PEER_PIECE_NOT_HELD;
            if (mode == ROGUE_LIAR) {
                rep.data = garbage;
                rep.data_len = piece_len(req.piece);
            }
        }
        nng_msg_free(msg);
        size_t size = peer_wire_sealed_size(&rep), len;
        if (nng_msg_alloc(&msg, size) != 0 ||
            peer_wire_seal(&key, &rep, nng_msg_body(msg), size, &len) != PEER_OK)
            _exit(5);
        if (nng_sendmsg(s, msg, 0) != 0)
            nng_msg_free(msg);
    }
}

/* A child that sends n PIECE_REQs at once on one connection and prints
 * how many answers were OK, BUSY or anything else. */
static void flood_main(const char *url, int n)
{
    peer_wire_key key;
    peer_wire_key_derive(group, &key);
    nng_socket s;
    nng_ctx ctx[64];
    nng_aio *aio[64];
    if (n > 64 || nng_req0_open(&s) != 0 ||
        nng_socket_set_ms(s, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE) != 0 ||
        nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, PEER_MSG_MAX) != 0 || nng_dial(s, url, NULL, 0))
        _exit(3);
    for (int i = 0; i < n; i++) {
        peer_msg m = {0};
        m.head.type = PEER_MSG_PIECE_REQ;
        randombytes_buf(m.head.sender, sizeof m.head.sender);
        m.head.time_ms = (int64_t)time(NULL) * 1000;
        m.head.request_id = (uint64_t)i + 1;
        memcpy(m.cid, cid, sizeof m.cid);
        m.piece = (uint64_t)(i % PIECES);
        nng_msg *msg;
        size_t size = peer_wire_sealed_size(&m), len;
        if (nng_ctx_open(&ctx[i], s) != 0 || nng_aio_alloc(&aio[i], NULL, NULL) != 0 ||
            nng_msg_alloc(&msg, size) != 0 ||
            peer_wire_seal(&key, &m, nng_msg_body(msg), size, &len) != PEER_OK)
            _exit(4);
        nng_aio_set_msg(aio[i], msg);
        nng_aio_set_timeout(aio[i], 20000);
        nng_ctx_send(ctx[i], aio[i]);
    }
    for (int i = 0; i < n; i++) {
        nng_aio_wait(aio[i]);
        if (nng_aio_result(aio[i]) == 0)
            nng_ctx_recv(ctx[i], aio[i]);
    }
    int ok = 0, busy = 0, other = 0;
    for (int i = 0; i < n; i++) {
        nng_aio_wait(aio[i]);
        peer_msg rep;
        nng_msg *msg = nng_aio_result(aio[i]) == 0 ? nng_aio_get_msg(aio[i]) : NULL;
        if (msg != NULL &&
            peer_wire_open(&key, nng_msg_body(msg), nng_msg_len(msg), &rep) == PEER_OK &&
            rep.piece_status == PEER_PIECE_OK)
            ok++;
        else if (msg != NULL && rep.piece_status == PEER_PIECE_BUSY)
            busy++;
        else
            other++;
    }
    printf("%d %d %d\n", ok, busy, other);
    fflush(stdout);
    _exit(0); /* never close a socket with messages in flight */
}

/* nng cannot be used across fork(): the rogue is this program run again. */
static void start_rogue(const char *url, enum rogue_mode mode)
{
    char hex[2 * PEER_GROUP_KEY_BYTES + 1], m[8];
    validate_hex(group, sizeof group, hex);
    snprintf(m, sizeof m, "%d", (int)mode);
    rogue_pid = fork();
    CHECK(rogue_pid >= 0);
    if (rogue_pid == 0) {
        execl("/proc/self/exe", "test_peer_node", "--rogue", url, m, hex, (char *)NULL);
        _exit(127);
    }
    sleep_ms(200);
}

static void stop_rogue(void)
{
    if (rogue_pid > 0) {
        kill(rogue_pid, SIGKILL);
        waitpid(rogue_pid, NULL, 0);
    }
    rogue_pid = 0;
}

static void after_case(void)
{
    stop_rogue();
}

/* The node offers the content, from a file. */
static void offer_content(peer_node *b)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/content", check_tmpdir());
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    CHECK_INT(fwrite(content, 1, SIZE, f), SIZE);
    fclose(f);
    f = fopen(path, "rb");
    peer_offer_info info = {
        .fd = fileno(f), .size = SIZE, .piece_size = PIECE, .piece_hashes = hashes};
    CHECK_INT(peer_offer(b, cid, &info), PEER_OK);
    fclose(f); /* the node keeps its own descriptor */
}

/* The origin may fetch no piece, or some, for origin_swarm. */
static int origin_may_none(void *ctx)
{
    (void)ctx;
    for (uint64_t p = 0; p < PIECES; p++)
        if (peer_swarm_origin_may(origin_swarm, p))
            return 0;
    return 1;
}

static int origin_may_some(void *ctx)
{
    return !origin_may_none(ctx);
}

static int origin_may_some_not(void *ctx)
{
    return !origin_may_all(ctx);
}

static int swarm_ready(void *ctx)
{
    return peer_swarm_ready(ctx);
}

/* An honest node serving the content. */
static peer_node *honest(const uint8_t *key, char *url, size_t len)
{
    snprintf(url, len, "tcp://127.0.0.1:%d", test_free_port());
    peer_node *b = open_node(key, url, NULL, 0);
    offer_content(b);
    return b;
}

/* A node whose only peer is a rogue, and its swarm, once the rogue has
 * said it holds everything. */
static peer_swarm *against_rogue(enum rogue_mode mode, uint32_t piece_timeout_ms, fetch *f,
                                 peer_node **a)
{
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    start_rogue(url, mode);
    *a = open_node(group, NULL, url, piece_timeout_ms);
    peer_swarm_ops ops = ops_for(f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(*a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    CHECK(run_until(*a, NULL, has_sources, s, 5000));
    return s;
}

/* ------------------------------------------------------------------ */

static void test_pieces_come_from_an_honest_peer(void)
{
    char url[64];
    peer_node *b = honest(group, url, sizeof url);
    peer_node *a = open_node(group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    CHECK(run_until(a, b, all_done, &f, 10000));
    CHECK_INT(f.bad, 0);
    peer_stats sa, sb;
    peer_node_stats(a, &sa);
    peer_node_stats(b, &sb);
    CHECK_INT(sa.downloaded, SIZE);
    CHECK_INT(sb.uploaded, SIZE);
    CHECK_INT(peer_offer_uploaded(b, cid), SIZE);
    CHECK_INT(sa.bans, 0);
    peer_swarm_close(s);
    peer_node_close(a);
    peer_node_close(b);
}

static void test_a_peer_sending_bad_pieces_is_banned(void)
{
    fetch f = {0};
    peer_node *a;
    peer_swarm *s = against_rogue(ROGUE_LIAR, 0, &f, &a);
    CHECK(!peer_swarm_origin_may(s, 0)); /* it claims to hold everything */
    stats_node = a;
    CHECK(run_until(a, NULL, banned_once, NULL, 10000));
    peer_stats st;
    peer_node_stats(a, &st);
    printf("  banned after %llu bad pieces\n", (unsigned long long)st.bad_pieces);
    CHECK(st.bad_pieces >= 4);
    CHECK(st.bad_pieces <= 4 + 4); /* at most the requests in flight more */
    CHECK_INT(st.banned, 1);
    CHECK_INT(f.good, 0);
    /* Banned: what it claims holds nothing back, and it is asked nothing. */
    origin_swarm = s;
    CHECK(run_until(a, NULL, origin_may_all, NULL, 2000));
    uint64_t bad = st.bad_pieces;
    run_until(a, NULL, all_done, &f, 1000);
    peer_node_stats(a, &st);
    CHECK_INT(st.bad_pieces, bad);
    peer_swarm_close(s);
    peer_node_close(a);
}

static void test_an_honest_peer_is_not_banned_for_another(void)
{
    char liar[64], good[64];
    snprintf(liar, sizeof liar, "tcp://127.0.0.1:%d", test_free_port());
    start_rogue(liar, ROGUE_LIAR);
    peer_node *b = honest(group, good, sizeof good);
    const char *peers[2] = {liar, good};
    peer_node_config cfg = {.group_key = group, .peers = peers, .n_peers = 2};
    peer_node *a;
    char why[256];
    CHECK_INT(peer_node_open(&cfg, &a, why, sizeof why), PEER_OK);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    CHECK(run_until(a, b, all_done, &f, 15000));
    peer_stats st;
    peer_node_stats(a, &st);
    printf("  %d good pieces, %d bad ones; %llu peer banned\n", f.good, f.bad,
           (unsigned long long)st.banned);
    CHECK(st.banned <= 1);
    CHECK_INT(st.bans, st.bad_pieces >= 4 ? 1 : 0);
    peer_stats sb;
    peer_node_stats(b, &sb);
    CHECK(sb.uploaded > 0);
    peer_swarm_close(s);
    peer_node_close(a);
    peer_node_close(b);
}

static void test_a_peer_that_refuses_stops_holding_back_the_origin(void)
{
    fetch f = {0};
    peer_node *a;
    peer_swarm *s = against_rogue(ROGUE_REFUSER, 0, &f, &a);
    origin_swarm = s;
    int64_t t0 = now_ms();
    CHECK(run_until(a, NULL, origin_may_all, NULL, 5000));
    printf("  the origin may take every piece after %lld ms\n", (long long)(now_ms() - t0));
    CHECK_INT(f.good, 0);
    peer_swarm_close(s);
    peer_node_close(a);
}

static void test_a_stalling_peer_is_routed_around(void)
{
    fetch f = {0};
    peer_node *a;
    peer_swarm *s = against_rogue(ROGUE_SILENT, 300, &f, &a);
    origin_swarm = s;
    CHECK(run_until(a, NULL, origin_may_all, NULL, 10000));
    peer_stats st;
    peer_node_stats(a, &st);
    CHECK(st.timeouts >= 3);
    CHECK_INT(st.bans, 0); /* slow is not lying */
    peer_swarm_close(s);
    for (int i = 0; i < PIECES; i++)
        CHECK(!f.claimed[i]); /* closing gave every claim back */
    peer_node_close(a);
}

static void test_one_connection_gets_busy_beyond_its_share(void)
{
    /* A slow upload budget holds replies back, so that requests of one
     * connection pile up: beyond two at a time, and beyond two seconds of
     * budget, they are answered BUSY, never queued without bound. */
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    peer_node_config cfg = {
        .group_key = group, .listen = url, .max_queued = 2, .upload_rate = 200000};
    peer_node *b;
    char why[256];
    CHECK_INT(peer_node_open(&cfg, &b, why, sizeof why), PEER_OK);
    offer_content(b);

    char key_hex[65], cid_hex[65], out[4200];
    validate_hex(group, sizeof group, key_hex);
    validate_hex(cid, sizeof cid, cid_hex);
    snprintf(out, sizeof out, "%s/flood.out", check_tmpdir());
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (freopen(out, "w", stdout) == NULL)
            _exit(5);
        execl("/proc/self/exe", "test_peer_node", "--flood", url, "16", key_hex, cid_hex,
              (char *)NULL);
        _exit(127);
    }
    rogue_pid = pid; /* stopped by after_case if it hangs */
    int status = 0;
    int64_t end = now_ms() + 30000;
    while (waitpid(pid, &status, WNOHANG) == 0 && now_ms() < end)
        sleep_ms(50);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    rogue_pid = 0;
    int ok = -1, busy = -1, other = -1;
    FILE *f = fopen(out, "r");
    CHECK(f != NULL && fscanf(f, "%d %d %d", &ok, &busy, &other) == 3);
    fclose(f);
    printf("  16 requests at once on one connection: %d served, %d busy\n", ok, busy);
    CHECK(ok >= 1);
    CHECK(busy >= 1);
    CHECK_INT(ok + busy, 16);
    peer_stats sb;
    peer_node_stats(b, &sb);
    CHECK_INT(sb.uploaded, (uint64_t)ok * PIECE);
    peer_node_close(b);
}

static void test_pieces_coming_to_a_member_are_left_to_it(void)
{
    /* b fetches the content too, holds nothing yet, and says every piece
     * is on its way to it. */
    char url[64], path[4200];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    peer_node *b = open_node(group, url, NULL, 0);
    snprintf(path, sizeof path, "%s/content", check_tmpdir());
    FILE *file = fopen(path, "w+b");
    CHECK(file != NULL);
    uint8_t none[(PIECES + 7) / 8] = {0};
    peer_offer_info info = {.fd = fileno(file),
                            .size = SIZE,
                            .piece_size = PIECE,
                            .piece_hashes = hashes,
                            .held = none,
                            .downloading = 1};
    CHECK_INT(peer_offer(b, cid, &info), PEER_OK);
    fclose(file);
    uint64_t all[PIECES];
    for (uint64_t p = 0; p < PIECES; p++)
        all[p] = p;
    CHECK_INT(peer_offer_coming(b, cid, all, PIECES), PEER_OK);
    uint64_t beyond = PIECES;
    CHECK_INT(peer_offer_coming(b, (const uint8_t *)"not offered, not offered, not of", all, 1),
              PEER_EINVAL);
    CHECK_INT(peer_offer_coming(b, cid, &beyond, 1), PEER_EINVAL);
    CHECK_INT(peer_offer_coming(b, cid, all, PIECES), PEER_OK);

    peer_node *a = open_node(group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &origin_swarm), PEER_OK);
    /* Once b has answered, a leaves every piece to it: even its own share. */
    CHECK(run_until(a, b, swarm_ready, origin_swarm, 5000));
    CHECK(origin_may_none(NULL));
    /* When nothing is coming any more, a's share is a's again; b's stays b's. */
    CHECK_INT(peer_offer_coming(b, cid, NULL, 0), PEER_OK);
    CHECK(run_until(a, b, origin_may_some, NULL, 3000));
    uint64_t start = peer_swarm_share_start(origin_swarm);
    CHECK(start == 0 || start == PIECES / 2);
    for (uint64_t p = 0; p < PIECES; p++)
        CHECK_INT(peer_swarm_origin_may(origin_swarm, p), p >= start && p < start + PIECES / 2);
    /* A piece b then holds is no longer coming: it is b's to send. */
    CHECK_INT(peer_offer_coming(b, cid, all, 1), PEER_OK);
    peer_offer_piece(b, cid, 0);
    CHECK(run_until(a, b, has_sources, origin_swarm, 3000));
    CHECK_INT(peer_swarm_holders(origin_swarm, 0), 1);
    CHECK(!peer_swarm_origin_may(origin_swarm, 0));
    peer_swarm_close(origin_swarm);
    peer_node_close(a);
    peer_node_close(b);
}

static int never(void *ctx)
{
    (void)ctx;
    return 0;
}

static void test_a_peer_that_starts_fetching_late_gets_its_share(void)
{
    /* b answers for a while that it has nothing and fetches nothing, then
     * starts fetching: its share is its own from then on, not taken over
     * as if it had stalled since its first answer. */
    char url[64], path[4200];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    peer_node *b = open_node(group, url, NULL, 0);
    peer_node *a = open_node(group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &origin_swarm), PEER_OK);
    CHECK(run_until(a, b, swarm_ready, origin_swarm, 5000));
    CHECK(origin_may_all(NULL));
    run_until(a, b, never, NULL, 5500); /* longer than a member may stall */
    snprintf(path, sizeof path, "%s/content", check_tmpdir());
    FILE *file = fopen(path, "w+b");
    CHECK(file != NULL);
    uint8_t none[(PIECES + 7) / 8] = {0};
    peer_offer_info info = {.fd = fileno(file),
                            .size = SIZE,
                            .piece_size = PIECE,
                            .piece_hashes = hashes,
                            .held = none,
                            .downloading = 1};
    CHECK_INT(peer_offer(b, cid, &info), PEER_OK);
    fclose(file);
    CHECK(run_until(a, b, origin_may_some_not, NULL, 3000));
    run_until(a, b, never, NULL, 300);
    uint64_t start = peer_swarm_share_start(origin_swarm);
    CHECK(start == 0 || start == PIECES / 2);
    for (uint64_t p = 0; p < PIECES; p++)
        CHECK_INT(peer_swarm_origin_may(origin_swarm, p), p >= start && p < start + PIECES / 2);
    peer_swarm_close(origin_swarm);
    peer_node_close(a);
    peer_node_close(b);
}

static void test_a_node_with_another_key_gets_nothing(void)
{
    char url[64];
    peer_node *b = honest(group, url, sizeof url);
    peer_node *a = open_node(other_group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    CHECK(!run_until(a, b, has_sources, s, 3000));
    peer_stats sa, sb;
    peer_node_stats(a, &sa);
    peer_node_stats(b, &sb);
    CHECK_INT(f.good + f.bad, 0);
    CHECK_INT(sb.uploaded, 0);
    CHECK(sb.refused > 0);
    printf("  %llu requests refused without an answer\n", (unsigned long long)sb.refused);
    peer_swarm_close(s);
    peer_node_close(a);
    peer_node_close(b);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 1;
    if (argc == 6 && strcmp(argv[1], "--flood") == 0) {
        if (validate_unhex(argv[4], group, sizeof group) != 0 ||
            validate_unhex(argv[5], cid, sizeof cid) != 0)
            return 2;
        flood_main(argv[2], atoi(argv[3]));
    }
    if (argc == 5 && strcmp(argv[1], "--rogue") == 0) {
        if (validate_unhex(argv[4], group, sizeof group) != 0)
            return 2;
        rogue_main(argv[2], (enum rogue_mode)atoi(argv[3]));
    }
    randombytes_buf(content, sizeof content);
    for (int i = 0; i < PIECES; i++)
        validate_blake2b(content + i * PIECE, piece_len((uint64_t)i), hashes + i * 32);
    randombytes_buf(cid, sizeof cid);
    peer_group_key_generate(group);
    peer_group_key_generate(other_group);
    check_cleanup = after_case;
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_pieces_come_from_an_honest_peer),
                         CASE(test_a_peer_sending_bad_pieces_is_banned),
                         CASE(test_an_honest_peer_is_not_banned_for_another),
                         CASE(test_a_peer_that_refuses_stops_holding_back_the_origin),
                         CASE(test_a_stalling_peer_is_routed_around),
                         CASE(test_one_connection_gets_busy_beyond_its_share),
                         CASE(test_pieces_coming_to_a_member_are_left_to_it),
                         CASE(test_a_peer_that_starts_fetching_late_gets_its_share),
                         CASE(test_a_node_with_another_key_gets_nothing),
                         {0},
                     });
}

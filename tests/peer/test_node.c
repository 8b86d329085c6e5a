/*
 * The peer node against real peers on loopback: an honest node serving
 * offered content, and rogue peers (child processes answering with the
 * wire format directly) that send bad pieces, refuse, stall, or hold
 * another group's key. The test plays the agent: its swarm callbacks check
 * each piece against its hash, as the engine does.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
static uint8_t content_seed[randombytes_SEEDBYTES]; /* content is made from it */
/* This program, for the child peers that run it again (nng cannot cross a
 * fork); read at start, since /proc/self/exe names valgrind under valgrind. */
static char self_path[4096];
static uint8_t group[PEER_GROUP_KEY_BYTES], other_group[PEER_GROUP_KEY_BYTES];
static pid_t rogue_pid;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
    validate_error why = {0};
    int err = peer_node_open(&cfg, &n, &why);
    if (err != PEER_OK)
        fprintf(stderr, "  peer_node_open: %s\n", why.text);
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
        check_sleep_ms(5);
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
static peer_stats stats_now(void)
{
    peer_stats s;
    peer_node_stats(stats_node, &s);
    return s;
}

static int banned_once(void *ctx)
{
    (void)ctx;
    return stats_now().bans >= 1;
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

enum rogue_mode {
    ROGUE_LIAR,     /* pieces of the right length and the wrong bytes */
    ROGUE_REFUSER,  /* NOT_HELD for every piece it claims */
    ROGUE_SILENT,   /* never answers a piece request */
    ROGUE_OVERLONG, /* a piece with one byte more than asked */
    ROGUE_CLAIMER,  /* fetching, it says: one more piece held every 300 ms, the rest coming;
                     * NOT_HELD for every piece asked */
    /* Raw TCP, below nng's framing: */
    ROGUE_ENDLESS, /* a reply whose length says 2^62 bytes, then bytes without end */
    ROGUE_TRICKLE, /* a reply of a piece's length, one byte a second */
};

/* A child answering HAVE_REQ with HAVE_ALL and PIECE_REQ as the mode says. */
static void rogue_main(const char *url, enum rogue_mode mode)
{
    peer_wire_key key;
    peer_wire_key_derive(group, &key);
    nng_socket s;
    if (nng_rep0_open(&s) != 0 || nng_listen(s, url, NULL, 0) != 0)
        _exit(3);
    static uint8_t garbage[PIECE + 1];
    randombytes_buf(garbage, sizeof garbage);
    int64_t started = now_ms();
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
        uint8_t held[(PIECES + 7) / 8] = {0}, coming[(PIECES + 7) / 8] = {0};
        if (req.head.type == PEER_MSG_HAVE_REQ) {
            rep.head.type = PEER_MSG_HAVE_REP;
            rep.have_status = PEER_HAVE_ALL;
            rep.piece_count = PIECES;
            if (mode == ROGUE_CLAIMER) {
                int64_t k = 1 + (now_ms() - started) / 300;
                for (int64_t i = 0; i < PIECES; i++)
                    peer_bit_set(i < k ? held : coming, (uint64_t)i);
                rep.have_status = k < PIECES ? PEER_HAVE_SOME : PEER_HAVE_ALL;
                rep.bitfield = held;
                rep.role = PEER_ROLE_DOWNLOADING | PEER_ROLE_COMING;
                rep.coming = coming;
            }
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
            rep.piece_status = mode == ROGUE_REFUSER || mode == ROGUE_CLAIMER ? PEER_PIECE_NOT_HELD
                                                                              : PEER_PIECE_OK;
            if (mode == ROGUE_LIAR) {
                rep.data = garbage;
                rep.data_len = piece_len(req.piece);
            } else if (mode == ROGUE_OVERLONG) { /* the real piece, and one byte more */
                memcpy(garbage, content + req.piece * PIECE, piece_len(req.piece));
                rep.data = garbage;
                rep.data_len = piece_len(req.piece) + 1;
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

static int read_full(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return -1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* A child speaking nng's TCP framing itself (SP header, 64-bit lengths,
 * REQ/REP's request id), so that it can send what nng never would: it
 * answers HAVE_REQ with HAVE_ALL, then breaks the first piece reply as the
 * mode says and never sends another byte of anything else. */
static void raw_rogue_main(int port, enum rogue_mode mode)
{
    peer_wire_key key;
    peer_wire_key_derive(group, &key);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(ls, 8) != 0)
        _exit(3);
    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0)
            _exit(4);
        static const uint8_t rep_header[8] = {0, 'S', 'P', 0, 0, 0x31, 0, 0}; /* REP v0 */
        uint8_t hello[8];
        if (write(c, rep_header, 8) != 8 || read_full(c, hello, 8) != 0) {
            close(c);
            continue;
        }
        for (;;) {
            uint8_t len8[8], body[PEER_REQUEST_MAX + 8];
            if (read_full(c, len8, 8) != 0)
                break;
            uint64_t len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | len8[i];
            if (len < 4 || len > sizeof body || read_full(c, body, (size_t)len) != 0)
                break;
            peer_msg req, rep;
            if (peer_wire_open(&key, body + 4, (size_t)len - 4, &req) != PEER_OK)
                continue;
            if (req.head.type == PEER_MSG_PIECE_REQ) {
                /* The request id, then the broken reply. */
                uint8_t out[12];
                put_be64(out, mode == ROGUE_ENDLESS ? (uint64_t)1 << 62 : PIECE + 200);
                memcpy(out + 8, body, 4);
                if (write(c, out, 12) != 12)
                    break;
                uint8_t junk[4096];
                memset(junk, 0x5a, sizeof junk);
                for (;;) {
                    if (write(c, junk, mode == ROGUE_ENDLESS ? sizeof junk : 1) < 0)
                        break;
                    if (mode == ROGUE_TRICKLE)
                        sleep(1);
                }
                break;
            }
            memset(&rep, 0, sizeof rep);
            randombytes_buf(rep.head.sender, sizeof rep.head.sender);
            rep.head.type = PEER_MSG_HAVE_REP;
            rep.head.time_ms = (int64_t)time(NULL) * 1000;
            rep.head.request_id = req.head.request_id;
            memcpy(rep.cid, req.cid, sizeof rep.cid);
            rep.have_status = PEER_HAVE_ALL;
            rep.piece_count = PIECES;
            uint8_t out[8 + 4 + 256];
            size_t sealed;
            if (peer_wire_seal(&key, &rep, out + 12, sizeof out - 12, &sealed) != PEER_OK)
                _exit(5);
            put_be64(out, sealed + 4);
            memcpy(out + 8, body, 4);
            if (write(c, out, 12 + sealed) != (ssize_t)(12 + sealed))
                break;
        }
        close(c);
    }
}

/* A child that sends n PIECE_REQs at once on one connection and prints
 * how many answers were OK, BUSY or anything else. */
static void flood_main(const char *url, int n, int rounds, int out_of_range)
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
    for (int i = 0; i < n; i++)
        if (nng_ctx_open(&ctx[i], s) != 0 || nng_aio_alloc(&aio[i], NULL, NULL) != 0)
            _exit(4);
    int ok = 0, busy = 0, not_held = 0, other = 0;
    unsigned long long bytes = 0; /* of the pieces served */
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < n; i++) {
            peer_msg m = {0};
            m.head.type = PEER_MSG_PIECE_REQ;
            randombytes_buf(m.head.sender, sizeof m.head.sender);
            m.head.time_ms = (int64_t)time(NULL) * 1000;
            m.head.request_id = (uint64_t)(r * n + i) + 1;
            memcpy(m.cid, cid, sizeof m.cid);
            m.piece = (uint64_t)(i % PIECES);
            /* Past the content: just past it, and at the protocol's limit
             * (past the limit, the wire format refuses: test_wire.c). */
            if (out_of_range)
                m.piece = i % 2 ? PIECES + (uint64_t)(r * n + i) : PEER_MAX_PIECES - 1;
            nng_msg *msg;
            size_t size = peer_wire_sealed_size(&m), len;
            if (nng_msg_alloc(&msg, size) != 0 ||
                peer_wire_seal(&key, &m, nng_msg_body(msg), size, &len) != PEER_OK)
                _exit(4);
            nng_aio_set_msg(aio[i], msg);
            nng_aio_set_timeout(aio[i], out_of_range ? 2000 : 20000);
            nng_ctx_send(ctx[i], aio[i]);
        }
        for (int i = 0; i < n; i++) {
            nng_aio_wait(aio[i]);
            if (nng_aio_result(aio[i]) == 0)
                nng_ctx_recv(ctx[i], aio[i]);
        }
        for (int i = 0; i < n; i++) {
            nng_aio_wait(aio[i]);
            peer_msg rep;
            nng_msg *msg = nng_aio_result(aio[i]) == 0 ? nng_aio_get_msg(aio[i]) : NULL;
            int opened = msg != NULL &&
                         peer_wire_open(&key, nng_msg_body(msg), nng_msg_len(msg), &rep) == PEER_OK;
            if (opened && rep.piece_status == PEER_PIECE_OK) {
                ok++;
                bytes += rep.data_len;
            } else if (opened && rep.piece_status == PEER_PIECE_BUSY)
                busy++;
            else if (opened && rep.piece_status == PEER_PIECE_NOT_HELD)
                not_held++;
            else
                other++;
            if (msg != NULL)
                nng_msg_free(msg);
        }
    }
    printf("%d %d %d %d %llu\n", ok, busy, not_held, other, bytes);
    fflush(stdout);
    _exit(0); /* never close a socket with messages in flight */
}

/* A member of the group flooding a server with fresh HAVE_REQs, from
 * 127.0.0.2 (another address than the honest nodes') on FLOOD_CONNS
 * connections with FLOOD_CTX requests in flight on each: random sender ids
 * and content ids, dated 59 s ahead (the longest a nonce is remembered).
 * A request not answered within 100 ms was refused. Until SIGTERM; then it
 * prints how many were answered and how many were not. */
#define FLOOD_CONNS 4
#define FLOOD_CTX   48
static volatile sig_atomic_t member_flood_stop;
static void on_member_flood_stop(int sig)
{
    (void)sig;
    member_flood_stop = 1;
}

static void member_flood_main(const char *url)
{
    signal(SIGTERM, on_member_flood_stop);
    peer_wire_key key;
    peer_wire_key_derive(group, &key);
    nng_socket s[FLOOD_CONNS];
    nng_ctx ctx[FLOOD_CONNS * FLOOD_CTX];
    nng_aio *aio[FLOOD_CONNS * FLOOD_CTX];
    nng_sockaddr local = {.s_in = {.sa_family = NNG_AF_INET}};
    local.s_in.sa_addr = htonl(0x7f000002); /* 127.0.0.2 */
    for (int c = 0; c < FLOOD_CONNS; c++) {
        nng_dialer d;
        if (nng_req0_open(&s[c]) != 0 ||
            nng_socket_set_ms(s[c], NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE) != 0 ||
            nng_dialer_create(&d, s[c], url) != 0 ||
            nng_dialer_set_addr(d, NNG_OPT_LOCADDR, &local) != 0 || nng_dialer_start(d, 0) != 0)
            _exit(3);
        for (int i = 0; i < FLOOD_CTX; i++)
            if (nng_ctx_open(&ctx[c * FLOOD_CTX + i], s[c]) != 0 ||
                nng_aio_alloc(&aio[c * FLOOD_CTX + i], NULL, NULL) != 0)
                _exit(4);
    }
    unsigned long long answered = 0, unanswered = 0;
    const int n = FLOOD_CONNS * FLOOD_CTX;
    while (!member_flood_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        for (int i = 0; i < n; i++) {
            peer_msg m = {0};
            m.head.type = PEER_MSG_HAVE_REQ;
            randombytes_buf(m.head.sender, sizeof m.head.sender);
            m.head.time_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000 + 59000;
            randombytes_buf(&m.head.request_id, sizeof m.head.request_id);
            randombytes_buf(m.cid, sizeof m.cid);
            nng_msg *msg;
            size_t size = peer_wire_sealed_size(&m), len;
            if (nng_msg_alloc(&msg, size) != 0 ||
                peer_wire_seal(&key, &m, nng_msg_body(msg), size, &len) != PEER_OK)
                _exit(5);
            nng_aio_set_msg(aio[i], msg);
            nng_aio_set_timeout(aio[i], 100);
            nng_ctx_send(ctx[i], aio[i]);
        }
        for (int i = 0; i < n; i++) {
            nng_aio_wait(aio[i]);
            if (nng_aio_result(aio[i]) == 0)
                nng_ctx_recv(ctx[i], aio[i]);
            else
                nng_msg_free(nng_aio_get_msg(aio[i]));
        }
        for (int i = 0; i < n; i++) {
            nng_aio_wait(aio[i]);
            if (nng_aio_result(aio[i]) == 0) {
                nng_msg_free(nng_aio_get_msg(aio[i]));
                answered++;
            } else {
                unanswered++;
            }
        }
    }
    printf("%llu %llu\n", answered, unanswered);
    fflush(stdout);
    _exit(0);
}

/* nng cannot be used across fork(): the rogue is this program run again. */
static void start_rogue(const char *url, enum rogue_mode mode)
{
    char hex[2 * PEER_GROUP_KEY_BYTES + 1], seed_hex[2 * randombytes_SEEDBYTES + 1], m[8];
    validate_hex(group, sizeof group, hex);
    validate_hex(content_seed, sizeof content_seed, seed_hex); /* overlong pieces are real */
    snprintf(m, sizeof m, "%d", (int)mode);
    rogue_pid = fork();
    CHECK(rogue_pid >= 0);
    if (rogue_pid == 0) {
        execl(self_path, "test_peer_node", "--rogue", url, m, hex, seed_hex, (char *)NULL);
        _exit(127);
    }
    check_sleep_ms(200);
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

/* The node fetches the content too and holds none of it yet. */
static void offer_fetching(peer_node *b)
{
    char path[4200];
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
    fclose(file); /* the node keeps its own descriptor */
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

/* The whole content, fetched by a from b. */
static void fetch_all(peer_node *a, peer_node *b, int limit_ms)
{
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    int done = run_until(a, b, all_done, &f, limit_ms);
    peer_swarm_close(s);
    CHECK(done);
    CHECK_INT(f.bad, 0);
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
    validate_error why = {0};
    CHECK_INT(peer_node_open(&cfg, &a, &why), PEER_OK);
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

static void test_a_member_claiming_pieces_it_never_sends_is_banned(void)
{
    /* It says it fetches the content, claims one more piece every 300 ms
     * with the rest on its way, and refuses every piece asked: without a
     * bad byte, it held the others back (they left its pieces to it) for
     * as long as it liked. Each answer whose claim it breaks counts as a
     * bad piece would: banned after four, and the origin takes its pieces. */
    fetch f = {0};
    peer_node *a;
    peer_swarm *s = against_rogue(ROGUE_CLAIMER, 0, &f, &a);
    stats_node = a;
    origin_swarm = s;
    int64_t t0 = now_ms();
    CHECK(run_until(a, NULL, banned_once, NULL, 5000));
    int64_t banned_ms = now_ms() - t0;
    CHECK(run_until(a, NULL, origin_may_all, NULL, 5000));
    peer_stats st = stats_now();
    printf("  a member claiming what it never sends: banned after %lld ms (%llu broken "
           "claims), the origin may take every piece after %lld ms\n",
           (long long)banned_ms, (unsigned long long)st.broken_claims, (long long)(now_ms() - t0));
    CHECK_INT(st.bans, 1);
    CHECK_INT(st.bad_pieces, 0);
    CHECK(st.broken_claims >= 4);
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

typedef struct flood_result {
    int ok, busy, not_held, other;
    unsigned long long bytes; /* of the pieces served (the last one is short) */
} flood_result;

/* Runs the flooding child against url: rounds of n requests at once on one
 * connection, in range or not. */
/* Starts a flooding child (flood_main); flood_wait reads its result. */
static pid_t flood_start(const char *url, int n, int rounds, int out_of_range)
{
    char key_hex[65], cid_hex[65], n_s[16], rounds_s[16], out[4200];
    validate_hex(group, sizeof group, key_hex);
    validate_hex(cid, sizeof cid, cid_hex);
    snprintf(n_s, sizeof n_s, "%d", n);
    snprintf(rounds_s, sizeof rounds_s, "%d", rounds);
    snprintf(out, sizeof out, "%s/flood.out", check_tmpdir());
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (freopen(out, "w", stdout) == NULL)
            _exit(5);
        execl(self_path, "test_peer_node", "--flood", url, n_s, key_hex, cid_hex, rounds_s,
              out_of_range ? "1" : "0", (char *)NULL);
        _exit(127);
    }
    rogue_pid = pid; /* stopped by after_case if it hangs */
    return pid;
}

static flood_result flood_wait(pid_t pid)
{
    char out[4200];
    snprintf(out, sizeof out, "%s/flood.out", check_tmpdir());
    int status = 0;
    int64_t end = now_ms() + 60000;
    while (waitpid(pid, &status, WNOHANG) == 0 && now_ms() < end)
        check_sleep_ms(50);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    rogue_pid = 0;
    flood_result r = {-1, -1, -1, -1, 0};
    FILE *f = fopen(out, "r");
    CHECK(f != NULL &&
          fscanf(f, "%d %d %d %d %llu", &r.ok, &r.busy, &r.not_held, &r.other, &r.bytes) == 5);
    fclose(f);
    return r;
}

static flood_result flood(const char *url, int n, int rounds, int out_of_range)
{
    return flood_wait(flood_start(url, n, rounds, out_of_range));
}

/* This process's resident memory, in KiB. */
static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
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
    validate_error why = {0};
    CHECK_INT(peer_node_open(&cfg, &b, &why), PEER_OK);
    offer_content(b);

    flood_result r = flood(url, 16, 1, 0);
    int ok = r.ok, busy = r.busy;
    printf("  16 requests at once on one connection: %d served, %d busy\n", ok, busy);
    CHECK(ok >= 1);
    CHECK(busy >= 1);
    CHECK_INT(ok + busy, 16);
    peer_stats sb;
    peer_node_stats(b, &sb);
    CHECK_INT(sb.uploaded, r.bytes); /* every byte served, the short last piece as it is */
    CHECK(r.bytes > (uint64_t)(ok - 1) * PIECE);
    peer_node_close(b);
}

static void test_a_greedy_peer_leaves_the_others_their_share_of_the_upload_rate(void)
{
    /* A member asks for everything at once, again and again, from a server
     * whose upload rate is 250 kB/s; an honest node fetches the content
     * beside it. The budget is shared per connection asking: the honest
     * node gets about half while both ask (before, the greedy one took it
     * all and the honest node got 1.6 % of its bytes from peers). */
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    peer_node_config cfg = {.group_key = group, .listen = url, .upload_rate = 250000};
    peer_node *b;
    validate_error why = {0};
    CHECK_INT(peer_node_open(&cfg, &b, &why), PEER_OK);
    offer_content(b);
    pid_t greedy = flood_start(url, 16, 10, 0);
    check_sleep_ms(500); /* it has the whole budget to itself first */
    peer_stats before;
    peer_node_stats(b, &before);
    peer_node *a = open_node(group, NULL, url, 8000);
    int64_t t0 = now_ms();
    fetch_all(a, b, 20000);
    int64_t took = now_ms() - t0;
    peer_stats after;
    peer_node_stats(b, &after);
    uint64_t sent = after.uploaded - before.uploaded;
    double honest = (double)SIZE / (double)sent;
    flood_result r = flood_wait(greedy);
    printf("  beside a greedy peer (%d served, %d busy): the honest node fetched %d KiB in %lld "
           "ms, %.0f %% of the bytes sent meanwhile\n",
           r.ok, r.busy, SIZE / 1024, (long long)took, 100.0 * honest);
    CHECK(honest >= 0.40);
    CHECK(r.ok > 0);
    peer_node_close(a);
    peer_node_close(b);
}

static void test_a_peer_sending_more_than_asked_is_banned(void)
{
    fetch f = {0};
    peer_node *a;
    peer_swarm *s = against_rogue(ROGUE_OVERLONG, 0, &f, &a);
    stats_node = a;
    CHECK(run_until(a, NULL, banned_once, NULL, 10000));
    peer_stats st;
    peer_node_stats(a, &st);
    printf("  banned after %llu pieces longer than asked\n", (unsigned long long)st.bad_pieces);
    CHECK_INT(st.banned, 1);
    CHECK_INT(f.good + f.bad, 0); /* none reached the agent */
    peer_swarm_close(s);
    peer_node_close(a);
}

static void test_broken_framing_is_routed_around_in_bounded_memory(void)
{
    /* Below the wire format: a reply that says it is 2^62 bytes long, and
     * one that comes a byte a second. nng refuses the first before reading
     * it (NNG_OPT_RECVMAXSZ); the second takes no more than its length. */
    const enum rogue_mode modes[] = {ROGUE_ENDLESS, ROGUE_TRICKLE};
    const char *names[] = {"endless reply", "a byte a second"};
    for (int i = 0; i < 2; i++) {
        fetch f = {0};
        peer_node *a;
        peer_swarm *s = against_rogue(modes[i], 1000, &f, &a);
        /* From here: the node and its threads are made (which, under
         * ThreadSanitizer, costs megabytes of its own), no piece asked yet. */
        long before = rss_kib();
        origin_swarm = s;
        int64_t t0 = now_ms();
        /* Well before SWARM_STALL_MS, the safety net for peers that send nothing. */
        CHECK(run_until(a, NULL, origin_may_all, NULL, 5000));
        long grown = rss_kib() - before;
        peer_stats st;
        peer_node_stats(a, &st);
        printf("  %s: routed around after %lld ms (%llu requests timed out); memory grew by "
               "%ld KiB\n",
               names[i], (long long)(now_ms() - t0), (unsigned long long)st.timeouts, grown);
        CHECK_INT(f.good + f.bad, 0);
        CHECK_INT(st.bans, 0); /* slow or broken is not lying */
        CHECK(grown < 16 * 1024);
        peer_swarm_close(s);
        peer_node_close(a);
        stop_rogue();
    }
}

static void test_hostile_peers_beside_an_honest_one_change_nothing(void)
{
    /* With an honest peer beside each kind of hostile one, every piece
     * arrives checked, and the honest peer is never banned. */
    const enum rogue_mode modes[] = {ROGUE_LIAR,   ROGUE_OVERLONG, ROGUE_REFUSER,
                                     ROGUE_SILENT, ROGUE_ENDLESS,  ROGUE_TRICKLE};
    const char *names[] = {"bad bytes", "overlong", "refuses", "silent", "endless", "trickle"};
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        char hostile[64], good[64];
        validate_error why = {0};
        snprintf(hostile, sizeof hostile, "tcp://127.0.0.1:%d", test_free_port());
        start_rogue(hostile, modes[i]);
        peer_node *b = honest(group, good, sizeof good);
        const char *peers[2] = {hostile, good};
        peer_node_config cfg = {
            .group_key = group, .peers = peers, .n_peers = 2, .piece_timeout_ms = 1000};
        peer_node *a;
        CHECK_INT(peer_node_open(&cfg, &a, &why), PEER_OK);
        fetch f = {0};
        peer_swarm_ops ops = ops_for(&f);
        peer_swarm *s;
        CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
        int64_t t0 = now_ms();
        CHECK(run_until(a, b, all_done, &f, 20000));
        peer_stats st, sb;
        peer_node_stats(a, &st);
        peer_node_stats(b, &sb);
        printf("  beside a peer that %s: all %d pieces in %lld ms, %d bad refused, %llu "
               "timeouts, %llu banned\n",
               names[i], f.good, (long long)(now_ms() - t0), f.bad, (unsigned long long)st.timeouts,
               (unsigned long long)st.banned);
        CHECK_INT(f.good, PIECES);
        CHECK(st.banned <= 1); /* at most the hostile one */
        CHECK_INT(st.bans, st.bad_pieces >= 4 || st.broken_claims >= 4 ? 1 : 0);
        CHECK(sb.uploaded > 0);
        peer_swarm_close(s);
        peer_node_close(a);
        peer_node_close(b);
        stop_rogue();
    }
}

static void test_a_flood_of_requests_out_of_range_gets_nothing(void)
{
    /* 640 requests, 64 at a time on one connection, for pieces past the
     * content (up to the protocol's limit). Nothing is served, memory stays
     * flat, and an honest fetcher is served afterwards. */
    char url[64];
    peer_node *b = honest(group, url, sizeof url);
    long before = rss_kib();
    flood_result r = flood(url, 64, 10, 1);
    long grown = rss_kib() - before;
    peer_stats sb;
    peer_node_stats(b, &sb);
    printf("  640 requests out of range: %d served, %d not held, %d busy, %d unanswered; "
           "memory grew by %ld KiB\n",
           r.ok, r.not_held, r.busy, r.other, grown);
    CHECK_INT(r.ok, 0);
    CHECK_INT(sb.uploaded, 0);
    CHECK(r.not_held + r.busy >= 1);
    CHECK(grown < 16 * 1024);
    peer_node *a = open_node(group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    CHECK(run_until(a, b, all_done, &f, 10000));
    peer_swarm_close(s);
    peer_node_close(a);
    peer_node_close(b);
}

static void test_pieces_coming_to_a_member_are_left_to_it(void)
{
    /* b fetches the content too, holds nothing yet, and says every piece
     * is on its way to it. */
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    peer_node *b = open_node(group, url, NULL, 0);
    offer_fetching(b);
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
    char url[64];
    snprintf(url, sizeof url, "tcp://127.0.0.1:%d", test_free_port());
    peer_node *b = open_node(group, url, NULL, 0);
    peer_node *a = open_node(group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &origin_swarm), PEER_OK);
    CHECK(run_until(a, b, swarm_ready, origin_swarm, 5000));
    CHECK(origin_may_all(NULL));
    run_until(a, b, never, NULL, 5500); /* longer than a member may stall */
    offer_fetching(b);
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

static int flood_refused(void *ctx)
{
    (void)ctx;
    return stats_now().refused >= 2000;
}

static void test_a_members_flood_never_makes_another_members_requests_replayed(void)
{
    /* A member floods b from another address until b refuses it (its share
     * of the replay filter and the common half are full: about 66000
     * requests, dated 59 s ahead so that none expires), and goes on; an
     * honest node fetching from b meanwhile gets every piece at once. */
    char url[64], out[4200];
    peer_node *b = honest(group, url, sizeof url);
    stats_node = b;
    char hex[2 * PEER_GROUP_KEY_BYTES + 1];
    validate_hex(group, sizeof group, hex);
    snprintf(out, sizeof out, "%s/member-flood.out", check_tmpdir());
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        if (freopen(out, "w", stdout) == NULL)
            _exit(5);
        execl(self_path, "test_peer_node", "--member-flood", url, hex, (char *)NULL);
        _exit(127);
    }
    rogue_pid = pid; /* stopped by after_case if the test fails */
    int64_t t0 = now_ms();
    CHECK(run_until(b, NULL, flood_refused, NULL, 60000));
    int64_t filled = now_ms() - t0;
    uint64_t refused_before = stats_now().refused;

    peer_node *a = open_node(group, NULL, url, 0);
    fetch f = {0};
    peer_swarm_ops ops = ops_for(&f);
    peer_swarm *s;
    CHECK_INT(peer_swarm_open(a, cid, SIZE, PIECE, &ops, &s), PEER_OK);
    int64_t t1 = now_ms();
    int done = run_until(a, b, all_done, &f, 5000);
    int64_t took = now_ms() - t1;
    run_until(a, b, never, NULL, 500); /* the flood goes on, refused */
    uint64_t refused_during = stats_now().refused - refused_before;

    kill(pid, SIGTERM);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    rogue_pid = 0;
    unsigned long long answered = 0, unanswered = 0;
    FILE *file = fopen(out, "r");
    CHECK(file != NULL && fscanf(file, "%llu %llu", &answered, &unanswered) == 2);
    fclose(file);
    printf(
        "  a member's flood: refused after %lld ms; %llu requests answered, %llu not (%llu "
        "while the honest node fetched and after); the honest node: %d of %d pieces in %lld ms\n",
        (long long)filled, answered, unanswered, (unsigned long long)refused_during, f.good, PIECES,
        (long long)took);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(done);
    CHECK_INT(f.good, PIECES);
    CHECK(refused_during > 0); /* the flood went on while it fetched */
    /* The flooder had its share and the common half: 1024 + 65536. */
    CHECK(answered >= 66560 && answered < 66560 + 2048);
    peer_swarm_close(s);
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

/* ------------------------------------------------------------------ */
/* The listener against outsiders and crowds                          */

static int port_of(const char *url)
{
    return atoi(strrchr(url, ':') + 1);
}

/* A TCP connection to the port that sends the SP hello of a REQ socket
 * (what nng needs to make it a pipe), or nothing at all; -1 on failure. */
static int sp_connect(int port, int hello)
{
    static const uint8_t req_hello[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
        (!hello || write(fd, req_hello, sizeof req_hello) == (ssize_t)sizeof req_hello))
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

static int open_descriptors(void)
{
    int k = 0;
    DIR *d = opendir("/proc/self/fd");
    while (d != NULL && readdir(d) != NULL)
        k++;
    if (d != NULL)
        closedir(d);
    return k - 3;
}

static void *close_node(void *arg)
{
    peer_node_close(arg);
    return NULL;
}

/* peer_node_close, which must return within limit_ms (a wedged nng never
 * returns: the thread is left behind and the case fails). */
static int closes_within(peer_node *n, int limit_ms)
{
    pthread_t t;
    if (pthread_create(&t, NULL, close_node, n) != 0)
        return 0;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += limit_ms / 1000;
    until.tv_nsec += (long)(limit_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    return pthread_timedjoin_np(t, NULL, &until) == 0;
}

static peer_node *server_with_cap(char *url, size_t len, unsigned max_connections)
{
    snprintf(url, len, "tcp://127.0.0.1:%d", test_free_port());
    peer_node_config cfg = {.group_key = group, .listen = url, .max_connections = max_connections};
    peer_node *b = NULL;
    validate_error why = {0};
    CHECK_INT(peer_node_open(&cfg, &b, &why), PEER_OK);
    offer_content(b);
    return b;
}

static void test_outsiders_filling_the_cap_do_not_wedge_the_listener(void)
{
    /* 64 connections that say the SP hello and nothing else fill the cap;
     * four more each send one message of junk. With nng 1.5.2, closing
     * those four inside nng's pipe callback wedged its reaper: the slots
     * were never freed, honest peers never got in, and closing the node
     * blocked for ever. */
    char url[64];
    peer_node *b = server_with_cap(url, sizeof url, 64);
    int port = port_of(url), held[68], k = 0;
    for (int i = 0; i < 64; i++)
        held[k++] = sp_connect(port, 1);
    check_sleep_ms(300);
    for (int i = 0; i < 4; i++) {
        uint8_t junk[8 + 16];
        put_be64(junk, 16);
        memset(junk + 8, 0xa5, 16);
        int fd = sp_connect(port, 1);
        CHECK(fd >= 0 && write(fd, junk, sizeof junk) == (ssize_t)sizeof junk);
        held[k++] = fd;
    }
    check_sleep_ms(300);
    peer_stats st;
    peer_node_stats(b, &st);
    CHECK(st.over_cap >= 4);
    CHECK_INT(st.connections, 64);
    for (int i = 0; i < k; i++)
        CHECK(held[i] >= 0 && close(held[i]) == 0);

    peer_node *a = open_node(group, NULL, url, 0);
    fetch_all(a, b, 10000);
    CHECK(closes_within(a, 5000));
    CHECK(closes_within(b, 5000));
}

static void test_more_agents_than_the_cap_take_turns_and_back_off(void)
{
    /* Three agents fetch through a server that takes two connections: the
     * third gets in once one of the others is idle, and meanwhile it dials
     * ever more slowly, not ten times a second; the server's descriptors
     * stay as they are. */
    char url[64];
    peer_node *b = server_with_cap(url, sizeof url, 2);
    int fds0 = open_descriptors();
    peer_node *a[3];
    fetch f[3];
    memset(f, 0, sizeof f);
    peer_swarm *s[3];
    for (int i = 0; i < 3; i++) {
        a[i] = open_node(group, NULL, url, 2000);
        peer_swarm_ops ops = ops_for(&f[i]);
        CHECK_INT(peer_swarm_open(a[i], cid, SIZE, PIECE, &ops, &s[i]), PEER_OK);
    }
    int fds_max = 0;
    int64_t end = now_ms() + 45000;
    while (now_ms() < end && !(f[0].good == PIECES && f[1].good == PIECES && f[2].good == PIECES)) {
        for (int i = 0; i < 3; i++)
            peer_node_step(a[i]);
        peer_node_step(b);
        int fds = open_descriptors();
        fds_max = fds > fds_max ? fds : fds_max;
        check_sleep_ms(5);
    }
    peer_stats st;
    peer_node_stats(b, &st);
    fprintf(stderr,
            "  3 agents, cap 2: %d/%d/%d pieces; %llu refused at once, %llu evicted; "
            "descriptors %d -> at most %d\n",
            f[0].good, f[1].good, f[2].good, (unsigned long long)st.over_cap,
            (unsigned long long)st.evicted, fds0, fds_max);
    for (int i = 0; i < 3; i++) {
        CHECK_INT(f[i].good, PIECES);
        CHECK_INT(f[i].bad, 0);
        peer_swarm_close(s[i]);
    }
    CHECK(st.evicted >= 1);
    CHECK(st.over_cap < 40); /* at 100 ms a redial, over 50 in this time */
    CHECK(fds_max <= fds0 + 16);
    for (int i = 0; i < 3; i++)
        CHECK(closes_within(a[i], 5000));
    CHECK(closes_within(b, 5000));
}

static void test_a_flood_of_handshakeless_connections_leaves_descriptors_free(void)
{
    /* With 256 descriptors, a child opens 400 connections that never say
     * the SP hello (nng holds each for 10 s). The node closes its port
     * before they are all used: the process can still open files (the
     * control socket and the store of an agent), and once the flood is
     * over the port opens again and serves. */
    struct rlimit was, low;
    CHECK(getrlimit(RLIMIT_NOFILE, &was) == 0);
    low = was;
    low.rlim_cur = 256;
    CHECK(setrlimit(RLIMIT_NOFILE, &low) == 0);
    char url[64];
    peer_node *b = server_with_cap(url, sizeof url, 64);
    pid_t pid = fork();
    if (pid == 0) {
        struct rlimit high = was;
        setrlimit(RLIMIT_NOFILE, &high);
        for (int i = 0; i < 400; i++)
            sp_connect(port_of(url), 0);
        sleep(3);
        _exit(0);
    }
    CHECK(pid > 0);
    rogue_pid = pid;
    check_sleep_ms(1500);
    int fds[32], opened = 0;
    for (int i = 0; i < 32; i++)
        if ((fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
            opened++;
    for (int i = 0; i < 32; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    waitpid(pid, NULL, 0);
    rogue_pid = 0;
    peer_stats st;
    peer_node_stats(b, &st);
    fprintf(stderr,
            "  400 connections without a hello, 256 descriptors: %d of 32 opened, "
            "port closed %llu times\n",
            opened, (unsigned long long)st.port_pauses);
    CHECK_INT(opened, 32);
    CHECK(st.port_pauses >= 1);
    check_sleep_ms(500); /* the port opens again within a tick */
    peer_node *a = open_node(group, NULL, url, 0);
    fetch_all(a, b, 10000);
    CHECK(closes_within(a, 5000));
    CHECK(closes_within(b, 5000));
    setrlimit(RLIMIT_NOFILE, &was);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 1;
    if (argc == 8 && strcmp(argv[1], "--flood") == 0) {
        if (validate_unhex(argv[4], group, sizeof group) != 0 ||
            validate_unhex(argv[5], cid, sizeof cid) != 0)
            return 2;
        flood_main(argv[2], atoi(argv[3]), atoi(argv[6]), atoi(argv[7]));
    }
    if (argc == 4 && strcmp(argv[1], "--member-flood") == 0) {
        if (validate_unhex(argv[3], group, sizeof group) != 0)
            return 2;
        member_flood_main(argv[2]);
    }
    if (argc == 6 && strcmp(argv[1], "--rogue") == 0) {
        if (validate_unhex(argv[4], group, sizeof group) != 0 ||
            validate_unhex(argv[5], content_seed, sizeof content_seed) != 0)
            return 2;
        randombytes_buf_deterministic(content, sizeof content, content_seed);
        enum rogue_mode mode = (enum rogue_mode)atoi(argv[3]);
        const char *port = strrchr(argv[2], ':');
        if (mode >= ROGUE_ENDLESS && port != NULL)
            raw_rogue_main(atoi(port + 1), mode);
        rogue_main(argv[2], mode);
    }
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n <= 0)
        return 1;
    self_path[n] = '\0';
    randombytes_buf(content_seed, sizeof content_seed);
    randombytes_buf_deterministic(content, sizeof content, content_seed);
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
                         CASE(test_a_member_claiming_pieces_it_never_sends_is_banned),
                         CASE(test_a_stalling_peer_is_routed_around),
                         CASE(test_one_connection_gets_busy_beyond_its_share),
                         CASE(test_a_greedy_peer_leaves_the_others_their_share_of_the_upload_rate),
                         CASE(test_a_peer_sending_more_than_asked_is_banned),
                         CASE(test_broken_framing_is_routed_around_in_bounded_memory),
                         CASE(test_hostile_peers_beside_an_honest_one_change_nothing),
                         CASE(test_a_flood_of_requests_out_of_range_gets_nothing),
                         CASE(test_pieces_coming_to_a_member_are_left_to_it),
                         CASE(test_a_peer_that_starts_fetching_late_gets_its_share),
                         CASE(test_a_node_with_another_key_gets_nothing),
                         CASE(test_outsiders_filling_the_cap_do_not_wedge_the_listener),
                         CASE(test_more_agents_than_the_cap_take_turns_and_back_off),
                         CASE(test_a_flood_of_handshakeless_connections_leaves_descriptors_free),
                         CASE(test_a_members_flood_never_makes_another_members_requests_replayed),
                         {0},
                     });
}

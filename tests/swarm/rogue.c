/*
 * rogue: a hostile member of a dopa peer group, for the swarm test.
 *
 * Serving modes listen where agents are told a peer is (their `peer =`
 * setting) and answer every HAVE_REQ for content it was given a manifest
 * of with HAVE_ALL:
 *   --corrupt   answers every PIECE_REQ with PIECE_OK and data of the
 *               piece's length but random bytes;
 *   --stall     never answers a PIECE_REQ: it keeps the requests.
 * On SIGTERM or SIGINT it prints what it received, one line
 * "have_reqs=N piece_reqs=N unopened=N", to stdout and to --report FILE,
 * and exits 0.
 *
 * Probing modes dial an agent, print one line and exit (0, or 2 on a usage
 * or setup error):
 *   --outsider  sends a HAVE_REQ and a PIECE_REQ for the content sealed with
 *               its --key (meant to be another group's) and counts the
 *               replies that come within 3 s: "outsider replies=N";
 *   --replay    seals one HAVE_REQ with its --key (the group's), sends it,
 *               and sends the very same bytes again once answered:
 *               "replay first=0|1 second=0|1" (1: a valid reply came).
 *
 * usage: rogue MODE --key GROUP_KEY_FILE --manifest FILE [--manifest FILE]
 *              (--listen URL | --dial URL) [--report FILE]
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <sodium.h>

#include "peer.h"
#include "validate.h"

#define MAX_MANIFESTS 8
#define PROBE_WAIT_MS 3000

enum mode { MODE_NONE, MODE_CORRUPT, MODE_STALL, MODE_OUTSIDER, MODE_REPLAY };

static volatile sig_atomic_t stopping;
static peer_wire_key key;
static uint8_t self_id[PEER_ID_BYTES];
static validate_manifest *manifests[MAX_MANIFESTS];
static size_t n_manifests;

static void on_signal(int sig)
{
    (void)sig;
    stopping = 1;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const validate_manifest *find_manifest(const uint8_t cid[PEER_CID_BYTES])
{
    for (size_t i = 0; i < n_manifests; i++)
        if (memcmp(manifests[i]->content_id, cid, PEER_CID_BYTES) == 0)
            return manifests[i];
    return NULL;
}

static void head_init(peer_msg *m, int type, uint64_t request_id)
{
    memset(m, 0, sizeof *m);
    m->head.type = (uint8_t)type;
    memcpy(m->head.sender, self_id, PEER_ID_BYTES);
    m->head.time_ms = wall_ms();
    m->head.request_id = request_id;
}

/* Replaces msg's body with `m` sealed; 0 or -1. */
static int seal_into(nng_msg *msg, const peer_msg *m)
{
    size_t size = peer_wire_sealed_size(m), len = 0;
    nng_msg_clear(msg);
    if (nng_msg_realloc(msg, size) != 0 ||
        peer_wire_seal(&key, m, nng_msg_body(msg), size, &len) != PEER_OK)
        return -1;
    nng_msg_chop(msg, size - len);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Serving: a raw REP socket, so that a request can be kept unanswered */

typedef struct held {
    nng_msg *msg;
    struct held *next;
} held;

static int serve(enum mode mode, const char *url, const char *report)
{
    nng_socket s;
    int rv;
    if ((rv = nng_rep0_open_raw(&s)) != 0 ||
        (rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, PEER_REQUEST_MAX)) != 0 ||
        (rv = nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 100)) != 0 ||
        (rv = nng_listen(s, url, NULL, 0)) != 0) {
        fprintf(stderr, "rogue: listening on %s: %s\n", url, nng_strerror(rv));
        return 2;
    }
    fprintf(stderr, "rogue: %s on %s\n", mode == MODE_CORRUPT ? "corrupt" : "stall", url);
    unsigned long long have_reqs = 0, piece_reqs = 0, unopened = 0;
    held *kept = NULL;
    uint8_t *junk = malloc(PEER_DATA_MAX);
    if (junk == NULL)
        return 2;
    while (!stopping) {
        nng_msg *msg;
        if ((rv = nng_recvmsg(s, &msg, 0)) != 0) {
            if (rv != NNG_ETIMEDOUT && rv != NNG_EINTR)
                fprintf(stderr, "rogue: receive: %s\n", nng_strerror(rv));
            continue;
        }
        peer_msg req;
        if (peer_wire_open(&key, nng_msg_body(msg), nng_msg_len(msg), &req) != PEER_OK) {
            unopened++;
            nng_msg_free(msg);
            continue;
        }
        const validate_manifest *mf = find_manifest(req.cid);
        peer_msg rep;
        if (req.head.type == PEER_MSG_HAVE_REQ) {
            have_reqs++;
            head_init(&rep, PEER_MSG_HAVE_REP, req.head.request_id);
            memcpy(rep.cid, req.cid, PEER_CID_BYTES);
            rep.have_status = mf != NULL ? PEER_HAVE_ALL : PEER_HAVE_NONE;
            rep.piece_count = mf != NULL ? (uint32_t)mf->piece_count : 0;
        } else if (req.head.type == PEER_MSG_PIECE_REQ) {
            piece_reqs++;
            if (mode == MODE_STALL) {
                held *h = malloc(sizeof *h);
                if (h == NULL) {
                    nng_msg_free(msg);
                    continue;
                }
                h->msg = msg;
                h->next = kept;
                kept = h;
                continue;
            }
            head_init(&rep, PEER_MSG_PIECE_REP, req.head.request_id);
            memcpy(rep.cid, req.cid, PEER_CID_BYTES);
            rep.piece = req.piece;
            rep.piece_status = PEER_PIECE_NOT_HELD;
            if (mf != NULL && req.piece < mf->piece_count) {
                uint64_t left = mf->file_size - req.piece * mf->piece_size;
                rep.data_len = left < mf->piece_size ? (uint32_t)left : mf->piece_size;
                randombytes_buf(junk, rep.data_len);
                rep.data = junk;
                rep.piece_status = PEER_PIECE_OK;
            }
        } else {
            nng_msg_free(msg);
            continue;
        }
        /* The request's header (its route back) stays; the body becomes the reply. */
        if (seal_into(msg, &rep) != 0 || nng_sendmsg(s, msg, 0) != 0)
            nng_msg_free(msg);
    }
    char line[160];
    snprintf(line, sizeof line, "have_reqs=%llu piece_reqs=%llu unopened=%llu\n", have_reqs,
             piece_reqs, unopened);
    fputs(line, stdout);
    fflush(stdout);
    if (report != NULL) {
        FILE *f = fopen(report, "w");
        if (f != NULL) {
            fputs(line, f);
            fclose(f);
        }
    }
    nng_close(s);
    while (kept != NULL) {
        held *next = kept->next;
        nng_msg_free(kept->msg);
        free(kept);
        kept = next;
    }
    free(junk);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Probing: a REQ socket, one context a request                       */

typedef struct probe {
    nng_ctx ctx;
    nng_aio *aio;
    uint64_t id;
    int type;
} probe;

static int probe_send(nng_socket s, probe *p, const uint8_t *bytes, size_t len)
{
    nng_msg *msg;
    if (nng_ctx_open(&p->ctx, s) != 0 || nng_aio_alloc(&p->aio, NULL, NULL) != 0 ||
        nng_msg_alloc(&msg, len) != 0)
        return -1;
    memcpy(nng_msg_body(msg), bytes, len);
    nng_aio_set_msg(p->aio, msg);
    nng_aio_set_timeout(p->aio, PROBE_WAIT_MS);
    nng_ctx_send(p->ctx, p->aio);
    nng_aio_wait(p->aio);
    if (nng_aio_result(p->aio) != 0) {
        nng_msg_free(nng_aio_get_msg(p->aio));
        return -1;
    }
    return 0;
}

static void probe_recv_start(probe *p)
{
    nng_aio_set_timeout(p->aio, PROBE_WAIT_MS);
    nng_ctx_recv(p->ctx, p->aio);
}

/* Waits for the reply; 1 when one came that opens with our key and
 * answers the request (an outsider's key opens nothing, so any reply at
 * all counts for it: see `any`). */
static int probe_recv_end(probe *p, int any)
{
    nng_aio_wait(p->aio);
    if (nng_aio_result(p->aio) != 0)
        return 0;
    nng_msg *msg = nng_aio_get_msg(p->aio);
    peer_msg rep;
    int ok = any || (peer_wire_open(&key, nng_msg_body(msg), nng_msg_len(msg), &rep) == PEER_OK &&
                     rep.head.request_id == p->id && rep.head.type == p->type + 1);
    nng_msg_free(msg);
    return ok;
}

static void probe_close(probe *p)
{
    if (p->aio != NULL)
        nng_aio_free(p->aio);
    nng_ctx_close(p->ctx);
}

/* Seals a request for the first manifest's content into buf. */
static size_t seal_request(int type, uint64_t id, uint8_t *buf, size_t cap)
{
    peer_msg m;
    head_init(&m, type, id);
    memcpy(m.cid, manifests[0]->content_id, PEER_CID_BYTES);
    m.piece = 0;
    size_t len = 0;
    return peer_wire_seal(&key, &m, buf, cap, &len) == PEER_OK ? len : 0;
}

static int probe_agent(enum mode mode, const char *url)
{
    nng_socket s;
    int rv;
    if ((rv = nng_req0_open(&s)) != 0 ||
        (rv = nng_socket_set_size(s, NNG_OPT_RECVMAXSZ, PEER_MSG_MAX)) != 0 ||
        (rv = nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK)) != 0) {
        fprintf(stderr, "rogue: dialing %s: %s\n", url, nng_strerror(rv));
        return 2;
    }
    uint8_t buf[2][PEER_REQUEST_MAX];
    size_t len[2];
    probe p[2] = {{.type = PEER_MSG_HAVE_REQ}, {.type = PEER_MSG_PIECE_REQ}};
    int rc = 0;
    if (mode == MODE_OUTSIDER) {
        for (int i = 0; i < 2; i++) {
            p[i].id = randombytes_random();
            len[i] = seal_request(p[i].type, p[i].id, buf[i], sizeof buf[i]);
            if (len[i] == 0 || probe_send(s, &p[i], buf[i], len[i]) != 0) {
                fprintf(stderr, "rogue: could not send request %d\n", i);
                rc = 2;
            }
        }
        int replies = 0;
        if (rc == 0) {
            for (int i = 0; i < 2; i++)
                probe_recv_start(&p[i]);
            for (int i = 0; i < 2; i++)
                replies += probe_recv_end(&p[i], 1);
            printf("outsider replies=%d\n", replies);
        }
    } else {
        /* The same sealed bytes twice, each on its own context (nng's own
         * request id differs, the dopa message does not). */
        p[1].type = PEER_MSG_HAVE_REQ;
        p[0].id = p[1].id = randombytes_random();
        len[0] = seal_request(PEER_MSG_HAVE_REQ, p[0].id, buf[0], sizeof buf[0]);
        int first = 0, second = 0;
        if (len[0] == 0 || probe_send(s, &p[0], buf[0], len[0]) != 0) {
            rc = 2;
        } else {
            probe_recv_start(&p[0]);
            first = probe_recv_end(&p[0], 0);
            if (probe_send(s, &p[1], buf[0], len[0]) != 0) {
                rc = 2;
            } else {
                probe_recv_start(&p[1]);
                second = probe_recv_end(&p[1], 1);
            }
        }
        if (rc == 0)
            printf("replay first=%d second=%d\n", first, second);
    }
    fflush(stdout);
    for (int i = 0; i < 2; i++)
        probe_close(&p[i]);
    nng_close(s);
    return rc;
}

/* ------------------------------------------------------------------ */

static int usage(void)
{
    fprintf(stderr, "usage: rogue --corrupt|--stall|--outsider|--replay --key GROUP_KEY_FILE\n"
                    "             --manifest FILE [--manifest FILE] (--listen URL | --dial URL)\n"
                    "             [--report FILE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"corrupt", no_argument, NULL, 'c'},      {"stall", no_argument, NULL, 's'},
        {"outsider", no_argument, NULL, 'o'},     {"replay", no_argument, NULL, 'r'},
        {"key", required_argument, NULL, 'k'},    {"manifest", required_argument, NULL, 'm'},
        {"listen", required_argument, NULL, 'l'}, {"dial", required_argument, NULL, 'd'},
        {"report", required_argument, NULL, 'p'}, {NULL, 0, NULL, 0},
    };
    enum mode mode = MODE_NONE;
    const char *key_path = NULL, *listen_url = NULL, *dial_url = NULL, *report = NULL;
    validate_error why = {0};
    int c;
    if (validate_init() != 0)
        return 2;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            mode = MODE_CORRUPT;
            break;
        case 's':
            mode = MODE_STALL;
            break;
        case 'o':
            mode = MODE_OUTSIDER;
            break;
        case 'r':
            mode = MODE_REPLAY;
            break;
        case 'k':
            key_path = optarg;
            break;
        case 'm':
            if (n_manifests == MAX_MANIFESTS ||
                validate_manifest_load(optarg, &manifests[n_manifests], &why) != VALIDATE_OK) {
                fprintf(stderr, "rogue: %s: %s\n", optarg,
                        n_manifests == MAX_MANIFESTS ? "too many manifests" : why.text);
                return 2;
            }
            n_manifests++;
            break;
        case 'l':
            listen_url = optarg;
            break;
        case 'd':
            dial_url = optarg;
            break;
        case 'p':
            report = optarg;
            break;
        default:
            return usage();
        }
    }
    int serving = mode == MODE_CORRUPT || mode == MODE_STALL;
    if (mode == MODE_NONE || key_path == NULL || n_manifests == 0 ||
        (serving ? listen_url == NULL : dial_url == NULL))
        return usage();
    uint8_t group_key[PEER_GROUP_KEY_BYTES];
    if (peer_group_key_load(key_path, group_key, &why) != PEER_OK) {
        fprintf(stderr, "rogue: %s: %s\n", key_path, why.text);
        return 2;
    }
    peer_wire_key_derive(group_key, &key);
    randombytes_buf(self_id, sizeof self_id);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    int rc = serving ? serve(mode, listen_url, report) : probe_agent(mode, dial_url);
    for (size_t i = 0; i < n_manifests; i++)
        validate_manifest_free(manifests[i]);
    return rc;
}

/*
 * Every allocation of each parser of outside bytes fails in turn: manifests,
 * publisher keys, group keys, control messages and peer messages. Each
 * failure must come back as an error (VALIDATE_ENOMEM, DOPA_ENOMEM, ...)
 * with nothing handed out and nothing leaked (the ASan build's leak check
 * sees every run); the run that reaches no failure must give the full
 * result. Parsers that must not allocate at all (they decode into the
 * caller's memory) are pinned at zero allocations.
 *
 * dopad's settings are read by config.h's functions (agent/daemon/config.c,
 * around inih's ini_parse): their campaign here counts dopa's own
 * allocations; inih's and libc's are alloc.config's, which runs dopad
 * --check under an interposer that fails every allocation of the process
 * (test_config.c).
 */
#include <sodium.h>
#include <sys/stat.h>

#include "../check.h"
#include "agent.h"
#include "config.h"
#include "fault.h"
#include "peer.h"
#include "proto.h"
#include "validate.h"

#define LIMIT 10000

static validate_secret_key *publisher;

/* Fails the case unless the campaign injected failures, every one of which
 * the operation reported, and ended with a clean run. */
static void check_campaign(fault_figures fig)
{
    CHECK(fig.finished);
    CHECK(fig.points > 0);
    CHECK_INT(fig.errors, fig.points);
}

/* ------------------------------------------------------------------ */
/* Manifests                                                          */

struct manifest_ctx {
    const uint8_t *bytes;
    size_t len;
    const char *path;
    int how; /* 0 parse, 1 open (parse + verify), 2 load, 3 sign */
    validate_digest *digest;
    validate_manifest *m;
};

static int manifest_op(void *arg)
{
    struct manifest_ctx *c = arg;
    validate_error why = {0};
    c->m = NULL;
    switch (c->how) {
    case 0:
        return validate_manifest_parse(c->bytes, c->len, &c->m, &why);
    case 1: {
        const validate_public_key *key = validate_secret_key_public(publisher);
        return validate_manifest_open(c->bytes, c->len, key, 1, 0, &c->m, &why);
    }
    case 2:
        return validate_manifest_load(c->path, &c->m, &why);
    default:
        return validate_manifest_sign(c->digest, 7, 0, publisher, &c->m);
    }
}

static void manifest_check(void *arg, int result, int struck)
{
    struct manifest_ctx *c = arg;
    if (struck) {
        CHECK_INT(result, VALIDATE_ENOMEM);
        CHECK(c->m == NULL);
        return;
    }
    CHECK_INT(result, VALIDATE_OK);
    CHECK(c->m != NULL);
    CHECK_INT(c->m->piece_count, 9);
    CHECK_INT(c->m->file_size, c->digest->file_size);
    if (c->how != 3) {
        CHECK_INT(c->m->encoded_len, c->len);
        CHECK(memcmp(c->m->encoded, c->bytes, c->len) == 0);
    }
    validate_manifest_free(c->m);
    c->m = NULL;
}

static void test_every_allocation_of_the_manifest_parser_fails_in_turn(void)
{
    /* Nine pieces of 64 KiB, the last one short. */
    size_t size = 8 * 65536 + 1000;
    unsigned char *content = malloc(size);
    CHECK(content != NULL);
    for (size_t i = 0; i < size; i++)
        content[i] = (unsigned char)(i * 31 + 7);
    validate_digester *dg = NULL;
    validate_digest d;
    CHECK_INT(validate_digester_new(65536, &dg), VALIDATE_OK);
    CHECK_INT(validate_digester_update(dg, content, size), VALIDATE_OK);
    CHECK_INT(validate_digester_finish(dg, &d), VALIDATE_OK);
    validate_digester_free(dg);
    free(content);
    validate_manifest *m = NULL;
    CHECK_INT(validate_manifest_sign(&d, 7, 0, publisher, &m), VALIDATE_OK);
    const char *path = check_path("content.manifest");
    validate_error why = {0};
    CHECK_INT(validate_manifest_save(m, path, &why), VALIDATE_OK);

    static const char *names[] = {"validate_manifest_parse", "validate_manifest_open",
                                  "validate_manifest_load", "validate_manifest_sign"};
    struct manifest_ctx c = {
        .bytes = m->encoded, .len = m->encoded_len, .path = path, .digest = &d};
    for (c.how = 0; c.how < 4; c.how++) {
        fault_op op = {names[c.how], NULL, manifest_op, manifest_check};
        check_campaign(fault_campaign(&op, &c, LIMIT));
    }
    validate_manifest_free(m);
    validate_digest_clear(&d);
}

/* ------------------------------------------------------------------ */
/* Keys                                                               */

struct key_ctx {
    const char *path;
    int how; /* 0 public key file, 1 secret key file, 2 group key file */
    validate_public_key pub;
    validate_secret_key *sec;
    uint8_t group[PEER_GROUP_KEY_BYTES];
};

static int key_op(void *arg)
{
    struct key_ctx *c = arg;
    validate_error why = {0};
    c->sec = NULL;
    memset(&c->pub, 0, sizeof c->pub);
    memset(c->group, 0, sizeof c->group);
    switch (c->how) {
    case 0:
        return validate_public_key_load(c->path, &c->pub, &why);
    case 1:
        return validate_secret_key_load(c->path, &c->sec, &why);
    default:
        return peer_group_key_load(c->path, c->group, &why);
    }
}

static void key_check(void *arg, int result, int struck)
{
    struct key_ctx *c = arg;
    const validate_public_key *want = validate_secret_key_public(publisher);
    if (struck) {
        CHECK_INT(result, VALIDATE_ENOMEM);
        CHECK(c->sec == NULL);
        return;
    }
    CHECK_INT(result, 0);
    if (c->how == 0)
        CHECK(memcmp(c->pub.key, want->key, sizeof want->key) == 0);
    if (c->how == 1) {
        CHECK(c->sec != NULL);
        CHECK(memcmp(validate_secret_key_public(c->sec)->key, want->key, sizeof want->key) == 0);
        validate_secret_key_free(c->sec);
        c->sec = NULL;
    }
}

static void test_every_allocation_of_the_key_parsers_fails_in_turn(void)
{
    validate_error why = {0};
    const char *secret = check_path("publisher.key");
    char pub[4096];
    snprintf(pub, sizeof pub, "%s.pub", secret);
    CHECK_INT(validate_secret_key_save(publisher, secret, 0, &why), VALIDATE_OK);
    struct key_ctx c = {.path = pub, .how = 0};
    fault_op op = {"validate_public_key_load", NULL, key_op, key_check};
    check_campaign(fault_campaign(&op, &c, LIMIT));
    c.path = secret;
    c.how = 1;
    op.name = "validate_secret_key_load";
    check_campaign(fault_campaign(&op, &c, LIMIT));

    /* The text parsers and the group key file decode into the caller's
     * memory: they allocate nothing. */
    uint8_t group[PEER_GROUP_KEY_BYTES];
    peer_group_key_generate(group);
    const char *group_path = check_path("group.key");
    CHECK_INT(peer_group_key_save(group, group_path, 0, &why), PEER_OK);
    c.path = group_path;
    c.how = 2;
    op.name = "peer_group_key_load";
    fault_figures fig = fault_campaign(&op, &c, LIMIT);
    CHECK(fig.finished);
    CHECK_INT(fig.points, 0);
    CHECK(memcmp(c.group, group, sizeof group) == 0);

    char text[VALIDATE_PUBLIC_KEY_TEXT_MAX], group_text[PEER_GROUP_KEY_TEXT_MAX];
    validate_public_key_text(validate_secret_key_public(publisher), text);
    peer_group_key_text(group, group_text);
    validate_public_key pk;
    uint8_t back[PEER_GROUP_KEY_BYTES];
    fault_arm(1);
    int pub_err = validate_public_key_parse(text, &pk);
    int group_err = peer_group_key_parse(group_text, back);
    CHECK_INT(fault_disarm(), 0);
    CHECK_INT(fault_count(), 0);
    CHECK_INT(pub_err, VALIDATE_OK);
    CHECK_INT(group_err, PEER_OK);
    printf("  validate_public_key_parse, peer_group_key_parse: 0 allocations\n");
}

/* ------------------------------------------------------------------ */
/* Control messages                                                   */

struct proto_ctx {
    int how; /* 0 decode a reply, 1 encode a reply, 2 encode a request */
    const proto_reply *reply;
    const proto_request *request;
    proto_buf encoded; /* of reply (how 0) */
    proto_reply back;
    proto_buf out;
};

static int proto_op(void *arg)
{
    struct proto_ctx *c = arg;
    validate_error why = {0};
    switch (c->how) {
    case 0:
        return proto_decode_reply(c->encoded.data, c->encoded.len, &c->back, &why);
    case 1:
        proto_buf_init(&c->out, PROTO_MAX_REPLY);
        return proto_encode_reply(c->reply, &c->out);
    default:
        proto_buf_init(&c->out, PROTO_MAX_REQUEST);
        return proto_encode_request(c->request, &c->out);
    }
}

static void proto_check(void *arg, int result, int struck)
{
    struct proto_ctx *c = arg;
    if (struck) {
        CHECK_INT(result, DOPA_ENOMEM);
        if (c->how == 0)
            CHECK(c->back.jobs == NULL && c->back.files == NULL && c->back.n_jobs == 0);
        else
            CHECK_INT(c->out.failed, DOPA_ENOMEM);
    } else {
        CHECK_INT(result, DOPA_OK);
        if (c->how == 0) {
            CHECK_INT(c->back.n_jobs, c->reply->n_jobs);
            CHECK_STR(c->back.jobs[c->back.n_jobs - 1].display_name, "job 4");
        } else if (c->how == 1) {
            CHECK_INT(c->out.len, c->encoded.len);
            CHECK(memcmp(c->out.data, c->encoded.data, c->out.len) == 0);
        } else {
            proto_request again;
            validate_error why = {0};
            CHECK_INT(proto_decode_request(c->out.data, c->out.len, &again, &why), DOPA_OK);
            CHECK_INT(again.manifest_len, c->request->manifest_len);
        }
    }
    proto_reply_clear(&c->back);
    proto_buf_free(&c->out);
}

static void test_every_allocation_of_the_control_messages_fails_in_turn(void)
{
    static dopa_job_info jobs[5];
    memset(jobs, 0, sizeof jobs);
    for (int i = 0; i < 5; i++) {
        jobs[i].id.bytes[0] = (uint8_t)i;
        jobs[i].state = DOPA_STATE_TRANSFERRING;
        jobs[i].bytes_total = DOPA_SIZE_UNKNOWN;
        snprintf(jobs[i].display_name, sizeof jobs[i].display_name, "job %d", i);
    }
    proto_reply r = {.op = PROTO_LIST, .jobs = jobs, .n_jobs = 5, .more = 1};
    static uint8_t manifest[3000];
    memset(manifest, 0x5a, sizeof manifest);
    static proto_request req;
    memset(&req, 0, sizeof req);
    req.op = PROTO_ADD_FILE;
    snprintf(req.url, sizeof req.url, "http://127.0.0.1:1/a/file/of/some/length.bin");
    snprintf(req.path, sizeof req.path, "/tmp/a/destination");
    req.manifest = manifest;
    req.manifest_len = sizeof manifest;

    static struct proto_ctx c;
    memset(&c, 0, sizeof c);
    c.reply = &r;
    c.request = &req;
    proto_buf_init(&c.encoded, PROTO_MAX_REPLY);
    CHECK_INT(proto_encode_reply(&r, &c.encoded), DOPA_OK);
    static const char *names[] = {"proto_decode_reply", "proto_encode_reply",
                                  "proto_encode_request"};
    for (c.how = 0; c.how < 3; c.how++) {
        fault_op op = {names[c.how], NULL, proto_op, proto_check};
        check_campaign(fault_campaign(&op, &c, LIMIT));
    }

    /* A request decodes into the caller's structure. */
    proto_buf b;
    proto_buf_init(&b, PROTO_MAX_REQUEST);
    CHECK_INT(proto_encode_request(&req, &b), DOPA_OK);
    static proto_request back;
    validate_error why = {0};
    fault_arm(1);
    int err = proto_decode_request(b.data, b.len, &back, &why);
    CHECK_INT(fault_disarm(), 0);
    CHECK_INT(fault_count(), 0);
    CHECK_INT(err, DOPA_OK);
    printf("  proto_decode_request: 0 allocations\n");
    proto_buf_free(&b);
    proto_buf_free(&c.encoded);
}

/* ------------------------------------------------------------------ */
/* Peer messages                                                      */

static int replay_op(void *arg)
{
    return peer_replay_new(64, 4, arg);
}

static void replay_check(void *arg, int result, int struck)
{
    peer_replay **r = arg;
    if (struck) {
        CHECK_INT(result, PEER_ENOMEM);
        return;
    }
    CHECK_INT(result, PEER_OK);
    peer_replay_free(*r);
    *r = NULL;
}

static void test_peer_messages_open_and_seal_without_allocating(void)
{
    uint8_t group[PEER_GROUP_KEY_BYTES];
    peer_wire_key key;
    peer_group_key_generate(group);
    peer_wire_key_derive(group, &key);
    uint8_t bits[4] = {0xff, 0x0f, 0x80, 0x00};
    peer_msg m = {.head = {.type = PEER_MSG_HAVE_REP, .time_ms = 1700000000000, .request_id = 9},
                  .have_status = PEER_HAVE_SOME,
                  .piece_count = 25,
                  .bitfield = bits};
    static uint8_t buf[4096], piece[1000];
    size_t len = 0, len2 = 0;
    peer_msg back, back2;
    peer_msg rep = {.head = {.type = PEER_MSG_PIECE_REP, .time_ms = 1700000000000},
                    .piece = 3,
                    .data = piece,
                    .data_len = sizeof piece};
    static uint8_t buf2[4096];

    fault_arm(1);
    int sealed = peer_wire_seal(&key, &m, buf, sizeof buf, &len);
    int opened = peer_wire_open(&key, buf, len, &back);
    int sealed2 = peer_wire_seal(&key, &rep, buf2, sizeof buf2, &len2);
    int opened2 = peer_wire_open(&key, buf2, len2, &back2);
    CHECK_INT(fault_disarm(), 0);
    CHECK_INT(fault_count(), 0);
    CHECK_INT(sealed, PEER_OK);
    CHECK_INT(opened, PEER_OK);
    CHECK_INT(sealed2, PEER_OK);
    CHECK_INT(opened2, PEER_OK);
    CHECK_INT(back.piece_count, 25);
    CHECK_INT(back2.data_len, sizeof piece);
    printf("  peer_wire_seal, peer_wire_open: 0 allocations\n");

    /* The replay filter is the one allocation of the peer wire layer. */
    peer_replay *r = NULL;
    fault_op op = {"peer_replay_new", NULL, replay_op, replay_check};
    check_campaign(fault_campaign(&op, &r, LIMIT));
}

/* ------------------------------------------------------------------ */
/* dopad's settings                                                   */

struct config_ctx {
    const char *path;
    const config_settings *cli;
    config_settings s; /* the file's, completed */
    validate_error msg;
};

static int config_op(void *arg)
{
    struct config_ctx *c = arg;
    memset(&c->s, 0, sizeof c->s);
    c->msg = (validate_error){0};
    if (config_read(c->path, 1, &c->s, &c->msg) != 0 ||
        config_complete(&c->s, c->cli, &c->msg) != 0)
        return -1;
    return 0;
}

static void config_check(void *arg, int result, int struck)
{
    struct config_ctx *c = arg;
    if (struck) {
        /* The trusted key file's buffer: said with the file and line. */
        CHECK_INT(result, -1);
        CHECK_HAS(c->msg.text, "dopa.conf:3: trusted-key: ");
        CHECK_HAS(c->msg.text, "out of memory");
        return;
    }
    CHECK_INT(result, 0);
    CHECK_STR(c->msg.text, "");
    CHECK_INT(c->s.max_running, 5); /* the command line's, over the file's 3 */
    CHECK_INT(c->s.n_keys, 2);      /* the file's, then the command line's */
    CHECK_INT(c->s.n_peers, 2);
    CHECK_INT(c->s.n_cache_hosts, 1);
    CHECK_INT(c->s.upload_rate, 5000000);
    CHECK_INT(c->s.cache_bytes, 1000000000);
    CHECK_INT(c->s.beacons, 2);
    CHECK_STR(c->s.metrics_listen, "127.0.0.1:9464");
    uint8_t group[PEER_GROUP_KEY_BYTES] = {0};
    static config_engine cfg;
    config_engine_make(&cfg, &c->s, group);
    CHECK(cfg.engine.peer == &cfg.peer);
    CHECK_INT(cfg.engine.n_trusted_keys, 2);
    CHECK_INT(cfg.engine.origin.max_rate, 10000000);
    CHECK_STR(cfg.peer.peers[1], "tcp://127.0.0.3:7880");
    CHECK_STR(cfg.peer.listen, "tcp://127.0.0.1:7880");
}

static void test_every_allocation_of_the_settings_reader_fails_in_turn(void)
{
    static char text[20000];
    validate_error why = {0};
    const char *secret = check_path("publisher.key");
    char pub[4096];
    snprintf(pub, sizeof pub, "%s.pub", secret);
    CHECK_INT(validate_secret_key_save(publisher, secret, 0, &why), VALIDATE_OK);
    char key_text[VALIDATE_PUBLIC_KEY_TEXT_MAX];
    validate_public_key_text(validate_secret_key_public(publisher), key_text);
    snprintf(text, sizeof text,
             "[dopad]\nmax-running = 3\ntrusted-key = %s\nsocket = %s\nstate-dir = %s\n"
             "inactivity-timeout = 3600\nplugin-timeout = 30\norigin-rate = 10M\n"
             "[peers]\ngroup-key = %s\nlisten = tcp://127.0.0.1:7880\n"
             "peer = tcp://127.0.0.2:7880\npeer = tcp://127.0.0.3:7880 # a comment\n"
             "cache-host = tcp://127.0.0.4:7880\nupload-rate = 5M\nmax-connections = 32\n"
             "beacons = no\ncache-size = 1G\n"
             "[metrics]\nlisten = 127.0.0.1:9464\n",
             pub, check_path("control.sock"), check_path("state"), check_path("group.key"));
    const char *path = check_path("dopa.conf");
    check_write_text(path, text);

    /* The command line's settings: a key given as text allocates nothing. */
    static config_settings cli;
    memset(&cli, 0, sizeof cli);
    CHECK_INT(config_set_option(&cli, "max-running", "5"), 0);
    CHECK_INT(config_set_option(&cli, "trusted-key", key_text), 0);
    CHECK_INT(config_set_option(&cli, "max-running", "65"), -1);
    CHECK_STR(cli.error, "max-running 65: need 1 to 64");

    static struct config_ctx c;
    memset(&c, 0, sizeof c);
    c.path = path;
    c.cli = &cli;
    fault_op op = {"config_read, config_complete", NULL, config_op, config_check};
    check_campaign(fault_campaign(&op, &c, LIMIT));
}

/* ------------------------------------------------------------------ */

static void after_case(void)
{
    fault_disarm();
}

int main(int argc, char **argv)
{
    fault_init();
    if (validate_secret_key_generate(&publisher) != VALIDATE_OK)
        return 1;
    check_cleanup = after_case;
    int rc = check_run(argc, argv,
                       (struct check_case[]){
                           CASE(test_every_allocation_of_the_manifest_parser_fails_in_turn),
                           CASE(test_every_allocation_of_the_key_parsers_fails_in_turn),
                           CASE(test_every_allocation_of_the_control_messages_fails_in_turn),
                           CASE(test_peer_messages_open_and_seal_without_allocating),
                           CASE(test_every_allocation_of_the_settings_reader_fails_in_turn),
                           {0},
                       });
    validate_secret_key_free(publisher);
    return rc;
}

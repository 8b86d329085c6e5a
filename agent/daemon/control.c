/*
 * The control server: an nng rep0 socket on an ipc path. Each of CALLS
 * contexts receives one request at a time. nng delivers a request on one of
 * its own threads; the context is queued and the engine woken, and the
 * engine thread decodes, handles and answers it (control_run_queued). A
 * PROTO_WAIT keeps its context until the engine answers it. The caller's
 * uid comes from the socket (NNG_OPT_IPC_PEER_UID), never from the request.
 *
 * One client must not starve the others: a connection may have at most
 * PER_PIPE requests in the server at once (more closes it), and a reply
 * that cannot be sent within SEND_TIMEOUT_MS (a client that does not read)
 * closes its connection, which frees the contexts waiting behind it.
 *
 * nng 1.5.2 (Debian 12) stops accepting for good when a client closes its
 * connection during the SP handshake (its EPIPE is taken for the listener's
 * own close; nng issue #1518): any local process could cut every client
 * off. A watchdog thread asks dopad "whoami" through the socket every
 * WATCH_MS; when WATCH_FAILURES in a row get no answer it makes the
 * listener anew (the engine answers them: a busy or slow one answers
 * late, but not five times in a row). The probe uses a plain socket, not
 * nng, so that the watchdog never blocks in nng_close.
 *
 * No pipe is closed from one of nng's callbacks here either: a connection
 * to cut off (one that does not read its replies) is marked, and the
 * engine thread closes it on its next turn.
 */
#include <errno.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "agent.h"
#include "work.h"

#define CALLS           128
#define WATCH_MS        1000 /* a probe's period and its time to answer */
#define WATCH_FAILURES  5    /* unanswered probes in a row before the listener is remade */
#define PER_PIPE        8
#define SEND_TIMEOUT_MS 5000

enum call_state { CALL_IDLE, CALL_RECEIVING, CALL_QUEUED, CALL_DEFERRED, CALL_SENDING };

struct engine_call {
    work w; /* posted to the control's requests when one came */
    control *c;
    nng_ctx ctx;
    nng_aio *aio;
    enum call_state state; /* guarded by the control's lock */
    nng_pipe pipe;         /* the connection the request came on */
    nng_msg *msg;
};

/* A connection to close on the engine's turn. */
typedef struct cut_off {
    work w;
    nng_pipe pipe;
} cut_off;

struct control {
    agent_engine *e;
    nng_socket sock;
    nng_listener listener;
    engine_call calls[CALLS];
    pthread_mutex_t lock; /* guards the calls' states and closing */
    mailbox requests;     /* calls whose request came */
    mailbox cuts;         /* connections to close */
    int closing;
    char *path;
    unsigned sock_mode;
    pthread_t watchdog;
    int watching;
    pthread_cond_t stop; /* wakes the watchdog when closing (with lock) */
    unsigned long restarts;
};

static void set_state(engine_call *call, enum call_state state)
{
    pthread_mutex_lock(&call->c->lock);
    call->state = state;
    pthread_mutex_unlock(&call->c->lock);
}

static void receive(engine_call *call)
{
    set_state(call, CALL_RECEIVING);
    nng_ctx_recv(call->ctx, call->aio);
}

/* The engine thread: closes a connection (or forgets it, closing). */
static void cut_now(work *w, int status)
{
    cut_off *k = (cut_off *)w;
    if (status == WORK_RAN)
        nng_pipe_close(k->pipe);
    free(k);
}

/* nng's thread: the engine closes the pipe on its next turn. */
static void cut_off_later(control *c, nng_pipe pipe)
{
    cut_off *k = malloc(sizeof *k);
    if (k == NULL)
        return; /* it goes on until the client closes it */
    *k = (cut_off){.w = {.done = cut_now}, .pipe = pipe};
    mailbox_post(&c->cuts, &k->w);
}

/* nng's thread: a receive or a send finished. */
static void on_aio(void *arg)
{
    engine_call *call = arg;
    control *c = call->c;
    int rv = nng_aio_result(call->aio);
    pthread_mutex_lock(&c->lock);
    int closing = c->closing;
    enum call_state state = call->state;
    pthread_mutex_unlock(&c->lock);
    if (state == CALL_SENDING) {
        if (rv != 0) {
            nng_msg_free(nng_aio_get_msg(call->aio));
            if (rv == NNG_ETIMEDOUT)
                cut_off_later(c, call->pipe); /* it does not read its replies */
        }
        if (!closing)
            receive(call);
        return;
    }
    if (rv != 0) {
        if (rv != NNG_ECLOSED && rv != NNG_ECANCELED && !closing)
            receive(call);
        return;
    }
    call->msg = nng_aio_get_msg(call->aio);
    call->pipe = nng_msg_get_pipe(call->msg);
    set_state(call, CALL_QUEUED);
    mailbox_post(&c->requests, &call->w);
}

/* Engine thread: sends a reply on the call's context. */
static void send_reply(engine_call *call, const proto_reply *reply)
{
    proto_buf buf;
    nng_msg *msg = NULL;
    proto_buf_init(&buf, PROTO_MAX_REPLY);
    int err = proto_encode_reply(reply, &buf);
    if (err != DOPA_OK) {
        /* Too big or out of memory: say so instead. */
        proto_buf_free(&buf);
        proto_buf_init(&buf, PROTO_MAX_REPLY);
        proto_reply small = {.op = reply->op, .status = (uint64_t)err};
        snprintf(small.message, sizeof small.message, "the reply could not be built");
        proto_encode_reply(&small, &buf);
    }
    if (buf.failed || nng_msg_alloc(&msg, 0) != 0 || nng_msg_append(msg, buf.data, buf.len) != 0) {
        if (msg != NULL)
            nng_msg_free(msg);
        proto_buf_free(&buf);
        receive(call); /* the client times out */
        return;
    }
    proto_buf_free(&buf);
    set_state(call, CALL_SENDING);
    nng_aio_set_msg(call->aio, msg);
    nng_aio_set_timeout(call->aio, SEND_TIMEOUT_MS);
    nng_ctx_send(call->ctx, call->aio);
}

static void deferred_reply(engine_call *call, const proto_reply *reply)
{
    send_reply(call, reply);
}

/* Requests of the call's connection already in the server (not counting it). */
static int in_flight(control *c, const engine_call *call)
{
    int n = 0;
    pthread_mutex_lock(&c->lock);
    for (int i = 0; i < CALLS; i++) {
        const engine_call *o = &c->calls[i];
        if (o != call && o->pipe.id == call->pipe.id &&
            (o->state == CALL_QUEUED || o->state == CALL_DEFERRED || o->state == CALL_SENDING))
            n++;
    }
    pthread_mutex_unlock(&c->lock);
    return n;
}

static void handle(control *c, engine_call *call)
{
    nng_msg *msg = call->msg;
    call->msg = NULL;
    if (in_flight(c, call) >= PER_PIPE) {
        /* A client piling up requests: it is cut off, not served. */
        nng_msg_free(msg);
        nng_pipe_close(call->pipe);
        receive(call);
        return;
    }
    const uint8_t *body = nng_msg_body(msg);
    size_t len = nng_msg_len(msg);
    proto_reply reply = {0};
    validate_error why = {0};
    uint64_t uid = 0;

    /* Who is asking: the kernel's answer for this pipe, nothing else. */
    int op = proto_peek_op(body, len);
    reply.op = op > 0 ? op : PROTO_WHOAMI;
    if (nng_pipe_get_uint64(nng_msg_get_pipe(msg), NNG_OPT_IPC_PEER_UID, &uid) != 0 ||
        uid > UINT32_MAX) {
        reply.status = DOPA_EACCESS;
        snprintf(reply.message, sizeof reply.message, "cannot tell who is asking");
        nng_msg_free(msg);
        send_reply(call, &reply);
        return;
    }
    proto_request *req = malloc(sizeof *req);
    if (req == NULL) {
        reply.status = DOPA_ENOMEM;
        snprintf(reply.message, sizeof reply.message, "out of memory");
        nng_msg_free(msg);
        send_reply(call, &reply);
        return;
    }
    int err = proto_decode_request(body, len, req, &why);
    if (err != DOPA_OK) {
        reply.status = (uint64_t)err;
        snprintf(reply.message, sizeof reply.message, "malformed request: %.480s", why.text);
        free(req);
        nng_msg_free(msg);
        send_reply(call, &reply);
        return;
    }
    /* req->manifest points into msg: keep msg until handled. */
    int rc = engine_handle(c->e, (uint32_t)uid, req, &reply, call, deferred_reply);
    free(req);
    nng_msg_free(msg);
    if (rc == ENGINE_DEFERRED) {
        set_state(call, CALL_DEFERRED);
        return;
    }
    send_reply(call, &reply);
    proto_reply_clear(&reply);
}

/* The engine thread: a call's request came (when the server closes, the
 * call is simply left: control_close frees its message). */
static void on_call(work *w, int status)
{
    engine_call *call = (engine_call *)w;
    if (status == WORK_RAN)
        handle(call->c, call);
}

void control_run_queued(control *c)
{
    mailbox_deliver(&c->cuts);
    mailbox_deliver(&c->requests);
}

/* Creates and starts the listener on c->path. */
static int start_listener(control *c)
{
    char url[4200];
    snprintf(url, sizeof url, "ipc://%s", c->path);
    int rv;
    if ((rv = nng_listener_create(&c->listener, c->sock, url)) != 0)
        return rv;
    if ((rv = nng_listener_set_int(c->listener, NNG_OPT_IPC_PERMISSIONS, (int)c->sock_mode)) != 0 ||
        (rv = nng_listener_start(c->listener, 0)) != 0)
        nng_listener_close(c->listener);
    return rv;
}

/* Reads or writes all of buf on a socket whose timeouts are set. */
static int full_io(int fd, void *data, size_t len, int writing)
{
    uint8_t *buf = data;
    while (len > 0) {
        ssize_t r = writing ? write(fd, buf, len) : read(fd, buf, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        buf += r;
        len -= (size_t)r;
    }
    return 0;
}

/* Whether dopad answers a whoami through its socket within about WATCH_MS,
 * on a connection of its own made for the probe. The probe speaks nng's
 * IPC framing itself over a plain socket (the SP header, then a type byte
 * and a 64-bit length before each message, REQ's request id first): a
 * probe made with nng would end in nng_close, which blocks for good when
 * nng itself is wedged, and the watchdog must never wait on what it
 * watches. */
static int listener_answers(const char *path)
{
    uint8_t hello[8] = {0, 'S', 'P', 0, 0, 0x30, 0, 0}; /* REQ v0 */
    uint8_t msg[9 + 4 + 64];
    proto_request r = {.op = PROTO_WHOAMI};
    proto_buf b;
    proto_buf_init(&b, PROTO_MAX_REQUEST);
    if (proto_encode_request(&r, &b) != 0 || b.failed || b.len > sizeof msg - 13) {
        proto_buf_free(&b);
        return 1; /* nothing to test with: say nothing of the listener */
    }
    uint64_t len = 4 + b.len;
    msg[0] = 1;
    for (int i = 0; i < 8; i++)
        msg[1 + i] = (uint8_t)(len >> (56 - 8 * i));
    uint32_t id = 0x80000000u | (uint32_t)(random() & 0x7fffffff);
    for (int i = 0; i < 4; i++)
        msg[9 + i] = (uint8_t)(id >> (24 - 8 * i));
    memcpy(msg + 13, b.data, b.len);
    size_t msg_len = 13 + b.len;
    proto_buf_free(&b);

    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return 1;
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 1; /* no descriptor to test with: not the listener's fault */
    struct timeval tv = {.tv_sec = WATCH_MS / 1000, .tv_usec = (WATCH_MS % 1000) * 1000};
    uint8_t head[9], peer_hello[8];
    int ok = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
             setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) == 0 &&
             connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
             full_io(fd, hello, sizeof hello, 1) == 0 &&
             full_io(fd, peer_hello, sizeof peer_hello, 0) == 0 && peer_hello[1] == 'S' &&
             peer_hello[5] == 0x31 && full_io(fd, msg, msg_len, 1) == 0 &&
             full_io(fd, head, sizeof head, 0) == 0 && head[0] == 1;
    uint64_t reply_len = 0;
    for (int i = 0; ok && i < 8; i++)
        reply_len = reply_len << 8 | head[1 + i];
    uint8_t reply_id[4];
    ok = ok && reply_len >= 4 && reply_len <= PROTO_MAX_REPLY &&
         full_io(fd, reply_id, sizeof reply_id, 0) == 0 &&
         ((uint32_t)reply_id[0] << 24 | (uint32_t)reply_id[1] << 16 | (uint32_t)reply_id[2] << 8 |
          reply_id[3]) == id;
    close(fd); /* the rest of the reply is not read: dopad drops it */
    return ok;
}

static void *watchdog_main(void *arg)
{
    control *c = arg;
    int failures = 0;
    pthread_mutex_lock(&c->lock);
    while (!c->closing) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += WATCH_MS / 1000;
        pthread_cond_timedwait(&c->stop, &c->lock, &until);
        if (c->closing)
            break;
        pthread_mutex_unlock(&c->lock);
        failures = listener_answers(c->path) ? 0 : failures + 1;
        if (failures >= WATCH_FAILURES) {
            /* Closing the listener removes its socket file; a file left
             * behind would make the new one fail. */
            nng_listener_close(c->listener);
            unlink(c->path);
            int rv = start_listener(c);
            agent_log(rv == 0 ? "warning" : "error",
                      "control socket %s stopped accepting; listening anew: %s", c->path,
                      rv == 0 ? "done" : nng_strerror(rv));
            c->restarts++;
            failures = 0;
        }
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

/* Makes the socket's directory; refuses a path where a live dopad listens,
 * removes a socket left by a dead one. */
static int prepare_path(const char *path, unsigned dir_mode, validate_error *why)
{
    char dir[4096];
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path) {
        validate_error_set(why, DOPA_EINVAL, "%s: socket path too long", path);
        return DOPA_EINVAL;
    }
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        /* Create missing parents too (like mkdir -p), the last with dir_mode. */
        for (char *p = dir + 1; *p; p++) {
            if (*p != '/')
                continue;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                validate_error_set(why, DOPA_EIO, "%s: %s", dir, strerror(errno));
                return DOPA_EIO;
            }
            *p = '/';
        }
        if (mkdir(dir, (mode_t)dir_mode) != 0 && errno != EEXIST) {
            validate_error_set(why, DOPA_EIO, "%s: %s", dir, strerror(errno));
            return DOPA_EIO;
        }
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        close(fd);
        validate_error_set(why, DOPA_EINVAL, "%s: another dopad is listening there", path);
        return DOPA_EINVAL;
    }
    int e = errno;
    if (fd >= 0)
        close(fd);
    if (e == ECONNREFUSED) {
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(path);
    }
    return DOPA_OK;
}

/* What control_open made before its socket. */
static void control_free(control *c)
{
    free(c->path);
    mailbox_destroy(&c->requests);
    mailbox_destroy(&c->cuts);
    pthread_cond_destroy(&c->stop);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

int control_open(agent_engine *e, const char *socket_path, unsigned dir_mode, unsigned sock_mode,
                 control **out, validate_error *why)
{
    control *c = calloc(1, sizeof *c);
    if (c == NULL)
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    c->e = e;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->stop, NULL);
    mailbox_init(&c->requests, engine_wake, e);
    mailbox_init(&c->cuts, engine_wake, e);
    int err = prepare_path(socket_path, dir_mode, why);
    if (err != DOPA_OK) {
        control_free(c);
        return err;
    }
    c->path = strdup(socket_path);
    if (c->path == NULL) {
        control_free(c);
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    }
    c->sock_mode = sock_mode;
    int rv;
    if ((rv = nng_rep0_open(&c->sock)) != 0 ||
        (rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, PROTO_MAX_REQUEST)) != 0 ||
        (rv = start_listener(c)) != 0) {
        validate_error_set(why, DOPA_EIO, "%s: %s", socket_path, nng_strerror(rv));
        nng_close(c->sock);
        control_free(c);
        return DOPA_EIO;
    }
    for (int i = 0; i < CALLS; i++) {
        engine_call *call = &c->calls[i];
        call->c = c;
        call->w = (work){.done = on_call};
        if (nng_ctx_open(&call->ctx, c->sock) != 0 ||
            nng_aio_alloc(&call->aio, on_aio, call) != 0) {
            validate_error_set(why, DOPA_ENOMEM, "cannot set up the control socket");
            control_close(c);
            return DOPA_ENOMEM;
        }
    }
    for (int i = 0; i < CALLS; i++)
        receive(&c->calls[i]);
    c->watching = pthread_create(&c->watchdog, NULL, watchdog_main, c) == 0;
    engine_set_control(e, c);
    *out = c;
    return DOPA_OK;
}

void control_close(control *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    c->closing = 1;
    pthread_cond_signal(&c->stop);
    pthread_mutex_unlock(&c->lock);
    if (c->watching)
        pthread_join(c->watchdog, NULL);
    engine_set_control(c->e, NULL);
    for (int i = 0; i < CALLS; i++) {
        engine_call *call = &c->calls[i];
        if (call->aio != NULL)
            nng_aio_stop(call->aio);
        if (call->state == CALL_DEFERRED)
            engine_drop_call(c->e, call);
    }
    nng_close(c->sock);
    for (int i = 0; i < CALLS; i++) {
        engine_call *call = &c->calls[i];
        if (call->msg != NULL)
            nng_msg_free(call->msg);
        if (call->aio != NULL)
            nng_aio_free(call->aio);
    }
    if (c->path != NULL)
        unlink(c->path);
    control_free(c);
}

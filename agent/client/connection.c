/*
 * libdopa's connection to dopad (client.h): the manager, and each call's
 * request and reply. Each call opens its own nng context on the manager's
 * req0 socket, so calls from several threads run side by side; replies are
 * parsed as strictly as dopad parses requests.
 *
 * Reconnecting: the socket's dialer connects again by itself when dopad
 * restarts, except in one case it never recovers from: nng 1.5 takes a
 * connection that closes during its handshake with a write failing with
 * EPIPE (which it reports as NNG_ECLOSED) for its own close, and that
 * dialer never dials again. A dopad killed between accept() and the
 * handshake leaves exactly that, and its requests then waited in the send
 * for the whole call timeout, for ever after. So the manager counts its
 * connections (nng's pipe notifications); a request waits at most
 * SEND_TIMEOUT_MS for one (wait_for_connection), and meanwhile a dialer
 * that has had none for REDIAL_AFTER_MS is replaced (redial_if_stuck), at
 * most once per redial_delay.
 *
 * Closing: nng 1.5.2 can hang in nng_close when a message is arriving as
 * it closes the connection (the IPC transport reads the body of a reply
 * on an aio that the close has stopped, and the receive it owes the
 * protocol is never finished, so the pipe is never freed); and an
 * nng_ctx_open while nng_close runs leaves a context that nng_close then
 * waits for for ever. dopad sends nothing but replies, so dopa_disconnect
 * closes the socket only once no call is in nng: it stops new calls, ends
 * the events thread's poll with one of its own that dopad answers at once,
 * waits for the calls under way (end_calls), joins the events thread, and
 * only then calls nng_close.
 */
#include <errno.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "client.h"

#define SEND_TIMEOUT_MS 3000 /* a request waits this long for a connection to dopad */
#define SYSTEM_SOCKET   "/run/dopa/control.sock"
/* A dialer that is alive connects within a tenth of a second of dopad
 * listening; one without a connection for REDIAL_AFTER_MS may be dead.
 * Replacing it is cheap, but not more often than every REDIAL_MIN_MS,
 * doubling up to REDIAL_MAX_MS while no connection comes (dopad is down). */
#define REDIAL_AFTER_MS 1000
#define REDIAL_MIN_MS   500
#define REDIAL_MAX_MS   2000
#define DIALER_CHECK_MS 100  /* how often a request that waits looks at the dialer */
#define CLOSE_WAIT_MS   2000 /* dopa_disconnect waits this long for calls to end by themselves */
#define POLL_END_MS     100  /* ... asking dopad this often to answer the events poll */

/* A call that is in nng (between its registration and its end), so that
 * dopa_disconnect can wait for it and, past CLOSE_WAIT_MS, stop it. The
 * caller owns aio and unlinks the entry (under conn_lock) before it frees
 * it. */
struct in_flight {
    nng_aio *aio;
    int is_poll; /* the events thread's long poll */
    struct in_flight *next;
};

void client_manager_free(dopa_manager *m)
{
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->conn_changed);
    pthread_mutex_destroy(&m->conn_lock);
    free(m->regs);
    free(m);
}

static __thread char last_message[DOPA_MESSAGE_MAX + 1];

const char *dopa_last_message(void)
{
    return last_message;
}

void dopa_default_socket(char *out, size_t len)
{
    const char *env = getenv("DOPA_SOCKET");
    if (env != NULL && env[0] != '\0') {
        snprintf(out, len, "%s", env);
        return;
    }
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (geteuid() != 0 && runtime != NULL && runtime[0] == '/') {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/dopa/control.sock", runtime);
        if (stat(path, &st) == 0) {
            snprintf(out, len, "%s", path);
            return;
        }
    }
    snprintf(out, len, "%s", SYSTEM_SOCKET);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* nng's thread: a connection came up (after its handshake) or went. Every
 * pipe that had ADD_PRE gets REM_POST, so the count balances. */
static void on_pipe(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
    dopa_manager *m = arg;
    (void)pipe;
    pthread_mutex_lock(&m->conn_lock);
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        m->n_pipes++;
        m->redial_delay = REDIAL_MIN_MS;
        m->next_redial = 0;
        pthread_cond_broadcast(&m->conn_changed);
    } else if (ev == NNG_PIPE_EV_REM_POST && --m->n_pipes == 0) {
        m->pipeless_since = now_ms();
    }
    pthread_mutex_unlock(&m->conn_lock);
}

/* Replaces the dialer of a manager that has had no connection for
 * REDIAL_AFTER_MS (see the top of the file). The old one has no pipe to
 * lose: closing it ends no request. If dopad is down, the new one keeps
 * dialling as the old one did. */
static void redial_if_stuck(dopa_manager *m)
{
    int64_t now = now_ms();
    pthread_mutex_lock(&m->conn_lock);
    if (m->n_pipes > 0 || m->is_redialing || m->is_closing ||
        now - m->pipeless_since < REDIAL_AFTER_MS || now < m->next_redial) {
        pthread_mutex_unlock(&m->conn_lock);
        return;
    }
    m->is_redialing = 1;
    nng_dialer old = m->dialer;
    m->next_redial = now + m->redial_delay;
    m->redial_delay = m->redial_delay * 2 > REDIAL_MAX_MS ? REDIAL_MAX_MS : m->redial_delay * 2;
    pthread_mutex_unlock(&m->conn_lock);

    nng_dialer_close(old);
    nng_dialer d = NNG_DIALER_INITIALIZER;
    if (nng_dialer_create(&d, m->sock, m->url) != 0 ||
        nng_dialer_start(d, NNG_FLAG_NONBLOCK) != 0) {
        nng_dialer_close(d); /* the next call tries again */
        d = (nng_dialer)NNG_DIALER_INITIALIZER;
    }
    pthread_mutex_lock(&m->conn_lock);
    m->dialer = d;
    m->is_redialing = 0;
    pthread_cond_broadcast(&m->conn_changed); /* dopa_disconnect may wait for it */
    pthread_mutex_unlock(&m->conn_lock);
}

/* Waits up to ms for a connection to dopad; 1 when there is one. Requests
 * wait here rather than in nng's send, which would not notice a dead
 * dialer, nor a replaced one. */
static int wait_for_connection(dopa_manager *m, int ms)
{
    int64_t end = now_ms() + ms;
    for (;;) {
        redial_if_stuck(m);
        int64_t now = now_ms(), until = now + DIALER_CHECK_MS < end ? now + DIALER_CHECK_MS : end;
        struct timespec at = {(time_t)(until / 1000), (long)(until % 1000) * 1000000};
        pthread_mutex_lock(&m->conn_lock);
        while (m->n_pipes == 0 && !m->is_closing &&
               pthread_cond_timedwait(&m->conn_changed, &m->conn_lock, &at) == 0)
            ;
        int connected = m->n_pipes > 0, closing = m->is_closing;
        pthread_mutex_unlock(&m->conn_lock);
        if (connected)
            return 1;
        if (closing || now_ms() >= end)
            return 0;
    }
}

int dopa_connect(const char *socket_path, dopa_manager **out)
{
    char path[4096];
    if (out == NULL)
        return DOPA_EINVAL;
    if (socket_path == NULL) {
        dopa_default_socket(path, sizeof path);
        socket_path = path;
    }
    dopa_manager *m = calloc(1, sizeof *m);
    if (m == NULL)
        return DOPA_ENOMEM;
    snprintf(m->url, sizeof m->url, "ipc://%s", socket_path);
    if (getrandom(m->client, sizeof m->client, 0) != (ssize_t)sizeof m->client) {
        free(m);
        return DOPA_EINTERNAL;
    }
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    pthread_mutex_init(&m->conn_lock, NULL);
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC); /* now_ms()'s clock */
    pthread_cond_init(&m->conn_changed, &monotonic);
    pthread_condattr_destroy(&monotonic);
    m->redial_delay = REDIAL_MIN_MS;
    m->pipeless_since = now_ms();
    if (nng_req0_open(&m->sock) != 0) {
        client_manager_free(m);
        return DOPA_ENOMEM;
    }
    /* A request is never sent twice: a resend could create a second job. */
    nng_socket_set_ms(m->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_size(m->sock, NNG_OPT_RECVMAXSZ, PROTO_MAX_REPLY);
    if (nng_pipe_notify(m->sock, NNG_PIPE_EV_ADD_PRE, on_pipe, m) != 0 ||
        nng_pipe_notify(m->sock, NNG_PIPE_EV_REM_POST, on_pipe, m) != 0) {
        nng_close(m->sock);
        client_manager_free(m);
        return DOPA_ENOMEM;
    }
    /* The first dial waits: no dopad there is an error for the caller. */
    if (nng_dial(m->sock, m->url, &m->dialer, 0) != 0) {
        nng_close(m->sock);
        client_manager_free(m);
        return DOPA_ECONNECT;
    }
    *out = m;
    return DOPA_OK;
}

static int exchange(dopa_manager *m, const proto_request *req, proto_reply *reply, int timeout_ms,
                    int is_closing_call);

/* Waits until no call is in nng (see the top of the file); is_closing is
 * set, so none begins but the polls sent here. While the events thread
 * polls, dopad is asked to answer that poll (a newer poll of a client
 * answers its older one at once), again every POLL_END_MS, since the
 * thread's poll may reach dopad after ours. Calls still under way after
 * CLOSE_WAIT_MS (dopad does not answer) are stopped. */
static void end_calls(dopa_manager *m)
{
    proto_request *end_poll = client_request_new(PROTO_EVENTS, NULL);
    if (end_poll != NULL)
        memcpy(end_poll->client, m->client, sizeof end_poll->client);
    int64_t give_up = now_ms() + CLOSE_WAIT_MS, next_end_poll = 0;
    int has_stopped = 0;
    pthread_mutex_lock(&m->conn_lock);
    while (m->calls != NULL) {
        int64_t now = now_ms();
        int is_polling = 0;
        for (const in_flight *c = m->calls; c != NULL; c = c->next)
            is_polling |= c->is_poll;
        if (is_polling && end_poll != NULL && now >= next_end_poll && now < give_up) {
            pthread_mutex_unlock(&m->conn_lock);
            proto_reply reply;
            if (exchange(m, end_poll, &reply, (int)(give_up - now), 1) == DOPA_OK)
                proto_reply_clear(&reply);
            pthread_mutex_lock(&m->conn_lock);
            next_end_poll = now_ms() + POLL_END_MS;
            continue;
        }
        if (now >= give_up && !has_stopped) {
            /* Their aios end at once, now and at every later use. This
             * waits for nothing of ours: the aios have no callback, and
             * nng runs on_pipe under none of the locks it takes. */
            for (const in_flight *c = m->calls; c != NULL; c = c->next)
                nng_aio_stop(c->aio);
            has_stopped = 1;
        }
        int64_t until = has_stopped ? now + DIALER_CHECK_MS : give_up;
        if (is_polling && !has_stopped && next_end_poll < until)
            until = next_end_poll;
        struct timespec at = {(time_t)(until / 1000), (long)(until % 1000) * 1000000};
        pthread_cond_timedwait(&m->conn_changed, &m->conn_lock, &at);
    }
    pthread_mutex_unlock(&m->conn_lock);
    free(end_poll);
}

void dopa_disconnect(dopa_manager *m)
{
    if (m == NULL)
        return;
    client_unregister_all(m); /* dopad gives what this one holds to others at once */
    pthread_mutex_lock(&m->lock);
    m->stopping = 1;
    int joined = m->has_thread,
        is_events_thread = joined && pthread_equal(m->thread, pthread_self());
    pthread_cond_broadcast(&m->wake);
    pthread_mutex_unlock(&m->lock);
    pthread_mutex_lock(&m->conn_lock);
    m->is_closing = 1; /* ends a wait for a connection, stops new redials and calls */
    pthread_cond_broadcast(&m->conn_changed);
    pthread_mutex_unlock(&m->conn_lock);
    end_calls(m);
    pthread_mutex_lock(&m->conn_lock);
    /* A dialer made while nng closes the socket can be left unfreed (seen
     * under ASan in faults.kill9): a redial under way ends first. */
    while (m->is_redialing)
        pthread_cond_wait(&m->conn_changed, &m->conn_lock);
    pthread_mutex_unlock(&m->conn_lock);
    if (joined && !is_events_thread)
        pthread_join(m->thread, NULL); /* no call of it outlives the socket */
    nng_close(m->sock);
    if (is_events_thread) {
        /* From a callback: the thread ends when it returns (its calls are
         * refused now), and frees. */
        m->free_on_exit = 1;
        pthread_detach(m->thread);
        return;
    }
    client_manager_free(m);
}

/* A call enters nng: 0 (and nothing done) when the manager is closing,
 * unless it is one of dopa_disconnect's own. */
static int call_begin(dopa_manager *m, in_flight *self, int is_closing_call)
{
    pthread_mutex_lock(&m->conn_lock);
    int may = !m->is_closing || is_closing_call;
    if (may) {
        self->next = m->calls;
        m->calls = self;
    }
    pthread_mutex_unlock(&m->conn_lock);
    return may;
}

/* The call is out of nng: dopa_disconnect may go on. */
static void call_end(dopa_manager *m, in_flight *self)
{
    pthread_mutex_lock(&m->conn_lock);
    for (in_flight **p = &m->calls; *p != NULL; p = &(*p)->next) {
        if (*p == self) {
            *p = self->next;
            break;
        }
    }
    pthread_cond_broadcast(&m->conn_changed);
    pthread_mutex_unlock(&m->conn_lock);
}

/* client_call(), and with is_closing_call also while dopa_disconnect runs. */
static int exchange(dopa_manager *m, const proto_request *req, proto_reply *reply, int timeout_ms,
                    int is_closing_call)
{
    proto_buf buf;
    nng_ctx ctx;
    nng_aio *aio = NULL;
    nng_msg *msg = NULL;
    in_flight self = {.is_poll = req->op == PROTO_EVENTS && !is_closing_call};
    int err, has_begun = 0, has_ctx = 0;
    memset(reply, 0, sizeof *reply);
    last_message[0] = '\0';
    if (m == NULL)
        return DOPA_EINVAL;
    proto_buf_init(&buf, PROTO_MAX_REQUEST);
    err = proto_encode_request(req, &buf);
    if (err != DOPA_OK)
        goto done;
    int send_ms = timeout_ms < SEND_TIMEOUT_MS ? timeout_ms : SEND_TIMEOUT_MS;
    if (!wait_for_connection(m, send_ms)) {
        err = DOPA_ECONNECT; /* dopad is down, or not accepting */
        goto done;
    }
    if (nng_aio_alloc(&aio, NULL, NULL) != 0) {
        err = DOPA_ENOMEM;
        goto done;
    }
    self.aio = aio;
    if (!(has_begun = call_begin(m, &self, is_closing_call)) ||
        !(has_ctx = nng_ctx_open(&ctx, m->sock) == 0)) {
        err = DOPA_ECONNECT;
        goto done;
    }
    if (nng_msg_alloc(&msg, 0) != 0 || nng_msg_append(msg, buf.data, buf.len) != 0) {
        err = DOPA_ENOMEM;
        goto done;
    }
    proto_buf_free(&buf);
    /* The send ends when the request is on a connection, at once unless
     * the one just seen went away; then it is not sent at all. */
    nng_aio_set_timeout(aio, send_ms);
    nng_aio_set_msg(aio, msg);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    if (nng_aio_result(aio) != 0) {
        err = DOPA_ECONNECT;
        goto done; /* msg is still ours */
    }
    msg = NULL;
    nng_aio_set_timeout(aio, timeout_ms);
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    if (nng_aio_result(aio) != 0) {
        err = nng_aio_result(aio) == NNG_ETIMEDOUT ? DOPA_ETIMEOUT : DOPA_ECONNECT;
        goto done;
    }
    msg = nng_aio_get_msg(aio);
    validate_error why = {0};
    err = proto_decode_reply(nng_msg_body(msg), nng_msg_len(msg), reply, &why);
    if (err == DOPA_OK && reply->op != req->op) {
        proto_reply_clear(reply);
        err = DOPA_EPROTO;
    }
    if (err == DOPA_OK && reply->status != DOPA_OK) {
        err = (int)reply->status;
        snprintf(last_message, sizeof last_message, "%s", reply->message);
        proto_reply_clear(reply);
    }
done:
    proto_buf_free(&buf);
    if (msg != NULL)
        nng_msg_free(msg);
    if (has_ctx)
        nng_ctx_close(ctx);
    if (has_begun)
        call_end(m, &self);
    if (aio != NULL)
        nng_aio_free(aio);
    return err;
}

int client_call(dopa_manager *m, const proto_request *req, proto_reply *reply, int timeout_ms)
{
    return exchange(m, req, reply, timeout_ms, 0);
}

int client_send(dopa_manager *m, const proto_request *req)
{
    proto_reply reply;
    int err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
    if (err == DOPA_OK)
        proto_reply_clear(&reply);
    return err;
}

proto_request *client_request_new(int op, const dopa_id *id)
{
    proto_request *req = calloc(1, sizeof *req);
    if (req != NULL) {
        req->op = op;
        if (id != NULL)
            req->id = *id;
    }
    return req;
}

/*
 * libdopa: the client side of the control protocol (dopa.h). Each call
 * opens its own nng context on the manager's req0 socket, so calls from
 * several threads run side by side; replies are parsed as strictly as
 * dopad parses requests.
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

#include "dopa.h"
#include "proto.h"

#define CALL_TIMEOUT_MS 120000
#define SEND_TIMEOUT_MS 3000 /* a request waits this long for a connection to dopad */
#define SYSTEM_SOCKET   "/run/dopa/control.sock"
#define EVENTS_POLL_MS  25000 /* how long one poll for events waits in dopad */
#define RETRY_MS        1000  /* after dopad could not be reached */
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
typedef struct in_flight {
    nng_aio *aio;
    int is_poll; /* the events thread's long poll */
    struct in_flight *next;
} in_flight;

/* Callbacks registered for a job. */
typedef struct registration {
    dopa_id id;
    dopa_callbacks cb;
} registration;

struct dopa_manager {
    nng_socket sock;
    char url[4200]; /* to dial again */
    /* The connection to dopad. conn_lock guards the fields below it; nng's
     * pipe callbacks take it, so no nng call waits while it is held. */
    pthread_mutex_t conn_lock;
    nng_dialer dialer;
    int n_pipes;            /* connections up now */
    int64_t pipeless_since; /* monotonic ms, when n_pipes became 0 */
    int64_t next_redial;    /* monotonic ms, no new dialer before */
    int redial_delay;       /* ms */
    int is_redialing;       /* a thread replaces the dialer now */
    int is_closing;         /* dopa_disconnect() runs: wait for nothing, start no call */
    in_flight *calls;       /* calls in nng now */
    pthread_cond_t conn_changed;
    /* Notifications: the thread that polls for events and runs the
     * callbacks, and what it needs. lock guards the fields below it. */
    uint8_t client[16]; /* who we are to dopad */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    registration *regs;
    size_t n_regs, cap_regs;
    int has_thread;
    int stopping;
    int free_on_exit; /* disconnected from a callback: the thread frees it */
};

static void free_manager(dopa_manager *m)
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
        free_manager(m);
        return DOPA_ENOMEM;
    }
    /* A request is never sent twice: a resend could create a second job. */
    nng_socket_set_ms(m->sock, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
    nng_socket_set_size(m->sock, NNG_OPT_RECVMAXSZ, PROTO_MAX_REPLY);
    if (nng_pipe_notify(m->sock, NNG_PIPE_EV_ADD_PRE, on_pipe, m) != 0 ||
        nng_pipe_notify(m->sock, NNG_PIPE_EV_REM_POST, on_pipe, m) != 0) {
        nng_close(m->sock);
        free_manager(m);
        return DOPA_ENOMEM;
    }
    /* The first dial waits: no dopad there is an error for the caller. */
    if (nng_dial(m->sock, m->url, &m->dialer, 0) != 0) {
        nng_close(m->sock);
        free_manager(m);
        return DOPA_ECONNECT;
    }
    *out = m;
    return DOPA_OK;
}

static void unregister_all(dopa_manager *m);
static proto_request *new_request(int op, const dopa_id *id);
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
    proto_request *end_poll = new_request(PROTO_EVENTS, NULL);
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
    unregister_all(m); /* dopad gives what this one holds to others at once */
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
    free_manager(m);
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

/* Sends a request and waits for its reply. */
static int call(dopa_manager *m, const proto_request *req, proto_reply *reply, int timeout_ms)
{
    return exchange(m, req, reply, timeout_ms, 0);
}

/* call(), and with is_closing_call also while dopa_disconnect runs. */
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
    char why[256];
    err = proto_decode_reply(nng_msg_body(msg), nng_msg_len(msg), reply, why, sizeof why);
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

/* A request of just an op (and a job id, if not NULL); the caller clears
 * the reply, which is cleared already when this fails before the call. */
static int call_op(dopa_manager *m, int op, const dopa_id *id, proto_reply *reply)
{
    memset(reply, 0, sizeof *reply);
    proto_request *req = calloc(1, sizeof *req);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = op;
    if (id != NULL)
        req->id = *id;
    int err = call(m, req, reply, CALL_TIMEOUT_MS);
    free(req);
    return err;
}

static int simple(dopa_manager *m, int op, const dopa_id *id)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_reply reply;
    int err = call_op(m, op, id, &reply);
    proto_reply_clear(&reply);
    return err;
}

static int copy_string(char *dst, size_t cap, const char *src)
{
    if (src == NULL)
        src = "";
    if (strlen(src) >= cap)
        return DOPA_EINVAL;
    strcpy(dst, src);
    return DOPA_OK;
}

int dopa_whoami(dopa_manager *m, uint32_t *uid, char *version, size_t version_len)
{
    proto_reply reply;
    int err = call_op(m, PROTO_WHOAMI, NULL, &reply);
    if (err == DOPA_OK) {
        if (uid != NULL)
            *uid = (uint32_t)reply.uid;
        if (version != NULL && version_len > 0)
            snprintf(version, version_len, "%s", reply.version);
    }
    proto_reply_clear(&reply);
    return err;
}

int dopa_agent_stats_get(dopa_manager *m, dopa_agent_stats *out)
{
    if (out == NULL)
        return DOPA_EINVAL;
    proto_reply reply;
    int err = call_op(m, PROTO_STATS, NULL, &reply);
    if (err == DOPA_OK)
        *out = reply.stats;
    proto_reply_clear(&reply);
    return err;
}

int dopa_job_create(dopa_manager *m, const char *display_name, int type, dopa_id *out)
{
    if (out == NULL || type != DOPA_JOB_DOWNLOAD)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = PROTO_CREATE;
    req->type = (uint64_t)type;
    int err = copy_string(req->name, sizeof req->name, display_name);
    if (err == DOPA_OK)
        err = call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK) {
        if (!reply.has_id)
            err = DOPA_EPROTO;
        else
            *out = reply.id;
        proto_reply_clear(&reply);
    }
    return err;
}

static int get_job(dopa_manager *m, int op, const dopa_id *id, uint64_t seen, int timeout_ms,
                   dopa_job_info *out)
{
    if (id == NULL || out == NULL)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = op;
    req->id = *id;
    req->seen = seen;
    if (timeout_ms < 0)
        timeout_ms = 0;
    if (timeout_ms > 600000)
        timeout_ms = 600000; /* what dopad waits at most */
    req->timeout_ms = (uint64_t)timeout_ms;
    int err = call(m, req, &reply, timeout_ms + CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK) {
        /* The job asked about, and an error that names one of its files. */
        const dopa_job_info *j = &reply.jobs[0];
        if (memcmp(j->id.bytes, id->bytes, 16) != 0 || j->error.file < -1 ||
            (j->error.file >= 0 && (uint32_t)j->error.file >= j->files_total))
            err = DOPA_EPROTO;
        else
            *out = *j;
        proto_reply_clear(&reply);
    }
    return err;
}

int dopa_job_get(dopa_manager *m, const dopa_id *id, dopa_job_info *out)
{
    return get_job(m, PROTO_GET, id, 0, 0, out);
}

int dopa_job_wait(dopa_manager *m, const dopa_id *id, uint64_t seen, int timeout_ms,
                  dopa_job_info *out)
{
    return get_job(m, PROTO_WAIT, id, seen, timeout_ms, out);
}

int dopa_job_list(dopa_manager *m, int all_users, dopa_job_info **out, size_t *n)
{
    if (out == NULL || n == NULL)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    dopa_job_info *all = NULL;
    size_t count = 0;
    int err = DOPA_OK, restarts = 0;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = PROTO_LIST;
    req->all_users = all_users != 0;
    for (;;) {
        proto_reply reply;
        err = call(m, req, &reply, CALL_TIMEOUT_MS);
        if (err == DOPA_EINVAL && req->has_cursor && restarts++ < 3) {
            /* The job under the cursor went away: list again from the start. */
            count = 0;
            req->has_cursor = 0;
            continue;
        }
        if (err != DOPA_OK)
            break;
        if (count + reply.n_jobs > 10u * 1000 * 1000) {
            proto_reply_clear(&reply);
            err = DOPA_EPROTO; /* more than dopad can hold: it is not dopad */
            break;
        }
        if (reply.n_jobs > 0) {
            dopa_job_info *grown = realloc(all, (count + reply.n_jobs) * sizeof *grown);
            if (grown == NULL) {
                proto_reply_clear(&reply);
                err = DOPA_ENOMEM;
                break;
            }
            all = grown;
            memcpy(all + count, reply.jobs, reply.n_jobs * sizeof *all);
            count += reply.n_jobs;
            req->cursor = reply.jobs[reply.n_jobs - 1].id;
            req->has_cursor = 1;
        }
        int more = reply.more != 0 && reply.n_jobs > 0;
        proto_reply_clear(&reply);
        if (!more)
            break;
    }
    free(req);
    if (err != DOPA_OK) {
        free(all);
        return err;
    }
    *out = all;
    *n = count;
    return DOPA_OK;
}

int dopa_job_add_file(dopa_manager *m, const dopa_id *id, const char *remote_url,
                      const char *local_name, const dopa_file_options *opts)
{
    if (id == NULL || remote_url == NULL || local_name == NULL)
        return DOPA_EINVAL;
    if (opts != NULL && (opts->n_ranges > DOPA_MAX_RANGES || (opts->n_ranges && !opts->ranges) ||
                         (opts->manifest != NULL && opts->manifest_len == 0)))
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = PROTO_ADD_FILE;
    req->id = *id;
    int err = copy_string(req->url, sizeof req->url, remote_url);
    if (err == DOPA_OK)
        err = copy_string(req->path, sizeof req->path, local_name);
    if (err == DOPA_OK && opts != NULL) {
        if (opts->n_ranges > 0)
            memcpy(req->ranges, opts->ranges, opts->n_ranges * sizeof *req->ranges);
        req->n_ranges = opts->n_ranges;
        if (opts->expected_sha256 != NULL) {
            memcpy(req->sha256, opts->expected_sha256, 32);
            req->has_sha256 = 1;
        }
        req->manifest = opts->manifest;
        req->manifest_len = opts->manifest_len;
    }
    if (err == DOPA_OK)
        err = call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK)
        proto_reply_clear(&reply);
    return err;
}

int dopa_job_list_files(dopa_manager *m, const dopa_id *id, dopa_file_info **out, size_t *n)
{
    if (id == NULL || out == NULL || n == NULL)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    dopa_file_info *all = NULL;
    size_t count = 0;
    int err = DOPA_OK;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = PROTO_LIST_FILES;
    req->id = *id;
    for (;;) {
        proto_reply reply;
        req->start = count;
        err = call(m, req, &reply, CALL_TIMEOUT_MS);
        if (err != DOPA_OK)
            break;
        if (count + reply.n_files > DOPA_MAX_FILES) {
            proto_reply_clear(&reply);
            err = DOPA_EPROTO;
            break;
        }
        if (reply.n_files > 0) {
            dopa_file_info *grown = realloc(all, (count + reply.n_files) * sizeof *grown);
            if (grown == NULL) {
                proto_reply_clear(&reply);
                err = DOPA_ENOMEM;
                break;
            }
            all = grown;
            memcpy(all + count, reply.files, reply.n_files * sizeof *all);
            count += reply.n_files;
        }
        int more = reply.more != 0 && reply.n_files > 0;
        proto_reply_clear(&reply);
        if (!more)
            break;
    }
    free(req);
    if (err != DOPA_OK) {
        free(all);
        return err;
    }
    *out = all;
    *n = count;
    return DOPA_OK;
}

int dopa_job_resume(dopa_manager *m, const dopa_id *id)
{
    return simple(m, PROTO_RESUME, id);
}

int dopa_job_suspend(dopa_manager *m, const dopa_id *id)
{
    return simple(m, PROTO_SUSPEND, id);
}

int dopa_job_cancel(dopa_manager *m, const dopa_id *id)
{
    return simple(m, PROTO_CANCEL, id);
}

int dopa_job_take_ownership(dopa_manager *m, const dopa_id *id)
{
    return simple(m, PROTO_TAKE_OWNERSHIP, id);
}

int dopa_job_complete(dopa_manager *m, const dopa_id *id, int *partial)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = PROTO_COMPLETE;
    req->id = *id;
    int err = call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK) {
        if (partial != NULL)
            *partial = reply.partial != 0;
        proto_reply_clear(&reply);
    }
    return err;
}

/* A setter: op with one of the request's fields filled by fill(). */
static int set(dopa_manager *m, int op, const dopa_id *id, uint64_t number, const char *text,
               const char *text2)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = op;
    req->id = *id;
    int err = DOPA_OK;
    switch (op) {
    case PROTO_SET_PRIORITY:
        req->priority = number;
        break;
    case PROTO_SET_RETRY_DELAY:
    case PROTO_SET_NO_PROGRESS:
        req->seconds = number;
        break;
    case PROTO_SET_NAME:
        err = copy_string(req->name, sizeof req->name, text);
        break;
    case PROTO_SET_DESCRIPTION:
        err = copy_string(req->description, sizeof req->description, text);
        break;
    case PROTO_SET_PROXY:
        req->proxy_usage = number;
        err = copy_string(req->proxy, sizeof req->proxy, text);
        if (err == DOPA_OK)
            err = copy_string(req->bypass, sizeof req->bypass, text2);
        break;
    default:
        err = DOPA_EINVAL;
    }
    if (err == DOPA_OK)
        err = call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK)
        proto_reply_clear(&reply);
    return err;
}

int dopa_job_set_priority(dopa_manager *m, const dopa_id *id, int priority)
{
    if (priority < 0)
        return DOPA_EINVAL;
    return set(m, PROTO_SET_PRIORITY, id, (uint64_t)priority, NULL, NULL);
}

int dopa_job_set_display_name(dopa_manager *m, const dopa_id *id, const char *name)
{
    return set(m, PROTO_SET_NAME, id, 0, name, NULL);
}

int dopa_job_set_description(dopa_manager *m, const dopa_id *id, const char *description)
{
    return set(m, PROTO_SET_DESCRIPTION, id, 0, description, NULL);
}

int dopa_job_set_minimum_retry_delay(dopa_manager *m, const dopa_id *id, uint32_t seconds)
{
    return set(m, PROTO_SET_RETRY_DELAY, id, seconds, NULL, NULL);
}

int dopa_job_set_no_progress_timeout(dopa_manager *m, const dopa_id *id, uint32_t seconds)
{
    return set(m, PROTO_SET_NO_PROGRESS, id, seconds, NULL, NULL);
}

int dopa_job_set_proxy(dopa_manager *m, const dopa_id *id, int usage, const char *proxy,
                       const char *bypass)
{
    if (usage < 0)
        return DOPA_EINVAL;
    return set(m, PROTO_SET_PROXY, id, (uint64_t)usage, proxy, bypass);
}

int dopa_job_get_proxy(dopa_manager *m, const dopa_id *id, int *usage, char *proxy,
                       size_t proxy_len, char *bypass, size_t bypass_len)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = calloc(1, sizeof *req);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    req->op = PROTO_GET_PROXY;
    req->id = *id;
    int err = call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK) {
        if (usage != NULL)
            *usage = (int)reply.proxy_usage;
        if (proxy != NULL && proxy_len > 0)
            snprintf(proxy, proxy_len, "%s", reply.proxy);
        if (bypass != NULL && bypass_len > 0)
            snprintf(bypass, bypass_len, "%s", reply.bypass);
        proto_reply_clear(&reply);
    }
    return err;
}

/* ------------------------------------------------------------------ */
/* Notifications and validation                                       */

static int send_request(dopa_manager *m, proto_request *req)
{
    proto_reply reply;
    int err = call(m, req, &reply, CALL_TIMEOUT_MS);
    if (err == DOPA_OK)
        proto_reply_clear(&reply);
    return err;
}

static proto_request *new_request(int op, const dopa_id *id)
{
    proto_request *req = calloc(1, sizeof *req);
    if (req != NULL) {
        req->op = op;
        if (id != NULL)
            req->id = *id;
    }
    return req;
}

int dopa_job_set_notify_flags(dopa_manager *m, const dopa_id *id, uint32_t flags)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = new_request(PROTO_SET_NOTIFY_FLAGS, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->flags = flags;
    int err = send_request(m, req);
    free(req);
    return err;
}

int dopa_job_set_notify_cmdline(dopa_manager *m, const dopa_id *id, const char *const *argv)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = new_request(PROTO_SET_NOTIFY_CMDLINE, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    int err = DOPA_OK;
    for (size_t i = 0; argv != NULL && argv[i] != NULL && err == DOPA_OK; i++) {
        if (i == PROTO_MAX_ARGS)
            err = DOPA_EINVAL;
        else
            err = copy_string(req->args[i], sizeof req->args[i], argv[i]);
        req->n_args = i + 1;
    }
    if (err == DOPA_OK && req->n_args > 0 && req->args[0][0] != '/')
        err = DOPA_EINVAL; /* dopad says so too; no need to ask */
    if (err == DOPA_OK)
        err = send_request(m, req);
    free(req);
    return err;
}

int dopa_job_get_notify(dopa_manager *m, const dopa_id *id, uint32_t *flags, char ***argv)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = new_request(PROTO_GET_NOTIFY, id);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    int err = call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err != DOPA_OK)
        return err;
    if (flags != NULL)
        *flags = (uint32_t)reply.flags;
    if (argv != NULL) {
        *argv = NULL;
        if (reply.n_args > 0) {
            /* The pointers, then the strings, in one block. */
            size_t size = (reply.n_args + 1) * sizeof(char *);
            for (size_t i = 0; i < reply.n_args; i++)
                size += strlen(reply.args[i]) + 1;
            char **out = malloc(size);
            if (out == NULL) {
                err = DOPA_ENOMEM;
            } else {
                char *at = (char *)(out + reply.n_args + 1);
                for (size_t i = 0; i < reply.n_args; i++) {
                    size_t n = strlen(reply.args[i]) + 1;
                    memcpy(at, reply.args[i], n);
                    out[i] = at;
                    at += n;
                }
                out[reply.n_args] = NULL;
                *argv = out;
            }
        }
    }
    proto_reply_clear(&reply);
    return err;
}

int dopa_file_set_validation_state(dopa_manager *m, const dopa_id *id, uint32_t index, int valid)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = new_request(PROTO_SET_VALIDATION, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->start = index;
    req->valid = valid != 0;
    int err = send_request(m, req);
    free(req);
    return err;
}

int dopa_job_set_validation_policy(dopa_manager *m, const dopa_id *id, uint32_t seconds,
                                   int default_valid)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = new_request(PROTO_SET_VALIDATION_POLICY, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->seconds = seconds;
    req->valid = default_valid != 0;
    int err = send_request(m, req);
    free(req);
    return err;
}

/* Tells dopad that this manager takes the job's events (or no longer). */
static int send_registration(dopa_manager *m, int op, const dopa_id *id)
{
    proto_request *req = new_request(op, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    memcpy(req->client, m->client, sizeof req->client);
    int err = send_request(m, req);
    free(req);
    return err;
}

#define UNREGISTER_TIMEOUT_MS 2000

static void unregister_all(dopa_manager *m)
{
    pthread_mutex_lock(&m->lock);
    size_t n = m->n_regs;
    dopa_id *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; ids != NULL && i < n; i++)
        ids[i] = m->regs[i].id;
    m->n_regs = 0;
    pthread_mutex_unlock(&m->lock);
    proto_request *req = new_request(PROTO_UNREGISTER, NULL);
    for (size_t i = 0; req != NULL && ids != NULL && i < n; i++) {
        proto_reply reply;
        req->id = ids[i];
        memcpy(req->client, m->client, sizeof req->client);
        int err = call(m, req, &reply, UNREGISTER_TIMEOUT_MS);
        if (err == DOPA_OK)
            proto_reply_clear(&reply);
        else if (err != DOPA_ENOTFOUND)
            break; /* dopad is not there: it forgets us by itself */
    }
    free(req);
    free(ids);
}

/* After dopad restarted (it no longer knows us): every job again. Jobs it
 * no longer has are dropped. Returns how many are registered. */
static size_t register_again(dopa_manager *m)
{
    size_t registered = 0;
    pthread_mutex_lock(&m->lock);
    size_t n = m->n_regs;
    dopa_id *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; ids != NULL && i < n; i++)
        ids[i] = m->regs[i].id;
    pthread_mutex_unlock(&m->lock);
    if (ids == NULL)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int err = send_registration(m, PROTO_REGISTER, &ids[i]);
        registered += err == DOPA_OK;
        if (err != DOPA_ENOTFOUND)
            continue;
        pthread_mutex_lock(&m->lock);
        for (size_t k = 0; k < m->n_regs; k++) {
            if (memcmp(m->regs[k].id.bytes, ids[i].bytes, 16) == 0) {
                m->regs[k] = m->regs[--m->n_regs];
                break;
            }
        }
        pthread_mutex_unlock(&m->lock);
    }
    free(ids);
    return registered;
}

/* Runs the callback for one event: 1 when it was handled, 0 when not, -1
 * when the job has no callbacks here (any more): then it is not answered,
 * and dopad gives it back when the unregistration arrives. */
static int deliver(dopa_manager *m, const proto_event *ev)
{
    dopa_callbacks cb = {0};
    int found = 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_regs && !found; i++) {
        if (memcmp(m->regs[i].id.bytes, ev->job.bytes, 16) == 0) {
            cb = m->regs[i].cb;
            found = 1;
        }
    }
    pthread_mutex_unlock(&m->lock);
    if (!found)
        return -1;
    switch (ev->kind) {
    case PROTO_EVENT_JOB_TRANSFERRED:
        return cb.job_transferred == NULL || cb.job_transferred(cb.ctx, m, &ev->job) == 0;
    case PROTO_EVENT_JOB_ERROR:
        return cb.job_error == NULL || cb.job_error(cb.ctx, m, &ev->job) == 0;
    case PROTO_EVENT_JOB_MODIFICATION:
        return cb.job_modification == NULL || cb.job_modification(cb.ctx, m, &ev->job) == 0;
    case PROTO_EVENT_FILE_TRANSFERRED: {
        if (cb.file_transferred == NULL)
            return 1;
        proto_request *req = new_request(PROTO_LIST_FILES, &ev->job);
        proto_reply reply;
        if (req == NULL)
            return 0;
        req->start = (uint64_t)ev->file;
        int err = call(m, req, &reply, CALL_TIMEOUT_MS);
        free(req);
        if (err != DOPA_OK)
            return 0;
        int ok = 0;
        if (reply.n_files > 0)
            ok = cb.file_transferred(cb.ctx, m, &ev->job, (uint32_t)ev->file, &reply.files[0]) == 0;
        proto_reply_clear(&reply);
        return ok;
    }
    default:
        return 0;
    }
}

/* Waits a while unless the manager is being closed; 1 when it is. */
static int pause_unless_stopping(dopa_manager *m, int ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&m->lock);
    while (!m->stopping && pthread_cond_timedwait(&m->wake, &m->lock, &until) != ETIMEDOUT)
        ;
    int stopping = m->stopping;
    pthread_mutex_unlock(&m->lock);
    return stopping;
}

static int stopping(dopa_manager *m)
{
    pthread_mutex_lock(&m->lock);
    int s = m->stopping;
    pthread_mutex_unlock(&m->lock);
    return s;
}

static void *events_main(void *arg)
{
    dopa_manager *m = arg;
    proto_request *req = new_request(PROTO_EVENTS, NULL);
    proto_request *done = new_request(PROTO_EVENT_DONE, NULL);
    if (req == NULL || done == NULL) {
        free(req);
        free(done);
        return NULL;
    }
    memcpy(req->client, m->client, sizeof req->client);
    memcpy(done->client, m->client, sizeof done->client);
    req->timeout_ms = EVENTS_POLL_MS;
    for (;;) {
        /* Nothing registered: nothing to poll for. */
        pthread_mutex_lock(&m->lock);
        while (m->n_regs == 0 && !m->stopping)
            pthread_cond_wait(&m->wake, &m->lock);
        int stop = m->stopping;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            break;
        proto_reply reply;
        int err = call(m, req, &reply, EVENTS_POLL_MS + CALL_TIMEOUT_MS);
        if (err == DOPA_ENOTFOUND) {
            /* dopad restarted, or forgot us. If nothing can be registered
             * again (jobs gone, a limit), not at once once more. */
            if (register_again(m) == 0 && pause_unless_stopping(m, RETRY_MS))
                break;
            continue;
        }
        if (err != DOPA_OK) {
            /* dopad is down, or went during the poll: the next call waits
             * for it again (and replaces a dialer that gave up), and once
             * back dopad answers ENOTFOUND, so the jobs are registered
             * again above. */
            if (pause_unless_stopping(m, RETRY_MS))
                break;
            continue;
        }
        /* One at a time, each answered before the next poll: dopad sends
         * what is unanswered again with every poll. */
        for (size_t i = 0; i < reply.n_events && !stopping(m); i++) {
            int handled = deliver(m, &reply.events[i]);
            if (handled < 0)
                continue;
            done->event = reply.events[i].id;
            done->ok = (uint64_t)handled;
            send_request(m, done);
        }
        proto_reply_clear(&reply);
    }
    free(req);
    free(done);
    if (m->free_on_exit)
        free_manager(m);
    return NULL;
}

/* The registration of a job here (n_regs when none). Under m->lock. */
static size_t registration_of(const dopa_manager *m, const dopa_id *id)
{
    size_t i = 0;
    while (i < m->n_regs && memcmp(m->regs[i].id.bytes, id->bytes, 16) != 0)
        i++;
    return i;
}

int dopa_job_set_callbacks(dopa_manager *m, const dopa_id *id, const dopa_callbacks *callbacks)
{
    if (m == NULL || id == NULL)
        return DOPA_EINVAL;
    /* Known here before dopad is told (an event may come at once), and
     * forgotten here before dopad is told (an event then is not answered,
     * and dopad takes it back). */
    pthread_mutex_lock(&m->lock);
    size_t i = registration_of(m, id);
    int known = i < m->n_regs;
    if (callbacks == NULL) {
        if (known)
            m->regs[i] = m->regs[--m->n_regs];
        pthread_mutex_unlock(&m->lock);
        return send_registration(m, PROTO_UNREGISTER, id);
    }
    int err = DOPA_OK;
    dopa_callbacks before = known ? m->regs[i].cb : (dopa_callbacks){0};
    if (!known) {
        if (m->n_regs == m->cap_regs) {
            size_t cap = m->cap_regs ? 2 * m->cap_regs : 8;
            registration *grown = realloc(m->regs, cap * sizeof *grown);
            if (grown == NULL) {
                pthread_mutex_unlock(&m->lock);
                return DOPA_ENOMEM;
            }
            m->regs = grown;
            m->cap_regs = cap;
        }
        m->n_regs++;
    }
    m->regs[i].id = *id;
    m->regs[i].cb = *callbacks;
    pthread_mutex_unlock(&m->lock);
    err = send_registration(m, PROTO_REGISTER, id);
    pthread_mutex_lock(&m->lock);
    i = registration_of(m, id);
    if (err != DOPA_OK && i < m->n_regs) {
        if (known)
            m->regs[i].cb = before;
        else
            m->regs[i] = m->regs[--m->n_regs];
    }
    if (err == DOPA_OK && !m->has_thread && !m->stopping) {
        if (pthread_create(&m->thread, NULL, events_main, m) != 0)
            err = DOPA_ENOMEM;
        else
            m->has_thread = 1;
    }
    pthread_cond_broadcast(&m->wake); /* the thread may wait for a first job */
    pthread_mutex_unlock(&m->lock);
    return err;
}

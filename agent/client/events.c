/*
 * libdopa's callbacks (dopa_job_set_callbacks): the registrations of a
 * manager, and the thread that polls dopad for their events and runs the
 * callbacks one at a time. It starts with the first registration and ends
 * in dopa_disconnect (or, disconnected from a callback, by itself).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"

#define EVENTS_POLL_MS 25000 /* how long one poll for events waits in dopad */
#define RETRY_MS       1000  /* after dopad could not be reached */

/* Tells dopad that this manager takes the job's events (or no longer). */
static int send_registration(dopa_manager *m, int op, const dopa_id *id)
{
    proto_request *req = client_request_new(op, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    memcpy(req->client, m->client, sizeof req->client);
    int err = client_send(m, req);
    free(req);
    return err;
}

#define UNREGISTER_TIMEOUT_MS 2000

void client_unregister_all(dopa_manager *m)
{
    pthread_mutex_lock(&m->lock);
    size_t n = m->n_regs;
    dopa_id *ids = malloc((n ? n : 1) * sizeof *ids);
    for (size_t i = 0; ids != NULL && i < n; i++)
        ids[i] = m->regs[i].id;
    m->n_regs = 0;
    pthread_mutex_unlock(&m->lock);
    proto_request *req = client_request_new(PROTO_UNREGISTER, NULL);
    for (size_t i = 0; req != NULL && ids != NULL && i < n; i++) {
        proto_reply reply;
        req->id = ids[i];
        memcpy(req->client, m->client, sizeof req->client);
        int err = client_call(m, req, &reply, UNREGISTER_TIMEOUT_MS);
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
        proto_request *req = client_request_new(PROTO_LIST_FILES, &ev->job);
        proto_reply reply;
        if (req == NULL)
            return 0;
        req->start = (uint64_t)ev->file;
        int err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
    proto_request *req = client_request_new(PROTO_EVENTS, NULL);
    proto_request *done = client_request_new(PROTO_EVENT_DONE, NULL);
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
        int err = client_call(m, req, &reply, EVENTS_POLL_MS + CALL_TIMEOUT_MS);
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
            client_send(m, done);
        }
        proto_reply_clear(&reply);
    }
    free(req);
    free(done);
    if (m->free_on_exit)
        client_manager_free(m);
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
    dopa_callbacks given = {0};
    if (m == NULL || id == NULL ||
        (callbacks != NULL &&
         client_struct_in(&given, sizeof given, callbacks, CLIENT_CALLBACKS_SIZE_1) != DOPA_OK))
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
    m->regs[i].cb = given;
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

/*
 * Notifications: the engine's side of the callback module. Events of jobs
 * go to the notification center (callback.h), which decides when each is
 * delivered; here they are stored until delivered, handed to the client
 * registered for the job, or turned into the job's command line.
 *
 * A client is a libdopa manager with a random token. It registers for jobs
 * (PROTO_REGISTER), long-polls for its events (PROTO_EVENTS) and answers
 * each (PROTO_EVENT_DONE). Until it answers, an event stays held by the
 * client and is sent again with every poll, so a reply lost on the way is
 * not an event lost. A client that has not polled for CLIENT_EXPIRY_MS is
 * forgotten and its events go back to the center.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"

_Static_assert((int)CB_JOB_TRANSFERRED == (int)PROTO_EVENT_JOB_TRANSFERRED &&
                   (int)CB_JOB_ERROR == (int)PROTO_EVENT_JOB_ERROR &&
                   (int)CB_JOB_MODIFICATION == (int)PROTO_EVENT_JOB_MODIFICATION &&
                   (int)CB_FILE_TRANSFERRED == (int)PROTO_EVENT_FILE_TRANSFERRED,
               "event kinds go on the wire as they are");

#define CLIENT_EXPIRY_MS     60000
#define MAX_CLIENTS_PER_USER 16
#define MAX_CLIENTS          1024
#define MAX_PARKED           32 /* of the control server's 128 contexts */
#define MAX_PARKED_PER_USER  8
#define RESTORE_GRACE_MS     10000 /* after a restart, for clients to register again */
#define MAX_EVENTS_WAIT_MS   30000

/* ------------------------------------------------------------------ */
/* The center's view of the engine                                    */

static int64_t owner_now(void *ctx)
{
    return engine_mono(ctx);
}

static agent_job *job_of(agent_engine *e, const cb_event *ev)
{
    dopa_id id;
    memcpy(id.bytes, ev->job, 16);
    agent_job *j = engine_find(e, &id);
    return j != NULL && j->purge_at == 0 ? j : NULL;
}

static void answer_parked(agent_engine *e, engine_client *c);

static void drop_held(engine_client *c, uint64_t id)
{
    for (size_t i = 0; i < c->n_held; i++) {
        if (c->held[i].id == id) {
            memmove(&c->held[i], &c->held[i + 1], (c->n_held - i - 1) * sizeof c->held[0]);
            c->n_held--;
            return;
        }
    }
}

static int owner_offer(void *ctx, const cb_event *ev)
{
    agent_engine *e = ctx;
    agent_job *j = job_of(e, ev);
    if (j == NULL || j->client == NULL)
        return 0;
    engine_client *c = j->client;
    drop_held(c, ev->id); /* offered again after a timeout: once is enough */
    if (c->n_held == CLIENT_HELD_MAX)
        return -1; /* (a client of root's may hold several users' events) */
    c->held[c->n_held++] = *ev;
    answer_parked(e, c);
    return 1;
}

static size_t owner_command(void *ctx, const cb_event *ev, const char **argv, size_t max)
{
    agent_job *j = job_of(ctx, ev);
    if (j == NULL || j->notify_cmd_len == 0 || max == 0)
        return 0;
    size_t n = 0;
    for (size_t at = 0; at < j->notify_cmd_len && n + 1 < max; n++) {
        argv[n] = j->notify_cmd + at;
        at += strlen(argv[n]) + 1;
    }
    argv[n] = NULL;
    return n;
}

static void owner_command_failed(void *ctx, const cb_event *ev, const char *why)
{
    (void)ctx;
    dopa_id id;
    char text[37];
    memcpy(id.bytes, ev->job, 16);
    dopa_id_format(&id, text);
    agent_log("warning", "job %s: the notify command for %s: %s", text, cb_kind_name(ev->kind),
              why);
}

static void owner_finished(void *ctx, const cb_event *ev)
{
    agent_engine *e = ctx;
    for (engine_client *c = e->clients; c != NULL; c = c->next)
        drop_held(c, ev->id);
    if (ev->kind != CB_JOB_MODIFICATION && store_delete_notification(e->db, ev->id) != DOPA_OK)
        agent_log("error", "forgetting a notification: %s", store_error(e->db));
}

/* ------------------------------------------------------------------ */
/* Events                                                             */

void engine_notify(agent_engine *e, agent_job *j, int kind, int32_t file)
{
    if (e->cb == NULL || j->purge_at != 0 || !cb_wanted(j->notify_flags, kind) ||
        cb_has(e->cb, j->id.bytes, kind, file))
        return;
    cb_event ev = {.id = e->next_event_id++, .user = j->owner, .kind = kind, .file = file};
    memcpy(ev.job, j->id.bytes, 16);
    /* JobModification is news only while dopad runs; the rest must reach
     * someone even across a restart. */
    if (kind != CB_JOB_MODIFICATION &&
        store_add_notification(e->db, ev.id, &j->id, kind, file) != DOPA_OK)
        agent_log("error", "storing a notification: %s", store_error(e->db));
    if (cb_post(e->cb, &ev) < 0)
        agent_log("error", "out of memory for a notification");
}

void notify_cancel(agent_engine *e, agent_job *j, int kind, int32_t file)
{
    if (e->cb != NULL)
        cb_cancel(e->cb, j->id.bytes, kind, file);
}

struct restore {
    agent_engine *e;
    size_t dropped;
    int err; /* out of memory: the rest stays stored for the next start */
};

static void restore_one(void *ctx, uint64_t id, const dopa_id *job, int kind, int32_t file)
{
    struct restore *r = ctx;
    agent_engine *e = r->e;
    agent_job *j = engine_find(e, job);
    if (id >= e->next_event_id)
        e->next_event_id = id + 1;
    cb_event ev = {.id = id, .kind = kind, .file = file, .user = j != NULL ? j->owner : 0};
    memcpy(ev.job, job->bytes, 16);
    if (j == NULL || (file >= 0 && (size_t)file >= j->n_files)) {
        r->dropped++;
        store_delete_notification(e->db, id);
    } else if (r->err == DOPA_OK && cb_restore(e->cb, &ev, RESTORE_GRACE_MS) != 0) {
        r->err = DOPA_ENOMEM;
    }
}

int notify_open(agent_engine *e, validate_error *why)
{
    cb_owner owner = {.ctx = e,
                      .now_ms = owner_now,
                      .offer = owner_offer,
                      .command = owner_command,
                      .finished = owner_finished,
                      .command_failed = owner_command_failed};
    if (cb_center_new(&e->cfg.notify, &owner, &e->cb) != 0)
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    e->next_event_id = 1;
    struct restore r = {.e = e};
    int err = store_load_notifications(e->db, restore_one, &r, why);
    if (r.dropped > 0)
        agent_log("warning", "%zu stored notifications had no job and were dropped", r.dropped);
    if (err == DOPA_OK && r.err != DOPA_OK) {
        err = validate_error_set(why, r.err, "out of memory for the stored notifications");
    }
    return err;
}

void notify_close(agent_engine *e)
{
    while (e->clients != NULL) {
        engine_client *c = e->clients;
        e->clients = c->next;
        free(c);
    }
    cb_center_free(e->cb);
    e->cb = NULL;
}

/* ------------------------------------------------------------------ */
/* Clients                                                            */

static engine_client *find_client(agent_engine *e, const uint8_t token[16], uint32_t uid)
{
    for (engine_client *c = e->clients; c != NULL; c = c->next)
        if (memcmp(c->token, token, 16) == 0 && c->uid == uid)
            return c;
    return NULL;
}

/* Gives back to the center what a client holds of one job (or of all
 * its jobs when job is NULL): someone else, or the command, gets them. */
static void give_back(agent_engine *e, engine_client *c, const dopa_id *job)
{
    size_t kept = 0;
    for (size_t i = 0; i < c->n_held; i++) {
        cb_event ev = c->held[i];
        if (job != NULL && memcmp(ev.job, job->bytes, 16) != 0) {
            c->held[kept++] = ev;
            continue;
        }
        cb_requeue(e->cb, ev.id);
    }
    c->n_held = kept;
}

static void reply_events(engine_client *c, proto_reply *reply)
{
    size_t n = c->n_held < PROTO_EVENT_PAGE ? c->n_held : PROTO_EVENT_PAGE;
    for (size_t i = 0; i < n; i++) {
        const cb_event *ev = &c->held[i];
        reply->events[i] =
            (proto_event){.id = ev->id, .kind = (uint64_t)ev->kind, .file = ev->file};
        memcpy(reply->events[i].job.bytes, ev->job, 16);
    }
    reply->n_events = n;
}

static void answer_parked(agent_engine *e, engine_client *c)
{
    if (c->parked == NULL)
        return;
    proto_reply reply;
    memset(&reply, 0, sizeof reply);
    reply.op = PROTO_EVENTS;
    reply_events(c, &reply);
    engine_call *call = c->parked;
    c->parked = NULL;
    c->last_seen = engine_mono(e);
    c->reply(call, &reply);
}

static void forget_client(agent_engine *e, engine_client *c)
{
    for (size_t i = 0; i < e->n_jobs; i++)
        if (e->jobs[i]->client == c)
            e->jobs[i]->client = NULL;
    give_back(e, c, NULL);
    for (engine_client **p = &e->clients; *p != NULL; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    free(c);
}

int notify_drop_call(agent_engine *e, engine_call *call)
{
    for (engine_client *c = e->clients; c != NULL; c = c->next) {
        if (c->parked == call) {
            c->parked = NULL;
            c->last_seen = engine_mono(e);
            return 1;
        }
    }
    return 0;
}

void notify_kick(agent_engine *e, agent_job *j)
{
    if (e->cb != NULL)
        cb_kick(e->cb, j->id.bytes);
}

void notify_forget_job(agent_engine *e, agent_job *j)
{
    if (j->client != NULL)
        give_back(e, j->client, &j->id);
    j->client = NULL;
    if (e->cb != NULL)
        cb_forget_job(e->cb, j->id.bytes);
}

/* How long a client may stay silent: a minute, or while it holds events
 * (a callback may take long) as long as an offer may take. */
static int64_t expiry(const agent_engine *e, const engine_client *c)
{
    int64_t offer = e->cfg.notify.offer_timeout_ms > 0 ? e->cfg.notify.offer_timeout_ms : 300000;
    return c->n_held > 0 && offer > CLIENT_EXPIRY_MS ? offer : CLIENT_EXPIRY_MS;
}

int64_t notify_step(agent_engine *e)
{
    if (e->cb == NULL)
        return -1;
    int64_t now = engine_mono(e), wake = -1;
    engine_client *c = e->clients;
    while (c != NULL) {
        engine_client *next = c->next;
        if (c->parked != NULL && now >= c->parked_until) {
            answer_parked(e, c); /* nothing came: the client asks again */
        } else if (c->parked == NULL && now - c->last_seen >= expiry(e, c)) {
            forget_client(e, c); /* gone without a word */
            c = next;
            continue;
        }
        int64_t due = c->parked != NULL ? c->parked_until : c->last_seen + expiry(e, c);
        if (wake < 0 || due - now < wake)
            wake = due - now;
        c = next;
    }
    int64_t cb = cb_step(e->cb);
    if (cb >= 0 && (wake < 0 || cb < wake))
        wake = cb;
    return wake;
}

static int refuse(proto_reply *reply, int status, const char *message)
{
    reply->status = (uint64_t)status;
    snprintf(reply->message, sizeof reply->message, "%s", message);
    return 0;
}

static engine_client *new_client(agent_engine *e, const uint8_t token[16], uint32_t uid,
                                 proto_reply *reply)
{
    size_t mine = 0, all = 0;
    for (engine_client *c = e->clients; c != NULL; c = c->next) {
        mine += c->uid == uid;
        all++;
    }
    if (mine >= MAX_CLIENTS_PER_USER || all >= MAX_CLIENTS) {
        refuse(reply, DOPA_ELIMIT, "too many clients take notifications");
        return NULL;
    }
    engine_client *c = calloc(1, sizeof *c);
    if (c == NULL) {
        refuse(reply, DOPA_ENOMEM, "out of memory");
        return NULL;
    }
    memcpy(c->token, token, 16);
    c->uid = uid;
    c->next = e->clients;
    e->clients = c;
    return c;
}

/* Parked polls of a user (UINT32_MAX: of everyone). */
static size_t count_parked(const agent_engine *e, uint32_t uid)
{
    size_t n = 0;
    for (const engine_client *c = e->clients; c != NULL; c = c->next)
        n += c->parked != NULL && (uid == UINT32_MAX || c->uid == uid);
    return n;
}

int notify_handle(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply,
                  engine_call *call, engine_reply_fn reply_fn)
{
    engine_client *c = find_client(e, req->client, uid);
    int64_t now = engine_mono(e);
    if (req->op == PROTO_REGISTER || req->op == PROTO_UNREGISTER) {
        agent_job *j = engine_find(e, &req->id);
        if (j == NULL || j->purge_at != 0 || (uid != 0 && j->owner != uid))
            return refuse(reply, DOPA_ENOTFOUND, "no such job");
        if (req->op == PROTO_UNREGISTER) {
            if (c != NULL && j->client == c) {
                give_back(e, c, &j->id);
                j->client = NULL;
            }
            return 0;
        }
        if (c == NULL && (c = new_client(e, req->client, uid, reply)) == NULL)
            return 0;
        c->last_seen = now;
        if (j->client != NULL && j->client != c)
            give_back(e, j->client, &j->id); /* the last to register is told */
        j->client = c;
        cb_kick(e->cb, j->id.bytes); /* what had nobody to go to */
        return 0;
    }
    if (c == NULL)
        return refuse(reply, DOPA_ENOTFOUND, "unknown client: register again");
    c->last_seen = now;
    if (req->op == PROTO_EVENT_DONE) {
        for (size_t i = 0; i < c->n_held; i++) {
            if (c->held[i].id == req->event) {
                drop_held(c, req->event);
                cb_done(e->cb, req->event, req->ok != 0);
                break;
            }
        }
        return 0; /* an answer given twice is no error */
    }
    /* PROTO_EVENTS */
    if (c->parked != NULL)
        answer_parked(e, c); /* a newer poll replaces it */
    if (c->n_held > 0 || req->timeout_ms == 0 || call == NULL) {
        reply_events(c, reply);
        return 0;
    }
    if (count_parked(e, uid) >= MAX_PARKED_PER_USER || count_parked(e, UINT32_MAX) >= MAX_PARKED)
        return refuse(reply, DOPA_ELIMIT, "too many clients wait for events; ask again shortly");
    uint64_t ms = req->timeout_ms > MAX_EVENTS_WAIT_MS ? MAX_EVENTS_WAIT_MS : req->timeout_ms;
    c->parked = call;
    c->reply = reply_fn;
    c->parked_until = now + (int64_t)ms;
    return ENGINE_DEFERRED;
}

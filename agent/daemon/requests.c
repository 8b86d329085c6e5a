/*
 * Control requests: what each op of the protocol does to the jobs, with
 * the BITS rules for who may do it and in which state. Runs on the engine
 * thread; a request either changes the model and the store together or
 * changes nothing.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine_internal.h"

#define MAX_WAITS_PER_USER 4
#define MAX_WAITS          48 /* of the control server's 128 contexts */
#define MAX_WAIT_MS        600000
#define MIN_RETRY_DELAY    1
#define MAX_TIMEOUT        (365u * 24 * 3600)

__attribute__((format(printf, 3, 4))) static int refuse(proto_reply *reply, int status,
                                                        const char *fmt, ...)
{
    reply->status = (uint64_t)status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reply->message, sizeof reply->message, fmt, ap);
    va_end(ap);
    return 0;
}

static int is_final(int state)
{
    return state == DOPA_STATE_ACKNOWLEDGED || state == DOPA_STATE_CANCELLED;
}

/* The job a user may see: its own, or any for root. Others are "not found"
 * so that nobody learns another user's job ids. */
static agent_job *visible(agent_engine *e, uint32_t uid, const dopa_id *id)
{
    agent_job *j = engine_find(e, id);
    if (j == NULL || (uid != 0 && j->owner != uid))
        return NULL;
    return j;
}

static int not_found(proto_reply *reply)
{
    return refuse(reply, DOPA_ENOTFOUND, "no such job");
}

/* A job that may still change (not ACKNOWLEDGED or CANCELLED). */
static agent_job *changeable(agent_engine *e, uint32_t uid, const dopa_id *id, proto_reply *reply)
{
    agent_job *j = visible(e, uid, id);
    if (j == NULL) {
        not_found(reply);
        return NULL;
    }
    if (is_final(j->state)) {
        refuse(reply, DOPA_ESTATE, "the job is %s", dopa_state_name(j->state));
        return NULL;
    }
    return j;
}

/* Records a change of the job; a store failure becomes the reply. */
static int touched(agent_engine *e, agent_job *j, proto_reply *reply)
{
    if (engine_touch(e, j) != DOPA_OK)
        return refuse(reply, DOPA_EINTERNAL, "dopad could not record the change");
    return 0;
}

static int one_job(proto_reply *reply, const agent_job *j)
{
    reply->jobs = malloc(sizeof *reply->jobs);
    if (reply->jobs == NULL)
        return refuse(reply, DOPA_ENOMEM, "out of memory");
    agent_job_info(j, &reply->jobs[0]);
    reply->n_jobs = 1;
    return 0;
}

static int store_failed(agent_engine *e, proto_reply *reply)
{
    agent_log("error", "store: %s", store_error(e->db));
    return refuse(reply, DOPA_EINTERNAL, "dopad could not record the change");
}

static int do_create(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply)
{
    if (req->type != DOPA_JOB_DOWNLOAD)
        return refuse(reply, DOPA_EINVAL, "only download jobs are supported");
    size_t mine = 0;
    for (size_t i = 0; i < e->n_jobs; i++)
        mine += e->jobs[i]->owner == uid && e->jobs[i]->purge_at == 0;
    if (mine >= e->cfg.max_jobs_per_user)
        return refuse(reply, DOPA_ELIMIT, "at most %u jobs per user", e->cfg.max_jobs_per_user);
    agent_job *j = agent_job_new();
    if (j == NULL)
        return refuse(reply, DOPA_ENOMEM, "out of memory");
    randombytes_buf(j->id.bytes, sizeof j->id.bytes);
    j->owner = uid;
    j->file_user = uid;
    j->type = (int)req->type;
    snprintf(j->name, sizeof j->name, "%s", req->name);
    j->created = j->modified = engine_now(e);
    j->touched = engine_mono(e); /* its inactivity counts from now */
    j->seq = e->next_seq;
    j->version = 1;
    if (store_put_job(e->db, j) != DOPA_OK) {
        agent_job_free(j);
        return store_failed(e, reply);
    }
    if (engine_add_job(e, j) != DOPA_OK) {
        store_delete_job(e->db, &j->id);
        agent_job_free(j);
        return refuse(reply, DOPA_ENOMEM, "out of memory");
    }
    reply->id = j->id;
    reply->has_id = 1;
    return 0;
}

static int do_list(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply)
{
    if (req->all_users && uid != 0)
        return refuse(reply, DOPA_EACCESS, "only root may list every user's jobs");
    size_t start = 0;
    if (req->has_cursor) {
        /* The cursor is the last job of a page the caller was shown: a job
         * it may not see is as unknown as one that never was, or the
         * answer would tell that someone's job exists. */
        size_t i = 0;
        while (i < e->n_jobs && memcmp(e->jobs[i]->id.bytes, req->cursor.bytes, 16) != 0)
            i++;
        if (i == e->n_jobs || (uid != 0 && e->jobs[i]->owner != uid))
            return refuse(reply, DOPA_EINVAL, "the listing changed under the cursor; list again");
        start = i + 1;
    }
    reply->jobs = malloc(PROTO_LIST_PAGE * sizeof *reply->jobs);
    if (reply->jobs == NULL)
        return refuse(reply, DOPA_ENOMEM, "out of memory");
    size_t i = start;
    for (; i < e->n_jobs && reply->n_jobs < PROTO_LIST_PAGE; i++) {
        const agent_job *j = e->jobs[i];
        if ((req->all_users || j->owner == uid) && (uid == 0 || j->owner == uid))
            agent_job_info(j, &reply->jobs[reply->n_jobs++]);
    }
    for (; i < e->n_jobs && !reply->more; i++)
        reply->more = (req->all_users || e->jobs[i]->owner == uid);
    return 0;
}

/* Checks a destination path: absolute, clean, and new within the job. */
static int check_destination(const agent_job *j, const char *path, proto_reply *reply)
{
    if (path[0] != '/')
        return refuse(reply, DOPA_EINVAL, "the local name must be an absolute path: %s", path);
    size_t n = strlen(path);
    if (path[n - 1] == '/' || strstr(path, "/../") != NULL || strstr(path, "/./") != NULL ||
        strstr(path, "//") != NULL || (n >= 3 && strcmp(path + n - 3, "/..") == 0) ||
        (n >= 2 && strcmp(path + n - 2, "/.") == 0))
        return refuse(reply, DOPA_EINVAL, "the local name must be a plain path to a file: %s",
                      path);
    for (size_t i = 0; i < j->n_files; i++)
        if (strcmp(j->files[i]->path, path) == 0)
            return refuse(reply, DOPA_EINVAL, "the job already has a file for %s", path);
    return -1;
}

static int check_ranges(const proto_request *req, proto_reply *reply)
{
    validate_error why = {0};
    if (agent_ranges_check(req->ranges, req->n_ranges, &why) != 0)
        return refuse(reply, DOPA_EINVAL,
                      "%s: ranges must be in order, must not overlap, and "
                      "only the last may run to the end",
                      why.text);
    return -1;
}

static int do_add_file(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply)
{
    agent_job *j = changeable(e, uid, &req->id, reply);
    if (j == NULL)
        return 0;
    if (j->n_files >= DOPA_MAX_FILES)
        return refuse(reply, DOPA_ELIMIT, "at most %d files per job", DOPA_MAX_FILES);
    if (strncmp(req->url, "http://", 7) != 0 && strncmp(req->url, "https://", 8) != 0 &&
        strncmp(req->url, "file:///", 8) != 0)
        return refuse(reply, DOPA_EINVAL, "the remote URL must be http://, https:// or file:///");
    /* A local source is read by dopad itself: for a root dopad that would
     * let any user read any file, so file:// is root's alone there. */
    if (strncmp(req->url, "file://", 7) == 0 && geteuid() == 0 && j->file_user != 0)
        return refuse(reply, DOPA_EACCESS, "file:// sources are only for root's jobs");
    if (check_destination(j, req->path, reply) >= 0 || check_ranges(req, reply) >= 0)
        return 0;
    if (req->manifest != NULL && req->n_ranges > 0)
        return refuse(reply, DOPA_EINVAL, "a file with a manifest cannot have ranges");

    agent_file *f = agent_file_new();
    char tmp[DOPA_PATH_MAX + 64];
    validate_error why = {0};
    if (f == NULL)
        return refuse(reply, DOPA_ENOMEM, "out of memory");
    f->job = j;
    f->index = (uint32_t)j->n_files;
    if (req->manifest != NULL) {
        f->manifest_bytes = malloc(req->manifest_len);
        if (f->manifest_bytes == NULL)
            goto fail;
        memcpy(f->manifest_bytes, req->manifest, req->manifest_len);
        f->manifest_len = req->manifest_len;
        validate_error detail = {0};
        int verr = validate_manifest_open(f->manifest_bytes, f->manifest_len, e->keys, e->n_keys,
                                          (uint64_t)(engine_now(e) / 1000), &f->manifest, &detail);
        if (verr != VALIDATE_OK) {
            agent_file_free(f);
            return refuse(reply, DOPA_EMANIFEST, "manifest rejected: %s: %s",
                          validate_strerror(verr), detail.text);
        }
    }
    if (req->has_sha256) {
        memcpy(f->sha256, req->sha256, 32);
        f->has_sha256 = 1;
    }
    if (req->n_ranges > 0) {
        f->ranges = malloc(req->n_ranges * sizeof *f->ranges);
        if (f->ranges == NULL)
            goto fail;
        memcpy(f->ranges, req->ranges, req->n_ranges * sizeof *f->ranges);
        f->n_ranges = req->n_ranges;
    }
    f->url = strdup(req->url);
    f->path = strdup(req->path);
    if (f->url == NULL || f->path == NULL)
        goto fail;
    if (fileops_temp_name(f->path, &j->id, f->index, tmp, sizeof tmp) != 0 ||
        strlen(tmp) > DOPA_PATH_MAX) {
        agent_file_free(f);
        return refuse(reply, DOPA_EINVAL, "the local name is too long");
    }
    f->tmp_path = strdup(tmp);
    if (f->tmp_path == NULL)
        goto fail;
    /* The size is known now when the manifest or finite ranges say it. */
    uint64_t size;
    if (f->manifest != NULL) {
        if (agent_file_set_size(f, f->manifest->file_size) != DOPA_OK)
            goto fail;
    } else if (f->n_ranges > 0 && agent_file_local_size(f, -1, &size) == DOPA_OK) {
        if (agent_file_set_size(f, size) != DOPA_OK) {
            agent_file_free(f);
            return refuse(reply, DOPA_ELIMIT, "the ranges add up to more than a file may hold");
        }
    }
    /* Create the temporary file now, with the owner's rights: a name the
     * owner may not write is refused here, not when the job runs. */
    int fd = -1;
    int ferr = fileops_open_temp(j->file_user, f->tmp_path, 1, &f->ident, &fd, &why);
    if (ferr != 0) {
        agent_file_free(f);
        return refuse(reply, ferr == EACCES || ferr == EPERM ? DOPA_EACCESS : DOPA_EIO, "%s",
                      why.text);
    }
    close(fd);

    agent_file **grown = realloc(j->files, (j->n_files + 1) * sizeof *grown);
    if (grown == NULL) {
        fileops_remove_temp(j->file_user, f->tmp_path, &f->ident, &why);
        goto fail;
    }
    j->files = grown;
    /* The file and the job it changes are recorded in one transaction; if
     * that fails, neither the store nor the job has the file. */
    int was_state = j->state;
    int64_t was_completed = j->completed, was_modified = j->modified;
    uint64_t was_version = j->version;
    j->files[j->n_files++] = f;
    if (j->state == DOPA_STATE_TRANSFERRED) {
        /* A new file: there is work again. */
        j->state = DOPA_STATE_QUEUED;
        j->completed = 0;
    }
    if (store_begin(e->db) != DOPA_OK || store_put_file(e->db, f) != DOPA_OK ||
        engine_touch(e, j) != DOPA_OK || store_commit(e->db) != DOPA_OK) {
        store_rollback(e->db);
        j->n_files--;
        j->state = was_state;
        j->completed = was_completed;
        j->modified = was_modified;
        j->version = was_version;
        fileops_remove_temp(j->file_user, f->tmp_path, &f->ident, &why);
        agent_file_free(f);
        return store_failed(e, reply);
    }
    return 0;
fail:
    agent_file_free(f);
    return refuse(reply, DOPA_ENOMEM, "out of memory");
}

static int do_list_files(agent_engine *e, uint32_t uid, const proto_request *req,
                         proto_reply *reply)
{
    agent_job *j = visible(e, uid, &req->id);
    if (j == NULL)
        return not_found(reply);
    if (req->start > j->n_files)
        return refuse(reply, DOPA_EINVAL, "the job has %zu files", j->n_files);
    size_t n = j->n_files - (size_t)req->start;
    if (n > PROTO_FILE_PAGE)
        n = PROTO_FILE_PAGE;
    reply->files = calloc(n ? n : 1, sizeof *reply->files);
    if (reply->files == NULL)
        return refuse(reply, DOPA_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        agent_file_info(j->files[req->start + i], &reply->files[i]);
    reply->n_files = n;
    reply->more = req->start + n < j->n_files;
    return 0;
}

static int all_transferred(const agent_job *j)
{
    for (size_t i = 0; i < j->n_files; i++)
        if (!j->files[i]->transferred)
            return 0;
    return 1;
}

static int do_resume(agent_engine *e, agent_job *j, proto_reply *reply)
{
    if (j->n_files == 0)
        return refuse(reply, DOPA_ESTATE, "the job has no files");
    if (j->state == DOPA_STATE_QUEUED || j->state == DOPA_STATE_CONNECTING ||
        j->state == DOPA_STATE_TRANSFERRING || j->state == DOPA_STATE_TRANSFERRED)
        return 0; /* already going, or done */
    /* What a store that refuses the change must get back. */
    agent_job was = *j;
    /* A new attempt: the error object described the last one. */
    j->retry_at = 0;
    j->no_progress_since = 0;
    j->has_error = 0;
    if (all_transferred(j)) {
        j->state = DOPA_STATE_TRANSFERRED;
        if (j->completed == 0)
            j->completed = engine_now(e);
    } else {
        j->state = DOPA_STATE_QUEUED;
    }
    if (engine_touch(e, j) != DOPA_OK) {
        j->retry_at = was.retry_at;
        j->no_progress_since = was.no_progress_since;
        j->has_error = was.has_error;
        j->state = was.state;
        j->completed = was.completed;
        j->modified = was.modified;
        j->version = was.version;
        return refuse(reply, DOPA_EINTERNAL, "dopad could not record the change");
    }
    return 0;
}

static int do_cancel(agent_engine *e, agent_job *j, proto_reply *reply)
{
    validate_error why = {0};
    /* Out of the store first: a job that comes back after a restart must
     * still have its files. */
    if (engine_finish_job(e, j, DOPA_STATE_CANCELLED) != DOPA_OK)
        return refuse(reply, DOPA_EINTERNAL, "dopad could not record the change");
    for (size_t i = 0; i < j->n_files; i++) {
        agent_file *f = j->files[i];
        if (!f->completed && fileops_remove_temp(j->file_user, f->tmp_path, &f->ident, &why) != 0)
            agent_log("warning", "cancel: %s", why.text);
    }
    return 0;
}

static int do_complete(agent_engine *e, agent_job *j, proto_reply *reply)
{
    validate_error why = {0};
    int partial = j->state != DOPA_STATE_TRANSFERRED;
    engine_stop_job(e, j);
    /* Make the transferred files visible; one that cannot be moved stops
     * the Complete and leaves the job as it was, so it can be tried again
     * (what was moved stays moved, and moving it again is a no-op). */
    for (size_t i = 0; i < j->n_files; i++) {
        agent_file *f = j->files[i];
        if (f->completed || !f->transferred)
            continue;
        int err = fileops_commit(j->file_user, f->tmp_path, f->path, &f->ident, f->size, &why);
        if (err != 0)
            return refuse(reply, err == EACCES || err == EPERM ? DOPA_EACCESS : DOPA_EIO, "%s",
                          why.text);
        f->completed = 1;
        if (store_put_file(e->db, f) != DOPA_OK)
            agent_log("error", "store: %s", store_error(e->db));
    }
    if (engine_finish_job(e, j, DOPA_STATE_ACKNOWLEDGED) != DOPA_OK)
        return refuse(reply, DOPA_EINTERNAL, "dopad could not record the change");
    for (size_t i = 0; i < j->n_files; i++) {
        agent_file *f = j->files[i];
        if (!f->completed && fileops_remove_temp(j->file_user, f->tmp_path, &f->ident, &why) != 0)
            agent_log("warning", "complete: %s", why.text);
    }
    reply->partial = (uint64_t)partial;
    return 0;
}

/* Whether v is a number of seconds a job may be given; refuses if not. */
static int seconds_ok(uint64_t v, proto_reply *reply)
{
    if (v >= MIN_RETRY_DELAY && v <= MAX_TIMEOUT)
        return 1;
    refuse(reply, DOPA_EINVAL, "seconds must be between %d and %u", MIN_RETRY_DELAY, MAX_TIMEOUT);
    return 0;
}

static int set_seconds(agent_engine *e, agent_job *j, uint32_t *field, uint64_t v,
                       proto_reply *reply)
{
    if (!seconds_ok(v, reply))
        return 0;
    *field = (uint32_t)v;
    return touched(e, j, reply);
}

static int do_set_proxy(agent_engine *e, agent_job *j, const proto_request *req, proto_reply *reply)
{
    if (req->proxy_usage > DOPA_PROXY_OVERRIDE)
        return refuse(reply, DOPA_EINVAL, "unknown proxy usage %llu",
                      (unsigned long long)req->proxy_usage);
    if (req->proxy_usage == DOPA_PROXY_OVERRIDE && req->proxy[0] == '\0')
        return refuse(reply, DOPA_EINVAL, "an override needs a proxy");
    if (req->proxy_usage != DOPA_PROXY_OVERRIDE && (req->proxy[0] || req->bypass[0]))
        return refuse(reply, DOPA_EINVAL, "a proxy and bypass list go with an override only");
    j->proxy_usage = (int)req->proxy_usage;
    snprintf(j->proxy, sizeof j->proxy, "%s", req->proxy);
    snprintf(j->bypass, sizeof j->bypass, "%s", req->bypass);
    /* Running transfers start again with the new settings. */
    if (j->running)
        engine_stop_job(e, j);
    return touched(e, j, reply);
}

/* Waits outstanding for a user (UINT32_MAX: for everyone). */
static int do_set_notify_cmdline(agent_engine *e, agent_job *j, const proto_request *req,
                                 proto_reply *reply)
{
    size_t len = 0;
    for (size_t i = 0; i < req->n_args; i++)
        len += strlen(req->args[i]) + 1;
    char *cmd = NULL;
    if (len > 0) {
        if (req->args[0][0] != '/')
            return refuse(reply, DOPA_EINVAL,
                          "the program must be named by its full path (no shell, no PATH)");
        if ((cmd = malloc(len)) == NULL)
            return refuse(reply, DOPA_ENOMEM, "out of memory");
        size_t at = 0;
        for (size_t i = 0; i < req->n_args; i++) {
            size_t n = strlen(req->args[i]) + 1;
            memcpy(cmd + at, req->args[i], n);
            at += n;
        }
    }
    free(j->notify_cmd);
    j->notify_cmd = cmd;
    j->notify_cmd_len = len;
    if (len > 0)
        notify_kick(e, j);
    return touched(e, j, reply);
}

static int do_get_notify(const agent_job *j, proto_reply *reply)
{
    reply->flags = j->notify_flags;
    for (size_t at = 0; at < j->notify_cmd_len && reply->n_args < PROTO_MAX_ARGS;) {
        snprintf(reply->args[reply->n_args++], sizeof reply->args[0], "%s", j->notify_cmd + at);
        at += strlen(j->notify_cmd + at) + 1;
    }
    return 0;
}

static int do_set_validation(agent_engine *e, agent_job *j, const proto_request *req,
                             proto_reply *reply)
{
    if (req->start >= j->n_files)
        return refuse(reply, DOPA_EINVAL, "the job has no file %llu",
                      (unsigned long long)req->start);
    if (req->valid > 1)
        return refuse(reply, DOPA_EINVAL, "a verdict is valid (1) or invalid (0)");
    validate_error why = {0};
    int err = validation_set(e, j->files[req->start], (int)req->valid, &why);
    return err == DOPA_OK ? 0 : refuse(reply, err, "%s", why.text);
}

static int count_waits(const agent_engine *e, uint32_t uid)
{
    int n = 0;
    for (const engine_wait *w = e->waits; w != NULL; w = w->next)
        n += uid == UINT32_MAX || w->uid == uid;
    return n;
}

static int do_wait(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply,
                   engine_call *call, engine_reply_fn reply_fn)
{
    agent_job *j = visible(e, uid, &req->id);
    if (j == NULL)
        return not_found(reply);
    if (j->version != req->seen || req->timeout_ms == 0 || call == NULL)
        return one_job(reply, j);
    if (count_waits(e, uid) >= MAX_WAITS_PER_USER || count_waits(e, UINT32_MAX) >= MAX_WAITS)
        return refuse(reply, DOPA_ELIMIT, "too many waits at once; ask again shortly");
    engine_wait *w = calloc(1, sizeof *w);
    if (w == NULL)
        return one_job(reply, j);
    w->call = call;
    w->reply = reply_fn;
    w->uid = uid;
    w->id = req->id;
    w->seen = req->seen;
    uint64_t ms = req->timeout_ms > MAX_WAIT_MS ? MAX_WAIT_MS : req->timeout_ms;
    w->deadline = engine_mono(e) + (int64_t)ms;
    w->next = e->waits;
    e->waits = w;
    return ENGINE_DEFERRED;
}

void engine_answer_waits(agent_engine *e, int all)
{
    int64_t now = engine_mono(e);
    engine_wait **p = &e->waits;
    while (*p != NULL) {
        engine_wait *w = *p;
        agent_job *j = visible(e, w->uid, &w->id);
        if (!all && j != NULL && j->version == w->seen && now < w->deadline) {
            p = &w->next;
            continue;
        }
        *p = w->next;
        proto_reply reply = {.op = PROTO_WAIT};
        dopa_job_info info;
        if (j != NULL) {
            agent_job_info(j, &info);
            reply.jobs = &info;
            reply.n_jobs = 1;
        } else {
            refuse(&reply, DOPA_ENOTFOUND, "the job is gone");
        }
        w->reply(w->call, &reply);
        free(w);
    }
}

void engine_drop_call(agent_engine *e, engine_call *call)
{
    if (notify_drop_call(e, call))
        return;
    for (engine_wait **p = &e->waits; *p != NULL; p = &(*p)->next) {
        if ((*p)->call == call) {
            engine_wait *w = *p;
            *p = w->next;
            free(w);
            return;
        }
    }
}

int engine_handle(agent_engine *e, uint32_t uid, const proto_request *req, proto_reply *reply,
                  engine_call *call, engine_reply_fn reply_fn)
{
    memset(reply, 0, sizeof *reply);
    reply->op = req->op;
    agent_job *j;
    switch (req->op) {
    case PROTO_WHOAMI:
        reply->uid = uid;
        snprintf(reply->version, sizeof reply->version, "%s", AGENT_VERSION);
        return 0;
    case PROTO_STATS:
        engine_stats(e, &reply->stats);
        return 0;
    case PROTO_CREATE:
        return do_create(e, uid, req, reply);
    case PROTO_GET:
        j = visible(e, uid, &req->id);
        return j != NULL ? one_job(reply, j) : not_found(reply);
    case PROTO_LIST:
        return do_list(e, uid, req, reply);
    case PROTO_ADD_FILE:
        return do_add_file(e, uid, req, reply);
    case PROTO_LIST_FILES:
        return do_list_files(e, uid, req, reply);
    case PROTO_WAIT:
        return do_wait(e, uid, req, reply, call, reply_fn);
    case PROTO_REGISTER:
    case PROTO_UNREGISTER:
    case PROTO_EVENTS:
    case PROTO_EVENT_DONE:
        return notify_handle(e, uid, req, reply, call, reply_fn);
    case PROTO_GET_NOTIFY:
        j = visible(e, uid, &req->id);
        return j != NULL ? do_get_notify(j, reply) : not_found(reply);
    case PROTO_GET_PROXY:
        j = visible(e, uid, &req->id);
        if (j == NULL)
            return not_found(reply);
        reply->proxy_usage = (uint64_t)j->proxy_usage;
        snprintf(reply->proxy, sizeof reply->proxy, "%s", j->proxy);
        snprintf(reply->bypass, sizeof reply->bypass, "%s", j->bypass);
        return 0;
    default:
        break;
    }
    /* The rest change a job that may still change. */
    j = changeable(e, uid, &req->id, reply);
    if (j == NULL)
        return 0;
    switch (req->op) {
    case PROTO_RESUME:
        return do_resume(e, j, reply);
    case PROTO_SUSPEND:
        if (j->state != DOPA_STATE_SUSPENDED)
            engine_set_state(e, j, DOPA_STATE_SUSPENDED);
        return 0;
    case PROTO_CANCEL:
        return do_cancel(e, j, reply);
    case PROTO_COMPLETE:
        return do_complete(e, j, reply);
    case PROTO_TAKE_OWNERSHIP:
        if (uid != 0)
            return refuse(reply, DOPA_EACCESS, "only root may take ownership of a job");
        j->owner = uid; /* its files stay with the user who made them */
        /* The old owner's client and command line are not root's. */
        notify_forget_job(e, j);
        free(j->notify_cmd);
        j->notify_cmd = NULL;
        j->notify_cmd_len = 0;
        return touched(e, j, reply);
    case PROTO_SET_PRIORITY:
        if (req->priority > DOPA_PRIORITY_LOW)
            return refuse(reply, DOPA_EINVAL, "unknown priority %llu",
                          (unsigned long long)req->priority);
        j->priority = (int)req->priority;
        return touched(e, j, reply);
    case PROTO_SET_NAME:
        snprintf(j->name, sizeof j->name, "%s", req->name);
        return touched(e, j, reply);
    case PROTO_SET_DESCRIPTION:
        snprintf(j->description, sizeof j->description, "%s", req->description);
        return touched(e, j, reply);
    case PROTO_SET_RETRY_DELAY:
        return set_seconds(e, j, &j->retry_delay, req->seconds, reply);
    case PROTO_SET_NO_PROGRESS:
        return set_seconds(e, j, &j->no_progress_timeout, req->seconds, reply);
    case PROTO_SET_PROXY:
        return do_set_proxy(e, j, req, reply);
    case PROTO_SET_NOTIFY_FLAGS:
        if (req->flags & ~(uint64_t)DOPA_NOTIFY_ALL)
            return refuse(reply, DOPA_EINVAL, "unknown notify flags 0x%llx",
                          (unsigned long long)(req->flags & ~(uint64_t)DOPA_NOTIFY_ALL));
        j->notify_flags = (uint32_t)req->flags;
        return touched(e, j, reply);
    case PROTO_SET_NOTIFY_CMDLINE:
        return do_set_notify_cmdline(e, j, req, reply);
    case PROTO_SET_VALIDATION:
        return do_set_validation(e, j, req, reply);
    case PROTO_SET_VALIDATION_POLICY:
        if (req->valid > 1)
            return refuse(reply, DOPA_EINVAL, "the default verdict is valid (1) or invalid (0)");
        if (!seconds_ok(req->seconds, reply))
            return 0;
        j->validation_timeout = (uint32_t)req->seconds;
        j->validation_default_valid = (int)req->valid;
        return touched(e, j, reply);
    default:
        return refuse(reply, DOPA_EPROTO, "unknown op %d", req->op);
    }
}

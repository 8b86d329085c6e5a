/*
 * libdopa's calls (dopa.h): jobs, their files and settings, notifications
 * and validation. Each is one request to dopad (a list, one a page)
 * through client_call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

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
    int err = client_call(m, req, reply, CALL_TIMEOUT_MS);
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
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
    int err = client_call(m, req, &reply, timeout_ms + CALL_TIMEOUT_MS);
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
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
    int err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
    int err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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

int dopa_job_set_notify_flags(dopa_manager *m, const dopa_id *id, uint32_t flags)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_SET_NOTIFY_FLAGS, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->flags = flags;
    int err = client_send(m, req);
    free(req);
    return err;
}

int dopa_job_set_notify_cmdline(dopa_manager *m, const dopa_id *id, const char *const *argv)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_SET_NOTIFY_CMDLINE, id);
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
        err = client_send(m, req);
    free(req);
    return err;
}

int dopa_job_get_notify(dopa_manager *m, const dopa_id *id, uint32_t *flags, char ***argv)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_GET_NOTIFY, id);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    int err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
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
    proto_request *req = client_request_new(PROTO_SET_VALIDATION, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->start = index;
    req->valid = valid != 0;
    int err = client_send(m, req);
    free(req);
    return err;
}

int dopa_job_set_validation_policy(dopa_manager *m, const dopa_id *id, uint32_t seconds,
                                   int default_valid)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_SET_VALIDATION_POLICY, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->seconds = seconds;
    req->valid = default_valid != 0;
    int err = client_send(m, req);
    free(req);
    return err;
}

/*
 * libdopa's calls (dopa.h): jobs, their files and settings, notifications
 * and validation. Each is one request to dopad (a list, one a page)
 * through client_call. What they hand out is one malloc() block, so that
 * one dopa_free() frees it: a job's information, a list with its entries,
 * a notify command line with its strings.
 */
#include <stdalign.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"

/* A request of just an op (and a job id, if not NULL); the caller clears
 * the reply, which is cleared already when this fails before the call. */
static int call_op(dopa_manager *m, int op, const dopa_id *id, proto_reply *reply)
{
    memset(reply, 0, sizeof *reply);
    proto_request *req = client_request_new(op, id);
    if (req == NULL)
        return DOPA_ENOMEM;
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
    dopa_agent_stats none = {0};
    /* A size too small fails before dopad is asked. */
    if (client_struct_out(out, &none, sizeof none, CLIENT_STATS_SIZE_1) != DOPA_OK)
        return DOPA_EINVAL;
    proto_reply reply;
    int err = call_op(m, PROTO_STATS, NULL, &reply);
    if (err == DOPA_OK)
        client_struct_out(out, &reply.stats, sizeof reply.stats, CLIENT_STATS_SIZE_1);
    proto_reply_clear(&reply);
    return err;
}

int dopa_job_create(dopa_manager *m, const char *display_name, int type, dopa_id *out)
{
    if (out == NULL || type != DOPA_JOB_DOWNLOAD)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_CREATE, NULL);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
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

/* dopa_job_get and dopa_job_wait: *out is a new object, NULL on failure. */
static int get_job(dopa_manager *m, int op, const dopa_id *id, uint64_t seen, int timeout_ms,
                   dopa_job_info **out)
{
    if (out != NULL)
        *out = NULL;
    if (id == NULL || out == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(op, id);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
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
        else if ((*out = malloc(sizeof **out)) == NULL)
            err = DOPA_ENOMEM;
        else
            **out = *j;
        proto_reply_clear(&reply);
    }
    return err;
}

int dopa_job_get(dopa_manager *m, const dopa_id *id, dopa_job_info **out)
{
    return get_job(m, PROTO_GET, id, 0, 0, out);
}

int dopa_job_wait(dopa_manager *m, const dopa_id *id, uint64_t seen, int timeout_ms,
                  dopa_job_info **out)
{
    return get_job(m, PROTO_WAIT, id, seen, timeout_ms, out);
}

/* ------------------------------------------------------------------ */
/* Lists                                                              */

/* Items gathered page by page, then handed out as a list. */
typedef struct gathered {
    void *items; /* for free() */
    size_t n;
} gathered;

/* Appends n items of item_size bytes to g. DOPA_ENOMEM leaves it as it
 * was. */
static int gather(gathered *g, const void *items, size_t n, size_t item_size)
{
    if (n > SIZE_MAX / item_size - g->n)
        return DOPA_ENOMEM;
    char *grown = realloc(g->items, (g->n + n) * item_size);
    if (grown == NULL)
        return DOPA_ENOMEM;
    memcpy(grown + g->n * item_size, items, n * item_size);
    g->items = grown;
    g->n += n;
    return DOPA_OK;
}

/* The items of g as dopa_job_list() hands them out: n + 1 pointers (the
 * last NULL) to copies of them, the items aligned for anything, all in one
 * allocation for dopa_free(). Frees g's items either way. With *err not
 * DOPA_OK it makes nothing; out of memory, it sets *err to DOPA_ENOMEM.
 * NULL when it made nothing. */
static void *hand_out(gathered *g, size_t item_size, int *err)
{
    size_t n = g->n, align = alignof(max_align_t);
    size_t head = ((n + 1) * sizeof(void *) + align - 1) / align * align;
    char *block = NULL;
    if (*err == DOPA_OK &&
        (n > (SIZE_MAX - head) / item_size || (block = malloc(head + n * item_size)) == NULL))
        *err = DOPA_ENOMEM;
    if (block != NULL) {
        void **slots = (void **)block;
        if (n > 0)
            memcpy(block + head, g->items, n * item_size);
        for (size_t i = 0; i < n; i++)
            slots[i] = block + head + i * item_size;
        slots[n] = NULL;
    }
    free(g->items);
    *g = (gathered){0};
    return block;
}

/* Gathers the pages of a PROTO_LIST or PROTO_LIST_FILES request, at most
 * `limit` items (more, and it is not dopad), into a list for the caller
 * (hand_out) in *out, of *n items. */
static int list_pages(dopa_manager *m, proto_request *req, size_t limit, void **out, size_t *n)
{
    int is_jobs = req->op == PROTO_LIST, err, restarts = 0;
    size_t item_size = is_jobs ? sizeof(dopa_job_info) : sizeof(dopa_file_info);
    gathered all = {0};
    for (;;) {
        proto_reply reply;
        if (!is_jobs)
            req->start = all.n;
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
        if (err == DOPA_EINVAL && req->has_cursor && restarts++ < 3) {
            /* The job under the cursor went away: list again from the start. */
            all.n = 0;
            req->has_cursor = 0;
            continue;
        }
        if (err != DOPA_OK)
            break;
        size_t got = is_jobs ? reply.n_jobs : reply.n_files;
        const void *items = is_jobs ? (const void *)reply.jobs : (const void *)reply.files;
        if (all.n + got > limit)
            err = DOPA_EPROTO;
        else if (got > 0)
            err = gather(&all, items, got, item_size);
        if (err == DOPA_OK && is_jobs && got > 0) {
            req->cursor = reply.jobs[got - 1].id;
            req->has_cursor = 1;
        }
        int more = err == DOPA_OK && reply.more != 0 && got > 0;
        proto_reply_clear(&reply);
        if (!more)
            break;
    }
    *n = all.n;
    *out = hand_out(&all, item_size, &err);
    if (err != DOPA_OK)
        *n = 0;
    return err;
}

int dopa_job_list(dopa_manager *m, int all_users, dopa_job_info ***out, size_t *n)
{
    if (out != NULL)
        *out = NULL;
    if (out == NULL || n == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_LIST, NULL);
    if (req == NULL)
        return DOPA_ENOMEM;
    req->all_users = all_users != 0;
    void *list;
    /* More jobs than dopad can hold: it is not dopad. */
    int err = list_pages(m, req, 10u * 1000 * 1000, &list, n);
    free(req);
    *out = list;
    return err;
}

int dopa_job_add_file(dopa_manager *m, const dopa_id *id, const char *remote_url,
                      const char *local_name, const dopa_file_options *opts)
{
    dopa_file_options o = {0};
    if (id == NULL || remote_url == NULL || local_name == NULL ||
        (opts != NULL &&
         client_struct_in(&o, sizeof o, opts, CLIENT_FILE_OPTIONS_SIZE_1) != DOPA_OK))
        return DOPA_EINVAL;
    if (o.n_ranges > DOPA_MAX_RANGES || (o.n_ranges && !o.ranges) ||
        (o.manifest != NULL && o.manifest_len == 0))
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_ADD_FILE, id);
    proto_reply reply;
    if (req == NULL)
        return DOPA_ENOMEM;
    int err = copy_string(req->url, sizeof req->url, remote_url);
    if (err == DOPA_OK)
        err = copy_string(req->path, sizeof req->path, local_name);
    if (err == DOPA_OK) {
        if (o.n_ranges > 0)
            memcpy(req->ranges, o.ranges, o.n_ranges * sizeof *req->ranges);
        req->n_ranges = o.n_ranges;
        if (o.expected_sha256 != NULL) {
            memcpy(req->sha256, o.expected_sha256, 32);
            req->has_sha256 = 1;
        }
        req->manifest = o.manifest;
        req->manifest_len = o.manifest_len;
    }
    if (err == DOPA_OK)
        err = client_call(m, req, &reply, CALL_TIMEOUT_MS);
    free(req);
    if (err == DOPA_OK)
        proto_reply_clear(&reply);
    return err;
}

int dopa_job_list_files(dopa_manager *m, const dopa_id *id, dopa_file_info ***out, size_t *n)
{
    if (out != NULL)
        *out = NULL;
    if (id == NULL || out == NULL || n == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(PROTO_LIST_FILES, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    void *list;
    int err = list_pages(m, req, DOPA_MAX_FILES, &list, n);
    free(req);
    *out = list;
    return err;
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
    proto_reply reply;
    int err = call_op(m, PROTO_COMPLETE, id, &reply);
    if (err == DOPA_OK && partial != NULL)
        *partial = reply.partial != 0;
    proto_reply_clear(&reply);
    return err;
}

/* What a setter sends besides its op and the job's id. */
typedef struct set_values {
    uint64_t number, number2;
    const char *text, *text2;
} set_values;

/* A setter: op on job id, with the request's fields for op taken from v. */
static int set(dopa_manager *m, int op, const dopa_id *id, set_values v)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_request *req = client_request_new(op, id);
    if (req == NULL)
        return DOPA_ENOMEM;
    int err = DOPA_OK;
    switch (op) {
    case PROTO_SET_PRIORITY:
        req->priority = v.number;
        break;
    case PROTO_SET_RETRY_DELAY:
    case PROTO_SET_NO_PROGRESS:
        req->seconds = v.number;
        break;
    case PROTO_SET_NAME:
        err = copy_string(req->name, sizeof req->name, v.text);
        break;
    case PROTO_SET_DESCRIPTION:
        err = copy_string(req->description, sizeof req->description, v.text);
        break;
    case PROTO_SET_PROXY:
        req->proxy_usage = v.number;
        err = copy_string(req->proxy, sizeof req->proxy, v.text);
        if (err == DOPA_OK)
            err = copy_string(req->bypass, sizeof req->bypass, v.text2);
        break;
    case PROTO_SET_NOTIFY_FLAGS:
        req->flags = v.number;
        break;
    case PROTO_SET_VALIDATION: /* file number's verdict */
        req->start = v.number;
        req->valid = v.number2;
        break;
    case PROTO_SET_VALIDATION_POLICY: /* seconds, default verdict */
        req->seconds = v.number;
        req->valid = v.number2;
        break;
    default:
        err = DOPA_EINVAL;
    }
    if (err == DOPA_OK)
        err = client_send(m, req);
    free(req);
    return err;
}

int dopa_job_set_priority(dopa_manager *m, const dopa_id *id, int priority)
{
    if (priority < 0)
        return DOPA_EINVAL;
    return set(m, PROTO_SET_PRIORITY, id, (set_values){.number = (uint64_t)priority});
}

int dopa_job_set_display_name(dopa_manager *m, const dopa_id *id, const char *name)
{
    return set(m, PROTO_SET_NAME, id, (set_values){.text = name});
}

int dopa_job_set_description(dopa_manager *m, const dopa_id *id, const char *description)
{
    return set(m, PROTO_SET_DESCRIPTION, id, (set_values){.text = description});
}

int dopa_job_set_minimum_retry_delay(dopa_manager *m, const dopa_id *id, uint32_t seconds)
{
    return set(m, PROTO_SET_RETRY_DELAY, id, (set_values){.number = seconds});
}

int dopa_job_set_no_progress_timeout(dopa_manager *m, const dopa_id *id, uint32_t seconds)
{
    return set(m, PROTO_SET_NO_PROGRESS, id, (set_values){.number = seconds});
}

int dopa_job_set_proxy(dopa_manager *m, const dopa_id *id, int usage, const char *proxy,
                       const char *bypass)
{
    if (usage < 0)
        return DOPA_EINVAL;
    return set(m, PROTO_SET_PROXY, id,
               (set_values){.number = (uint64_t)usage, .text = proxy, .text2 = bypass});
}

int dopa_job_get_proxy(dopa_manager *m, const dopa_id *id, int *usage, char *proxy,
                       size_t proxy_len, char *bypass, size_t bypass_len)
{
    if (id == NULL)
        return DOPA_EINVAL;
    proto_reply reply;
    int err = call_op(m, PROTO_GET_PROXY, id, &reply);
    if (err == DOPA_OK) {
        if (usage != NULL)
            *usage = (int)reply.proxy_usage;
        if (proxy != NULL && proxy_len > 0)
            snprintf(proxy, proxy_len, "%s", reply.proxy);
        if (bypass != NULL && bypass_len > 0)
            snprintf(bypass, bypass_len, "%s", reply.bypass);
    }
    proto_reply_clear(&reply);
    return err;
}

int dopa_job_set_notify_flags(dopa_manager *m, const dopa_id *id, uint32_t flags)
{
    return set(m, PROTO_SET_NOTIFY_FLAGS, id, (set_values){.number = flags});
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
    if (argv != NULL)
        *argv = NULL;
    if (id == NULL)
        return DOPA_EINVAL;
    proto_reply reply;
    int err = call_op(m, PROTO_GET_NOTIFY, id, &reply);
    if (err != DOPA_OK)
        return err;
    if (flags != NULL)
        *flags = (uint32_t)reply.flags;
    if (argv != NULL) {
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
    return set(m, PROTO_SET_VALIDATION, id, (set_values){.number = index, .number2 = valid != 0});
}

int dopa_job_set_validation_policy(dopa_manager *m, const dopa_id *id, uint32_t seconds,
                                   int default_valid)
{
    return set(m, PROTO_SET_VALIDATION_POLICY, id,
               (set_values){.number = seconds, .number2 = default_valid != 0});
}

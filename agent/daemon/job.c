/*
 * The job model: allocation, the piece map of a file, and the public views
 * (dopa_job_info, dopa_file_info) of jobs and files.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

agent_job *agent_job_new(void)
{
    agent_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->priority = DOPA_PRIORITY_NORMAL;
    j->state = DOPA_STATE_SUSPENDED;
    j->retry_delay = DOPA_DEFAULT_MIN_RETRY_DELAY;
    j->no_progress_timeout = DOPA_DEFAULT_NO_PROGRESS_TIMEOUT;
    j->error.file = -1;
    j->notify_flags = DOPA_NOTIFY_DEFAULT;
    j->validation_timeout = DOPA_DEFAULT_VALIDATION_TIMEOUT;
    return j;
}

void agent_job_free(agent_job *j)
{
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->n_files; i++)
        agent_file_free(j->files[i]);
    free(j->files);
    free(j->notify_cmd);
    free(j);
}

agent_file *agent_file_new(void)
{
    agent_file *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->remote_size = -1;
    f->size = DOPA_SIZE_UNKNOWN;
    f->fd = -1;
    f->check.plugin_fd = -1;
    return f;
}

void agent_file_free(agent_file *f)
{
    if (f == NULL)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free(f->url);
    free(f->path);
    free(f->tmp_path);
    free(f->ranges);
    free(f->manifest_bytes);
    validate_manifest_free(f->manifest);
    pieces_free(&f->pieces);
    if (f->check.plugin_fd >= 0)
        close(f->check.plugin_fd);
    free(f);
}

int agent_file_set_size(agent_file *f, uint64_t size)
{
    uint32_t piece = f->manifest != NULL ? f->manifest->piece_size : validate_piece_size_for(size);
    if (piece == 0)
        return DOPA_ELIMIT;
    int err = pieces_init(&f->pieces, size, piece);
    if (err != DOPA_OK)
        return err;
    f->size = size;
    return DOPA_OK;
}

void agent_file_clear_pieces(agent_file *f)
{
    pieces_reset(&f->pieces);
    f->write_gen++; /* a commit under way for it is void */
    f->transferred = 0;
}

int agent_file_local_size(const agent_file *f, int64_t remote_size, uint64_t *size)
{
    if (f->n_ranges == 0) {
        if (remote_size < 0)
            return DOPA_EINVAL;
        *size = (uint64_t)remote_size;
        return DOPA_OK;
    }
    uint64_t total = 0;
    for (size_t i = 0; i < f->n_ranges; i++) {
        uint64_t off = f->ranges[i].offset, len = f->ranges[i].length;
        if (len == DOPA_LENGTH_TO_EOF) {
            if (remote_size < 0 || off > (uint64_t)remote_size)
                return DOPA_EINVAL;
            len = (uint64_t)remote_size - off;
        } else if (remote_size >= 0 && off + len > (uint64_t)remote_size) {
            return DOPA_EINVAL;
        }
        total += len;
    }
    *size = total;
    return DOPA_OK;
}

int agent_ranges_check(const dopa_range *ranges, size_t n, validate_error *why)
{
    uint64_t prev_end = 0;
    for (size_t i = 0; i < n; i++) {
        const dopa_range *r = &ranges[i];
        const char *bad = NULL;
        if (r->length == 0)
            bad = "is empty";
        else if (r->length == DOPA_LENGTH_TO_EOF && i + 1 != n)
            bad = "runs to the end but is not the last";
        else if (r->length != DOPA_LENGTH_TO_EOF && r->length > UINT64_MAX - 1 - r->offset)
            bad = "overflows";
        else if (i > 0 && r->offset < prev_end)
            bad = "is out of order or overlaps the one before";
        if (bad != NULL) {
            return validate_error_set(why, DOPA_EINVAL, "range %zu %s", i, bad);
        }
        prev_end = r->length == DOPA_LENGTH_TO_EOF ? UINT64_MAX : r->offset + r->length;
    }
    return 0;
}

size_t agent_notify_cmd_count(const char *cmd, size_t len)
{
    if (len == 0 || cmd[0] != '/' || cmd[len - 1] != '\0')
        return 0;
    size_t n = 0;
    for (size_t at = 0; at < len; n++) {
        size_t arg = strlen(cmd + at);
        if (arg > DOPA_NOTIFY_ARG_MAX || n == DOPA_MAX_NOTIFY_ARGS)
            return 0;
        at += arg + 1;
    }
    return n;
}

void agent_job_info(const agent_job *j, dopa_job_info *out)
{
    memset(out, 0, sizeof *out);
    out->id = j->id;
    out->owner = j->owner;
    out->type = j->type;
    out->state = j->state;
    out->priority = j->priority;
    memcpy(out->display_name, j->name, sizeof out->display_name);
    memcpy(out->description, j->description, sizeof out->description);
    out->bytes_total = 0;
    for (size_t i = 0; i < j->n_files; i++) {
        const agent_file *f = j->files[i];
        if (f->size == DOPA_SIZE_UNKNOWN)
            out->bytes_total = DOPA_SIZE_UNKNOWN;
        else if (out->bytes_total != DOPA_SIZE_UNKNOWN)
            out->bytes_total += f->size;
        out->bytes_transferred += pieces_held_bytes(&f->pieces);
        out->files_transferred += f->transferred ? 1u : 0u;
    }
    out->files_total = (uint32_t)j->n_files;
    out->bytes_from_origin = j->from_origin;
    out->bytes_from_peers = j->from_peers;
    out->bytes_from_cache = j->from_cache;
    out->bytes_uploaded = j->uploaded;
    out->created = j->created;
    out->modified = j->modified;
    out->transfer_completed = j->completed;
    out->error_count = j->error_count;
    out->has_error = j->has_error;
    out->error = j->error;
    out->minimum_retry_delay = j->retry_delay;
    out->no_progress_timeout = j->no_progress_timeout;
    out->proxy_usage = j->proxy_usage;
    out->version = j->version;
    out->notify_flags = j->notify_flags;
    out->validation_timeout = j->validation_timeout;
    out->validation_default_valid = j->validation_default_valid;
}

void agent_file_info(const agent_file *f, dopa_file_info *out)
{
    memset(out, 0, sizeof *out);
    strncpy(out->remote_url, f->url, DOPA_URL_MAX);
    strncpy(out->local_name, f->path, DOPA_PATH_MAX);
    strncpy(out->temporary_name, f->tmp_path ? f->tmp_path : "", DOPA_PATH_MAX);
    out->bytes_total = f->size;
    out->bytes_transferred = pieces_held_bytes(&f->pieces);
    out->bytes_from_origin = f->from_origin;
    out->bytes_from_peers = f->from_peers;
    out->bytes_from_cache = f->from_cache;
    out->ranges = (uint32_t)f->n_ranges;
    out->transferred = f->transferred;
    out->has_manifest = f->manifest != NULL;
    out->has_sha256 = f->has_sha256;
    out->validation = f->validation;
}

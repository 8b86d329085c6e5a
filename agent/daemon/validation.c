/*
 * Validation of a transferred file, after its pieces and hashes checked
 * out: first the validator plugins, then (with DOPA_NOTIFY_FILE_TRANSFERRED)
 * the client's SetValidationState. Only then is the file transferred.
 *
 * Plugins never run inside dopad: the dopa-validate helper loads them and
 * judges the file as the job's file user, and dopad reads its one-line
 * verdict from a pipe. A helper that crashes, says nothing or overruns its
 * time fails the validation and is killed; dopad goes on.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine_internal.h"

#define DEFAULT_PLUGIN_TIMEOUT_MS 60000

void engine_reap_later(agent_engine *e, pid_t pid)
{
    if (waitpid(pid, NULL, WNOHANG) == pid)
        return;
    pid_t *grown = realloc(e->zombies, (e->n_zombies + 1) * sizeof *grown);
    if (grown == NULL)
        return; /* (init reaps it when dopad ends) */
    e->zombies = grown;
    e->zombies[e->n_zombies++] = pid;
}

void engine_reap(agent_engine *e, int wait)
{
    size_t kept = 0;
    for (size_t i = 0; i < e->n_zombies; i++) {
        pid_t r;
        while ((r = waitpid(e->zombies[i], NULL, wait ? 0 : WNOHANG)) < 0 && errno == EINTR)
            ;
        if (r == 0)
            e->zombies[kept++] = e->zombies[i];
    }
    e->n_zombies = kept;
}

void validation_stop(agent_engine *e, agent_file *f)
{
    if (f->check.plugin_pid > 0) {
        /* The helper and whatever its plugins started; reaped later, so
         * that one stuck in the kernel cannot stall the engine. */
        kill(-f->check.plugin_pid, SIGKILL);
        kill(f->check.plugin_pid, SIGKILL);
        engine_reap_later(e, f->check.plugin_pid);
    }
    f->check.plugin_pid = 0;
    if (f->check.plugin_fd >= 0)
        close(f->check.plugin_fd);
    f->check.plugin_fd = -1;
    f->check.plugin_out_len = 0;
}

/* Starts the helper on the file; 0 if it runs. */
static int start_plugins(agent_engine *e, agent_file *f)
{
    agent_job *j = f->job;
    char size[32], content_id[65] = "-";
    snprintf(size, sizeof size, "%llu", (unsigned long long)f->size);
    if (f->manifest != NULL)
        validate_hex(f->manifest->content_id, 32, content_id);
    const char *argv[] = {e->cfg.validate_helper,
                          e->cfg.plugin_dir,
                          f->tmp_path,
                          size,
                          f->url,
                          f->path,
                          content_id,
                          NULL};
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = cb_spawn_as(j->file_user, argv, NULL, fds[1]);
    int err = errno;
    close(fds[1]);
    if (pid < 0) {
        close(fds[0]);
        errno = err;
        return -1;
    }
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    f->check.plugin_pid = pid;
    f->check.plugin_fd = fds[0];
    f->check.plugin_out_len = 0;
    uint32_t ms = e->cfg.plugin_timeout_ms ? e->cfg.plugin_timeout_ms : DEFAULT_PLUGIN_TIMEOUT_MS;
    f->check.plugin_deadline = engine_mono(e) + ms;
    return 0;
}

/* Reads what the helper said so far (keeps the first line only). */
static void read_verdict(agent_file *f)
{
    for (;;) {
        char buf[512];
        ssize_t n = read(f->check.plugin_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        size_t room = sizeof f->check.plugin_out - 1 - f->check.plugin_out_len;
        size_t take = (size_t)n < room ? (size_t)n : room;
        memcpy(f->check.plugin_out + f->check.plugin_out_len, buf, take);
        f->check.plugin_out_len += take;
        f->check.plugin_out[f->check.plugin_out_len] = '\0';
    }
}

/* Strips the verdict word and the line end: the reason stays. */
static const char *reason_after(const char *out, const char *word)
{
    const char *r = out + strlen(word);
    while (*r == ' ')
        r++;
    return r;
}

/* Moves a running helper on: 1 valid, 0 still running, -1 failed (the job
 * failed or the file starts over). */
static int poll_plugins(agent_engine *e, agent_file *f)
{
    agent_job *j = f->job;
    char msg[DOPA_MESSAGE_MAX + 1];
    read_verdict(f);
    siginfo_t info = {0};
    int r = waitid(P_PID, (id_t)f->check.plugin_pid, &info, WEXITED | WNOHANG | WNOWAIT);
    if (r == 0 && info.si_pid == 0) {
        if (engine_mono(e) < f->check.plugin_deadline)
            return 0;
        validation_stop(e, f);
        snprintf(msg, sizeof msg, "%.200s: the validator plugins gave no verdict in %u s", f->path,
                 (e->cfg.plugin_timeout_ms ? e->cfg.plugin_timeout_ms : DEFAULT_PLUGIN_TIMEOUT_MS) /
                     1000);
        engine_fail_job(e, j, 0, DOPA_CONTEXT_VALIDATION, VALIDATE_EPLUGIN_FAILED, (int)f->index, 0,
                        msg);
        return -1;
    }
    /* It ended: what it left behind goes too, then it is reaped. */
    int status = 0;
    kill(-f->check.plugin_pid, SIGKILL);
    pid_t reaped;
    while ((reaped = waitpid(f->check.plugin_pid, &status, 0)) < 0 && errno == EINTR)
        ;
    f->check.plugin_pid = 0;
    read_verdict(f); /* what it wrote just before it ended */
    char out[sizeof f->check.plugin_out];
    memcpy(out, f->check.plugin_out, sizeof out);
    validation_stop(e, f);
    char *nl = strchr(out, '\n');
    int answered = nl != NULL && reaped > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (nl != NULL)
        *nl = '\0';
    if (answered && strcmp(out, "valid") == 0) {
        f->check.plugins_passed = 1;
        return 1;
    }
    if (answered && strncmp(out, "invalid", 7) == 0) {
        snprintf(msg, sizeof msg, "%.200s: %.300s", f->path, reason_after(out, "invalid"));
        engine_reject_file(e, f, VALIDATE_EPLUGIN_REJECTED, msg);
        return -1;
    }
    if (answered && strncmp(out, "error", 5) == 0) {
        /* A plugin could not decide (its server was down, say): later. */
        snprintf(msg, sizeof msg, "%.200s: %.300s", f->path, reason_after(out, "error"));
        engine_fail_job(e, j, 1, DOPA_CONTEXT_VALIDATION, VALIDATE_EPLUGIN_FAILED, (int)f->index, 0,
                        msg);
        return -1;
    }
    if (reaped > 0 && WIFSIGNALED(status))
        snprintf(msg, sizeof msg, "%.200s: the validator plugins crashed (signal %d)", f->path,
                 WTERMSIG(status));
    else
        snprintf(msg, sizeof msg, "%.200s: the validator plugins failed (%.250s)", f->path,
                 out[0] ? out : "no verdict");
    engine_fail_job(e, j, 0, DOPA_CONTEXT_VALIDATION, VALIDATE_EPLUGIN_FAILED, (int)f->index, 0,
                    msg);
    return -1;
}

/* The verdict of the client (or of the timeout): recorded, and acted on. */
static int apply_verdict(agent_engine *e, agent_file *f, int valid, const char *why)
{
    if (!valid) {
        char msg[DOPA_MESSAGE_MAX + 1];
        snprintf(msg, sizeof msg, "%.200s: %.300s", f->path, why);
        engine_reject_file(e, f, DOPA_EVALIDATION, msg);
        return -1;
    }
    /* The verdict and the end of its FileTransferred, together. */
    int own = engine_begin(e);
    notify_cancel(e, f->job, CB_FILE_TRANSFERRED, (int32_t)f->index);
    f->validation = DOPA_VALIDATION_VALID;
    engine_end(e, own, store_put_file(e->db, f) == DOPA_OK);
    return 1;
}

int validation_step(agent_engine *e, agent_file *f)
{
    agent_job *j = f->job;
    /* (A file waits for its verdict only once the plugins passed it.) */
    if (e->cfg.plugin_dir != NULL && !f->check.plugins_passed &&
        f->validation != DOPA_VALIDATION_PENDING) {
        if (f->check.plugin_pid > 0) {
            int r = poll_plugins(e, f);
            if (r <= 0)
                return r;
        } else {
            if (start_plugins(e, f) != 0) {
                char msg[DOPA_MESSAGE_MAX + 1];
                snprintf(msg, sizeof msg, "cannot start %s: %s", e->cfg.validate_helper,
                         strerror(errno));
                engine_fail_job(e, j, 1, DOPA_CONTEXT_VALIDATION, VALIDATE_EPLUGIN_FAILED,
                                (int)f->index, 0, msg);
                return -1;
            }
            return 0;
        }
    }
    if (!cb_wanted(j->notify_flags, CB_FILE_TRANSFERRED) || f->validation == DOPA_VALIDATION_VALID)
        return 1;
    int64_t now = engine_mono(e);
    if (f->validation != DOPA_VALIDATION_PENDING) {
        /* FileTransferred, and the file waits for the client's verdict. */
        f->validation = DOPA_VALIDATION_PENDING;
        f->check.verdict_deadline = now + (int64_t)j->validation_timeout * 1000;
        int own = engine_begin(e);
        int ok = store_put_file(e->db, f) == DOPA_OK;
        engine_notify(e, j, CB_FILE_TRANSFERRED, (int32_t)f->index);
        engine_touch(e, j);
        engine_end(e, own, ok);
        return 0;
    }
    if (f->check.verdict_deadline == 0) /* waiting since before a restart */
        f->check.verdict_deadline = now + (int64_t)j->validation_timeout * 1000;
    if (now < f->check.verdict_deadline)
        return 0;
    return apply_verdict(e, f, j->validation_default_valid,
                         "no verdict in time, and the default is invalid");
}

int validation_set(agent_engine *e, agent_file *f, int valid, validate_error *why)
{
    if (f->validation != DOPA_VALIDATION_PENDING) {
        validate_error_set(why, DOPA_ESTATE, "the file does not wait for a verdict");
        return DOPA_ESTATE;
    }
    apply_verdict(e, f, valid, "the client found the content invalid");
    engine_touch(e, f->job);
    return DOPA_OK;
}

int64_t validation_next_ms(agent_engine *e, int64_t limit)
{
    int64_t now = engine_mono(e), best = limit;
    for (size_t i = 0; i < e->n_jobs; i++) {
        const agent_job *j = e->jobs[i];
        if (!j->running)
            continue;
        for (size_t k = 0; k < j->n_files; k++) {
            const agent_file *f = j->files[k];
            if (f->check.plugin_pid > 0 && best > 20)
                best = 20; /* its verdict is read by polling */
            if (f->validation == DOPA_VALIDATION_PENDING && f->check.verdict_deadline != 0 &&
                f->check.verdict_deadline - now < best)
                best = f->check.verdict_deadline - now;
        }
    }
    return best < 0 ? 0 : best;
}

/* Empties the temporary file, opening it again (as its user, checking it
 * is the file the job made) when the job is not running. */
static void truncate_temp(agent_engine *e, agent_file *f)
{
    validate_error why = {0};
    int fd = f->fd, err = 0;
    sources_drain(e, f);
    if (fd < 0)
        err = fileops_open_temp(f->job->file_user, f->tmp_path, 0, &f->ident, &fd, &why);
    if (err == 0 && ftruncate(fd, 0) != 0) {
        err = errno;
        validate_error_set(&why, DOPA_EIO, "%s: %s", f->tmp_path, strerror(err));
    }
    if (err != 0 && err != ENOENT)
        agent_log("warning", "emptying rejected content: %s", why.text);
    if (fd >= 0 && fd != f->fd)
        close(fd);
}

void engine_reject_file(agent_engine *e, agent_file *f, int code, const char *message)
{
    agent_job *j = f->job;
    validation_stop(e, f);
    int own = engine_begin(e);
    notify_cancel(e, j, CB_FILE_TRANSFERRED, (int32_t)f->index);
    int from_peers = (f->from_peers > 0 || f->from_cache > 0) && !f->origin_only;
    if (from_peers)
        peers_blame(e, f);
    /* Nothing of it may stay: the pieces, the bytes, the verdicts. */
    agent_file_clear_pieces(f);
    truncate_temp(e, f);
    f->check.plugins_passed = 0;
    f->from_origin = f->from_peers = f->from_cache = 0;
    if (from_peers) {
        /* Peers may have lied: the origin alone, this time. */
        f->origin_only = 1;
        f->validation = DOPA_VALIDATION_NONE;
        engine_reset_file(e, f);
        agent_log("warning", "%s; fetching it again from the origin", message);
        engine_touch(e, j);
    } else {
        f->validation = DOPA_VALIDATION_INVALID;
        engine_reset_file(e, f);
        engine_fail_job(e, j, 0, DOPA_CONTEXT_VALIDATION, code, (int)f->index, 0, message);
    }
    engine_end(e, own, 1);
}

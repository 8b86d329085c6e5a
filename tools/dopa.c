/*
 * dopa: the command line for dopad, in the manner of bitsadmin: create and
 * drive jobs, inspect them, and `dopa get URL -o FILE` for one-shot
 * downloads with a progress bar.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dopa.h"
#include "json.h"
#include "peer.h"
#include "validate.h"

enum exit_code {
    EXIT_OK = 0,
    EXIT_FAILED = 1,    /* the job ended in ERROR (dopa get, wait) */
    EXIT_USAGE = 2,     /* bad command line */
    EXIT_NO_DAEMON = 3, /* dopad cannot be reached */
    EXIT_REFUSED = 4,   /* dopad refused the request, or another error */
    EXIT_TIMEOUT = 5,   /* wait --timeout: the job had not finished */
    EXIT_INTERRUPTED = 130,
};

static const char usage_text[] =
    "usage: dopa [--socket PATH] [--json] <command> [arguments]\n"
    "\n"
    "one-shot download:\n"
    "  get URL -o FILE [--sha256 HEX] [--manifest FILE] [--priority P]\n"
    "          [--retry-delay SECS] [--no-progress-timeout SECS] [--quiet]\n"
    "      download through dopad; run the same command again to resume\n"
    "\n"
    "jobs (JOB is a job id, or a unique prefix of one):\n"
    "  create [NAME]                 make a job (SUSPENDED) and print its id\n"
    "  add-file JOB URL FILE [--range OFFSET:LENGTH]... [--sha256 HEX] [--manifest FILE]\n"
    "                                LENGTH may be 'eof'\n"
    "  resume | suspend | cancel | complete | take-ownership JOB\n"
    "  info JOB                      the job's properties, progress and error\n"
    "  files JOB                     its files\n"
    "  get-error JOB                 its error, if any\n"
    "  list [--all]                  your jobs (--all: everyone's, root only)\n"
    "  monitor [JOB]                 refresh the list (or one job) until interrupted\n"
    "  wait JOB [--timeout SECS]     until TRANSFERRED (0), ERROR (1) or the timeout (5)\n"
    "  set-priority JOB foreground|high|normal|low\n"
    "  set-name JOB NAME\n"
    "  set-description JOB TEXT\n"
    "  set-min-retry-delay JOB SECS\n"
    "  set-no-progress-timeout JOB SECS\n"
    "  set-proxy JOB system|none|override [PROXY [BYPASS]]\n"
    "  get-proxy JOB\n"
    "  whoami                        your uid as dopad sees it, and its version\n"
    "\n"
    "notifications and validation:\n"
    "  set-notify-flags JOB FLAG...  the events the job reports, several OR together:\n"
    "                                transferred, error, modification, file-transferred\n"
    "                                (each file waits for `validate`), disable (none at\n"
    "                                all); or default (transferred error), or none\n"
    "  set-notify-cmdline JOB [--] PROGRAM [ARG...]\n"
    "                                when an event fires that no client takes, dopad\n"
    "                                runs PROGRAM (an absolute path) with these\n"
    "                                arguments, as the job's owner and without a shell;\n"
    "                                DOPA_JOB_ID and DOPA_EVENT are in its environment\n"
    "  set-notify-cmdline JOB --clear\n"
    "                                no program\n"
    "  get-notify JOB                the flags and the program\n"
    "  validate JOB FILE-INDEX valid|invalid\n"
    "                                the verdict on a file that waits for one; FILE-INDEX\n"
    "                                as `files` numbers them, from 0\n"
    "  set-validation-policy JOB SECS valid|invalid\n"
    "                                how long a file waits for its verdict, and the\n"
    "                                verdict when none comes\n"
    "\n"
    "peers:\n"
    "  stats                         the agent's counters: bytes by source, uploads,\n"
    "                                peers, bans, the content cache\n"
    "  group-key FILE [--force]      make a new group key (mode 0600); agents whose\n"
    "                                [peers] group-key names a copy of it form a group\n"
    "\n"
    "--json prints one JSON document instead of text.\n"
    "exit codes: 0 success; 1 the job failed; 2 usage error; 3 dopad not reachable;\n"
    "4 request refused or other error; 5 wait timed out before the job finished;\n"
    "130 interrupted.\n";

static int json;
static const char *socket_path;
static volatile sig_atomic_t interrupted;

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dopa: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nRun `dopa --help` for usage.\n");
    va_end(ap);
    return EXIT_USAGE;
}

/* Reports a failed call: dopad's own words when it gave some. */
static int failed(const char *what, int err)
{
    const char *said = dopa_last_message();
    if (strcmp(said, dopa_strerror(err)) == 0)
        said = ""; /* nothing to add */
    fprintf(stderr, "dopa: %s: %s%s%s\n", what, dopa_strerror(err), said[0] ? ": " : "", said);
    if (err == DOPA_ECONNECT)
        fprintf(stderr, "dopa: start dopad, or point --socket (or $DOPA_SOCKET) at its socket\n");
    return err == DOPA_ECONNECT ? EXIT_NO_DAEMON : EXIT_REFUSED;
}

static int connect_or_fail(dopa_manager **m)
{
    int err = dopa_connect(socket_path, m);
    if (err != DOPA_OK) {
        char path[4096];
        if (socket_path == NULL)
            dopa_default_socket(path, sizeof path);
        else
            snprintf(path, sizeof path, "%s", socket_path);
        fprintf(stderr, "dopa: cannot reach dopad at %s\n", path);
        fprintf(stderr, "dopa: start dopad, or point --socket (or $DOPA_SOCKET) at its socket\n");
        return EXIT_NO_DAEMON;
    }
    return EXIT_OK;
}

static void format_time(int64_t ms, char *out, size_t len)
{
    if (ms <= 0) {
        snprintf(out, len, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, len, "%Y-%m-%d %H:%M:%S", &tm);
}

static void format_bytes(uint64_t n, char *out, size_t len)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, len, "%" PRIu64 " B", n);
    else
        snprintf(out, len, "%.1f %s", v, units[u]);
}

/* The notify flags by the names the command line uses, in bit order. */
static const struct {
    const char *name;
    uint32_t bit;
} notify_names[] = {
    {"transferred", DOPA_NOTIFY_JOB_TRANSFERRED},
    {"error", DOPA_NOTIFY_JOB_ERROR},
    {"disable", DOPA_NOTIFY_DISABLE},
    {"modification", DOPA_NOTIFY_JOB_MODIFICATION},
    {"file-transferred", DOPA_NOTIFY_FILE_TRANSFERRED},
};

static int parse_notify_flag(const char *s, uint32_t *out)
{
    if (strcasecmp(s, "default") == 0) {
        *out = DOPA_NOTIFY_DEFAULT;
        return 0;
    }
    if (strcasecmp(s, "none") == 0) {
        *out = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof notify_names / sizeof notify_names[0]; i++)
        if (strcasecmp(s, notify_names[i].name) == 0) {
            *out = notify_names[i].bit;
            return 0;
        }
    return -1;
}

/* The flags as names separated by spaces, "none" for none; bits this
 * command line does not know are shown in hex. */
static void print_notify_flags_text(uint32_t flags)
{
    const char *sep = "";
    for (size_t i = 0; i < sizeof notify_names / sizeof notify_names[0]; i++)
        if (flags & notify_names[i].bit) {
            printf("%s%s", sep, notify_names[i].name);
            sep = " ";
            flags &= ~notify_names[i].bit;
        }
    if (flags)
        printf("%s0x%" PRIx32, sep, flags);
    else if (!sep[0])
        printf("none");
}

static void print_notify_flags_json(uint32_t flags)
{
    const char *sep = "";
    putchar('[');
    for (size_t i = 0; i < sizeof notify_names / sizeof notify_names[0]; i++)
        if (flags & notify_names[i].bit) {
            printf("%s\"%s\"", sep, notify_names[i].name);
            sep = ",";
            flags &= ~notify_names[i].bit;
        }
    if (flags)
        printf("%s\"0x%" PRIx32 "\"", sep, flags);
    putchar(']');
}

static const char *validation_name(int v)
{
    switch (v) {
    case DOPA_VALIDATION_NONE:
        return "none";
    case DOPA_VALIDATION_PENDING:
        return "pending";
    case DOPA_VALIDATION_VALID:
        return "valid";
    case DOPA_VALIDATION_INVALID:
        return "invalid";
    default:
        return "unknown";
    }
}

static int parse_verdict(const char *s, int *valid)
{
    if (strcasecmp(s, "valid") == 0)
        *valid = 1;
    else if (strcasecmp(s, "invalid") == 0)
        *valid = 0;
    else
        return -1;
    return 0;
}

/* An argument as a POSIX shell would need it typed: bare when it is only
 * safe characters, else in single quotes. For display only. */
static void print_shell_quoted(const char *s)
{
    if (s[0] && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                          "@%_+=:,./-") == strlen(s)) {
        fputs(s, stdout);
        return;
    }
    putchar('\'');
    for (; *s; s++) {
        if (*s == '\'')
            fputs("'\\''", stdout);
        else
            putchar(*s);
    }
    putchar('\'');
}

/* Resolves JOB: a full id, or a unique prefix of one of the caller's jobs. */
static int resolve(dopa_manager *m, const char *text, dopa_id *id)
{
    if (dopa_id_parse(text, id) == DOPA_OK)
        return EXIT_OK;
    size_t len = strlen(text);
    if (len < 4 || len > 36)
        return usage_error("%s: not a job id", text);
    dopa_job_info *jobs = NULL;
    size_t n = 0, found = 0;
    int err = dopa_job_list(m, 0, &jobs, &n);
    if (err != DOPA_OK)
        return failed("list", err);
    for (size_t i = 0; i < n; i++) {
        char s[37];
        dopa_id_format(&jobs[i].id, s);
        if (strncmp(s, text, len) == 0) {
            *id = jobs[i].id;
            found++;
        }
    }
    free(jobs);
    if (found == 1)
        return EXIT_OK;
    fprintf(stderr, "dopa: %s: %s\n", text, found ? "matches several jobs" : "no such job");
    return EXIT_REFUSED;
}

/* The share of the bytes that came from peers and cache hosts. */
static double peer_efficiency(uint64_t origin, uint64_t peers, uint64_t cache)
{
    uint64_t total = origin + peers + cache;
    return total ? (double)(peers + cache) / (double)total : 0.0;
}

static void print_job_json(const dopa_job_info *j)
{
    char id[37];
    dopa_id_format(&j->id, id);
    printf("{\"id\":\"%s\",\"owner\":%u,\"name\":", id, j->owner);
    json_string(j->display_name);
    printf(",\"description\":");
    json_string(j->description);
    printf(",\"state\":\"%s\",\"priority\":\"%s\",\"bytes_total\":", dopa_state_name(j->state),
           dopa_priority_name(j->priority));
    if (j->bytes_total == DOPA_SIZE_UNKNOWN)
        printf("null");
    else
        printf("%" PRIu64, j->bytes_total);
    printf(",\"bytes_transferred\":%" PRIu64 ",\"files_total\":%u,\"files_transferred\":%u"
           ",\"bytes_from_origin\":%" PRIu64 ",\"bytes_from_peers\":%" PRIu64
           ",\"bytes_from_cache\":%" PRIu64 ",\"bytes_uploaded\":%" PRIu64
           ",\"peer_efficiency\":%.4f,\"created_ms\":%" PRId64 ",\"modified_ms\":%" PRId64
           ",\"transfer_completed_ms\":%" PRId64 ",\"error_count\":%u"
           ",\"minimum_retry_delay\":%u,\"no_progress_timeout\":%u,\"version\":%" PRIu64
           ",\"notify_flags\":",
           j->bytes_transferred, j->files_total, j->files_transferred, j->bytes_from_origin,
           j->bytes_from_peers, j->bytes_from_cache, j->bytes_uploaded,
           peer_efficiency(j->bytes_from_origin, j->bytes_from_peers, j->bytes_from_cache),
           j->created, j->modified, j->transfer_completed, j->error_count, j->minimum_retry_delay,
           j->no_progress_timeout, j->version);
    print_notify_flags_json(j->notify_flags);
    printf(",\"validation_timeout\":%u,\"validation_default\":\"%s\",\"error\":",
           j->validation_timeout, j->validation_default_valid ? "valid" : "invalid");
    if (!j->has_error) {
        printf("null}");
        return;
    }
    printf("{\"context\":\"%s\",\"code\":%d,\"file\":%d,\"http_status\":%ld,\"message\":",
           dopa_context_name(j->error.context), j->error.code, j->error.file, j->error.http_status);
    json_string(j->error.message);
    printf("}}");
}

static void print_progress_line(const dopa_job_info *j)
{
    char done[32], total[32];
    format_bytes(j->bytes_transferred, done, sizeof done);
    if (j->bytes_total == DOPA_SIZE_UNKNOWN)
        snprintf(total, sizeof total, "?");
    else
        format_bytes(j->bytes_total, total, sizeof total);
    printf("%s / %s, %u of %u files", done, total, j->files_transferred, j->files_total);
}

static void print_job_text(const dopa_job_info *j)
{
    char id[37], created[32], modified[32], completed[32];
    dopa_id_format(&j->id, id);
    format_time(j->created, created, sizeof created);
    format_time(j->modified, modified, sizeof modified);
    format_time(j->transfer_completed, completed, sizeof completed);
    printf("job:          %s\n", id);
    printf("name:         %s\n", j->display_name);
    if (j->description[0])
        printf("description:  %s\n", j->description);
    printf("owner:        uid %u\n", j->owner);
    printf("state:        %s\n", dopa_state_name(j->state));
    printf("priority:     %s\n", dopa_priority_name(j->priority));
    printf("progress:     ");
    print_progress_line(j);
    printf("\nfrom:         origin %" PRIu64 ", peers %" PRIu64 ", cache host %" PRIu64
           " bytes (%.1f %% from peers)\n",
           j->bytes_from_origin, j->bytes_from_peers, j->bytes_from_cache,
           100 * peer_efficiency(j->bytes_from_origin, j->bytes_from_peers, j->bytes_from_cache));
    printf("uploaded:     %" PRIu64 " bytes to peers\n", j->bytes_uploaded);
    printf("created:      %s\nmodified:     %s\ntransferred:  %s\n", created, modified, completed);
    printf("retry delay:  %u s\nno progress:  %u s\nerrors:       %u\n", j->minimum_retry_delay,
           j->no_progress_timeout, j->error_count);
    printf("notify:       ");
    print_notify_flags_text(j->notify_flags);
    printf("\nvalidation:   %u s, then %s\n", j->validation_timeout,
           j->validation_default_valid ? "valid" : "invalid");
    if (!j->has_error)
        return;
    printf("error:        %s (code %d", dopa_context_name(j->error.context), j->error.code);
    if (j->error.http_status)
        printf(", HTTP %ld", j->error.http_status);
    printf(") %s\n", j->error.message);
}

static int cmd_info(dopa_manager *m, const dopa_id *id)
{
    dopa_job_info j;
    int err = dopa_job_get(m, id, &j);
    if (err != DOPA_OK)
        return failed("info", err);
    if (json) {
        print_job_json(&j);
        putchar('\n');
    } else {
        print_job_text(&j);
    }
    return EXIT_OK;
}

static int cmd_get_error(dopa_manager *m, const dopa_id *id)
{
    dopa_job_info j;
    int err = dopa_job_get(m, id, &j);
    if (err != DOPA_OK)
        return failed("get-error", err);
    if (json) {
        if (!j.has_error) {
            printf("null\n");
        } else {
            printf("{\"context\":\"%s\",\"code\":%d,\"file\":%d,\"http_status\":%ld,"
                   "\"message\":",
                   dopa_context_name(j.error.context), j.error.code, j.error.file,
                   j.error.http_status);
            json_string(j.error.message);
            printf("}\n");
        }
    } else if (j.has_error) {
        printf("context: %s\ncode:    %d\nfile:    %d\nhttp:    %ld\nmessage: %s\n",
               dopa_context_name(j.error.context), j.error.code, j.error.file, j.error.http_status,
               j.error.message);
    } else {
        printf("no error\n");
    }
    return EXIT_OK;
}

static int cmd_list(dopa_manager *m, int all)
{
    dopa_job_info *jobs = NULL;
    size_t n = 0;
    int err = dopa_job_list(m, all, &jobs, &n);
    if (err != DOPA_OK)
        return failed("list", err);
    if (json) {
        putchar('[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                putchar(',');
            print_job_json(&jobs[i]);
        }
        printf("]\n");
    } else {
        for (size_t i = 0; i < n; i++) {
            char id[37];
            dopa_id_format(&jobs[i].id, id);
            printf("%s %-15s %-10s ", id, dopa_state_name(jobs[i].state),
                   dopa_priority_name(jobs[i].priority));
            print_progress_line(&jobs[i]);
            printf(" %s\n", jobs[i].display_name);
        }
        if (n == 0)
            printf("no jobs\n");
    }
    free(jobs);
    return EXIT_OK;
}

static int cmd_files(dopa_manager *m, const dopa_id *id)
{
    dopa_file_info *files = NULL;
    size_t n = 0;
    int err = dopa_job_list_files(m, id, &files, &n);
    if (err != DOPA_OK)
        return failed("files", err);
    if (json)
        putchar('[');
    for (size_t i = 0; i < n; i++) {
        const dopa_file_info *f = &files[i];
        if (json) {
            printf("%s{\"remote_url\":", i ? "," : "");
            json_string(f->remote_url);
            printf(",\"local_name\":");
            json_string(f->local_name);
            printf(",\"temporary_name\":");
            json_string(f->temporary_name);
            printf(",\"bytes_total\":");
            if (f->bytes_total == DOPA_SIZE_UNKNOWN)
                printf("null");
            else
                printf("%" PRIu64, f->bytes_total);
            printf(",\"bytes_transferred\":%" PRIu64 ",\"bytes_from_origin\":%" PRIu64
                   ",\"bytes_from_peers\":%" PRIu64 ",\"bytes_from_cache\":%" PRIu64
                   ",\"ranges\":%u,\"transferred\":%s,\"manifest\":%s,\"sha256\":%s"
                   ",\"validation\":\"%s\"}",
                   f->bytes_transferred, f->bytes_from_origin, f->bytes_from_peers,
                   f->bytes_from_cache, f->ranges, f->transferred ? "true" : "false",
                   f->has_manifest ? "true" : "false", f->has_sha256 ? "true" : "false",
                   validation_name(f->validation));
        } else {
            char done[32], total[32];
            format_bytes(f->bytes_transferred, done, sizeof done);
            if (f->bytes_total == DOPA_SIZE_UNKNOWN)
                snprintf(total, sizeof total, "?");
            else
                format_bytes(f->bytes_total, total, sizeof total);
            printf("%zu: %s -> %s\n   %s / %s%s%s%s, validation %s\n   from origin %" PRIu64
                   ", peers %" PRIu64 ", cache %" PRIu64 " bytes\n",
                   i, f->remote_url, f->local_name, done, total,
                   f->transferred ? ", transferred" : "", f->has_manifest ? ", manifest" : "",
                   f->has_sha256 ? ", sha256" : "", validation_name(f->validation),
                   f->bytes_from_origin, f->bytes_from_peers, f->bytes_from_cache);
        }
    }
    if (json)
        printf("]\n");
    free(files);
    return EXIT_OK;
}

static int parse_priority(const char *s, int *out)
{
    const char *names[] = {"foreground", "high", "normal", "low"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

static int parse_seconds(const char *s, uint32_t *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0 || v == 0 || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || errno != 0)
        return -1;
    *out = v;
    return 0;
}

/* An absolute path for FILE, as dopad needs: relative ones are taken from
 * the current directory. */
static int absolute_path(const char *path, char *out, size_t len)
{
    if (path[0] == '/') {
        if (strlen(path) >= len)
            return -1;
        strcpy(out, path);
        return 0;
    }
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return -1;
    const char *p = path;
    while (strncmp(p, "./", 2) == 0)
        p += 2;
    int n = snprintf(out, len, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, p);
    return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* Reads --manifest FILE (bounded as dopad bounds it). */
static int read_manifest(const char *path, uint8_t **buf, size_t *len)
{
    validate_manifest *mf = NULL;
    char why[512];
    if (validate_manifest_load(path, &mf, why, sizeof why) != VALIDATE_OK) {
        fprintf(stderr, "dopa: %s\n", why);
        return -1;
    }
    *buf = malloc(mf->encoded_len);
    if (*buf == NULL) {
        validate_manifest_free(mf);
        return -1;
    }
    memcpy(*buf, mf->encoded, mf->encoded_len);
    *len = mf->encoded_len;
    validate_manifest_free(mf);
    return 0;
}

struct file_args {
    dopa_range ranges[64];
    size_t n_ranges;
    uint8_t sha256[32];
    int has_sha256;
    uint8_t *manifest;
    size_t manifest_len;
};

static int parse_range(const char *s, dopa_range *r)
{
    const char *colon = strchr(s, ':');
    if (colon == NULL)
        return -1;
    char off[32];
    if ((size_t)(colon - s) >= sizeof off)
        return -1;
    memcpy(off, s, (size_t)(colon - s));
    off[colon - s] = '\0';
    if (parse_u64(off, &r->offset) != 0)
        return -1;
    if (strcmp(colon + 1, "eof") == 0) {
        r->length = DOPA_LENGTH_TO_EOF;
        return 0;
    }
    return parse_u64(colon + 1, &r->length) == 0 && r->length > 0 ? 0 : -1;
}

/* --sha256 (c 's') and --manifest (c 'm'), which get and add-file share:
 * EXIT_OK when taken, else the exit code. */
static int check_option(int c, const char *arg, struct file_args *a)
{
    if (c == 's') {
        if (validate_unhex(arg, a->sha256, 32) != VALIDATE_OK)
            return usage_error("--sha256 %s: need 64 hex digits", arg);
        a->has_sha256 = 1;
        return EXIT_OK;
    }
    free(a->manifest); /* the last one given counts */
    a->manifest = NULL;
    return read_manifest(arg, &a->manifest, &a->manifest_len) == 0 ? EXIT_OK : EXIT_REFUSED;
}

static dopa_file_options file_options(const struct file_args *a)
{
    dopa_file_options o = {.ranges = a->ranges,
                           .n_ranges = a->n_ranges,
                           .expected_sha256 = a->has_sha256 ? a->sha256 : NULL,
                           .manifest = a->manifest,
                           .manifest_len = a->manifest_len};
    return o;
}

static void on_interrupt(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Draws a progress bar on stderr (a terminal) for a running job. */
static void draw_progress(const dopa_job_info *j, double rate)
{
    char done[32], total[32], speed[32];
    format_bytes(j->bytes_transferred, done, sizeof done);
    format_bytes((uint64_t)rate, speed, sizeof speed);
    int width = 30, filled = 0;
    if (j->bytes_total != DOPA_SIZE_UNKNOWN && j->bytes_total > 0) {
        format_bytes(j->bytes_total, total, sizeof total);
        filled = (int)((double)j->bytes_transferred * width / (double)j->bytes_total);
    } else {
        snprintf(total, sizeof total, "?");
    }
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %s / %s  %s/s  %-15s", bar, done, total, speed,
            dopa_state_name(j->state));
    fflush(stderr);
}

static int is_done(int state)
{
    return state == DOPA_STATE_TRANSFERRED || state == DOPA_STATE_ERROR ||
           state == DOPA_STATE_ACKNOWLEDGED || state == DOPA_STATE_CANCELLED;
}

/* Waits for a job to finish, drawing progress if asked. Returns the last
 * info in *out; EXIT_INTERRUPTED on a signal, EXIT_TIMEOUT when timeout_s
 * (if not 0) passed first. */
static int follow(dopa_manager *m, const dopa_id *id, int show, int timeout_s, dopa_job_info *out)
{
    dopa_job_info j;
    uint64_t seen = 0, last_bytes = 0;
    double rate = 0;
    struct timespec t0, last;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    last = t0;
    int last_state = -1;
    for (;;) {
        struct timespec asked, now;
        clock_gettime(CLOCK_MONOTONIC, &asked);
        int err = dopa_job_wait(m, id, seen, 1000, &j);
        if (err == DOPA_ELIMIT) {
            /* dopad holds too many waits: ask plainly, a little later. */
            struct timespec ts = {0, 250 * 1000 * 1000};
            nanosleep(&ts, NULL);
            err = dopa_job_get(m, id, &j);
        }
        if (err != DOPA_OK)
            return failed("wait", err);
        int changed = j.version != seen;
        seen = j.version;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!changed && now.tv_sec - asked.tv_sec < 1 &&
            now.tv_nsec - asked.tv_nsec < 100 * 1000 * 1000) {
            struct timespec ts = {0, 250 * 1000 * 1000}; /* answered at once, unchanged */
            nanosleep(&ts, NULL);
        }
        double dt = (double)(now.tv_sec - last.tv_sec) + (double)(now.tv_nsec - last.tv_nsec) / 1e9;
        if (dt >= 0.5) {
            double r = (double)(j.bytes_transferred - last_bytes) / dt;
            rate = rate == 0 ? r : 0.7 * rate + 0.3 * r;
            last_bytes = j.bytes_transferred;
            last = now;
        }
        if (show)
            draw_progress(&j, rate);
        if (j.state == DOPA_STATE_TRANSIENT_ERROR && last_state != j.state && j.has_error) {
            if (show)
                fputc('\n', stderr);
            if (!json)
                fprintf(stderr, "dopa: transient error, will retry: %s\n", j.error.message);
        }
        last_state = j.state;
        if (is_done(j.state))
            break;
        if (interrupted) {
            *out = j;
            return EXIT_INTERRUPTED;
        }
        if (timeout_s > 0 && now.tv_sec - t0.tv_sec >= timeout_s) {
            *out = j;
            return EXIT_TIMEOUT;
        }
    }
    if (show)
        fputc('\n', stderr);
    *out = j;
    return EXIT_OK;
}

/* An unfinished `dopa get` job of this user for the same URL and file. */
static int find_get_job(dopa_manager *m, const char *url, const char *path, dopa_id *id)
{
    dopa_job_info *jobs = NULL;
    size_t n = 0;
    if (dopa_job_list(m, 0, &jobs, &n) != DOPA_OK)
        return 0;
    int found = 0;
    for (size_t i = n; i-- > 0 && !found;) {
        if (jobs[i].state == DOPA_STATE_ACKNOWLEDGED || jobs[i].state == DOPA_STATE_CANCELLED ||
            jobs[i].files_total != 1 || strncmp(jobs[i].display_name, "dopa get ", 9) != 0)
            continue;
        dopa_file_info *files = NULL;
        size_t nf = 0;
        if (dopa_job_list_files(m, &jobs[i].id, &files, &nf) == DOPA_OK && nf == 1 &&
            strcmp(files[0].remote_url, url) == 0 && strcmp(files[0].local_name, path) == 0) {
            *id = jobs[i].id;
            found = 1;
        }
        free(files);
    }
    free(jobs);
    return found;
}

static int cmd_get(dopa_manager *m, int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"sha256", required_argument, NULL, 's'},
        {"manifest", required_argument, NULL, 'm'},
        {"priority", required_argument, NULL, 'p'},
        {"retry-delay", required_argument, NULL, 'r'},
        {"no-progress-timeout", required_argument, NULL, 'n'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    const char *output = NULL;
    struct file_args fa = {0};
    int priority = DOPA_PRIORITY_FOREGROUND, quiet = 0, c;
    uint32_t retry = 5, no_progress = 300;
    while ((c = getopt_long(argc, argv, "o:q", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            output = optarg;
            break;
        case 's':
        case 'm': {
            int taken = check_option(c, optarg, &fa);
            if (taken != EXIT_OK)
                return taken;
            break;
        }
        case 'p':
            if (parse_priority(optarg, &priority) != 0)
                return usage_error("--priority %s: foreground, high, normal or low", optarg);
            break;
        case 'r':
            if (parse_seconds(optarg, &retry) != 0)
                return usage_error("--retry-delay %s: need seconds", optarg);
            break;
        case 'n':
            if (parse_seconds(optarg, &no_progress) != 0)
                return usage_error("--no-progress-timeout %s: need seconds", optarg);
            break;
        case 'q':
            quiet = 1;
            break;
        default:
            return usage_error("get: bad option");
        }
    }
    if (optind + 1 != argc || output == NULL)
        return usage_error("get: need URL and -o FILE");
    const char *url = argv[optind];
    char path[DOPA_PATH_MAX + 1];
    if (absolute_path(output, path, sizeof path) != 0)
        return usage_error("%s: path too long", output);

    dopa_id id;
    int err, resumed = find_get_job(m, url, path, &id);
    if (!resumed) {
        char name[DOPA_NAME_MAX + 1];
        const char *base = strrchr(path, '/') + 1;
        snprintf(name, sizeof name, "dopa get %.200s", base);
        if ((err = dopa_job_create(m, name, DOPA_JOB_DOWNLOAD, &id)) != DOPA_OK)
            return failed("create", err);
        dopa_file_options fo = file_options(&fa);
        if ((err = dopa_job_add_file(m, &id, url, path, &fo)) != DOPA_OK) {
            int rc = failed("add-file", err);
            dopa_job_cancel(m, &id);
            return rc;
        }
        dopa_job_set_priority(m, &id, priority);
        dopa_job_set_minimum_retry_delay(m, &id, retry);
        dopa_job_set_no_progress_timeout(m, &id, no_progress);
    } else if (!quiet && !json) {
        fprintf(stderr, "dopa: resuming the earlier download of %s\n", path);
    }
    free(fa.manifest);
    if ((err = dopa_job_resume(m, &id)) != DOPA_OK)
        return failed("resume", err);

    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    dopa_job_info j;
    int rc = follow(m, &id, !quiet && !json && isatty(2), 0, &j);
    if (rc == EXIT_INTERRUPTED) {
        dopa_job_suspend(m, &id);
        fprintf(stderr, "\ndopa: interrupted; run the same command again to resume\n");
        return rc;
    }
    if (rc != EXIT_OK)
        return rc;
    if (j.state != DOPA_STATE_TRANSFERRED) {
        if (json) {
            print_job_json(&j);
            putchar('\n');
        } else {
            fprintf(stderr, "dopa: %s: %s (%s)\n", url,
                    j.has_error ? j.error.message : dopa_state_name(j.state),
                    dopa_context_name(j.error.context));
            fprintf(stderr, "dopa: the job is kept; run the same command again to retry\n");
        }
        return EXIT_FAILED;
    }
    if ((err = dopa_job_complete(m, &id, NULL)) != DOPA_OK)
        return failed("complete", err);
    if (json) {
        printf("{\"file\":");
        json_string(path);
        printf(",\"bytes\":%" PRIu64 ",\"from_origin\":%" PRIu64 ",\"from_peers\":%" PRIu64
               ",\"from_cache\":%" PRIu64 "}\n",
               j.bytes_transferred, j.bytes_from_origin, j.bytes_from_peers, j.bytes_from_cache);
    } else if (!quiet) {
        char size[32];
        format_bytes(j.bytes_transferred, size, sizeof size);
        printf("%s: %s\n", path, size);
    }
    return EXIT_OK;
}

static int cmd_add_file(dopa_manager *m, int argc, char **argv)
{
    static const struct option opts[] = {
        {"range", required_argument, NULL, 'r'},
        {"sha256", required_argument, NULL, 's'},
        {"manifest", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    struct file_args fa = {0};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            if (fa.n_ranges == sizeof fa.ranges / sizeof fa.ranges[0])
                return usage_error("at most 64 --range options");
            if (parse_range(optarg, &fa.ranges[fa.n_ranges]) != 0)
                return usage_error("--range %s: need OFFSET:LENGTH (LENGTH may be eof)", optarg);
            fa.n_ranges++;
            break;
        case 's':
        case 'm': {
            int taken = check_option(c, optarg, &fa);
            if (taken != EXIT_OK)
                return taken;
            break;
        }
        default:
            return usage_error("add-file: bad option");
        }
    }
    if (optind + 3 != argc)
        return usage_error("add-file: need JOB URL FILE");
    dopa_id id;
    int rc = resolve(m, argv[optind], &id);
    if (rc != EXIT_OK)
        return rc;
    char path[DOPA_PATH_MAX + 1];
    if (absolute_path(argv[optind + 2], path, sizeof path) != 0)
        return usage_error("%s: path too long", argv[optind + 2]);
    dopa_file_options fo = file_options(&fa);
    int err = dopa_job_add_file(m, &id, argv[optind + 1], path, &fo);
    free(fa.manifest);
    return err == DOPA_OK ? EXIT_OK : failed("add-file", err);
}

static int cmd_set_notify_flags(dopa_manager *m, int argc, char **argv)
{
    if (argc < 3)
        return usage_error("set-notify-flags: need JOB FLAG...");
    uint32_t flags = 0;
    for (int i = 2; i < argc; i++) {
        uint32_t f;
        if (parse_notify_flag(argv[i], &f) != 0)
            return usage_error("set-notify-flags: %s: not transferred, error, modification, "
                               "file-transferred, disable, default or none",
                               argv[i]);
        flags |= f;
    }
    dopa_id id;
    int rc = resolve(m, argv[1], &id);
    if (rc != EXIT_OK)
        return rc;
    int err = dopa_job_set_notify_flags(m, &id, flags);
    return err == DOPA_OK ? EXIT_OK : failed("set-notify-flags", err);
}

/* The program is checked here, before dopad sees it, so that a relative
 * name gets a plain explanation rather than a refusal. */
static int cmd_set_notify_cmdline(dopa_manager *m, int argc, char **argv)
{
    if (argc < 3)
        return usage_error("set-notify-cmdline: need JOB [--] PROGRAM [ARG...], or JOB --clear");
    int first = 2; /* index of PROGRAM */
    if (strcmp(argv[2], "--clear") == 0) {
        if (argc != 3)
            return usage_error("set-notify-cmdline: --clear takes nothing after it");
        first = argc;
    } else if (strcmp(argv[2], "--") == 0) {
        first = 3;
        if (first == argc)
            return usage_error("set-notify-cmdline: need PROGRAM after --");
    } else if (argv[2][0] == '-') {
        return usage_error("set-notify-cmdline: unknown option %s", argv[2]);
    }
    if (first < argc) {
        if (argv[first][0] != '/')
            return usage_error("set-notify-cmdline: %s: PROGRAM must be an absolute path "
                               "(dopad runs it directly, without a shell or $PATH)",
                               argv[first]);
        if (argc - first > DOPA_MAX_NOTIFY_ARGS)
            return usage_error("set-notify-cmdline: at most %d arguments, PROGRAM included",
                               DOPA_MAX_NOTIFY_ARGS);
        for (int i = first; i < argc; i++)
            if (strlen(argv[i]) > DOPA_NOTIFY_ARG_MAX)
                return usage_error("set-notify-cmdline: an argument longer than %d bytes",
                                   DOPA_NOTIFY_ARG_MAX);
    }
    dopa_id id;
    int rc = resolve(m, argv[1], &id);
    if (rc != EXIT_OK)
        return rc;
    /* argv[argc] is NULL, as the library wants; --clear passes NULL. */
    int err = dopa_job_set_notify_cmdline(m, &id,
                                          first < argc ? (const char *const *)&argv[first] : NULL);
    return err == DOPA_OK ? EXIT_OK : failed("set-notify-cmdline", err);
}

static int cmd_get_notify(dopa_manager *m, const dopa_id *id)
{
    uint32_t flags;
    char **args = NULL;
    int err = dopa_job_get_notify(m, id, &flags, &args);
    if (err != DOPA_OK)
        return failed("get-notify", err);
    if (json) {
        printf("{\"flags\":");
        print_notify_flags_json(flags);
        printf(",\"cmdline\":[");
        for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
            if (i)
                putchar(',');
            json_string(args[i]);
        }
        printf("]}\n");
    } else {
        printf("flags:   ");
        print_notify_flags_text(flags);
        printf("\ncmdline: ");
        if (args == NULL)
            printf("(none)");
        for (size_t i = 0; args != NULL && args[i] != NULL; i++) {
            if (i)
                putchar(' ');
            print_shell_quoted(args[i]);
        }
        putchar('\n');
    }
    free(args);
    return EXIT_OK;
}

static int cmd_validate(dopa_manager *m, int argc, char **argv)
{
    if (argc != 4)
        return usage_error("validate: need JOB FILE-INDEX valid|invalid");
    uint64_t index;
    int valid;
    if (parse_u64(argv[2], &index) != 0 || index > UINT32_MAX)
        return usage_error("validate: %s: need a file index, as `dopa files` numbers them",
                           argv[2]);
    if (parse_verdict(argv[3], &valid) != 0)
        return usage_error("validate: %s: valid or invalid", argv[3]);
    dopa_id id;
    int rc = resolve(m, argv[1], &id);
    if (rc != EXIT_OK)
        return rc;
    int err = dopa_file_set_validation_state(m, &id, (uint32_t)index, valid);
    return err == DOPA_OK ? EXIT_OK : failed("validate", err);
}

static int cmd_set_validation_policy(dopa_manager *m, int argc, char **argv)
{
    if (argc != 4)
        return usage_error("set-validation-policy: need JOB SECS valid|invalid");
    uint32_t seconds;
    int valid;
    if (parse_seconds(argv[2], &seconds) != 0)
        return usage_error("set-validation-policy: %s: need seconds", argv[2]);
    if (parse_verdict(argv[3], &valid) != 0)
        return usage_error("set-validation-policy: %s: valid or invalid", argv[3]);
    dopa_id id;
    int rc = resolve(m, argv[1], &id);
    if (rc != EXIT_OK)
        return rc;
    int err = dopa_job_set_validation_policy(m, &id, seconds, valid);
    return err == DOPA_OK ? EXIT_OK : failed("set-validation-policy", err);
}

static int cmd_monitor(dopa_manager *m, int argc, char **argv)
{
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    int tty = isatty(1);
    dopa_id id;
    int one = argc == 2;
    if (one) {
        int rc = resolve(m, argv[1], &id);
        if (rc != EXIT_OK)
            return rc;
    }
    while (!interrupted) {
        if (tty)
            printf("\033[H\033[2J");
        int rc = one ? cmd_info(m, &id) : cmd_list(m, 0);
        if (rc != EXIT_OK)
            return rc;
        fflush(stdout);
        for (int i = 0; i < 10 && !interrupted; i++) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    return EXIT_OK;
}

/* The agent's counters. */
static int cmd_stats(dopa_manager *m)
{
    dopa_agent_stats s;
    int err = dopa_agent_stats_get(m, &s);
    if (err != DOPA_OK)
        return failed("stats", err);
    double eff = peer_efficiency(s.from_origin, s.from_peers, s.from_cache);
    if (json) {
        printf("{\"jobs\":%" PRIu64 ",\"from_origin\":%" PRIu64 ",\"from_peers\":%" PRIu64
               ",\"from_cache\":%" PRIu64 ",\"peer_efficiency\":%.4f,\"uploaded\":%" PRIu64
               ",\"peers\":%" PRIu64 ",\"banned\":%" PRIu64 ",\"bans\":%" PRIu64
               ",\"bad_pieces\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"refused\":%" PRIu64
               ",\"cache_entries\":%" PRIu64 ",\"cache_bytes\":%" PRIu64 ",\"cache_limit\":%" PRIu64
               ",\"peer_url\":",
               s.jobs, s.from_origin, s.from_peers, s.from_cache, eff, s.uploaded, s.peers,
               s.banned, s.bans, s.bad_pieces, s.timeouts, s.refused, s.cache_entries,
               s.cache_bytes, s.cache_limit);
        json_string(s.peer_url);
        printf("}\n");
        return EXIT_OK;
    }
    char o[32], p[32], c[32], u[32], cb[32], cl[32];
    format_bytes(s.from_origin, o, sizeof o);
    format_bytes(s.from_peers, p, sizeof p);
    format_bytes(s.from_cache, c, sizeof c);
    format_bytes(s.uploaded, u, sizeof u);
    format_bytes(s.cache_bytes, cb, sizeof cb);
    format_bytes(s.cache_limit, cl, sizeof cl);
    printf("jobs:         %" PRIu64 "\n", s.jobs);
    printf("received:     origin %s, peers %s, cache hosts %s (%.1f %% from peers)\n", o, p, c,
           100 * eff);
    printf("uploaded:     %s to peers\n", u);
    if (s.peer_url[0] == '\0') {
        printf("peers:        none (no group key configured)\n");
    } else {
        printf("peers:        %" PRIu64 " known, %" PRIu64 " banned now; serving on %s\n", s.peers,
               s.banned, s.peer_url);
        printf("trouble:      %" PRIu64 " bans, %" PRIu64 " bad pieces, %" PRIu64
               " timeouts, %" PRIu64 " messages refused\n",
               s.bans, s.bad_pieces, s.timeouts, s.refused);
    }
    printf("cache:        %" PRIu64 " entries, %s of %s\n", s.cache_entries, cb, cl);
    return EXIT_OK;
}

/* Writes a new group key file. */
static int cmd_group_key(int argc, char **argv)
{
    int force = argc == 3 && strcmp(argv[2], "--force") == 0;
    if (argc != 2 && !force)
        return usage_error("group-key: need FILE [--force]");
    uint8_t key[PEER_GROUP_KEY_BYTES];
    char why[512];
    peer_group_key_generate(key);
    int err = peer_group_key_save(key, argv[1], force, why, sizeof why);
    sodium_memzero(key, sizeof key);
    if (err != PEER_OK) {
        fprintf(stderr, "dopa: group-key: %s\n", why);
        if (err == PEER_EEXISTS)
            fprintf(stderr, "dopa: give --force to replace it\n");
        return EXIT_REFUSED;
    }
    if (json)
        printf("{\"group_key_file\":\"%s\"}\n", argv[1]);
    else
        printf("wrote %s; copy it (mode 0600) to every agent of the group\n", argv[1]);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
            socket_path = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return EXIT_OK;
        } else {
            return usage_error("unknown option %s", argv[i]);
        }
    }
    if (i == argc)
        return usage_error("missing command");
    const char *cmd = argv[i];
    argc -= i;
    argv += i;
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return EXIT_OK;
    }
    if (strcmp(cmd, "group-key") == 0)
        return cmd_group_key(argc, argv); /* needs no dopad */

    dopa_manager *m = NULL;
    int rc = connect_or_fail(&m);
    if (rc != EXIT_OK)
        return rc;
    dopa_id id;
    int err = DOPA_OK;
    /* Commands that take just JOB. */
    static const struct {
        const char *name;
        int (*fn)(dopa_manager *, const dopa_id *);
    } simple[] = {
        {"resume", dopa_job_resume},
        {"suspend", dopa_job_suspend},
        {"cancel", dopa_job_cancel},
        {"take-ownership", dopa_job_take_ownership},
    };
    for (size_t k = 0; k < sizeof simple / sizeof simple[0]; k++) {
        if (strcmp(cmd, simple[k].name) != 0)
            continue;
        if (argc != 2)
            rc = usage_error("%s: need JOB", cmd);
        else if ((rc = resolve(m, argv[1], &id)) == EXIT_OK &&
                 (err = simple[k].fn(m, &id)) != DOPA_OK)
            rc = failed(cmd, err);
        dopa_disconnect(m);
        return rc;
    }

    if (strcmp(cmd, "get") == 0) {
        rc = cmd_get(m, argc, argv);
    } else if (strcmp(cmd, "add-file") == 0) {
        rc = cmd_add_file(m, argc, argv);
    } else if (strcmp(cmd, "set-notify-flags") == 0) {
        rc = cmd_set_notify_flags(m, argc, argv);
    } else if (strcmp(cmd, "set-notify-cmdline") == 0) {
        rc = cmd_set_notify_cmdline(m, argc, argv);
    } else if (strcmp(cmd, "validate") == 0) {
        rc = cmd_validate(m, argc, argv);
    } else if (strcmp(cmd, "set-validation-policy") == 0) {
        rc = cmd_set_validation_policy(m, argc, argv);
    } else if (strcmp(cmd, "create") == 0) {
        if (argc > 2) {
            rc = usage_error("create: at most one NAME");
        } else if ((err = dopa_job_create(m, argc == 2 ? argv[1] : "", DOPA_JOB_DOWNLOAD, &id)) !=
                   DOPA_OK) {
            rc = failed("create", err);
        } else {
            char s[37];
            dopa_id_format(&id, s);
            if (json)
                printf("{\"id\":\"%s\"}\n", s);
            else
                printf("%s\n", s);
        }
    } else if (strcmp(cmd, "list") == 0) {
        int all = argc == 2 && strcmp(argv[1], "--all") == 0;
        rc = argc > 2 || (argc == 2 && !all) ? usage_error("list: only --all") : cmd_list(m, all);
    } else if (strcmp(cmd, "monitor") == 0) {
        rc = argc > 2 ? usage_error("monitor: at most one JOB") : cmd_monitor(m, argc, argv);
    } else if (strcmp(cmd, "stats") == 0) {
        rc = argc != 1 ? usage_error("stats: no arguments") : cmd_stats(m);
    } else if (strcmp(cmd, "whoami") == 0) {
        uint32_t uid;
        char version[64];
        if ((err = dopa_whoami(m, &uid, version, sizeof version)) != DOPA_OK)
            rc = failed("whoami", err);
        else if (json)
            printf("{\"uid\":%u,\"version\":\"%s\"}\n", uid, version);
        else
            printf("uid %u, dopad %s\n", uid, version);
    } else if (argc < 2) {
        rc = usage_error("%s: need JOB (or unknown command)", cmd);
    } else if ((rc = resolve(m, argv[1], &id)) != EXIT_OK) {
        /* reported */
    } else if (strcmp(cmd, "info") == 0 && argc == 2) {
        rc = cmd_info(m, &id);
    } else if (strcmp(cmd, "files") == 0 && argc == 2) {
        rc = cmd_files(m, &id);
    } else if (strcmp(cmd, "get-error") == 0 && argc == 2) {
        rc = cmd_get_error(m, &id);
    } else if (strcmp(cmd, "get-notify") == 0 && argc == 2) {
        rc = cmd_get_notify(m, &id);
    } else if (strcmp(cmd, "complete") == 0 && argc == 2) {
        int partial = 0;
        if ((err = dopa_job_complete(m, &id, &partial)) != DOPA_OK)
            rc = failed("complete", err);
        else if (partial && !json)
            fprintf(stderr, "dopa: partial complete: only the transferred files were kept\n");
        else if (json)
            printf("{\"partial\":%s}\n", partial ? "true" : "false");
    } else if (strcmp(cmd, "wait") == 0 && (argc == 2 || argc == 4)) {
        uint32_t timeout = 0;
        if (argc == 4 && (strcmp(argv[2], "--timeout") != 0 || parse_seconds(argv[3], &timeout)))
            return usage_error("wait: JOB [--timeout SECS]");
        signal(SIGINT, on_interrupt);
        dopa_job_info j;
        rc = follow(m, &id, 0, (int)timeout, &j);
        if (rc == EXIT_OK || rc == EXIT_TIMEOUT) {
            if (json) {
                print_job_json(&j);
                putchar('\n');
            } else {
                printf("%s\n", dopa_state_name(j.state));
            }
            if (rc == EXIT_OK)
                rc = j.state == DOPA_STATE_ERROR ? EXIT_FAILED : EXIT_OK;
        }
    } else if (strcmp(cmd, "set-priority") == 0 && argc == 3) {
        int p;
        if (parse_priority(argv[2], &p) != 0)
            rc = usage_error("set-priority: foreground, high, normal or low");
        else if ((err = dopa_job_set_priority(m, &id, p)) != DOPA_OK)
            rc = failed(cmd, err);
    } else if (strcmp(cmd, "set-name") == 0 && argc == 3) {
        if ((err = dopa_job_set_display_name(m, &id, argv[2])) != DOPA_OK)
            rc = failed(cmd, err);
    } else if (strcmp(cmd, "set-description") == 0 && argc == 3) {
        if ((err = dopa_job_set_description(m, &id, argv[2])) != DOPA_OK)
            rc = failed(cmd, err);
    } else if ((strcmp(cmd, "set-min-retry-delay") == 0 ||
                strcmp(cmd, "set-no-progress-timeout") == 0) &&
               argc == 3) {
        uint32_t s;
        if (parse_seconds(argv[2], &s) != 0)
            rc = usage_error("%s: need seconds", cmd);
        else if ((err = cmd[4] == 'm' ? dopa_job_set_minimum_retry_delay(m, &id, s)
                                      : dopa_job_set_no_progress_timeout(m, &id, s)) != DOPA_OK)
            rc = failed(cmd, err);
    } else if (strcmp(cmd, "set-proxy") == 0 && argc >= 3 && argc <= 5) {
        int usage = strcmp(argv[2], "system") == 0     ? DOPA_PROXY_SYSTEM
                    : strcmp(argv[2], "none") == 0     ? DOPA_PROXY_NONE
                    : strcmp(argv[2], "override") == 0 ? DOPA_PROXY_OVERRIDE
                                                       : -1;
        if (usage < 0)
            rc = usage_error("set-proxy: system, none or override");
        else if ((err = dopa_job_set_proxy(m, &id, usage, argc > 3 ? argv[3] : NULL,
                                           argc > 4 ? argv[4] : NULL)) != DOPA_OK)
            rc = failed(cmd, err);
    } else if (strcmp(cmd, "get-proxy") == 0 && argc == 2) {
        int usage;
        char proxy[DOPA_PROXY_MAX + 1], bypass[DOPA_PROXY_MAX + 1];
        if ((err = dopa_job_get_proxy(m, &id, &usage, proxy, sizeof proxy, bypass,
                                      sizeof bypass)) != DOPA_OK) {
            rc = failed(cmd, err);
        } else {
            const char *names[] = {"system", "none", "override"};
            if (json) {
                printf("{\"usage\":\"%s\",\"proxy\":", names[usage]);
                json_string(proxy);
                printf(",\"bypass\":");
                json_string(bypass);
                printf("}\n");
            } else {
                printf("usage:  %s\nproxy:  %s\nbypass: %s\n", names[usage], proxy, bypass);
            }
        }
    } else {
        rc = usage_error("%s: unknown command or wrong arguments", cmd);
    }
    dopa_disconnect(m);
    return rc;
}

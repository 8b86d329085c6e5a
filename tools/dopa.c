/*
 * dopa: the command line for dopad, in the manner of bitsadmin: create and
 * drive jobs, inspect them, and `dopa get URL -o FILE` for one-shot
 * downloads with a progress bar.
 *
 * Every command parses all of its words before it talks to dopad, so that a
 * usage error is exit status 2 whether or not a dopad runs. --json, --socket
 * and --help may stand anywhere on the line before a "--".
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
#include <strings.h>
#include <sys/ioctl.h>
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

/* Not an exit status: what the parsing helpers return when the command is
 * to go on. */
#define GO_ON (-1)

/* The shortest job id prefix taken: shorter ones would match by accident. */
#define JOB_PREFIX_MIN 4

static int json;
static const char *socket_path;
static char socket_tried[4096];  /* the socket dopa_connect was given */
static const char *command_name; /* for messages; NULL before the command */
static volatile sig_atomic_t interrupted;

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dopa: ");
    if (command_name != NULL)
        fprintf(stderr, "%s: ", command_name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (command_name != NULL)
        fprintf(stderr, "\nRun `dopa %s --help` for its usage.\n", command_name);
    else
        fprintf(stderr, "\nRun `dopa --help` for usage.\n");
    return EXIT_USAGE;
}

/* Says why dopad could not be reached at socket_tried, and how to start
 * one there: the system instance, the user's own, or one on a socket the
 * caller named. */
static void explain_no_daemon(void)
{
    const char *path = socket_tried, *why = "nothing answers there";
    struct stat st;
    if (stat(path, &st) != 0)
        why = errno == ENOENT ? "no socket there" : strerror(errno);
    else if (!S_ISSOCK(st.st_mode))
        why = "not a socket";
    else if (access(path, W_OK) != 0)
        why = "permission denied";
    fprintf(stderr, "dopa: cannot reach dopad at %s (%s)\n", path, why);

    const char *env = getenv("DOPA_SOCKET"), *runtime = getenv("XDG_RUNTIME_DIR");
    size_t rlen = runtime != NULL ? strlen(runtime) : 0;
    if (socket_path != NULL || (env != NULL && env[0] != '\0')) {
        fprintf(stderr,
                "dopa: start dopad there (`dopad --socket %s`), or point --socket (or "
                "$DOPA_SOCKET) at the socket of a dopad that runs\n",
                path);
    } else if (rlen > 0 && runtime[0] == '/' && strncmp(path, runtime, rlen) == 0 &&
               path[rlen] == '/') {
        /* Only a user's own socket is under its runtime directory: it was
         * chosen because it exists, so that dopad has stopped. */
        fprintf(stderr, "dopa: start dopad again, your own: `systemctl --user start dopad`, or "
                        "run `dopad` as yourself\n");
    } else if (geteuid() == 0) {
        fprintf(stderr, "dopa: start dopad, the system instance: `systemctl start dopad`, or run "
                        "`dopad`\n");
    } else {
        fprintf(stderr, "dopa: start dopad: the system instance as root (`systemctl start dopad`, "
                        "or `dopad`),\n"
                        "dopa: or your own (`systemctl --user start dopad`, or `dopad` as "
                        "yourself), which dopa then uses:\n"
                        "dopa: it listens on $XDG_RUNTIME_DIR/dopa/control.sock\n");
    }
}

/* Reports a failed call: dopad's own words when it gave some, and what to
 * do when that is clear. */
static int failed(const char *what, int err)
{
    const char *said = dopa_last_message();
    if (strcmp(said, dopa_strerror(err)) == 0)
        said = ""; /* nothing to add */
    fprintf(stderr, "dopa: %s: %s%s%s\n", what, dopa_strerror(err), said[0] ? ": " : "", said);
    if (err == DOPA_ECONNECT)
        explain_no_daemon();
    else if (err == DOPA_ENOTFOUND)
        fprintf(stderr, "dopa: `dopa list` shows your jobs\n");
    return err == DOPA_ECONNECT ? EXIT_NO_DAEMON : EXIT_REFUSED;
}

static int connect_or_fail(dopa_manager **m)
{
    if (socket_path == NULL)
        dopa_default_socket(socket_tried, sizeof socket_tried);
    else
        snprintf(socket_tried, sizeof socket_tried, "%s", socket_path);
    if (dopa_connect(socket_tried, m) != DOPA_OK) {
        explain_no_daemon();
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
            fputs(sep, stdout);
            json_string(notify_names[i].name);
            sep = ",";
            flags &= ~notify_names[i].bit;
        }
    if (flags) {
        char unknown[16];
        snprintf(unknown, sizeof unknown, "0x%" PRIx32, flags);
        fputs(sep, stdout);
        json_string(unknown);
    }
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

/* The share of the bytes that came from peers and cache hosts. */
static double peer_efficiency(uint64_t origin, uint64_t peers, uint64_t cache)
{
    uint64_t total = origin + peers + cache;
    return total ? (double)(peers + cache) / (double)total : 0.0;
}

/* The job's error as a JSON object, or null. */
static void print_error_json(const dopa_job_info *j)
{
    if (!dopa_job_info_has_error(j)) {
        printf("null");
        return;
    }
    printf("{\"context\":");
    json_string(dopa_context_name(dopa_job_info_error_context(j)));
    printf(",\"code\":%d,\"file\":%d,\"http_status\":%ld,\"message\":", dopa_job_info_error_code(j),
           dopa_job_info_error_file(j), dopa_job_info_error_http_status(j));
    json_string(dopa_job_info_error_message(j));
    putchar('}');
}

static void print_job_json(const dopa_job_info *j)
{
    char id[37];
    uint64_t origin = dopa_job_info_bytes_from_origin(j), peers = dopa_job_info_bytes_from_peers(j),
             cache = dopa_job_info_bytes_from_cache(j);
    dopa_id_format(dopa_job_info_id(j), id);
    printf("{\"id\":");
    json_string(id);
    printf(",\"owner\":%u,\"name\":", dopa_job_info_owner(j));
    json_string(dopa_job_info_display_name(j));
    printf(",\"description\":");
    json_string(dopa_job_info_description(j));
    printf(",\"state\":");
    json_string(dopa_state_name(dopa_job_info_state(j)));
    printf(",\"priority\":");
    json_string(dopa_priority_name(dopa_job_info_priority(j)));
    printf(",\"bytes_total\":");
    if (dopa_job_info_bytes_total(j) == DOPA_SIZE_UNKNOWN)
        printf("null");
    else
        printf("%" PRIu64, dopa_job_info_bytes_total(j));
    printf(",\"bytes_transferred\":%" PRIu64 ",\"files_total\":%u,\"files_transferred\":%u"
           ",\"bytes_from_origin\":%" PRIu64 ",\"bytes_from_peers\":%" PRIu64
           ",\"bytes_from_cache\":%" PRIu64 ",\"bytes_uploaded\":%" PRIu64
           ",\"peer_efficiency\":%.4f,\"created_ms\":%" PRId64 ",\"modified_ms\":%" PRId64
           ",\"transfer_completed_ms\":%" PRId64 ",\"error_count\":%u"
           ",\"minimum_retry_delay\":%u,\"no_progress_timeout\":%u,\"version\":%" PRIu64
           ",\"notify_flags\":",
           dopa_job_info_bytes_transferred(j), dopa_job_info_files_total(j),
           dopa_job_info_files_transferred(j), origin, peers, cache,
           dopa_job_info_bytes_uploaded(j), peer_efficiency(origin, peers, cache),
           dopa_job_info_created(j), dopa_job_info_modified(j), dopa_job_info_transfer_completed(j),
           dopa_job_info_error_count(j), dopa_job_info_minimum_retry_delay(j),
           dopa_job_info_no_progress_timeout(j), dopa_job_info_version(j));
    print_notify_flags_json(dopa_job_info_notify_flags(j));
    printf(",\"validation_timeout\":%u,\"validation_default\":",
           dopa_job_info_validation_timeout(j));
    json_string(dopa_job_info_validation_default_valid(j) ? "valid" : "invalid");
    printf(",\"error\":");
    print_error_json(j);
    putchar('}');
}

static void print_progress_line(const dopa_job_info *j)
{
    char done[32], total[32];
    format_bytes(dopa_job_info_bytes_transferred(j), done, sizeof done);
    if (dopa_job_info_bytes_total(j) == DOPA_SIZE_UNKNOWN)
        snprintf(total, sizeof total, "?");
    else
        format_bytes(dopa_job_info_bytes_total(j), total, sizeof total);
    printf("%s / %s, %u of %u files", done, total, dopa_job_info_files_transferred(j),
           dopa_job_info_files_total(j));
}

static void print_job_text(const dopa_job_info *j)
{
    char id[37], created[32], modified[32], completed[32];
    uint64_t origin = dopa_job_info_bytes_from_origin(j), peers = dopa_job_info_bytes_from_peers(j),
             cache = dopa_job_info_bytes_from_cache(j);
    const char *description = dopa_job_info_description(j);
    dopa_id_format(dopa_job_info_id(j), id);
    format_time(dopa_job_info_created(j), created, sizeof created);
    format_time(dopa_job_info_modified(j), modified, sizeof modified);
    format_time(dopa_job_info_transfer_completed(j), completed, sizeof completed);
    printf("job:          %s\n", id);
    printf("name:         %s\n", dopa_job_info_display_name(j));
    if (description[0])
        printf("description:  %s\n", description);
    printf("owner:        uid %u\n", dopa_job_info_owner(j));
    printf("state:        %s\n", dopa_state_name(dopa_job_info_state(j)));
    printf("priority:     %s\n", dopa_priority_name(dopa_job_info_priority(j)));
    printf("progress:     ");
    print_progress_line(j);
    printf("\nfrom:         origin %" PRIu64 ", peers %" PRIu64 ", cache host %" PRIu64
           " bytes (%.1f %% from peers)\n",
           origin, peers, cache, 100 * peer_efficiency(origin, peers, cache));
    printf("uploaded:     %" PRIu64 " bytes to peers\n", dopa_job_info_bytes_uploaded(j));
    printf("created:      %s\nmodified:     %s\ntransferred:  %s\n", created, modified, completed);
    printf("retry delay:  %u s\nno progress:  %u s\nerrors:       %u\n",
           dopa_job_info_minimum_retry_delay(j), dopa_job_info_no_progress_timeout(j),
           dopa_job_info_error_count(j));
    printf("notify:       ");
    print_notify_flags_text(dopa_job_info_notify_flags(j));
    printf("\nvalidation:   %u s, then %s\n", dopa_job_info_validation_timeout(j),
           dopa_job_info_validation_default_valid(j) ? "valid" : "invalid");
    if (!dopa_job_info_has_error(j))
        return;
    printf("error:        %s (code %d", dopa_context_name(dopa_job_info_error_context(j)),
           dopa_job_info_error_code(j));
    if (dopa_job_info_error_http_status(j))
        printf(", HTTP %ld", dopa_job_info_error_http_status(j));
    printf(") %s\n", dopa_job_info_error_message(j));
}

static int show_info(dopa_manager *m, const dopa_id *id)
{
    dopa_job_info *j;
    int err = dopa_job_get(m, id, &j);
    if (err != DOPA_OK)
        return failed("info", err);
    if (json) {
        print_job_json(j);
        putchar('\n');
    } else {
        print_job_text(j);
    }
    dopa_free(j);
    return EXIT_OK;
}

static int show_error(dopa_manager *m, const dopa_id *id)
{
    dopa_job_info *j;
    int err = dopa_job_get(m, id, &j);
    if (err != DOPA_OK)
        return failed("get-error", err);
    if (json) {
        print_error_json(j);
        putchar('\n');
    } else if (dopa_job_info_has_error(j)) {
        printf("context: %s\ncode:    %d\nfile:    %d\nhttp:    %ld\nmessage: %s\n",
               dopa_context_name(dopa_job_info_error_context(j)), dopa_job_info_error_code(j),
               dopa_job_info_error_file(j), dopa_job_info_error_http_status(j),
               dopa_job_info_error_message(j));
    } else {
        printf("no error\n");
    }
    dopa_free(j);
    return EXIT_OK;
}

static int show_list(dopa_manager *m, int all)
{
    dopa_job_info **jobs;
    size_t n;
    int err = dopa_job_list(m, all, &jobs, &n);
    if (err != DOPA_OK)
        return failed("list", err);
    if (json) {
        putchar('[');
        for (size_t i = 0; i < n; i++) {
            if (i)
                putchar(',');
            print_job_json(jobs[i]);
        }
        printf("]\n");
    } else {
        for (size_t i = 0; i < n; i++) {
            char id[37];
            dopa_id_format(dopa_job_info_id(jobs[i]), id);
            printf("%s %-15s %-10s ", id, dopa_state_name(dopa_job_info_state(jobs[i])),
                   dopa_priority_name(dopa_job_info_priority(jobs[i])));
            print_progress_line(jobs[i]);
            printf(" %s\n", dopa_job_info_display_name(jobs[i]));
        }
        if (n == 0)
            printf("no jobs\n");
    }
    dopa_free(jobs);
    return EXIT_OK;
}

static int show_files(dopa_manager *m, const dopa_id *id)
{
    dopa_file_info **files;
    size_t n;
    int err = dopa_job_list_files(m, id, &files, &n);
    if (err != DOPA_OK)
        return failed("files", err);
    if (json)
        putchar('[');
    for (size_t i = 0; i < n; i++) {
        const dopa_file_info *f = files[i];
        uint64_t size = dopa_file_info_bytes_total(f), got = dopa_file_info_bytes_transferred(f),
                 origin = dopa_file_info_bytes_from_origin(f),
                 peers = dopa_file_info_bytes_from_peers(f),
                 cache = dopa_file_info_bytes_from_cache(f);
        int transferred = dopa_file_info_is_transferred(f),
            has_manifest = dopa_file_info_has_manifest(f),
            has_sha256 = dopa_file_info_has_sha256(f);
        const char *validation = validation_name(dopa_file_info_validation(f));
        if (json) {
            printf("%s{\"remote_url\":", i ? "," : "");
            json_string(dopa_file_info_remote_url(f));
            printf(",\"local_name\":");
            json_string(dopa_file_info_local_name(f));
            printf(",\"temporary_name\":");
            json_string(dopa_file_info_temporary_name(f));
            printf(",\"bytes_total\":");
            if (size == DOPA_SIZE_UNKNOWN)
                printf("null");
            else
                printf("%" PRIu64, size);
            printf(",\"bytes_transferred\":%" PRIu64 ",\"bytes_from_origin\":%" PRIu64
                   ",\"bytes_from_peers\":%" PRIu64 ",\"bytes_from_cache\":%" PRIu64
                   ",\"ranges\":%u,\"transferred\":%s,\"manifest\":%s,\"sha256\":%s"
                   ",\"validation\":",
                   got, origin, peers, cache, dopa_file_info_ranges(f),
                   transferred ? "true" : "false", has_manifest ? "true" : "false",
                   has_sha256 ? "true" : "false");
            json_string(validation);
            putchar('}');
        } else {
            char done[32], total[32];
            format_bytes(got, done, sizeof done);
            if (size == DOPA_SIZE_UNKNOWN)
                snprintf(total, sizeof total, "?");
            else
                format_bytes(size, total, sizeof total);
            printf("%zu: %s -> %s\n   %s / %s%s%s%s, validation %s\n   from origin %" PRIu64
                   ", peers %" PRIu64 ", cache %" PRIu64 " bytes\n",
                   i, dopa_file_info_remote_url(f), dopa_file_info_local_name(f), done, total,
                   transferred ? ", transferred" : "", has_manifest ? ", manifest" : "",
                   has_sha256 ? ", sha256" : "", validation, origin, peers, cache);
        }
    }
    if (json)
        printf("]\n");
    dopa_free(files);
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
    validate_error why = {0};
    if (validate_manifest_load(path, &mf, &why) != VALIDATE_OK) {
        fprintf(stderr, "dopa: %s\n", why.text);
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
    dopa_file_options o = {.size = sizeof o,
                           .ranges = a->ranges,
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

/* Draws a progress bar on stderr (a terminal) for a running job, on one
 * line that each call redraws: narrower than the terminal, so that it
 * never wraps (a wrapped line cannot be redrawn with a carriage return). */
static void draw_progress(const dopa_job_info *j, double rate)
{
    char done[32], total[32], speed[32], text[160];
    uint64_t got = dopa_job_info_bytes_transferred(j), size = dopa_job_info_bytes_total(j);
    format_bytes(got, done, sizeof done);
    format_bytes((uint64_t)rate, speed, sizeof speed);
    if (size != DOPA_SIZE_UNKNOWN && size > 0)
        format_bytes(size, total, sizeof total);
    else
        snprintf(total, sizeof total, "?");
    int len = snprintf(text, sizeof text, "%s / %s  %s/s  %s", done, total, speed,
                       dopa_state_name(dopa_job_info_state(j)));
    /* The bar takes what the text leaves, "[] " and a last column free;
     * the text is counted as 48 columns at least, so that the bar keeps
     * its width as the numbers change. */
    int width = 30, room = 30;
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        room = ws.ws_col - (len > 48 ? len : 48) - 4;
    if (room < width)
        width = room >= 5 ? room : 0;
    char bar[32] = "";
    if (width > 0) {
        int filled = 0;
        if (size != DOPA_SIZE_UNKNOWN && size > 0)
            filled = (int)((double)got * width / (double)size);
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[width] = '\0';
    }
    /* "\033[K" clears what a longer line before left. */
    fprintf(stderr, "\r%s%s%s%s\033[K", width ? "[" : "", bar, width ? "] " : "", text);
    fflush(stderr);
}

static int is_done(int state)
{
    return state == DOPA_STATE_TRANSFERRED || state == DOPA_STATE_ERROR ||
           state == DOPA_STATE_ACKNOWLEDGED || state == DOPA_STATE_CANCELLED;
}

/* Waits for a job to finish, drawing progress on stderr if show and
 * saying on stderr when a transient error makes it retry if tell. Returns
 * the last info in *out (for dopa_free; NULL when it failed); EXIT_OK,
 * EXIT_INTERRUPTED on a signal, EXIT_TIMEOUT when timeout_s (if not 0)
 * passed first, or the exit status of a failed call. The progress line is
 * ended before it returns. */
static int follow(dopa_manager *m, const dopa_id *id, int show, int tell, int timeout_s,
                  dopa_job_info **out)
{
    int rc = EXIT_OK, drawn = 0;
    dopa_job_info *j = NULL;
    uint64_t seen = 0, last_bytes = 0;
    double rate = 0;
    struct timespec t0, last;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    last = t0;
    int last_state = -1;
    for (;;) {
        struct timespec asked, now;
        clock_gettime(CLOCK_MONOTONIC, &asked);
        dopa_free(j);
        int err = dopa_job_wait(m, id, seen, 1000, &j);
        if (err == DOPA_ELIMIT) {
            /* dopad holds too many waits: ask plainly, a little later. */
            struct timespec ts = {0, 250 * 1000 * 1000};
            nanosleep(&ts, NULL);
            err = dopa_job_get(m, id, &j);
        }
        if (err != DOPA_OK) {
            if (drawn)
                fputc('\n', stderr);
            *out = NULL;
            return failed("wait", err);
        }
        int changed = dopa_job_info_version(j) != seen, state = dopa_job_info_state(j);
        uint64_t got = dopa_job_info_bytes_transferred(j);
        seen = dopa_job_info_version(j);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!changed && now.tv_sec - asked.tv_sec < 1 &&
            now.tv_nsec - asked.tv_nsec < 100 * 1000 * 1000) {
            struct timespec ts = {0, 250 * 1000 * 1000}; /* answered at once, unchanged */
            nanosleep(&ts, NULL);
        }
        double dt = (double)(now.tv_sec - last.tv_sec) + (double)(now.tv_nsec - last.tv_nsec) / 1e9;
        if (dt >= 0.5) {
            /* A file that starts over makes the count go down: no rate. */
            double r = got >= last_bytes ? (double)(got - last_bytes) / dt : 0;
            rate = rate == 0 ? r : 0.7 * rate + 0.3 * r;
            last_bytes = got;
            last = now;
        }
        if (show) {
            draw_progress(j, rate);
            drawn = 1;
        }
        if (state == DOPA_STATE_TRANSIENT_ERROR && last_state != state &&
            dopa_job_info_has_error(j)) {
            if (show)
                fputc('\n', stderr);
            if (tell)
                fprintf(stderr, "dopa: transient error, will retry: %s\n",
                        dopa_job_info_error_message(j));
        }
        last_state = state;
        if (is_done(state))
            break;
        if (interrupted) {
            rc = EXIT_INTERRUPTED;
            break;
        }
        if (timeout_s > 0 && now.tv_sec - t0.tv_sec >= timeout_s) {
            rc = EXIT_TIMEOUT;
            break;
        }
    }
    if (show)
        fputc('\n', stderr);
    *out = j;
    return rc;
}

/* An unfinished `dopa get` job of this user for the same URL and file. */
static int find_get_job(dopa_manager *m, const char *url, const char *path, dopa_id *id)
{
    dopa_job_info **jobs;
    size_t n;
    if (dopa_job_list(m, 0, &jobs, &n) != DOPA_OK)
        return 0;
    int found = 0;
    for (size_t i = n; i-- > 0 && !found;) {
        const dopa_job_info *j = jobs[i];
        int state = dopa_job_info_state(j);
        if (state == DOPA_STATE_ACKNOWLEDGED || state == DOPA_STATE_CANCELLED ||
            dopa_job_info_files_total(j) != 1 ||
            strncmp(dopa_job_info_display_name(j), "dopa get ", 9) != 0)
            continue;
        dopa_file_info **files;
        size_t nf;
        if (dopa_job_list_files(m, dopa_job_info_id(j), &files, &nf) == DOPA_OK && nf == 1 &&
            strcmp(dopa_file_info_remote_url(files[0]), url) == 0 &&
            strcmp(dopa_file_info_local_name(files[0]), path) == 0) {
            *id = *dopa_job_info_id(j);
            found = 1;
        }
        dopa_free(files);
    }
    dopa_free(jobs);
    return found;
}

/* ------------------------------------------------------------------ */
/* The command line                                                   */

/* The options every command takes, wherever they stand before a "--". */
enum { OPT_JSON = 0x100, OPT_SOCKET, OPT_VERSION };
static const struct option global_options[] = {
    {"json", no_argument, NULL, OPT_JSON},
    {"socket", required_argument, NULL, OPT_SOCKET},
    {"help", no_argument, NULL, 'h'},
};
#define N_GLOBAL_OPTIONS (sizeof global_options / sizeof global_options[0])

/* What the value of an option is, for the message when it is missing. */
static const struct {
    const char *name, *value;
} option_values[] = {
    {"socket", "a path"},
    {"output", "a file name"},
    {"manifest", "a manifest file"},
    {"sha256", "64 hex digits"},
    {"priority", "foreground, high, normal or low"},
    {"retry-delay", "seconds"},
    {"no-progress-timeout", "seconds"},
    {"timeout", "seconds"},
    {"range", "OFFSET:LENGTH"},
};

/* More words than any command takes (set-notify-cmdline's program has at
 * most DOPA_MAX_NOTIFY_ARGS). */
#define WORDS_MAX 128

/* A command's words as getopt walks them, in order (never permuted, so
 * that what follows a "--", or the program of set-notify-cmdline, stays as
 * it was typed). */
struct words {
    int argc;
    char **argv;            /* argv[0] is the command, or the program */
    struct option opts[16]; /* the command's own options, the global ones, an end */
    char shortopts[16];
    char *args[WORDS_MAX + 1]; /* the words that are not options, NULL after the last */
    int n_args;
    int verbatim_after; /* the words after this many args are all args (0: none are) */
};

enum { WORDS_END = -1, WORDS_EXIT = -2 };

static void print_usage(FILE *out, const char *command);
static const char *command_synopsis(const char *command);

/* Starts the walk of argv with the command's own options (own, ended by
 * an entry of NULL name; own_short in getopt's form) and the global ones. */
static void words_start(struct words *w, int argc, char **argv, const char *own_short,
                        const struct option *own)
{
    memset(w, 0, sizeof *w);
    w->argc = argc;
    w->argv = argv;
    size_t n = 0, room = sizeof w->opts / sizeof w->opts[0] - N_GLOBAL_OPTIONS - 1;
    for (; own != NULL && own[n].name != NULL && n < room; n++)
        w->opts[n] = own[n];
    for (size_t i = 0; i < N_GLOBAL_OPTIONS; i++)
        w->opts[n++] = global_options[i];
    /* "-": words in order, as 1; ":": a missing value is ':', not '?'. */
    snprintf(w->shortopts, sizeof w->shortopts, "-:%sh", own_short);
    optind = 0; /* glibc: start afresh, as for a new vector */
    opterr = 0; /* the messages are ours */
}

static int words_add(struct words *w, char *word)
{
    if (w->n_args == WORDS_MAX)
        return usage_error("more than %d arguments", WORDS_MAX);
    w->args[w->n_args++] = word;
    return GO_ON;
}

/* The option that getopt just refused, as typed (--output or -o); *known
 * set when it is one of ours. */
static void words_refused(const struct words *w, int c, char *name, size_t len, int *known)
{
    const char *word = optind > 0 && optind <= w->argc ? w->argv[optind - 1] : "";
    /* getopt sets optopt to a long option's val when it needs or refuses a
     * value, to 0 for an unknown long option, else to the short option. */
    int is_long_val = 0;
    for (const struct option *p = w->opts; p->name != NULL; p++)
        is_long_val |= p->val == optopt;
    int is_short = optopt > 0 && optopt < 0x100 && strchr(w->shortopts + 2, optopt) != NULL;
    if (strncmp(word, "--", 2) == 0 && (c == ':' || optopt == 0 || is_long_val)) {
        snprintf(name, len, "%.*s", (int)strcspn(word, "="), word);
        *known = optopt != 0;
    } else {
        snprintf(name, len, "-%c", optopt);
        *known = is_short;
    }
}

/* The value an option needs, by its long name or its short letter. */
static const char *option_value(const struct words *w, const char *name)
{
    const char *long_name = name + 2; /* past the "--" */
    if (name[1] != '-') {
        long_name = "";
        for (const struct option *p = w->opts; p->name != NULL; p++)
            if (p->val == (unsigned char)name[1])
                long_name = p->name;
    }
    for (size_t i = 0; i < sizeof option_values / sizeof option_values[0]; i++)
        if (strcmp(long_name, option_values[i].name) == 0)
            return option_values[i].value;
    return "a value";
}

/* Takes the next of the command's own options from its words: their val,
 * with optarg. WORDS_END when the words are done, WORDS_EXIT when the
 * program is to exit with *rc (after --help, or a usage error that is
 * reported). The global options are taken here, the other words are
 * gathered in w->args. */
static int words_next(struct words *w, int *rc)
{
    for (;;) {
        if (w->verbatim_after > 0 && w->n_args >= w->verbatim_after) {
            for (; optind < w->argc; optind++)
                if ((*rc = words_add(w, w->argv[optind])) != GO_ON)
                    return WORDS_EXIT;
            return WORDS_END;
        }
        int c = getopt_long(w->argc, w->argv, w->shortopts, w->opts, NULL);
        char name[64];
        int known;
        switch (c) {
        case -1: /* the end, or "--": what follows are words */
            for (; optind < w->argc; optind++)
                if ((*rc = words_add(w, w->argv[optind])) != GO_ON)
                    return WORDS_EXIT;
            return WORDS_END;
        case 1:
            if ((*rc = words_add(w, optarg)) != GO_ON)
                return WORDS_EXIT;
            break;
        case OPT_JSON:
            json = 1;
            break;
        case OPT_SOCKET:
            if (optarg[0] == '\0') {
                *rc = usage_error("--socket needs a path");
                return WORDS_EXIT;
            }
            socket_path = optarg;
            break;
        case 'h':
            print_usage(stdout, command_name);
            *rc = EXIT_OK;
            return WORDS_EXIT;
        case ':':
            words_refused(w, c, name, sizeof name, &known);
            *rc = usage_error("%s needs %s", name, option_value(w, name));
            return WORDS_EXIT;
        case '?': {
            words_refused(w, c, name, sizeof name, &known);
            size_t matches = 0;
            for (const struct option *p = w->opts; p->name != NULL; p++)
                matches += strncmp(p->name, name + 2, strlen(name + 2)) == 0;
            if (known)
                *rc = usage_error("%s takes no value", name);
            else if (name[1] == '-' && matches > 1)
                *rc = usage_error("%s is ambiguous: give more of the option's name", name);
            else
                *rc = usage_error("unknown option %s", name);
            return WORDS_EXIT;
        }
        default:
            return c;
        }
    }
}

/* Checks the number of words: from min to max. GO_ON, or the exit status. */
static int words_count(const struct words *w, int min, int max)
{
    if (w->n_args < min) {
        /* The synopsis on one line. */
        char need[256];
        snprintf(need, sizeof need, "%s", command_synopsis(command_name));
        for (char *p = need; (p = strchr(p, '\n')) != NULL;)
            *p = ' ';
        return usage_error("need %s", need);
    }
    if (w->n_args > max)
        return usage_error("unexpected argument %s", w->args[max]);
    return GO_ON;
}

/* Walks the words of a command that has no options of its own and takes
 * from min to max of them: GO_ON, or the exit status. */
static int words_plain(struct words *w, int argc, char **argv, int min, int max)
{
    int rc;
    words_start(w, argc, argv, "", NULL);
    if (words_next(w, &rc) == WORDS_EXIT)
        return rc;
    return words_count(w, min, max);
}

/* Checks the form of JOB before dopad is asked: a job id, or a prefix of
 * one that can match. */
static int check_job_word(const char *text)
{
    dopa_id id;
    size_t len = strlen(text);
    if (dopa_id_parse(text, &id) == DOPA_OK)
        return GO_ON;
    if (len < JOB_PREFIX_MIN || len > 36 || strspn(text, "0123456789abcdefABCDEF-") != len)
        return usage_error("%s: not a job id: give the id, or its first %d characters or more "
                           "(`dopa list` shows them)",
                           text, JOB_PREFIX_MIN);
    return GO_ON;
}

/* Resolves JOB: a full id, or a prefix of exactly one of the caller's jobs. */
static int resolve(dopa_manager *m, const char *text, dopa_id *id)
{
    if (dopa_id_parse(text, id) == DOPA_OK)
        return EXIT_OK;
    size_t len = strlen(text);
    dopa_job_info **jobs;
    size_t n, found = 0;
    int err = dopa_job_list(m, 0, &jobs, &n);
    if (err != DOPA_OK)
        return failed("list", err);
    for (size_t i = 0; i < n; i++) {
        char s[37];
        dopa_id_format(dopa_job_info_id(jobs[i]), s);
        if (strncasecmp(s, text, len) == 0) {
            *id = *dopa_job_info_id(jobs[i]);
            found++;
        }
    }
    dopa_free(jobs);
    if (found == 1)
        return EXIT_OK;
    if (found == 0)
        fprintf(stderr, "dopa: %s: no such job\ndopa: `dopa list` shows your jobs\n", text);
    else
        fprintf(stderr,
                "dopa: %s: matches %zu jobs: give more of the id\n"
                "dopa: `dopa list` shows your jobs\n",
                text, found);
    return EXIT_REFUSED;
}

/* Connects and resolves JOB: EXIT_OK with *m to disconnect, else the exit
 * status (reported, and nothing to disconnect). */
static int open_job(const char *job, dopa_manager **m, dopa_id *id)
{
    int rc = connect_or_fail(m);
    if (rc != EXIT_OK)
        return rc;
    if ((rc = resolve(*m, job, id)) != EXIT_OK) {
        dopa_disconnect(*m);
        *m = NULL;
    }
    return rc;
}

/* Walks the words of a command of JOB and more, without options of its
 * own: from min to max words, the first a job id or prefix. GO_ON, or
 * the exit status. */
static int words_job(struct words *w, int argc, char **argv, int min, int max)
{
    int rc = words_plain(w, argc, argv, min, max);
    return rc != GO_ON ? rc : check_job_word(w->args[0]);
}

/* Walks the words of a command whose own options are flags: *seen gets the
 * val of each given. GO_ON, or the exit status. */
static int words_flags(struct words *w, int argc, char **argv, const struct option *opts, int *seen,
                       int min, int max)
{
    int c, rc = GO_ON;
    words_start(w, argc, argv, "", opts);
    while (rc == GO_ON && (c = words_next(w, &rc)) != WORDS_END)
        if (c != WORDS_EXIT)
            *seen = c;
    return rc != GO_ON ? rc : words_count(w, min, max);
}

/* Ends a command that made one call, err, on m: reports a failure (before
 * the disconnect, while the library still holds dopad's words) and
 * disconnects. The exit status. */
static int finish(dopa_manager *m, int err)
{
    int rc = err == DOPA_OK ? EXIT_OK : failed(command_name, err);
    dopa_disconnect(m);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Commands: each parses all of its words, then talks to dopad.       */

static int show_notify(dopa_manager *m, const dopa_id *id)
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
    dopa_free(args);
    return EXIT_OK;
}

static const char *const proxy_names[] = {"system", "none", "override"};

static int show_proxy(dopa_manager *m, const dopa_id *id)
{
    int usage;
    char proxy[DOPA_PROXY_MAX + 1], bypass[DOPA_PROXY_MAX + 1];
    int err = dopa_job_get_proxy(m, id, &usage, proxy, sizeof proxy, bypass, sizeof bypass);
    if (err != DOPA_OK)
        return failed("get-proxy", err);
    const char *name = usage >= 0 && usage < 3 ? proxy_names[usage] : "unknown";
    if (json) {
        printf("{\"usage\":");
        json_string(name);
        printf(",\"proxy\":");
        json_string(proxy);
        printf(",\"bypass\":");
        json_string(bypass);
        printf("}\n");
    } else {
        printf("usage:  %s\nproxy:  %s\nbypass: %s\n", name, proxy, bypass);
    }
    return EXIT_OK;
}

static int do_complete(dopa_manager *m, const dopa_id *id)
{
    int partial = 0;
    int err = dopa_job_complete(m, id, &partial);
    if (err != DOPA_OK)
        return failed("complete", err);
    if (json)
        printf("{\"partial\":%s}\n", partial ? "true" : "false");
    else if (partial)
        fprintf(stderr, "dopa: partial complete: only the transferred files were kept\n");
    return EXIT_OK;
}

static int cmd_get(int argc, char **argv)
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
    int priority = DOPA_PRIORITY_FOREGROUND, quiet = 0, c, rc = GO_ON;
    uint32_t retry = 5, no_progress = 300;
    struct words w;
    words_start(&w, argc, argv, "o:q", opts);
    while (rc == GO_ON && (c = words_next(&w, &rc)) != WORDS_END) {
        switch (c) {
        case WORDS_EXIT:
            break;
        case 'o':
            output = optarg;
            break;
        case 's':
        case 'm':
            if ((rc = check_option(c, optarg, &fa)) == EXIT_OK)
                rc = GO_ON;
            break;
        case 'p':
            if (parse_priority(optarg, &priority) != 0)
                rc = usage_error("--priority %s: foreground, high, normal or low", optarg);
            break;
        case 'r':
            if (parse_seconds(optarg, &retry) != 0)
                rc = usage_error("--retry-delay %s: need seconds", optarg);
            break;
        case 'n':
            if (parse_seconds(optarg, &no_progress) != 0)
                rc = usage_error("--no-progress-timeout %s: need seconds", optarg);
            break;
        case 'q':
            quiet = 1;
            break;
        }
    }
    char path[DOPA_PATH_MAX + 1];
    if (rc != GO_ON)
        goto done;
    if (w.n_args != 1 || output == NULL) {
        rc = usage_error("need URL and -o FILE");
        goto done;
    }
    if (absolute_path(output, path, sizeof path) != 0) {
        rc = usage_error("%s: path too long", output);
        goto done;
    }

    dopa_manager *m = NULL;
    dopa_job_info *j = NULL;
    if ((rc = connect_or_fail(&m)) != EXIT_OK)
        goto done;
    const char *url = w.args[0];
    dopa_id id;
    int err, resumed = find_get_job(m, url, path, &id);
    if (!resumed) {
        char name[DOPA_NAME_MAX + 1];
        const char *base = strrchr(path, '/') + 1;
        snprintf(name, sizeof name, "dopa get %.200s", base);
        if ((err = dopa_job_create(m, name, DOPA_JOB_DOWNLOAD, &id)) != DOPA_OK) {
            rc = failed("create", err);
            goto disconnect;
        }
        dopa_file_options fo = file_options(&fa);
        if ((err = dopa_job_add_file(m, &id, url, path, &fo)) != DOPA_OK) {
            rc = failed("add-file", err);
            dopa_job_cancel(m, &id);
            goto disconnect;
        }
        dopa_job_set_priority(m, &id, priority);
        dopa_job_set_minimum_retry_delay(m, &id, retry);
        dopa_job_set_no_progress_timeout(m, &id, no_progress);
    } else if (!quiet && !json) {
        fprintf(stderr, "dopa: resuming the earlier download of %s\n", path);
    }
    if ((err = dopa_job_resume(m, &id)) != DOPA_OK) {
        rc = failed("resume", err);
        goto disconnect;
    }

    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    /* Progress only for a person watching: on a terminal, not asked to be
     * quiet, and not into a JSON reader. */
    rc = follow(m, &id, !quiet && !json && isatty(STDERR_FILENO), !quiet && !json, 0, &j);
    if (rc == EXIT_INTERRUPTED) {
        dopa_job_suspend(m, &id);
        fprintf(stderr, "dopa: interrupted; run the same command again to resume\n");
        goto disconnect;
    }
    if (rc != EXIT_OK)
        goto disconnect;
    if (dopa_job_info_state(j) != DOPA_STATE_TRANSFERRED) {
        if (json) {
            print_job_json(j);
            putchar('\n');
        } else {
            fprintf(stderr, "dopa: %s: %s (%s)\n", url,
                    dopa_job_info_has_error(j) ? dopa_job_info_error_message(j)
                                               : dopa_state_name(dopa_job_info_state(j)),
                    dopa_context_name(dopa_job_info_error_context(j)));
            fprintf(stderr, "dopa: the job is kept; run the same command again to retry\n");
        }
        rc = EXIT_FAILED;
        goto disconnect;
    }
    if ((err = dopa_job_complete(m, &id, NULL)) != DOPA_OK) {
        rc = failed("complete", err);
        goto disconnect;
    }
    if (json) {
        printf("{\"file\":");
        json_string(path);
        printf(",\"bytes\":%" PRIu64 ",\"from_origin\":%" PRIu64 ",\"from_peers\":%" PRIu64
               ",\"from_cache\":%" PRIu64 "}\n",
               dopa_job_info_bytes_transferred(j), dopa_job_info_bytes_from_origin(j),
               dopa_job_info_bytes_from_peers(j), dopa_job_info_bytes_from_cache(j));
    } else if (!quiet) {
        char size[32];
        format_bytes(dopa_job_info_bytes_transferred(j), size, sizeof size);
        printf("%s: %s\n", path, size);
    }
disconnect:
    dopa_free(j);
    dopa_disconnect(m);
done:
    free(fa.manifest);
    return rc;
}

static int cmd_add_file(int argc, char **argv)
{
    static const struct option opts[] = {
        {"range", required_argument, NULL, 'r'},
        {"sha256", required_argument, NULL, 's'},
        {"manifest", required_argument, NULL, 'm'},
        {NULL, 0, NULL, 0},
    };
    struct file_args fa = {0};
    int c, rc = GO_ON;
    struct words w;
    words_start(&w, argc, argv, "", opts);
    while (rc == GO_ON && (c = words_next(&w, &rc)) != WORDS_END) {
        switch (c) {
        case WORDS_EXIT:
            break;
        case 'r':
            if (fa.n_ranges == sizeof fa.ranges / sizeof fa.ranges[0])
                rc = usage_error("at most 64 --range options");
            else if (parse_range(optarg, &fa.ranges[fa.n_ranges]) != 0)
                rc = usage_error("--range %s: need OFFSET:LENGTH (LENGTH may be eof)", optarg);
            else
                fa.n_ranges++;
            break;
        case 's':
        case 'm':
            if ((rc = check_option(c, optarg, &fa)) == EXIT_OK)
                rc = GO_ON;
            break;
        }
    }
    char path[DOPA_PATH_MAX + 1];
    if (rc != GO_ON || (rc = words_count(&w, 3, 3)) != GO_ON ||
        (rc = check_job_word(w.args[0])) != GO_ON)
        goto done;
    if (absolute_path(w.args[2], path, sizeof path) != 0) {
        rc = usage_error("%s: path too long", w.args[2]);
        goto done;
    }
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        goto done;
    dopa_file_options fo = file_options(&fa);
    int err = dopa_job_add_file(m, &id, w.args[1], path, &fo);
    rc = err == DOPA_OK ? EXIT_OK : failed("add-file", err);
    dopa_disconnect(m);
done:
    free(fa.manifest);
    return rc;
}

static int cmd_create(int argc, char **argv)
{
    struct words w;
    int rc = words_plain(&w, argc, argv, 0, 1);
    if (rc != GO_ON)
        return rc;
    dopa_manager *m;
    if ((rc = connect_or_fail(&m)) != EXIT_OK)
        return rc;
    dopa_id id;
    int err = dopa_job_create(m, w.n_args == 1 ? w.args[0] : "", DOPA_JOB_DOWNLOAD, &id);
    if (err != DOPA_OK) {
        rc = failed("create", err);
    } else {
        char s[37];
        dopa_id_format(&id, s);
        if (json) {
            printf("{\"id\":");
            json_string(s);
            printf("}\n");
        } else {
            printf("%s\n", s);
        }
    }
    dopa_disconnect(m);
    return rc;
}

static int cmd_list(int argc, char **argv)
{
    static const struct option opts[] = {
        {"all", no_argument, NULL, 'a'},
        {NULL, 0, NULL, 0},
    };
    int all = 0;
    struct words w;
    int rc = words_flags(&w, argc, argv, opts, &all, 0, 0);
    if (rc != GO_ON)
        return rc;
    dopa_manager *m;
    if ((rc = connect_or_fail(&m)) != EXIT_OK)
        return rc;
    rc = show_list(m, all != 0);
    dopa_disconnect(m);
    return rc;
}

/* Shows the list, or one job, every second until interrupted. On a
 * terminal the screen is cleared first; elsewhere each showing is plain
 * text (with --json one document a line), without control characters. */
static int cmd_monitor(int argc, char **argv)
{
    struct words w;
    int rc = words_plain(&w, argc, argv, 0, 1);
    if (rc != GO_ON || (w.n_args == 1 && (rc = check_job_word(w.args[0])) != GO_ON))
        return rc;
    dopa_manager *m;
    dopa_id id;
    int one = w.n_args == 1;
    if ((rc = one ? open_job(w.args[0], &m, &id) : connect_or_fail(&m)) != EXIT_OK)
        return rc;
    signal(SIGINT, on_interrupt);
    signal(SIGTERM, on_interrupt);
    int tty = isatty(STDOUT_FILENO);
    while (!interrupted) {
        if (tty)
            printf("\033[H\033[2J");
        if ((rc = one ? show_info(m, &id) : show_list(m, 0)) != EXIT_OK)
            break;
        /* A reader that went away ends it, as it would end `watch`. */
        if (fflush(stdout) != 0 || ferror(stdout)) {
            rc = EXIT_REFUSED;
            break;
        }
        for (int i = 0; i < 10 && !interrupted; i++) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    dopa_disconnect(m);
    return rc;
}

static int cmd_wait(int argc, char **argv)
{
    static const struct option opts[] = {
        {"timeout", required_argument, NULL, 't'},
        {"quiet", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0},
    };
    uint32_t timeout = 0;
    int quiet = 0, c, rc = GO_ON;
    struct words w;
    words_start(&w, argc, argv, "q", opts);
    while (rc == GO_ON && (c = words_next(&w, &rc)) != WORDS_END) {
        if (c == 't' && parse_seconds(optarg, &timeout) != 0)
            rc = usage_error("--timeout %s: need seconds", optarg);
        else if (c == 'q')
            quiet = 1;
    }
    if (rc != GO_ON || (rc = words_count(&w, 1, 1)) != GO_ON ||
        (rc = check_job_word(w.args[0])) != GO_ON)
        return rc;
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    signal(SIGINT, on_interrupt);
    dopa_job_info *j;
    rc =
        follow(m, &id, !quiet && !json && isatty(STDERR_FILENO), !quiet && !json, (int)timeout, &j);
    if (rc == EXIT_OK || rc == EXIT_TIMEOUT) {
        if (json) {
            print_job_json(j);
            putchar('\n');
        } else {
            printf("%s\n", dopa_state_name(dopa_job_info_state(j)));
        }
        if (rc == EXIT_OK)
            rc = dopa_job_info_state(j) == DOPA_STATE_ERROR ? EXIT_FAILED : EXIT_OK;
    }
    dopa_free(j);
    dopa_disconnect(m);
    return rc;
}

/* The commands that name a job and change one of its settings. */
static int cmd_set_priority(int argc, char **argv)
{
    struct words w;
    int p, rc = words_job(&w, argc, argv, 2, 2);
    if (rc != GO_ON)
        return rc;
    if (parse_priority(w.args[1], &p) != 0)
        return usage_error("%s: foreground, high, normal or low", w.args[1]);
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, dopa_job_set_priority(m, &id, p));
}

/* set-name and set-description. */
static int cmd_set_text(int argc, char **argv)
{
    struct words w;
    int rc = words_job(&w, argc, argv, 2, 2);
    if (rc != GO_ON)
        return rc;
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, strcmp(command_name, "set-name") == 0
                         ? dopa_job_set_display_name(m, &id, w.args[1])
                         : dopa_job_set_description(m, &id, w.args[1]));
}

/* set-min-retry-delay and set-no-progress-timeout. */
static int cmd_set_seconds(int argc, char **argv)
{
    struct words w;
    uint32_t s;
    int rc = words_job(&w, argc, argv, 2, 2);
    if (rc != GO_ON)
        return rc;
    if (parse_seconds(w.args[1], &s) != 0)
        return usage_error("%s: need seconds (a whole number, at least 1)", w.args[1]);
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, strcmp(command_name, "set-min-retry-delay") == 0
                         ? dopa_job_set_minimum_retry_delay(m, &id, s)
                         : dopa_job_set_no_progress_timeout(m, &id, s));
}

static int cmd_set_proxy(int argc, char **argv)
{
    struct words w;
    int usage = -1, rc = words_job(&w, argc, argv, 2, 4);
    if (rc != GO_ON)
        return rc;
    for (int i = 0; i < 3; i++)
        if (strcmp(w.args[1], proxy_names[i]) == 0)
            usage = i;
    if (usage < 0)
        return usage_error("%s: system, none or override", w.args[1]);
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, dopa_job_set_proxy(m, &id, usage, w.n_args > 2 ? w.args[2] : NULL,
                                        w.n_args > 3 ? w.args[3] : NULL));
}

static int cmd_set_notify_flags(int argc, char **argv)
{
    struct words w;
    int rc = words_job(&w, argc, argv, 2, WORDS_MAX);
    if (rc != GO_ON)
        return rc;
    uint32_t flags = 0;
    for (int i = 1; i < w.n_args; i++) {
        uint32_t f;
        if (parse_notify_flag(w.args[i], &f) != 0)
            return usage_error("%s: not transferred, error, modification, file-transferred, "
                               "disable, default or none",
                               w.args[i]);
        flags |= f;
    }
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, dopa_job_set_notify_flags(m, &id, flags));
}

/* The program is checked here, before dopad sees it, so that a relative
 * name gets a plain explanation rather than a refusal. The words after JOB
 * are the program's, options and all. */
static int cmd_set_notify_cmdline(int argc, char **argv)
{
    struct words w;
    int rc;
    words_start(&w, argc, argv, "", NULL);
    w.verbatim_after = 1;
    if (words_next(&w, &rc) == WORDS_EXIT)
        return rc;
    if ((rc = words_count(&w, 2, WORDS_MAX)) != GO_ON || (rc = check_job_word(w.args[0])) != GO_ON)
        return rc;
    int first = 1; /* index of PROGRAM */
    if (strcmp(w.args[1], "--clear") == 0) {
        if (w.n_args != 2)
            return usage_error("--clear takes nothing after it");
        first = w.n_args;
    } else if (strcmp(w.args[1], "--") == 0) {
        first = 2;
        if (first == w.n_args)
            return usage_error("need PROGRAM after --");
    } else if (w.args[1][0] == '-') {
        return usage_error("unknown option %s (the words after JOB are the program's; "
                           "options go before JOB)",
                           w.args[1]);
    }
    if (first < w.n_args) {
        if (w.args[first][0] != '/')
            return usage_error("%s: PROGRAM must be an absolute path "
                               "(dopad runs it directly, without a shell or $PATH)",
                               w.args[first]);
        if (w.n_args - first > DOPA_MAX_NOTIFY_ARGS)
            return usage_error("at most %d arguments, PROGRAM included", DOPA_MAX_NOTIFY_ARGS);
        for (int i = first; i < w.n_args; i++)
            if (strlen(w.args[i]) > DOPA_NOTIFY_ARG_MAX)
                return usage_error("an argument longer than %d bytes", DOPA_NOTIFY_ARG_MAX);
    }
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    /* w.args[n_args] is NULL, as the library wants; --clear passes NULL. */
    return finish(m, dopa_job_set_notify_cmdline(
                         m, &id, first < w.n_args ? (const char *const *)&w.args[first] : NULL));
}

static int cmd_validate(int argc, char **argv)
{
    struct words w;
    uint64_t index;
    int valid, rc = words_job(&w, argc, argv, 3, 3);
    if (rc != GO_ON)
        return rc;
    if (parse_u64(w.args[1], &index) != 0 || index > UINT32_MAX)
        return usage_error("%s: need a file index, as `dopa files` numbers them", w.args[1]);
    if (parse_verdict(w.args[2], &valid) != 0)
        return usage_error("%s: valid or invalid", w.args[2]);
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, dopa_file_set_validation_state(m, &id, (uint32_t)index, valid));
}

static int cmd_set_validation_policy(int argc, char **argv)
{
    struct words w;
    uint32_t seconds;
    int valid, rc = words_job(&w, argc, argv, 3, 3);
    if (rc != GO_ON)
        return rc;
    if (parse_seconds(w.args[1], &seconds) != 0)
        return usage_error("%s: need seconds", w.args[1]);
    if (parse_verdict(w.args[2], &valid) != 0)
        return usage_error("%s: valid or invalid", w.args[2]);
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    return finish(m, dopa_job_set_validation_policy(m, &id, seconds, valid));
}

static int cmd_whoami(int argc, char **argv)
{
    struct words w;
    int rc = words_plain(&w, argc, argv, 0, 0);
    if (rc != GO_ON)
        return rc;
    dopa_manager *m;
    if ((rc = connect_or_fail(&m)) != EXIT_OK)
        return rc;
    uint32_t uid;
    char version[64];
    int err = dopa_whoami(m, &uid, version, sizeof version);
    if (err != DOPA_OK) {
        rc = failed("whoami", err);
    } else if (json) {
        printf("{\"uid\":%u,\"version\":", uid);
        json_string(version);
        printf("}\n");
    } else {
        printf("uid %u, dopad %s\n", uid, version);
    }
    dopa_disconnect(m);
    return rc;
}

/* The agent's counters. */
static int cmd_stats(int argc, char **argv)
{
    struct words w;
    int rc = words_plain(&w, argc, argv, 0, 0);
    if (rc != GO_ON)
        return rc;
    dopa_manager *m;
    if ((rc = connect_or_fail(&m)) != EXIT_OK)
        return rc;
    dopa_agent_stats s = DOPA_AGENT_STATS_INIT;
    int err = dopa_agent_stats_get(m, &s);
    rc = err == DOPA_OK ? EXIT_OK : failed("stats", err);
    dopa_disconnect(m);
    if (rc != EXIT_OK)
        return rc;
    double eff = peer_efficiency(s.from_origin, s.from_peers, s.from_cache);
    if (json) {
        printf("{\"jobs\":%" PRIu64 ",\"from_origin\":%" PRIu64 ",\"from_peers\":%" PRIu64
               ",\"from_cache\":%" PRIu64 ",\"peer_efficiency\":%.4f,\"uploaded\":%" PRIu64
               ",\"peers\":%" PRIu64 ",\"banned\":%" PRIu64 ",\"bans\":%" PRIu64
               ",\"bad_pieces\":%" PRIu64 ",\"timeouts\":%" PRIu64 ",\"refused\":%" PRIu64
               ",\"cache_entries\":%" PRIu64 ",\"cache_bytes\":%" PRIu64 ",\"cache_limit\":%" PRIu64
               ",\"origin_failures\":%" PRIu64 ",\"origin_peak\":%" PRIu64
               ",\"control_sent\":%" PRIu64 ",\"control_received\":%" PRIu64 ",\"peer_url\":",
               s.jobs, s.from_origin, s.from_peers, s.from_cache, eff, s.uploaded, s.peers,
               s.banned, s.bans, s.bad_pieces, s.timeouts, s.refused, s.cache_entries,
               s.cache_bytes, s.cache_limit, s.origin_failures, s.origin_peak, s.control_sent,
               s.control_received);
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
    printf("origin:       %" PRIu64 " requests at most at once, %" PRIu64
           " failed or stalled while peers went on\n",
           s.origin_peak, s.origin_failures);
    if (s.peer_url[0] == '\0') {
        printf("peers:        none (no group key configured)\n");
    } else {
        printf("peers:        %" PRIu64 " known, %" PRIu64 " banned now; serving on %s\n", s.peers,
               s.banned, s.peer_url);
        printf("trouble:      %" PRIu64 " bans, %" PRIu64 " bad pieces, %" PRIu64
               " timeouts, %" PRIu64 " messages refused\n",
               s.bans, s.bad_pieces, s.timeouts, s.refused);
        printf("messages:     %" PRIu64 " sent, %" PRIu64
               " received besides pieces (availability, beacons)\n",
               s.control_sent, s.control_received);
    }
    printf("cache:        %" PRIu64 " entries, %s of %s\n", s.cache_entries, cb, cl);
    return EXIT_OK;
}

/* Writes a new group key file; needs no dopad. */
static int cmd_group_key(int argc, char **argv)
{
    static const struct option opts[] = {
        {"force", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    int force = 0;
    struct words w;
    int rc = words_flags(&w, argc, argv, opts, &force, 1, 1);
    if (rc != GO_ON)
        return rc;
    const char *path = w.args[0];
    uint8_t key[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    peer_group_key_generate(key);
    int err = peer_group_key_save(key, path, force != 0, &why);
    sodium_memzero(key, sizeof key);
    if (err != PEER_OK) {
        fprintf(stderr, "dopa: group-key: %s\n", why.text);
        if (err == PEER_EEXISTS)
            fprintf(stderr, "dopa: give --force to replace it\n");
        return EXIT_REFUSED;
    }
    if (json) {
        printf("{\"group_key_file\":");
        json_string(path);
        printf("}\n");
    } else {
        printf("wrote %s; copy it (mode 0600) to every agent of the group\n", path);
    }
    return EXIT_OK;
}

static int cmd_help(int argc, char **argv)
{
    struct words w;
    int rc = words_plain(&w, argc, argv, 0, 1);
    if (rc != GO_ON)
        return rc;
    if (w.n_args == 1 && command_synopsis(w.args[0]) == NULL) {
        command_name = NULL;
        return usage_error("%s: unknown command", w.args[0]);
    }
    print_usage(stdout, w.n_args == 1 ? w.args[0] : NULL);
    return EXIT_OK;
}

/* ------------------------------------------------------------------ */
/* The commands, their help, and main                                 */

enum { SECTION_GET, SECTION_JOBS, SECTION_NOTIFY, SECTION_PEERS, N_SECTIONS };

/* A command: where --help lists it, its words after the name (lines after the first are the
 * synopsis going on), what it does (lines of at most 48 columns), more
 * for its own --help, and how it runs: run, or for a command of JOB alone
 * the library call act or the function show. */
struct command {
    int section;
    const char *name, *synopsis, *summary, *details;
    int (*run)(int argc, char **argv);
    int (*act)(dopa_manager *m, const dopa_id *id);
    int (*show)(dopa_manager *m, const dopa_id *id);
};

static const char *const section_titles[N_SECTIONS] = {
    "one-shot download:",
    "jobs (JOB is a job id, or its first 4 characters or more when no other of\n"
    "your jobs starts with them):",
    "notifications and validation:",
    "peers:",
};

static const struct command commands[] = {
    {.section = SECTION_GET,
     .name = "get",
     .synopsis = "URL -o|--output FILE [--sha256 HEX] [--manifest FILE]\n"
                 "[--priority P] [--retry-delay SECS] [--no-progress-timeout SECS]\n"
                 "[-q|--quiet]",
     .summary = "download through dopad, with a progress bar\n"
                "on a terminal; run the same command again to\n"
                "resume an interrupted or failed download",
     .details = "  -o, --output FILE             where the file goes (required)\n"
                "  --sha256 HEX                  the expected SHA-256 of the whole file\n"
                "  --manifest FILE               a signed manifest for it (dopa-manifest(1))\n"
                "  --priority P                  foreground (the default), high, normal or low\n"
                "  --retry-delay SECS            the wait after a transient error (5)\n"
                "  --no-progress-timeout SECS    how long transient errors may go on without\n"
                "                                progress before the job fails (300)\n"
                "  -q, --quiet                   no progress bar and no messages on success\n"
                "\nExit status 1 when the download failed (the job is kept), 130 when\n"
                "interrupted (the job is suspended).\n",
     .run = cmd_get},
    {.section = SECTION_JOBS,
     .name = "create",
     .synopsis = "[NAME]",
     .summary = "make a job (SUSPENDED) and print its id",
     .run = cmd_create},
    {.section = SECTION_JOBS,
     .name = "add-file",
     .synopsis = "JOB URL FILE [--range OFFSET:LENGTH]... [--sha256 HEX]\n[--manifest FILE]",
     .summary = "add a file to the job: URL to FILE",
     .details = "  --range OFFSET:LENGTH         only these bytes of URL (LENGTH may be eof);\n"
                "                                repeat for more, at most 64\n"
                "  --sha256 HEX                  the expected SHA-256 of the whole file\n"
                "  --manifest FILE               a signed manifest for it (dopa-manifest(1))\n",
     .run = cmd_add_file},
    {.section = SECTION_JOBS,
     .name = "resume",
     .synopsis = "JOB",
     .summary = "start or restart the transfer",
     .act = dopa_job_resume},
    {.section = SECTION_JOBS,
     .name = "suspend",
     .synopsis = "JOB",
     .summary = "stop it until resume",
     .act = dopa_job_suspend},
    {.section = SECTION_JOBS,
     .name = "cancel",
     .synopsis = "JOB",
     .summary = "stop it for good, deleting its temporary files",
     .act = dopa_job_cancel},
    {.section = SECTION_JOBS,
     .name = "complete",
     .synopsis = "JOB",
     .summary = "make its files visible at their destinations\n"
                "(before TRANSFERRED: those that are)",
     .show = do_complete},
    {.section = SECTION_JOBS,
     .name = "take-ownership",
     .synopsis = "JOB",
     .summary = "make another user's job yours (root only)",
     .act = dopa_job_take_ownership},
    {.section = SECTION_JOBS,
     .name = "info",
     .synopsis = "JOB",
     .summary = "the job's properties, progress and error",
     .show = show_info},
    {.section = SECTION_JOBS,
     .name = "files",
     .synopsis = "JOB",
     .summary = "its files, numbered from 0",
     .show = show_files},
    {.section = SECTION_JOBS,
     .name = "get-error",
     .synopsis = "JOB",
     .summary = "its error, if any",
     .show = show_error},
    {.section = SECTION_JOBS,
     .name = "list",
     .synopsis = "[--all]",
     .summary = "your jobs (--all: everyone's, root only)",
     .run = cmd_list},
    {.section = SECTION_JOBS,
     .name = "monitor",
     .synopsis = "[JOB]",
     .summary = "the list (or one job) every second until\n"
                "interrupted; the screen is cleared on a\n"
                "terminal only",
     .run = cmd_monitor},
    {.section = SECTION_JOBS,
     .name = "wait",
     .synopsis = "JOB [--timeout SECS] [-q|--quiet]",
     .summary = "until TRANSFERRED (0), ERROR (1) or the\n"
                "timeout (5); a progress bar on a terminal",
     .details = "  --timeout SECS                give up after SECS seconds (exit status 5)\n"
                "  -q, --quiet                   no progress bar\n",
     .run = cmd_wait},
    {.section = SECTION_JOBS,
     .name = "set-priority",
     .synopsis = "JOB foreground|high|normal|low",
     .summary = "the order in which jobs transfer",
     .run = cmd_set_priority},
    {.section = SECTION_JOBS,
     .name = "set-name",
     .synopsis = "JOB NAME",
     .summary = "its display name",
     .run = cmd_set_text},
    {.section = SECTION_JOBS,
     .name = "set-description",
     .synopsis = "JOB TEXT",
     .summary = "its description",
     .run = cmd_set_text},
    {.section = SECTION_JOBS,
     .name = "set-min-retry-delay",
     .synopsis = "JOB SECS",
     .summary = "the wait after a transient error",
     .run = cmd_set_seconds},
    {.section = SECTION_JOBS,
     .name = "set-no-progress-timeout",
     .synopsis = "JOB SECS",
     .summary = "how long transient errors may go on without\n"
                "progress before the job is in ERROR",
     .run = cmd_set_seconds},
    {.section = SECTION_JOBS,
     .name = "set-proxy",
     .synopsis = "JOB system|none|override [PROXY [BYPASS]]",
     .summary = "how the job reaches the origin: dopad's\n"
                "environment, directly, or PROXY except for\n"
                "the hosts in BYPASS",
     .run = cmd_set_proxy},
    {.section = SECTION_JOBS,
     .name = "get-proxy",
     .synopsis = "JOB",
     .summary = "its proxy settings",
     .show = show_proxy},
    {.section = SECTION_JOBS,
     .name = "whoami",
     .synopsis = "",
     .summary = "your uid as dopad sees it, and its version",
     .run = cmd_whoami},
    {.section = SECTION_JOBS,
     .name = "help",
     .synopsis = "[COMMAND]",
     .summary = "this text, or one command's",
     .run = cmd_help},
    {.section = SECTION_NOTIFY,
     .name = "set-notify-flags",
     .synopsis = "JOB FLAG...",
     .summary = "the events the job reports, several OR\n"
                "together: transferred, error, modification,\n"
                "file-transferred (each file waits for\n"
                "`validate`), disable (none at all); or\n"
                "default (transferred error), or none",
     .run = cmd_set_notify_flags},
    {.section = SECTION_NOTIFY,
     .name = "set-notify-cmdline",
     .synopsis = "JOB [--] PROGRAM [ARG...] | JOB --clear",
     .summary = "when an event fires that no client takes,\n"
                "dopad runs PROGRAM (an absolute path) with\n"
                "these arguments, as the job's owner and\n"
                "without a shell; DOPA_JOB_ID and DOPA_EVENT\n"
                "are in its environment; --clear: no program",
     .details = "The words after JOB are the program's, options and all.\n",
     .run = cmd_set_notify_cmdline},
    {.section = SECTION_NOTIFY,
     .name = "get-notify",
     .synopsis = "JOB",
     .summary = "the flags and the program",
     .show = show_notify},
    {.section = SECTION_NOTIFY,
     .name = "validate",
     .synopsis = "JOB FILE-INDEX valid|invalid",
     .summary = "the verdict on a file that waits for one;\n"
                "FILE-INDEX as `files` numbers them, from 0",
     .run = cmd_validate},
    {.section = SECTION_NOTIFY,
     .name = "set-validation-policy",
     .synopsis = "JOB SECS valid|invalid",
     .summary = "how long a file waits for its verdict, and\n"
                "the verdict when none comes",
     .run = cmd_set_validation_policy},
    {.section = SECTION_PEERS,
     .name = "stats",
     .synopsis = "",
     .summary = "the agent's counters: bytes by source,\n"
                "uploads, peers, bans, the content cache",
     .run = cmd_stats},
    {.section = SECTION_PEERS,
     .name = "group-key",
     .synopsis = "FILE [--force]",
     .summary = "make a new group key (mode 0600); agents\n"
                "whose [peers] group-key names a copy of it\n"
                "form a group; needs no dopad",
     .details = "  --force                       replace FILE if it exists\n",
     .run = cmd_group_key},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const char usage_head[] = "usage: dopa [--socket PATH] [--json] COMMAND [ARGUMENT...]\n"
                                 "       dopa COMMAND --help\n"
                                 "       dopa --help | --version\n";

static const char usage_options[] =
    "options, before or after the command (up to a \"--\"):\n"
    "  --socket PATH, --socket=PATH  the control socket of the dopad to use\n"
    "                                (default: $DOPA_SOCKET, else your own dopad's\n"
    "                                if it runs, else /run/dopa/control.sock)\n"
    "  --json                        print one JSON document instead of text\n"
    "  -h, --help                    this text, or after a command its own\n"
    "  --version                     dopa's version (before the command)\n";

static const char usage_exit[] =
    "exit codes: 0 success; 1 the job failed; 2 usage error; 3 dopad not reachable;\n"
    "4 request refused or other error; 5 wait timed out before the job finished;\n"
    "130 interrupted.\n";

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; name != NULL && i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static const char *command_synopsis(const char *name)
{
    const struct command *c = find_command(name);
    return c != NULL ? c->synopsis : NULL;
}

/* Writes text's lines, the first where the output stands, the others
 * after indent spaces. */
static void put_lines(FILE *out, const char *text, int indent)
{
    for (const char *p = text; *p;) {
        size_t n = strcspn(p, "\n");
        fprintf(out, "%.*s\n", (int)n, p);
        p += n;
        if (*p == '\n' && *++p)
            fprintf(out, "%*s", indent, "");
    }
}

/* A command in the list of all: its synopsis, then what it does from
 * column 32 (on the next line when the synopsis reaches that far). */
static void print_command_entry(FILE *out, const struct command *c)
{
    const char *syn = c->synopsis;
    size_t n = strcspn(syn, "\n");
    int col = fprintf(out, "  %s%s%.*s", c->name, syn[0] ? " " : "", (int)n, syn);
    for (syn += n; *syn == '\n'; syn += n) {
        syn++;
        n = strcspn(syn, "\n");
        col = fprintf(out, "\n      %.*s", (int)n, syn) - 1;
    }
    if (col < 31)
        fprintf(out, "%*s", 32 - col, "");
    else
        fprintf(out, "\n%32s", "");
    put_lines(out, c->summary, 32);
}

/* The usage of dopa (command NULL), or of one command. */
static void print_usage(FILE *out, const char *command)
{
    const struct command *c = find_command(command);
    if (c == NULL) {
        fputs(usage_head, out);
        for (int s = 0; s < N_SECTIONS; s++) {
            fprintf(out, "\n%s\n", section_titles[s]);
            for (size_t i = 0; i < N_COMMANDS; i++)
                if (commands[i].section == s)
                    print_command_entry(out, &commands[i]);
        }
        fprintf(out, "\n%s\n%s", usage_options, usage_exit);
        return;
    }
    int col = fprintf(out, "usage: dopa %s%s", c->name, c->synopsis[0] ? " " : "");
    put_lines(out, c->synopsis[0] ? c->synopsis : "\n", col);
    fputc('\n', out);
    put_lines(out, c->summary, 0);
    if (c->details != NULL) {
        fputc('\n', out);
        fputs(c->details, out);
    }
    if (strstr(c->synopsis, "JOB") != NULL)
        fprintf(out,
                "\nJOB is a job id, or its first %d characters or more when no other of your\n"
                "jobs starts with them (`dopa list` shows them).\n",
                JOB_PREFIX_MIN);
    fprintf(out, "\n--json, --socket PATH and -h/--help may stand before or after the command;\n"
                 "`dopa --help` lists every command and the exit codes.\n");
}

/* The commands of JOB alone: resume, info, complete and the like. */
static int cmd_job(const struct command *c, int argc, char **argv)
{
    struct words w;
    int rc = words_job(&w, argc, argv, 1, 1);
    if (rc != GO_ON)
        return rc;
    dopa_manager *m;
    dopa_id id;
    if ((rc = open_job(w.args[0], &m, &id)) != EXIT_OK)
        return rc;
    if (c->act != NULL)
        return finish(m, c->act(m, &id));
    rc = c->show(m, &id);
    dopa_disconnect(m);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    /* The options before the command, then the command from its name on:
     * the first word that is not an option ends this walk. */
    struct words w;
    int c, rc = GO_ON, version = 0;
    words_start(&w, argc, argv, "", opts);
    w.verbatim_after = 1;
    while (rc == GO_ON && (c = words_next(&w, &rc)) != WORDS_END)
        version |= c == OPT_VERSION;
    if (rc == GO_ON && version) {
        if (json) {
            printf("{\"version\":");
            json_string(DOPA_VERSION);
            printf("}\n");
        } else {
            printf("dopa %s\n", DOPA_VERSION);
        }
        return EXIT_OK;
    }
    if (rc != GO_ON)
        return rc;
    if (w.n_args == 0)
        return usage_error("missing command");
    const struct command *cmd = find_command(w.args[0]);
    if (cmd == NULL)
        return usage_error("%s: unknown command", w.args[0]);
    command_name = cmd->name;
    /* The command's vector: its name, then the words after it. */
    return cmd->run != NULL ? cmd->run(w.n_args, w.args) : cmd_job(cmd, w.n_args, w.args);
}

/*
 * dopa-apt-method: an APT acquire method that fetches through dopad.
 *
 * Installed as /usr/lib/apt/methods/dopa+http and dopa+https, it serves
 * sources.list entries such as
 *
 *     deb dopa+http://deb.debian.org/debian bookworm main
 *
 * For each "600 URI Acquire" APT sends, it makes one dopad job that fetches
 * the URL without its "dopa+" prefix into the Filename APT gave, with APT's
 * Expected-SHA256 as the job's expected hash when there is one: dopad then
 * finds the content among its LAN peers by that hash, checks every byte
 * against it, and fetches the rest from the origin. When the job has
 * transferred, the method completes it (the file appears at Filename, owned
 * by the user the method runs as) and answers "201 URI Done" with the
 * file's size and hashes, computed here from the file itself, so APT
 * compares them with what its signed indexes expect, as it does for its
 * own http method.
 *
 * Requests are pipelined: every request becomes a job at once and is
 * answered when its job ends, in whatever order the jobs end. APT sees
 * Pipeline: true and sends up to Acquire::Max-Pipeline-Depth of them.
 *
 * Like APT's own methods, this one drops root for APT::Sandbox::User (_apt)
 * when APT sends its configuration, before it talks to dopad: the jobs are
 * the sandbox user's, and dopad writes the files with that user's rights.
 *
 * Configuration (apt.conf):
 *   Acquire::dopa::Socket   dopad's control socket (default: $DOPA_SOCKET,
 *                           else the system dopad, /run/dopa/control.sock)
 *   Acquire::dopa::Timeout  seconds without progress before a file fails (60)
 *   Debug::Acquire::dopa    log each step to stderr
 *
 * Threads: the main thread owns everything. libdopa runs the job callbacks
 * on a thread of its own; they only write a byte to a pipe that the main
 * loop polls beside stdin.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "aptmsg.h"
#include "dopa.h"
#include "validate.h"

#define DEFAULT_TIMEOUT   60 /* seconds without progress before a file fails */
#define RETRY_DELAY       5  /* seconds before dopad tries the origin again */
#define POLL_MS           1000
#define POLL_MS_NO_EVENTS 250 /* when dopad would not take our callbacks */
#define VALUE_MAX         (DOPA_URL_MAX + 64)

/* One file APT asked for, and the dopad job that fetches it. */
typedef struct item {
    char *uri;      /* as APT sent it: every answer names it so */
    char *url;      /* what dopad fetches */
    char *filename; /* where APT wants the file */
    dopa_id id;
    uint8_t sha256[32];
    int has_sha256;    /* the job knows the content by its SHA-256 */
    int has_expected;  /* APT sent expected hashes of any kind */
    int has_strong;    /* ... and one of them is SHA256 or SHA512 */
    uint64_t max_size; /* 0: no limit */
    int started;       /* "200 URI Start" sent */
    int saw_transient; /* the job has met an error dopad retries */
    int last_state;
    int64_t lost_since; /* when dopad stopped answering about it (ms), or 0 */
} item;

static struct {
    char socket[PATH_MAX];
    uint32_t timeout;
    int debug;
    char sandbox_user[256];
    dopa_manager *m;
    item *items;
    size_t n_items, cap_items;
    int wake[2];      /* written by the callbacks, polled by the main loop */
    int has_events;   /* dopad took our callbacks */
    char my_tag[128]; /* who made a job: see process_tag() */
} method = {.timeout = DEFAULT_TIMEOUT, .sandbox_user = "", .wake = {-1, -1}};

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

__attribute__((format(printf, 1, 2))) static void debugf(const char *fmt, ...)
{
    if (!method.debug)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dopa-apt-method: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void cancel_all(void);

/* Sends a message; APT gone means there is nobody left to work for. */
static void send_or_exit(aptmsg_out *o)
{
    if (aptmsg_out_send(o, STDOUT_FILENO) != 0) {
        cancel_all();
        exit(100);
    }
}

__attribute__((format(printf, 1, 2))) static void general_failure(const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    aptmsg_out o;
    aptmsg_out_start(&o, "401 General Failure");
    aptmsg_out_field(&o, "Message", text);
    send_or_exit(&o);
}

static void uri_failure(const char *uri, const char *message, const char *reason, int transient)
{
    aptmsg_out o;
    aptmsg_out_start(&o, "400 URI Failure");
    aptmsg_out_field(&o, "URI", uri);
    aptmsg_out_field(&o, "Message", message);
    if (reason != NULL)
        aptmsg_out_field(&o, "FailReason", reason);
    if (transient)
        aptmsg_out_field(&o, "Transient-Failure", "true");
    send_or_exit(&o);
}

static void status(const char *uri, const char *message)
{
    aptmsg_out o;
    aptmsg_out_start(&o, "102 Status");
    aptmsg_out_field(&o, "URI", uri);
    aptmsg_out_field(&o, "Message", message);
    send_or_exit(&o);
}

/* ------------------------------------------------------------------ */
/* Configuration and privileges                                        */

/* APT's StringToBool for the values it writes. */
static int is_true(const char *v)
{
    static const char *const yes[] = {"1", "yes", "true", "with", "on", "enable"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (strcasecmp(v, yes[i]) == 0)
            return 1;
    return 0;
}

static void config_item(void *ctx, const char *key, const char *value)
{
    (void)ctx;
    if (strcasecmp(key, "Acquire::dopa::Socket") == 0) {
        if (value[0] != '\0' && strlen(value) < sizeof method.socket)
            strcpy(method.socket, value);
    } else if (strcasecmp(key, "Acquire::dopa::Timeout") == 0) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(value, &end, 10);
        if (value[0] >= '0' && value[0] <= '9' && *end == '\0' && errno == 0 && v > 0 && v <= 86400)
            method.timeout = (uint32_t)v;
        else
            fprintf(stderr,
                    "dopa-apt-method: Acquire::dopa::Timeout \"%s\" is not 1..86400 "
                    "seconds; using %" PRIu32 "\n",
                    value, method.timeout);
    } else if (strcasecmp(key, "Debug::Acquire::dopa") == 0) {
        method.debug = is_true(value);
    } else if (strcasecmp(key, "APT::Sandbox::User") == 0) {
        snprintf(method.sandbox_user, sizeof method.sandbox_user, "%s", value);
    }
}

/* Gives up root for the sandbox user the way APT's methods do
 * (DropPrivileges in apt-pkg): groups, then gids, then uids, and checks
 * that root cannot be taken back. An empty user or "root" keeps root, as
 * APT does when the sandbox user could not reach the destination. */
static int drop_privileges(char *why, size_t why_len)
{
    /* Nothing this process starts may gain rights. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 && errno != EINVAL)
        fprintf(stderr, "dopa-apt-method: PR_SET_NO_NEW_PRIVS: %s\n", strerror(errno));
    const char *user = method.sandbox_user;
    if (user[0] == '\0' || strcmp(user, "root") == 0 || getuid() != 0)
        return 0;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL) {
        snprintf(why, why_len, "no user %s, cannot drop rights (APT::Sandbox::User)", user);
        return -1;
    }
    uid_t uid = pw->pw_uid;
    gid_t gid = pw->pw_gid;
    if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        snprintf(why, why_len, "cannot become %s: %s", user, strerror(errno));
        return -1;
    }
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(why, why_len, "could take root back after becoming %s", user);
        return -1;
    }
    setenv("HOME", pw->pw_dir, 1);
    setenv("USER", pw->pw_name, 1);
    setenv("LOGNAME", pw->pw_name, 1);
    debugf("running as %s (uid %u)", user, (unsigned)uid);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Who made a job                                                      */

/* The start time of a process (clock ticks since boot, field 22 of
 * /proc/PID/stat): with the pid it names one process, since a pid is given
 * again only to a process that starts later. 0 when it cannot be read;
 * *gone says whether that is because there is no such process. */
static unsigned long long start_time(long pid, int *gone)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    *gone = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *gone = errno == ENOENT;
        return 0;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: count
     * from the last ')'. Field 3 follows it; field 22 is 19 further on. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return 0;
    p++;
    for (int field = 2; field < 21 && p != NULL; field++)
        p = strchr(p + 1, ' ');
    return p == NULL ? 0 : strtoull(p + 1, NULL, 10);
}

/* "pidns=INODE pid=PID start=TICKS" for this process: written into each
 * job's description, so that a later run can tell the jobs of a method that
 * died without cleaning up (kill -9) from those of one still running. */
static void process_tag(char *out, size_t len)
{
    struct stat ns;
    int gone;
    unsigned long long ino =
        stat("/proc/self/ns/pid", &ns) == 0 ? (unsigned long long)ns.st_ino : 0;
    long pid = (long)getpid();
    snprintf(out, len, "pidns=%llu pid=%ld start=%llu", ino, pid, start_time(pid, &gone));
}

#define DESCRIPTION_PREFIX "dopa-apt-method "

/* Cancels the unfinished jobs of this user that a method made in a process
 * that is gone: their files were never handed to APT, and nobody else
 * will finish them. Jobs from another pid namespace are left alone: their
 * processes cannot be seen from here. */
static void cancel_orphans(void)
{
    dopa_job_info **jobs;
    size_t n;
    unsigned long long my_ns = 0;
    sscanf(method.my_tag, "pidns=%llu", &my_ns);
    if (my_ns == 0 || dopa_job_list(method.m, 0, &jobs, &n) != DOPA_OK)
        return;
    for (size_t i = 0; i < n; i++) {
        unsigned long long ns, start;
        long pid;
        int gone, state = dopa_job_info_state(jobs[i]);
        const char *description = dopa_job_info_description(jobs[i]);
        if (state == DOPA_STATE_ACKNOWLEDGED || state == DOPA_STATE_CANCELLED ||
            strncmp(description, DESCRIPTION_PREFIX, sizeof DESCRIPTION_PREFIX - 1) != 0 ||
            sscanf(description + sizeof DESCRIPTION_PREFIX - 1, "pidns=%llu pid=%ld start=%llu",
                   &ns, &pid, &start) != 3 ||
            ns != my_ns)
            continue;
        unsigned long long now = start_time(pid, &gone);
        if (gone || (now != 0 && now != start)) {
            char id[37];
            dopa_id_format(dopa_job_info_id(jobs[i]), id);
            debugf("cancelling job %s of a method that is gone (pid %ld)", id, pid);
            dopa_job_cancel(method.m, dopa_job_info_id(jobs[i]));
        }
    }
    dopa_free(jobs);
}

/* ------------------------------------------------------------------ */
/* dopad                                                               */

static int on_job_event(void *ctx, dopa_manager *m, const dopa_id *job)
{
    (void)m;
    (void)job;
    char b = 1;
    /* A full pipe already holds a wake-up: the byte may be dropped. */
    if (write(*(int *)ctx, &b, 1) < 0 && errno != EAGAIN)
        return 1;
    return 0;
}

/* Connects to dopad if not connected yet. Without dopad the method can
 * do nothing: it tells APT so in a General Failure that names the socket
 * and what the admin should do, and exits, as APT's own methods do when
 * they cannot work at all (APT then fails every request of this method). */
static void connect_dopad(void)
{
    if (method.m != NULL)
        return;
    int err = dopa_connect(method.socket, &method.m);
    uint32_t uid = 0;
    char version[64];
    if (err == DOPA_OK)
        err = dopa_whoami(method.m, &uid, version, sizeof version);
    if (err != DOPA_OK) {
        dopa_disconnect(method.m);
        method.m = NULL;
        char detail[128] = "";
        if (err != DOPA_ECONNECT)
            snprintf(detail, sizeof detail, " (%s)", dopa_strerror(err));
        general_failure("cannot reach dopad at %s%s: start dopad (systemctl start dopad), or "
                        "point Acquire::dopa::Socket at its control socket",
                        method.socket, detail);
        exit(100);
    }
    debugf("connected to dopad %s at %s as uid %" PRIu32, version, method.socket, uid);
    cancel_orphans();
}

/* ------------------------------------------------------------------ */
/* Items                                                               */

static void item_free(item *it)
{
    free(it->uri);
    free(it->url);
    free(it->filename);
}

/* Forgets item i (its job is final or cancelled). */
static void item_drop(size_t i)
{
    item *it = &method.items[i];
    if (method.has_events)
        dopa_job_set_callbacks(method.m, &it->id, NULL);
    item_free(it);
    method.items[i] = method.items[--method.n_items];
}

/* Cancels item i's job, answers APT with a failure, forgets the item. */
static void item_fail(size_t i, const char *message, const char *reason, int transient)
{
    item *it = &method.items[i];
    int err = dopa_job_cancel(method.m, &it->id);
    if (err != DOPA_OK && err != DOPA_ENOTFOUND && err != DOPA_ESTATE)
        debugf("cancel: %s", dopa_strerror(err));
    uri_failure(it->uri, message, reason, transient);
    item_drop(i);
}

static void cancel_all(void)
{
    while (method.n_items > 0) {
        item *it = &method.items[method.n_items - 1];
        if (method.m != NULL)
            dopa_job_cancel(method.m, &it->id);
        item_free(it);
        method.n_items--;
    }
}

/* The URL dopad fetches for an APT URI: dopa+http://x -> http://x. Plain
 * http(s) URIs are taken as they are, so that the method can also stand in
 * for APT's http method (Dir::Bin::Methods::http). NULL for anything else. */
static const char *origin_url(const char *uri)
{
    const char *u = strncmp(uri, "dopa+", 5) == 0 ? uri + 5 : uri;
    if (strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0)
        return u;
    return NULL;
}

/* An absolute, plain path for APT's Filename (dopad wants one without "."
 * or "//"): the directory resolved, the name kept. -1 when the directory
 * cannot be resolved or the name is not a file name. */
static int plain_path(const char *in, char *out, size_t len)
{
    char dir[PATH_MAX], resolved[PATH_MAX];
    const char *slash = strrchr(in, '/');
    const char *base = slash == NULL ? in : slash + 1;
    if (base[0] == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
        return -1;
    if (slash == NULL)
        strcpy(dir, ".");
    else if (slash == in)
        strcpy(dir, "/");
    else if ((size_t)(slash - in) < sizeof dir) {
        memcpy(dir, in, (size_t)(slash - in));
        dir[slash - in] = '\0';
    } else
        return -1;
    if (realpath(dir, resolved) == NULL)
        return -1;
    int n = snprintf(out, len, "%s/%s", strcmp(resolved, "/") == 0 ? "" : resolved, base);
    return n < 0 || (size_t)n >= len ? -1 : 0;
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

/* Reports a libdopa failure for an item being set up. */
static void setup_failed(const char *uri, const char *what, int err)
{
    char text[1024];
    const char *said = dopa_last_message();
    snprintf(text, sizeof text, "dopad: %s: %s%s%s", what, dopa_strerror(err), said[0] ? ": " : "",
             said);
    if (err == DOPA_EACCESS)
        strncat(text, " (the file is written as the user the method runs as)",
                sizeof text - strlen(text) - 1);
    uri_failure(uri, text, NULL, err == DOPA_ECONNECT || err == DOPA_ETIMEOUT);
}

/* "600 URI Acquire": makes and starts the job, or answers with a failure. */
static void acquire(const char *msg)
{
    static char uri[VALUE_MAX], filename[PATH_MAX], value[VALUE_MAX];
    char path[DOPA_PATH_MAX + 1];
    item it = {.last_state = -1};
    int r = aptmsg_field(msg, "URI", uri, sizeof uri);
    if (r == -1) {
        general_failure("600 URI Acquire without a URI");
        return;
    }
    if (r != 0) {
        /* A request that cannot be named cannot be answered, and APT
         * would wait for it: exiting makes APT fail what it sent here. */
        general_failure("600 URI Acquire: URI longer than %zu bytes", sizeof uri - 1);
        cancel_all();
        exit(100);
    }
    const char *url = origin_url(uri);
    if (url == NULL) {
        uri_failure(uri, "dopa-apt-method fetches only dopa+http:// and dopa+https:// URIs", NULL,
                    0);
        return;
    }
    if (strlen(url) > DOPA_URL_MAX) {
        uri_failure(uri, "URI too long for dopad", NULL, 0);
        return;
    }
    if (aptmsg_field(msg, "Filename", filename, sizeof filename) != 0 || filename[0] == '\0') {
        uri_failure(uri, "600 URI Acquire without a usable Filename", NULL, 0);
        return;
    }
    errno = 0;
    if (plain_path(filename, path, sizeof path) != 0) {
        char text[PATH_MAX + 64];
        snprintf(text, sizeof text, "cannot use %s as a destination: %s", filename,
                 errno ? strerror(errno) : "not a file name");
        uri_failure(uri, text, NULL, 0);
        return;
    }

    /* APT's expectations: a SHA-256 lets dopad find the file among its
     * peers and check it; the size bounds the download. Any other hash is
     * APT's own business (it checks the file after us). A SHA-256 that is
     * not 64 hex digits is left to APT, which will refuse the file. */
    static const struct {
        const char *field;
        int is_strong; /* APT accepts a file on this hash alone */
    } hashes[] = {{"Expected-SHA512", 1},
                  {"Expected-SHA256", 1},
                  {"Expected-SHA1", 0},
                  {"Expected-MD5Sum", 0}};
    for (size_t i = 0; i < sizeof hashes / sizeof hashes[0]; i++) {
        if (aptmsg_field(msg, hashes[i].field, value, sizeof value) != 0 || value[0] == '\0')
            continue;
        it.has_expected = 1;
        it.has_strong |= hashes[i].is_strong;
    }
    if (aptmsg_field(msg, "Expected-SHA256", value, sizeof value) == 0 && strlen(value) == 64 &&
        validate_unhex(value, it.sha256, 32) == VALIDATE_OK)
        it.has_sha256 = 1;
    uint64_t size;
    if (aptmsg_field(msg, "Expected-Checksum-FileSize", value, sizeof value) == 0 &&
        parse_u64(value, &size) == 0 && size > 0)
        it.max_size = size;
    else if (aptmsg_field(msg, "Maximum-Size", value, sizeof value) == 0 &&
             parse_u64(value, &size) == 0 && size > 0)
        it.max_size = size;
    /* Last-Modified (an If-Modified-Since for index files) is not used:
     * dopad has no conditional request, so the file is fetched whole and
     * reported as new, which is always correct (see README.md). */

    connect_dopad();

    /* A partial file from an earlier try (of this or another method) is
     * not resumed: dopad starts over beside it and replaces it. It goes
     * now, so that APT's progress does not count its stale bytes. */
    struct stat st;
    if (lstat(path, &st) == 0 && (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)) && unlink(path) != 0)
        debugf("cannot remove the old %s: %s", path, strerror(errno));

    char name[DOPA_NAME_MAX + 1], description[DOPA_DESCRIPTION_MAX + 1];
    snprintf(name, sizeof name, "apt %.200s", strrchr(path, '/') + 1);
    snprintf(description, sizeof description, DESCRIPTION_PREFIX "%s uri=%.800s", method.my_tag,
             uri);
    int err = dopa_job_create(method.m, name, DOPA_JOB_DOWNLOAD, &it.id);
    if (err != DOPA_OK) {
        setup_failed(uri, "create", err);
        return;
    }
    dopa_file_options fo = {.size = sizeof fo, .expected_sha256 = it.has_sha256 ? it.sha256 : NULL};
    const char *step = "add-file";
    err = dopa_job_add_file(method.m, &it.id, url, path, &fo);
    /* APT waits for the download in front of its user: foreground. */
    if (err == DOPA_OK &&
        (err = dopa_job_set_priority(method.m, &it.id, DOPA_PRIORITY_FOREGROUND)) != DOPA_OK)
        step = "set-priority";
    if (err == DOPA_OK &&
        (err = dopa_job_set_description(method.m, &it.id, description)) != DOPA_OK)
        step = "set-description";
    if (err == DOPA_OK &&
        (err = dopa_job_set_minimum_retry_delay(method.m, &it.id, RETRY_DELAY)) != DOPA_OK)
        step = "set-min-retry-delay";
    if (err == DOPA_OK &&
        (err = dopa_job_set_no_progress_timeout(method.m, &it.id, method.timeout)) != DOPA_OK)
        step = "set-no-progress-timeout";
    if (err != DOPA_OK) {
        setup_failed(uri, step, err);
        dopa_job_cancel(method.m, &it.id);
        return;
    }
    /* Events wake the main loop at once; without them it polls. */
    dopa_callbacks cb = {.size = sizeof cb,
                         .ctx = &method.wake[1],
                         .job_transferred = on_job_event,
                         .job_error = on_job_event,
                         .job_modification = on_job_event};
    if (dopa_job_set_notify_flags(method.m, &it.id,
                                  DOPA_NOTIFY_JOB_TRANSFERRED | DOPA_NOTIFY_JOB_ERROR |
                                      DOPA_NOTIFY_JOB_MODIFICATION) == DOPA_OK &&
        dopa_job_set_callbacks(method.m, &it.id, &cb) == DOPA_OK)
        method.has_events = 1;
    if ((err = dopa_job_resume(method.m, &it.id)) != DOPA_OK) {
        setup_failed(uri, "resume", err);
        dopa_job_set_callbacks(method.m, &it.id, NULL);
        dopa_job_cancel(method.m, &it.id);
        return;
    }

    if (method.n_items == method.cap_items) {
        size_t cap = method.cap_items ? 2 * method.cap_items : 16;
        item *grown = realloc(method.items, cap * sizeof *grown);
        if (grown == NULL)
            goto nomem;
        method.items = grown;
        method.cap_items = cap;
    }
    it.uri = strdup(uri);
    it.url = strdup(url);
    it.filename = strdup(path);
    if (it.uri == NULL || it.url == NULL || it.filename == NULL)
        goto nomem;
    char id[37];
    dopa_id_format(&it.id, id);
    debugf("job %s: %s -> %s%s", id, url, path, it.has_sha256 ? " (SHA-256 known)" : "");
    method.items[method.n_items++] = it;
    return;
nomem:
    item_free(&it);
    dopa_job_cancel(method.m, &it.id);
    uri_failure(uri, "dopa-apt-method: out of memory", NULL, 1);
    return;
}

/* The size and hashes of the file APT will get, read from the file, and
 * (for the debug log) who owns it with which mode. */
static int hash_file(const char *path, uint64_t *size, char sha256[65], char sha512[129],
                     struct stat *st_out, char *why, size_t why_len)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(why, why_len, "cannot read %s: %s", path, fd < 0 ? strerror(errno) : "not a file");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    validate_sha256_state h256;
    crypto_hash_sha512_state h512;
    validate_sha256_init(&h256);
    crypto_hash_sha512_init(&h512);
    static unsigned char buf[1 << 16];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, why_len, "reading %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        validate_sha256_update(&h256, buf, (size_t)n);
        crypto_hash_sha512_update(&h512, buf, (unsigned long long)n);
        total += (uint64_t)n;
    }
    close(fd);
    *st_out = st;
    uint8_t d256[32], d512[64];
    validate_sha256_final(&h256, d256);
    crypto_hash_sha512_final(&h512, d512);
    validate_hex(d256, sizeof d256, sha256);
    validate_hex(d512, sizeof d512, sha512);
    *size = total;
    return 0;
}

static void start(item *it, const dopa_job_info *j)
{
    if (it->started)
        return;
    aptmsg_out o;
    aptmsg_out_start(&o, "200 URI Start");
    aptmsg_out_field(&o, "URI", it->uri);
    if (dopa_job_info_bytes_total(j) != DOPA_SIZE_UNKNOWN)
        aptmsg_out_fieldf(&o, "Size", "%" PRIu64, dopa_job_info_bytes_total(j));
    send_or_exit(&o);
    it->started = 1;
}

/* The job transferred: complete it (the file appears at Filename) and
 * tell APT what it got. */
static void finish(size_t i, const dopa_job_info *j)
{
    item *it = &method.items[i];
    char why[PATH_MAX + 128], sha256[65], sha512[129];
    uint64_t size;
    int partial = 0, err = DOPA_OK;
    if (dopa_job_info_state(j) == DOPA_STATE_TRANSFERRED)
        err = dopa_job_complete(method.m, &it->id, &partial);
    if (err != DOPA_OK || partial) {
        const char *said = dopa_last_message();
        snprintf(why, sizeof why, "dopad: complete: %s%s%s",
                 partial ? "not every file transferred" : dopa_strerror(err), said[0] ? ": " : "",
                 said);
        item_fail(i, why, NULL, 0);
        return;
    }
    struct stat st;
    if (hash_file(it->filename, &size, sha256, sha512, &st, why, sizeof why) != 0) {
        uri_failure(it->uri, why, NULL, 0);
        item_drop(i);
        return;
    }
    if (it->max_size > 0 && size > it->max_size) {
        snprintf(why, sizeof why,
                 "the file has %" PRIu64 " bytes, more than the %" PRIu64 " expected", size,
                 it->max_size);
        uri_failure(it->uri, why, "MaximumSizeExceeded", 0);
        item_drop(i);
        return;
    }
    start(it, j);
    aptmsg_out o;
    aptmsg_out_start(&o, "201 URI Done");
    aptmsg_out_field(&o, "URI", it->uri);
    aptmsg_out_field(&o, "Filename", it->filename);
    aptmsg_out_fieldf(&o, "Size", "%" PRIu64, size);
    /* APT accepts the file when the hashes here agree with the ones it
     * expects and at least one type is in both lists. When it expects only
     * types not computed here (MD5Sum, SHA1), none are sent and APT hashes
     * the file itself. */
    if (it->has_strong || !it->has_expected) {
        aptmsg_out_field(&o, "SHA256-Hash", sha256);
        aptmsg_out_field(&o, "SHA512-Hash", sha512);
        aptmsg_out_fieldf(&o, "Checksum-FileSize-Hash", "%" PRIu64, size);
    }
    send_or_exit(&o);
    debugf("done: %s (%" PRIu64 " bytes: %" PRIu64 " from the origin, %" PRIu64
           " from peers, %" PRIu64 " from a cache host; owner uid %u, mode %03o)",
           it->filename, size, dopa_job_info_bytes_from_origin(j),
           dopa_job_info_bytes_from_peers(j), dopa_job_info_bytes_from_cache(j),
           (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    item_drop(i);
}

/* The job ended in ERROR (or was cancelled by someone else): tell APT in
 * its own terms. */
static void job_failed(size_t i, const dopa_job_info *j)
{
    item *it = &method.items[i];
    char text[DOPA_MESSAGE_MAX + 128], reason[32];
    int has_error = dopa_job_info_has_error(j), state = dopa_job_info_state(j);
    long http = dopa_job_info_error_http_status(j);
    const char *message = dopa_job_info_error_message(j);
    const char *why = has_error && message[0]         ? message
                      : state == DOPA_STATE_CANCELLED ? "the job was cancelled in dopad"
                                                      : dopa_state_name(state);
    const char *fail_reason = NULL;
    int transient = 0;
    if (has_error && http >= 400 && http <= 599) {
        /* As APT's http method says it: HttpError404 and the like. */
        snprintf(reason, sizeof reason, "HttpError%ld", http);
        fail_reason = reason;
        snprintf(text, sizeof text, "%ld %s (dopad: %s)", http,
                 http == 404 ? "Not Found" : "HTTP error", why);
        transient = http >= 500 || http == 429;
    } else if (has_error && dopa_job_info_error_context(j) == DOPA_CONTEXT_VALIDATION) {
        fail_reason = it->has_expected ? "HashSumMismatch" : NULL;
        snprintf(text, sizeof text, "Hash Sum mismatch (dopad: %s)", why);
    } else {
        snprintf(text, sizeof text, "dopad: %s", why);
        transient = it->saw_transient;
    }
    /* APT words some failures itself (a hash mismatch): dopad's own words
     * stay in the debug log. */
    debugf("failed: %s: %s", it->uri, text);
    item_fail(i, text, fail_reason, transient);
}

/* Moves item i on by its job's information j. Returns 1 when the item
 * is gone (answered), 0 when it stays. */
static int move_on(size_t i, const dopa_job_info *j)
{
    item *it = &method.items[i];
    int state = dopa_job_info_state(j);
    uint64_t size = dopa_job_info_bytes_total(j);
    int entered = state != it->last_state;
    it->last_state = state;
    if (it->max_size > 0 && ((size != DOPA_SIZE_UNKNOWN && size > it->max_size) ||
                             dopa_job_info_bytes_transferred(j) > it->max_size)) {
        char text[128];
        snprintf(text, sizeof text, "the file is larger than the %" PRIu64 " bytes expected",
                 it->max_size);
        item_fail(i, text, "MaximumSizeExceeded", 0);
        return 1;
    }
    const char *message = dopa_job_info_has_error(j) ? dopa_job_info_error_message(j) : NULL;
    switch (state) {
    case DOPA_STATE_CONNECTING:
    case DOPA_STATE_TRANSFERRING:
        if (size != DOPA_SIZE_UNKNOWN || state == DOPA_STATE_TRANSFERRING)
            start(it, j);
        return 0;
    case DOPA_STATE_TRANSFERRED:
    case DOPA_STATE_ACKNOWLEDGED: /* someone completed it for us */
        finish(i, j);
        return 1;
    case DOPA_STATE_ERROR:
    case DOPA_STATE_CANCELLED:
        job_failed(i, j);
        return 1;
    case DOPA_STATE_TRANSIENT_ERROR:
        it->saw_transient = 1;
        if (!it->has_sha256) {
            /* Known by no hash, the file cannot come from peers: waiting
             * for dopad's retries only delays APT, whose own retries
             * (Acquire::Retries) take it from here. */
            char text[DOPA_MESSAGE_MAX + 32];
            snprintf(text, sizeof text, "dopad: %s", message ? message : "error");
            item_fail(i, text, NULL, 1);
            return 1;
        }
        if (entered) {
            char text[DOPA_MESSAGE_MAX + 64];
            snprintf(text, sizeof text, "dopad retries: %s", message ? message : "transient error");
            status(it->uri, text);
        }
        return 0;
    case DOPA_STATE_SUSPENDED:
        if (entered)
            status(it->uri, "suspended in dopad; `dopa resume` the job to go on");
        return 0;
    default:
        return 0;
    }
}

/* Looks at item i's job and moves it on. Returns 1 when the item is gone
 * (answered), 0 when it stays. */
static int refresh(size_t i)
{
    item *it = &method.items[i];
    dopa_job_info *j;
    int err = dopa_job_get(method.m, &it->id, &j);
    if (err == DOPA_ENOTFOUND) {
        item_fail(i, "dopad no longer knows the job for this file (cancelled?)", NULL, 1);
        return 1;
    }
    if (err != DOPA_OK) {
        /* dopad restarting keeps its jobs: wait for it a while. */
        int64_t now = now_ms();
        if (it->lost_since == 0)
            it->lost_since = now;
        if (now - it->lost_since > (int64_t)method.timeout * 1000) {
            char text[256];
            snprintf(text, sizeof text, "dopad stopped answering: %s", dopa_strerror(err));
            uri_failure(it->uri, text, NULL, 1);
            item_drop(i);
            return 1;
        }
        return 0;
    }
    it->lost_since = 0;
    int gone = move_on(i, j);
    dopa_free(j);
    return gone;
}

static void refresh_all(void)
{
    for (size_t i = 0; i < method.n_items;)
        if (!refresh(i))
            i++; /* else item i is now another one */
}

/* ------------------------------------------------------------------ */
/* The main loop                                                       */

static void handle(const char *msg)
{
    int code = aptmsg_code(msg);
    if (code == 601) {
        aptmsg_config_items(msg, config_item, NULL);
        char why[512];
        if (drop_privileges(why, sizeof why) != 0) {
            general_failure("%s", why);
            exit(112); /* as APT's methods do when they cannot drop root */
        }
    } else if (code == 600) {
        acquire(msg);
    } else if (code < 0) {
        general_failure("malformed message from APT: it does not start with a number");
        cancel_all();
        exit(100);
    }
    /* Other messages (603 Media Changed, ...) do not concern a network
     * method. */
}

static const char usage_text[] =
    "usage: dopa-apt-method (run by APT as /usr/lib/apt/methods/dopa+http and dopa+https)\n"
    "\n"
    "An APT acquire method that fetches through dopad. Enable it with sources.list\n"
    "entries such as\n"
    "    deb dopa+http://deb.debian.org/debian bookworm main\n"
    "apt.conf options: Acquire::dopa::Socket (dopad's control socket),\n"
    "Acquire::dopa::Timeout (seconds without progress, 60), Debug::Acquire::dopa.\n";

int main(int argc, char **argv)
{
    if (argc > 1) {
        int help = strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
        fputs(usage_text, help ? stdout : stderr);
        return help ? 0 : 2;
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: poll must wake */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (pipe2(method.wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        perror("dopa-apt-method: pipe");
        return 100;
    }
    /* The default is chosen before root is dropped: for root that is the
     * system dopad (or $DOPA_SOCKET), for a user running APT their own. */
    dopa_default_socket(method.socket, sizeof method.socket);
    process_tag(method.my_tag, sizeof method.my_tag);

    aptmsg_out o;
    aptmsg_out_start(&o, "100 Capabilities");
    aptmsg_out_field(&o, "Version", "1.0");
    aptmsg_out_field(&o, "Pipeline", "true");
    aptmsg_out_field(&o, "Send-Config", "true");
    /* URIs as APT stores them (percent-encoded), which is what the origin
     * must be asked for. */
    aptmsg_out_field(&o, "Send-URI-Encoded", "true");
    send_or_exit(&o);

    aptmsg_reader in = {0};
    int failed = 0;
    while (!stop_signal) {
        struct pollfd fds[2] = {{.fd = STDIN_FILENO, .events = POLLIN},
                                {.fd = method.wake[0], .events = POLLIN}};
        int timeout = method.n_items == 0 ? -1 : method.has_events ? POLL_MS : POLL_MS_NO_EVENTS;
        if (poll(fds, 2, timeout) < 0 && errno != EINTR) {
            failed = 1;
            break;
        }
        if (stop_signal)
            break;
        if (fds[1].revents & POLLIN) {
            char drain[64];
            while (read(method.wake[0], drain, sizeof drain) > 0)
                ;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            char buf[65536];
            ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n <= 0) {
                /* APT closed the pipe: it wants nothing more. */
                break;
            }
            if (aptmsg_reader_feed(&in, buf, (size_t)n) != 0) {
                general_failure("dopa-apt-method: out of memory");
                failed = 1;
                break;
            }
            char *msg;
            int r;
            while ((r = aptmsg_reader_next(&in, &msg)) == 1) {
                handle(msg);
                free(msg);
            }
            if (r < 0) {
                general_failure("message from APT longer than %u bytes", APTMSG_MAX);
                failed = 1;
                break;
            }
        }
        refresh_all();
    }
    /* APT closed the pipe or sent SIGINT (as it does when it is done with
     * a method): whatever is not answered yet is not wanted any more, so
     * its jobs and their temporary files go. */
    cancel_all();
    aptmsg_reader_clear(&in);
    free(method.items);
    dopa_disconnect(method.m);
    close(method.wake[0]);
    close(method.wake[1]);
    return failed ? 100 : 0;
}

/*
 * faultfs: an LD_PRELOAD library that makes a process's file operations
 * fail or stall on purpose, for the storage fault tests. It wraps write,
 * pwrite, pwrite64, fsync, fdatasync, rename, renameat and renameat2, and
 * applies the rules of a control file that the test rewrites while the
 * process runs (re-read within a few milliseconds of a change).
 *
 *   DOPA_FAULTFS_CTL  the control file; without it every call passes through
 *   DOPA_FAULTFS_LOG  where each injected fault is written down (appended)
 *
 * Control file, one rule a line ('#' starts a comment); the first rule that
 * matches an operation applies:
 *
 *   fail  OP ERRNO PATH [exact] [lose] [wait=MS]
 *                                        the call fails with ERRNO
 *   delay OP MS PATH [exact]             the call waits MS first
 *   track PATH                           remember writes (for lose)
 *
 * OP is write (write, pwrite, pwrite64), fsync, fdatasync or rename (any
 * of the three; either name may match). ERRNO is EIO, ENOSPC, EDQUOT or
 * EROFS. A rule matches the files whose path starts with PATH, or is PATH
 * with `exact`. A descriptor's path comes from /proc/self/fd.
 *
 * `lose` makes a failed sync behave as a failed writeback does on Linux:
 * what was written to the file before the call and since its last good
 * sync is gone (here: overwritten with 0xEE bytes, as if the pages were
 * dropped and read back as something else), and the error is reported
 * once, by that call. This needs `track` on the file's path before the
 * writes. A program that counts those writes as safe ends up with bytes
 * that are not what it wrote, which a test can see. `wait=MS` makes the
 * call wait before it starts, as a sync queued behind a slow one does:
 * what the program writes meanwhile is written before the sync.
 *
 * The log has one line per injected fault: "OP ERRNO PATH", after a lost
 * writeback "lost BYTES PATH", and for a delay "OP delay MS PATH".
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define MAX_RULES    16
#define MAX_TRACKED  16   /* files with writes not yet synced */
#define MAX_EXTENTS  4096 /* per file; beyond that, one extent covers them all */
#define RECHECK_NS   2000000
#define CTL_MAX      8192
#define RULE_PATH    1024
#define LOSE_PATTERN 0xEE

enum op { OP_WRITE, OP_FSYNC, OP_FDATASYNC, OP_RENAME, OP_NONE };
enum kind { RULE_FAIL, RULE_DELAY, RULE_TRACK };

struct rule {
    enum kind kind;
    enum op op;
    int err;   /* RULE_FAIL */
    long ms;   /* RULE_DELAY */
    int exact; /* PATH is the whole path */
    int lose;  /* a failed sync loses the unsynced writes */
    long wait; /* ms a failing call waits first */
    char path[RULE_PATH];
};

struct extent {
    uint64_t start, end;
};

/* A file's writes since its last good sync. */
struct tracked {
    dev_t dev;
    ino_t ino;
    struct extent *ext;
    size_t n;
};

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static size_t n_rules;
static struct timespec checked; /* when the control file was last looked at */
static struct stat ctl_seen;    /* what it was then */
static struct tracked tracked[MAX_TRACKED];

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve_once(void)
{
    *(void **)&real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    *(void **)&real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    *(void **)&real_fsync = dlsym(RTLD_NEXT, "fsync");
    *(void **)&real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    *(void **)&real_rename = dlsym(RTLD_NEXT, "rename");
    *(void **)&real_renameat = dlsym(RTLD_NEXT, "renameat");
    *(void **)&real_renameat2 = dlsym(RTLD_NEXT, "renameat2");
    *(void **)&real_write = dlsym(RTLD_NEXT, "write");
}

/* Resolved on first use: another library's constructor may call in before
 * ours would have run. */
static void resolve(void)
{
    pthread_once(&resolved, resolve_once);
}

static int errno_named(const char *name)
{
    static const struct {
        const char *name;
        int value;
    } names[] = {{"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0)
            return names[i].value;
    return 0;
}

static enum op op_named(const char *name)
{
    static const char *const names[] = {"write", "fsync", "fdatasync", "rename"};
    for (int i = 0; i < OP_NONE; i++)
        if (strcmp(name, names[i]) == 0)
            return (enum op)i;
    return OP_NONE;
}

static const char *op_name(enum op op)
{
    static const char *const names[] = {"write", "fsync", "fdatasync", "rename", "?"};
    return names[op];
}

/* One line of the control file into r; 0 when it is a rule. A line that is
 * not one is ignored: the test sees its fault not happen. */
static int parse_rule(char *line, struct rule *r)
{
    char *save = NULL, *words[6] = {0};
    size_t n = 0;
    for (char *w = strtok_r(line, " \t", &save); w != NULL && n < 6;
         w = strtok_r(NULL, " \t", &save))
        words[n++] = w;
    memset(r, 0, sizeof *r);
    size_t at = 0;
    if (n >= 2 && strcmp(words[0], "track") == 0) {
        r->kind = RULE_TRACK;
        r->op = OP_NONE;
        at = 1;
    } else if (n >= 4 && strcmp(words[0], "fail") == 0) {
        r->kind = RULE_FAIL;
        r->op = op_named(words[1]);
        r->err = errno_named(words[2]);
        if (r->op == OP_NONE || r->err == 0)
            return -1;
        at = 3;
    } else if (n >= 4 && strcmp(words[0], "delay") == 0) {
        r->kind = RULE_DELAY;
        r->op = op_named(words[1]);
        r->ms = strtol(words[2], NULL, 10);
        if (r->op == OP_NONE || r->ms <= 0)
            return -1;
        at = 3;
    } else {
        return -1;
    }
    if (strlen(words[at]) >= sizeof r->path)
        return -1;
    strcpy(r->path, words[at]);
    for (size_t i = at + 1; i < n; i++) {
        if (strcmp(words[i], "exact") == 0)
            r->exact = 1;
        else if (strcmp(words[i], "lose") == 0)
            r->lose = 1;
        else if (strncmp(words[i], "wait=", 5) == 0 &&
                 (r->wait = strtol(words[i] + 5, NULL, 10)) > 0)
            ;
        else
            return -1;
    }
    return 0;
}

/* Re-reads the control file if it changed; under lock. Looks at most
 * every RECHECK_NS, so a busy writer pays a clock read per call. */
static void refresh(void)
{
    const char *ctl = getenv("DOPA_FAULTFS_CTL");
    if (ctl == NULL)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t since = (int64_t)(now.tv_sec - checked.tv_sec) * 1000000000 +
                    (int64_t)(now.tv_nsec - checked.tv_nsec);
    if (checked.tv_sec != 0 && since < RECHECK_NS)
        return;
    checked = now;
    struct stat st;
    if (stat(ctl, &st) != 0) {
        n_rules = 0;
        memset(&ctl_seen, 0, sizeof ctl_seen);
        return;
    }
    if (st.st_ino == ctl_seen.st_ino && st.st_size == ctl_seen.st_size &&
        st.st_mtim.tv_sec == ctl_seen.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == ctl_seen.st_mtim.tv_nsec)
        return;
    ctl_seen = st;
    static char text[CTL_MAX + 1];
    int fd = open(ctl, O_RDONLY | O_CLOEXEC);
    ssize_t len = fd >= 0 ? read(fd, text, CTL_MAX) : -1;
    if (fd >= 0)
        close(fd);
    n_rules = 0;
    if (len <= 0)
        return;
    text[len] = '\0';
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL && n_rules < MAX_RULES;
         line = strtok_r(NULL, "\n", &save)) {
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = '\0';
        if (parse_rule(line, &rules[n_rules]) == 0)
            n_rules++;
    }
}

static int path_matches(const struct rule *r, const char *path)
{
    if (path == NULL || path[0] == '\0')
        return 0;
    if (r->exact)
        return strcmp(path, r->path) == 0;
    return strncmp(path, r->path, strlen(r->path)) == 0;
}

/* The first fail or delay rule for op and either path; NULL if none.
 * Under lock; the rule is copied out since the table may change. */
static int find_rule(enum op op, const char *path, const char *path2, struct rule *out)
{
    for (size_t i = 0; i < n_rules; i++) {
        const struct rule *r = &rules[i];
        if (r->kind != RULE_TRACK && r->op == op &&
            (path_matches(r, path) || path_matches(r, path2))) {
            *out = *r;
            return 1;
        }
    }
    return 0;
}

static int is_tracked(const char *path)
{
    for (size_t i = 0; i < n_rules; i++)
        if (rules[i].kind == RULE_TRACK && path_matches(&rules[i], path))
            return 1;
    return 0;
}

static int any_rules(void)
{
    pthread_mutex_lock(&lock);
    refresh();
    int any = n_rules > 0;
    pthread_mutex_unlock(&lock);
    return any;
}

static void fd_path(int fd, char *out, size_t len)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, len - 1);
    out[n > 0 ? n : 0] = '\0';
}

/* at + name as one path (name relative to the directory descriptor at). */
static void at_path(int at, const char *name, char *out, size_t len)
{
    if (name == NULL) {
        out[0] = '\0';
        return;
    }
    if (name[0] == '/' || at == AT_FDCWD) {
        if (name[0] == '/' || getcwd(out, len) == NULL)
            snprintf(out, len, "%s", name);
        else
            snprintf(out + strlen(out), len - strlen(out), "/%s", name);
        return;
    }
    fd_path(at, out, len);
    size_t used = strlen(out);
    snprintf(out + used, len - used, "/%s", name);
}

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    const char *path = getenv("DOPA_FAULTFS_LOG");
    if (path == NULL)
        return;
    char line[PATH_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    if ((size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t ignored = real_write(fd, line, (size_t)n);
    (void)ignored;
    close(fd);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The rule for op and these paths, if any, copied out (the table may
 * change meanwhile); 0 when none. */
static int rule_for(enum op op, const char *path, const char *path2, struct rule *r)
{
    pthread_mutex_lock(&lock);
    int found = find_rule(op, path, path2, r);
    pthread_mutex_unlock(&lock);
    return found;
}

/* Carries out a rule found for op: 0 to go on with the real call, -1 with
 * errno set when the call fails. */
static int apply(const struct rule *r, enum op op, const char *path)
{
    if (r->kind == RULE_DELAY) {
        log_line("%s delay %ld %s\n", op_name(op), r->ms, path);
        sleep_ms(r->ms);
        return 0;
    }
    char err_name[16];
    snprintf(err_name, sizeof err_name, "%s",
             r->err == EIO      ? "EIO"
             : r->err == ENOSPC ? "ENOSPC"
             : r->err == EDQUOT ? "EDQUOT"
                                : "EROFS");
    log_line("%s %s %s\n", op_name(op), err_name, path);
    errno = r->err;
    return -1;
}

/* ------------------------------------------------------------------ */
/* Writes since the last good sync                                    */

static struct tracked *tracked_for(dev_t dev, ino_t ino, int create)
{
    struct tracked *free_slot = NULL;
    for (size_t i = 0; i < MAX_TRACKED; i++) {
        if (tracked[i].ext != NULL && tracked[i].dev == dev && tracked[i].ino == ino)
            return &tracked[i];
        if (tracked[i].ext == NULL && free_slot == NULL)
            free_slot = &tracked[i];
    }
    if (!create || free_slot == NULL)
        return NULL;
    free_slot->ext = calloc(MAX_EXTENTS, sizeof *free_slot->ext);
    if (free_slot->ext == NULL)
        return NULL;
    free_slot->dev = dev;
    free_slot->ino = ino;
    free_slot->n = 0;
    return free_slot;
}

static void forget(struct tracked *t)
{
    free(t->ext);
    memset(t, 0, sizeof *t);
}

/* Adds [start, end) to the file's unsynced extents, merging neighbours. */
static void note_write(int fd, uint64_t start, uint64_t end)
{
    char path[PATH_MAX];
    struct stat st;
    if (end <= start)
        return;
    fd_path(fd, path, sizeof path);
    pthread_mutex_lock(&lock);
    if (!is_tracked(path) || fstat(fd, &st) != 0) {
        pthread_mutex_unlock(&lock);
        return;
    }
    struct tracked *t = tracked_for(st.st_dev, st.st_ino, 1);
    if (t != NULL) {
        size_t i = 0;
        while (i < t->n && !(start <= t->ext[i].end && t->ext[i].start <= end))
            i++;
        if (i < t->n) {
            if (start < t->ext[i].start)
                t->ext[i].start = start;
            if (end > t->ext[i].end)
                t->ext[i].end = end;
        } else if (t->n < MAX_EXTENTS) {
            t->ext[t->n++] = (struct extent){start, end};
        } else {
            /* Too many: one extent over all, which can only lose more. */
            for (size_t k = 1; k < t->n; k++) {
                if (t->ext[k].start < t->ext[0].start)
                    t->ext[0].start = t->ext[k].start;
                if (t->ext[k].end > t->ext[0].end)
                    t->ext[0].end = t->ext[k].end;
            }
            t->n = 1;
        }
    }
    pthread_mutex_unlock(&lock);
}

/* Takes the file's unsynced extents out of the table (NULL if none); the
 * caller frees them. Writes made while its sync runs start a new list. */
static struct extent *take_unsynced(int fd, size_t *n)
{
    struct stat st;
    struct extent *ext = NULL;
    *n = 0;
    if (fstat(fd, &st) != 0)
        return NULL;
    pthread_mutex_lock(&lock);
    struct tracked *t = tracked_for(st.st_dev, st.st_ino, 0);
    if (t != NULL) {
        ext = t->ext;
        *n = t->n;
        t->ext = NULL;
        forget(t);
    }
    pthread_mutex_unlock(&lock);
    return ext;
}

/* A failed writeback: the unsynced bytes it was to write are replaced. */
static void lose_writes(int fd, const struct extent *ext, size_t n, const char *path)
{
    uint8_t junk[4096];
    memset(junk, LOSE_PATTERN, sizeof junk);
    uint64_t lost = 0;
    for (size_t i = 0; i < n; i++) {
        for (uint64_t off = ext[i].start; off < ext[i].end;) {
            size_t len = ext[i].end - off < sizeof junk ? (size_t)(ext[i].end - off) : sizeof junk;
            ssize_t w = real_pwrite(fd, junk, len, (off_t)off);
            if (w <= 0)
                break;
            off += (uint64_t)w;
            lost += (uint64_t)w;
        }
    }
    log_line("lost %llu %s\n", (unsigned long long)lost, path);
}

/* fsync and fdatasync: the rule first; a real sync makes the writes made
 * before it safe (even when no rule is left, so that none stays listed). */
static int sync_call(enum op op, int fd)
{
    resolve();
    int (*real)(int) = op == OP_FSYNC ? real_fsync : real_fdatasync;
    struct rule r;
    char path[PATH_MAX] = "";
    int found = 0;
    if (any_rules()) {
        fd_path(fd, path, sizeof path);
        found = rule_for(op, path, NULL, &r);
    }
    if (found && r.kind == RULE_FAIL && r.wait > 0)
        sleep_ms(r.wait);
    size_t n;
    struct extent *ext = take_unsynced(fd, &n);
    if (found && apply(&r, op, path) != 0) {
        int err = errno;
        if (r.lose)
            lose_writes(fd, ext, n, path);
        else
            for (size_t i = 0; i < n; i++) /* still unsynced */
                note_write(fd, ext[i].start, ext[i].end);
        free(ext);
        errno = err;
        return -1;
    }
    free(ext);
    return real(fd);
}

int fsync(int fd)
{
    return sync_call(OP_FSYNC, fd);
}

int fdatasync(int fd)
{
    return sync_call(OP_FDATASYNC, fd);
}

static ssize_t write_at(int fd, const void *buf, size_t len, int64_t offset, int positioned,
                        int is64)
{
    resolve();
    if (any_rules()) {
        char path[PATH_MAX];
        struct rule r;
        fd_path(fd, path, sizeof path);
        if (rule_for(OP_WRITE, path, NULL, &r) && apply(&r, OP_WRITE, path) != 0)
            return -1;
    } else {
        return !positioned ? real_write(fd, buf, len)
               : is64      ? real_pwrite64(fd, buf, len, (off64_t)offset)
                           : real_pwrite(fd, buf, len, (off_t)offset);
    }
    int64_t start = positioned ? offset : (int64_t)lseek(fd, 0, SEEK_CUR);
    ssize_t n = !positioned ? real_write(fd, buf, len)
                : is64      ? real_pwrite64(fd, buf, len, (off64_t)offset)
                            : real_pwrite(fd, buf, len, (off_t)offset);
    if (n > 0 && start >= 0)
        note_write(fd, (uint64_t)start, (uint64_t)start + (uint64_t)n);
    return n;
}

ssize_t write(int fd, const void *buf, size_t len)
{
    return write_at(fd, buf, len, 0, 0, 0);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t offset)
{
    return write_at(fd, buf, len, offset, 1, 0);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t offset)
{
    return write_at(fd, buf, len, offset, 1, 1);
}

static int rename_rule(int from_at, const char *from, int to_at, const char *to)
{
    if (!any_rules())
        return 0;
    char a[PATH_MAX], b[PATH_MAX];
    at_path(from_at, from, a, sizeof a);
    at_path(to_at, to, b, sizeof b);
    struct rule r;
    return rule_for(OP_RENAME, a, b, &r) ? apply(&r, OP_RENAME, a) : 0;
}

int rename(const char *from, const char *to)
{
    resolve();
    if (rename_rule(AT_FDCWD, from, AT_FDCWD, to) != 0)
        return -1;
    return real_rename(from, to);
}

int renameat(int from_at, const char *from, int to_at, const char *to)
{
    resolve();
    if (rename_rule(from_at, from, to_at, to) != 0)
        return -1;
    return real_renameat(from_at, from, to_at, to);
}

int renameat2(int from_at, const char *from, int to_at, const char *to, unsigned flags)
{
    resolve();
    if (rename_rule(from_at, from, to_at, to) != 0)
        return -1;
    return real_renameat2(from_at, from, to_at, to, flags);
}

/*
 * Local attacks on a root dopad, end to end through its control socket and
 * the dopa command line (root only: it needs a second user, and dopad must
 * run as root for its file operations to matter; without root it exits 77,
 * which ctest counts as skipped).
 *
 * Another user can do nothing to someone's job and learn nothing of it:
 * every command of the CLI, and every op of the protocol sent raw, gets
 * from a job it does not own the very answer it gets for a job that does
 * not exist. And links planted at a job's temporary or destination name,
 * before the job or swapped in a loop while it runs (the file, or its
 * directory, replaced by a link to a file or directory of root's), never
 * make dopad write outside what the job's owner may write: root's files
 * keep their bytes, their links and their times, and a job ends with its
 * own content or with an error that says what was wrong.
 *
 * DOPAD and DOPA_CLI name the binaries; the program runs itself as a
 * helper (--race, --raw) in the attacker's shoes.
 */
#include <dirent.h>
#include <fcntl.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#include "../check.h"
#include "../support/daemon.h"
#include "../support/nginx.h"
#include "../support/proc.h"
#include "hostile.h"
#include "proto.h"

#define SIZE_SMALL (1024 * 1024 + 77)
#define SIZE_SLOW  (12 * 1024 * 1024)
#define SECRET     "root:only root writes this line\n"

static test_nginx web;
static test_dopad dopad = {.pid = -1};
static const char *scratch;
static char self_path[4096];
static uid_t user_uid, other_uid;
static gid_t user_gid, other_gid;
static int user_created;
/* Root's: a file the users may read but not write, and a directory they
 * may not enter, with what they were like at the start. */
static char etc_dir[1024], shadow[1024], private_dir[1024];
static struct stat shadow_was;

/* Runs dopa as uid with the arguments (up to a NULL): its exit status,
 * with what it printed in out (which may be NULL). */
#define cli_as(uid, gid, out, len, ...)                                                            \
    hostile_cli_list(DOPA_CLI, dopad.sock, uid, gid, out, len, 60, __VA_ARGS__)
#define as_root(out, len, ...) cli_as(TEST_AS_ME, 0, out, len, __VA_ARGS__, (char *)NULL)

static void url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", web.port, path);
}

/* The case's directory, reachable by the users, and a directory in it
 * owned by `uid` with `mode`. */
static const char *dir_for(const char *name, uid_t uid, gid_t gid, mode_t mode)
{
    CHECK(chmod(check_tmpdir(), 0755) == 0);
    const char *d = check_path(name);
    CHECK(mkdir(d, 0700) == 0);
    CHECK(chown(d, uid, gid) == 0);
    CHECK(chmod(d, mode) == 0);
    return d;
}

/* Root's file and directory are as they were: same bytes, one link, not
 * modified, and nothing in the directory. */
static void check_roots_files_untouched(void)
{
    struct stat st;
    CHECK(lstat(shadow, &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK_INT(st.st_ino, shadow_was.st_ino);
    CHECK_INT(st.st_nlink, 1);
    CHECK_INT(st.st_size, strlen(SECRET));
    CHECK_INT(st.st_mtim.tv_sec, shadow_was.st_mtim.tv_sec);
    CHECK_INT(st.st_mtim.tv_nsec, shadow_was.st_mtim.tv_nsec);
    char buf[256] = "";
    FILE *f = fopen(shadow, "r");
    CHECK(f != NULL);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    CHECK_STR(buf, SECRET);
    DIR *d = opendir(private_dir);
    CHECK(d != NULL);
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        entries += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    CHECK_INT(entries, 0);
}

/* A job of uid's (TEST_AS_ME: root's) for the URL path, into dest. */
struct job {
    uid_t uid;
    gid_t gid;
    const char *name; /* the job's display name, if not "target" */
    char id[64];
    char tmp[4200];
    const char *dest;
};

static int job_cli(const struct job *j, char *out, size_t len, const char *const *args)
{
    return hostile_cli(DOPA_CLI, dopad.sock, j->uid, j->gid, out, len, 60, args);
}

#define JOB(j, out, len, ...) job_cli(j, out, len, (const char *const[]){__VA_ARGS__, NULL})

/* The temporary name dopad gives a job's first file. */
static void temp_name(struct job *j)
{
    char out[8192];
    CHECK_INT(JOB(j, out, sizeof out, "--json", "files", j->id), 0);
    CHECK_INT(hostile_json_text(out, "temporary_name", j->tmp, sizeof j->tmp), 0);
}

/* Creates the job and adds the file; returns add-file's exit status (out
 * holds what it said). */
static int new_job(struct job *j, const char *path, const char *dest, char *out, size_t len)
{
    char u[256];
    url(u, sizeof u, path);
    j->dest = dest;
    CHECK_INT(JOB(j, out, len, "create", j->name ? j->name : "target"), 0);
    hostile_first_line(out, j->id, sizeof j->id);
    CHECK_INT(strlen(j->id), 36);
    CHECK_INT(JOB(j, out, len, "set-min-retry-delay", j->id, "1"), 0);
    int rc = JOB(j, out, len, "add-file", j->id, u, dest);
    if (rc == 0)
        temp_name(j);
    return rc;
}

/* The job's state and error message, from dopa --json info. */
static void job_state(const struct job *j, char *state, size_t state_len, char *message,
                      size_t message_len)
{
    char out[8192];
    CHECK_INT(JOB(j, out, sizeof out, "--json", "info", j->id), 0);
    CHECK_INT(hostile_json_text(out, "state", state, state_len), 0);
    hostile_json_text(out, "message", message, message_len); /* only with an error */
}

/* Waits until the job is TRANSFERRED or ERROR (or 40 s pass), then says
 * how it stands. */
static void settle(const struct job *j, char *state, size_t state_len, char *message,
                   size_t message_len)
{
    JOB(j, NULL, 0, "wait", j->id, "--timeout", "40");
    job_state(j, state, state_len, message, message_len);
}

/* Checks a file holds the pattern of `seed` and is `size` long. */
static void check_content(const char *path, unsigned seed, uint64_t size)
{
    uint64_t at = 0;
    int differs = test_pattern_differs(path, seed, 0, size, &at);
    if (differs != 0)
        printf("  %s: not the download from byte %llu\n", path, (unsigned long long)at);
    CHECK_INT(differs, 0);
    CHECK_INT(hostile_file_size(path), size);
}

/* ------------------------------------------------------------------ */
/* Another user at the control socket                                 */

/* Every op of the protocol, sent raw as whoever runs this, naming job
 * `id` (and `path` where a local file goes); prints one line per op with
 * the status and message of the reply. */
static int raw_ops(const char *socket_path, const char *id_text, const char *path)
{
    char u[4200];
    snprintf(u, sizeof u, "ipc://%s", socket_path);
    nng_socket s;
    if (nng_req0_open(&s) != 0 || nng_dial(s, u, NULL, 0) != 0)
        return 1;
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
    static proto_request r;
    static proto_reply reply;
    for (int op = 1; op < PROTO_OP_END; op++) {
        memset(&r, 0, sizeof r);
        r.op = op;
        if (dopa_id_parse(id_text, &r.id) != DOPA_OK)
            return 1;
        /* Every field an op may carry, with a plausible value. */
        r.cursor = r.id;
        r.has_cursor = 1;
        snprintf(r.name, sizeof r.name, "mine now");
        snprintf(r.description, sizeof r.description, "changed");
        snprintf(r.url, sizeof r.url, "http://127.0.0.1:1/x");
        snprintf(r.path, sizeof r.path, "%s", path);
        snprintf(r.args[0], sizeof r.args[0], "/bin/true");
        r.n_args = 1;
        r.type = DOPA_JOB_DOWNLOAD;
        r.priority = DOPA_PRIORITY_FOREGROUND;
        r.seconds = 5;
        r.proxy_usage = DOPA_PROXY_NONE;
        r.timeout_ms = 200;
        r.flags = DOPA_NOTIFY_ALL;
        r.valid = 1;
        memset(r.client, 0x5a, sizeof r.client);
        proto_buf buf;
        proto_buf_init(&buf, PROTO_MAX_REQUEST);
        char *got = NULL;
        size_t len = 0;
        validate_error why = {0};
        if (proto_encode_request(&r, &buf) != 0 || nng_send(s, buf.data, buf.len, 0) != 0 ||
            nng_recv(s, &got, &len, NNG_FLAG_ALLOC) != 0 ||
            proto_decode_reply((const uint8_t *)got, len, &reply, &why) != 0) {
            printf("op %d: no reply %s\n", op, why.text);
        } else {
            /* A new job's id differs from run to run: only its presence counts. */
            printf("op %d: status %llu, %s%s\n", op, (unsigned long long)reply.status,
                   reply.message, op == PROTO_CREATE && reply.has_id ? ", an id" : "");
            proto_reply_clear(&reply);
        }
        if (got != NULL)
            nng_free(got, len);
        proto_buf_free(&buf);
    }
    fflush(stdout);
    nng_close(s);
    return 0;
}

/* Checks that `uid` gets from the victim's job exactly what it gets from
 * a job that does not exist, for every op of the protocol and for the
 * commands of the CLI (all of them with `every_command`, else the first
 * few: they all reach dopad through the same ops). */
static void check_stranger_sees_nothing(const struct job *victim, uid_t uid, gid_t gid,
                                        int every_command)
{
    const char *other = "0badc0de-0000-4000-8000-000000000000";
    char prefix[9];
    snprintf(prefix, sizeof prefix, "%.8s", victim->id);
    char u[256], dest[4300];
    url(u, sizeof u, "/data/small.bin");
    snprintf(dest, sizeof dest, "%s/home/stranger.bin", check_tmpdir());
    /* Every command that names a job, as `dopa --help` lists them. */
    const char *commands[][6] = {
        {"info"},
        {"files"},
        {"get-error"},
        {"get-notify"},
        {"get-proxy"},
        {"wait", NULL, "--timeout", "1"},
        {"resume"},
        {"suspend"},
        {"cancel"},
        {"complete"},
        {"take-ownership"},
        {"set-priority", NULL, "foreground"},
        {"set-name", NULL, "mine now"},
        {"set-description", NULL, "changed"},
        {"set-min-retry-delay", NULL, "5"},
        {"set-no-progress-timeout", NULL, "5"},
        {"set-proxy", NULL, "override", "http://127.0.0.1:1"},
        {"set-notify-flags", NULL, "transferred", "error", "modification"},
        {"set-notify-cmdline", NULL, "--", "/bin/true"},
        {"set-notify-cmdline", NULL, "--clear"},
        {"validate", NULL, "0", "valid"},
        {"set-validation-policy", NULL, "5", "valid"},
        {"add-file", NULL, u, dest},
    };
    int refused = 0;
    size_t n_commands = every_command ? sizeof commands / sizeof commands[0] : 4;
    for (size_t c = 0; c < n_commands; c++) {
        char answers[3][4096];
        int codes[3] = {0};
        /* A prefix is resolved by the CLI from the user's own listing, the
         * same for every command: the first one shows it. */
        const char *ids[3] = {victim->id, other, c == 0 ? prefix : NULL};
        for (int k = 0; k < 3 && ids[k] != NULL; k++) {
            const char *args[8];
            size_t n = 0;
            args[n++] = commands[c][0];
            args[n++] = ids[k];
            for (size_t a = 2; a < 6 && commands[c][a] != NULL; a++)
                args[n++] = commands[c][a];
            args[n] = NULL;
            codes[k] = hostile_cli(DOPA_CLI, dopad.sock, uid, gid, answers[k], sizeof answers[k],
                                   30, args);
            /* The id it was asked about may be repeated back: mask it. */
            char *at = strstr(answers[k], ids[k]);
            if (at != NULL)
                memset(at, '*', strlen(ids[k]));
        }
        if (codes[0] != 4 || codes[1] != 4 || strcmp(answers[0], answers[1]) != 0 ||
            strstr(answers[0], "no such job") == NULL ||
            (c == 0 && (codes[2] != 4 || strstr(answers[2], "no such job") == NULL))) {
            printf("  dopa %s: %d \"%s\" for the job, %d \"%s\" for none, %d \"%s\" for its "
                   "prefix\n",
                   commands[c][0], codes[0], answers[0], codes[1], answers[1],
                   c == 0 ? codes[2] : 4, c == 0 ? answers[2] : "-");
            CHECK(0);
        }
        refused++;
    }
    /* Listings show none of it. */
    char out[65536];
    CHECK_INT(cli_as(uid, gid, out, sizeof out, "--json", "list", (char *)NULL), 0);
    CHECK(strstr(out, victim->id) == NULL);
    CHECK(strstr(out, victim->name) == NULL);
    CHECK_INT(cli_as(uid, gid, out, sizeof out, "list", "--all", (char *)NULL), 4);
    CHECK_HAS(out, "permission denied");
    CHECK(strstr(out, victim->id) == NULL);

    /* Raw, every op: the same answers as for a job that does not exist. */
    char theirs[16384], none[16384];
    const char *raw1[] = {self_path, "--raw", dopad.sock, victim->id, dest, NULL};
    const char *raw2[] = {self_path, "--raw", dopad.sock, other, dest, NULL};
    CHECK_INT(test_run(raw1, theirs, sizeof theirs, 60, uid, gid), 0);
    CHECK_INT(test_run(raw2, none, sizeof none, 60, uid, gid), 0);
    if (strcmp(theirs, none) != 0) {
        /* Name the ops that answer differently. */
        const char *a = theirs, *b = none;
        while (*a != '\0' && *b != '\0') {
            size_t na = strcspn(a, "\n"), nb = strcspn(b, "\n");
            if (na != nb || memcmp(a, b, na) != 0)
                printf("  raw, someone's job: %.*s\n  raw, no job:        %.*s\n", (int)na, a,
                       (int)nb, b);
            a += na + (a[na] != '\0');
            b += nb + (b[nb] != '\0');
        }
        CHECK(0);
    }
    int ops = 0;
    for (const char *p = theirs; (p = strstr(p, "op ")) != NULL; p++)
        ops++;
    CHECK_INT(ops, PROTO_OP_END - 1);
    printf("  uid %u about uid %u's job: %d commands and %d raw ops answered as for no job\n",
           (unsigned)uid, victim->uid == TEST_AS_ME ? 0u : (unsigned)victim->uid, refused, ops);
}

static void test_another_user_can_neither_touch_nor_see_my_jobs(void)
{
    const char *home = dir_for("home", user_uid, user_gid, 0755);
    char dest[1200], root_dest[1200], out[8192], before[8192], after[8192];
    snprintf(dest, sizeof dest, "%s/mine.bin", home);
    snprintf(root_dest, sizeof root_dest, "%.1000s/roots.bin", check_tmpdir());
    struct job users = {.uid = user_uid, .gid = user_gid, .name = "the user's own"};
    struct job roots = {.uid = TEST_AS_ME, .name = "root's own"};
    CHECK_INT(new_job(&users, "/data/small.bin", dest, out, sizeof out), 0);
    CHECK_INT(new_job(&roots, "/data/small.bin", root_dest, out, sizeof out), 0);
    CHECK_INT(JOB(&users, out, sizeof out, "set-description", users.id, "keep out"), 0);
    CHECK_INT(JOB(&users, before, sizeof before, "--json", "info", users.id), 0);

    /* A user's job, against another user; root's, against both. */
    check_stranger_sees_nothing(&users, other_uid, other_gid, 1);
    check_stranger_sees_nothing(&roots, other_uid, other_gid, 0);
    check_stranger_sees_nothing(&roots, user_uid, user_gid, 0);

    /* Nothing changed: not a field, not the version. */
    CHECK_INT(JOB(&users, after, sizeof after, "--json", "info", users.id), 0);
    CHECK_STR(after, before);
    CHECK(hostile_file_size(users.tmp) == 0);
    CHECK(hostile_file_size(check_path("home/stranger.bin")) < 0);
    /* And the owners still finish their jobs. */
    struct job *jobs[] = {&users, &roots};
    for (int i = 0; i < 2; i++) {
        char state[32], message[600];
        CHECK_INT(JOB(jobs[i], out, sizeof out, "resume", jobs[i]->id), 0);
        settle(jobs[i], state, sizeof state, message, sizeof message);
        CHECK_STR(state, "TRANSFERRED");
        CHECK_INT(JOB(jobs[i], out, sizeof out, "complete", jobs[i]->id), 0);
        check_content(jobs[i]->dest, 5, SIZE_SMALL);
    }
    struct stat st;
    CHECK(stat(dest, &st) == 0);
    CHECK_INT(st.st_uid, user_uid);
}

/* ------------------------------------------------------------------ */
/* Links planted before the job runs                                  */

/* Makes a link (symbolic, else hard) to `target` at `at`, as `uid` would
 * (a hard link to root's file is one only a system without
 * fs.protected_hardlinks lets a user make; root makes it here). */
static void plant(const char *target, const char *at, int symbolic, uid_t uid, gid_t gid)
{
    if (symbolic) {
        CHECK(symlink(target, at) == 0);
        CHECK(lchown(at, uid, gid) == 0);
    } else {
        CHECK(link(target, at) == 0);
    }
}

/* The time dopad takes to answer, in seconds. */
static double answer_time(void)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_INT(as_root(NULL, 0, "whoami"), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

static void test_links_the_owner_plants_are_not_followed(void)
{
    const char *home = dir_for("home", user_uid, user_gid, 0755);
    char dest[1200], out[8192], state[32], message[600];

    /* At the destination, a symbolic or a hard link to root's file: the
     * job's file takes the name's place, root's file keeps its bytes. */
    for (int symbolic = 1; symbolic >= 0; symbolic--) {
        snprintf(dest, sizeof dest, "%s/%s.bin", home, symbolic ? "symlinked" : "hardlinked");
        plant(shadow, dest, symbolic, user_uid, user_gid);
        struct job j = {.uid = user_uid, .gid = user_gid};
        CHECK_INT(new_job(&j, "/data/small.bin", dest, out, sizeof out), 0);
        CHECK_INT(JOB(&j, out, sizeof out, "resume", j.id), 0);
        settle(&j, state, sizeof state, message, sizeof message);
        CHECK_STR(state, "TRANSFERRED");
        CHECK_INT(JOB(&j, out, sizeof out, "complete", j.id), 0);
        struct stat st;
        CHECK(lstat(dest, &st) == 0 && S_ISREG(st.st_mode));
        CHECK_INT(st.st_uid, user_uid);
        check_content(dest, 5, SIZE_SMALL);
        check_roots_files_untouched();
        printf("  a %s link to root's file at the destination: replaced by the download\n",
               symbolic ? "symbolic" : "hard");
    }

    /* A destination under a link to root's directories: refused at once. */
    const char *dirs[] = {private_dir, etc_dir};
    for (int i = 0; i < 2; i++) {
        char link_dir[1200];
        snprintf(link_dir, sizeof link_dir, "%s/into-%d", home, i);
        plant(dirs[i], link_dir, 1, user_uid, user_gid);
        snprintf(dest, sizeof dest, "%.1100s/x.bin", link_dir);
        struct job j = {.uid = user_uid, .gid = user_gid};
        CHECK_INT(new_job(&j, "/data/small.bin", dest, out, sizeof out), 4);
        CHECK_HAS(out, "Permission denied");
    }
    check_roots_files_untouched();
    printf("  a destination under a link to root's directories: refused by add-file\n");

    /* The temporary file, replaced before Resume by a symbolic link, a hard
     * link to root's file, or a FIFO: the job fails and says so; nothing
     * is written there, and dopad does not block on the FIFO. */
    const char *kinds[] = {"a symbolic link", "a hard link", "a FIFO"};
    for (int k = 0; k < 3; k++) {
        snprintf(dest, sizeof dest, "%s/temp-%d.bin", home, k);
        struct job j = {.uid = user_uid, .gid = user_gid};
        CHECK_INT(new_job(&j, "/data/small.bin", dest, out, sizeof out), 0);
        CHECK(unlink(j.tmp) == 0);
        if (k < 2)
            plant(shadow, j.tmp, k == 0, user_uid, user_gid);
        else
            CHECK(mkfifo(j.tmp, 0600) == 0 && lchown(j.tmp, user_uid, user_gid) == 0);
        CHECK_INT(JOB(&j, out, sizeof out, "resume", j.id), 0);
        settle(&j, state, sizeof state, message, sizeof message);
        double took = answer_time();
        printf("  the temporary file replaced by %s: %s: %s (dopad answered in %.2f s)\n", kinds[k],
               state, message, took);
        CHECK_STR(state, "ERROR");
        CHECK_HAS(message, j.tmp);
        CHECK(took < 2);
        CHECK_INT(JOB(&j, out, sizeof out, "cancel", j.id), 0);
        CHECK(hostile_file_size(dest) < 0);
        /* Cancel removes a planted symbolic link (that touches nothing
         * else) and leaves any other thing it did not make. */
        struct stat st;
        int stayed = lstat(j.tmp, &st) == 0;
        CHECK_INT(stayed, k > 0);
        if (stayed)
            CHECK(unlink(j.tmp) == 0);
        check_roots_files_untouched();
    }
}

/* ------------------------------------------------------------------ */
/* Links swapped in while the job runs                                */

/* A racer: `kind` "swap" moves `path` aside, puts a symbolic link to
 * `target` in its place and moves it back, over and over; "plant" puts a
 * link at `path` and takes it away again. Runs as the attacker. */
struct racer {
    const char *kind, *path, *target;
    pid_t pid;
    char out[1200];
};

static void start_racers(struct racer *r, size_t n, uid_t uid, gid_t gid)
{
    for (size_t i = 0; i < n; i++) {
        static unsigned racers_started;
        snprintf(r[i].out, sizeof r[i].out, "%s/racer-%u.out", check_tmpdir(), ++racers_started);
        const char *argv[] = {self_path, "--race", r[i].kind, r[i].path, r[i].target, NULL};
        r[i].pid = test_spawn(argv, r[i].out, uid, gid);
        CHECK(r[i].pid > 0);
    }
    /* Each says when it races (and so will put things back on SIGTERM). */
    for (size_t i = 0; i < n; i++) {
        int ready = 0;
        for (int t = 0; t < 500 && !ready; t++) {
            char line[64] = "";
            FILE *f = fopen(r[i].out, "r");
            if (f != NULL) {
                ready = fgets(line, sizeof line, f) != NULL && strcmp(line, "racing\n") == 0;
                fclose(f);
            }
            if (!ready)
                check_sleep_ms(10);
        }
        CHECK(ready);
    }
}

/* Stops the racers (each puts its path back as it found it) and says
 * how often they swapped, in `said`. */
static void stop_racers(struct racer *r, size_t n, char *said, size_t len)
{
    said[0] = '\0';
    for (size_t i = 0; i < n; i++)
        kill(r[i].pid, SIGTERM);
    for (size_t i = 0; i < n; i++) {
        CHECK_INT(test_wait(r[i].pid, 10), 0);
        char line[200] = "";
        FILE *f = fopen(r[i].out, "r");
        if (f != NULL) {
            /* The last line: how often it swapped. */
            char next[200];
            while (fgets(next, sizeof next, f) != NULL)
                snprintf(line, sizeof line, "%s", next);
            fclose(f);
        }
        line[strcspn(line, "\n")] = '\0';
        size_t at = strlen(said);
        snprintf(said + at, len - at, "%s%s %s: %s", i ? "; " : "", r[i].kind,
                 strrchr(r[i].path, '/') + 1, line);
    }
}

/* How a job fared under racers. */
struct race_result {
    int rounds, refused;
    char first_refusal[600];
    char state[32], message[600];
};

/* Suspends and resumes the job (each Resume opens its temporary file
 * again) for `ms` while the racers run; then stops them, resumes, and
 * waits for the job to end. */
static struct race_result race_job(struct job *j, struct racer *r, size_t n, uid_t uid, gid_t gid,
                                   int ms)
{
    struct race_result res = {0};
    char out[8192], state[32], message[600];
    struct timespec t0, now;
    CHECK_INT(JOB(j, out, sizeof out, "resume", j->id), 0);
    start_racers(r, n, uid, gid);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        JOB(j, out, sizeof out, "suspend", j->id);
        JOB(j, out, sizeof out, "resume", j->id);
        check_sleep_ms(100);
        job_state(j, state, sizeof state, message, sizeof message);
        if (strcmp(state, "ERROR") == 0) {
            if (res.refused++ == 0)
                snprintf(res.first_refusal, sizeof res.first_refusal, "%s", message);
        }
        res.rounds++;
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000 < ms);
    char said[1000];
    stop_racers(r, n, said, sizeof said);
    printf("  racers: %s\n", said);
    JOB(j, out, sizeof out, "resume", j->id);
    settle(j, res.state, sizeof res.state, res.message, sizeof res.message);
    return res;
}

/* The job ended well, or failed saying what about its file was wrong. */
static void check_race_outcome(struct job *j, const struct race_result *res, const char *who)
{
    printf("  %s: %d suspend/resume rounds, %d refused (first: %s); the job ended %s%s%s\n", who,
           res->rounds, res->refused, res->refused ? res->first_refusal : "-", res->state,
           res->message[0] ? ": " : "", res->message);
    char out[8192];
    if (strcmp(res->state, "TRANSFERRED") == 0 && JOB(j, out, sizeof out, "complete", j->id) == 0) {
        struct stat st;
        CHECK(lstat(j->dest, &st) == 0 && S_ISREG(st.st_mode));
        CHECK_INT(st.st_uid, j->uid == TEST_AS_ME ? 0 : j->uid);
        check_content(j->dest, 6, SIZE_SLOW);
    } else if (strcmp(res->state, "TRANSFERRED") == 0) {
        /* The bytes went to a file no longer at the temporary name (it was
         * made again while the racers held the old one): Complete refuses
         * to move what is there now. */
        printf("  complete: %s", out);
        CHECK_HAS(out, "cannot move into place");
        CHECK(hostile_file_size(j->dest) < 0);
        CHECK_INT(JOB(j, out, sizeof out, "cancel", j->id), 0);
    } else {
        CHECK_STR(res->state, "ERROR");
        CHECK_HAS(res->message, "cannot ");
        CHECK_INT(JOB(j, out, sizeof out, "cancel", j->id), 0);
    }
    check_roots_files_untouched();
}

static void test_the_owner_racing_its_own_job_cannot_redirect_it(void)
{
    const char *home = dir_for("home", user_uid, user_gid, 0755);
    char dl[1200], dest[1300], out[8192];
    snprintf(dl, sizeof dl, "%s/dl", home);
    CHECK(mkdir(dl, 0755) == 0 && chown(dl, user_uid, user_gid) == 0);
    snprintf(dest, sizeof dest, "%s/big.bin", dl);
    struct job j = {.uid = user_uid, .gid = user_gid};
    CHECK_INT(new_job(&j, "/slow/big.bin", dest, out, sizeof out), 0);
    /* The temporary file and its directory, each swapped for a link to
     * root's file or directory. */
    struct racer r[] = {{.kind = "swap", .path = j.tmp, .target = shadow},
                        {.kind = "swap", .path = dl, .target = private_dir}};
    struct race_result res = race_job(&j, r, 2, user_uid, user_gid, 3000);
    check_race_outcome(&j, &res, "the owner's own job");
}

/* The temporary name dopad will give the first file of job `id` bound
 * for directory `dir`: DIR/.dopa-<the id's 32 hex digits>-0.part. */
static void predicted_temp(const char *dir, const char *id, char *out, size_t len)
{
    char hex[33];
    size_t n = 0;
    for (const char *p = id; *p != '\0' && n < 32; p++)
        if (*p != '-')
            hex[n++] = *p;
    hex[n] = '\0';
    snprintf(out, len, "%s/.dopa-%s-0.part", dir, hex);
}

static void test_another_user_cannot_redirect_roots_job_in_a_shared_directory(void)
{
    char out[8192], dest[1300], state[32], message[600];
    /* A sticky directory everyone writes, like /tmp. */
    const char *sticky = dir_for("tmp", 0, 0, 01777);

    /* A link planted where the temporary file will be: add-file makes its
     * file anew and refuses to use what it finds there. */
    struct job early = {.uid = TEST_AS_ME};
    CHECK_INT(as_root(out, sizeof out, "create", "target"), 0);
    hostile_first_line(out, early.id, sizeof early.id);
    predicted_temp(sticky, early.id, early.tmp, sizeof early.tmp);
    plant(shadow, early.tmp, 1, user_uid, user_gid);
    char u[256];
    url(u, sizeof u, "/data/small.bin");
    snprintf(dest, sizeof dest, "%s/early.bin", sticky);
    CHECK_INT(as_root(out, sizeof out, "add-file", early.id, u, dest), 4);
    CHECK_HAS(out, "File exists");
    check_roots_files_untouched();
    printf("  a link at the temporary name before add-file: refused (%.*s)\n",
           (int)strcspn(strstr(out, "File exists"), "\n"), strstr(out, "File exists"));

    /* Links planted at the destination over and over while the job runs
     * and completes: the download takes the name, root's file keeps its. */
    struct job planted = {.uid = TEST_AS_ME};
    snprintf(dest, sizeof dest, "%s/planted.bin", sticky);
    CHECK_INT(new_job(&planted, "/slow/big.bin", dest, out, sizeof out), 0);
    struct racer at_dest[] = {{.kind = "plant", .path = dest, .target = shadow}};
    struct race_result res = race_job(&planted, at_dest, 1, user_uid, user_gid, 1000);
    start_racers(at_dest, 1, user_uid, user_gid);
    check_race_outcome(&planted, &res, "root's job, links planted at its destination");
    char said[1000];
    stop_racers(at_dest, 1, said, sizeof said);
    struct stat st;
    CHECK(lstat(dest, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == 0);

    /* A directory everyone may write, not sticky: the other user may move
     * root's temporary file and the directory itself. */
    const char *pub = dir_for("pub", 0, 0, 0777);
    char dl[1200];
    snprintf(dl, sizeof dl, "%s/dl", pub);
    CHECK(mkdir(dl, 0777) == 0 && chmod(dl, 0777) == 0);

    /* Root's temporary file deleted and a file of the user's put in its
     * place, which may well get the same inode number: not written. */
    struct job reused = {.uid = TEST_AS_ME};
    snprintf(dest, sizeof dest, "%s/reused.bin", dl);
    CHECK_INT(new_job(&reused, "/data/small.bin", dest, out, sizeof out), 0);
    struct stat was;
    CHECK(stat(reused.tmp, &was) == 0);
    CHECK(unlink(reused.tmp) == 0);
    int fd = open(reused.tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    CHECK(fd >= 0);
    CHECK(fchown(fd, user_uid, user_gid) == 0);
    CHECK(fstat(fd, &st) == 0);
    close(fd);
    CHECK_INT(JOB(&reused, out, sizeof out, "resume", reused.id), 0);
    settle(&reused, state, sizeof state, message, sizeof message);
    printf("  root's temporary file replaced by the user's (%s inode): %s: %s\n",
           st.st_ino == was.st_ino ? "the same" : "another", state, message);
    CHECK_STR(state, "ERROR");
    CHECK_HAS(message, "not the temporary file dopa made");
    CHECK_INT(hostile_file_size(reused.tmp), 0);
    CHECK_INT(JOB(&reused, out, sizeof out, "complete", reused.id), 0);
    CHECK(hostile_file_size(dest) < 0);
    CHECK_INT(hostile_file_size(reused.tmp), 0); /* the user's file stays theirs */

    /* The temporary file and its directory swapped for links to root's
     * file and directory over and over while the job runs. */
    struct job raced = {.uid = TEST_AS_ME};
    snprintf(dest, sizeof dest, "%s/raced.bin", dl);
    CHECK_INT(new_job(&raced, "/slow/big.bin", dest, out, sizeof out), 0);
    struct racer r[] = {{.kind = "swap", .path = raced.tmp, .target = shadow},
                        {.kind = "swap", .path = dl, .target = private_dir},
                        {.kind = "plant", .path = dest, .target = shadow}};
    res = race_job(&raced, r, 3, user_uid, user_gid, 3000);
    check_race_outcome(&raced, &res, "root's job in a directory the user may write");

    /* Complete while the temporary file is swapped for a link over and
     * over: each try moves root's file into place or refuses; what lands
     * at the destination is never the link. (Many jobs, since a Complete
     * is over in a moment.) */
    enum { COMPLETES = 12 };
    static struct job done[COMPLETES];
    static char done_dest[COMPLETES][1300];
    for (int i = 0; i < COMPLETES; i++) {
        done[i] = (struct job){.uid = TEST_AS_ME};
        snprintf(done_dest[i], sizeof done_dest[i], "%s/moved-%d.bin", dl, i);
        CHECK_INT(new_job(&done[i], "/data/small.bin", done_dest[i], out, sizeof out), 0);
        CHECK_INT(JOB(&done[i], out, sizeof out, "resume", done[i].id), 0);
    }
    int tries = 0, moved = 0, links = 0, caught = 0;
    for (int i = 0; i < COMPLETES; i++) {
        settle(&done[i], state, sizeof state, message, sizeof message);
        CHECK_STR(state, "TRANSFERRED");
        struct racer at_temp[] = {{.kind = "swap", .path = done[i].tmp, .target = shadow}};
        start_racers(at_temp, 1, user_uid, user_gid);
        int rc = 4;
        for (int k = 0; rc != 0 && k < 100; k++, tries++) {
            rc = JOB(&done[i], out, sizeof out, "complete", done[i].id);
            caught += rc != 0 && strstr(out, "not the temporary file dopa made") != NULL;
        }
        stop_racers(at_temp, 1, said, sizeof said);
        if (rc != 0)
            continue;
        moved++;
        CHECK(lstat(done_dest[i], &st) == 0);
        links += S_ISLNK(st.st_mode);
        if (S_ISREG(st.st_mode)) {
            CHECK_INT(st.st_uid, 0);
            check_content(done_dest[i], 5, SIZE_SMALL);
        }
    }
    printf("  Complete under a racer swapping the temporary file: %d jobs, %d tries, %d moved, "
           "%d refused after the rename moved the racer's link (taken away again), %d left "
           "the link at the destination\n",
           COMPLETES, tries, moved, caught, links);
    CHECK_INT(links, 0);
    CHECK(moved > 0);
    check_roots_files_untouched();
}

/* ------------------------------------------------------------------ */

/* --raw SOCKET ID and --race ... run here, in the attacker's shoes. */
static volatile sig_atomic_t stop_racing;

static void on_term(int sig)
{
    (void)sig;
    stop_racing = 1;
}

/* --race KIND PATH TARGET: see struct racer. Until SIGTERM; then it puts
 * PATH back as it found it (waiting for its directory to come back, if
 * another racer has it) and prints how often it swapped. */
static int race(const char *kind, const char *path, const char *target)
{
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    char held[4200];
    snprintf(held, sizeof held, "%s.held", path);
    int swap = strcmp(kind, "swap") == 0, holding = 0;
    unsigned long rounds = 0, links = 0;
    srand((unsigned)getpid());
    printf("racing\n");
    fflush(stdout);
    for (int tries = 0; !stop_racing || (holding && tries < 5000); tries += stop_racing) {
        if (swap && !holding && !stop_racing)
            holding = rename(path, held) == 0;
        if ((!swap || holding) && !stop_racing && symlink(target, path) == 0)
            links++;
        struct timespec ts = {0, 100000 + rand() % 900000};
        nanosleep(&ts, NULL);
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
            unlink(path);
        if (holding && rename(held, path) == 0)
            holding = 0;
        ts.tv_nsec = 100000 + rand() % 900000;
        nanosleep(&ts, NULL);
        rounds++;
    }
    printf("%lu rounds, %lu links%s\n", rounds, links, holding ? ", COULD NOT PUT IT BACK" : "");
    return holding;
}

static void teardown(void)
{
    test_dopad_stop(&dopad, SIGKILL);
    test_nginx_stop(&web);
    if (user_created)
        test_user_remove();
}

static int setup(void)
{
    if ((scratch = test_scratch_dir("hostile-local")) == NULL)
        return -1;
    atexit(teardown);
    int created;
    if (test_user(&user_uid, &user_gid, &created) != 0)
        return -1;
    user_created = created;
    /* The stranger: nobody, or a uid no one has. */
    struct passwd *pw = getpwnam("nobody");
    other_uid = pw != NULL ? pw->pw_uid : 65533;
    other_gid = pw != NULL ? pw->pw_gid : 65533;
    snprintf(etc_dir, sizeof etc_dir, "%.900s/etc", scratch);
    if (mkdir(etc_dir, 0755) != 0)
        return -1;
    snprintf(private_dir, sizeof private_dir, "%.900s/etc/private", scratch);
    snprintf(shadow, sizeof shadow, "%.900s/etc/shadow", scratch);
    FILE *f = fopen(shadow, "w");
    if (f == NULL || fputs(SECRET, f) < 0 || fclose(f) != 0 || chmod(shadow, 0644) != 0 ||
        mkdir(private_dir, 0700) != 0 || stat(shadow, &shadow_was) != 0)
        return -1;

    test_nginx_config cfg = {.server = "location /slow/ { limit_rate 3m; }"};
    char dir[1200];
    snprintf(dir, sizeof dir, "%.900s/web", scratch);
    if (test_nginx_start(&web, dir, &cfg) != 0)
        return -1;
    snprintf(dir, sizeof dir, "%s/data", web.root);
    mkdir(dir, 0755);
    snprintf(dir, sizeof dir, "%s/slow", web.root);
    mkdir(dir, 0755);
    if (test_nginx_put(&web, "data/small.bin", SIZE_SMALL, 5) != 0 ||
        test_nginx_put(&web, "slow/big.bin", SIZE_SLOW, 6) != 0)
        return -1;
    snprintf(dir, sizeof dir, "%.900s/dopad", scratch);
    if (mkdir(dir, 0755) != 0)
        return -1;
    return test_dopad_start(&dopad, DOPAD, dir, NULL);
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--raw") == 0)
        return raw_ops(argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "--race") == 0)
        return race(argv[2], argv[3], argv[4]);
    if (geteuid() != 0) {
        printf("skipped: local attacks need root (a second user, and a dopad running as "
               "root)\n");
        return 77;
    }
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
    if (n <= 0)
        return 1;
    self_path[n] = '\0';
    signal(SIGPIPE, SIG_IGN);
    if (setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_another_user_can_neither_touch_nor_see_my_jobs),
                         CASE(test_links_the_owner_plants_are_not_followed),
                         CASE(test_the_owner_racing_its_own_job_cannot_redirect_it),
                         CASE(test_another_user_cannot_redirect_roots_job_in_a_shared_directory),
                         {0},
                     });
}

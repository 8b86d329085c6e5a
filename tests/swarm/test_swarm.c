/*
 * The peer protocol in a swarm: real dopads, each in its own network
 * namespace on one bridge, finding each other by multicast beacons, with a
 * real nginx as the origin in a namespace of its own (throttled like a WAN
 * origin) and a hostile peer (rogue) in another. The cases pin what the
 * group is for and what it must withstand: agents fetching together ask the
 * origin for about one copy, a late joiner needs nothing from it, corrupt
 * and stalling peers cost time but never content, outsiders and replayed
 * messages get no answer, and the group serves itself when the origin is
 * gone, and in a crowd of 32 only a few members fetch from the origin;
 * last, every dopad stops cleanly (what an ASan build is run for).
 * Each case prints its figure.
 *
 * Needs root (it makes namespaces); exits 77 (skipped) otherwise. The scene
 * is built once for the program and removed at exit, or on a signal; the
 * dopads keep their state directories from case to case (case 2 and 6 need
 * what case 1 fetched, and fetch it themselves when run alone).
 * DOPAD, DOPA_CLI, DOPA_MANIFEST and ROGUE name the programs.
 */
#include <dirent.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "../check.h"
#include "nginx.h"
#include "proc.h"
#include "scene.h"

#define MIB           (1024 * 1024)
#define N_AGENTS      5 /* agent namespaces */
#define N_TOGETHER    3 /* agents that fetch together */
#define PEER_PORT     7880
#define BAN_AFTER     4
#define IN_FLIGHT     4
#define GET_TIMEOUT_S 120
#define N_CROWD       32 /* agents of the crowd case */
#define CROWD_NODES   8  /* their namespaces, at 10.net.0.101 and on */
#define CROWD_HOST    101
#define FETCHERS      4 /* members fetching from the origin at a time (peer/swarm.c) */

typedef struct agent {
    const scene_node *node;
    char label[16]; /* its directory's name: a new label is a new state */
    char dir[700];  /* scratch/agents/label */
    char sock[800]; /* dir/control.sock */
    int port;       /* its peer port; 0: PEER_PORT */
    pid_t pid;
} agent;

typedef struct content {
    const char *name;
    size_t size;
    const char *piece_size; /* for dopa-manifest; NULL: its default */
    char path[700];         /* in the origin's document root */
    char manifest[700];     /* signed by the trusted publisher key */
    char url[128];
    char uri[64];
} content;

/* What one `dopa --json get` said. */
typedef struct fetch {
    const struct agent *a;
    pid_t pid;
    char out[800]; /* the file it writes */
    char log[800]; /* what dopa printed */
    int status;
    long long from_origin, from_peers;
} fetch;

static scene world;
static const char *scratch;
static char scratch_copy[600]; /* for the signal handler (execv wants char *) */
static const scene_node *origin_node, *rogue_node;
static agent agents[N_AGENTS]; /* one in each agent namespace */
static agent outsider;         /* case 5: a dopad of another group */
static agent crowd[N_CROWD];   /* the crowd case's agents, N_CROWD / CROWD_NODES a namespace */
static test_nginx origin;      /* only dir is used: for test_nginx_bytes_sent */
static pid_t nginx_pid = -1, rogue_pid = -1;
static char group_key[700], other_key[700], crowd_key[700], publisher_key[700];
static content f1 = {.name = "f1.bin", .size = 64 * MIB};
static content f2 = {.name = "f2.bin", .size = 32 * MIB};
static content f3 = {.name = "f3.bin", .size = 32 * MIB};
/* 32 pieces: as many as the crowd, so that every member could have a share. */
static content f4 = {.name = "f4.bin", .size = 8 * MIB, .piece_size = "256K"};
static int f1_held; /* agents[0..N_TOGETHER) hold f1 */
static pid_t case_pids[N_CROWD + 16];
static int unclean_stops; /* dopads that did not end with 0 when told to stop */

static void fmt(char *out, size_t len, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *out, size_t len, const char *f, ...)
{
    va_list ap;
    va_start(ap, f);
    int n = vsnprintf(out, len, f, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= len)
        check_failed(__FILE__, __LINE__, "path too long");
}

static int write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs(text, f);
    return fclose(f);
}

/* The value of "field":NUMBER in a JSON object, or -1. */
static long long json_int(const char *json, const char *field)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", field);
    const char *p = strstr(json, key);
    return p != NULL ? strtoll(p + strlen(key), NULL, 10) : -1;
}

/* Whether two files hold the same bytes. */
static int same_file(const char *a, const char *b)
{
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    static unsigned char ba[MIB], bb[MIB];
    int same = fa != NULL && fb != NULL;
    while (same) {
        size_t na = fread(ba, 1, sizeof ba, fa), nb = fread(bb, 1, sizeof bb, fb);
        same = na == nb && memcmp(ba, bb, na) == 0;
        if (na == 0)
            break;
    }
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    return same;
}

/* ------------------------------------------------------------------ */
/* Processes of the running case (the `dopa` commands)                */

static pid_t case_spawn(const char *const argv[], const char *log)
{
    pid_t pid = test_spawn(argv, log, TEST_AS_ME, 0);
    for (size_t i = 0; pid > 0 && i < sizeof case_pids / sizeof case_pids[0]; i++)
        if (case_pids[i] == 0) {
            case_pids[i] = pid;
            break;
        }
    return pid;
}

static int case_wait(pid_t pid, int timeout_s)
{
    int rc = test_wait(pid, timeout_s);
    for (size_t i = 0; i < sizeof case_pids / sizeof case_pids[0]; i++)
        if (case_pids[i] == pid)
            case_pids[i] = 0;
    return rc;
}

/* ------------------------------------------------------------------ */
/* The origin: nginx in its namespace, 20 MB/s a connection           */

static void origin_up(void)
{
    if (nginx_pid > 0)
        return;
    char conf[900], text[8192], err[900];
    fmt(conf, sizeof conf, "%s/nginx.conf", origin.dir);
    fmt(err, sizeof err, "%s/error.log", origin.dir);
    fmt(text, sizeof text,
        "daemon off;\n"
        "master_process off;\n"
        "error_log %s info;\n"
        "pid %s/nginx.pid;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        "  log_format bytes '$uri $status $body_bytes_sent';\n"
        "  access_log %s/bytes.log bytes;\n"
        "  client_body_temp_path %s/tmp;\n"
        "  proxy_temp_path %s/tmp;\n"
        "  fastcgi_temp_path %s/tmp;\n"
        "  uwsgi_temp_path %s/tmp;\n"
        "  scgi_temp_path %s/tmp;\n"
        "  default_type application/octet-stream;\n"
        "  sendfile on;\n"
        "  keepalive_requests 100000;\n"
        "  server {\n"
        "    listen %s:80;\n"
        "    root %s;\n"
        "    limit_rate 20m;\n"
        "  }\n"
        "}\n",
        err, origin.dir, origin.dir, origin.dir, origin.dir, origin.dir, origin.dir, origin.dir,
        origin_node->ip, origin.root);
    CHECK_INT(write_text(conf, text), 0);
    const char *argv[] = {"/usr/sbin/nginx", "-p", origin.dir, "-c", conf, "-e", err, NULL};
    nginx_pid = scene_spawn(&world, origin_node, argv, err);
    CHECK(nginx_pid > 0);
    for (int i = 0; i < 100; i++) {
        if (scene_can_connect(origin_node, origin_node->ip, 80))
            return;
        if (waitpid(nginx_pid, NULL, WNOHANG) == nginx_pid)
            break;
        check_sleep_ms(100);
    }
    fprintf(stderr, "  nginx did not start; see %s\n", err);
    scene_stop(&world, nginx_pid, SIGKILL);
    nginx_pid = -1;
    CHECK(0);
}

static void origin_down(void)
{
    scene_stop(&world, nginx_pid, SIGTERM);
    nginx_pid = -1;
}

/* Body bytes nginx sent for the content so far (its log is written as each
 * response ends: give it a moment). */
static long long origin_sent(const content *c)
{
    check_sleep_ms(300);
    return test_nginx_bytes_sent(&origin, c->uri);
}

/* ------------------------------------------------------------------ */
/* Agents                                                             */

/* Runs `dopa --socket SOCK args...`; its exit status, output in out. */
static int cli(const agent *a, char *out, size_t len, ...)
{
    const char *argv[24] = {DOPA_CLI, "--socket", a->sock};
    int n = 3;
    va_list ap;
    va_start(ap, len);
    const char *arg;
    while ((arg = va_arg(ap, const char *)) != NULL && n < 23)
        argv[n++] = arg;
    va_end(ap);
    argv[n] = NULL;
    return test_run(argv, out, len, 30, TEST_AS_ME, 0);
}

static void agent_stop(agent *a)
{
    if (a->pid > 0) {
        int rc = scene_stop(&world, a->pid, SIGTERM);
        if (rc != 0) {
            fprintf(stderr, "  dopad %s ended with %d; see %s/dopad.log\n", a->label, rc, a->dir);
            unclean_stops++;
        }
    }
    a->pid = -1;
}

/* (Re)starts the agent of `label` in its namespace with `key` as its group
 * key and `extra` added to [peers]; waits until it answers. */
static void agent_start(agent *a, const char *label, const char *key, const char *extra)
{
    agent_stop(a);
    char copy[sizeof a->label]; /* label may be a->label */
    snprintf(copy, sizeof copy, "%s", label);
    snprintf(a->label, sizeof a->label, "%s", copy);
    char conf[900], log[900], state[900], text[4096];
    fmt(a->dir, sizeof a->dir, "%s/agents/%s", scratch, copy);
    fmt(a->sock, sizeof a->sock, "%s/control.sock", a->dir);
    fmt(conf, sizeof conf, "%s/dopad.conf", a->dir);
    fmt(log, sizeof log, "%s/dopad.log", a->dir);
    fmt(state, sizeof state, "%s/state", a->dir);
    mkdir(a->dir, 0755);
    fmt(text, sizeof text,
        "[dopad]\n"
        "trusted-key = %s.pub\n"
        "[peers]\n"
        "group-key = %s\n"
        "listen = tcp://%s:%d\n"
        "beacons = yes\n"
        "beacon-interval = 1\n"
        "piece-timeout = 2\n"
        "ban-after = %d\n"
        "requests-in-flight = %d\n"
        "%s\n",
        publisher_key, key, a->node->ip, a->port ? a->port : PEER_PORT, BAN_AFTER, IN_FLIGHT,
        extra);
    CHECK_INT(write_text(conf, text), 0);
    const char *argv[] = {DOPAD, "--config", conf, "--socket", a->sock, "--state-dir", state, NULL};
    a->pid = scene_spawn(&world, a->node, argv, log);
    CHECK(a->pid > 0);
    for (int i = 0; i < 200; i++) {
        char out[512];
        if (cli(a, out, sizeof out, "whoami", (char *)NULL) == 0)
            return;
        if (waitpid(a->pid, NULL, WNOHANG) == a->pid) {
            scene_wait(&world, a->pid, 1);
            a->pid = -1;
            fprintf(stderr, "  dopad %s died at start; see %s\n", copy, log);
            CHECK(0);
        }
        check_sleep_ms(50);
    }
    fprintf(stderr, "  dopad %s did not answer in 10 s; see %s\n", copy, log);
    CHECK(0);
}

/* What `dopa --json stats` says of the agent, in out. */
static void stats_of(const agent *a, char *out, size_t len)
{
    int rc = cli(a, out, len, "--json", "stats", (char *)NULL);
    if (rc != 0)
        fprintf(stderr, "  dopa stats (%s): exit %d: %s\n", a->label, rc, out);
    CHECK_INT(rc, 0);
}

/* One counter of such an answer. */
static long long stats_field(const agent *a, const char *stats, const char *field)
{
    long long v = json_int(stats, field);
    if (v < 0)
        fprintf(stderr, "  dopa stats (%s) has no %s: %s\n", a->label, field, stats);
    CHECK(v >= 0);
    return v;
}

/* One of the agent's counters from `dopa --json stats`. */
static long long stat_of(const agent *a, const char *field)
{
    char out[4096];
    stats_of(a, out, sizeof out);
    return stats_field(a, out, field);
}

/* When agents do not find each other: whether the kernel's neighbour table,
 * which every namespace shares, has been full. Then multicast beacons are
 * dropped as they are sent (ENOBUFS, which UDP does not report). */
static void note_neighbour_table(void)
{
    FILE *f = fopen("/proc/net/stat/arp_cache", "r");
    char line[512];
    int column = -1; /* of table_fulls */
    unsigned long entries = 0, fulls = 0;
    if (f != NULL && fgets(line, sizeof line, f) != NULL) {
        int k = 0;
        for (char *save = NULL, *w = strtok_r(line, " \n", &save); w != NULL;
             w = strtok_r(NULL, " \n", &save), k++)
            if (strcmp(w, "table_fulls") == 0)
                column = k;
    }
    while (f != NULL && column >= 0 && fgets(line, sizeof line, f) != NULL) {
        char *p = line;
        for (int k = 0; k <= column && *p != '\0'; k++) {
            unsigned long v = strtoul(p, &p, 16);
            if (k == 0)
                entries = v; /* the same on every line (per CPU) */
            if (k == column)
                fulls += v;
        }
    }
    if (f != NULL)
        fclose(f);
    if (fulls > 0)
        fprintf(stderr,
                "  the kernel's neighbour table holds %lu entries and was found full %lu times "
                "since boot (net.ipv4.neigh.default.gc_thresh3): other namespaces on this machine "
                "may be using it up\n",
                entries, fulls);
}

/* Waits until the agent knows at least `count` peers. */
static void wait_peers(const agent *a, long long count)
{
    long long known = 0;
    for (int i = 0; i < 150; i++) {
        if ((known = stat_of(a, "peers")) >= count)
            return;
        check_sleep_ms(100);
    }
    fprintf(stderr, "  %s knows %lld peers after 15 s, expected %lld (multicast beacons?)\n",
            a->label, known, count);
    note_neighbour_table();
    CHECK(0);
}

/* Starts `dopa --json get URL -o OUT --manifest M` on the agent. */
static void fetch_start(fetch *f, const agent *a, const content *c, const char *tag)
{
    memset(f, 0, sizeof *f);
    f->a = a;
    fmt(f->out, sizeof f->out, "%s/out/%s-%s-%s", scratch, tag, a->label, c->name);
    fmt(f->log, sizeof f->log, "%s.log", f->out);
    const char *argv[] = {DOPA_CLI, "--socket", a->sock,      "--json",    "get", c->url,
                          "-o",     f->out,     "--manifest", c->manifest, NULL};
    f->pid = case_spawn(argv, f->log);
    CHECK(f->pid > 0);
}

/* Waits for it; checks that it succeeded with the right bytes. */
static void fetch_finish(fetch *f, const content *c, int timeout_s)
{
    f->status = case_wait(f->pid, timeout_s);
    char out[4096] = "";
    FILE *l = fopen(f->log, "r");
    if (l != NULL) {
        out[fread(out, 1, sizeof out - 1, l)] = '\0';
        fclose(l);
    }
    if (f->status != 0) {
        char state[8192];
        fprintf(stderr, "  %s: exit %d: %s\n", f->out, f->status, out);
        if (cli(f->a, state, sizeof state, "--json", "list", (char *)NULL) == 0)
            fprintf(stderr, "  %s's jobs: %s", f->a->label, state);
        if (cli(f->a, state, sizeof state, "--json", "stats", (char *)NULL) == 0)
            fprintf(stderr, "  %s's counters: %s", f->a->label, state);
    }
    CHECK_INT(f->status, 0);
    f->from_origin = json_int(out, "from_origin");
    f->from_peers = json_int(out, "from_peers");
    CHECK_INT(json_int(out, "bytes"), c->size);
    if (!same_file(f->out, c->path)) {
        fprintf(stderr, "  %s differs from %s\n", f->out, c->path);
        CHECK(0);
    }
}

/* The first n agents fetch c at once (each knowing the others first). */
static void fetch_together(const content *c, const char *tag, size_t n, fetch *fs, int timeout_s)
{
    for (size_t i = 0; i < n; i++)
        wait_peers(&agents[i], (long long)n - 1);
    for (size_t i = 0; i < n; i++)
        fetch_start(&fs[i], &agents[i], c, tag);
    for (size_t i = 0; i < n; i++)
        fetch_finish(&fs[i], c, timeout_s);
}

/* Agents that are not running start with the plain configuration. */
static void agents_running(size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (agents[i].pid <= 0) {
            char label[32];
            snprintf(label, sizeof label, "a%zu", i + 1);
            agent_start(&agents[i], label, group_key, "");
        }
}

/* The agents that fetch together start again, with `extra` in [peers]. */
static void agents_restart(const char *extra)
{
    for (size_t i = 0; i < N_TOGETHER; i++) {
        char label[16];
        snprintf(label, sizeof label, "a%zu", i + 1);
        agent_start(&agents[i], agents[i].label[0] ? agents[i].label : label, group_key, extra);
    }
}

/* The agents that fetch together hold f1 (they fetch it if need be). */
static void f1_held_by_group(void)
{
    agents_running(N_TOGETHER);
    if (f1_held)
        return;
    origin_up();
    fetch fs[N_TOGETHER];
    fetch_together(&f1, "seed", N_TOGETHER, fs, GET_TIMEOUT_S);
    f1_held = 1;
}

/* ------------------------------------------------------------------ */
/* The rogue                                                          */

static void rogue_serve(const char *mode, const content *c, const char *report)
{
    char url[64], log[900];
    fmt(url, sizeof url, "tcp://%s:%d", rogue_node->ip, PEER_PORT);
    fmt(log, sizeof log, "%s/rogue.log", scratch);
    const char *argv[] = {ROGUE,      mode, "--key",    group_key, "--manifest", c->manifest,
                          "--listen", url,  "--report", report,    NULL};
    rogue_pid = scene_spawn(&world, rogue_node, argv, log);
    CHECK(rogue_pid > 0);
    for (int i = 0; i < 100; i++) {
        if (scene_can_connect(agents[0].node, rogue_node->ip, PEER_PORT))
            return;
        check_sleep_ms(50);
    }
    fprintf(stderr, "  the rogue does not listen; see %s\n", log);
    CHECK(0);
}

/* Stops it and returns how many piece requests it received. */
static long long rogue_stop(const char *report)
{
    int rc = scene_stop(&world, rogue_pid, SIGTERM);
    rogue_pid = -1;
    CHECK_INT(rc, 0);
    char text[256] = "";
    FILE *f = fopen(report, "r");
    CHECK(f != NULL);
    text[fread(text, 1, sizeof text - 1, f)] = '\0';
    fclose(f);
    const char *p = strstr(text, "piece_reqs=");
    CHECK(p != NULL);
    return strtoll(p + strlen("piece_reqs="), NULL, 10);
}

/* Runs a probing mode of the rogue; its output in out. */
static pid_t rogue_probe(const char *mode, const char *key, const agent *target, const char *log)
{
    char url[64];
    fmt(url, sizeof url, "tcp://%s:%d", target->node->ip, PEER_PORT);
    const char *argv[] = {ROGUE,       mode,     "--key", key, "--manifest",
                          f1.manifest, "--dial", url,     NULL};
    pid_t pid = scene_spawn(&world, rogue_node, argv, log);
    CHECK(pid > 0);
    return pid;
}

static void read_log(const char *path, char *out, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = f != NULL ? fread(out, 1, len - 1, f) : 0;
    out[n] = '\0';
    if (f != NULL)
        fclose(f);
}

/* ------------------------------------------------------------------ */
/* Cases                                                              */

static void test_agents_fetching_together_ask_the_origin_for_about_one_copy(void)
{
    origin_up();
    long long before = origin_sent(&f1);
    /* Fresh agents: nothing cached from an earlier run of this case. */
    for (size_t i = 0; i < N_TOGETHER; i++) {
        char label[16];
        snprintf(label, sizeof label, "a%zu-%ld", i + 1, (long)time(NULL));
        agent_start(&agents[i], label, group_key, "");
    }
    f1_held = 0;
    fetch fs[N_TOGETHER];
    double t0 = check_now();
    fetch_together(&f1, "together", N_TOGETHER, fs, GET_TIMEOUT_S);
    double took = check_now() - t0;
    f1_held = 1;
    long long sent = origin_sent(&f1) - before;
    double ratio = (double)sent / (double)f1.size;
    printf("  together: %d agents fetched %zu MiB in %.1f s; origin sent %.2f x the file "
           "(%lld bytes)\n",
           N_TOGETHER, f1.size / MIB, took, ratio, sent);
    for (size_t i = 0; i < N_TOGETHER; i++)
        printf("    %s: %lld from the origin, %lld from peers\n", agents[i].label,
               fs[i].from_origin, fs[i].from_peers);
    CHECK(ratio <= 1.5);
    CHECK(sent >= (long long)f1.size); /* every byte came from somewhere */
}

static void test_late_joiner_gets_everything_from_peers(void)
{
    f1_held_by_group();
    long long before = origin_sent(&f1);
    agent *late = &agents[3];
    agent_start(late, "late", group_key, "");
    wait_peers(late, N_TOGETHER);
    fetch f;
    fetch_start(&f, late, &f1, "late");
    fetch_finish(&f, &f1, GET_TIMEOUT_S);
    long long sent = origin_sent(&f1) - before;
    printf("  late joiner: %lld bytes from peers, %lld from the origin; origin sent %lld more\n",
           f.from_peers, f.from_origin, sent);
    CHECK_INT(f.from_origin, 0);
    CHECK_INT(f.from_peers, f1.size);
    CHECK_INT(sent, 0);
}

static void test_corrupt_peer_is_banned_and_content_stays_intact(void)
{
    origin_up();
    char report[900], extra[128];
    fmt(report, sizeof report, "%s/rogue-corrupt.txt", scratch);
    fmt(extra, sizeof extra, "peer = tcp://%s:%d", rogue_node->ip, PEER_PORT);
    rogue_serve("--corrupt", &f2, report);
    agents_restart(extra);
    for (size_t i = 0; i < N_TOGETHER; i++)
        wait_peers(&agents[i], N_TOGETHER); /* the others and the rogue */
    fetch fs[N_TOGETHER];
    fetch_together(&f2, "corrupt", N_TOGETHER, fs, 60);
    /* An agent bans the rogue on its BAN_AFTER-th bad piece; what it had
     * asked for then (IN_FLIGHT at most) is the most the rogue can still get. */
    const long long bound = (BAN_AFTER + IN_FLIGHT) * N_TOGETHER;
    long long bad = 0, bans = 0, requests = rogue_stop(report);
    printf("  corrupt peer: received %lld piece requests from %d agents (bound %lld)\n", requests,
           N_TOGETHER, bound);
    for (size_t i = 0; i < N_TOGETHER; i++) {
        long long b = stat_of(&agents[i], "bad_pieces"), n = stat_of(&agents[i], "bans");
        long long banned = stat_of(&agents[i], "banned");
        printf("    %s: %lld bad pieces, %lld bans, %lld banned now\n", agents[i].label, b, n,
               banned);
        bad += b;
        bans += n;
        CHECK(n <= 1);      /* the rogue, and no honest agent */
        CHECK(banned <= 1); /* likewise */
    }
    CHECK(bad >= 1);
    CHECK(bans >= 1);
    CHECK(requests >= 1);
    CHECK(requests <= bound);
}

static void test_stalling_peer_times_out_and_download_completes(void)
{
    origin_up();
    char report[900], extra[128];
    fmt(report, sizeof report, "%s/rogue-stall.txt", scratch);
    fmt(extra, sizeof extra, "peer = tcp://%s:%d", rogue_node->ip, PEER_PORT);
    rogue_serve("--stall", &f3, report);
    agents_restart(extra);
    for (size_t i = 0; i < N_TOGETHER; i++)
        wait_peers(&agents[i], N_TOGETHER);
    fetch fs[N_TOGETHER];
    double t0 = check_now();
    for (size_t i = 0; i < N_TOGETHER; i++)
        fetch_start(&fs[i], &agents[i], &f3, "stall");
    for (size_t i = 0; i < N_TOGETHER; i++)
        fetch_finish(&fs[i], &f3, 60);
    double took = check_now() - t0;
    long long timeouts = 0, requests = rogue_stop(report);
    for (size_t i = 0; i < N_TOGETHER; i++)
        timeouts += stat_of(&agents[i], "timeouts");
    printf("  stalling peer: %d agents fetched %zu MiB in %.1f s; %lld piece requests timed out "
           "(the rogue kept %lld)\n",
           N_TOGETHER, f3.size / MIB, took, timeouts, requests);
    CHECK(timeouts >= 1);
    CHECK(took <= 60);
}

static void test_outsiders_and_replayed_messages_get_no_answer(void)
{
    f1_held_by_group();
    origin_up();
    const agent *target = &agents[0];
    long long refused_before = stat_of(target, "refused");
    /* A stranger's requests, and a member's request sent twice. */
    char out_log[900], replay_log[900], out[512], replay[512];
    fmt(out_log, sizeof out_log, "%s/rogue-outsider.log", scratch);
    fmt(replay_log, sizeof replay_log, "%s/rogue-replay.log", scratch);
    pid_t p1 = rogue_probe("--outsider", other_key, target, out_log);
    pid_t p2 = rogue_probe("--replay", group_key, target, replay_log);
    int rc1 = scene_wait(&world, p1, 20), rc2 = scene_wait(&world, p2, 20);
    read_log(out_log, out, sizeof out);
    read_log(replay_log, replay, sizeof replay);
    printf("  %s", out);
    printf("  %s", replay);
    CHECK_INT(rc1, 0);
    CHECK_INT(rc2, 0);
    CHECK_HAS(out, "outsider replies=0");
    CHECK_HAS(replay, "replay first=1 second=0");
    long long refused = stat_of(target, "refused") - refused_before;
    printf("  %s refused %lld messages\n", target->label, refused);
    CHECK(refused >= 3);

    /* A dopad of another group, told where a member is: it fetches from
     * the origin alone, and the members refuse its beacons and requests. */
    char extra[128];
    fmt(extra, sizeof extra, "peer = tcp://%s:%d", target->node->ip, PEER_PORT);
    outsider.node = agents[4].node;
    agent_start(&outsider, "outsider", other_key, extra);
    fetch f;
    fetch_start(&f, &outsider, &f1, "outsider");
    fetch_finish(&f, &f1, GET_TIMEOUT_S);
    printf("  outsider agent: %lld bytes from the origin, %lld from peers\n", f.from_origin,
           f.from_peers);
    CHECK_INT(f.from_peers, 0);
    CHECK_INT(f.from_origin, f1.size);
    for (size_t i = 0; i < N_TOGETHER; i++) {
        long long r = 0;
        for (int k = 0; k < 50 && (r = stat_of(&agents[i], "refused")) < 1; k++)
            check_sleep_ms(100);
        printf("    %s: %lld messages refused\n", agents[i].label, r);
        CHECK(r >= 1);
    }
}

static void test_members_serve_each_other_when_the_origin_is_gone(void)
{
    f1_held_by_group();
    origin_down();
    agent *b = &agents[3], *c = &agents[4];
    char label[32];
    snprintf(label, sizeof label, "b-%ld", (long)time(NULL));
    agent_start(b, label, group_key, "");
    snprintf(label, sizeof label, "c-%ld", (long)time(NULL));
    agent_start(c, label, group_key, "");
    wait_peers(b, N_TOGETHER + 1);
    wait_peers(c, N_TOGETHER + 1);
    fetch fb, fc;
    double t0 = check_now();
    fetch_start(&fb, b, &f1, "no-origin");
    fetch_start(&fc, c, &f1, "no-origin");
    fetch_finish(&fb, &f1, 90);
    fetch_finish(&fc, &f1, 90);
    printf("  origin gone: 2 agents fetched %zu MiB from peers in %.1f s "
           "(%lld + %lld bytes from peers, %lld + %lld from the origin)\n",
           f1.size / MIB, check_now() - t0, fb.from_peers, fc.from_peers, fb.from_origin,
           fc.from_origin);
    CHECK_INT(fb.from_origin, 0);
    CHECK_INT(fc.from_origin, 0);
    CHECK_INT(fb.from_peers, f1.size);
    CHECK_INT(fc.from_peers, f1.size);
}

/* The crowd's namespaces, made the first time a case needs them. Several
 * agents share one, each on a peer port of its own: the kernel's
 * neighbour table, which every namespace shares (gc_thresh3, 1024 entries
 * by default), would overflow with a namespace for each of 32 agents
 * dialling all the others, and then drops multicast beacons too. */
static void crowd_nodes(void)
{
    for (size_t k = 0; k < CROWD_NODES; k++) {
        const size_t per = N_CROWD / CROWD_NODES;
        if (crowd[k * per].node != NULL)
            continue;
        char role[8];
        snprintf(role, sizeof role, "m%zu", k + 1);
        const scene_node *n = scene_add_node(&world, role, CROWD_HOST + (int)k);
        CHECK(n != NULL);
        for (size_t i = k * per; i < (k + 1) * per; i++) {
            crowd[i].node = n;
            crowd[i].port = PEER_PORT + (int)(i - k * per);
        }
    }
}

static void crowd_stop(void)
{
    for (size_t i = 0; i < N_CROWD; i++)
        agent_stop(&crowd[i]);
}

/* Issue 17: a swarm of 32 asks the origin for about one copy through its
 * first FETCHERS members in fetch order; the others take from peers. Two
 * more than that may get origin bytes while the swarm settles (a fetcher
 * passed over, a share handed on). Before, every member fetched its share
 * of the origin's work. The crowd has a group key of its own, so the other
 * agents on the bridge are not its peers. */
static void test_32_agents_fetching_together_reach_the_origin_through_a_few(void)
{
    origin_up();
    crowd_nodes();
    double t0 = check_now();
    long long before = origin_sent(&f4);
    for (size_t i = 0; i < N_CROWD; i++) {
        char label[16];
        snprintf(label, sizeof label, "m%02zu-%ld", i + 1, (long)time(NULL));
        agent_start(&crowd[i], label, crowd_key, "");
    }
    for (size_t i = 0; i < N_CROWD; i++)
        wait_peers(&crowd[i], N_CROWD - 1);
    double started = check_now() - t0;
    long long control_before[N_CROWD];
    for (size_t i = 0; i < N_CROWD; i++) {
        char stats[4096];
        stats_of(&crowd[i], stats, sizeof stats);
        control_before[i] = stats_field(&crowd[i], stats, "control_sent") +
                            stats_field(&crowd[i], stats, "control_received");
    }

    fetch fs[N_CROWD];
    double t1 = check_now();
    for (size_t i = 0; i < N_CROWD; i++)
        fetch_start(&fs[i], &crowd[i], &f4, "crowd");
    for (size_t i = 0; i < N_CROWD; i++)
        fetch_finish(&fs[i], &f4, 60);
    double took = check_now() - t1;
    long long sent = origin_sent(&f4) - before;

    size_t fetchers = 0;
    long long peak = 0;
    double rate_sum = 0, rate_max = 0, during_sum = 0, during_max = 0;
    double elapsed = check_now() - t0;
    for (size_t i = 0; i < N_CROWD; i++) {
        char stats[4096];
        stats_of(&crowd[i], stats, sizeof stats);
        long long control = stats_field(&crowd[i], stats, "control_sent") +
                            stats_field(&crowd[i], stats, "control_received");
        long long p = stats_field(&crowd[i], stats, "origin_peak");
        double rate = (double)control / elapsed,
               during = (double)(control - control_before[i]) / took;
        rate_sum += rate;
        during_sum += during;
        rate_max = rate > rate_max ? rate : rate_max;
        during_max = during > during_max ? during : during_max;
        peak = p > peak ? p : peak;
        if (fs[i].from_origin > 0) {
            fetchers++;
            printf("    %s: %lld bytes from the origin, %lld from peers, origin peak %lld\n",
                   crowd[i].label, fs[i].from_origin, fs[i].from_peers, p);
        }
    }
    printf("  crowd: %d agents fetched %zu MiB in %.1f s (%.1f s to start them and find each "
           "other); origin sent %.3f x the file (%lld bytes); %zu agents got bytes from it "
           "(bound %d); largest origin peak %lld\n",
           N_CROWD, f4.size / MIB, took, started, (double)sent / (double)f4.size, sent, fetchers,
           FETCHERS + 2, peak);
    printf("  crowd: control messages per agent per second: %.1f mean, %.1f max over the case's "
           "%.1f s; %.1f mean, %.1f max during the fetch\n",
           rate_sum / N_CROWD, rate_max, elapsed, during_sum / N_CROWD, during_max);
    CHECK(sent * 100 <= (long long)f4.size * 105);
    CHECK(fetchers >= 1);
    CHECK(fetchers <= FETCHERS + 2);
    crowd_stop();
}

/* Last: every dopad of the run ends with 0 when told to stop, and none
 * logged a sanitizer report (this is what an ASan build is run for). */
static void test_every_agent_stops_cleanly(void)
{
    for (size_t i = 0; i < N_AGENTS; i++)
        agent_stop(&agents[i]);
    char dir[900];
    fmt(dir, sizeof dir, "%s/agents", scratch);
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int reports = 0, logs = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        char log[1200], line[1024];
        if (e->d_name[0] == '.')
            continue;
        snprintf(log, sizeof log, "%s/%s/dopad.log", dir, e->d_name);
        FILE *f = fopen(log, "r");
        if (f == NULL)
            continue;
        logs++;
        while (fgets(line, sizeof line, f) != NULL)
            if (strstr(line, "Sanitizer") != NULL || strstr(line, "runtime error:") != NULL) {
                fprintf(stderr, "  %s: %s", log, line);
                reports++;
            }
        fclose(f);
    }
    closedir(d);
    printf("  %d dopad logs, %d sanitizer reports, %d unclean stops\n", logs, reports,
           unclean_stops);
    CHECK_INT(reports, 0);
    CHECK_INT(unclean_stops, 0);
}

/* ------------------------------------------------------------------ */
/* The scene                                                          */

/* Stops what the case started (the dopa commands, the rogue, the outsider). */
static void case_cleanup(void)
{
    for (size_t i = 0; i < sizeof case_pids / sizeof case_pids[0]; i++)
        if (case_pids[i] > 0) {
            test_stop(case_pids[i], SIGKILL);
            case_pids[i] = 0;
        }
    if (rogue_pid > 0)
        scene_stop(&world, rogue_pid, SIGKILL);
    rogue_pid = -1;
    agent_stop(&outsider);
    crowd_stop();
}

static void teardown(void)
{
    case_cleanup();
    for (size_t i = 0; i < N_AGENTS; i++)
        agent_stop(&agents[i]);
    scene_stop(&world, nginx_pid, SIGTERM);
    nginx_pid = -1;
    scene_close(&world);
}

/* Async-signal-safe: the namespaces and the scratch directory go, then the
 * signal takes its course. */
static void on_signal(int sig)
{
    scene_close(&world);
    static char rm[] = "/bin/rm", rf[] = "-rf";
    char *const argv[] = {rm, rf, scratch_copy, NULL};
    pid_t pid = scratch_copy[0] != '\0' ? fork() : -1;
    if (pid == 0) {
        execv(rm, argv);
        _exit(127);
    }
    if (pid > 0)
        waitpid(pid, NULL, 0);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Writes `size` random bytes to path. */
static int random_file(const char *path, size_t size)
{
    FILE *f = fopen(path, "wb");
    static unsigned char buf[MIB];
    if (f == NULL)
        return -1;
    for (size_t off = 0; off < size; off += sizeof buf) {
        size_t n = size - off < sizeof buf ? size - off : sizeof buf;
        for (size_t k = 0; k < n;) {
            ssize_t r = getrandom(buf + k, n - k, 0);
            if (r <= 0) {
                fclose(f);
                return -1;
            }
            k += (size_t)r;
        }
        if (fwrite(buf, 1, n, f) != n) {
            fclose(f);
            return -1;
        }
    }
    return fclose(f);
}

static int run(const char *const argv[])
{
    char out[2048];
    int rc = test_run(argv, out, sizeof out, 60, TEST_AS_ME, 0);
    if (rc != 0)
        fprintf(stderr, "%s: exit %d: %s\n", argv[0], rc, out);
    return rc;
}

static int make_content(content *c)
{
    snprintf(c->path, sizeof c->path, "%s/%s", origin.root, c->name);
    snprintf(c->manifest, sizeof c->manifest, "%s/%s.manifest", scratch, c->name);
    snprintf(c->url, sizeof c->url, "http://%s/%s", origin_node->ip, c->name);
    snprintf(c->uri, sizeof c->uri, "/%s", c->name);
    const char *argv[10] = {DOPA_MANIFEST, "create", c->path,     "--key",
                            publisher_key, "-o",     c->manifest, NULL};
    if (c->piece_size != NULL) {
        argv[7] = "--piece-size";
        argv[8] = c->piece_size;
    }
    return random_file(c->path, c->size) != 0 || run(argv) != 0 ? -1 : 0;
}

static int build_scene(void)
{
    scene_reap_stale();
    if (scene_open(&world) != 0)
        return -1;
    if ((origin_node = scene_add_node(&world, "origin", 2)) == NULL ||
        (rogue_node = scene_add_node(&world, "rogue", 201)) == NULL)
        return -1;
    for (int i = 0; i < N_AGENTS; i++) {
        char role[8];
        snprintf(role, sizeof role, "a%d", i + 1);
        agents[i].pid = -1;
        if ((agents[i].node = scene_add_node(&world, role, 11 + i)) == NULL)
            return -1;
    }
    outsider.pid = -1;
    for (size_t i = 0; i < N_CROWD; i++)
        crowd[i].pid = -1; /* their namespaces come with the case */
    printf("  scene %s: hub %s, bridge br0, origin %s, rogue %s, agents 10.%d.0.11-%d\n", world.tag,
           world.hub, origin_node->ip, rogue_node->ip, world.net, 10 + N_AGENTS);

    snprintf(origin.dir, sizeof origin.dir, "%s/origin", scratch);
    snprintf(origin.root, sizeof origin.root, "%s/www", origin.dir);
    char path[900];
    snprintf(path, sizeof path, "%s/tmp", origin.dir);
    snprintf(group_key, sizeof group_key, "%s/group.key", scratch);
    snprintf(other_key, sizeof other_key, "%s/other-group.key", scratch);
    snprintf(crowd_key, sizeof crowd_key, "%s/crowd-group.key", scratch);
    snprintf(publisher_key, sizeof publisher_key, "%s/publisher.key", scratch);
    const char *group[] = {DOPA_CLI, "group-key", group_key, NULL};
    const char *other[] = {DOPA_CLI, "group-key", other_key, NULL};
    const char *crowd_group[] = {DOPA_CLI, "group-key", crowd_key, NULL};
    const char *keygen[] = {DOPA_MANIFEST, "keygen", "-o", publisher_key, NULL};
    char agents_dir[900], out_dir[900];
    snprintf(agents_dir, sizeof agents_dir, "%s/agents", scratch);
    snprintf(out_dir, sizeof out_dir, "%s/out", scratch);
    if (mkdir(origin.dir, 0755) != 0 || mkdir(origin.root, 0755) != 0 || mkdir(path, 0755) != 0 ||
        mkdir(agents_dir, 0755) != 0 || mkdir(out_dir, 0755) != 0 || run(group) != 0 ||
        run(other) != 0 || run(crowd_group) != 0 || run(keygen) != 0)
        return -1;
    content *all[] = {&f1, &f2, &f3, &f4};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (make_content(all[i]) != 0)
            return -1;
    return 0;
}

/* The end of each dopad's log, for a failed run. */
static void show_logs(void)
{
    for (size_t i = 0; i <= N_AGENTS + N_CROWD; i++) {
        const agent *a = i < N_AGENTS    ? &agents[i]
                         : i == N_AGENTS ? &outsider
                                         : &crowd[i - N_AGENTS - 1];
        if (a->dir[0] == '\0')
            continue;
        char cmd[2000];
        snprintf(cmd, sizeof cmd, "echo '--- %s/dopad.log' >&2; tail -n 25 '%s/dopad.log' >&2",
                 a->dir, a->dir);
        if (system(cmd) != 0)
            continue;
    }
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (geteuid() != 0 || scene_ip_program() == NULL) {
        printf("SKIP: needs root to create network namespaces (and ip from iproute2)\n");
        return 77;
    }
    if (access("/usr/sbin/nginx", X_OK) != 0) {
        fprintf(stderr, "nginx not found at /usr/sbin/nginx: run tools/install-deps test\n");
        return 1;
    }
    scratch = test_scratch_dir("swarm");
    if (scratch == NULL)
        return 1;
    snprintf(scratch_copy, sizeof scratch_copy, "%s", scratch);
    /* Registered after the scratch directory's removal, so it runs first. */
    atexit(teardown);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    double t0 = check_now();
    if (build_scene() != 0) {
        fprintf(stderr, "could not build the scene\n");
        return 1;
    }
    printf("  scene built in %.1f s\n", check_now() - t0);
    check_cleanup = case_cleanup;
    int rc = check_run(
        argc, argv,
        (struct check_case[]){CASE(test_agents_fetching_together_ask_the_origin_for_about_one_copy),
                              CASE(test_late_joiner_gets_everything_from_peers),
                              CASE(test_corrupt_peer_is_banned_and_content_stays_intact),
                              CASE(test_stalling_peer_times_out_and_download_completes),
                              CASE(test_outsiders_and_replayed_messages_get_no_answer),
                              CASE(test_members_serve_each_other_when_the_origin_is_gone),
                              CASE(test_32_agents_fetching_together_reach_the_origin_through_a_few),
                              CASE(test_every_agent_stops_cleanly),
                              {0}});
    if (rc != 0)
        show_logs();
    printf("  %.1f s in all\n", check_now() - t0);
    return rc;
}

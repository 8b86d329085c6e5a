/*
 * dopad: the dopa daemon. Runs in the foreground, logs to stderr, keeps its
 * jobs under a state directory and listens on a control socket. As root it
 * is the system instance (/run/dopa/control.sock, /var/lib/dopa); as
 * another user, a per-user instance ($XDG_RUNTIME_DIR/dopa/control.sock,
 * $XDG_STATE_HOME/dopa). SIGTERM and SIGINT stop it cleanly; SIGHUP reads
 * the configuration again.
 *
 * Settings come from the command line, else from the configuration file
 * (--config, or /etc/dopa/dopa.conf for the system instance and
 * $XDG_CONFIG_HOME/dopa/dopa.conf for a user's, when they exist), else
 * from the defaults (agent/daemon/config.c reads and checks them). A bad
 * line of the file stops dopad with the file name and line number. On
 * SIGHUP the same file is read and checked whole before anything changes:
 * a bad one is logged with its file and line and the running settings
 * stay; from a good one, the settings that can change at run time apply,
 * and the others are logged as needing a restart and keep their value.
 *
 * Under systemd (Type=notify) dopad tells the service manager when it is
 * ready, reloading and stopping, with a status line of its jobs and peers.
 *
 * With [metrics] listen it also serves its counters to Prometheus over HTTP
 * (agent/daemon/metrics.c); its main loop answers those requests after each
 * engine turn.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
/* The engine's run-time setters and counters (engine_reconfigure,
 * engine_stats) are dopad's alone, so they live in the internal header. */
#include "engine_internal.h"

/* dopad's exit statuses, as dopad(8) and --help list them. */
enum exit_code {
    EXIT_OK = 0,    /* stopped by SIGTERM or SIGINT */
    EXIT_START = 1, /* could not start: state directory, lock, database, socket */
    EXIT_USAGE = 2, /* a bad option or setting, an unreadable configuration or group key */
};

static atomic_int stopping, reload_wanted;
static agent_engine *engine;
static metrics *metrics_server; /* the metrics endpoint, NULL when off */
static int64_t started_ms;      /* wall clock */

/* Settings: the command line's, and those in force (what the engine was
 * given), from which the engine's configuration is made. */
static config_settings cli, running;
static char config_path[4096]; /* "" when there is none to read */
static int config_explicit;    /* --config: it must exist */
static uint8_t group_key[PEER_GROUP_KEY_BYTES];
static config_engine engine_cfg;

static const char usage_text[] =
    "usage: dopad [options]\n"
    "  --socket PATH              control socket (default: /run/dopa/control.sock as root,\n"
    "                             else $XDG_RUNTIME_DIR/dopa/control.sock)\n"
    "  --state-dir DIR            jobs database (default: /var/lib/dopa as root,\n"
    "                             else $XDG_STATE_HOME/dopa or ~/.local/state/dopa)\n"
    "  --max-running N            jobs transferring at once (default 4)\n"
    "  --inactivity-timeout SECS  cancel jobs untouched this long (default 90 days)\n"
    "  --trusted-key KEY          a publisher key (file or dopa-pub1:...) whose manifests\n"
    "                             are accepted; repeat for more\n"
    "  --config FILE              settings file (INI, section [dopad]; keys: socket,\n"
    "                             state-dir, max-running, inactivity-timeout, trusted-key,\n"
    "                             plugin-dir, plugin-timeout, validate-helper, notify-retry,\n"
    "                             notify-retry-max, notify-command-timeout; section\n"
    "                             [peers]: group-key, listen, peer, cache-host, ...;\n"
    "                             section [metrics]: listen (ADDRESS:PORT of the\n"
    "                             Prometheus endpoint, off by default);\n"
    "                             every key is in dopa.conf(5));\n"
    "                             default /etc/dopa/dopa.conf as root, else\n"
    "                             $XDG_CONFIG_HOME/dopa/dopa.conf, when it exists\n"
    "  --check                    read the configuration (and the keys it names), say\n"
    "                             whether it is good, and exit (status 0 or 2)\n"
    "  --help                     this text\n"
    "  --version                  print dopad's version\n"
    "\n"
    "signals: SIGTERM or SIGINT stop dopad; SIGHUP reads the configuration file again.\n"
    "exit status: 0 stopped by a signal; 1 could not start (state directory, lock,\n"
    "database, socket); 2 bad option, setting, configuration file or group key.\n";

/* ------------------------------------------------------------------ */
/* The service manager (sd_notify(3))                                  */

/* systemd's notification socket, taken from NOTIFY_SOCKET at start ("":
 * none). The protocol is one datagram of "NAME=value" lines to that
 * AF_UNIX socket (a path, or an abstract name written with "@"), stable
 * and documented for implementations without libsystemd; this sender is
 * all dopad needs of the library. */
static char notify_path[sizeof((struct sockaddr_un *)0)->sun_path];

static void notify_take_socket(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (path != NULL && (path[0] == '/' || path[0] == '@') && strlen(path) < sizeof notify_path)
        snprintf(notify_path, sizeof notify_path, "%s", path);
    /* Not handed down to the plugin helper and notify commands. */
    unsetenv("NOTIFY_SOCKET");
}

__attribute__((format(printf, 1, 2))) static void notify_manager(const char *fmt, ...)
{
    if (notify_path[0] == '\0')
        return;
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof text)
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(notify_path);
    memcpy(sa.sun_path, notify_path, len);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract: no NUL at the end, the length says */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, text, (size_t)n, MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        agent_log("warning", "cannot tell the service manager %s: %s", text, strerror(errno));
    close(fd);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* STATUS= for `systemctl status`: the jobs and peers, when they changed,
 * at most once a second. */
static void notify_status(int now)
{
    static char last[200];
    static int64_t last_at;
    if (notify_path[0] == '\0' || (!now && mono_ms() - last_at < 1000))
        return;
    last_at = mono_ms();
    dopa_agent_stats st;
    engine_stats(engine, &st);
    char text[200];
    if (st.peer_url[0] == '\0')
        snprintf(text, sizeof text, "%llu jobs; origin only (no group key)",
                 (unsigned long long)st.jobs);
    else
        snprintf(text, sizeof text, "%llu jobs; %llu peers (%llu banned); serving on %s",
                 (unsigned long long)st.jobs, (unsigned long long)st.peers,
                 (unsigned long long)st.banned, st.peer_url);
    if (!now && strcmp(text, last) == 0)
        return;
    snprintf(last, sizeof last, "%s", text);
    notify_manager("STATUS=%s", text);
}

/* ------------------------------------------------------------------ */
/* The metrics endpoint                                               */

static void log_metrics(const char *listen)
{
    char host[METRICS_LISTEN_MAX + 1];
    unsigned port;
    int loopback = 1;
    metrics_parse_listen(listen, host, sizeof host, &port, &loopback);
    agent_log("info", "metrics: serving http://%s/metrics", metrics_address(metrics_server));
    if (!loopback)
        agent_log("warning",
                  "metrics: %s is not a loopback address: whoever reaches it can read the "
                  "counters (the endpoint has no authentication)",
                  listen);
}

static unsigned listen_port(const char *listen)
{
    char host[METRICS_LISTEN_MAX + 1];
    unsigned port = 0;
    int loopback;
    metrics_parse_listen(listen, host, sizeof host, &port, &loopback);
    return port;
}

/* [metrics] listen changed on SIGHUP: applied at once. The old endpoint
 * stays until the new one listens, unless they share a port (or the new
 * one is none): then it goes first, and comes back if the new one fails.
 * Returns 1 when the change applied. */
static int reload_metrics(const char *want)
{
    validate_error why = {0};
    char was[METRICS_LISTEN_MAX + 10];
    const char *now = want[0] ? want : "(none)";
    snprintf(was, sizeof was, "%s", running.metrics_listen[0] ? running.metrics_listen : "(none)");
    int same_port = want[0] != '\0' && running.metrics_listen[0] != '\0' &&
                    listen_port(want) != 0 && listen_port(want) == listen_port(was);
    if (want[0] == '\0' || same_port) {
        metrics_close(metrics_server);
        metrics_server = NULL;
    }
    metrics *next = NULL;
    if (want[0] != '\0' &&
        metrics_open(engine, want, started_ms, same_port, &next, &why) != DOPA_OK) {
        agent_log("error", "reload: [metrics] listen %s: %s; %s stays in force", now, why.text,
                  was);
        if (metrics_server == NULL && running.metrics_listen[0] != '\0' &&
            metrics_open(engine, running.metrics_listen, started_ms, 1, &metrics_server, &why) !=
                DOPA_OK) {
            agent_log("error", "reload: [metrics] listen %s again: %s; the metrics endpoint is off",
                      was, why.text);
            running.metrics_listen[0] = '\0';
        }
        return 0;
    }
    metrics_close(metrics_server);
    metrics_server = next;
    snprintf(running.metrics_listen, sizeof running.metrics_listen, "%s", want);
    agent_log("info", "reload: [metrics] listen: %s (was %s)", now, was);
    if (metrics_server != NULL)
        log_metrics(want);
    return 1;
}

/* SIGHUP, on the engine's thread: the file again, checked whole, then
 * what can change applied and the rest named. */
static void reload(void)
{
    notify_manager("RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)mono_ms() * 1000);
    static config_settings next;
    memset(&next, 0, sizeof next);
    validate_error msg = {0};
    uint8_t key[PEER_GROUP_KEY_BYTES];
    int applied = 0, kept = 0;
    if (config_path[0] == '\0') {
        agent_log("warning", "reload: no configuration file to read (neither "
                             "XDG_CONFIG_HOME nor HOME is set)");
        goto done;
    }
    struct stat st;
    if (config_explicit || stat(config_path, &st) == 0)
        agent_log("info", "reload: reading %s", config_path);
    else
        agent_log("info", "reload: %s does not exist: the defaults apply", config_path);
    if (config_read(config_path, config_explicit, &next, &msg) != 0 ||
        config_complete(&next, &cli, &msg) != 0) {
        agent_log("error", "reload: %s; nothing changed", msg.text);
        goto done;
    }
    if (next.group_key[0] != '\0' && peer_group_key_load(next.group_key, key, &msg) != PEER_OK) {
        agent_log("error", "reload: group-key %s: %s; nothing changed", next.group_key, msg.text);
        goto done;
    }
    config_warn_ignored_peer_keys(&next, config_path);
    if (next.group_key[0] != '\0' && strcmp(next.group_key, running.group_key) == 0 &&
        sodium_memcmp(key, group_key, sizeof key) != 0) {
        agent_log("warning",
                  "reload: the key in group-key %s changed: it needs a restart of "
                  "dopad; the group stays the one it joined",
                  next.group_key);
        kept++;
    }
    sodium_memzero(key, sizeof key);
    config_apply_changes(&running, &next, &applied, &kept);
    if (strcmp(next.metrics_listen, running.metrics_listen) != 0)
        applied += reload_metrics(next.metrics_listen);
    config_engine_make(&engine_cfg, &running, group_key);
    if (engine_reconfigure(engine, &engine_cfg.engine) != DOPA_OK)
        agent_log("warning", "reload: %s", engine_error(engine)->text);
    agent_log("info", "reload: %d settings changed, %d wait for a restart", applied, kept);
done:
    notify_manager("READY=1");
    notify_status(1);
}

/* Waits for the signals on its own thread (the others block them). */
static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            atomic_store(&reload_wanted, 1);
            engine_wakeup(engine);
        } else if (sig == SIGTERM || sig == SIGINT) {
            atomic_store(&stopping, 1);
            engine_wakeup(engine);
            return NULL;
        }
    }
}

/* The open-files limit goes up to the hard one: a peer port serves many
 * connections, and the soft default of 1024 is soon used up. The peer node
 * keeps a reserve of its own below whatever limit this leaves. */
static void raise_open_files(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        agent_log("warning", "open files stay limited to %llu: %s", (unsigned long long)was,
                  strerror(errno));
}

/* Stopping is bounded: once SIGTERM has come, dopad is gone within
 * STOP_BOUND_MS even when a library call never returns (nng's close of a
 * wedged socket). The engine's writes are durable before anything that
 * could hang (engine_flush, with the store in WAL and synchronous=FULL), so
 * what is abandoned here is only the tidying. */
#define STOP_BOUND_MS 4000
static void *stop_deadline(void *arg)
{
    (void)arg;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += STOP_BOUND_MS / 1000;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL) == EINTR)
        ;
    agent_log("error",
              "stopping took over %d s (a socket that does not close): leaving now; "
              "the jobs are stored",
              STOP_BOUND_MS / 1000);
    _exit(EXIT_OK);
    return NULL;
}

/* mkdir -p for the state directory's parents (the last gets mode 0700). */
static int make_parents(const char *path)
{
    char buf[8192];
    snprintf(buf, sizeof buf, "%.4095s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(buf, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"socket", required_argument, NULL, 's'},
        {"state-dir", required_argument, NULL, 'd'},
        {"max-running", required_argument, NULL, 'm'},
        {"inactivity-timeout", required_argument, NULL, 'i'},
        {"trusted-key", required_argument, NULL, 'k'},
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 'C'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    notify_take_socket(); /* before any thread: it changes the environment */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    started_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    const char *config = NULL;
    int check_only = 0;
    validate_error why = {0};
    int c, rc = 0, opt_index = 0;
    while ((c = getopt_long(argc, argv, "h", opts, &opt_index)) != -1 && rc == 0) {
        switch (c) {
        case 's':
        case 'd':
        case 'm':
        case 'i':
        case 'k':
            /* Options that are settings too, of the same name. */
            rc = config_set_option(&cli, opts[opt_index].name, optarg);
            break;
        case 'c':
            config = optarg;
            break;
        case 'C':
            check_only = 1;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return EXIT_OK;
        case 'V':
            printf("dopad %s\n", DOPA_VERSION);
            return EXIT_OK;
        default:
            fputs(usage_text, stderr);
            return EXIT_USAGE;
        }
    }
    if (rc != 0) {
        fprintf(stderr, "dopad: %s\n", cli.error);
        return EXIT_USAGE;
    }
    if (optind != argc) {
        fprintf(stderr, "dopad: unexpected argument %s\n", argv[optind]);
        return EXIT_USAGE;
    }
    /* The file first; the command line wins where both say something. */
    config_explicit = config != NULL;
    config_file_path(config, config_path, sizeof config_path);
    config_settings *s = &running;
    if ((config_path[0] != '\0' && config_read(config_path, config_explicit, s, &why) != 0) ||
        config_complete(s, &cli, &why) != 0) {
        fprintf(stderr, "dopad: %s\n", why.text);
        return EXIT_USAGE;
    }
    /* Peers: only with a group key. */
    if (s->group_key[0] != '\0' && peer_group_key_load(s->group_key, group_key, &why) != PEER_OK) {
        fprintf(stderr, "dopad: group-key %s: %s\n", s->group_key, why.text);
        return EXIT_USAGE;
    }
    config_engine_make(&engine_cfg, s, group_key);
    config_warn_ignored_peer_keys(s, config_path);
    if (check_only) {
        printf("dopad: %s: good\n", config_path[0] != '\0' ? config_path : "no configuration file");
        return EXIT_OK;
    }
    const char *socket_path = s->socket, *state_dir = s->state_dir;

    /* Signals go to one thread; every thread made after this inherits the
     * blocked mask. */
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    umask(022);
    raise_open_files();

    if (make_parents(state_dir) != 0) {
        fprintf(stderr, "dopad: %s: %s\n", state_dir, strerror(errno));
        return EXIT_START;
    }
    char lock_path[8300];
    snprintf(lock_path, sizeof lock_path, "%.4095s/dopad.lock", state_dir);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "dopad: %s: %s\n", lock_path,
                lock < 0 ? strerror(errno) : "another dopad uses this state directory");
        return EXIT_START;
    }
    if (engine_open(&engine_cfg.engine, &engine, &why) != DOPA_OK) {
        fprintf(stderr, "dopad: %s\n", why.text);
        return EXIT_START;
    }
    int system_instance = geteuid() == 0;
    control *ctl = NULL;
    if (control_open(engine, socket_path, system_instance ? 0755 : 0700,
                     system_instance ? 0666 : 0600, &ctl, &why) != DOPA_OK) {
        fprintf(stderr, "dopad: %s\n", why.text);
        engine_close(engine);
        return EXIT_START;
    }
    if (s->metrics_listen[0] != '\0' &&
        metrics_open(engine, s->metrics_listen, started_ms, 0, &metrics_server, &why) != DOPA_OK) {
        fprintf(stderr, "dopad: metrics endpoint: %s\n", why.text);
        control_close(ctl);
        engine_close(engine);
        return EXIT_START;
    }
    pthread_t sig_thread;
    pthread_create(&sig_thread, NULL, signal_thread, &set);
    agent_log("info", "dopad %s: %zu jobs, listening on %s, state in %s", AGENT_VERSION,
              engine_job_count(engine), socket_path, state_dir);
    if (engine_cfg.engine.peer != NULL)
        agent_log("info", "peers: serving on %s, %zu configured peers, %zu cache hosts, beacons %s",
                  engine_peer_url(engine), s->n_peers, s->n_cache_hosts,
                  engine_cfg.peer.beacons ? "on" : "off");
    if (metrics_server != NULL)
        log_metrics(s->metrics_listen);
    notify_manager("READY=1");
    notify_status(1);

    while (!atomic_load(&stopping)) {
        engine_step(engine, 1000);
        metrics_run_queued(metrics_server);
        if (atomic_exchange(&reload_wanted, 0))
            reload();
        notify_status(0);
    }

    agent_log("info", "stopping");
    notify_manager("STOPPING=1");
    pthread_t deadline;
    pthread_create(&deadline, NULL, stop_deadline, NULL);
    engine_flush(engine);
    /* The signal thread wakes the engine: it goes first. */
    pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    metrics_close(metrics_server);
    control_close(ctl);
    engine_close(engine);
    close(lock);
    return EXIT_OK;
}

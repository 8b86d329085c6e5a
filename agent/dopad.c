/*
 * dopad: the dopa daemon. Runs in the foreground, logs to stderr, keeps its
 * jobs under a state directory and listens on a control socket. As root it
 * is the system instance (/run/dopa/control.sock, /var/lib/dopa); as
 * another user, a per-user instance ($XDG_RUNTIME_DIR/dopa/control.sock,
 * $XDG_STATE_HOME/dopa). SIGTERM and SIGINT stop it cleanly.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define MAX_KEYS 32

static atomic_int stopping;
static agent_engine *engine;

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
    "  --help                     this text\n";

/* Waits for a stop signal on its own thread (the others block them). */
static void *signal_thread(void *arg)
{
    sigset_t *set = arg;
    for (;;) {
        int sig;
        if (sigwait(set, &sig) != 0)
            continue;
        if (sig == SIGTERM || sig == SIGINT) {
            atomic_store(&stopping, 1);
            if (engine != NULL)
                engine_wakeup(engine);
            return NULL;
        }
    }
}

static int default_paths(char *socket_path, size_t socket_len, char *state_dir, size_t state_len)
{
    if (geteuid() == 0) {
        snprintf(socket_path, socket_len, "/run/dopa/control.sock");
        snprintf(state_dir, state_len, "/var/lib/dopa");
        return 0;
    }
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (runtime == NULL || runtime[0] != '/') {
        fprintf(stderr, "dopad: XDG_RUNTIME_DIR is not set; give --socket PATH\n");
        return -1;
    }
    snprintf(socket_path, socket_len, "%s/dopa/control.sock", runtime);
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (state != NULL && state[0] == '/')
        snprintf(state_dir, state_len, "%s/dopa", state);
    else if (home != NULL && home[0] == '/')
        snprintf(state_dir, state_len, "%s/.local/state/dopa", home);
    else {
        fprintf(stderr, "dopad: neither XDG_STATE_HOME nor HOME is set; give --state-dir DIR\n");
        return -1;
    }
    return 0;
}

/* mkdir -p for the state directory's parents (the last gets mode 0700). */
static int make_parents(const char *path)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
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
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char socket_path[4096] = "", state_dir[4096] = "", why[1024];
    validate_public_key keys[MAX_KEYS];
    size_t n_keys = 0;
    engine_config cfg = {.origin = origin_config_default()};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 's':
            snprintf(socket_path, sizeof socket_path, "%s", optarg);
            break;
        case 'd':
            snprintf(state_dir, sizeof state_dir, "%s", optarg);
            break;
        case 'm':
            cfg.max_running = (unsigned)strtoul(optarg, &end, 10);
            if (*end != '\0' || cfg.max_running == 0 || cfg.max_running > 64) {
                fprintf(stderr, "dopad: --max-running %s: need 1 to 64\n", optarg);
                return 2;
            }
            break;
        case 'i': {
            unsigned long long s = strtoull(optarg, &end, 10);
            if (*end != '\0' || s == 0 || s > 10ull * 365 * 24 * 3600) {
                fprintf(stderr, "dopad: --inactivity-timeout %s: need seconds, 1 or more\n",
                        optarg);
                return 2;
            }
            cfg.inactivity_ms = s * 1000;
            break;
        }
        case 'k':
            if (n_keys == MAX_KEYS) {
                fprintf(stderr, "dopad: at most %d trusted keys\n", MAX_KEYS);
                return 2;
            }
            if (strncmp(optarg, "dopa-pub1:", 10) == 0
                    ? validate_public_key_parse(optarg, &keys[n_keys]) != VALIDATE_OK
                    : validate_public_key_load(optarg, &keys[n_keys], why, sizeof why) !=
                          VALIDATE_OK) {
                fprintf(stderr, "dopad: --trusted-key %s: not a dopa public key\n", optarg);
                return 2;
            }
            n_keys++;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            fputs(usage_text, stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "dopad: unexpected argument %s\n", argv[optind]);
        return 2;
    }
    char def_socket[4096], def_state[4096];
    if ((socket_path[0] == '\0' || state_dir[0] == '\0') &&
        default_paths(def_socket, sizeof def_socket, def_state, sizeof def_state) != 0)
        return 2;
    if (socket_path[0] == '\0')
        snprintf(socket_path, sizeof socket_path, "%s", def_socket);
    if (state_dir[0] == '\0')
        snprintf(state_dir, sizeof state_dir, "%s", def_state);
    cfg.state_dir = state_dir;
    cfg.trusted_keys = keys;
    cfg.n_trusted_keys = n_keys;

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

    if (make_parents(state_dir) != 0) {
        fprintf(stderr, "dopad: %s: %s\n", state_dir, strerror(errno));
        return 1;
    }
    char lock_path[4200];
    snprintf(lock_path, sizeof lock_path, "%s/dopad.lock", state_dir);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "dopad: %s: %s\n", lock_path,
                lock < 0 ? strerror(errno) : "another dopad uses this state directory");
        return 1;
    }
    if (engine_open(&cfg, &engine, why, sizeof why) != DOPA_OK) {
        fprintf(stderr, "dopad: %s\n", why);
        return 1;
    }
    int system_instance = geteuid() == 0;
    control *ctl = NULL;
    if (control_open(engine, socket_path, system_instance ? 0755 : 0700,
                     system_instance ? 0666 : 0600, &ctl, why, sizeof why) != DOPA_OK) {
        fprintf(stderr, "dopad: %s\n", why);
        engine_close(engine);
        return 1;
    }
    pthread_t sig_thread;
    pthread_create(&sig_thread, NULL, signal_thread, &set);
    agent_log("info", "dopad %s: %zu jobs, listening on %s, state in %s", AGENT_VERSION,
              engine_job_count(engine), socket_path, state_dir);

    while (!atomic_load(&stopping))
        engine_step(engine, 1000);

    agent_log("info", "stopping");
    control_close(ctl);
    engine_close(engine);
    pthread_kill(sig_thread, SIGTERM);
    pthread_join(sig_thread, NULL);
    close(lock);
    return 0;
}

/* Network namespaces for the swarm test; see scene.h. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"
#include "scene.h"

#define NETNS_DIR "/var/run/netns"

const char *scene_ip_program(void)
{
    static const char *const where[] = {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"};
    for (size_t i = 0; i < sizeof where / sizeof where[0]; i++)
        if (access(where[i], X_OK) == 0)
            return where[i];
    return NULL;
}

/* Runs `ip` with the words of the formatted command; 0 or -1 (with what
 * it said on stderr). */
__attribute__((format(printf, 1, 2))) static int ip(const char *fmt, ...)
{
    char cmd[512], out[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    const char *argv[32] = {scene_ip_program()};
    size_t n = 1;
    for (char *save = NULL, *w = strtok_r(cmd, " ", &save); w != NULL && n < 31;
         w = strtok_r(NULL, " ", &save))
        argv[n++] = w;
    argv[n] = NULL;
    int rc = test_run(argv, out, sizeof out, 30, TEST_AS_ME, 0);
    if (rc != 0) {
        fprintf(stderr, "  ip");
        for (size_t i = 1; i < n; i++)
            fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, ": exit %d: %s\n", rc, out);
        return -1;
    }
    return 0;
}

/* `ip netns del NAME`, with async-signal-safe calls only. */
static void netns_delete(const char *name)
{
    const char *prog = scene_ip_program();
    if (prog == NULL)
        return;
    /* Writable copies: execv's prototype lacks const. */
    char ip_word[] = "ip", netns[] = "netns", del[] = "del", ns[64];
    size_t i = 0;
    for (; name[i] != '\0' && i < sizeof ns - 1; i++)
        ns[i] = name[i];
    ns[i] = '\0';
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        char *const argv[] = {ip_word, netns, del, ns, NULL};
        execv(prog, argv);
        _exit(127);
    }
    if (pid > 0)
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
}

void scene_reap_stale(void)
{
    DIR *d = opendir(NETNS_DIR);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        if (strncmp(e->d_name, "dsw", 3) != 0)
            continue;
        long pid = strtol(e->d_name + 3, &end, 10);
        if (end == e->d_name + 3 || *end != '-' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) {
            fprintf(stderr, "  removing %s, left by a run that is gone\n", e->d_name);
            netns_delete(e->d_name);
        }
    }
    closedir(d);
}

int scene_open(scene *s)
{
    uint8_t r[3] = {0};
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        return -1;
    memset(s, 0, sizeof *s);
    s->net = 1 + r[0] % 250;
    char tag[sizeof s->tag];
    snprintf(tag, sizeof tag, "dsw%d-%02x%02x", (int)getpid(), r[1], r[2]);
    snprintf(s->tag, sizeof s->tag, "%s", tag);
    snprintf(s->hub, sizeof s->hub, "%s-hub", tag);
    if (ip("netns add %s", s->hub) != 0)
        return -1;
    s->hub_made = 1;
    if (ip("-n %s link set lo up", s->hub) != 0 ||
        ip("-n %s link add br0 type bridge", s->hub) != 0 ||
        ip("-n %s link set br0 up", s->hub) != 0)
        return -1;
    return 0;
}

scene_node *scene_add_node(scene *s, const char *role, int host)
{
    if (s->n_nodes == SCENE_MAX_NODES)
        return NULL;
    scene_node *n = &s->nodes[s->n_nodes];
    char tag[sizeof s->tag]; /* a copy: GCC sees an overlap with n->ns otherwise */
    memcpy(tag, s->tag, sizeof tag);
    snprintf(n->ns, sizeof n->ns, "%.23s-%.12s", tag, role);
    snprintf(n->ip, sizeof n->ip, "10.%d.0.%d", s->net, host);
    if (ip("netns add %s", n->ns) != 0)
        return NULL;
    s->n_nodes++; /* deleted by scene_close from here on */
    /* The bridge's end is named in the hub only, so a short name will do. */
    char port[16];
    snprintf(port, sizeof port, "sw%zu", s->n_nodes);
    if (ip("-n %s link set lo up", n->ns) != 0 ||
        ip("link add %s netns %s type veth peer name eth0 netns %s", port, s->hub, n->ns) != 0 ||
        ip("-n %s link set %s master br0 up", s->hub, port) != 0 ||
        ip("-n %s addr add %s/24 dev eth0", n->ns, n->ip) != 0 ||
        ip("-n %s link set eth0 up", n->ns) != 0)
        return NULL;
    return n;
}

/* In a child: joins the node's network namespace; 0 or -1. */
static int enter(const scene_node *n)
{
    char path[128];
    snprintf(path, sizeof path, NETNS_DIR "/%s", n->ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = setns(fd, CLONE_NEWNET);
    close(fd);
    return rc;
}

static void remember(scene *s, pid_t pid)
{
    for (int i = 0; i < SCENE_MAX_PIDS; i++)
        if (s->pids[i] == 0) {
            s->pids[i] = pid;
            return;
        }
}

static void forget(scene *s, pid_t pid)
{
    for (int i = 0; i < SCENE_MAX_PIDS; i++)
        if (s->pids[i] == pid)
            s->pids[i] = 0;
}

pid_t scene_spawn(scene *s, const scene_node *n, const char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0) {
        remember(s, pid);
        return pid;
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int out = log ? open(log, O_WRONLY | O_CREAT | O_APPEND, 0644) : open("/dev/null", O_WRONLY);
    int in = open("/dev/null", O_RDONLY);
    if (out >= 0) {
        dup2(out, 1);
        dup2(out, 2);
    }
    if (in >= 0)
        dup2(in, 0);
    if (enter(n) != 0) {
        fprintf(stderr, "cannot enter network namespace %s\n", n->ns);
        _exit(126);
    }
    test_exec(argv);
}

int scene_wait(scene *s, pid_t pid, int timeout_s)
{
    int rc = test_wait(pid, timeout_s); /* reaps it, also on timeout */
    forget(s, pid);
    return rc;
}

int scene_stop(scene *s, pid_t pid, int sig)
{
    if (pid <= 0)
        return -1;
    kill(pid, sig);
    return scene_wait(s, pid, 5);
}

int scene_can_connect(const scene_node *from, const char *ip_text, int port)
{
    pid_t pid = fork();
    if (pid < 0)
        return 0;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        if (enter(from) != 0 || inet_pton(AF_INET, ip_text, &a.sin_addr) != 1)
            _exit(2);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0)
            _exit(2);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            _exit(0);
        if (errno != EINPROGRESS)
            _exit(1);
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 1;
        socklen_t len = sizeof err;
        if (poll(&p, 1, 1000) == 1)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        _exit(err == 0 ? 0 : 1);
    }
    return test_wait(pid, 5) == 0;
}

void scene_close(scene *s)
{
    for (int i = 0; i < SCENE_MAX_PIDS; i++) {
        if (s->pids[i] <= 0)
            continue;
        kill(s->pids[i], SIGKILL);
        while (waitpid(s->pids[i], NULL, 0) < 0 && errno == EINTR)
            ;
        s->pids[i] = 0;
    }
    while (s->n_nodes > 0)
        netns_delete(s->nodes[--s->n_nodes].ns);
    if (s->hub_made)
        netns_delete(s->hub);
    s->hub_made = 0;
}

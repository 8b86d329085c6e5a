/*
 * The server's connections and the closer thread.
 *
 * The server keeps at most max_connections live connections, and each must
 * send a request that opens with the group key within AUTH_GRACE_MS, or it
 * is closed (so that outsiders cannot hold the slots). A newcomer to a full
 * server takes the place of a stranger there for more than a second, of a
 * member idle for IDLE_EVICT_MS, or of one connected for over TURN_MS (a
 * site may have more agents than its cache host's cap: they take turns);
 * otherwise it is closed REFUSE_DELAY_MS after it came.
 *
 * No close happens on nng's threads. With libnng 1.5.2 a pipe closed
 * inside its own pipe-event callback while a message arrives on it never
 * reaches REM_POST: nng's reaper waits for it for ever, and every nng_close
 * after that, of any socket of the process, blocks. So the callbacks only
 * note connections (from ADD_PRE, before any message can arrive) and mark
 * those to close; the closer thread closes them, and the sockets of
 * forgotten peers too, so that the owner never waits in nng_close. It also
 * watches descriptors: when they run short, the listener closes (and its
 * connections with it) until they are back, so that the control socket,
 * the store and the files being written keep theirs whatever the peer
 * port is sent. Connections still in the SP handshake are no pipes yet
 * and only this bounds them.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <nng/nng.h>

#include "node_internal.h"

#define AUTH_GRACE_MS   5000 /* a connection must send a valid request within this */
#define CLOSER_TICK_MS  100  /* the closer's sweep of strangers and descriptors */
#define IDLE_EVICT_MS   5000 /* a full server lets a newcomer in for a connection this idle */
#define TURN_MS         5000 /* or for one connected this long (agents beyond the cap) */
#define PAUSE_MIN_MS    1000 /* the listener, closed for want of descriptors, stays so */
#define REFUSE_DELAY_MS 200  /* a newcomer turned away is closed once this old */
#define FD_RESERVE_MIN  64   /* descriptors kept free for the agent itself, at least */

static conn *conn_find(peer_node *n, uint32_t pipe)
{
    for (size_t i = 0; i < n->n_conns; i++)
        if ((uint32_t)nng_pipe_id(n->conns[i].pipe) == pipe)
            return &n->conns[i];
    return NULL;
}

/* Whether a request that came on the pipe may be served: its connection
 * is known and not on its way out (catalog_lock held). */
conn *node_conn_serving(peer_node *n, uint32_t pipe)
{
    conn *c = conn_find(n, pipe);
    return c != NULL && !c->doomed ? c : NULL;
}

/* A live connection a newcomer may replace: the oldest stranger of more
 * than a second, else the member idle longest past IDLE_EVICT_MS, else the
 * one connected longest past TURN_MS (its requests in flight are asked
 * again when it dials back). */
static conn *conn_victim(peer_node *n, int64_t now)
{
    conn *stranger = NULL, *idle = NULL, *turn = NULL;
    for (size_t i = 0; i < n->n_conns; i++) {
        conn *c = &n->conns[i];
        if (c->doomed)
            continue;
        if (!c->good && now - c->since > 1000 && (stranger == NULL || c->since < stranger->since))
            stranger = c;
        if (c->good && now - c->last > IDLE_EVICT_MS && (idle == NULL || c->last < idle->last))
            idle = c;
        if (c->good && now - c->since > TURN_MS && (turn == NULL || c->since < turn->since))
            turn = c;
    }
    return stranger != NULL ? stranger : idle != NULL ? idle : turn;
}

static void conn_doom(peer_node *n, conn *c, int64_t now)
{
    c->doomed = now;
    n->n_live--;
}

/* A new connection (catalog_lock held). */
static void conn_add(peer_node *n, nng_pipe pipe, int64_t now)
{
    unsigned max = n->cfg.max_connections ? n->cfg.max_connections : PEER_MAX_CONNECTIONS;
    if (n->n_conns == n->cap_conns) {
        size_t cap = n->cap_conns ? 2 * n->cap_conns : max + 16;
        conn *grown = realloc(n->conns, cap * sizeof *grown);
        if (grown == NULL)
            return; /* unknown to us, its requests get no answer */
        n->conns = grown;
        n->cap_conns = cap;
    }
    conn *c = &n->conns[n->n_conns++];
    *c = (conn){.pipe = pipe, .since = now, .last = now};
    n->n_live++;
    if (n->n_live > max) {
        conn *victim = conn_victim(n, now);
        conn_doom(n, victim != NULL ? victim : c, now);
        if (victim != NULL)
            n->evicted++;
        else
            n->over_cap++;
        pthread_cond_signal(&n->closer_wake);
    }
}

static void conn_remove(peer_node *n, nng_pipe pipe)
{
    conn *c = conn_find(n, (uint32_t)nng_pipe_id(pipe));
    if (c == NULL)
        return;
    if (!c->doomed)
        n->n_live--;
    *c = n->conns[--n->n_conns];
}

/* nng's threads: never closes anything (see above). */
void node_conn_pipe_event(nng_pipe pipe, nng_pipe_ev ev, void *arg)
{
    peer_node *n = arg;
    pthread_mutex_lock(&n->catalog_lock);
    if (ev == NNG_PIPE_EV_ADD_PRE)
        conn_add(n, pipe, mono_ms());
    else if (ev == NNG_PIPE_EV_REM_POST)
        conn_remove(n, pipe);
    pthread_mutex_unlock(&n->catalog_lock);
}

/* The owner: a forgotten peer's socket is closed by the closer. */
void node_closer_take_socket(peer_node *n, nng_socket sock)
{
    pthread_mutex_lock(&n->catalog_lock);
    if (n->n_dead_socks == n->cap_dead_socks) {
        size_t cap = n->cap_dead_socks ? 2 * n->cap_dead_socks : 16;
        nng_socket *grown = realloc(n->dead_socks, cap * sizeof *grown);
        if (grown == NULL) {
            pthread_mutex_unlock(&n->catalog_lock);
            nng_close(sock); /* no room to hand it over: closed here */
            return;
        }
        n->dead_socks = grown;
        n->cap_dead_socks = cap;
    }
    n->dead_socks[n->n_dead_socks++] = sock;
    pthread_cond_signal(&n->closer_wake);
    pthread_mutex_unlock(&n->catalog_lock);
}

static void node_log(peer_node *n, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void node_log(peer_node *n, const char *level, const char *fmt, ...)
{
    if (n->cfg.log == NULL)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    n->cfg.log(n->cfg.log_ctx, level, msg);
}

/* Descriptors open in the process, or -1. */
static long open_descriptors(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    long k = 0;
    while (readdir(d) != NULL)
        k++;
    closedir(d);
    return k - 3; /* ".", ".." and the directory's own */
}

/* The lowest free descriptor: under a flood, holes fill first, so this is
 * about the number in use; a cheap look taken every tick. */
static long lowest_free_descriptor(void)
{
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == EMFILE || errno == ENFILE ? LONG_MAX : -1;
    close(fd);
    return fd;
}

/* Closer thread: closes the listener when descriptors run short, opens it
 * again once they are back (catalog_lock not held). */
static void watch_descriptors(peer_node *n)
{
    struct rlimit rl; /* read each time: prlimit may change it */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        n->fd_limit = rl.rlim_cur == RLIM_INFINITY ? 0 : (int64_t)rl.rlim_cur;
    if (!n->serving || n->fd_limit <= 0)
        return;
    long reserve = n->fd_limit / 8 > FD_RESERVE_MIN ? (long)(n->fd_limit / 8) : FD_RESERVE_MIN;
    if (!n->paused) {
        long low = lowest_free_descriptor();
        if (low < n->fd_limit - reserve)
            return;
        nng_listener_close(n->listener);
        n->paused = mono_ms();
        n->pauses++;
        node_log(n, "warning",
                 "peer port %s closed: %ld of %lld descriptors in use; it opens again below %ld",
                 n->listen_url, low, (long long)n->fd_limit, (long)n->fd_limit - 2 * reserve);
        return;
    }
    if (mono_ms() - n->paused < PAUSE_MIN_MS)
        return;
    long used = open_descriptors();
    if (used < 0 || used >= n->fd_limit - 2 * reserve)
        return;
    validate_error why = {0};
    if (node_serve_listen(n, n->listen_url, &why) != PEER_OK) {
        node_log(n, "warning", "peer port: %s (tried again shortly)", why.text);
        return;
    }
    n->paused = 0;
    node_log(n, "info", "peer port %s open again: %ld descriptors in use", n->listen_url, used);
}

static void *closer_main(void *arg)
{
    peer_node *n = arg;
    int64_t ticked = 0;
    pthread_mutex_lock(&n->catalog_lock);
    for (;;) {
        int64_t now = mono_ms();
        nng_pipe batch[64];
        size_t k = 0;
        int stop = n->closer_stop;
        for (size_t i = 0; i < n->n_conns && k < 64; i++) {
            conn *c = &n->conns[i];
            if (!c->doomed && !c->good && now - c->since > AUTH_GRACE_MS)
                conn_doom(n, c, now);
            /* A newcomer turned away is closed once its dialer has taken
             * it: nng 1.5.2's dialer neither dials again nor sees the close
             * of a connection closed while it was still setting it up. */
            if (c->doomed && !c->closed && (now - c->since >= REFUSE_DELAY_MS || stop)) {
                c->closed = 1;
                batch[k++] = c->pipe;
            }
        }
        nng_socket *socks = n->dead_socks;
        size_t n_socks = n->n_dead_socks;
        n->dead_socks = NULL;
        n->n_dead_socks = n->cap_dead_socks = 0;
        pthread_mutex_unlock(&n->catalog_lock);
        for (size_t i = 0; i < k; i++)
            nng_pipe_close(batch[i]);
        for (size_t i = 0; i < n_socks; i++)
            nng_close(socks[i]);
        free(socks);
        if (now - ticked >= CLOSER_TICK_MS) {
            ticked = now;
            watch_descriptors(n);
        }
        pthread_mutex_lock(&n->catalog_lock);
        if (k == 64)
            continue; /* more to close */
        if (stop && n->n_dead_socks == 0)
            break;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += (long)CLOSER_TICK_MS * 1000000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        if (!n->closer_stop && n->n_dead_socks == 0)
            pthread_cond_timedwait(&n->closer_wake, &n->catalog_lock, &until);
    }
    pthread_mutex_unlock(&n->catalog_lock);
    return NULL;
}

/* Starts the closer once the node is set up (its wake-up exists from the
 * start: pipe callbacks signal it). */
int node_closer_open(peer_node *n)
{
    n->closer_running = pthread_create(&n->closer_thread, NULL, closer_main, n) == 0;
    return n->closer_running ? PEER_OK : PEER_ENOMEM;
}

/* Closes what is left to close, then stops the closer. */
void node_closer_close(peer_node *n)
{
    if (!n->closer_running)
        return;
    pthread_mutex_lock(&n->catalog_lock);
    n->closer_stop = 1;
    pthread_cond_signal(&n->closer_wake);
    pthread_mutex_unlock(&n->catalog_lock);
    pthread_join(n->closer_thread, NULL);
    n->closer_running = 0;
}

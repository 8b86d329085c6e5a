/*
 * Discovery by multicast (peer/PROTOCOL.md, Discovery): the beacon thread
 * sends this node's BEACON on every multicast-capable interface, hears the
 * others' and hands the peers they name to the owner through the `found`
 * list (node_peers_found takes them).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "node_internal.h"

static int port_of(const char *url)
{
    const char *c = strrchr(url, ':');
    return c != NULL ? atoi(c + 1) : 0;
}

static void send_beacons(peer_node *n, const struct sockaddr_in *group)
{
    peer_msg m;
    node_head_init(n, &m, PEER_MSG_BEACON, 0);
    m.port = (uint16_t)port_of(n->listen_url);
    m.beacon_flags = (uint8_t)((n->cfg.cache_host ? PEER_ROLE_CACHE_HOST : 0) |
                               (is_tls(n->listen_url) ? PEER_BEACON_TLS : 0));
    uint8_t buf[256];
    size_t len;
    if (m.port == 0 || peer_wire_seal(&n->key, &m, buf, sizeof buf, &len) != PEER_OK)
        return;
    struct ifaddrs *ifs;
    if (getifaddrs(&ifs) != 0)
        return;
    for (struct ifaddrs *i = ifs; i != NULL; i = i->ifa_next) {
        if (i->ifa_addr == NULL || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) ||
            !(i->ifa_flags & IFF_MULTICAST))
            continue;
        struct in_addr a = ((struct sockaddr_in *)(void *)i->ifa_addr)->sin_addr;
        struct ip_mreq mr = {.imr_multiaddr = group->sin_addr, .imr_interface = a};
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr);
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof a);
        if (sendto(n->beacon_fd, buf, len, 0, (const struct sockaddr *)group, sizeof *group) > 0)
            atomic_fetch_add(&n->control_sent, 1);
    }
    freeifaddrs(ifs);
}

static void hear_beacon(peer_node *n)
{
    uint8_t buf[512];
    struct sockaddr_in from;
    socklen_t flen = sizeof from;
    ssize_t len =
        recvfrom(n->beacon_fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &flen);
    if (len <= 0 || from.sin_family != AF_INET)
        return;
    peer_msg m;
    int err = peer_wire_open(&n->key, buf, (size_t)len, &m);
    if (err == PEER_OK && m.head.type != PEER_MSG_BEACON)
        err = PEER_ETYPE;
    if (err == PEER_OK && memcmp(m.head.sender, n->id, PEER_ID_BYTES) == 0)
        return; /* our own */
    uint8_t source[PEER_SOURCE_BYTES];
    peer_replay_source_ipv4((const uint8_t *)&from.sin_addr.s_addr, source);
    if (err == PEER_OK)
        err = peer_replay_check(n->beacon_replay, source, peer_wire_nonce(buf), m.head.time_ms,
                                wall_ms());
    if (err != PEER_OK) {
        atomic_fetch_add(&n->refused, 1);
        return;
    }
    atomic_fetch_add(&n->control_received, 1);
    found *f = calloc(1, sizeof *f);
    if (f == NULL)
        return;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &from.sin_addr, ip, sizeof ip);
    snprintf(f->url, sizeof f->url, "%s://%s:%u",
             (m.beacon_flags & PEER_BEACON_TLS) ? "tls+tcp" : "tcp", ip, (unsigned)m.port);
    memcpy(f->id, m.head.sender, PEER_ID_BYTES);
    f->cache_host = (m.beacon_flags & PEER_ROLE_CACHE_HOST) != 0;
    pthread_mutex_lock(&n->lock);
    if (n->n_found < 256) {
        f->next = n->found_head;
        n->found_head = f;
        n->n_found++;
        f = NULL;
    }
    pthread_mutex_unlock(&n->lock);
    free(f);
    wake(n);
}

static void *beacon_main(void *arg)
{
    peer_node *n = arg;
    /* Unless set, 5 s, and 40 ms a known peer on a larger LAN (up to 20 s):
     * what each agent hears stays about 25 beacons a second at most. */
    uint32_t set = n->cfg.beacon_interval_ms;
    struct sockaddr_in group = {
        .sin_family = AF_INET,
        .sin_port = htons(n->cfg.beacon_port ? n->cfg.beacon_port : PEER_BEACON_PORT)};
    inet_pton(AF_INET, n->cfg.beacon_group ? n->cfg.beacon_group : PEER_BEACON_GROUP,
              &group.sin_addr);
    int64_t next = 0;
    for (;;) {
        int64_t now = mono_ms();
        if (now >= next) {
            send_beacons(n, &group);
            uint64_t by_size = 40 * (uint64_t)atomic_load(&n->known_peers);
            uint32_t interval = set               ? set
                                : by_size < 5000  ? 5000
                                : by_size > 20000 ? 20000
                                                  : (uint32_t)by_size;
            /* A little jitter keeps agents started together apart. */
            next = now + interval - interval / 10 + (int64_t)randombytes_uniform(interval / 5 + 1);
        }
        struct pollfd pfd[2] = {{.fd = n->beacon_fd, .events = POLLIN},
                                {.fd = n->beacon_pipe[0], .events = POLLIN}};
        int64_t wait = next - mono_ms();
        if (poll(pfd, 2, wait > 0 ? (int)wait : 0) < 0 && errno != EINTR)
            break;
        if (pfd[1].revents)
            break;
        if (pfd[0].revents & POLLIN)
            hear_beacon(n);
    }
    return NULL;
}

int node_beacons_open(peer_node *n, validate_error *why)
{
    if (pipe2(n->beacon_pipe, O_CLOEXEC) != 0) {
        validate_error_set(why, PEER_EIO, "pipe: %s", strerror(errno));
        return PEER_EIO;
    }
    n->beacon_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    unsigned char loop = 1, ttl = 1;
    struct sockaddr_in any = {.sin_family = AF_INET,
                              .sin_port =
                                  htons(n->cfg.beacon_port ? n->cfg.beacon_port : PEER_BEACON_PORT),
                              .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (n->beacon_fd < 0 ||
        setsockopt(n->beacon_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(n->beacon_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0 ||
        setsockopt(n->beacon_fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0 ||
        bind(n->beacon_fd, (struct sockaddr *)&any, sizeof any) != 0) {
        validate_error_set(why, PEER_EIO, "beacon socket on port %u: %s",
                           (unsigned)ntohs(any.sin_port), strerror(errno));
        return PEER_EIO;
    }
    if (peer_replay_new(4096, 64, &n->beacon_replay) != PEER_OK) {
        validate_error_set(why, PEER_ENOMEM, "out of memory");
        return PEER_ENOMEM;
    }
    if (pthread_create(&n->beacon_thread, NULL, beacon_main, n) != 0) {
        validate_error_set(why, PEER_ENOMEM, "cannot start the beacon thread");
        return PEER_ENOMEM;
    }
    n->beacon_running = 1;
    return PEER_OK;
}

void node_beacons_close(peer_node *n)
{
    if (n->beacon_running) {
        if (write(n->beacon_pipe[1], "x", 1) != 1)
            pthread_cancel(n->beacon_thread);
        pthread_join(n->beacon_thread, NULL);
    }
    if (n->beacon_fd >= 0)
        close(n->beacon_fd);
    for (int i = 0; i < 2; i++)
        if (n->beacon_pipe[i] >= 0)
            close(n->beacon_pipe[i]);
    peer_replay_free(n->beacon_replay);
}

/*
 * scene: a small LAN made of network namespaces for the swarm test.
 *
 * A "hub" namespace holds a bridge; every node is a namespace of its own
 * with lo up and one veth (eth0) into the bridge, addressed 10.NET.0.HOST/24
 * where NET is picked at random. Names carry "dsw<pid>-" and a random tag,
 * so runs side by side do not meet, and a later run can tell the leftovers
 * of a run that was killed (its pid is gone) and remove them.
 *
 * Multicast crosses the bridge as it is: with snooping on (the default)
 * and no querier, the members' IGMP joins register them and unregistered
 * groups are flooded. No multicast route is needed either, as dopad names
 * the interface of each beacon it sends (IP_MULTICAST_IF).
 *
 * Processes started in a node are remembered until scene_stop reaps them;
 * scene_close kills those still running and deletes every namespace. It
 * uses only async-signal-safe calls, so a signal handler may call it.
 */
#ifndef DOPA_TEST_SCENE_H
#define DOPA_TEST_SCENE_H

#include <sys/types.h>

#define SCENE_MAX_NODES 48
#define SCENE_MAX_PIDS  128

typedef struct scene_node {
    char ns[40]; /* namespace name */
    char ip[20]; /* its address on the bridge */
} scene_node;

typedef struct scene {
    char tag[24];
    char hub[40];
    int net; /* 10.net.0.0/24 */
    int hub_made;
    scene_node nodes[SCENE_MAX_NODES];
    size_t n_nodes;
    pid_t pids[SCENE_MAX_PIDS]; /* started and not yet reaped; 0: free */
} scene;

/* The ip(8) program, or NULL when there is none. */
const char *scene_ip_program(void);

/* Deletes the namespaces of earlier runs whose process is gone. */
void scene_reap_stale(void);

/* Makes the hub namespace and its bridge; 0 or -1 (with a message). */
int scene_open(scene *s);

/* Adds a node at 10.net.0.host, named after `role`; NULL on failure. */
scene_node *scene_add_node(scene *s, const char *role, int host);

/* Starts argv in the node's network namespace, stdout and stderr appended
 * to log (or /dev/null); the child dies with this process. Returns the pid
 * (remembered for scene_close), or -1. */
pid_t scene_spawn(scene *s, const scene_node *n, const char *const argv[], const char *log);

/* Sends sig to a process scene_spawn started and reaps it (SIGKILL after
 * 5 s); returns its status as test_wait does. */
int scene_stop(scene *s, pid_t pid, int sig);

/* Waits up to timeout_s for such a process to end (killing it then);
 * returns its exit status, 128+signal, or -1 on timeout. */
int scene_wait(scene *s, pid_t pid, int timeout_s);

/* Whether a TCP connection from the node to ip:port succeeds now. */
int scene_can_connect(const scene_node *from, const char *ip, int port);

/* Kills what is left, deletes the namespaces (async-signal-safe). */
void scene_close(scene *s);

#endif

/*
 * client.h: what the files of libdopa share; not installed, and nothing
 * here is exported (libdopa.map exports dopa_* alone).
 *
 *   connection.c  the manager: connecting, one request and its reply,
 *                 disconnecting
 *   calls.c       the job, notification and validation calls of dopa.h,
 *                 and the lists they hand out
 *   events.c      the events thread and the callbacks it runs
 *   info.c        the accessors of the job and file information,
 *                 dopa_free() and dopa_version()
 */
#ifndef DOPA_CLIENT_H
#define DOPA_CLIENT_H

#include <nng/nng.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "dopa.h"
#include "proto.h"

#define CALL_TIMEOUT_MS 120000 /* a call waits this long for dopad's answer */

/* A call in nng now (connection.c). */
typedef struct in_flight in_flight;

/* Callbacks registered for a job (events.c). */
typedef struct registration {
    dopa_id id;
    dopa_callbacks cb; /* the caller's, as much as its size says; the rest 0 */
} registration;

struct dopa_manager {
    nng_socket sock;
    char url[4200]; /* to dial again */
    /* The connection to dopad. conn_lock guards the fields below it; nng's
     * pipe callbacks take it, so no nng call waits while it is held. */
    pthread_mutex_t conn_lock;
    nng_dialer dialer;
    int n_pipes;            /* connections up now */
    int64_t pipeless_since; /* monotonic ms, when n_pipes became 0 */
    int64_t next_redial;    /* monotonic ms, no new dialer before */
    int redial_delay;       /* ms */
    int is_redialing;       /* a thread replaces the dialer now */
    int is_closing;         /* dopa_disconnect() runs: wait for nothing, start no call */
    in_flight *calls;       /* calls in nng now */
    pthread_cond_t conn_changed;
    /* Notifications: the thread that polls for events and runs the
     * callbacks, and what it needs. lock guards the fields below it. */
    uint8_t client[16]; /* who we are to dopad */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    registration *regs;
    size_t n_regs, cap_regs;
    int has_thread;
    int stopping;
    int free_on_exit; /* disconnected from a callback: the thread frees it */
};

/* ------------------------------------------------------------------ */
/* connection.c                                                       */

/* Sends a request and waits up to timeout_ms for its reply, which the
 * caller clears (proto_reply_clear) when this returns DOPA_OK; on any
 * error there is nothing to clear, and a refusal's words are kept for
 * dopa_last_message(). */
int client_call(dopa_manager *m, const proto_request *req, proto_reply *reply, int timeout_ms);
/* client_call with CALL_TIMEOUT_MS, for a request whose reply says
 * nothing but its status. */
int client_send(dopa_manager *m, const proto_request *req);
/* A request of op on job id (NULL: none), the rest zero; for free(). NULL
 * when out of memory. */
proto_request *client_request_new(int op, const dopa_id *id);
/* Frees a manager whose socket is closed and whose events thread is gone
 * (or is the caller). */
void client_manager_free(dopa_manager *m);

/* ------------------------------------------------------------------ */
/* events.c                                                           */

/* Forgets every registration of m and tells dopad so, briefly: a dopad
 * that does not answer forgets the manager by itself. */
void client_unregister_all(dopa_manager *m);

/* ------------------------------------------------------------------ */
/* The open structs of dopa.h (calls.c and events.c)                  */

/* The size of each open struct in libdopa.so.1's first release: a
 * caller's size below it is DOPA_EINVAL. Never changes; members added
 * later come after these. */
#define CLIENT_SIZE_THROUGH(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))
#define CLIENT_STATS_SIZE_1               CLIENT_SIZE_THROUGH(dopa_agent_stats, peer_url)
#define CLIENT_CALLBACKS_SIZE_1           CLIENT_SIZE_THROUGH(dopa_callbacks, file_transferred)
#define CLIENT_FILE_OPTIONS_SIZE_1        CLIENT_SIZE_THROUGH(dopa_file_options, manifest_len)

/* How much of a caller's open struct (its size first) the library uses:
 * as much as both know, the library's being ours_size bytes; 0 when it is
 * NULL or says it is smaller than first_size. */
static inline size_t client_struct_known(const void *given, size_t ours_size, size_t first_size)
{
    size_t size;
    if (given == NULL)
        return 0;
    memcpy(&size, given, sizeof size);
    if (size < first_size)
        return 0;
    return size < ours_size ? size : ours_size;
}

/* Copies the caller's open struct `in` into the library's zeroed `ours`,
 * as much as both know. DOPA_EINVAL as client_struct_known says. */
static inline int client_struct_in(void *ours, size_t ours_size, const void *in, size_t first_size)
{
    size_t n = client_struct_known(in, ours_size, first_size);
    if (n == 0)
        return DOPA_EINVAL;
    memcpy(ours, in, n);
    return DOPA_OK;
}

/* Fills the caller's open struct `out` from the library's `ours`, as much
 * as both know, keeping out's size. DOPA_EINVAL as client_struct_known
 * says. */
static inline int client_struct_out(void *out, const void *ours, size_t ours_size,
                                    size_t first_size)
{
    size_t n = client_struct_known(out, ours_size, first_size), size;
    if (n == 0)
        return DOPA_EINVAL;
    memcpy(&size, out, sizeof size);
    memcpy(out, ours, n);
    memcpy(out, &size, sizeof size);
    return DOPA_OK;
}

#endif

/*
 * Handing work between dopad's threads: the one way anything crosses from
 * a thread of dopad's to the engine thread, or from the engine to a helper
 * thread.
 *
 *   engine thread            worker threads              engine thread
 *   work_submit(q, w) ──► w->run(w) ──► q's mailbox ──► work_reap(q): w->done(w, WORK_RAN)
 *
 *   nng's threads (a request came, a reply timed out)
 *   mailbox_post(m, w) ─────────────────► m ──────────► mailbox_deliver(m): w->done(w, WORK_RAN)
 *
 * A `work` is embedded in (or is the head of) the caller's own struct; the
 * caller's context travels with it, so nothing needs a process-wide
 * pointer to find its engine. Posting wakes the engine (the mailbox's wake
 * function), which delivers on its own turn: `done` always runs on the
 * thread that delivers, never on the poster's. A work that never ran (its
 * queue closed first) or whose result was dropped (mailbox_drop) gets
 * done(w, WORK_DROPPED): it still frees what it holds.
 *
 * This is how dopad's own threads and nng's callbacks reach the engine;
 * the lower modules keep their own inside (the peer node's replies, the
 * origin's transfers in libcurl's loop), and the engine takes their
 * results in its turn through their step functions.
 */
#ifndef DOPA_AGENT_WORK_H
#define DOPA_AGENT_WORK_H

#include <pthread.h>
#include <stddef.h>

enum { WORK_RAN, WORK_DROPPED };

typedef struct work work;
struct work {
    void (*run)(work *w);              /* on a worker thread (NULL for a mailbox's messages) */
    void (*done)(work *w, int status); /* on the delivering thread: WORK_RAN or WORK_DROPPED */
    const void *tag;                   /* what it is about (work_settle, mailbox_drop) */
    work *next;                        /* the queue's or the mailbox's */
};

/* ------------------------------------------------------------------ */
/* A mailbox: any thread posts, one thread delivers, in order.        */

typedef struct mailbox {
    pthread_mutex_t lock;
    work *head, *tail;
    size_t count;
    void (*wake)(void *ctx); /* called after each post, outside the lock */
    void *wake_ctx;
} mailbox;

void mailbox_init(mailbox *m, void (*wake)(void *ctx), void *wake_ctx);
/* Drops what was never delivered (done(w, WORK_DROPPED)). */
void mailbox_destroy(mailbox *m);
/* Any thread. */
void mailbox_post(mailbox *m, work *w);
/* Takes back the first waiting work for which match(w, key) says 1, and
 * returns it (NULL: none waits, it was delivered or is being delivered).
 * Any thread; done is not called: the caller has the work now. */
work *mailbox_withdraw(mailbox *m, int (*match)(const work *w, const void *key), const void *key);
size_t mailbox_count(mailbox *m);
/* The delivering thread: done(w, WORK_RAN) for each work posted before
 * the call, oldest first. Returns how many. */
size_t mailbox_deliver(mailbox *m);
/* The delivering thread: done(w, WORK_DROPPED) for each waiting work with
 * this tag (every one for NULL). */
void mailbox_drop(mailbox *m, const void *tag);

/* ------------------------------------------------------------------ */
/* A work queue: up to `threads` workers run what the owner submits;  */
/* finished work waits in the queue's mailbox for work_reap.          */

struct work_slot {
    int busy;        /* the thread runs a work */
    const void *tag; /* its tag */
};

typedef struct work_queue {
    pthread_mutex_t lock;
    pthread_cond_t more; /* work waits, or the queue closes */
    pthread_cond_t idle; /* a work finished */
    work *head, *tail;   /* waiting to run */
    size_t n_waiting;
    struct work_slot *slots; /* what each started thread runs */
    pthread_t *threads;
    unsigned max_threads, n_threads, n_idle;
    int closing;
    mailbox finished;
} work_queue;

/* Threads start as work comes, up to max_threads (at least 1). wake is
 * called (on the worker's thread) when a work finished. */
int work_queue_init(work_queue *q, unsigned max_threads, void (*wake)(void *ctx), void *wake_ctx);
/* The owner: waits for the work running now; then every work not reaped,
 * finished or still waiting to run, gets done(w, WORK_DROPPED). */
void work_queue_destroy(work_queue *q);
/* The owner. When no thread can start, the work runs here and now. */
void work_submit(work_queue *q, work *w);
/* The owner: done(w, WORK_RAN) for the work finished so far. */
size_t work_reap(work_queue *q);
/* Waits until no work with this tag (every work for NULL) waits to run
 * or runs; its results are then in the mailbox, for work_reap or
 * mailbox_drop(&q->finished, tag). */
void work_settle(work_queue *q, const void *tag);

#endif

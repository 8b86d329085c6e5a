/*
 * Handing work between threads (work.h).
 */
#include <stdlib.h>

#include "work.h"

void mailbox_init(mailbox *m, void (*wake)(void *ctx), void *wake_ctx)
{
    pthread_mutex_init(&m->lock, NULL);
    m->head = m->tail = NULL;
    m->count = 0;
    m->wake = wake;
    m->wake_ctx = wake_ctx;
}

void mailbox_destroy(mailbox *m)
{
    mailbox_drop(m, NULL);
    pthread_mutex_destroy(&m->lock);
}

void mailbox_post(mailbox *m, work *w)
{
    w->next = NULL;
    pthread_mutex_lock(&m->lock);
    if (m->tail != NULL)
        m->tail->next = w;
    else
        m->head = w;
    m->tail = w;
    m->count++;
    pthread_mutex_unlock(&m->lock);
    if (m->wake != NULL)
        m->wake(m->wake_ctx);
}

/* Unlinks w, whose predecessor is prev (NULL: the head). Lock held. */
static void unlink_work(mailbox *m, work *prev, work *w)
{
    if (prev != NULL)
        prev->next = w->next;
    else
        m->head = w->next;
    if (m->tail == w)
        m->tail = prev;
    m->count--;
    w->next = NULL;
}

work *mailbox_withdraw(mailbox *m, int (*match)(const work *w, const void *key), const void *key)
{
    pthread_mutex_lock(&m->lock);
    for (work *prev = NULL, *w = m->head; w != NULL; prev = w, w = w->next)
        if (match(w, key)) {
            unlink_work(m, prev, w);
            pthread_mutex_unlock(&m->lock);
            return w;
        }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

size_t mailbox_count(mailbox *m)
{
    pthread_mutex_lock(&m->lock);
    size_t n = m->count;
    pthread_mutex_unlock(&m->lock);
    return n;
}

size_t mailbox_deliver(mailbox *m)
{
    pthread_mutex_lock(&m->lock);
    work *list = m->head;
    size_t n = m->count;
    m->head = m->tail = NULL;
    m->count = 0;
    pthread_mutex_unlock(&m->lock);
    while (list != NULL) {
        work *w = list;
        list = w->next;
        w->next = NULL;
        w->done(w, WORK_RAN);
    }
    return n;
}

void mailbox_drop(mailbox *m, const void *tag)
{
    work *dropped = NULL, **end = &dropped;
    pthread_mutex_lock(&m->lock);
    for (work *prev = NULL, *w = m->head, *next; w != NULL; w = next) {
        next = w->next;
        if (tag != NULL && w->tag != tag) {
            prev = w;
            continue;
        }
        unlink_work(m, prev, w);
        *end = w;
        end = &w->next;
    }
    pthread_mutex_unlock(&m->lock);
    while (dropped != NULL) {
        work *w = dropped;
        dropped = w->next;
        w->next = NULL;
        w->done(w, WORK_DROPPED);
    }
}

/* ------------------------------------------------------------------ */
/* Work queues                                                        */

struct worker_start {
    work_queue *q;
    unsigned slot;
};

static void *worker_main(void *arg)
{
    work_queue *q = ((struct worker_start *)arg)->q;
    unsigned slot = ((struct worker_start *)arg)->slot;
    free(arg);
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->head == NULL && !q->closing)
            pthread_cond_wait(&q->more, &q->lock);
        if (q->head == NULL)
            break;
        work *w = q->head;
        q->head = w->next;
        if (q->head == NULL)
            q->tail = NULL;
        q->n_waiting--;
        q->slots[slot] = (struct work_slot){.busy = 1, .tag = w->tag};
        q->n_idle--;
        pthread_mutex_unlock(&q->lock);

        w->run(w);
        /* Into the mailbox before its slot says it stopped, so that
         * work_settle never finds it in neither; w may be delivered and
         * freed from here on. */
        mailbox_post(&q->finished, w);

        pthread_mutex_lock(&q->lock);
        q->slots[slot] = (struct work_slot){0};
        q->n_idle++;
        pthread_cond_broadcast(&q->idle);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

int work_queue_init(work_queue *q, unsigned max_threads, void (*wake)(void *ctx), void *wake_ctx)
{
    *q = (work_queue){.max_threads = max_threads > 0 ? max_threads : 1};
    q->threads = calloc(q->max_threads, sizeof *q->threads);
    q->slots = calloc(q->max_threads, sizeof *q->slots);
    if (q->threads == NULL || q->slots == NULL) {
        free(q->threads);
        free(q->slots);
        q->threads = NULL;
        q->slots = NULL;
        return -1;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->more, NULL);
    pthread_cond_init(&q->idle, NULL);
    mailbox_init(&q->finished, wake, wake_ctx);
    return 0;
}

/* Starts one more worker if the waiting work outnumbers the idle ones.
 * Lock held. Returns -1 when none runs at all and none could start. */
static int add_worker(work_queue *q)
{
    if (q->n_waiting < q->n_idle || q->n_threads == q->max_threads)
        return 0;
    struct worker_start *start = malloc(sizeof *start);
    if (start == NULL)
        return q->n_threads > 0 ? 0 : -1;
    *start = (struct worker_start){.q = q, .slot = q->n_threads};
    if (pthread_create(&q->threads[q->n_threads], NULL, worker_main, start) != 0) {
        free(start);
        return q->n_threads > 0 ? 0 : -1;
    }
    q->n_threads++;
    q->n_idle++;
    return 0;
}

void work_submit(work_queue *q, work *w)
{
    w->next = NULL;
    pthread_mutex_lock(&q->lock);
    if (add_worker(q) != 0) {
        pthread_mutex_unlock(&q->lock);
        w->run(w); /* no thread: here and now */
        mailbox_post(&q->finished, w);
        return;
    }
    if (q->tail != NULL)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    q->n_waiting++;
    pthread_cond_signal(&q->more);
    pthread_mutex_unlock(&q->lock);
}

size_t work_reap(work_queue *q)
{
    return mailbox_deliver(&q->finished);
}

/* Work with the tag waits or runs. Lock held. */
static int busy(const work_queue *q, const void *tag)
{
    for (const work *w = q->head; w != NULL; w = w->next)
        if (tag == NULL || w->tag == tag)
            return 1;
    for (unsigned i = 0; i < q->n_threads; i++)
        if (q->slots[i].busy && (tag == NULL || q->slots[i].tag == tag))
            return 1;
    return 0;
}

void work_settle(work_queue *q, const void *tag)
{
    pthread_mutex_lock(&q->lock);
    while (busy(q, tag))
        pthread_cond_wait(&q->idle, &q->lock);
    pthread_mutex_unlock(&q->lock);
}

void work_queue_destroy(work_queue *q)
{
    if (q->threads == NULL)
        return; /* never initialised, or destroyed */
    pthread_mutex_lock(&q->lock);
    q->closing = 1;
    work *waiting = q->head;
    q->head = q->tail = NULL;
    q->n_waiting = 0;
    pthread_cond_broadcast(&q->more);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->n_threads; i++)
        pthread_join(q->threads[i], NULL);
    mailbox_drop(&q->finished, NULL);
    while (waiting != NULL) {
        work *w = waiting;
        waiting = w->next;
        w->next = NULL;
        w->done(w, WORK_DROPPED);
    }
    mailbox_destroy(&q->finished);
    pthread_cond_destroy(&q->more);
    pthread_cond_destroy(&q->idle);
    pthread_mutex_destroy(&q->lock);
    free(q->threads);
    free(q->slots);
    q->threads = NULL;
    q->slots = NULL;
}

/*
 * Sources of pieces: where a file's bytes come from.
 *
 * The engine knows every source only through this table: the origin
 * (fetch.c: HTTP(S), FTP or file:// through libcurl) and the peers
 * (peers.c: the LAN group, cache hosts among them). A source takes part in
 * a file's piece map (pieces.h) by claiming a piece, delivering its bytes
 * (pieces_written, then engine_received) or giving the claim up; it never
 * touches another source's claims. Adding a source is a new file with one
 * of these tables, and a line in engine.c's list of them.
 *
 * The sources of a file are equals: none knows another's bookkeeping. What
 * one needs of the others is advice, which the engine gathers over every
 * source but the asker (sources_*): a source may ask the others to hold
 * back a while (the peers, until the swarm has answered), to leave some
 * pieces to it (those a member fetches, or another member's share), where
 * to begin (this agent's share), and whether it can still bring what the
 * file misses (so that a failing origin need not fail the job).
 *
 * Every function runs on the engine thread. Those that may be NULL say so.
 */
#ifndef DOPA_AGENT_SOURCE_H
#define DOPA_AGENT_SOURCE_H

#include <stddef.h>
#include <stdint.h>

struct agent_engine;
struct agent_file;

enum { SOURCE_READY, SOURCE_BUSY, SOURCE_FAILED };

typedef struct piece_source {
    const char *name;
    int id; /* enum source_id (pieces.h): the claims it makes carry it */

    /* Before the file's pieces: what the file needs of this source first
     * (the origin opens its handle and learns the size). SOURCE_READY,
     * SOURCE_BUSY (the file waits) or SOURCE_FAILED (the job failed).
     * NULL: ready. */
    int (*prepare)(struct agent_engine *e, struct agent_file *f);
    /* The file misses pieces: claim some and go and get them. */
    void (*fetch)(struct agent_engine *e, struct agent_file *f);
    /* Each turn, before busy: what it runs for the file may have stalled
     * (and gives its claims back). NULL: nothing to watch. */
    void (*watch)(struct agent_engine *e, struct agent_file *f);
    /* It works for the file in a way the file must wait for. NULL: never. */
    int (*busy)(const struct agent_file *f);
    /* The file waits for a verdict: let go of what is held open for it.
     * NULL: nothing. */
    void (*idle)(struct agent_engine *e, struct agent_file *f);
    /* The file stops: stop fetching for it and give back its claims (a
     * claim whose bytes are being written goes back when that ends). */
    void (*stop)(struct agent_engine *e, struct agent_file *f);
    /* The file is about to be emptied or closed: wait until nothing of
     * this source writes into it. NULL: it writes on the engine thread. */
    void (*drain)(struct agent_engine *e, struct agent_file *f);

    /* Advice for the others (each may be NULL: no advice). */
    /* It fetches for the file beside them. */
    int (*active)(const struct agent_file *f);
    /* They hold back for now. */
    int (*holds_back)(const struct agent_file *f);
    /* They leave this missing piece to it. */
    int (*keeps)(const struct agent_file *f, uint64_t piece);
    /* Where they begin looking for pieces. */
    uint64_t (*share_start)(const struct agent_file *f);
    /* It can still bring a piece the file misses. */
    int (*can_finish)(const struct agent_file *f);
    /* The run of pieces it fetches now: 1 with it, 0 when none. */
    int (*fetching)(const struct agent_file *f, uint64_t *first, uint64_t *last);
} piece_source;

extern const piece_source origin_source; /* fetch.c */
extern const piece_source peer_source;   /* peers.c */

/* The advice of every source but `self` (engine.c): whether any is
 * active, holds back the others, keeps the piece; where the first that
 * has a share says it starts; the first that can finish (NULL: none); the
 * runs they fetch (at most max, how many). */
int sources_active(const struct agent_engine *e, const struct agent_file *f, int self);
int sources_hold_back(const struct agent_engine *e, const struct agent_file *f, int self);
int sources_keep(const struct agent_engine *e, const struct agent_file *f, uint64_t piece,
                 int self);
uint64_t sources_share_start(const struct agent_engine *e, const struct agent_file *f, int self);
const piece_source *sources_can_finish(const struct agent_engine *e, const struct agent_file *f,
                                       int self);
size_t sources_fetching(const struct agent_engine *e, const struct agent_file *f, int self,
                        uint64_t runs[][2], size_t max);
/* Every source's drain (engine.c). */
void sources_drain(struct agent_engine *e, struct agent_file *f);

#endif

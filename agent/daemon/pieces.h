/*
 * The pieces of a file, and the one way each of them goes.
 *
 * A file is cut into pieces of piece_size bytes (the last one shorter).
 * Every piece is in one state; the engine thread alone moves it, through
 * these functions, and a source (the origin, a peer, a cache host) takes
 * part only by claiming a piece, delivering its bytes, or giving it up:
 *
 *          claim(src)         written(src)        sync_begin          sync_done
 *  MISSING ──────────► CLAIMED ───────────► WRITTEN ──────────► SYNCING ─────────► DURABLE
 *    ▲                    │                   ▲                    │                  │
 *    ├── unclaim(src) ────┘                   └──── sync_retry ────┤                  │
 *    ├── lose: WRITTEN and SYNCING (an fdatasync failed, the job ended)               │
 *    └── reset: WRITTEN, SYNCING and DURABLE (the file starts over) ──────────────────┘
 *
 *   MISSING   nobody has it, nobody fetches it
 *   CLAIMED   a source fetches it (the origin's request covers it, a peer
 *             was asked for it, a writer hashes and writes it)
 *   WRITTEN   its bytes are in the temporary file, checked against the
 *             manifest if there is one; it waits for the next commit
 *   SYNCING   the commit running now fdatasyncs the file
 *   DURABLE   fdatasync'd and recorded in the store in one transaction
 *
 * DURABLE is what survives a kill -9, and what is offered to peers when
 * the file has a manifest (each piece was checked against it before it
 * was written). When every piece is DURABLE, the whole-file checks
 * (SHA-256, validator plugins, the client's verdict) make the file
 * transferred; then it is served whole.
 *
 * A claim belongs to its source until the source delivers or gives it up:
 * pieces_reset leaves claims alone (their holders give them up: what the
 * peers' writers deliver for an older generation of the file is void, and
 * no origin request outlives a reset), so a piece is never fetched twice
 * at once. Store loading puts pieces straight into
 * DURABLE (pieces_set_durable).
 */
#ifndef DOPA_AGENT_PIECES_H
#define DOPA_AGENT_PIECES_H

#include <stddef.h>
#include <stdint.h>

enum piece_state { PIECE_MISSING, PIECE_CLAIMED, PIECE_WRITTEN, PIECE_SYNCING, PIECE_DURABLE };
#define PIECE_STATES (PIECE_DURABLE + 1)

/* Who claimed a piece. */
enum source_id { SOURCE_NONE, SOURCE_ORIGIN, SOURCE_PEERS };

typedef struct piece_map {
    uint64_t size;       /* the file's local size */
    uint32_t piece_size; /* 0: no map yet (the size is not known) */
    uint64_t count;
    uint8_t *state;                /* a byte each: the state, and the source of a claim << 4 */
    uint64_t n[PIECE_STATES];      /* pieces in each state */
    uint64_t bytes[PIECE_STATES];  /* and their bytes */
    uint64_t *written, *syncing;   /* WRITTEN in arrival order (the next commit), SYNCING */
    size_t n_written, cap_written; /* (n_written == n[PIECE_WRITTEN]) */
    size_t n_syncing, cap_syncing;
} piece_map;

/* Every piece MISSING (what was there before is gone). DOPA_ENOMEM. */
int pieces_init(piece_map *m, uint64_t size, uint32_t piece_size);
void pieces_free(piece_map *m);

uint32_t pieces_length(const piece_map *m, uint64_t piece);
/* The state of a piece (PIECE_MISSING for one the map does not have). */
int pieces_state(const piece_map *m, uint64_t piece);
/* The source of a CLAIMED piece (SOURCE_NONE otherwise). */
int pieces_claimer(const piece_map *m, uint64_t piece);
/* A piece of the map that nobody has or fetches. */
static inline int pieces_missing(const piece_map *m, uint64_t piece)
{
    return piece < m->count && pieces_state(m, piece) == PIECE_MISSING;
}
/* Bytes the file holds: written, syncing or durable. */
uint64_t pieces_held_bytes(const piece_map *m);
/* The first piece that is neither written nor done (a claimed one is not
 * here yet); count when there is none. */
uint64_t pieces_first_absent(const piece_map *m);

/* MISSING → CLAIMED by src: 1, or 0 when the piece is not missing. */
int pieces_claim(piece_map *m, uint64_t piece, int src);
/* CLAIMED by src → MISSING (a claim of another source stays). */
void pieces_unclaim(piece_map *m, uint64_t piece, int src);
/* CLAIMED by src → WRITTEN: 1; 0 when it is not src's claim, or when it
 * cannot be queued for the commit (out of memory: MISSING again, fetched
 * another time). */
int pieces_written(piece_map *m, uint64_t piece, int src);
/* Every WRITTEN piece → SYNCING; how many. */
size_t pieces_sync_begin(piece_map *m);
/* SYNCING → DURABLE. */
void pieces_sync_done(piece_map *m);
/* SYNCING → WRITTEN: the commit failed; the next one tries again. */
void pieces_sync_retry(piece_map *m);
/* WRITTEN (and SYNCING too with `syncing`) → MISSING: their bytes may not
 * be on disk, or will never be recorded. */
void pieces_lose(piece_map *m, int syncing);
/* WRITTEN, SYNCING and DURABLE → MISSING; claims stay. */
void pieces_reset(piece_map *m);
/* MISSING → DURABLE, for pieces read back from the store. 0, or -1 when
 * the piece is out of range or not missing. */
int pieces_set_durable(piece_map *m, uint64_t piece);

#endif

/*
 * The pieces of a file and their states (pieces.h).
 */
#include <stdlib.h>
#include <string.h>

#include "dopa.h"
#include "pieces.h"
#include "validate.h"

#define STATE(b)  ((b) & 0x0f)
#define SOURCE(b) ((b) >> 4)

int pieces_init(piece_map *m, uint64_t size, uint32_t piece_size)
{
    uint64_t count = validate_piece_count(size, piece_size);
    uint8_t *state = calloc(count ? (size_t)count : 1, 1);
    if (state == NULL)
        return DOPA_ENOMEM;
    free(m->state);
    uint64_t *written = m->written, *syncing = m->syncing;
    size_t cap_written = m->cap_written, cap_syncing = m->cap_syncing;
    *m = (piece_map){.size = size,
                     .piece_size = piece_size,
                     .count = count,
                     .state = state,
                     .written = written,
                     .syncing = syncing,
                     .cap_written = cap_written,
                     .cap_syncing = cap_syncing};
    m->n[PIECE_MISSING] = count;
    m->bytes[PIECE_MISSING] = size;
    return DOPA_OK;
}

void pieces_free(piece_map *m)
{
    free(m->state);
    free(m->written);
    free(m->syncing);
    memset(m, 0, sizeof *m);
}

uint32_t pieces_length(const piece_map *m, uint64_t piece)
{
    return validate_piece_length(m->size, m->piece_size, piece);
}

int pieces_state(const piece_map *m, uint64_t piece)
{
    return m->state != NULL && piece < m->count ? STATE(m->state[piece]) : PIECE_MISSING;
}

int pieces_claimer(const piece_map *m, uint64_t piece)
{
    if (pieces_state(m, piece) != PIECE_CLAIMED)
        return SOURCE_NONE;
    return SOURCE(m->state[piece]);
}

uint64_t pieces_held_bytes(const piece_map *m)
{
    return m->bytes[PIECE_WRITTEN] + m->bytes[PIECE_SYNCING] + m->bytes[PIECE_DURABLE];
}

uint64_t pieces_first_absent(const piece_map *m)
{
    uint64_t p = 0;
    while (p < m->count && STATE(m->state[p]) > PIECE_CLAIMED)
        p++;
    return p;
}

/* Moves a piece to a state, keeping the counts. */
static void move(piece_map *m, uint64_t piece, int to, int src)
{
    int from = STATE(m->state[piece]);
    uint32_t len = pieces_length(m, piece);
    m->n[from]--;
    m->bytes[from] -= len;
    m->n[to]++;
    m->bytes[to] += len;
    m->state[piece] = (uint8_t)(to | (to == PIECE_CLAIMED ? src << 4 : 0));
}

int pieces_claim(piece_map *m, uint64_t piece, int src)
{
    if (m->state == NULL || piece >= m->count || STATE(m->state[piece]) != PIECE_MISSING)
        return 0;
    move(m, piece, PIECE_CLAIMED, src);
    return 1;
}

void pieces_unclaim(piece_map *m, uint64_t piece, int src)
{
    if (pieces_claimer(m, piece) == src && src != SOURCE_NONE)
        move(m, piece, PIECE_MISSING, 0);
}

/* Appends to a list of pieces; -1 when it cannot grow. */
static int append(uint64_t **list, size_t *n, size_t *cap, uint64_t piece)
{
    if (*n == *cap) {
        size_t grown_cap = *cap ? 2 * *cap : 64;
        uint64_t *grown = realloc(*list, grown_cap * sizeof *grown);
        if (grown == NULL)
            return -1;
        *list = grown;
        *cap = grown_cap;
    }
    (*list)[(*n)++] = piece;
    return 0;
}

int pieces_written(piece_map *m, uint64_t piece, int src)
{
    if (pieces_claimer(m, piece) != src || src == SOURCE_NONE)
        return 0;
    if (append(&m->written, &m->n_written, &m->cap_written, piece) != 0) {
        move(m, piece, PIECE_MISSING, 0);
        return 0;
    }
    move(m, piece, PIECE_WRITTEN, 0);
    return 1;
}

size_t pieces_sync_begin(piece_map *m)
{
    /* The written list becomes the syncing one (the arrays swap). */
    for (size_t i = 0; i < m->n_written; i++)
        move(m, m->written[i], PIECE_SYNCING, 0);
    uint64_t *list = m->syncing;
    size_t cap = m->cap_syncing;
    m->syncing = m->written;
    m->cap_syncing = m->cap_written;
    m->n_syncing = m->n_written;
    m->written = list;
    m->cap_written = cap;
    m->n_written = 0;
    return m->n_syncing;
}

void pieces_sync_done(piece_map *m)
{
    for (size_t i = 0; i < m->n_syncing; i++)
        move(m, m->syncing[i], PIECE_DURABLE, 0);
    m->n_syncing = 0;
}

void pieces_sync_retry(piece_map *m)
{
    for (size_t i = 0; i < m->n_syncing; i++) {
        uint64_t piece = m->syncing[i];
        if (append(&m->written, &m->n_written, &m->cap_written, piece) == 0)
            move(m, piece, PIECE_WRITTEN, 0);
        else
            move(m, piece, PIECE_MISSING, 0); /* fetched again */
    }
    m->n_syncing = 0;
}

void pieces_lose(piece_map *m, int syncing)
{
    for (size_t i = 0; i < m->n_written; i++)
        move(m, m->written[i], PIECE_MISSING, 0);
    m->n_written = 0;
    if (!syncing)
        return;
    for (size_t i = 0; i < m->n_syncing; i++)
        move(m, m->syncing[i], PIECE_MISSING, 0);
    m->n_syncing = 0;
}

void pieces_reset(piece_map *m)
{
    for (uint64_t p = 0; p < m->count; p++) {
        int s = STATE(m->state[p]);
        if (s != PIECE_MISSING && s != PIECE_CLAIMED)
            move(m, p, PIECE_MISSING, 0);
    }
    m->n_written = 0;
    m->n_syncing = 0;
}

int pieces_set_durable(piece_map *m, uint64_t piece)
{
    if (m->state == NULL || piece >= m->count || STATE(m->state[piece]) != PIECE_MISSING)
        return -1;
    move(m, piece, PIECE_DURABLE, 0);
    return 0;
}

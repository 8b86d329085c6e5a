/*
 * Fetching (peer/PROTOCOL.md, Availability and Trust): a swarm is the
 * node's view of one content the agent fetches. It asks every usable peer
 * what it holds, sends piece requests rarest first within each peer's
 * share of requests in flight, works out who else fetches the content and
 * which pieces are this agent's share of the origin's work, and keeps
 * score: bad pieces, broken claims and timeouts cost a peer trust, and
 * enough of them a ban. All of it runs on the owner's thread.
 */
#include <stdlib.h>
#include <string.h>

#include "node_internal.h"

#define REFRESH_MS       500 /* availability asked again after this */
#define REFRESH_FAST_MS  250 /* and, while a swarm starts, after this */
#define FAST_PHASE_MS    3000
#define READY_MIN_MS     500   /* the origin waits at least this (others starting together) */
#define READY_MS         1500  /* and at most this for every peer's answer */
#define MEMBER_TTL_MS    5000  /* a member not heard from for this long is gone */
#define STALL_MS         5000  /* a member without progress for this long loses its share */
#define SWARM_STALL_MS   10000 /* no piece from any peer this long: the origin may take any */
#define REFUSALS         3     /* refusals in a row before a peer's holdings stop counting */
#define QUIET_MS         10000
#define SCAN_PIECES      2048  /* pieces one pick looks at, at most */
#define SLOW_RESET_MS    30000 /* a stalled peer is tried again after this */
#define HAVE_TIMEOUT_MS  3000
#define SETTLE_LAG_MS    300    /* a member hears of a change within a turn (250 ms) */
#define SETTLE_MAX_MS    1500   /* pieces new to this agent's share wait at most this */
#define BROKEN_WINDOW_MS 600000 /* broken claims count towards a ban within this */
#define FETCHERS         4      /* members that fetch from the origin at a time */
#define NEIGHBOURS       24     /* peers a swarm asks and fetches from at a time */
#define ROTATE_MS        10000  /* one of them makes way for another this often */
#define CANDIDATE_ASK_MS 8      /* the others ask a fetcher candidate every this many ms a peer */

/* What one peer holds of one swarm's content. */
struct swarm_peer {
    peer_entry *p;
    uint8_t status, role;
    uint8_t *bits;   /* SOME: its bitfield; counted in the swarm's holders */
    uint8_t *coming; /* what is on its way to it (PEER_ROLE_COMING), or NULL */
    int counted;     /* its bits are in holders */
    uint64_t count;
    int64_t asked, answered, progress_at;
    int64_t coming_at;  /* it last said something is on its way to it */
    int in_set;         /* one of the neighbours this swarm asks and fetches from */
    int64_t joined_set; /* when it became one */
    int candidate;      /* among the first peers in fetch order (pinned) */
    uint64_t order;     /* its place in fetch order, once it has an id */
    int has_order;
    int64_t promoted_at;       /* it became one of the fetchers, as this agent sees it; 0: not */
    int member;                /* a member at the last update_members */
    int64_t sent, answer_sent; /* when the HAVE_REQ now asked / last answered went out */
    int asking;
    int contributed;     /* sent pieces judged LATER */
    int claim_broken;    /* it refused a piece its last answer claimed */
    unsigned refused;    /* NOT_HELD or BUSY answers in a row */
    int64_t quiet_until; /* its holdings do not count until then (it refuses) */
};

static int usable(const peer_entry *p, int64_t now)
{
    return p->open && !p->self && p->banned_until <= now;
}

static swarm_peer *swarm_find(peer_swarm *s, const peer_entry *p)
{
    for (size_t i = 0; i < s->n_sp; i++)
        if (s->sp[i].p == p)
            return &s->sp[i];
    return NULL;
}

void node_swarm_add_peer(peer_swarm *s, peer_entry *p)
{
    if (swarm_find(s, p) != NULL)
        return;
    if (s->n_sp == s->cap_sp) {
        size_t cap = s->cap_sp ? 2 * s->cap_sp : 8;
        swarm_peer *grown = realloc(s->sp, cap * sizeof *grown);
        if (grown == NULL)
            return;
        s->sp = grown;
        s->cap_sp = cap;
    }
    memset(&s->sp[s->n_sp], 0, sizeof s->sp[s->n_sp]);
    s->sp[s->n_sp].p = p;
    s->n_sp++;
}

/* Takes a peer's pieces out of (or back into) the holders count. */
static void count_holdings(peer_swarm *s, swarm_peer *sp, int add)
{
    if (sp->counted == add)
        return;
    sp->counted = add;
    if (sp->status == PEER_HAVE_NONE)
        return;
    for (uint64_t i = 0; i < s->pieces; i++)
        if (sp->status == PEER_HAVE_ALL || peer_bit_get(sp->bits, i)) {
            if (add)
                s->holders[i]++;
            else if (s->holders[i] > 0)
                s->holders[i]--;
        }
}

void node_swarm_drop_peer(peer_swarm *s, peer_entry *p)
{
    swarm_peer *sp = swarm_find(s, p);
    if (sp == NULL)
        return;
    count_holdings(s, sp, 0);
    free(sp->bits);
    free(sp->coming);
    *sp = s->sp[--s->n_sp];
}

/* Whether a peer's holdings count now: usable and not stalled. */
static int holdings_count(const swarm_peer *sp, int64_t now)
{
    return sp->in_set && usable(sp->p, now) && sp->p->slow < 3 && sp->answered > 0 &&
           sp->quiet_until <= now && !sp->claim_broken;
}

static uint64_t fetch_order(const peer_swarm *s, const uint8_t id[PEER_ID_BYTES]);

int peer_swarm_open(peer_node *n, const uint8_t cid[PEER_CID_BYTES], uint64_t size,
                    uint32_t piece_size, const peer_swarm_ops *ops, peer_swarm **out)
{
    uint64_t pieces = piece_count(size, piece_size);
    if (piece_size == 0 || pieces > PEER_MAX_PIECES || ops->claim == NULL || ops->piece == NULL ||
        ops->lost == NULL)
        return PEER_EINVAL;
    peer_swarm *s = calloc(1, sizeof *s);
    if (s == NULL)
        return PEER_ENOMEM;
    s->holders = calloc(pieces ? pieces : 1, sizeof *s->holders);
    if (s->holders == NULL) {
        free(s);
        return PEER_ENOMEM;
    }
    s->n = n;
    memcpy(s->cid, cid, PEER_CID_BYTES);
    s->size = size;
    s->piece_size = piece_size;
    s->pieces = pieces;
    s->ops = *ops;
    s->opened = mono_ms();
    s->cursor = pieces ? random64() % pieces : 0;
    s->n_members = 1; /* alone until the first turn says otherwise */
    s->n_fetchers = 1;
    s->fetching = 1;
    s->self_order = fetch_order(s, n->id);
    for (peer_entry *p = n->peers; p != NULL; p = p->next)
        node_swarm_add_peer(s, p);
    s->next = n->swarms;
    n->swarms = s;
    *out = s;
    return PEER_OK;
}

void peer_swarm_close(peer_swarm *s)
{
    if (s == NULL)
        return;
    peer_node *n = s->n;
    for (request *r = n->requests, *next; r != NULL; r = next) {
        next = r->next;
        if (r->s != s)
            continue;
        int piece = r->type == PEER_MSG_PIECE_REQ;
        uint64_t idx = r->piece;
        if (piece && r->p->in_flight > 0)
            r->p->in_flight--;
        node_request_free(n, r);
        if (piece)
            s->ops.lost(s->ops.ctx, idx);
    }
    for (peer_swarm **pp = &n->swarms; *pp != NULL; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    for (size_t i = 0; i < s->n_sp; i++) {
        free(s->sp[i].bits);
        free(s->sp[i].coming);
    }
    free(s->sp);
    free(s->holders);
    free(s);
}

int peer_swarm_ready(const peer_swarm *s)
{
    int64_t now = mono_ms();
    if (now - s->opened >= READY_MS)
        return 1;
    if (s->n_sp > 0 && now - s->opened < READY_MIN_MS)
        return 0;
    for (size_t i = 0; i < s->n_sp; i++)
        if (s->sp[i].in_set && usable(s->sp[i].p, now) && s->sp[i].answered == 0)
            return 0;
    /* A newcomer to a swarm under way waits the whole READY_MS: what the
     * members are fetching from the origin right now is not in their
     * answers until it is held, and the newcomer's share covers some of
     * it. Meanwhile it takes from peers what they hold. */
    for (size_t i = 0; i < s->n_members; i++) /* (NULL, this agent, sits by its id) */
        if (s->members[i] != NULL && s->members[i]->count > 0)
            return 0;
    return 1;
}

static int id_cmp(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, PEER_ID_BYTES);
}

/* Whether the peer fetches the content too: its answers say so, or it
 * has asked us about it lately (which tells a newcomer at once, before our
 * next question to it). catalog_lock held. */
static int is_member(const peer_swarm *s, const swarm_peer *sp, int64_t now)
{
    if (!usable(sp->p, now) || !sp->p->has_id)
        return 0;
    if ((sp->role & PEER_ROLE_DOWNLOADING) && now - sp->answered <= MEMBER_TTL_MS)
        return 1;
    if (sp->status == PEER_HAVE_ALL)
        return 0; /* a seeder asking is checking, not fetching */
    for (size_t i = 0; i < INTEREST_SLOTS; i++)
        if (now - s->n->interest[i].at <= MEMBER_TTL_MS &&
            memcmp(s->n->interest[i].cid, s->cid, PEER_CID_BYTES) == 0 &&
            memcmp(s->n->interest[i].sender, sp->p->id, PEER_ID_BYTES) == 0)
            return 1;
    return 0;
}

/* Who fetches the content now (this agent is the NULL entry), in the
 * order that picks the origin's fetchers: by a hash of the content and the
 * member's id, so that each content has its own few. Recomputed once a
 * turn, after the turn changed the peers. */
static uint64_t share_end(const peer_swarm *s);

static uint64_t fetch_order(const peer_swarm *s, const uint8_t id[PEER_ID_BYTES])
{
    uint8_t in[PEER_CID_BYTES + PEER_ID_BYTES], h[VALIDATE_HASH_BYTES];
    memcpy(in, s->cid, PEER_CID_BYTES);
    memcpy(in + PEER_CID_BYTES, id, PEER_ID_BYTES);
    validate_blake2b(in, sizeof in, h);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | h[i];
    return v;
}

/* A peer's place in fetch order, computed once (it has an id). */
static uint64_t order_of(const peer_swarm *s, swarm_peer *sp)
{
    if (!sp->has_order) {
        sp->order = fetch_order(s, sp->p->id);
        sp->has_order = 1;
    }
    return sp->order;
}

/* A fetcher that says nothing is on its way to it for this long has
 * stopped fetching (its origin fails, or it is done with its share). */
static int64_t fetch_stall_ms(const peer_swarm *s)
{
    return STALL_MS + (int64_t)(s->piece_size / 1000); /* a piece at 1 MB/s or more */
}

static int fetcher_stalled(const peer_swarm *s, const swarm_peer *m, int64_t now)
{
    int64_t since = m->coming_at > m->promoted_at ? m->coming_at : m->promoted_at;
    return now - since > fetch_stall_ms(s);
}

/* Whether every fetcher candidate has answered (or had time to). */
static int candidates_answered(const peer_swarm *s, int64_t now)
{
    if (now - s->opened > READY_MS + HAVE_TIMEOUT_MS)
        return 1; /* one that says nothing by then is no member */
    for (size_t i = 0; i < s->n_sp; i++)
        if (s->sp[i].candidate && usable(s->sp[i].p, now) && s->sp[i].answered == 0)
            return 0;
    return 1;
}

/* The origin's fetchers: the first FETCHERS members in fetch order own its
 * shares; one that stops fetching is passed over for the next member,
 * which has fetch_stall_ms to start. Sets s->fetching: this agent is one. */
static void pick_fetchers(peer_swarm *s, int64_t now)
{
    size_t taken = 0;
    s->fetching = 0;
    /* An agent that is no candidate knows too few of the members to count
     * itself a fetcher before every candidate has said whether it is one. */
    int may = s->candidate || candidates_answered(s, now);
    for (size_t i = 0; i < s->n_members; i++) {
        swarm_peer *m = s->members[i];
        if (taken == FETCHERS) {
            if (m != NULL)
                m->promoted_at = 0;
            continue;
        }
        if (m == NULL) {
            s->fetching = may;
            taken += may != 0;
        } else if (m->promoted_at == 0) {
            m->promoted_at = now;
            taken++;
        } else if (!fetcher_stalled(s, m, now)) {
            taken++;
        }
    }
}

static void update_members(peer_swarm *s, int64_t now)
{
    swarm_peer *before[MAX_MEMBERS];
    size_t n_before = s->n_members;
    memcpy(before, s->members, n_before * sizeof *before);
    uint64_t lo = peer_swarm_share_start(s), hi = share_end(s);
    size_t m = 0;
    s->members[m++] = NULL;
    pthread_mutex_lock(&s->n->catalog_lock);
    for (size_t i = 0; i < s->n_sp && m < MAX_MEMBERS; i++) {
        swarm_peer *sp = &s->sp[i];
        int was = sp->member;
        sp->member = 0;
        if (!is_member(s, sp, now) || id_cmp(sp->p->id, s->n->id) == 0)
            continue;
        int seen = 0; /* one agent reached at two addresses counts once */
        for (size_t k = 1; k < m && !seen; k++)
            seen = id_cmp(s->members[k]->p->id, sp->p->id) == 0;
        if (seen)
            continue;
        /* Its stall is counted from when it joined, not from an answer it
         * gave before it fetched the content. */
        if (!was) {
            sp->progress_at = now;
            sp->promoted_at = 0;
        }
        sp->member = 1;
        s->members[m++] = sp;
    }
    pthread_mutex_unlock(&s->n->catalog_lock);
    /* Insertion sort by fetch order (ties by id): a few hundred at most,
     * and mostly in order from the last turn. */
    uint64_t order[MAX_MEMBERS];
    for (size_t i = 0; i < m; i++)
        order[i] = s->members[i] != NULL ? order_of(s, s->members[i]) : s->self_order;
    for (size_t i = 1; i < m; i++) {
        swarm_peer *x = s->members[i];
        uint64_t xo = order[i];
        const uint8_t *xid = x != NULL ? x->p->id : s->n->id;
        size_t k = i;
        while (k > 0) {
            swarm_peer *y = s->members[k - 1];
            if (order[k - 1] < xo ||
                (order[k - 1] == xo && id_cmp(y != NULL ? y->p->id : s->n->id, xid) <= 0))
                break;
            s->members[k] = y;
            order[k] = order[k - 1];
            k--;
        }
        s->members[k] = x;
        order[k] = xo;
    }
    s->n_members = m;
    s->n_fetchers = m < FETCHERS ? m : FETCHERS;
    for (size_t i = 0; i < m; i++)
        if (s->members[i] == NULL)
            s->rank = i;
    pick_fetchers(s, now);
    if (m == n_before && memcmp(before, s->members, m * sizeof *before) == 0)
        return;
    /* Pieces that just became this agent's share may be on their way to
     * their former owner, which says so only in its next answers. */
    if (n_before == 1)
        lo = 0, hi = s->pieces; /* alone, everything was its own */
    if (s->members_at != 0 && now - s->members_at < SETTLE_MAX_MS) {
        lo = lo > s->kept_lo ? lo : s->kept_lo; /* still settling: what both kept */
        hi = hi < s->kept_hi ? hi : s->kept_hi;
    }
    s->kept_lo = lo;
    s->kept_hi = hi > lo ? hi : lo;
    s->members_at = now;
}

/* Whether every member has answered since the last change of members had
 * time to reach it (or it waited long enough). */
static int settled(const peer_swarm *s, int64_t now)
{
    if (s->members_at == 0 || now - s->members_at >= SETTLE_MAX_MS)
        return 1;
    for (size_t i = 0; i < s->n_members; i++)
        if (s->members[i] != NULL && s->members[i]->answer_sent < s->members_at + SETTLE_LAG_MS)
            return 0;
    return 1;
}

int peer_swarm_origin_may(const peer_swarm *s, uint64_t piece)
{
    if (piece >= s->pieces)
        return 0;
    int64_t now = mono_ms();
    if (s->holders[piece] > 0) {
        /* Held by peers, who send it, unless nothing has come from any
         * peer for a long while (they claim what they do not send). */
        int64_t since = s->last_piece > s->opened ? s->last_piece : s->opened;
        return now - since > SWARM_STALL_MS;
    }
    int64_t stall = fetch_stall_ms(s);
    for (size_t i = 0; i < s->n_members; i++) {
        const swarm_peer *m = s->members[i];
        if (m != NULL && m->coming != NULL && !m->claim_broken && peer_bit_get(m->coming, piece) &&
            now - m->progress_at <= stall)
            return 0; /* on its way to that member, who will hold it */
    }
    /* The first fetchers own the shares; the others wait, unless an owner
     * stopped fetching: then its share is open to whoever fetches now. */
    const swarm_peer *owner = s->members[(size_t)(piece * s->n_fetchers / s->pieces)];
    if (owner == NULL)
        return (piece >= s->kept_lo && piece < s->kept_hi) || settled(s, now);
    return s->fetching && fetcher_stalled(s, owner, now);
}

unsigned peer_swarm_holders(const peer_swarm *s, uint64_t piece)
{
    return piece < s->pieces ? s->holders[piece] : 0;
}

/* Where this agent's share ends (exclusive). */
static uint64_t share_end(const peer_swarm *s)
{
    if (s->n_members == 1)
        return s->pieces;
    size_t slice = s->rank % s->n_fetchers; /* beyond the fetchers: where it would help */
    return (uint64_t)(slice + 1) * s->pieces / s->n_fetchers;
}

uint64_t peer_swarm_share_start(const peer_swarm *s)
{
    if (s->n_members == 1) {
        /* Alone as far as it knows: start where its id points, so that
         * agents that have not heard of each other yet fetch apart. */
        uint64_t at = 0;
        for (int i = 0; i < 8; i++)
            at = at << 8 | s->n->id[i];
        return s->pieces ? (uint64_t)(((unsigned __int128)at * s->pieces) >> 64) : 0;
    }
    return (uint64_t)(s->rank % s->n_fetchers) * s->pieces / s->n_fetchers;
}

static void strike(peer_node *n, peer_entry *p);
static int sp_holds(const peer_swarm *s, const swarm_peer *sp, uint64_t i);
static void broke_claim(peer_node *n, peer_entry *p);
static void judge(peer_node *n, peer_entry *p, int verdict, size_t len);

void peer_swarm_blame(peer_swarm *s)
{
    /* Without piece hashes the bad bytes cannot be traced to one sender:
     * only a sole sender is certainly the one, and only it is blamed (an
     * honest peer must never pay for another's piece). */
    swarm_peer *sole = NULL;
    size_t senders = 0;
    for (size_t i = 0; i < s->n_sp; i++) {
        if (!s->sp[i].contributed)
            continue;
        s->sp[i].contributed = 0;
        senders++;
        sole = &s->sp[i];
    }
    if (senders == 1)
        strike(s->n, sole->p);
}

unsigned peer_swarm_sources(const peer_swarm *s)
{
    unsigned k = 0;
    int64_t now = mono_ms();
    for (size_t i = 0; i < s->n_sp; i++)
        if (holdings_count(&s->sp[i], now) && s->sp[i].status != PEER_HAVE_NONE)
            k++;
    return k;
}

static void ban(peer_node *n, peer_entry *p, int64_t now)
{
    uint32_t ban_s = n->cfg.ban_seconds ? n->cfg.ban_seconds : 3600;
    if (p->banned_until > now)
        return;
    p->banned_until = now + (int64_t)ban_s * 1000;
    atomic_fetch_add(&n->bans, 1);
    /* Several agents may share an address (a NAT, containers on one host),
     * so one ban is for the peer alone; a second one at the same address
     * bans the address (a liar opening port after port). */
    if (node_peers_banned(n, p->host, now))
        for (peer_entry *q = n->peers; q != NULL; q = q->next)
            if (strcmp(q->host, p->host) == 0 && q->banned_until < p->banned_until)
                q->banned_until = p->banned_until;
}

/* A peer sent a bad piece: a strike, and after enough of them a ban. */
static void strike(peer_node *n, peer_entry *p)
{
    unsigned ban_after = n->cfg.ban_after ? n->cfg.ban_after : 4;
    atomic_fetch_add(&n->bad_pieces, 1);
    if (++p->strikes >= ban_after)
        ban(n, p, mono_ms());
}

/* A peer refused a piece it said it held. It costs trust as a bad piece
 * does: a peer that claims what it does not send holds the others back
 * (they leave the piece to it, and to the members it names) without
 * sending a bad byte. An honest peer breaks a claim only when its content
 * goes (a job cancelled, a cache emptied, a file changed on disk): at most
 * once per answer, which is all that counts, and the count starts again
 * after BROKEN_WINDOW_MS. */
static void broke_claim(peer_node *n, peer_entry *p)
{
    unsigned ban_after = n->cfg.ban_after ? n->cfg.ban_after : 4;
    int64_t now = mono_ms();
    atomic_fetch_add(&n->broken_claims, 1);
    if (now - p->broken_since > BROKEN_WINDOW_MS) {
        p->broken = 0;
        p->broken_since = now;
    }
    if (++p->broken >= ban_after)
        ban(n, p, now);
}

/* A reply arrived (or failed) for a request of this swarm. */
void node_swarm_take_have(peer_swarm *s, request *r, const peer_msg *m)
{
    if (m != NULL)
        atomic_fetch_add(&s->n->control_received, 1);
    swarm_peer *sp = swarm_find(s, r->p);
    if (sp == NULL)
        return;
    sp->asking = 0;
    if (m == NULL)
        return;
    int64_t now = mono_ms();
    if (m->have_status != PEER_HAVE_NONE && m->piece_count != s->pieces)
        return; /* another idea of the content: ignore it */
    count_holdings(s, sp, 0);
    uint64_t count = m->have_status == PEER_HAVE_ALL ? s->pieces : 0;
    size_t bytes = peer_bits_bytes(s->pieces);
    free(sp->bits);
    sp->bits = NULL;
    sp->status = m->have_status;
    if (m->have_status == PEER_HAVE_SOME) {
        sp->bits = malloc(bytes);
        if (sp->bits == NULL) {
            sp->status = PEER_HAVE_NONE;
        } else {
            memcpy(sp->bits, m->bitfield, bytes);
            count += peer_bits_count(sp->bits, s->pieces);
        }
    }
    sp->role = m->role;
    free(sp->coming);
    sp->coming = NULL;
    if ((m->role & PEER_ROLE_COMING) && (sp->coming = malloc(bytes)) != NULL) {
        memcpy(sp->coming, m->coming, bytes);
        if (peer_bits_count(sp->coming, s->pieces) > 0)
            sp->coming_at = now;
    }
    sp->answer_sent = sp->sent;
    sp->claim_broken = 0; /* its claims are taken at their word again */
    if (sp->answered == 0 || count > sp->count)
        sp->progress_at = now;
    sp->count = count;
    sp->answered = now;
    r->p->cache_host |= (m->role & PEER_ROLE_CACHE_HOST) != 0;
    count_holdings(s, sp, holdings_count(sp, now));
}

void node_swarm_take_piece(peer_node *n, peer_swarm *s, request *r, const peer_msg *m)
{
    peer_entry *p = r->p;
    if (p->in_flight > 0)
        p->in_flight--;
    if (m == NULL || m->piece_status != PEER_PIECE_OK) {
        /* No answer in time, or none that opened (a connection the peer
         * breaks, a reply nng refuses as too long): the peer gets fewer
         * requests, and none for a while after a few such in a row. */
        if (m == NULL) {
            if (r->result == NNG_ETIMEDOUT)
                atomic_fetch_add(&n->timeouts, 1);
            if (p->slow++ == 0)
                p->slow_since = mono_ms();
        }
        swarm_peer *sp = swarm_find(s, p);
        if (m != NULL && sp != NULL) {
            /* NOT_HELD: ask what it holds now. Refusing again and again
             * (whatever it claims to hold): its holdings stop counting for
             * a while, so that the origin or others send those pieces. */
            int broken = 0;
            if (m->piece_status == PEER_PIECE_NOT_HELD) {
                sp->asked = 0;
                /* Its claim broken: nothing it claims counts until it
                 * answers again, and it loses trust (broke_claim). Its
                 * other replies under the same claim are no news. */
                broken = sp_holds(s, sp, r->piece) || sp->claim_broken;
                if (!sp->claim_broken && broken) {
                    sp->claim_broken = 1;
                    count_holdings(s, sp, 0);
                    broke_claim(n, p);
                }
            }
            if (!broken && ++sp->refused >= REFUSALS) {
                sp->refused = 0;
                sp->quiet_until = mono_ms() + QUIET_MS;
                count_holdings(s, sp, 0);
            }
        }
        s->ops.lost(s->ops.ctx, r->piece);
        return;
    }
    p->slow = 0;
    if (p->banned_until > mono_ms()) {
        /* Asked before its ban, come since: dropped unread, the bytes of
         * a peer known to lie are not worth checking. */
        s->ops.lost(s->ops.ctx, r->piece);
        return;
    }
    swarm_peer *from = swarm_find(s, p);
    if (from != NULL)
        from->refused = 0;
    if (m->data_len != piece_len(s->size, s->piece_size, r->piece)) {
        strike(n, p); /* more or less than the piece */
        s->ops.lost(s->ops.ctx, r->piece);
        return;
    }
    int took = 0;
    int verdict = s->ops.piece(s->ops.ctx, r->piece, m->data, m->data_len, p->cache_host, p->serial,
                               r->reply, &took);
    if (took)
        r->reply = NULL; /* the callback holds it now */
    if (verdict == PEER_VERDICT_PENDING) {
        s->last_piece = mono_ms(); /* it came; its worth is told later */
        p->judging++;
        return;
    }
    if (verdict == PEER_VERDICT_LATER && from != NULL)
        from->contributed = 1;
    if (verdict == PEER_VERDICT_GOOD || verdict == PEER_VERDICT_LATER)
        s->last_piece = mono_ms();
    judge(n, p, verdict, m->data_len);
}

void peer_piece_release(void *kept)
{
    if (kept != NULL)
        nng_msg_free(kept);
}

/* What a piece from p (NULL: gone since) was worth. */
static void judge(peer_node *n, peer_entry *p, int verdict, size_t len)
{
    if (verdict == PEER_VERDICT_GOOD || verdict == PEER_VERDICT_LATER)
        atomic_fetch_add(&n->downloaded, len);
    else if (verdict == PEER_VERDICT_BAD && p != NULL)
        strike(n, p);
}

void peer_node_judge(peer_node *n, uint64_t sender, int verdict, size_t len)
{
    peer_entry *p = n->peers;
    while (p != NULL && p->serial != sender)
        p = p->next;
    if (p != NULL && p->judging > 0)
        p->judging--;
    judge(n, p, verdict, len);
}

/* ------------------------------------------------------------------ */
/* Scheduling                                                         */

static unsigned slots(const peer_node *n, const peer_entry *p)
{
    unsigned k = n->cfg.in_flight ? n->cfg.in_flight : 4;
    unsigned shift = p->slow < 2 ? p->slow : 2;
    k >>= shift;
    if (k == 0)
        k = 1;
    if (p->slow >= 3)
        k = 0; /* stalled: left alone for a while */
    /* Pieces awaiting their verdict count as in flight: a peer sending bad
     * pieces gets no more than k past the strike that bans it. */
    unsigned busy = p->in_flight + p->judging;
    return k > busy ? k - busy : 0;
}

static int sp_holds(const peer_swarm *s, const swarm_peer *sp, uint64_t i)
{
    (void)s;
    return sp->status == PEER_HAVE_ALL ||
           (sp->status == PEER_HAVE_SOME && peer_bit_get(sp->bits, i));
}

/* Rarest first: the piece this peer holds that fewest peers hold. */
static int pick_piece(peer_swarm *s, const swarm_peer *sp, uint64_t *out)
{
    uint64_t best = UINT64_MAX;
    unsigned best_h = UINT32_MAX;
    uint64_t scan = s->pieces < SCAN_PIECES ? s->pieces : SCAN_PIECES;
    for (uint64_t k = 0; k < scan; k++) {
        uint64_t i = (s->cursor + k) % s->pieces;
        if (!sp_holds(s, sp, i) || s->holders[i] >= best_h)
            continue;
        if (!s->ops.claim(s->ops.ctx, i, 0))
            continue;
        best = i;
        best_h = s->holders[i];
        if (best_h <= 1)
            break;
    }
    if (best == UINT64_MAX || !s->ops.claim(s->ops.ctx, best, 1)) {
        s->cursor = (s->cursor + scan) % s->pieces; /* the next look goes on from there */
        return 0;
    }
    s->cursor = (best + 1) % s->pieces;
    *out = best;
    return 1;
}

static void schedule_swarm(peer_node *n, peer_swarm *s, int64_t now)
{
    uint32_t timeout = n->cfg.piece_timeout_ms ? n->cfg.piece_timeout_ms : 8000;
    for (size_t i = 0; i < s->n_sp; i++) {
        swarm_peer *sp = &s->sp[i];
        peer_entry *p = sp->p;
        if (!usable(p, now)) {
            count_holdings(s, sp, 0); /* banned: what it claims counts for nothing */
            continue;
        }
        /* A stalled peer gets another chance after a while. */
        if (p->slow >= 3 && now - p->slow_since > SLOW_RESET_MS)
            p->slow = 0;
        count_holdings(s, sp, holdings_count(sp, now));
        if (!sp->in_set)
            continue;
        int64_t refresh = now - s->opened < FAST_PHASE_MS ? REFRESH_FAST_MS : REFRESH_MS;
        if (sp->candidate && !s->candidate && refresh < CANDIDATE_ASK_MS * (int64_t)s->n_known)
            refresh = CANDIDATE_ASK_MS * (int64_t)s->n_known; /* all ask them: 125 a second */
        /* After a change of members, a fresh answer settles it sooner. */
        int settle = s->members_at != 0 && now - s->members_at >= SETTLE_LAG_MS &&
                     now - s->members_at < SETTLE_MAX_MS &&
                     sp->sent < s->members_at + SETTLE_LAG_MS;
        if (!sp->asking && (now - sp->asked >= refresh || settle)) {
            if (node_request_send(n, p, s, PEER_MSG_HAVE_REQ, 0, HAVE_TIMEOUT_MS) != NULL) {
                atomic_fetch_add(&n->control_sent, 1);
                sp->asking = 1;
                sp->asked = now;
                sp->sent = now;
            }
        }
        if (!holdings_count(sp, now) || sp->status == PEER_HAVE_NONE)
            continue;
        for (unsigned k = slots(n, p); k > 0; k--) {
            uint64_t piece;
            if (!pick_piece(s, sp, &piece))
                break;
            if (node_request_send(n, p, s, PEER_MSG_PIECE_REQ, piece, timeout) == NULL) {
                s->ops.lost(s->ops.ctx, piece);
                break;
            }
            p->in_flight++;
        }
    }
}

/* A neighbour leaves: what it holds stops counting, and it is asked
 * afresh if it comes back. */
static void leave_set(peer_swarm *s, swarm_peer *sp)
{
    count_holdings(s, sp, 0);
    sp->in_set = 0;
    sp->answered = 0;
}

/* The neighbours: a bounded set of the peers, so that what an agent sends
 * and answers does not grow with the swarm. Always in it: configured peers,
 * cache hosts and the fetcher candidates (the first 2 * FETCHERS peers in
 * fetch order, which the origin's fetchers come from); the rest are peers
 * picked at random, one of which makes way for another every ROTATE_MS
 * (the one holding least), so that pieces spread through the swarm. */
static int pinned(const swarm_peer *sp)
{
    return sp->candidate || sp->p->configured || sp->p->cache_host;
}

static void refresh_set(peer_node *n, peer_swarm *s, int64_t now)
{
    /* The candidates: the 2 * FETCHERS smallest orders, this agent's too. */
    enum { CANDIDATES = 2 * FETCHERS };
    swarm_peer *best[CANDIDATES];
    size_t n_best = 0;
    size_t ahead = 0, known = 0; /* known peers before this agent, and in all */
    for (size_t i = 0; i < s->n_sp; i++) {
        swarm_peer *sp = &s->sp[i];
        sp->candidate = 0;
        if (!usable(sp->p, now) || !sp->p->has_id)
            continue;
        ahead += order_of(s, sp) < s->self_order;
        known++;
        size_t k = n_best < CANDIDATES ? n_best++ : CANDIDATES;
        if (k == CANDIDATES && best[CANDIDATES - 1]->order <= sp->order)
            continue;
        if (k == CANDIDATES)
            k--;
        while (k > 0 && best[k - 1]->order > sp->order) {
            best[k] = best[k - 1];
            k--;
        }
        best[k] = sp;
    }
    for (size_t i = 0; i < n_best; i++)
        best[i]->candidate = 1;
    s->n_known = known;
    s->candidate = ahead < CANDIDATES;

    size_t in = 0;
    for (size_t i = 0; i < s->n_sp; i++) {
        swarm_peer *sp = &s->sp[i];
        if (sp->in_set && !usable(sp->p, now))
            leave_set(s, sp);
        else if (!sp->in_set && pinned(sp) && usable(sp->p, now)) {
            sp->in_set = 1;
            sp->joined_set = now;
        }
        in += sp->in_set != 0;
    }
    if (in >= NEIGHBOURS && in < s->n_sp && now - s->rotated_at >= ROTATE_MS) {
        swarm_peer *worst = NULL;
        for (size_t i = 0; i < s->n_sp; i++) {
            swarm_peer *sp = &s->sp[i];
            if (!sp->in_set || pinned(sp) || now - sp->joined_set < ROTATE_MS ||
                sp->p->in_flight > 0)
                continue;
            if (worst == NULL || sp->count < worst->count)
                worst = sp;
        }
        if (worst != NULL) {
            leave_set(s, worst);
            in--;
        }
        s->rotated_at = now;
    }
    while (in < NEIGHBOURS) {
        /* One at random among the usable peers outside the set. */
        swarm_peer *pick = NULL;
        uint64_t seen = 0;
        for (size_t i = 0; i < s->n_sp; i++) {
            swarm_peer *sp = &s->sp[i];
            if (sp->in_set || !usable(sp->p, now))
                continue;
            if (random64() % ++seen == 0)
                pick = sp;
        }
        if (pick == NULL)
            break;
        pick->in_set = 1;
        pick->joined_set = now;
        in++;
    }
    for (size_t i = 0; i < s->n_sp; i++)
        if (s->sp[i].in_set)
            node_peers_want(n, s->sp[i].p, now);
}

void node_swarm_step(peer_node *n, peer_swarm *s, int64_t now)
{
    refresh_set(n, s, now);
    schedule_swarm(n, s, now);
    update_members(s, now);
}

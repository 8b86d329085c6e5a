/*
 * The content cache: verified content kept for serving to peers after its
 * job is gone, content-addressed, with a size limit, an age limit and LRU
 * eviction.
 *
 * Each entry is two files in <state>/cache (mode 0700, dopad's own):
 * <cid>.data, a copy of the content, and <cid>.meta, what it is checked
 * against: the signed manifest (format 1 bytes), or "sha256" + the 32-byte
 * hash + the size as 8 little-endian bytes. A copy is made on a helper
 * thread from the job's temporary file once the file is valid; the copy is
 * hashed as it is made and kept only if its whole-file SHA-256 is the
 * expected one, so a temporary file changed after its check never reaches
 * the cache. On start the entries are read back: a manifest must still be
 * signed by a trusted key and unexpired, the data must have its size, and
 * an entry known only by its SHA-256 is hashed again (in the background)
 * before it is offered; with a manifest every piece is hashed when served.
 * The meta file's modification time is the entry's last use.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_internal.h"

#define META_SHA256_MAGIC "sha256"
#define META_SHA256_BYTES (6 + 32 + 8)
#define TOUCH_EVERY_MS    60000

typedef struct cache_entry {
    uint8_t cid[VALIDATE_CONTENT_ID_BYTES];
    uint64_t size;
    int64_t last_used; /* wall ms */
    uint64_t uploaded; /* what the offer had sent at the last look */
    validate_manifest *manifest;
    struct cache_entry *next;
} cache_entry;

/* A copy to make (or made) on the helper thread. */
typedef struct cache_copy {
    work w;
    agent_engine *e;
    uint8_t cid[VALIDATE_CONTENT_ID_BYTES];
    int fd; /* the source, ours */
    uint64_t size;
    uint8_t sha256[32];
    uint8_t *meta;
    size_t meta_len;
    int verify_only;   /* an entry read back at start: hash it, copy nothing */
    int64_t last_used; /* verify_only: the entry's */
    int ok;
    char why[256];
    struct cache_copy *next;
} cache_copy;

typedef struct agent_cache {
    char *dir;
    uint64_t limit, used, reserved;
    int64_t max_age_ms;
    cache_entry *entries;
    cache_copy *queue;   /* waiting */
    cache_copy *running; /* handed to the copier, until its result is taken */
    work_queue copier;
    atomic_int cancel; /* the copier stops early (closing) */
    int64_t last_sweep;
} agent_cache;

static void hexname(const agent_cache *c, const uint8_t cid[32], const char *ext, char *out,
                    size_t len)
{
    char hex[65];
    validate_hex(cid, 32, hex);
    snprintf(out, len, "%s/%s.%s", c->dir, hex, ext);
}

static void copy_free(cache_copy *k)
{
    if (k == NULL)
        return;
    if (k->fd >= 0)
        close(k->fd);
    free(k->meta);
    free(k);
}

static void entry_free(cache_entry *en)
{
    validate_manifest_free(en->manifest);
    free(en);
}

static void offer_entry(agent_engine *e, cache_entry *en)
{
    char path[4300];
    hexname(e->cache, en->cid, "data", path, sizeof path);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return;
    peer_offer_info info = {
        .fd = fd,
        .size = en->size,
        .piece_size =
            en->manifest != NULL ? en->manifest->piece_size : validate_piece_size_for(en->size),
        .piece_hashes = en->manifest != NULL ? en->manifest->piece_hashes : NULL,
        .stable = 1, /* dopad's own copy, hashed as it was made */
    };
    if (info.piece_size != 0 && peer_offer(e->peers, en->cid, &info) == PEER_OK)
        en->uploaded = peer_offer_uploaded(e->peers, en->cid);
    close(fd);
}

static void remove_entry(agent_engine *e, cache_entry *en, const char *why)
{
    agent_cache *c = e->cache;
    char path[4300];
    char hex[65];
    validate_hex(en->cid, 32, hex);
    agent_log("info", "cache: removing %.16s (%llu bytes): %s", hex, (unsigned long long)en->size,
              why);
    peer_withdraw(e->peers, en->cid);
    hexname(c, en->cid, "meta", path, sizeof path);
    unlink(path);
    hexname(c, en->cid, "data", path, sizeof path);
    unlink(path);
    c->used -= en->size < c->used ? en->size : c->used;
    for (cache_entry **pp = &c->entries; *pp != NULL; pp = &(*pp)->next)
        if (*pp == en) {
            *pp = en->next;
            break;
        }
    entry_free(en);
}

/* Makes room for `need` bytes by removing the least recently used. */
static int make_room(agent_engine *e, uint64_t need)
{
    agent_cache *c = e->cache;
    if (need > c->limit)
        return -1;
    while (c->used + c->reserved + need > c->limit) {
        cache_entry *oldest = NULL;
        for (cache_entry *en = c->entries; en != NULL; en = en->next)
            if (oldest == NULL || en->last_used < oldest->last_used)
                oldest = en;
        if (oldest == NULL)
            return -1; /* the rest is being copied */
        remove_entry(e, oldest, "least recently used, the cache is full");
    }
    return 0;
}

static cache_entry *find_entry(agent_cache *c, const uint8_t cid[32])
{
    for (cache_entry *en = c->entries; en != NULL; en = en->next)
        if (memcmp(en->cid, cid, 32) == 0)
            return en;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* The helper thread                                                  */

static int write_file(const char *path, const void *buf, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -1;
    int ok = engine_write_all(fd, buf, len, 0) == 0 && fsync(fd) == 0;
    return close(fd) == 0 && ok ? 0 : -1;
}

static void copy_content(agent_cache *c, cache_copy *k)
{
    char part[4300], data[4300], meta[4300], meta_part[4300];
    hexname(c, k->cid, "part", part, sizeof part);
    hexname(c, k->cid, "data", data, sizeof data);
    hexname(c, k->cid, "meta", meta, sizeof meta);
    hexname(c, k->cid, "meta.part", meta_part, sizeof meta_part);
    int out = k->verify_only
                  ? -2
                  : open(part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (out < 0) {
        snprintf(k->why, sizeof k->why, "%.200s: %s", part, strerror(errno));
        return;
    }
    enum { CHUNK = 1 << 20 };
    uint8_t *buf = malloc(CHUNK);
    validate_sha256_state st;
    validate_sha256_init(&st);
    uint64_t off = 0;
    int err = buf == NULL ? ENOMEM : 0;
    while (err == 0 && off < k->size) {
        if (atomic_load(&c->cancel)) {
            err = ECANCELED;
            break;
        }
        size_t want = k->size - off < CHUNK ? (size_t)(k->size - off) : CHUNK;
        ssize_t n = validate_pread_full(k->fd, buf, want, off);
        if (n <= 0) {
            err = n < 0 ? errno : EIO;
            break;
        }
        validate_sha256_update(&st, buf, (size_t)n);
        if (out >= 0)
            err = engine_write_all(out, buf, (size_t)n, off);
        off += (uint64_t)n;
    }
    free(buf);
    uint8_t got[32];
    validate_sha256_final(&st, got);
    if (k->verify_only) {
        if (err != 0)
            snprintf(k->why, sizeof k->why, "reading: %s", strerror(err));
        else if (sodium_memcmp(got, k->sha256, 32) != 0)
            snprintf(k->why, sizeof k->why, "its data no longer has its SHA-256");
        else
            k->ok = 1;
        return;
    }
    if (err == 0 && fsync(out) != 0)
        err = errno;
    if (close(out) != 0 && err == 0)
        err = errno;
    if (err != 0) {
        snprintf(k->why, sizeof k->why, "copying: %s", strerror(err));
    } else if (sodium_memcmp(got, k->sha256, 32) != 0) {
        snprintf(k->why, sizeof k->why, "the file changed after its check");
    } else if (rename(part, data) != 0 || write_file(meta_part, k->meta, k->meta_len) != 0 ||
               rename(meta_part, meta) != 0) {
        snprintf(k->why, sizeof k->why, "storing: %s", strerror(errno));
    } else {
        int dfd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
        k->ok = 1;
        return;
    }
    unlink(part);
    unlink(meta_part);
}

static void copy_run(work *w)
{
    cache_copy *k = (cache_copy *)w;
    copy_content(k->e->cache, k);
}

static void copy_done(work *w, int status);

static void start_next(agent_engine *e)
{
    agent_cache *c = e->cache;
    if (c->running != NULL || c->queue == NULL)
        return;
    cache_copy *k = c->queue;
    c->queue = k->next;
    k->next = NULL;
    c->running = k;
    k->w = (work){.run = copy_run, .done = copy_done};
    k->e = e;
    work_submit(&c->copier, &k->w);
}

/* ------------------------------------------------------------------ */
/* The owner's side                                                   */

void cache_add(agent_engine *e, agent_file *f)
{
    agent_cache *c = e->cache;
    if (c == NULL || !f->peer.has_cid || f->fd < 0 || find_entry(c, f->peer.cid) != NULL)
        return;
    for (cache_copy *k = c->queue; k != NULL; k = k->next)
        if (memcmp(k->cid, f->peer.cid, 32) == 0)
            return;
    if (c->running != NULL && memcmp(c->running->cid, f->peer.cid, 32) == 0)
        return;
    if (make_room(e, f->size) != 0)
        return; /* larger than the cache, or everything else is being copied */
    cache_copy *k = calloc(1, sizeof *k);
    if (k == NULL)
        return;
    memcpy(k->cid, f->peer.cid, 32);
    k->size = f->size;
    k->fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 3);
    if (f->manifest != NULL) {
        memcpy(k->sha256, f->manifest->sha256, 32);
        k->meta = malloc(f->manifest_len);
        k->meta_len = f->manifest_len;
        if (k->meta != NULL)
            memcpy(k->meta, f->manifest_bytes, f->manifest_len);
    } else {
        memcpy(k->sha256, f->sha256, 32);
        k->meta = malloc(META_SHA256_BYTES);
        k->meta_len = META_SHA256_BYTES;
        if (k->meta != NULL) {
            memcpy(k->meta, META_SHA256_MAGIC, 6);
            memcpy(k->meta + 6, f->sha256, 32);
            for (int i = 0; i < 8; i++)
                k->meta[38 + i] = (uint8_t)(f->size >> (8 * i));
        }
    }
    if (k->fd < 0 || k->meta == NULL) {
        copy_free(k);
        return;
    }
    c->reserved += k->size;
    k->next = c->queue;
    c->queue = k;
    start_next(e);
}

/* Reads one entry back; removes it when it no longer holds. */
static void load_entry(agent_engine *e, const char *hex)
{
    agent_cache *c = e->cache;
    uint8_t cid[32];
    if (validate_unhex(hex, cid, 32) != VALIDATE_OK)
        return;
    char meta[4300], data[4300];
    hexname(c, cid, "meta", meta, sizeof meta);
    hexname(c, cid, "data", data, sizeof data);
    struct stat ms = {0}, ds;
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *why = NULL;
    validate_manifest *m = NULL;
    uint64_t size = 0;
    int fd = open(meta, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 || fstat(fd, &ms) != 0 || !S_ISREG(ms.st_mode) ||
        ms.st_size > (off_t)VALIDATE_MANIFEST_MAX_BYTES) {
        why = "unreadable description";
    } else {
        len = (size_t)ms.st_size;
        buf = malloc(len ? len : 1);
        if (buf == NULL || read(fd, buf, len) != (ssize_t)len)
            why = "unreadable description";
    }
    if (fd >= 0)
        close(fd);
    if (why == NULL && len == META_SHA256_BYTES && memcmp(buf, META_SHA256_MAGIC, 6) == 0) {
        uint8_t want[32];
        for (int i = 0; i < 8; i++)
            size |= (uint64_t)buf[38 + i] << (8 * i);
        validate_content_id_from_sha256(buf + 6, size, want);
        if (sodium_memcmp(want, cid, 32) != 0)
            why = "its name is not its content id";
    } else if (why == NULL) {
        if (validate_manifest_open(buf, len, e->keys, e->n_keys, (uint64_t)(engine_now(e) / 1000),
                                   &m, NULL) != VALIDATE_OK)
            why = "its manifest is no longer trusted or has expired";
        else if (memcmp(m->content_id, cid, 32) != 0)
            why = "its name is not its content id";
        else
            size = m->file_size;
    }
    if (why == NULL &&
        (stat(data, &ds) != 0 || !S_ISREG(ds.st_mode) || (uint64_t)ds.st_size != size))
        why = "its data is missing or has the wrong size";
    if (why == NULL && m == NULL) {
        /* Known only by its SHA-256: hashed again before it is offered. */
        cache_copy *k = calloc(1, sizeof *k);
        int dfd = open(data, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (k == NULL || dfd < 0 || (k->meta = malloc(META_SHA256_BYTES)) == NULL) {
            if (dfd >= 0)
                close(dfd);
            free(k);
            free(buf);
            return;
        }
        memcpy(k->cid, cid, 32);
        k->fd = dfd;
        k->size = size;
        k->verify_only = 1;
        memcpy(k->sha256, buf + 6, 32);
        memcpy(k->meta, buf, META_SHA256_BYTES);
        k->meta_len = META_SHA256_BYTES;
        k->last_used = (int64_t)ms.st_mtim.tv_sec * 1000 + ms.st_mtim.tv_nsec / 1000000;
        free(buf);
        c->reserved += size;
        k->next = c->queue;
        c->queue = k;
        return;
    }
    free(buf);
    cache_entry *en = calloc(1, sizeof *en);
    if (en == NULL) {
        validate_manifest_free(m);
        return;
    }
    memcpy(en->cid, cid, 32);
    en->size = size;
    en->manifest = m;
    en->last_used = (int64_t)ms.st_mtim.tv_sec * 1000 + ms.st_mtim.tv_nsec / 1000000;
    en->next = c->entries;
    c->entries = en;
    c->used += size;
    if (why != NULL)
        remove_entry(e, en, why);
    else
        offer_entry(e, en);
}

int cache_open(agent_engine *e, validate_error *why)
{
    if (e->peers == NULL || e->cfg.cache_bytes == 0)
        return DOPA_OK;
    agent_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    size_t n = strlen(e->state_dir) + 8;
    c->dir = malloc(n);
    if (c->dir == NULL || work_queue_init(&c->copier, 1, engine_wake, e) != 0) {
        free(c->dir);
        free(c);
        return validate_error_set(why, DOPA_ENOMEM, "out of memory");
    }
    snprintf(c->dir, n, "%s/cache", e->state_dir);
    c->limit = e->cfg.cache_bytes;
    c->max_age_ms = e->cfg.cache_age_ms ? (int64_t)e->cfg.cache_age_ms : 14ll * 24 * 3600 * 1000;
    e->cache = c;
    if (mkdir(c->dir, 0700) != 0 && errno != EEXIST) {
        validate_error_set(why, DOPA_EIO, "%s: %s", c->dir, strerror(errno));
        return DOPA_EIO;
    }
    DIR *d = opendir(c->dir);
    if (d == NULL) {
        validate_error_set(why, DOPA_EIO, "%s: %s", c->dir, strerror(errno));
        return DOPA_EIO;
    }
    struct dirent *de;
    char stale[64][80];
    size_t n_stale = 0;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len == 64 + 5 && strcmp(de->d_name + 64, ".meta") == 0) {
            char hex[65];
            memcpy(hex, de->d_name, 64);
            hex[64] = '\0';
            load_entry(e, hex);
        } else if ((len > 5 && strcmp(de->d_name + len - 5, ".part") == 0) && n_stale < 64) {
            snprintf(stale[n_stale++], sizeof stale[0], "%.79s", de->d_name);
        } else if (len == 64 + 5 && strcmp(de->d_name + 64, ".data") == 0 && n_stale < 64) {
            /* Data whose description never got its name (a kill between
             * the two renames) is of no use. */
            char meta[4400];
            struct stat st;
            snprintf(meta, sizeof meta, "%.4200s/%.64s.meta", c->dir, de->d_name);
            if (stat(meta, &st) != 0)
                snprintf(stale[n_stale++], sizeof stale[0], "%.79s", de->d_name);
        }
    }
    closedir(d);
    /* Copies a kill interrupted. */
    for (size_t i = 0; i < n_stale; i++) {
        char path[4400];
        snprintf(path, sizeof path, "%.4200s/%.79s", c->dir, stale[i]);
        unlink(path);
    }
    make_room(e, 0);
    start_next(e); /* the entries to hash again */
    return DOPA_OK;
}

/* A copy made, or a stored entry hashed again: the entry is kept, or
 * not. When the cache closes, it is simply dropped. */
static void copy_done(work *w, int status)
{
    cache_copy *done = (cache_copy *)w;
    agent_engine *e = done->e;
    agent_cache *c = e->cache;
    c->running = NULL;
    if (status != WORK_RAN) {
        copy_free(done);
        return;
    }
    c->reserved -= done->size;
    char hex[65];
    validate_hex(done->cid, 32, hex);
    if (!done->ok) {
        agent_log("warning", "cache: not keeping %.16s: %s", hex, done->why);
        if (done->verify_only) {
            char path[4300];
            hexname(c, done->cid, "meta", path, sizeof path);
            unlink(path);
            hexname(c, done->cid, "data", path, sizeof path);
            unlink(path);
        }
    } else {
        cache_entry *en = calloc(1, sizeof *en);
        if (en != NULL && done->meta_len != META_SHA256_BYTES &&
            validate_manifest_parse(done->meta, done->meta_len, &en->manifest, NULL) !=
                VALIDATE_OK) {
            free(en);
            en = NULL;
        }
        if (en != NULL) {
            memcpy(en->cid, done->cid, 32);
            en->size = done->size;
            en->last_used = done->verify_only ? done->last_used : engine_now(e);
            en->next = c->entries;
            c->entries = en;
            c->used += en->size;
            offer_entry(e, en); /* replaces the job's own offer */
            for (size_t i = 0; i < e->n_jobs; i++)
                for (size_t k = 0; k < e->jobs[i]->n_files; k++) {
                    agent_file *f = e->jobs[i]->files[k];
                    if (f->peer.has_cid && memcmp(f->peer.cid, en->cid, 32) == 0)
                        f->peer.offered = 0; /* the cache's now */
                }
        }
    }
    copy_free(done);
    start_next(e);
}

void cache_step(agent_engine *e)
{
    agent_cache *c = e->cache;
    if (c == NULL)
        return;
    work_reap(&c->copier);
    int64_t now = engine_now(e);
    if (now - c->last_sweep < 1000)
        return;
    c->last_sweep = now;
    for (cache_entry *en = c->entries, *next; en != NULL; en = next) {
        next = en->next;
        uint64_t up = peer_offer_uploaded(e->peers, en->cid);
        if (up != en->uploaded && now - en->last_used > TOUCH_EVERY_MS) {
            /* Served since the last look: recently used. */
            en->uploaded = up;
            en->last_used = now;
            char meta[4300];
            hexname(c, en->cid, "meta", meta, sizeof meta);
            utimensat(AT_FDCWD, meta, NULL, AT_SYMLINK_NOFOLLOW);
        }
        if (now - en->last_used > c->max_age_ms)
            remove_entry(e, en, "older than the cache's age limit");
    }
}

int cache_has(agent_engine *e, const uint8_t cid[VALIDATE_CONTENT_ID_BYTES])
{
    return e->cache != NULL && find_entry(e->cache, cid) != NULL;
}

void cache_stats(agent_engine *e, uint64_t *entries, uint64_t *bytes, uint64_t *limit)
{
    *entries = *bytes = *limit = 0;
    if (e->cache == NULL)
        return;
    for (cache_entry *en = e->cache->entries; en != NULL; en = en->next)
        (*entries)++;
    *bytes = e->cache->used;
    *limit = e->cache->limit;
}

int cache_set_limits(agent_engine *e, uint64_t bytes, uint64_t age_ms, validate_error *why)
{
    e->cfg.cache_bytes = bytes;
    e->cfg.cache_age_ms = age_ms;
    agent_cache *c = e->cache;
    if (c == NULL) {
        /* No cache yet (it was 0): one now, with what an earlier one left. */
        int err = cache_open(e, why);
        if (err != DOPA_OK)
            cache_close(e);
        return err;
    }
    c->limit = bytes;
    c->max_age_ms = age_ms ? (int64_t)age_ms : 14ll * 24 * 3600 * 1000;
    make_room(e, 0);   /* a smaller limit: least recently used out first */
    c->last_sweep = 0; /* a shorter age: the next cache_step sweeps */
    return DOPA_OK;
}

void cache_close(agent_engine *e)
{
    agent_cache *c = e->cache;
    if (c == NULL)
        return;
    atomic_store(&c->cancel, 1);
    work_queue_destroy(&c->copier); /* the copy it makes is dropped */
    for (cache_copy *k = c->queue, *next; k != NULL; k = next) {
        next = k->next;
        copy_free(k);
    }
    for (cache_entry *en = c->entries, *next; en != NULL; en = next) {
        next = en->next;
        entry_free(en);
    }
    free(c->dir);
    free(c);
    e->cache = NULL;
}

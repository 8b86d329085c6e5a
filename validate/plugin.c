/*
 * The validator plugin loader: dlopen of plugins that follow
 * dopa_validator.h, their safety checks, and the calls into them. Plugins
 * run in the calling process; isolating them (a child process with a time
 * limit) is the caller's choice, made on top of this file.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "validate.h"

#define CONFIG_MAX (64u * 1024u)
#define REASON_MAX 256

struct validate_plugin {
    void *handle;
    const struct dopa_validator *v;
    void *state;
    char *path;
    char *name;
};

struct validate_plugin_set {
    size_t count;
    validate_plugin **plugins;
};

/* The smallest struct a plugin of ABI version 1 may hand us. */
#define MIN_VALIDATOR_SIZE (offsetof(struct dopa_validator, fini) + sizeof(void (*)(void *)))

/* A file dopad executes or trusts must be changeable only by root or by the
 * user dopad runs as. */
static int check_owner(const char *path, const struct stat *st, validate_error *why)
{
    if (st->st_uid != 0 && st->st_uid != geteuid())
        return validate_error_set(why, VALIDATE_EPLUGIN_UNSAFE,
                                  "%s: owned by uid %u, neither root nor this user", path,
                                  (unsigned)st->st_uid);
    if ((st->st_mode & (S_IWGRP | S_IWOTH)) != 0)
        return validate_error_set(why, VALIDATE_EPLUGIN_UNSAFE,
                                  "%s: mode %04o lets other users change it", path,
                                  (unsigned)st->st_mode & 07777);
    return VALIDATE_OK;
}

/* check_owner for a resolved file and each directory up to "/". A
 * directory others may write is accepted only with the sticky bit (as /tmp):
 * then nobody else can rename or remove what is ours inside it. */
static int check_chain(const char *real, const struct stat *file, validate_error *why)
{
    int err = check_owner(real, file, why);
    if (err != VALIDATE_OK)
        return err;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", real);
    for (;;) {
        char *slash = strrchr(dir, '/');
        if (slash == NULL)
            return VALIDATE_OK;
        if (slash == dir)
            slash[1] = '\0'; /* the root itself */
        else
            *slash = '\0';
        struct stat st;
        if (stat(dir, &st) != 0)
            return validate_error_set(why, VALIDATE_EPLUGIN_OPEN, "%s: %s", dir, strerror(errno));
        if ((st.st_mode & S_ISVTX) != 0 && (st.st_uid == 0 || st.st_uid == geteuid()))
            st.st_mode &= (mode_t) ~(S_IWGRP | S_IWOTH);
        err = check_owner(dir, &st, why);
        if (err != VALIDATE_OK)
            return err;
        if (strcmp(dir, "/") == 0)
            return VALIDATE_OK;
    }
}

int validate_plugin_open(const char *path, const char *config, validate_plugin **out,
                         validate_error *why)
{
    int err;
    struct stat st;
    char real[PATH_MAX];
    validate_plugin *p = NULL;

    if (path == NULL || out == NULL || strchr(path, '/') == NULL)
        return validate_error_set(why, VALIDATE_EINVAL, "plugin path must contain a '/' (got %s)",
                                  path ? path : "nothing");
    /* Judge the resolved file and every directory above it: when only
     * trusted users can change any of them, nobody else can swap the file
     * between this check and dlopen. */
    if (realpath(path, real) == NULL)
        return validate_error_set(why, VALIDATE_EPLUGIN_OPEN, "%s: %s", path, strerror(errno));
    if (stat(real, &st) != 0)
        return validate_error_set(why, VALIDATE_EPLUGIN_OPEN, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return validate_error_set(why, VALIDATE_EPLUGIN_OPEN, "%s: not a regular file", path);
    err = check_chain(real, &st, why);
    if (err != VALIDATE_OK)
        return err;

    p = calloc(1, sizeof *p);
    if (p == NULL || (p->path = strdup(path)) == NULL) {
        err = validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
        goto fail;
    }
    p->handle = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (p->handle == NULL) {
        const char *e = dlerror();
        err = validate_error_set(why, VALIDATE_EPLUGIN_OPEN, "%s", e ? e : path);
        goto fail;
    }
    /* dlsym returns a data pointer; POSIX guarantees it converts to a
     * function pointer, which C11 alone does not, hence the memcpy. */
    void *sym = dlsym(p->handle, DOPA_VALIDATOR_ENTRY_NAME);
    dopa_validator_entry_fn entry;
    if (sym == NULL) {
        err = validate_error_set(why, VALIDATE_EPLUGIN_SYMBOL,
                                 "%s: no symbol " DOPA_VALIDATOR_ENTRY_NAME, path);
        goto fail;
    }
    memcpy(&entry, &sym, sizeof entry);
    p->v = entry();
    if (p->v == NULL) {
        err = validate_error_set(why, VALIDATE_EPLUGIN_ABI,
                                 "%s: " DOPA_VALIDATOR_ENTRY_NAME " returned NULL", path);
        goto fail;
    }
    if (p->v->abi_version != DOPA_VALIDATOR_ABI_VERSION) {
        err = validate_error_set(why, VALIDATE_EPLUGIN_ABI,
                                 "%s: built for ABI version %u, this dopa speaks version %u", path,
                                 p->v->abi_version, DOPA_VALIDATOR_ABI_VERSION);
        goto fail;
    }
    if (p->v->struct_size < MIN_VALIDATOR_SIZE || p->v->validate == NULL) {
        err = validate_error_set(why, VALIDATE_EPLUGIN_ABI,
                                 "%s: incomplete struct dopa_validator (size %u, validate %s)",
                                 path, p->v->struct_size, p->v->validate ? "set" : "missing");
        goto fail;
    }
    const char *base = strrchr(path, '/') + 1;
    p->name = strdup(p->v->name != NULL && p->v->name[0] != '\0' ? p->v->name : base);
    if (p->name == NULL) {
        err = validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
        goto fail;
    }
    if (p->v->init != NULL && p->v->init(&p->state, config) != 0) {
        err = validate_error_set(why, VALIDATE_EPLUGIN_INIT, "%s: plugin %s refused to start", path,
                                 p->name);
        p->v = NULL; /* fini is not owed after a failed init */
        goto fail;
    }
    *out = p;
    return VALIDATE_OK;

fail:
    if (p != NULL) {
        if (p->handle != NULL)
            dlclose(p->handle);
        free(p->name);
        free(p->path);
        free(p);
    }
    return err;
}

const char *validate_plugin_name(const validate_plugin *p)
{
    return p->name;
}

const char *validate_plugin_path(const validate_plugin *p)
{
    return p->path;
}

int validate_plugin_check(validate_plugin *p, const struct dopa_validator_file *file,
                          validate_error *why)
{
    if (p == NULL || file == NULL || file->struct_size < sizeof *file)
        return validate_error_set(why, VALIDATE_EINVAL, "no file to validate");
    char reason[REASON_MAX] = "";
    int verdict = p->v->validate(p->state, file, reason, sizeof reason);
    reason[sizeof reason - 1] = '\0';
    switch (verdict) {
    case DOPA_VALIDATOR_VALID:
        return VALIDATE_OK;
    case DOPA_VALIDATOR_INVALID:
        return validate_error_set(why, VALIDATE_EPLUGIN_REJECTED, "%s: %s", p->name,
                                  reason[0] ? reason : "content rejected");
    default:
        return validate_error_set(why, VALIDATE_EPLUGIN_FAILED, "%s: %s (verdict %d)", p->name,
                                  reason[0] ? reason : "could not decide", verdict);
    }
}

void validate_plugin_close(validate_plugin *p)
{
    if (p == NULL)
        return;
    if (p->v != NULL && p->v->fini != NULL)
        p->v->fini(p->state);
    dlclose(p->handle);
    free(p->name);
    free(p->path);
    free(p);
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n > k && strcmp(s + n - k, suffix) == 0;
}

static int compare_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads "<stem>.conf" beside a plugin: *config stays NULL when there is none. */
static int read_sidecar(const char *dir, const char *so_name, char **config, validate_error *why)
{
    char path[4096];
    size_t stem = strlen(so_name) - 3;
    *config = NULL;
    if (snprintf(path, sizeof path, "%s/%.*s.conf", dir, (int)stem, so_name) >= (int)sizeof path)
        return validate_error_set(why, VALIDATE_EINVAL, "%s: path too long", dir);
    struct stat st;
    if (lstat(path, &st) != 0 && errno == ENOENT)
        return VALIDATE_OK;
    uint8_t *buf = NULL;
    size_t len = 0;
    unsigned mode = 0, uid = 0;
    int err = validate_read_file(path, CONFIG_MAX, &buf, &len, &mode, &uid, why);
    if (err != VALIDATE_OK)
        return err;
    st.st_mode = mode;
    st.st_uid = uid;
    err = check_owner(path, &st, why);
    if (err != VALIDATE_OK) {
        free(buf);
        return err;
    }
    *config = (char *)buf;
    return VALIDATE_OK;
}

int validate_plugin_set_load(const char *dir, validate_plugin_set **out, validate_error *why)
{
    int err = VALIDATE_OK;
    char **names = NULL;
    size_t n_names = 0, cap = 0;
    validate_plugin_set *set = calloc(1, sizeof *set);
    if (set == NULL)
        return validate_error_set(why, VALIDATE_ENOMEM, "out of memory");

    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT) {
            *out = set;
            return VALIDATE_OK;
        }
        free(set);
        return validate_error_set(why, VALIDATE_EPLUGIN_OPEN, "%s: %s", dir, strerror(errno));
    }
    struct stat st;
    if (fstat(dirfd(d), &st) != 0) {
        err = validate_error_set(why, VALIDATE_EIO, "%s: %s", dir, strerror(errno));
        goto done;
    }
    err = check_owner(dir, &st, why);
    if (err != VALIDATE_OK)
        goto done;

    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !has_suffix(e->d_name, ".so"))
            continue;
        if (n_names == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            char **grown = realloc(names, ncap * sizeof *names);
            if (grown == NULL) {
                err = validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
                goto done;
            }
            names = grown;
            cap = ncap;
        }
        if ((names[n_names] = strdup(e->d_name)) == NULL) {
            err = validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
            goto done;
        }
        n_names++;
    }
    if (n_names == 0)
        goto done;
    qsort(names, n_names, sizeof *names, compare_names);

    set->plugins = calloc(n_names, sizeof *set->plugins);
    if (set->plugins == NULL) {
        err = validate_error_set(why, VALIDATE_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n_names; i++) {
        char path[4096];
        char *config = NULL;
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) {
            err = validate_error_set(why, VALIDATE_EINVAL, "%s: path too long", dir);
            goto done;
        }
        err = read_sidecar(dir, names[i], &config, why);
        if (err == VALIDATE_OK)
            err = validate_plugin_open(path, config, &set->plugins[set->count], why);
        free(config);
        if (err != VALIDATE_OK)
            goto done;
        set->count++;
    }

done:
    closedir(d);
    for (size_t i = 0; i < n_names; i++)
        free(names[i]);
    free(names);
    if (err != VALIDATE_OK) {
        validate_plugin_set_free(set);
        return err;
    }
    *out = set;
    return VALIDATE_OK;
}

size_t validate_plugin_set_count(const validate_plugin_set *set)
{
    return set->count;
}

validate_plugin *validate_plugin_set_get(const validate_plugin_set *set, size_t i)
{
    return i < set->count ? set->plugins[i] : NULL;
}

int validate_plugin_set_check(validate_plugin_set *set, const struct dopa_validator_file *file,
                              validate_error *why)
{
    for (size_t i = 0; i < set->count; i++) {
        int err = validate_plugin_check(set->plugins[i], file, why);
        if (err != VALIDATE_OK)
            return err;
    }
    return VALIDATE_OK;
}

void validate_plugin_set_free(validate_plugin_set *set)
{
    if (set == NULL)
        return;
    for (size_t i = set->count; i > 0; i--)
        validate_plugin_close(set->plugins[i - 1]);
    free(set->plugins);
    free(set);
}

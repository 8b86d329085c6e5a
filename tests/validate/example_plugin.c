/*
 * An example validator plugin: accepts a file only if it starts with the
 * bytes given as "prefix=..." in its configuration (the "<name>.conf" file
 * beside it). Without a configuration it refuses to load.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dopa_validator.h"

struct state {
    char prefix[256];
    size_t len;
};

static int init(void **out, const char *config)
{
    if (config == NULL || strncmp(config, "prefix=", 7) != 0)
        return -1;
    struct state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -1;
    size_t n = strcspn(config + 7, "\n");
    if (n >= sizeof s->prefix || n == 0) {
        free(s);
        return -1;
    }
    memcpy(s->prefix, config + 7, n);
    s->len = n;
    *out = s;
    return 0;
}

static int validate(void *state, const struct dopa_validator_file *file, char *reason,
                    size_t reason_size)
{
    struct state *s = state;
    char head[256];
    if (file->size < s->len) {
        snprintf(reason, reason_size, "%s is shorter than the prefix", file->path);
        return DOPA_VALIDATOR_INVALID;
    }
    ssize_t n = pread(file->fd, head, s->len, 0);
    if (n != (ssize_t)s->len) {
        snprintf(reason, reason_size, "cannot read %s", file->path);
        return DOPA_VALIDATOR_ERROR;
    }
    if (memcmp(head, s->prefix, s->len) != 0) {
        snprintf(reason, reason_size, "%s does not start with \"%s\"", file->local_name, s->prefix);
        return DOPA_VALIDATOR_INVALID;
    }
    return DOPA_VALIDATOR_VALID;
}

static void fini(void *state)
{
    free(state);
}

static const struct dopa_validator example = {
    .abi_version = DOPA_VALIDATOR_ABI_VERSION,
    .struct_size = sizeof(struct dopa_validator),
    .name = "example-prefix",
    .version = "1.0",
    .init = init,
    .validate = validate,
    .fini = fini,
};

const struct dopa_validator *dopa_validator_entry(void)
{
    return &example;
}

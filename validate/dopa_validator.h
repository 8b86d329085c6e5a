/*
 * dopa_validator.h: the ABI of dopa validator plugins.
 *
 * A validator plugin is a shared object that dopad loads from its plugin
 * directory. After a file of a job has been downloaded and every piece has
 * passed its hash check, dopad asks each plugin whether the content may be
 * used; the job completes only if every plugin says DOPA_VALIDATOR_VALID.
 * This header is the whole contract between dopad and a plugin; it is public
 * and stable.
 *
 * A plugin exports one function, named by DOPA_VALIDATOR_ENTRY:
 *
 *     #include <dopa_validator.h>
 *
 *     static int check(void *state, const struct dopa_validator_file *f,
 *                      char *reason, size_t reason_size) { ... }
 *
 *     static const struct dopa_validator me = {
 *         .abi_version = DOPA_VALIDATOR_ABI_VERSION,
 *         .struct_size = sizeof(struct dopa_validator),
 *         .name = "example",
 *         .validate = check,
 *     };
 *
 *     const struct dopa_validator *dopa_validator_entry(void) { return &me; }
 *
 * Rules:
 *  - abi_version must equal the DOPA_VALIDATOR_ABI_VERSION of the dopad that
 *    loads the plugin; later minor additions append fields to the structs and
 *    are detected through struct_size, so a plugin built against an older
 *    header keeps working.
 *  - validate() reads the file through `fd` (use pread: the offset is shared)
 *    or `path`; it must not write to either. It returns DOPA_VALIDATOR_VALID,
 *    DOPA_VALIDATOR_INVALID, or DOPA_VALIDATOR_ERROR when it cannot decide;
 *    any other value counts as an error. It may put a NUL-terminated reason
 *    (at most reason_size bytes) into `reason`, shown to the job's owner.
 *  - Calls for one plugin are never concurrent; state from init() is passed
 *    back unchanged. A plugin must not keep pointers from `file` after
 *    validate() returns.
 *  - dopad may run plugins in a separate process with a time limit; a
 *    plugin that crashes or hangs fails the validation.
 */
#ifndef DOPA_VALIDATOR_H
#define DOPA_VALIDATOR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DOPA_VALIDATOR_ABI_VERSION 1
#define DOPA_VALIDATOR_ENTRY       dopa_validator_entry
#define DOPA_VALIDATOR_ENTRY_NAME  "dopa_validator_entry"

enum dopa_validator_verdict {
    DOPA_VALIDATOR_VALID = 1,
    DOPA_VALIDATOR_INVALID = 2,
    DOPA_VALIDATOR_ERROR = 3,
};

/* What dopad tells a plugin about the file it should judge. */
struct dopa_validator_file {
    uint32_t struct_size;      /* sizeof this struct as dopad knows it */
    int fd;                    /* read-only descriptor on the content */
    const char *path;          /* the temporary file holding the content */
    const char *remote_url;    /* where the job fetched it from */
    const char *local_name;    /* where it will appear once the job completes */
    uint64_t size;             /* bytes in the file */
    const uint8_t *sha256;     /* 32 bytes, whole-file SHA-256 (dopad checked it) */
    const uint8_t *content_id; /* 32 bytes, or NULL when the job has no manifest */
};

struct dopa_validator {
    uint32_t abi_version; /* DOPA_VALIDATOR_ABI_VERSION */
    uint32_t struct_size; /* sizeof(struct dopa_validator) as the plugin saw it */
    const char *name;     /* short name, shown in errors and logs */
    const char *version;  /* the plugin's own version, may be NULL */

    /* Optional. `config` is the text of "<plugin>.conf" beside the plugin,
     * or NULL; it is valid only during this call (copy what you keep).
     * Returns 0 on success; nonzero refuses the load. */
    int (*init)(void **state, const char *config);

    /* Required. See the rules above. */
    int (*validate)(void *state, const struct dopa_validator_file *file, char *reason,
                    size_t reason_size);

    /* Optional. Releases what init() made. */
    void (*fini)(void *state);
};

typedef const struct dopa_validator *(*dopa_validator_entry_fn)(void);

/* Declared here so a plugin's definition is checked against it. */
const struct dopa_validator *dopa_validator_entry(void);

#ifdef __cplusplus
}
#endif

#endif /* DOPA_VALIDATOR_H */

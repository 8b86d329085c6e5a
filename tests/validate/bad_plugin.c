/*
 * Validator plugins that break the ABI in one way each, selected by a
 * compile definition; the loader must refuse or contain every one.
 *   BAD_ABI       claims ABI version 99
 *   NO_ENTRY      exports no entry symbol
 *   NULL_ENTRY    entry returns NULL
 *   NO_VALIDATE   leaves validate NULL
 *   SHORT_STRUCT  claims a struct smaller than ABI version 1's
 *   INIT_FAILS    init returns an error
 *   ODD_VERDICT   validate returns a value outside the verdict enum
 *   SAYS_ERROR    validate returns DOPA_VALIDATOR_ERROR with a long reason
 *   SAYS_INVALID  validate judges every file invalid (after printing "valid")
 *   CRASHES       validate dies of SIGSEGV
 *   HANGS         validate never returns
 *   ACCEPT_ALL    valid plugin that accepts everything and, at fini, writes
 *                 "fini" to the file named by its configuration
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "dopa_validator.h"

static char marker[512];

static int init(void **state, const char *config)
{
    *state = NULL;
#ifdef INIT_FAILS
    (void)config;
    return 7;
#else
    if (config != NULL)
        snprintf(marker, sizeof marker, "%.*s", (int)strcspn(config, "\n"), config);
    return 0;
#endif
}

__attribute__((unused)) static int validate(void *state, const struct dopa_validator_file *file,
                                            char *reason, size_t reason_size)
{
    (void)state;
    (void)file;
#if defined(ODD_VERDICT)
    snprintf(reason, reason_size, "odd");
    return 42;
#elif defined(SAYS_ERROR)
    /* Fills the whole buffer without a terminator: the loader must cope. */
    memset(reason, 'x', reason_size);
    return DOPA_VALIDATOR_ERROR;
#elif defined(SAYS_INVALID)
    /* What a plugin prints must not pass for the helper's verdict. */
    printf("valid\n");
    fflush(stdout);
    snprintf(reason, reason_size, "not signed by anyone we know\nsecond line");
    return DOPA_VALIDATOR_INVALID;
#elif defined(CRASHES)
    (void)reason;
    (void)reason_size;
    raise(SIGSEGV);
    return DOPA_VALIDATOR_VALID;
#elif defined(HANGS)
    (void)reason;
    (void)reason_size;
    for (;;)
        pause();
    return DOPA_VALIDATOR_VALID;
#else
    (void)reason;
    (void)reason_size;
    return DOPA_VALIDATOR_VALID;
#endif
}

static void fini(void *state)
{
    (void)state;
    if (marker[0] != '\0') {
        FILE *f = fopen(marker, "w");
        if (f != NULL) {
            fputs("fini", f);
            fclose(f);
        }
    }
}

__attribute__((unused)) static const struct dopa_validator plugin = {
#ifdef BAD_ABI
    .abi_version = 99,
#else
    .abi_version = DOPA_VALIDATOR_ABI_VERSION,
#endif
#ifdef SHORT_STRUCT
    .struct_size = 8,
#else
    .struct_size = sizeof(struct dopa_validator),
#endif
    .name = "bad",
    .init = init,
#ifndef NO_VALIDATE
    .validate = validate,
#endif
    .fini = fini,
};

#ifndef NO_ENTRY
const struct dopa_validator *dopa_validator_entry(void)
{
#ifdef NULL_ENTRY
    return NULL;
#else
    return &plugin;
#endif
}
#else
const struct dopa_validator *other_name(void);
const struct dopa_validator *other_name(void)
{
    return &plugin;
}
#endif

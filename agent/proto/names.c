/*
 * Names and text forms shared by libdopa and dopad: error messages, state
 * and priority names, job ids as UUIDs.
 */
#include <stdio.h>
#include <string.h>

#include "dopa.h"
#include "validate.h" /* validate_hex, validate_hex_value */

const char *dopa_strerror(int err)
{
    static const char *const messages[] = {
        [DOPA_OK] = "success",
        [DOPA_ENOMEM] = "out of memory",
        [DOPA_EINVAL] = "invalid argument",
        [DOPA_ECONNECT] = "cannot reach dopad (is it running?)",
        [DOPA_EPROTO] = "malformed or unexpected message",
        [DOPA_ENOTFOUND] = "no such job",
        [DOPA_EACCESS] = "permission denied",
        [DOPA_ESTATE] = "not allowed in the job's state",
        [DOPA_ELIMIT] = "limit reached",
        [DOPA_EIO] = "local file error",
        [DOPA_ETIMEOUT] = "timed out",
        [DOPA_EVERSION] = "protocol version not supported",
        [DOPA_EINTERNAL] = "dopad failed",
        [DOPA_EMANIFEST] = "manifest rejected",
        [DOPA_EVALIDATION] = "the content failed validation",
    };
    if (err >= 0 && err < DOPA_ERR_END)
        return messages[err];
    return "unknown error";
}

const char *dopa_state_name(int state)
{
    static const char *const names[] = {"QUEUED",      "CONNECTING",   "TRANSFERRING",
                                        "SUSPENDED",   "ERROR",        "TRANSIENT_ERROR",
                                        "TRANSFERRED", "ACKNOWLEDGED", "CANCELLED"};
    if (state >= 0 && state <= DOPA_STATE_CANCELLED)
        return names[state];
    return "UNKNOWN";
}

const char *dopa_priority_name(int priority)
{
    static const char *const names[] = {"FOREGROUND", "HIGH", "NORMAL", "LOW"};
    if (priority >= 0 && priority <= DOPA_PRIORITY_LOW)
        return names[priority];
    return "UNKNOWN";
}

const char *dopa_context_name(int context)
{
    static const char *const names[] = {"NONE",        "GENERAL", "LOCAL_FILE",
                                        "REMOTE_FILE", "PEER",    "VALIDATION"};
    if (context >= 0 && context <= DOPA_CONTEXT_VALIDATION)
        return names[context];
    return "UNKNOWN";
}

void dopa_id_format(const dopa_id *id, char out[37])
{
    static const size_t groups[] = {4, 2, 2, 2, 6}; /* bytes between the dashes */
    char *o = out;
    const uint8_t *b = id->bytes;
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        if (g > 0)
            *o++ = '-';
        validate_hex(b, groups[g], o); /* ends what it wrote with a NUL */
        o += 2 * groups[g];
        b += groups[g];
    }
}

int dopa_id_parse(const char *text, dopa_id *out)
{
    if (text == NULL || strlen(text) != 36)
        return DOPA_EINVAL;
    dopa_id id;
    const char *p = text;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            if (*p++ != '-')
                return DOPA_EINVAL;
        }
        int hi = validate_hex_value(p[0]), lo = validate_hex_value(p[1]);
        if (hi < 0 || lo < 0)
            return DOPA_EINVAL;
        id.bytes[i] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    *out = id;
    return DOPA_OK;
}

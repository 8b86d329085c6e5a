/*
 * Names and text forms shared by libdopa and dopad: error messages, state
 * and priority names, job ids as UUIDs.
 */
#include <stdio.h>
#include <string.h>

#include "dopa.h"

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
    static const char digits[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = digits[id->bytes[i] >> 4];
        *o++ = digits[id->bytes[i] & 15];
    }
    *o = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
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
        int hi = hex_digit(p[0]), lo = hex_digit(p[1]);
        if (hi < 0 || lo < 0)
            return DOPA_EINVAL;
        id.bytes[i] = (uint8_t)(hi << 4 | lo);
        p += 2;
    }
    *out = id;
    return DOPA_OK;
}

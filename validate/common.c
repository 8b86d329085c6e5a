/*
 * The few routines every part of dopa shares: the one formatter of its
 * errors, hex, and whole reads of a file. Free of any dependency, so that
 * libdopa and the validator plugins link this object alone
 * (validate/CMakeLists.txt).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "validate.h"

int validate_error_set(validate_error *why, int code, const char *fmt, ...)
{
    if (why != NULL) {
        why->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why->text, sizeof why->text, fmt, ap);
        va_end(ap);
    }
    return code;
}

void validate_hex(const uint8_t *bin, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bin[i] >> 4];
        out[2 * i + 1] = digits[bin[i] & 15];
    }
    out[2 * len] = '\0';
}

int validate_hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int validate_unhex(const char *hex, uint8_t *bin, size_t len)
{
    if (hex == NULL || strlen(hex) != 2 * len)
        return VALIDATE_EINVAL;
    for (size_t i = 0; i < len; i++) {
        int hi = validate_hex_value(hex[2 * i]), lo = validate_hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return VALIDATE_EINVAL;
        bin[i] = (uint8_t)(hi << 4 | lo);
    }
    return VALIDATE_OK;
}

ssize_t validate_pread_full(int fd, void *buf, size_t len, uint64_t offset)
{
    uint8_t *p = buf;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, p + got, len - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (ssize_t)got;
}

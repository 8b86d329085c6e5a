/*
 * aptmsg: framing, field lookup and writing of APT method messages (see
 * aptmsg.h for the format).
 */
#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "aptmsg.h"
#include "validate.h"

int aptmsg_reader_feed(aptmsg_reader *r, const char *data, size_t n)
{
    if (n > SIZE_MAX - r->len - 1)
        return -1;
    if (r->len + n + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n + 1)
            cap *= 2;
        char *grown = realloc(r->buf, cap);
        if (grown == NULL)
            return -1;
        r->buf = grown;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, n);
    r->len += n;
    return 0;
}

int aptmsg_reader_next(aptmsg_reader *r, char **msg)
{
    *msg = NULL;
    size_t skip = 0;
    while (skip < r->len && (r->buf[skip] == '\n' || r->buf[skip] == '\r'))
        skip++;
    if (skip > 0) {
        memmove(r->buf, r->buf + skip, r->len - skip);
        r->len -= skip;
        r->scanned = r->scanned > skip ? r->scanned - skip : 0;
    }
    if (r->len == 0)
        return 0;
    /* Search only what came since the last look (less one byte, which may
     * be the first newline of the pair), so that a long message arriving in
     * many small reads costs linear time. */
    size_t from = r->scanned > 0 ? r->scanned - 1 : 0;
    const char *end = memmem(r->buf + from, r->len - from, "\n\n", 2);
    if (end == NULL) {
        r->scanned = r->len;
        return r->len > APTMSG_MAX ? -1 : 0;
    }
    size_t n = (size_t)(end - r->buf);
    if (n > APTMSG_MAX)
        return -1;
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return -1;
    memcpy(copy, r->buf, n);
    copy[n] = '\0';
    memmove(r->buf, r->buf + n + 2, r->len - n - 2);
    r->len -= n + 2;
    r->scanned = 0;
    *msg = copy;
    return 1;
}

void aptmsg_reader_clear(aptmsg_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = r->scanned = 0;
}

int aptmsg_code(const char *msg)
{
    int code = 0, digits = 0;
    while (msg[digits] >= '0' && msg[digits] <= '9' && digits < 3)
        code = code * 10 + (msg[digits++] - '0');
    if (digits != 3 || (msg[digits] != ' ' && msg[digits] != '\0' && msg[digits] != '\n'))
        return -1;
    return code;
}

/* The start of the line after the one at p, or NULL at the end. */
static const char *next_line(const char *p)
{
    const char *nl = strchr(p, '\n');
    return nl == NULL ? NULL : nl + 1;
}

int aptmsg_field(const char *msg, const char *name, char *out, size_t out_len)
{
    size_t name_len = strlen(name);
    if (out_len > 0)
        out[0] = '\0';
    /* The first line is the status line, never a field. */
    for (const char *line = next_line(msg); line != NULL; line = next_line(line)) {
        if (strncasecmp(line, name, name_len) != 0 || line[name_len] != ':')
            continue;
        const char *v = line + name_len + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strcspn(v, "\n");
        while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r'))
            n--;
        if (n >= out_len)
            return -2;
        memcpy(out, v, n);
        out[n] = '\0';
        return 0;
    }
    return -1;
}

/* Decodes APT's QuoteString (%XX for unsafe bytes) of in[0..n) into out;
 * -1 when it does not fit. A '%' not followed by two hex digits stays. */
static int dequote(const char *in, size_t n, char *out, size_t out_len)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        uint8_t byte;
        if (c == '%' && i + 2 < n &&
            validate_unhex((const char[]){in[i + 1], in[i + 2], '\0'}, &byte, 1) == VALIDATE_OK) {
            c = (char)byte;
            i += 2;
        }
        if (o + 1 >= out_len)
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

size_t aptmsg_config_items(const char *msg,
                           void (*fn)(void *ctx, const char *key, const char *value), void *ctx)
{
    static const char tag[] = "Config-Item:";
    char key[4096], value[4096];
    size_t seen = 0;
    for (const char *line = next_line(msg); line != NULL; line = next_line(line)) {
        if (strncasecmp(line, tag, sizeof tag - 1) != 0)
            continue;
        const char *p = line + sizeof tag - 1;
        while (*p == ' ' || *p == '\t')
            p++;
        size_t n = strcspn(p, "\n");
        const char *eq = memchr(p, '=', n);
        if (eq == NULL)
            continue;
        seen++;
        size_t key_len = (size_t)(eq - p), value_len = n - key_len - 1;
        if (dequote(p, key_len, key, sizeof key) != 0 ||
            dequote(eq + 1, value_len, value, sizeof value) != 0)
            continue;
        fn(ctx, key, value);
    }
    return seen;
}

static void append(aptmsg_out *o, const char *s, size_t n, int clean)
{
    if (o->failed)
        return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 512;
        while (cap < o->len + n + 1)
            cap *= 2;
        char *grown = realloc(o->buf, cap);
        if (grown == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = grown;
        o->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        o->buf[o->len++] = clean && ((c < 0x20 && c != '\t') || c == 0x7f) ? ' ' : (char)c;
    }
    o->buf[o->len] = '\0';
}

void aptmsg_out_start(aptmsg_out *o, const char *status_line)
{
    o->buf = NULL;
    o->len = o->cap = 0;
    o->failed = 0;
    append(o, status_line, strlen(status_line), 1);
    append(o, "\n", 1, 0);
}

void aptmsg_out_field(aptmsg_out *o, const char *name, const char *value)
{
    append(o, name, strlen(name), 1);
    append(o, ": ", 2, 0);
    append(o, value, strlen(value), 1);
    append(o, "\n", 1, 0);
}

void aptmsg_out_fieldf(aptmsg_out *o, const char *name, const char *fmt, ...)
{
    char value[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    aptmsg_out_field(o, name, value);
}

int aptmsg_out_send(aptmsg_out *o, int fd)
{
    append(o, "\n", 1, 0);
    int rc = o->failed ? -1 : 0;
    size_t done = 0;
    while (rc == 0 && done < o->len) {
        ssize_t w = write(fd, o->buf + done, o->len - done);
        if (w > 0) {
            done += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, -1);
        } else {
            rc = -1;
        }
    }
    free(o->buf);
    o->buf = NULL;
    o->len = o->cap = 0;
    return rc;
}

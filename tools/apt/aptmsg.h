/*
 * aptmsg: APT's acquire-method protocol, as far as the dopa method needs it.
 *
 * APT talks to a method over a pair of pipes with messages like
 *
 *     600 URI Acquire
 *     URI: dopa+http://deb.example.org/pool/main/h/hello/hello_2.10_amd64.deb
 *     Filename: /var/cache/apt/archives/partial/hello_2.10_amd64.deb
 *     Expected-SHA256: 35b1508e...
 *
 * that is, a status line ("NNN Text"), then "Field: value" lines, then an
 * empty line. This file frames the byte stream into messages, looks fields
 * up (by name, ignoring case, as APT's LookupTag does), decodes the
 * %XX-quoting APT uses in "601 Configuration" items, and writes messages
 * with values APT will accept. Everything that comes from the pipe is
 * checked against the buffer it is in; nothing here trusts a length.
 */
#ifndef DOPA_TOOLS_APTMSG_H
#define DOPA_TOOLS_APTMSG_H

#include <stddef.h>

/* The longest message accepted from APT. "601 Configuration" carries the
 * whole of APT's configuration, tens of KiB on a busy system; 4 MiB leaves
 * room for much more and still bounds what a broken peer can make us hold. */
#define APTMSG_MAX (4u * 1024 * 1024)

/* Accumulates bytes read from APT and hands out whole messages. */
typedef struct aptmsg_reader {
    char *buf;
    size_t len, cap;
    size_t scanned; /* bytes already searched for a message's end */
} aptmsg_reader;

/* Appends n bytes; 0, or -1 when out of memory. */
int aptmsg_reader_feed(aptmsg_reader *r, const char *data, size_t n);

/* Takes the next whole message out of the reader: 1 and *msg (a
 * NUL-terminated copy without the empty line that ends it, for free()),
 * 0 when no whole message is there yet, -1 when the bytes waiting exceed
 * APTMSG_MAX without an end (or memory ran out). Empty lines before a
 * message are skipped, as APT skips them. */
int aptmsg_reader_next(aptmsg_reader *r, char **msg);

/* Frees the buffer; the reader may be fed again afterwards. */
void aptmsg_reader_clear(aptmsg_reader *r);

/* The number that starts a message ("600 URI Acquire" -> 600), or -1 when
 * it does not start with one. */
int aptmsg_code(const char *msg);

/* Copies the value of the first field called name (ignoring case; leading
 * blanks of the value dropped, the line's end excluded) into out. Returns
 * 0, -1 when the message has no such field, -2 when the value does not fit
 * in out_len bytes (out then holds an empty string). */
int aptmsg_field(const char *msg, const char *name, char *out, size_t out_len);

/* Calls fn(ctx, key, value) for each "Config-Item: key=value" line of a
 * "601 Configuration" message, key and value decoded from APT's %XX
 * quoting. Items whose key or value do not fit in 4 KiB are skipped
 * (nothing the method reads is that long). Returns how many were seen. */
size_t aptmsg_config_items(const char *msg,
                           void (*fn)(void *ctx, const char *key, const char *value), void *ctx);

/* Builds one message to APT. Values are written on one line each: control
 * characters in them (a newline in a server's error text, say) become
 * spaces, since APT refuses messages that carry any. */
typedef struct aptmsg_out {
    char *buf;
    size_t len, cap;
    int failed; /* out of memory: aptmsg_out_send() reports it */
} aptmsg_out;

void aptmsg_out_start(aptmsg_out *o, const char *status_line);
void aptmsg_out_field(aptmsg_out *o, const char *name, const char *value);
__attribute__((format(printf, 3, 4))) void aptmsg_out_fieldf(aptmsg_out *o, const char *name,
                                                             const char *fmt, ...);
/* Ends the message, writes it whole to fd and frees the buffer. Returns 0,
 * or -1 when it could not be written (APT is gone) or built. */
int aptmsg_out_send(aptmsg_out *o, int fd);

#endif

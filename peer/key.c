/*
 * Group keys: the 32-byte secret every agent of a peer group holds, its
 * one-line text form ("dopa-grp1:..."), and the key file `dopa group-key`
 * writes and dopad reads. Also the module's error table. Key material on
 * the stack is wiped before it goes out of scope.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "peer.h"
#include "validate.h"

#define KEY_PREFIX   "dopa-grp1:"
#define B64_VARIANT  sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define KEY_FILE_MAX 4096

_Static_assert(sizeof KEY_PREFIX - 1 +
                       sodium_base64_ENCODED_LEN(PEER_GROUP_KEY_BYTES, B64_VARIANT) <=
                   PEER_GROUP_KEY_TEXT_MAX,
               "PEER_GROUP_KEY_TEXT_MAX holds the text form");

static const char *const messages[] = {
    [PEER_ENOMEM - PEER_ENOMEM] = "out of memory",
    [PEER_EINVAL - PEER_ENOMEM] = "invalid argument",
    [PEER_EIO - PEER_ENOMEM] = "input/output error",
    [PEER_ECRYPTO - PEER_ENOMEM] = "cryptography library failed to initialise",
    [PEER_EKEY_FORMAT - PEER_ENOMEM] = "malformed group key",
    [PEER_EKEY_PERMS - PEER_ENOMEM] = "group key file is accessible by other users",
    [PEER_EEXISTS - PEER_ENOMEM] = "file exists",
    [PEER_ETRUNCATED - PEER_ENOMEM] = "peer message truncated",
    [PEER_ETOOBIG - PEER_ENOMEM] = "peer message or field too large",
    [PEER_EMAGIC - PEER_ENOMEM] = "not a dopa peer message (bad magic)",
    [PEER_EVERSION - PEER_ENOMEM] = "unsupported peer protocol version",
    [PEER_ERESERVED - PEER_ENOMEM] = "reserved bits or values in a peer message",
    [PEER_ETYPE - PEER_ENOMEM] = "unknown or unexpected peer message type",
    [PEER_EAUTH - PEER_ENOMEM] = "peer message not sealed with the group key, or altered",
    [PEER_ESTALE - PEER_ENOMEM] = "peer message time outside the accepted window",
    [PEER_EREPLAY - PEER_ENOMEM] = "peer message replayed",
    [PEER_EMISMATCH - PEER_ENOMEM] = "peer reply does not answer the request",
    [PEER_EADDRESS - PEER_ENOMEM] = "unacceptable peer address",
    [PEER_ENNG - PEER_ENOMEM] = "nng failed",
};

_Static_assert(sizeof messages / sizeof messages[0] == PEER_ERR_END - PEER_ENOMEM,
               "a message for every error code");

const char *peer_strerror(int err)
{
    if (err == PEER_OK)
        return "success";
    if (err >= PEER_ENOMEM && err < PEER_ERR_END)
        return messages[err - PEER_ENOMEM];
    return "unknown error";
}

void peer_group_key_generate(uint8_t key[PEER_GROUP_KEY_BYTES])
{
    (void)validate_init();
    randombytes_buf(key, PEER_GROUP_KEY_BYTES);
}

void peer_group_key_text(const uint8_t key[PEER_GROUP_KEY_BYTES], char out[PEER_GROUP_KEY_TEXT_MAX])
{
    size_t plen = strlen(KEY_PREFIX);
    memcpy(out, KEY_PREFIX, plen);
    sodium_bin2base64(out + plen, PEER_GROUP_KEY_TEXT_MAX - plen, key, PEER_GROUP_KEY_BYTES,
                      B64_VARIANT);
}

/* Not isalnum(): that depends on the locale. */
static int is_base64url_digit(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

/* Decodes "dopa-grp1:<base64 of exactly 32 bytes>" surrounded by blanks.
 * libsodium rejects non-zero padding bits, so each key has one text form. */
static int key_from_text(const char *text, size_t len, uint8_t key[PEER_GROUP_KEY_BYTES])
{
    uint8_t bin[PEER_GROUP_KEY_BYTES];
    size_t bin_len = 0;
    const char *end = NULL;
    size_t plen = strlen(KEY_PREFIX);
    int err = PEER_EKEY_FORMAT;

    while (len > 0 && isspace((unsigned char)*text)) {
        text++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)text[len - 1]))
        len--;
    if (len <= plen || memcmp(text, KEY_PREFIX, plen) != 0)
        return PEER_EKEY_FORMAT;
    /* libsodium 1.0.18 takes bytes 0x80..0xff for base64 digits: only the
     * URL-safe alphabet gets as far as the decoder. */
    for (size_t i = plen; i < len; i++)
        if (!is_base64url_digit(text[i]))
            return PEER_EKEY_FORMAT;
    if (sodium_base642bin(bin, sizeof bin, text + plen, len - plen, NULL, &bin_len, &end,
                          B64_VARIANT) == 0 &&
        bin_len == sizeof bin && end == text + len) {
        memcpy(key, bin, sizeof bin);
        err = PEER_OK;
    }
    sodium_memzero(bin, sizeof bin);
    return err;
}

int peer_group_key_parse(const char *text, uint8_t key[PEER_GROUP_KEY_BYTES])
{
    if (text == NULL || key == NULL)
        return PEER_EINVAL;
    if (validate_init() != VALIDATE_OK)
        return PEER_ECRYPTO;
    return key_from_text(text, strlen(text), key);
}

int peer_group_key_save(const uint8_t key[PEER_GROUP_KEY_BYTES], const char *path, int overwrite,
                        validate_error *why)
{
    char key_text[PEER_GROUP_KEY_TEXT_MAX];
    char text[256];
    int err;
    struct stat st;

    if (key == NULL || path == NULL || *path == '\0')
        return validate_error_set(why, PEER_EINVAL, "no key or no path");
    if (strlen(path) + 16 >= PATH_MAX)
        return validate_error_set(why, PEER_EINVAL, "%s: path too long", path);
    /* An early, friendlier refusal; link() below is what makes it hold. */
    if (!overwrite && lstat(path, &st) == 0)
        return validate_error_set(why, PEER_EEXISTS, "%s exists; refusing to overwrite a group key",
                                  path);

    peer_group_key_text(key, key_text);
    int n = snprintf(text, sizeof text,
                     "# dopa peer group key: every agent of the group holds this same key.\n"
                     "# Keep it private (mode 0600).\n%s\n",
                     key_text);
    sodium_memzero(key_text, sizeof key_text);

    /* Written in full, mode 0600, before it gets its name; linked (not
     * renamed) unless overwriting, so that no existing name, a symlink
     * included, is replaced. */
    validate_error detail = {0};
    int verr = validate_write_file(path, text, (size_t)n, 0600, overwrite, &detail);
    if (verr == VALIDATE_EEXISTS)
        err = validate_error_set(why, PEER_EEXISTS, "%s exists; refusing to overwrite a group key",
                                 path);
    else if (verr != VALIDATE_OK)
        err = validate_error_set(why, PEER_EIO, "%s", detail.text);
    else
        err = PEER_OK;
    sodium_memzero(text, sizeof text);
    return err;
}

/* The first line that is neither blank nor a '#' comment. */
static int first_key_line(const char *buf, size_t len, const char **line, size_t *line_len)
{
    const char *p = buf, *end = buf + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *stop = eol != NULL ? eol : end;
        const char *q = p;
        while (q < stop && isspace((unsigned char)*q))
            q++;
        if (q < stop && *q != '#') {
            *line = p;
            *line_len = (size_t)(stop - p);
            return PEER_OK;
        }
        p = stop + (eol != NULL);
    }
    return PEER_EKEY_FORMAT;
}

int peer_group_key_load(const char *path, uint8_t key[PEER_GROUP_KEY_BYTES], validate_error *why)
{
    /* One byte past the limit, so that a larger file is caught, not cut. */
    char buf[KEY_FILE_MAX + 1];
    size_t got = 0;
    const char *line = NULL;
    size_t line_len = 0;
    struct stat st;
    int err;

    if (path == NULL || key == NULL)
        return validate_error_set(why, PEER_EINVAL, "no key or no path");
    if (validate_init() != VALIDATE_OK)
        return validate_error_set(why, PEER_ECRYPTO, "%s", peer_strerror(PEER_ECRYPTO));
    /* O_NOFOLLOW: the key is read from the named file, not from wherever a
     * symlink points. O_NONBLOCK: a FIFO planted at the path cannot hang
     * the open; it is cleared once the file is known to be regular. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
    if (fd < 0) {
        if (errno == ELOOP)
            return validate_error_set(
                why, PEER_EIO, "%s: a symbolic link; refusing to read a group key through it",
                path);
        return validate_error_set(why, PEER_EIO, "%s: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0) {
        err = validate_error_set(why, PEER_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        err = validate_error_set(why, PEER_EIO, "%s: not a regular file", path);
        goto done;
    }
    if ((st.st_mode & 077) != 0) {
        err = validate_error_set(
            why, PEER_EKEY_PERMS,
            "%.400s: mode %04o gives other users access to the group key; run `chmod 600 %.400s`",
            path, (unsigned)(st.st_mode & 07777), path);
        goto done;
    }
    (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    while (got < sizeof buf) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = validate_error_set(why, PEER_EIO, "%s: %s", path, strerror(errno));
            goto done;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got > KEY_FILE_MAX) {
        err = validate_error_set(why, PEER_EKEY_FORMAT,
                                 "%s: not a dopa group key (larger than %d bytes)", path,
                                 KEY_FILE_MAX);
        goto done;
    }
    /* A NUL byte must not hide what follows it, nor end the key early. */
    if (memchr(buf, '\0', got) != NULL || first_key_line(buf, got, &line, &line_len) != PEER_OK ||
        key_from_text(line, line_len, key) != PEER_OK) {
        err = validate_error_set(why, PEER_EKEY_FORMAT,
                                 "%s: not a dopa group key (expected a line \"" KEY_PREFIX "...\")",
                                 path);
        goto done;
    }
    err = PEER_OK;
done:
    sodium_memzero(buf, sizeof buf);
    close(fd);
    return err;
}

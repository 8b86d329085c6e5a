/*
 * minisign.so: a validator plugin that accepts a file only when the detached
 * minisign signature published beside it verifies under one of the public
 * keys in its configuration. The signature is fetched from the job's remote
 * URL with ".minisig" appended to the path (http, https, file). Format,
 * configuration and verdicts: validate/plugins/README.md.
 *
 * Every byte of the signature comes from the outside world: it is read into
 * a bounded buffer (SIG_MAX_BYTES) and parsed by parse_signature() alone,
 * which checks every line and every length. The content is read through the
 * descriptor dopad gives, in chunks, never through its path.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dopa_validator.h"
#include "validate.h"

#define SIG_MAX_BYTES   (64u * 1024u) /* a real .minisig is about 300 bytes */
#define LEGACY_MAX_SIZE (1ull << 30)  /* legacy signatures need the file in memory */
#define READ_CHUNK      (1u << 20)
#define TIMEOUT_DEFAULT 30L
#define TIMEOUT_MAX     3600L
#define MAX_REDIRECTS   5L
#define MAX_KEYS        64

#define KEY_ID_BYTES  8
#define ALG_BYTES     2
#define PUBKEY_BYTES  (ALG_BYTES + KEY_ID_BYTES + crypto_sign_PUBLICKEYBYTES) /* 42 */
#define SIG_BLOB      (ALG_BYTES + KEY_ID_BYTES + crypto_sign_BYTES)          /* 74 */
#define PREHASH_BYTES crypto_generichash_BYTES_MAX                            /* 64 */

#define UNTRUSTED_PREFIX "untrusted comment: "
#define TRUSTED_PREFIX   "trusted comment: "

/* 0 from a step means "go on"; otherwise a dopa_validator_verdict. */
#define GO_ON 0

struct minisign_key {
    uint8_t id[KEY_ID_BYTES];
    uint8_t pk[crypto_sign_PUBLICKEYBYTES];
};

struct minisign_state {
    struct minisign_key keys[MAX_KEYS];
    size_t n_keys;
    long timeout; /* seconds, for the whole signature fetch */
};

/* A parsed signature; comment points into the buffer it was parsed from. */
struct minisign_sig {
    int is_prehashed; /* "ED": Ed25519 over BLAKE2b-512; "Ed": over the raw file */
    uint8_t key_id[KEY_ID_BYTES];
    uint8_t sig[crypto_sign_BYTES];
    const char *comment; /* the trusted comment, after its prefix */
    size_t comment_len;
    uint8_t global_sig[crypto_sign_BYTES];
};

/* A piece of a buffer; not NUL-terminated. */
struct span {
    const char *p;
    size_t len;
};

/* minisign shows key ids as the little-endian number in upper-case hex. */
static void key_id_text(const uint8_t id[KEY_ID_BYTES], char out[17])
{
    uint64_t v = 0;
    for (int i = KEY_ID_BYTES - 1; i >= 0; i--)
        v = (v << 8) | id[i];
    snprintf(out, 17, "%" PRIX64, v);
}

/* Decodes exactly `out_len` bytes from padded standard base64 filling all
 * of `s`; -1 on any other input. */
static int unbase64(const char *s, size_t len, uint8_t *out, size_t out_len)
{
    size_t n = 0;
    const char *end = NULL;
    if (len != sodium_base64_ENCODED_LEN(out_len, sodium_base64_VARIANT_ORIGINAL) - 1)
        return -1;
    if (sodium_base642bin(out, out_len, s, len, NULL, &n, &end, sodium_base64_VARIANT_ORIGINAL) !=
            0 ||
        end != s + len || n != out_len)
        return -1;
    return 0;
}

static int has_prefix(struct span s, const char *prefix)
{
    size_t k = strlen(prefix);
    return s.len >= k && memcmp(s.p, prefix, k) == 0;
}

/* ------------------------------------------------------------------ */
/* Configuration                                                      */

static int config_error(unsigned line, const char *what)
{
    /* init() has no channel for a reason; dopad's stderr is its log. */
    fprintf(stderr, "minisign.so: configuration line %u: %s\n", line, what);
    return -1;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

static struct span trim(struct span s)
{
    while (s.len > 0 && is_blank(s.p[0])) {
        s.p++;
        s.len--;
    }
    while (s.len > 0 && is_blank(s.p[s.len - 1]))
        s.len--;
    return s;
}

static int parse_public_key(struct minisign_state *s, struct span v, unsigned line)
{
    uint8_t raw[PUBKEY_BYTES];
    if (unbase64(v.p, v.len, raw, sizeof raw) != 0)
        return config_error(line, "public-key is not the base64 of a minisign public key");
    if (memcmp(raw, "Ed", ALG_BYTES) != 0)
        return config_error(line, "public-key is not an Ed25519 minisign key");
    if (s->n_keys == MAX_KEYS)
        return config_error(line, "too many public keys");
    for (size_t i = 0; i < s->n_keys; i++)
        if (memcmp(s->keys[i].id, raw + ALG_BYTES, KEY_ID_BYTES) == 0)
            return config_error(line, "a second public key with the same key id");
    struct minisign_key *k = &s->keys[s->n_keys++];
    memcpy(k->id, raw + ALG_BYTES, KEY_ID_BYTES);
    memcpy(k->pk, raw + ALG_BYTES + KEY_ID_BYTES, sizeof k->pk);
    return 0;
}

static int parse_timeout(struct minisign_state *s, struct span v, unsigned line, int *seen)
{
    long t = 0;
    if (*seen)
        return config_error(line, "timeout given twice");
    if (v.len == 0 || v.len > 4)
        return config_error(line, "timeout must be 1 to 3600 seconds");
    for (size_t i = 0; i < v.len; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return config_error(line, "timeout must be 1 to 3600 seconds");
        t = t * 10 + (v.p[i] - '0');
    }
    if (t < 1 || t > TIMEOUT_MAX)
        return config_error(line, "timeout must be 1 to 3600 seconds");
    s->timeout = t;
    *seen = 1;
    return 0;
}

/* "key = value" lines, '#' comments and blank lines; see README.md. */
static int parse_config(struct minisign_state *s, const char *config)
{
    int has_timeout = 0;
    unsigned line = 0;
    const char *p = config;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        struct span l = {p, nl != NULL ? (size_t)(nl - p) : strlen(p)};
        p = nl != NULL ? nl + 1 : p + l.len;
        line++;
        l = trim(l);
        if (l.len == 0 || l.p[0] == '#')
            continue;
        const char *eq = memchr(l.p, '=', l.len);
        if (eq == NULL)
            return config_error(line, "expected \"key = value\"");
        struct span key = trim((struct span){l.p, (size_t)(eq - l.p)});
        struct span value = trim((struct span){eq + 1, l.len - (size_t)(eq - l.p) - 1});
        if (key.len == 10 && memcmp(key.p, "public-key", 10) == 0) {
            if (parse_public_key(s, value, line) != 0)
                return -1;
        } else if (key.len == 7 && memcmp(key.p, "timeout", 7) == 0) {
            if (parse_timeout(s, value, line, &has_timeout) != 0)
                return -1;
        } else {
            return config_error(line, "unknown key (expected public-key or timeout)");
        }
    }
    if (s->n_keys == 0) {
        fprintf(stderr, "minisign.so: the configuration names no public-key\n");
        return -1;
    }
    return 0;
}

static int minisign_init(void **out, const char *config)
{
    if (config == NULL) {
        fprintf(stderr, "minisign.so: no configuration (minisign.conf with a public-key)\n");
        return -1;
    }
    if (sodium_init() < 0)
        return -1;
    struct minisign_state *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -1;
    s->timeout = TIMEOUT_DEFAULT;
    if (parse_config(s, config) != 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

static void minisign_fini(void *state)
{
    if (state == NULL)
        return;
    curl_global_cleanup();
    free(state);
}

/* ------------------------------------------------------------------ */
/* The signature file                                                 */

/* Splits buf into exactly four lines, each ending in "\n" or "\r\n" (the
 * last may end the buffer instead); -1 for any other shape. */
static int split_lines(const char *buf, size_t len, struct span lines[4])
{
    size_t pos = 0;
    for (int i = 0; i < 4; i++) {
        if (pos >= len)
            return -1;
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - buf) : len;
        size_t next = nl != NULL ? end + 1 : len;
        if (end > pos && buf[end - 1] == '\r')
            end--;
        lines[i] = (struct span){buf + pos, end - pos};
        if (memchr(lines[i].p, '\r', lines[i].len) != NULL)
            return -1;
        pos = next;
    }
    return pos == len ? 0 : -1;
}

/* The one parser of untrusted signature bytes. */
static int parse_signature(const uint8_t *buf, size_t len, struct minisign_sig *out,
                           validate_error *why)
{
    struct span lines[4];
    uint8_t blob[SIG_BLOB];
    const char *text = (const char *)buf;

    if (memchr(buf, '\0', len) != NULL)
        return validate_error_set(why, DOPA_VALIDATOR_INVALID, "malformed signature: a NUL byte");
    if (split_lines(text, len, lines) != 0)
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "malformed signature: not four lines");
    if (!has_prefix(lines[0], UNTRUSTED_PREFIX))
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "malformed signature: line 1 is not an untrusted comment");
    if (unbase64(lines[1].p, lines[1].len, blob, sizeof blob) != 0)
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "malformed signature: line 2 is not the base64 of %u bytes",
                                  SIG_BLOB);
    if (memcmp(blob, "ED", ALG_BYTES) == 0)
        out->is_prehashed = 1;
    else if (memcmp(blob, "Ed", ALG_BYTES) == 0)
        out->is_prehashed = 0;
    else
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "unsupported signature algorithm (0x%02x%02x)", blob[0], blob[1]);
    memcpy(out->key_id, blob + ALG_BYTES, KEY_ID_BYTES);
    memcpy(out->sig, blob + ALG_BYTES + KEY_ID_BYTES, crypto_sign_BYTES);
    if (!has_prefix(lines[2], TRUSTED_PREFIX))
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "malformed signature: line 3 is not a trusted comment");
    out->comment = lines[2].p + strlen(TRUSTED_PREFIX);
    out->comment_len = lines[2].len - strlen(TRUSTED_PREFIX);
    if (unbase64(lines[3].p, lines[3].len, out->global_sig, sizeof out->global_sig) != 0)
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "malformed signature: line 4 is not the base64 of %u bytes",
                                  crypto_sign_BYTES);
    return GO_ON;
}

/* ------------------------------------------------------------------ */
/* Fetching the signature                                             */

struct body {
    uint8_t *data; /* SIG_MAX_BYTES */
    size_t len;
    int is_too_big;
};

static size_t on_body(char *ptr, size_t size, size_t n, void *userdata)
{
    struct body *b = userdata;
    if (size != 1 || n > SIG_MAX_BYTES - b->len) {
        b->is_too_big = 1;
        return 0; /* curl stops with CURLE_WRITE_ERROR */
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    return n;
}

/* Reads "<path>.minisig" of a file:// URL. */
static int read_local(const char *path, struct body *b, validate_error *why)
{
    size_t n = strlen(path);
    char *sig_path = malloc(n + sizeof ".minisig");
    if (sig_path == NULL)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");
    memcpy(sig_path, path, n);
    memcpy(sig_path + n, ".minisig", sizeof ".minisig");

    int verdict = GO_ON;
    /* O_NONBLOCK: a FIFO planted there must not hang us. */
    int fd = open(sig_path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR)
            verdict =
                validate_error_set(why, DOPA_VALIDATOR_INVALID, "no signature at %s", sig_path);
        else
            verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot open %s: %s", sig_path,
                                         strerror(errno));
        goto done;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        verdict =
            validate_error_set(why, DOPA_VALIDATOR_ERROR, "%s is not a regular file", sig_path);
        goto done;
    }
    for (;;) {
        /* One byte of room past the limit tells a file that is too big. */
        uint8_t extra;
        ssize_t r = b->len < SIG_MAX_BYTES ? read(fd, b->data + b->len, SIG_MAX_BYTES - b->len)
                                           : read(fd, &extra, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot read %s: %s", sig_path,
                                         strerror(errno));
            goto done;
        }
        if (r == 0)
            break;
        if (b->len == SIG_MAX_BYTES) {
            b->is_too_big = 1;
            break;
        }
        b->len += (size_t)r;
    }
    if (b->is_too_big)
        verdict = validate_error_set(why, DOPA_VALIDATOR_INVALID, "signature larger than %u bytes",
                                     SIG_MAX_BYTES);
done:
    if (fd >= 0)
        close(fd);
    free(sig_path);
    return verdict;
}

/* Fetches an http(s) signature URL; `shown` names it in reasons. */
static int fetch_http(const struct minisign_state *s, const char *url, const char *shown,
                      struct body *b, validate_error *why)
{
    char err[CURL_ERROR_SIZE] = "";
    long status = 0;
    CURL *h = curl_easy_init();
    if (h == NULL)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot start libcurl");
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, MAX_REDIRECTS);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, s->timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, s->timeout);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)SIG_MAX_BYTES);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "dopa-minisign/1");
    CURLcode rc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);

    if (rc == CURLE_OK && status == 200)
        return GO_ON;
    if (rc == CURLE_OK)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "HTTP %ld for %s", status, shown);
    if (rc == CURLE_HTTP_RETURNED_ERROR && (status == 404 || status == 410))
        return validate_error_set(why, DOPA_VALIDATOR_INVALID, "no signature (HTTP %ld for %s)",
                                  status, shown);
    if (rc == CURLE_HTTP_RETURNED_ERROR)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "HTTP %ld for %s", status, shown);
    if (rc == CURLE_FILESIZE_EXCEEDED || (rc == CURLE_WRITE_ERROR && b->is_too_big))
        return validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                  "signature larger than %u bytes at %s", SIG_MAX_BYTES, shown);
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "timed out after %ld s fetching %s",
                                  s->timeout, shown);
    return validate_error_set(why, DOPA_VALIDATOR_ERROR, "fetching %s: %s", shown,
                              err[0] != '\0' ? err : curl_easy_strerror(rc));
}

/* Reads the signature for `remote_url` into b: the URL's path gets
 * ".minisig" appended (its query is kept, its fragment dropped). */
static int fetch_signature(const struct minisign_state *s, const char *remote_url, struct body *b,
                           validate_error *why)
{
    int verdict;
    char *scheme = NULL, *path = NULL, *host = NULL, *port = NULL, *sig_url = NULL;
    char *with_suffix = NULL, *shown = NULL;
    CURLU *u = curl_url();
    if (u == NULL) {
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");
        goto done;
    }
    if (curl_url_set(u, CURLUPART_URL, remote_url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot parse the remote URL");
        goto done;
    }
    if (strcmp(scheme, "file") == 0) {
        if (curl_url_get(u, CURLUPART_PATH, &path, CURLU_URLDECODE) != CURLUE_OK)
            verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR,
                                         "cannot decode the path of the remote URL");
        else
            verdict = read_local(path, b, why);
        goto done;
    }
    if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0) {
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "no signature fetch for %s:// URLs",
                                     scheme);
        goto done;
    }
    if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot parse the remote URL");
        goto done;
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0); /* absent unless given */
    size_t n = strlen(path);
    with_suffix = malloc(n + sizeof ".minisig");
    size_t shown_len = strlen(scheme) + strlen(host) + (port ? strlen(port) : 0) + n + 16;
    shown = malloc(shown_len);
    if (with_suffix == NULL || shown == NULL) {
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");
        goto done;
    }
    memcpy(with_suffix, path, n);
    memcpy(with_suffix + n, ".minisig", sizeof ".minisig");
    /* Reasons name the URL without credentials or query. */
    snprintf(shown, shown_len, "%s://%s%s%s%s", scheme, host, port ? ":" : "", port ? port : "",
             with_suffix);
    if (curl_url_set(u, CURLUPART_PATH, with_suffix, 0) != CURLUE_OK ||
        curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_URL, &sig_url, 0) != CURLUE_OK) {
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot build the signature URL");
        goto done;
    }
    verdict = fetch_http(s, sig_url, shown, b, why);

done:
    free(shown);
    free(with_suffix);
    curl_free(sig_url);
    curl_free(port);
    curl_free(host);
    curl_free(path);
    curl_free(scheme);
    curl_url_cleanup(u);
    return verdict;
}

/* ------------------------------------------------------------------ */
/* Verification                                                       */

/* Ed25519 over the trusted comment: signature || comment text. */
static int comment_verifies(const struct minisign_sig *sig, const struct minisign_key *k)
{
    size_t len = crypto_sign_BYTES + sig->comment_len;
    uint8_t *msg = malloc(len);
    if (msg == NULL)
        return -1;
    memcpy(msg, sig->sig, crypto_sign_BYTES);
    memcpy(msg + crypto_sign_BYTES, sig->comment, sig->comment_len);
    int ok = crypto_sign_verify_detached(sig->global_sig, msg, len, k->pk) == 0;
    free(msg);
    return ok ? 1 : 0;
}

static int content_verifies(const struct dopa_validator_file *file, const struct minisign_sig *sig,
                            const struct minisign_key *k, validate_error *why)
{
    int verdict;
    uint8_t *buf = NULL;
    struct stat st;
    if (fstat(file->fd, &st) != 0)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot stat the file: %s",
                                  strerror(errno));
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != file->size)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR,
                                  "the file holds %lld bytes, not the %" PRIu64 " announced",
                                  (long long)st.st_size, file->size);

    if (!sig->is_prehashed) {
        if (file->size > LEGACY_MAX_SIZE)
            return validate_error_set(
                why, DOPA_VALIDATOR_ERROR,
                "legacy (not prehashed) signature over a file larger than 1 GiB; "
                "sign it with minisign 0.11 or later without -l");
        size_t n = (size_t)file->size;
        buf = malloc(n > 0 ? n : 1);
        if (buf == NULL)
            return validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");
        if (validate_pread_full(file->fd, buf, n, 0) != (ssize_t)n) {
            verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "cannot read the file");
            goto done;
        }
        verdict = crypto_sign_verify_detached(sig->sig, buf, n, k->pk) == 0
                      ? GO_ON
                      : validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                           "signature does not match the content");
        goto done;
    }

    crypto_generichash_state h;
    uint8_t hash[PREHASH_BYTES];
    buf = malloc(READ_CHUNK);
    if (buf == NULL)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");
    crypto_generichash_init(&h, NULL, 0, sizeof hash);
    for (uint64_t off = 0; off < file->size;) {
        size_t n = file->size - off < READ_CHUNK ? (size_t)(file->size - off) : READ_CHUNK;
        if (validate_pread_full(file->fd, buf, n, off) != (ssize_t)n) {
            verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR,
                                         "cannot read the file at offset %" PRIu64, off);
            goto done;
        }
        crypto_generichash_update(&h, buf, n);
        off += n;
    }
    crypto_generichash_final(&h, hash, sizeof hash);
    verdict = crypto_sign_verify_detached(sig->sig, hash, sizeof hash, k->pk) == 0
                  ? GO_ON
                  : validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                       "signature does not match the content");
done:
    free(buf);
    return verdict;
}

/* The check itself; minisign_validate hands its reason to dopa. The code in
 * *why is the verdict (DOPA_VALIDATOR_*), which no one outside reads. */
static int check(void *state, const struct dopa_validator_file *file, validate_error *why)
{
    const struct minisign_state *s = state;
    struct minisign_sig sig;
    const struct minisign_key *key = NULL;
    struct body b = {0};
    int verdict;

    if (s == NULL || file == NULL ||
        file->struct_size < offsetof(struct dopa_validator_file, size) + sizeof file->size ||
        file->remote_url == NULL)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "no file or no remote URL");
    b.data = malloc(SIG_MAX_BYTES);
    if (b.data == NULL)
        return validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");

    verdict = fetch_signature(s, file->remote_url, &b, why);
    if (verdict != GO_ON)
        goto done;
    verdict = parse_signature(b.data, b.len, &sig, why);
    if (verdict != GO_ON)
        goto done;
    for (size_t i = 0; i < s->n_keys && key == NULL; i++)
        if (memcmp(s->keys[i].id, sig.key_id, KEY_ID_BYTES) == 0)
            key = &s->keys[i];
    if (key == NULL) {
        char id[17];
        key_id_text(sig.key_id, id);
        verdict =
            validate_error_set(why, DOPA_VALIDATOR_INVALID,
                               "signed with key id %s, which is not a configured public-key", id);
        goto done;
    }
    /* The comment first: it is cheap, and the file may be many GiB. */
    switch (comment_verifies(&sig, key)) {
    case 1:
        break;
    case 0:
        verdict = validate_error_set(why, DOPA_VALIDATOR_INVALID,
                                     "the trusted comment's signature does not verify");
        goto done;
    default:
        verdict = validate_error_set(why, DOPA_VALIDATOR_ERROR, "out of memory");
        goto done;
    }
    verdict = content_verifies(file, &sig, key, why);
    if (verdict == GO_ON)
        verdict = DOPA_VALIDATOR_VALID;
done:
    free(b.data);
    return verdict;
}

static int minisign_validate(void *state, const struct dopa_validator_file *file, char *reason,
                             size_t reason_size)
{
    validate_error why = {0};
    int verdict = check(state, file, &why);
    if (verdict != DOPA_VALIDATOR_VALID && reason != NULL && reason_size > 0)
        snprintf(reason, reason_size, "%s", why.text);
    return verdict;
}

static const struct dopa_validator minisign_validator = {
    .abi_version = DOPA_VALIDATOR_ABI_VERSION,
    .struct_size = sizeof(struct dopa_validator),
    .name = "minisign",
    .version = "1.0",
    .init = minisign_init,
    .validate = minisign_validate,
    .fini = minisign_fini,
};

__attribute__((visibility("default"))) const struct dopa_validator *dopa_validator_entry(void)
{
    return &minisign_validator;
}

/*
 * Publisher keys: Ed25519 key pairs, their one-line text forms
 * ("dopa-pub1:..." and "dopa-sec1:..."), key ids, and the key files that
 * dopa-manifest writes and reads. Secret keys stay in guarded memory.
 */
#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "validate.h"

#define PUB_PREFIX   "dopa-pub1:"
#define SEC_PREFIX   "dopa-sec1:"
#define B64_VARIANT  sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define KEY_FILE_MAX 4096

struct validate_secret_key {
    uint8_t seed[crypto_sign_SEEDBYTES];
    uint8_t sk[crypto_sign_SECRETKEYBYTES];
    validate_public_key pub;
};

void validate_key_id(const uint8_t key[crypto_sign_PUBLICKEYBYTES],
                     uint8_t id[VALIDATE_KEY_ID_BYTES])
{
    static const uint8_t personal[crypto_generichash_blake2b_PERSONALBYTES] = "dopa-key-id";
    (void)validate_init();
    crypto_generichash_blake2b_salt_personal(id, VALIDATE_KEY_ID_BYTES, key,
                                             crypto_sign_PUBLICKEYBYTES, NULL, 0, NULL, personal);
}

static int secret_key_from_seed(const uint8_t seed[crypto_sign_SEEDBYTES],
                                validate_secret_key **out)
{
    int err = validate_init();
    if (err != VALIDATE_OK)
        return err;
    validate_secret_key *sk = sodium_malloc(sizeof *sk);
    if (sk == NULL)
        return VALIDATE_ENOMEM;
    memcpy(sk->seed, seed, sizeof sk->seed);
    crypto_sign_seed_keypair(sk->pub.key, sk->sk, sk->seed);
    validate_key_id(sk->pub.key, sk->pub.id);
    *out = sk;
    return VALIDATE_OK;
}

int validate_secret_key_generate(validate_secret_key **out)
{
    int err = validate_init();
    if (err != VALIDATE_OK)
        return err;
    uint8_t seed[crypto_sign_SEEDBYTES];
    randombytes_buf(seed, sizeof seed);
    err = secret_key_from_seed(seed, out);
    sodium_memzero(seed, sizeof seed);
    return err;
}

void validate_secret_key_free(validate_secret_key *sk)
{
    if (sk != NULL)
        sodium_free(sk); /* wipes the memory */
}

const validate_public_key *validate_secret_key_public(const validate_secret_key *sk)
{
    return &sk->pub;
}

int validate_secret_key_sign(const validate_secret_key *sk, const uint8_t *msg, size_t len,
                             uint8_t sig[crypto_sign_BYTES])
{
    return crypto_sign_detached(sig, NULL, msg, len, sk->sk) == 0 ? VALIDATE_OK : VALIDATE_ECRYPTO;
}

/* Decodes "<prefix><base64 of exactly n bytes>" surrounded by blanks. */
static int decode_key_text(const char *text, size_t text_len, const char *prefix, uint8_t *bin,
                           size_t n)
{
    while (text_len > 0 && isspace((unsigned char)*text)) {
        text++;
        text_len--;
    }
    while (text_len > 0 && isspace((unsigned char)text[text_len - 1]))
        text_len--;
    size_t plen = strlen(prefix);
    if (text_len <= plen || memcmp(text, prefix, plen) != 0)
        return VALIDATE_EKEY_FORMAT;
    /* libsodium 1.0.18 takes bytes 0x80-0xff for digits: check the alphabet. */
    for (size_t i = plen; i < text_len; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_'))
            return VALIDATE_EKEY_FORMAT;
    }
    size_t bin_len = 0;
    const char *end = NULL;
    if (sodium_base642bin(bin, n, text + plen, text_len - plen, NULL, &bin_len, &end,
                          B64_VARIANT) != 0 ||
        bin_len != n || end != text + text_len)
        return VALIDATE_EKEY_FORMAT;
    return VALIDATE_OK;
}

/* The first line that is neither blank nor a '#' comment. */
static int first_key_line(const char *buf, const char **line, size_t *len)
{
    const char *p = buf;
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        const char *q = p;
        while (q < p + n && isspace((unsigned char)*q))
            q++;
        if (q < p + n && *q != '#') {
            *line = p;
            *len = n;
            return VALIDATE_OK;
        }
        p += n + (eol != NULL);
    }
    return VALIDATE_EKEY_FORMAT;
}

void validate_public_key_text(const validate_public_key *pk, char out[VALIDATE_PUBLIC_KEY_TEXT_MAX])
{
    size_t plen = strlen(PUB_PREFIX);
    memcpy(out, PUB_PREFIX, plen);
    sodium_bin2base64(out + plen, VALIDATE_PUBLIC_KEY_TEXT_MAX - plen, pk->key, sizeof pk->key,
                      B64_VARIANT);
}

static int public_key_from_text(const char *text, size_t len, validate_public_key *out)
{
    int err = validate_init();
    if (err != VALIDATE_OK)
        return err;
    validate_public_key pk;
    err = decode_key_text(text, len, PUB_PREFIX, pk.key, sizeof pk.key);
    if (err != VALIDATE_OK)
        return err;
    if (!crypto_core_ed25519_is_valid_point(pk.key))
        return VALIDATE_EKEY_FORMAT;
    validate_key_id(pk.key, pk.id);
    *out = pk;
    return VALIDATE_OK;
}

int validate_public_key_parse(const char *text, validate_public_key *out)
{
    if (text == NULL || out == NULL)
        return VALIDATE_EINVAL;
    return public_key_from_text(text, strlen(text), out);
}

int validate_public_key_load(const char *path, validate_public_key *out, validate_error *why)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *line = NULL;
    size_t line_len = 0;
    int err = validate_read_file(path, KEY_FILE_MAX, &buf, &len, NULL, NULL, why);
    if (err == VALIDATE_ETOOBIG)
        return validate_error_set(why, VALIDATE_EKEY_FORMAT,
                                  "%s: not a dopa public key (larger than %d bytes)", path,
                                  KEY_FILE_MAX);
    if (err != VALIDATE_OK)
        return err;
    if (strlen((char *)buf) != len || first_key_line((char *)buf, &line, &line_len) != 0 ||
        public_key_from_text(line, line_len, out) != VALIDATE_OK)
        err = validate_error_set(
            why, VALIDATE_EKEY_FORMAT,
            "%s: not a dopa public key (expected a line \"" PUB_PREFIX "...\")", path);
    free(buf);
    return err;
}

int validate_secret_key_save(const validate_secret_key *sk, const char *path, int overwrite,
                             validate_error *why)
{
    char id[2 * VALIDATE_KEY_ID_BYTES + 1];
    char pub_text[VALIDATE_PUBLIC_KEY_TEXT_MAX];
    char seed_b64[sodium_base64_ENCODED_LEN(crypto_sign_SEEDBYTES, B64_VARIANT)];
    char text[512];
    char pub_path[PATH_MAX], sec_tmp[PATH_MAX], pub_tmp[PATH_MAX];
    int err;

    validate_hex(sk->pub.id, sizeof sk->pub.id, id);
    validate_public_key_text(&sk->pub, pub_text);
    if (snprintf(pub_path, sizeof pub_path, "%s.pub", path) >= (int)sizeof pub_path)
        return validate_error_set(why, VALIDATE_EINVAL, "%s: path too long", path);
    struct stat st;
    if (!overwrite && (lstat(path, &st) == 0 || lstat(pub_path, &st) == 0))
        return validate_error_set(why, VALIDATE_EEXISTS,
                                  "%s or %s exists; refusing to overwrite a key", path, pub_path);

    /* Both files are written in full before either gets its name, so a
     * failure leaves the old pair (or nothing) in place. */
    sodium_bin2base64(seed_b64, sizeof seed_b64, sk->seed, sizeof sk->seed, B64_VARIANT);
    int n = snprintf(text, sizeof text,
                     "# dopa publisher secret key (Ed25519). Keep it private.\n"
                     "# key id: %s\n" SEC_PREFIX "%s\n",
                     id, seed_b64);
    err = validate_temp_write(path, text, (size_t)n, 0600, sec_tmp, why);
    sodium_memzero(text, sizeof text);
    sodium_memzero(seed_b64, sizeof seed_b64);
    if (err != VALIDATE_OK)
        return err;
    n = snprintf(text, sizeof text, "# dopa publisher public key\n# key id: %s\n%s\n", id,
                 pub_text);
    err = validate_temp_write(pub_path, text, (size_t)n, 0644, pub_tmp, why);
    if (err != VALIDATE_OK) {
        unlink(sec_tmp);
        return err;
    }
    /* The public key first: if the secret key then fails, the old secret
     * key is still there rather than lost. */
    err = validate_temp_commit(pub_tmp, pub_path, overwrite, why);
    if (err != VALIDATE_OK) {
        unlink(sec_tmp);
        return err;
    }
    err = validate_temp_commit(sec_tmp, path, overwrite, why);
    if (err != VALIDATE_OK && !overwrite)
        unlink(pub_path); /* the .pub we just created has no secret key */
    return err;
}

int validate_secret_key_load(const char *path, validate_secret_key **out, validate_error *why)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    unsigned mode = 0;
    const char *line = NULL;
    size_t line_len = 0;
    uint8_t seed[crypto_sign_SEEDBYTES];
    int err = validate_read_file(path, KEY_FILE_MAX, &buf, &len, &mode, NULL, why);
    if (err == VALIDATE_ETOOBIG)
        return validate_error_set(why, VALIDATE_EKEY_FORMAT,
                                  "%s: not a dopa secret key (larger than %d bytes)", path,
                                  KEY_FILE_MAX);
    if (err != VALIDATE_OK)
        return err;
    if ((mode & 077) != 0) {
        err = validate_error_set(why, VALIDATE_EKEY_PERMS,
                                 "%s: mode %04o gives other users access to the secret key; run "
                                 "`chmod 600 %s`",
                                 path, mode & 07777, path);
        goto done;
    }
    if (strlen((char *)buf) != len || first_key_line((char *)buf, &line, &line_len) != 0 ||
        decode_key_text(line, line_len, SEC_PREFIX, seed, sizeof seed) != VALIDATE_OK) {
        err = validate_error_set(
            why, VALIDATE_EKEY_FORMAT,
            "%s: not a dopa secret key (expected a line \"" SEC_PREFIX "...\")", path);
        goto done;
    }
    err = secret_key_from_seed(seed, out);
    if (err != VALIDATE_OK)
        validate_error_set(why, err, "%s: %s", path, validate_strerror(err));
done:
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(buf, len);
    free(buf);
    return err;
}

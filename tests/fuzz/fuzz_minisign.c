/*
 * Fuzz target: the minisign plugin's two parsers of outside bytes, the
 * .minisig signature parser (parse_signature) and the configuration parser
 * behind init().
 *
 * The first byte of an input chooses the parser:
 *   'c'        the rest is a configuration: it is passed, NUL-terminated, to
 *              the plugin's init() (as dopad passes minisign.conf), and to
 *              fini() when init succeeds;
 *   any other  the rest is a .minisig file (the seeds use 's').
 *
 * The parsers are static in the plugin, and the plugin must export nothing
 * but dopa_validator_entry, so this file #includes minisign.c and calls them
 * directly; the plugin's source is compiled here unchanged.
 *
 * A signature that parses must be consistent (its trusted comment lies inside
 * the input and holds no line break or NUL), must parse again to the same
 * fields once written out canonically, and is then taken through the key
 * lookup and the trusted-comment check that validate() does, against the
 * keys of the seeds (corpus/minisign/sig-prehashed, sig-legacy: key A;
 * sig-other-key: key B; sig-unknown-key: a third key, not configured). The
 * secret keys were thrown away.
 */
#include <stdarg.h>
#include <stdio.h>

/* init() reports every refused configuration on stderr (dopad's log); a
 * fuzzer refuses millions, so here the message is formatted (printf bugs
 * still show) and dropped. Only minisign.c's fprintf calls are affected. */
static int fuzz_quiet_fprintf(FILE *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define fprintf fuzz_quiet_fprintf
#include "minisign.c"
#undef fprintf

static int fuzz_quiet_fprintf(FILE *f, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    (void)f;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    return n;
}

#define FUZZ_KEYS_CONFIG                                                                           \
    "public-key = RWRJU641C6kiid8GYyrRJ9QmraJWRRaz9fo4KkJRKVQNx3sMSlIml/I/\n"                      \
    "public-key = RWQ90SvL27l8GoKYWl9isU1OoUdI2K6Y+3Gjvr+bwVlmwjQ0+E73Mg5N\n"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes sig out as a canonical .minisig and parses that again. */
static void fuzz_signature_round_trip(const struct minisign_sig *sig)
{
    uint8_t blob[SIG_BLOB];
    char blob64[sodium_base64_ENCODED_LEN(SIG_BLOB, sodium_base64_VARIANT_ORIGINAL)];
    char global64[sodium_base64_ENCODED_LEN(crypto_sign_BYTES, sodium_base64_VARIANT_ORIGINAL)];
    memcpy(blob, sig->is_prehashed ? "ED" : "Ed", ALG_BYTES);
    memcpy(blob + ALG_BYTES, sig->key_id, KEY_ID_BYTES);
    memcpy(blob + ALG_BYTES + KEY_ID_BYTES, sig->sig, crypto_sign_BYTES);
    sodium_bin2base64(blob64, sizeof blob64, blob, sizeof blob, sodium_base64_VARIANT_ORIGINAL);
    sodium_bin2base64(global64, sizeof global64, sig->global_sig, sizeof sig->global_sig,
                      sodium_base64_VARIANT_ORIGINAL);

    /* The four lines, each ending in "\n"; NULL stands for the comment. */
    const char *parts[] = {
        UNTRUSTED_PREFIX "again\n", blob64, "\n" TRUSTED_PREFIX, NULL, "\n", global64, "\n"};
    size_t lens[sizeof parts / sizeof parts[0]], n = 0, at = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        lens[i] = parts[i] != NULL ? strlen(parts[i]) : sig->comment_len;
        n += lens[i];
    }
    char *text = malloc(n);
    if (text == NULL)
        return;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        memcpy(text + at, parts[i] != NULL ? parts[i] : sig->comment, lens[i]);
        at += lens[i];
    }
    struct minisign_sig again;
    validate_error why = {0};
    if (parse_signature((const uint8_t *)text, n, &again, &why) != GO_ON ||
        again.is_prehashed != sig->is_prehashed ||
        memcmp(again.key_id, sig->key_id, KEY_ID_BYTES) != 0 ||
        memcmp(again.sig, sig->sig, sizeof sig->sig) != 0 ||
        again.comment_len != sig->comment_len ||
        memcmp(again.comment, sig->comment, sig->comment_len) != 0 ||
        memcmp(again.global_sig, sig->global_sig, sizeof sig->global_sig) != 0)
        abort();
    free(text);
}

static void fuzz_signature(const struct minisign_state *keys, const uint8_t *data, size_t size)
{
    struct minisign_sig sig;
    validate_error why = {0};
    if (parse_signature(data, size, &sig, &why) != GO_ON)
        return;
    const char *text = (const char *)data;
    if (sig.comment < text || sig.comment_len > size ||
        (size_t)(sig.comment - text) > size - sig.comment_len ||
        memchr(sig.comment, '\n', sig.comment_len) != NULL ||
        memchr(sig.comment, '\r', sig.comment_len) != NULL ||
        memchr(sig.comment, '\0', sig.comment_len) != NULL)
        abort();
    fuzz_signature_round_trip(&sig);

    char id[17];
    key_id_text(sig.key_id, id);
    for (size_t i = 0; keys != NULL && i < keys->n_keys; i++)
        if (memcmp(keys->keys[i].id, sig.key_id, KEY_ID_BYTES) == 0 &&
            comment_verifies(&sig, &keys->keys[i]) < 0)
            abort();
}

static void fuzz_config(const uint8_t *data, size_t size)
{
    const struct dopa_validator *v = dopa_validator_entry();
    char *config = malloc(size + 1);
    if (config == NULL)
        return;
    memcpy(config, data, size);
    config[size] = '\0';
    void *state = NULL;
    if (v->init(&state, config) == 0) {
        const struct minisign_state *s = state;
        if (s == NULL || s->n_keys < 1 || s->n_keys > MAX_KEYS || s->timeout < 1 ||
            s->timeout > TIMEOUT_MAX)
            abort();
        for (size_t i = 0; i < s->n_keys; i++)
            for (size_t j = i + 1; j < s->n_keys; j++)
                if (memcmp(s->keys[i].id, s->keys[j].id, KEY_ID_BYTES) == 0)
                    abort();
        v->fini(state);
    }
    free(config);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Held for the whole run: init() and fini() then only count references
     * instead of setting libcurl (and its TLS library) up and down each time. */
    static int is_ready;
    static void *keys;
    if (!is_ready) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
            minisign_init(&keys, FUZZ_KEYS_CONFIG) != 0)
            abort();
        is_ready = 1;
    }
    if (size == 0)
        return 0;
    if (data[0] == 'c')
        fuzz_config(data + 1, size - 1);
    else
        fuzz_signature(keys, data + 1, size - 1);
    return 0;
}

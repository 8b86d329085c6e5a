/*
 * Fuzz target: the manifest parser and verifier on arbitrary bytes. The seed
 * corpus (corpus/manifest) holds manifests signed with the key below, so
 * mutations reach the signature check as well as the structural checks.
 */
#include <stdlib.h>

#include "validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_PUBKEY "dopa-pub1:" FUZZ_PUBKEY_B64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static validate_public_key key;
    static int have_key = -1;
    if (have_key < 0)
        have_key = validate_public_key_parse(FUZZ_PUBKEY, &key) == VALIDATE_OK;

    validate_manifest *m = NULL;
    validate_error why = {0};
    if (validate_manifest_parse(data, size, &m, &why) != VALIDATE_OK)
        return 0;
    /* What the parser accepted must be self-consistent. */
    if (m->encoded_len != size || m->piece_count > VALIDATE_MAX_PIECES ||
        m->piece_count != validate_piece_count(m->file_size, m->piece_size) ||
        !validate_piece_size_ok(m->piece_size))
        abort();
    /* Verify just before or at the expiry time, as the input's length
     * chooses, so both sides of the expiry check are reached. */
    uint64_t now = m->expires_at - (m->expires_at > 0 && size % 2 == 0);
    (void)validate_manifest_verify(m, &key, (size_t)have_key, now, &why);
    if (m->piece_count > 0) {
        uint64_t last = m->piece_count - 1;
        uint32_t len = validate_piece_length(m->file_size, m->piece_size, last);
        uint8_t *piece = calloc(1, len ? len : 1);
        if (piece != NULL) {
            (void)validate_manifest_check_piece(m, last, piece, len);
            free(piece);
        }
    }
    validate_manifest_free(m);
    return 0;
}

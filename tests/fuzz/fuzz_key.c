/* Fuzz target: the public key text parser (keys come from config files and
 * command lines). */
#include <stdlib.h>
#include <string.h>

#include "validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    validate_public_key pk;
    if (validate_public_key_parse(text, &pk) == VALIDATE_OK) {
        char back[VALIDATE_PUBLIC_KEY_TEXT_MAX];
        validate_public_key again;
        validate_public_key_text(&pk, back);
        if (validate_public_key_parse(back, &again) != VALIDATE_OK ||
            memcmp(again.key, pk.key, sizeof pk.key) != 0)
            abort();
    }
    free(text);
    return 0;
}

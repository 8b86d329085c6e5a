/* Fuzz target: the group key text parser (keys come from key files and
 * configuration). A key has exactly one text form: whatever the parser
 * accepts, stripped of its surrounding blanks, is what the key prints as. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "peer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    uint8_t key[PEER_GROUP_KEY_BYTES];
    if (peer_group_key_parse(text, key) == PEER_OK) {
        char back[PEER_GROUP_KEY_TEXT_MAX];
        uint8_t again[PEER_GROUP_KEY_BYTES];
        peer_group_key_text(key, back);
        const char *start = text;
        size_t len = strlen(text);
        while (len > 0 && isspace((unsigned char)*start)) {
            start++;
            len--;
        }
        while (len > 0 && isspace((unsigned char)start[len - 1]))
            len--;
        if (len != strlen(back) || memcmp(start, back, len) != 0 ||
            peer_group_key_parse(back, again) != PEER_OK || memcmp(again, key, sizeof key) != 0)
            abort();
    }
    free(text);
    return 0;
}

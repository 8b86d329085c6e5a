/*
 * Fuzz target: the control protocol's decoders (agent/proto/proto.c), both
 * directions, on arbitrary bytes. What decodes must encode again and decode
 * to the same thing.
 */
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static proto_request req, again;
    validate_error why = {0};
    if (proto_decode_request(data, size, &req, &why) == DOPA_OK) {
        proto_buf b;
        proto_buf_init(&b, PROTO_MAX_REQUEST);
        if (proto_encode_request(&req, &b) != DOPA_OK ||
            proto_decode_request(b.data, b.len, &again, &why) != DOPA_OK || again.op != req.op ||
            again.n_ranges != req.n_ranges || again.manifest_len != req.manifest_len ||
            strcmp(again.url, req.url) != 0 || strcmp(again.name, req.name) != 0 ||
            memcmp(again.id.bytes, req.id.bytes, 16) != 0)
            abort();
        proto_buf_free(&b);
    }
    proto_reply reply;
    if (proto_decode_reply(data, size, &reply, &why) == DOPA_OK) {
        proto_buf b;
        proto_buf_init(&b, PROTO_MAX_REPLY);
        if (proto_encode_reply(&reply, &b) != DOPA_OK)
            abort();
        proto_reply back;
        if (proto_decode_reply(b.data, b.len, &back, &why) != DOPA_OK ||
            back.n_jobs != reply.n_jobs || back.n_files != reply.n_files ||
            back.status != reply.status)
            abort();
        proto_reply_clear(&back);
        proto_buf_free(&b);
        proto_reply_clear(&reply);
    }
    return 0;
}

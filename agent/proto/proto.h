/*
 * The control protocol between libdopa and dopad: message layout, limits,
 * and the one parser for each direction.
 *
 * A message is a header and a sequence of fields:
 *
 *   offset size
 *   0      2    magic "DP"
 *   2      1    protocol version (DOPA_PROTOCOL_VERSION)
 *   3      1    kind: 1 request, 2 reply
 *   4      2    op (little-endian), the same in a reply as in its request
 *   6      2    reserved, 0
 *   8      ...  fields: tag (u16 LE), length (u32 LE), value
 *
 * Integers are 8 bytes little-endian; ids 16 bytes; strings are UTF-8
 * without NUL or control characters (a description may hold newlines and
 * tabs), each with its own maximum length. Job and file records inside a
 * reply are fields whose value is itself a sequence of fields. Each op has
 * the fields it requires and the fields it allows; anything else (an unknown
 * tag, a duplicate, a wrong length, a missing field, trailing bytes) makes
 * the whole message malformed, and a malformed request changes nothing.
 */
#ifndef DOPA_AGENT_PROTO_H
#define DOPA_AGENT_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "dopa.h"
#include "validate.h" /* validate_error */

/* The job and file information of dopa.h, opaque to its callers, who
 * read them only through the accessors (agent/client/info.c): dopad fills
 * them (agent_job_info, agent_file_info) and the codec carries them. No
 * program outside libdopa and dopad sees this layout, so a member may be
 * added here without breaking libdopa.so.1's ABI. */
typedef struct dopa_job_error {
    int context; /* enum dopa_error_context */
    int code;    /* a code of the module that failed (see the message) */
    int file;    /* index of the file it concerns, or -1 */
    long http_status;
    char message[DOPA_MESSAGE_MAX + 1];
} dopa_job_error;

struct dopa_job_info {
    dopa_id id;
    uint32_t owner; /* uid */
    int type;       /* enum dopa_job_type */
    int state;      /* enum dopa_state */
    int priority;   /* enum dopa_priority */
    char display_name[DOPA_NAME_MAX + 1];
    char description[DOPA_DESCRIPTION_MAX + 1];
    uint64_t bytes_total; /* DOPA_SIZE_UNKNOWN until every size is known */
    uint64_t bytes_transferred;
    uint32_t files_total;
    uint32_t files_transferred;
    uint64_t bytes_from_origin; /* transferred bytes by where they came from */
    uint64_t bytes_from_peers;
    uint64_t bytes_from_cache;
    uint64_t bytes_uploaded; /* of its content, sent to peers */
    int64_t created;         /* unix time in milliseconds */
    int64_t modified;
    int64_t transfer_completed; /* 0 until the job is TRANSFERRED */
    uint32_t error_count;       /* transient errors so far */
    int has_error;
    dopa_job_error error;
    uint32_t minimum_retry_delay; /* seconds */
    uint32_t no_progress_timeout; /* seconds */
    int proxy_usage;              /* enum dopa_proxy_usage */
    uint64_t version;             /* changes whenever anything in the job does */
    uint32_t notify_flags;        /* DOPA_NOTIFY_* */
    uint32_t validation_timeout;  /* seconds a file waits for SetValidationState */
    int validation_default_valid; /* the verdict when that time runs out */
};

struct dopa_file_info {
    char remote_url[DOPA_URL_MAX + 1];
    char local_name[DOPA_PATH_MAX + 1];
    char temporary_name[DOPA_PATH_MAX + 1];
    uint64_t bytes_total; /* DOPA_SIZE_UNKNOWN until known */
    uint64_t bytes_transferred;
    uint64_t bytes_from_origin; /* transferred bytes by where they came from */
    uint64_t bytes_from_peers;
    uint64_t bytes_from_cache;
    uint32_t ranges;  /* number of byte ranges, 0 for the whole file */
    int transferred;  /* every byte is here and checked */
    int has_manifest; /* pieces are checked against a signed manifest */
    int has_sha256;   /* the whole file is checked against a SHA-256 */
    int validation;   /* enum dopa_validation */
};

#define PROTO_HEADER_BYTES 8
/* A request may carry a manifest (at most ~4 MiB); a reply a page of records. */
#define PROTO_MAX_REQUEST (5u * 1024u * 1024u)
#define PROTO_MAX_REPLY   (16u * 1024u * 1024u)
#define PROTO_LIST_PAGE   200  /* jobs per reply */
#define PROTO_FILE_PAGE   50   /* files per reply */
#define PROTO_EVENT_PAGE  16   /* notifications per reply */
#define PROTO_MAX_ARGS    32   /* in a notify command line */
#define PROTO_ARG_MAX     1024 /* bytes per argument */

enum proto_op {
    PROTO_WHOAMI = 1,
    PROTO_CREATE = 2,
    PROTO_GET = 3,
    PROTO_LIST = 4,
    PROTO_ADD_FILE = 5,
    PROTO_LIST_FILES = 6,
    PROTO_RESUME = 7,
    PROTO_SUSPEND = 8,
    PROTO_CANCEL = 9,
    PROTO_COMPLETE = 10,
    PROTO_TAKE_OWNERSHIP = 11,
    PROTO_SET_PRIORITY = 12,
    PROTO_SET_NAME = 13,
    PROTO_SET_DESCRIPTION = 14,
    PROTO_SET_RETRY_DELAY = 15,
    PROTO_SET_NO_PROGRESS = 16,
    PROTO_SET_PROXY = 17,
    PROTO_GET_PROXY = 18,
    PROTO_WAIT = 19,
    PROTO_SET_NOTIFY_FLAGS = 20,
    PROTO_SET_NOTIFY_CMDLINE = 21,
    PROTO_GET_NOTIFY = 22,
    PROTO_REGISTER = 23, /* a client takes a job's notifications */
    PROTO_UNREGISTER = 24,
    PROTO_EVENTS = 25,     /* a client waits for its notifications */
    PROTO_EVENT_DONE = 26, /* a client's callback returned */
    PROTO_SET_VALIDATION = 27,
    PROTO_SET_VALIDATION_POLICY = 28,
    PROTO_STATS = 29, /* the agent's counters */
    PROTO_OP_END
};

/* A decoded request. Strings are NUL-terminated copies; `manifest` points
 * into the message it was decoded from. */
typedef struct proto_request {
    int op;
    dopa_id id;
    char name[DOPA_NAME_MAX + 1];
    char description[DOPA_DESCRIPTION_MAX + 1];
    char url[DOPA_URL_MAX + 1];
    char path[DOPA_PATH_MAX + 1];
    char proxy[DOPA_PROXY_MAX + 1];
    char bypass[DOPA_PROXY_MAX + 1];
    dopa_range ranges[DOPA_MAX_RANGES];
    size_t n_ranges;
    uint8_t sha256[32];
    int has_sha256;
    const uint8_t *manifest;
    size_t manifest_len;
    uint64_t type, priority, seconds, proxy_usage, all_users, seen, timeout_ms, start;
    dopa_id cursor;
    int has_cursor;
    uint64_t flags, event, ok, valid;
    uint8_t client[16];
    char args[PROTO_MAX_ARGS][PROTO_ARG_MAX + 1];
    size_t n_args;
} proto_request;

/* The kinds of notification, on the wire (callback.h's enum cb_kind). */
enum proto_event_kind {
    PROTO_EVENT_JOB_TRANSFERRED = 1,
    PROTO_EVENT_JOB_ERROR = 2,
    PROTO_EVENT_JOB_MODIFICATION = 3,
    PROTO_EVENT_FILE_TRANSFERRED = 4,
};

/* A notification handed to a client. */
typedef struct proto_event {
    uint64_t id;
    dopa_id job;
    uint64_t kind; /* enum proto_event_kind */
    int64_t file;  /* FileTransferred: the file's index; else -1 */
} proto_event;

/* A decoded reply. jobs and files are allocated (proto_reply_clear frees). */
typedef struct proto_reply {
    int op;
    uint64_t status; /* DOPA_OK or DOPA_E* */
    char message[DOPA_MESSAGE_MAX + 1];
    dopa_id id;
    int has_id;
    dopa_job_info *jobs;
    size_t n_jobs;
    dopa_file_info *files;
    size_t n_files;
    uint64_t more; /* another page follows */
    uint64_t uid;
    char version[64];
    uint64_t partial;
    uint64_t proxy_usage;
    char proxy[DOPA_PROXY_MAX + 1];
    char bypass[DOPA_PROXY_MAX + 1];
    proto_event events[PROTO_EVENT_PAGE];
    size_t n_events;
    uint64_t flags;
    char args[PROTO_MAX_ARGS][PROTO_ARG_MAX + 1];
    size_t n_args;
    dopa_agent_stats stats;
} proto_reply;

/* A growable output buffer; never grows beyond `max`. */
typedef struct proto_buf {
    uint8_t *data;
    size_t len, cap, max;
    int failed; /* out of memory or over max: the message is void */
} proto_buf;

void proto_buf_init(proto_buf *b, size_t max);
void proto_buf_free(proto_buf *b);

/* Encoders: 0, DOPA_ENOMEM or DOPA_ELIMIT. A reply with status != 0
 * carries only the status and the message. */
int proto_encode_request(const proto_request *r, proto_buf *out);
int proto_encode_reply(const proto_reply *r, proto_buf *out);

/* Strict decoders: 0 or DOPA_EPROTO (DOPA_EVERSION for another protocol
 * version, DOPA_ENOMEM), with the reason in `why`. proto_decode_request keeps pointers
 * into `data` (the manifest). */
int proto_decode_request(const uint8_t *data, size_t len, proto_request *out, validate_error *why);
int proto_decode_reply(const uint8_t *data, size_t len, proto_reply *out, validate_error *why);
void proto_reply_clear(proto_reply *r);

/* The op of a message whose header is well formed, else -1; lets a server
 * answer a malformed request under the right op. */
int proto_peek_op(const uint8_t *data, size_t len);

#endif

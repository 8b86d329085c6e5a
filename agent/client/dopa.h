/*
 * dopa.h: libdopa, the client library of dopad.
 *
 * Applications hand download jobs to dopad through this API, which follows
 * BITS (IBackgroundCopyManager, IBackgroundCopyJob): a job has files, a
 * state, a priority, progress, times and an error; a new job is SUSPENDED
 * until dopa_job_resume(); files appear at their destination only when the
 * job is completed with dopa_job_complete().
 *
 * Connections: dopa_connect() talks to dopad over its control socket. A
 * caller sees and changes only the jobs of its own user, except root, which
 * sees all. Every function that returns an int returns 0 or a DOPA_E*
 * code (dopa_strerror()), but the accessors, which return what they read.
 * A manager outlives dopad: when dopad restarts, the manager connects
 * again by itself (and registers its callbacks again). While dopad cannot
 * be reached, a call waits a few seconds for it and then fails with
 * DOPA_ECONNECT; the next call on the same manager works once dopad is
 * back. A call that reached dopad and lost it before the answer fails
 * with DOPA_ECONNECT too, and may have been carried out.
 *
 * Threads: a dopa_manager may be used by several threads at once; each call
 * is an independent request. Results are written only to the caller's own
 * out-parameters.
 *
 * Ownership: what the library allocates for the caller (a dopa_job_info,
 * a list, a notify command line) is freed with one dopa_free(); each
 * function says what it hands out. Strings and structs passed in are only
 * read during the call.
 *
 * ABI: libdopa.so.1 (symbol version LIBDOPA_1). The job and file
 * information are opaque objects read through accessor functions, so they
 * may grow. The structs that stay open (dopa_agent_stats, dopa_callbacks,
 * dopa_file_options) begin with a size that the caller sets to the sizeof
 * it was built with (their DOPA_*_INIT initialisers do): the library reads
 * or fills only what that size covers, members are only ever added at the
 * end, and so a program built against an older dopa.h keeps working with
 * a newer library. A size smaller than the struct had in libdopa.so.1's
 * first release is DOPA_EINVAL.
 */
#ifndef DOPA_H
#define DOPA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header (the project's). dopa_version() gives the
 * version of the library a program runs with, which may be another. */
#define DOPA_VERSION_MAJOR 0
#define DOPA_VERSION_MINOR 1
#define DOPA_VERSION_PATCH 0

#define DOPA_PROTOCOL_VERSION 1

/* The version of the library running, "MAJOR.MINOR.PATCH"; never NULL. */
const char *dopa_version(void);

/* Frees what the library allocated for the caller (see each function):
 * a dopa_job_info, a list of dopa_job_list() or dopa_job_list_files()
 * with its entries, the command line of dopa_job_get_notify(). NULL does
 * nothing. */
void dopa_free(void *p);

enum dopa_err {
    DOPA_OK = 0,
    DOPA_ENOMEM = 1,       /* out of memory */
    DOPA_EINVAL = 2,       /* bad argument */
    DOPA_ECONNECT = 3,     /* cannot reach dopad */
    DOPA_EPROTO = 4,       /* malformed or unexpected message */
    DOPA_ENOTFOUND = 5,    /* no such job (or not yours) */
    DOPA_EACCESS = 6,      /* not allowed for this user */
    DOPA_ESTATE = 7,       /* the job's state does not allow this */
    DOPA_ELIMIT = 8,       /* a limit was reached (jobs, files, sizes) */
    DOPA_EIO = 9,          /* a local file could not be used */
    DOPA_ETIMEOUT = 10,    /* no answer in time */
    DOPA_EVERSION = 11,    /* protocol version not supported */
    DOPA_EINTERNAL = 12,   /* dopad failed (its log says why) */
    DOPA_EMANIFEST = 13,   /* the manifest was rejected */
    DOPA_EVALIDATION = 14, /* the content failed validation */
    DOPA_ERR_END
};

/* The message for a DOPA_E* code; never NULL. */
const char *dopa_strerror(int err);

/* What dopad said about the last call of this thread that it refused
 * ("" if it said nothing, or if the call failed before reaching it). */
const char *dopa_last_message(void);

/* ------------------------------------------------------------------ */
/* The job model                                                      */

enum dopa_state {
    DOPA_STATE_QUEUED = 0,
    DOPA_STATE_CONNECTING = 1,
    DOPA_STATE_TRANSFERRING = 2,
    DOPA_STATE_SUSPENDED = 3,
    DOPA_STATE_ERROR = 4,
    DOPA_STATE_TRANSIENT_ERROR = 5,
    DOPA_STATE_TRANSFERRED = 6,
    DOPA_STATE_ACKNOWLEDGED = 7,
    DOPA_STATE_CANCELLED = 8,
};

enum dopa_priority {
    DOPA_PRIORITY_FOREGROUND = 0,
    DOPA_PRIORITY_HIGH = 1,
    DOPA_PRIORITY_NORMAL = 2,
    DOPA_PRIORITY_LOW = 3,
};

enum dopa_job_type {
    DOPA_JOB_DOWNLOAD = 0,
};

/* Where an error happened. */
enum dopa_error_context {
    DOPA_CONTEXT_NONE = 0,
    DOPA_CONTEXT_GENERAL = 1,     /* dopad itself */
    DOPA_CONTEXT_LOCAL_FILE = 2,  /* the temporary or destination file */
    DOPA_CONTEXT_REMOTE_FILE = 3, /* the origin server */
    DOPA_CONTEXT_PEER = 4,        /* a LAN peer */
    DOPA_CONTEXT_VALIDATION = 5,  /* hashes, manifests, validators */
};

enum dopa_proxy_usage {
    DOPA_PROXY_SYSTEM = 0,   /* the environment of dopad (BITS: PRECONFIG) */
    DOPA_PROXY_NONE = 1,     /* direct (BITS: NO_PROXY) */
    DOPA_PROXY_OVERRIDE = 2, /* the job's own proxy and bypass list */
};

#define DOPA_NAME_MAX        256
#define DOPA_DESCRIPTION_MAX 1024
#define DOPA_URL_MAX         8192
#define DOPA_PATH_MAX        4095
#define DOPA_MESSAGE_MAX     511
#define DOPA_PROXY_MAX       1024
#define DOPA_MAX_FILES       1000 /* per job */
#define DOPA_MAX_RANGES      1000 /* per file */
#define DOPA_SIZE_UNKNOWN    UINT64_MAX
#define DOPA_MAX_NOTIFY_ARGS 32   /* in a notify command line */
#define DOPA_NOTIFY_ARG_MAX  1024 /* bytes per argument */
#define DOPA_LENGTH_TO_EOF   UINT64_MAX

/* Notify flags (BITS's BG_NOTIFY_*): which events a job reports. */
#define DOPA_NOTIFY_JOB_TRANSFERRED  0x1u
#define DOPA_NOTIFY_JOB_ERROR        0x2u
#define DOPA_NOTIFY_DISABLE          0x4u
#define DOPA_NOTIFY_JOB_MODIFICATION 0x8u
#define DOPA_NOTIFY_FILE_TRANSFERRED 0x10u /* and wait for SetValidationState */
#define DOPA_NOTIFY_DEFAULT          (DOPA_NOTIFY_JOB_TRANSFERRED | DOPA_NOTIFY_JOB_ERROR)
#define DOPA_NOTIFY_ALL              0x1fu

/* Where a file stands in validation (SetValidationState and plugins). */
enum dopa_validation {
    DOPA_VALIDATION_NONE = 0,    /* not yet judged */
    DOPA_VALIDATION_PENDING = 1, /* waiting for the client's verdict */
    DOPA_VALIDATION_VALID = 2,
    DOPA_VALIDATION_INVALID = 3,
};

/* BITS's defaults. */
#define DOPA_DEFAULT_MIN_RETRY_DELAY     600     /* seconds */
#define DOPA_DEFAULT_NO_PROGRESS_TIMEOUT 1209600 /* seconds: 14 days */
#define DOPA_DEFAULT_VALIDATION_TIMEOUT  600     /* seconds */

typedef struct dopa_id {
    uint8_t bytes[16];
} dopa_id;

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (37 bytes with the NUL). */
void dopa_id_format(const dopa_id *id, char out[37]);
/* Parses the form above; DOPA_EINVAL otherwise. */
int dopa_id_parse(const char *text, dopa_id *out);

/* A job's information at one moment, and a file's: opaque objects, read
 * with the dopa_job_info_* and dopa_file_info_* accessors below. */
typedef struct dopa_job_info dopa_job_info;
typedef struct dopa_file_info dopa_file_info;

/* Byte ranges of a remote file: a fixed layout that will not grow (it is
 * an array's element). */
typedef struct dopa_range {
    uint64_t offset;
    uint64_t length; /* DOPA_LENGTH_TO_EOF for the rest of the file */
} dopa_range;

/* How a file is fetched and checked (dopa_job_add_file). Set size (or
 * start from DOPA_FILE_OPTIONS_INIT); members left out are 0. */
typedef struct dopa_file_options {
    size_t size;              /* sizeof(dopa_file_options) */
    const dopa_range *ranges; /* the local file is these ranges, in order */
    size_t n_ranges;
    const uint8_t *expected_sha256; /* 32 bytes, or NULL */
    const void *manifest;           /* a signed manifest (validate/MANIFEST.md), or NULL */
    size_t manifest_len;
} dopa_file_options;
#define DOPA_FILE_OPTIONS_INIT                                                                     \
    {                                                                                              \
        .size = sizeof(dopa_file_options)                                                          \
    }

/* ------------------------------------------------------------------ */
/* Connections                                                        */

typedef struct dopa_manager dopa_manager;

/* The socket dopad listens on by default for this user: root uses the
 * system instance (/run/dopa/control.sock); others use
 * $XDG_RUNTIME_DIR/dopa/control.sock when it exists, else the system one.
 * $DOPA_SOCKET overrides both. Writes at most len bytes. */
void dopa_default_socket(char *out, size_t len);

/* Connects to dopad (socket_path NULL: the default); DOPA_ECONNECT when
 * nothing listens there. */
int dopa_connect(const char *socket_path, dopa_manager **out);
/* Unregisters the manager's callbacks, lets the calls under way end (dopad
 * answers them; after 2 s they are stopped), ends the callback thread and
 * the connection, and frees m. Within a few seconds even when dopad does
 * not answer. */
void dopa_disconnect(dopa_manager *m);

/* Who dopad thinks the caller is, and dopad's version. */
int dopa_whoami(dopa_manager *m, uint32_t *uid, char *version, size_t version_len);

/* The agent's counters since it started (any user may read them). The
 * caller sets size (or starts from DOPA_AGENT_STATS_INIT); the library
 * fills what it covers. */
typedef struct dopa_agent_stats {
    size_t size;                                      /* sizeof(dopa_agent_stats) */
    uint64_t jobs;                                    /* jobs it knows now */
    uint64_t from_origin, from_peers, from_cache;     /* bytes received, by source */
    uint64_t uploaded;                                /* piece bytes sent to peers */
    uint64_t peers, banned;                           /* peers known now, banned now */
    uint64_t bans, bad_pieces, timeouts, refused;     /* since start */
    uint64_t cache_entries, cache_bytes, cache_limit; /* the content cache */
    char peer_url[128];                               /* where it serves peers ("": no peers) */
    /* Added after peer_url: a caller whose size ends there gets the rest
     * left out. */
    uint64_t origin_failures;  /* origin requests that failed or stalled while peers went on */
    uint64_t origin_peak;      /* most origin requests at once since start */
    uint64_t control_sent;     /* peer messages other than pieces, sent (availability, beacons) */
    uint64_t control_received; /* the same, received */
} dopa_agent_stats;
#define DOPA_AGENT_STATS_INIT                                                                      \
    {                                                                                              \
        .size = sizeof(dopa_agent_stats)                                                           \
    }
int dopa_agent_stats_get(dopa_manager *m, dopa_agent_stats *out);

/* ------------------------------------------------------------------ */
/* Jobs                                                               */

int dopa_job_create(dopa_manager *m, const char *display_name, int type, dopa_id *out);

/* The job's information now: *out is a new object for dopa_free() (NULL
 * when the call fails). */
int dopa_job_get(dopa_manager *m, const dopa_id *id, dopa_job_info **out);

/* The caller's jobs (root: everyone's when all_users is set), oldest first.
 * *out is a NULL-terminated array of *n pointers, one allocation with the
 * entries it points to: one dopa_free(*out) frees it all (never an entry
 * alone). With no jobs it holds just the NULL. */
int dopa_job_list(dopa_manager *m, int all_users, dopa_job_info ***out, size_t *n);

/* opts may be NULL (the whole file, no expected hash, no manifest). */
int dopa_job_add_file(dopa_manager *m, const dopa_id *id, const char *remote_url,
                      const char *local_name, const dopa_file_options *opts);
/* The job's files, numbered from 0: *out is a NULL-terminated array of *n
 * pointers, one allocation for one dopa_free(*out), as dopa_job_list's. */
int dopa_job_list_files(dopa_manager *m, const dopa_id *id, dopa_file_info ***out, size_t *n);

int dopa_job_resume(dopa_manager *m, const dopa_id *id);
int dopa_job_suspend(dopa_manager *m, const dopa_id *id);
/* Removes the temporary files; the job ends CANCELLED. */
int dopa_job_cancel(dopa_manager *m, const dopa_id *id);
/* Makes the files visible at their destinations; the job ends
 * ACKNOWLEDGED. Before the job is TRANSFERRED only the files that are
 * completely transferred appear (*partial, if not NULL, says so). */
int dopa_job_complete(dopa_manager *m, const dopa_id *id, int *partial);
/* Root only: the job becomes the caller's. */
int dopa_job_take_ownership(dopa_manager *m, const dopa_id *id);

int dopa_job_set_priority(dopa_manager *m, const dopa_id *id, int priority);
int dopa_job_set_display_name(dopa_manager *m, const dopa_id *id, const char *name);
int dopa_job_set_description(dopa_manager *m, const dopa_id *id, const char *description);
int dopa_job_set_minimum_retry_delay(dopa_manager *m, const dopa_id *id, uint32_t seconds);
int dopa_job_set_no_progress_timeout(dopa_manager *m, const dopa_id *id, uint32_t seconds);
/* proxy and bypass are used with DOPA_PROXY_OVERRIDE (bypass may be NULL). */
int dopa_job_set_proxy(dopa_manager *m, const dopa_id *id, int usage, const char *proxy,
                       const char *bypass);
int dopa_job_get_proxy(dopa_manager *m, const dopa_id *id, int *usage, char *proxy,
                       size_t proxy_len, char *bypass, size_t bypass_len);

/* Waits until the job's version differs from `seen` (or timeout_ms passes)
 * and returns its information as dopa_job_get() does: *out for
 * dopa_free(). Pass seen = 0 to return at once. */
int dopa_job_wait(dopa_manager *m, const dopa_id *id, uint64_t seen, int timeout_ms,
                  dopa_job_info **out);

/* ------------------------------------------------------------------ */
/* Job and file information                                           */

/* The accessors read an object of dopa_job_get(), dopa_job_wait(),
 * dopa_job_list(), dopa_job_list_files() or a file_transferred callback;
 * strings stay valid while the object does. Given NULL they return 0, ""
 * or an id of zeros, except where a 0 means something: the state, type,
 * priority and proxy usage are then -1, and the error's file -1. */
const dopa_id *dopa_job_info_id(const dopa_job_info *info);
uint32_t dopa_job_info_owner(const dopa_job_info *info); /* uid */
int dopa_job_info_type(const dopa_job_info *info);       /* enum dopa_job_type */
int dopa_job_info_state(const dopa_job_info *info);      /* enum dopa_state */
int dopa_job_info_priority(const dopa_job_info *info);   /* enum dopa_priority */
const char *dopa_job_info_display_name(const dopa_job_info *info);
const char *dopa_job_info_description(const dopa_job_info *info);
/* DOPA_SIZE_UNKNOWN until every file's size is known. */
uint64_t dopa_job_info_bytes_total(const dopa_job_info *info);
uint64_t dopa_job_info_bytes_transferred(const dopa_job_info *info);
uint32_t dopa_job_info_files_total(const dopa_job_info *info);
uint32_t dopa_job_info_files_transferred(const dopa_job_info *info);
/* The transferred bytes by where they came from, and the bytes of the
 * job's content sent to peers. */
uint64_t dopa_job_info_bytes_from_origin(const dopa_job_info *info);
uint64_t dopa_job_info_bytes_from_peers(const dopa_job_info *info);
uint64_t dopa_job_info_bytes_from_cache(const dopa_job_info *info);
uint64_t dopa_job_info_bytes_uploaded(const dopa_job_info *info);
/* Unix times in milliseconds; transfer_completed is 0 until the job is
 * TRANSFERRED. */
int64_t dopa_job_info_created(const dopa_job_info *info);
int64_t dopa_job_info_modified(const dopa_job_info *info);
int64_t dopa_job_info_transfer_completed(const dopa_job_info *info);
uint32_t dopa_job_info_error_count(const dopa_job_info *info); /* transient errors so far */
/* The job's error, when it has one: where it happened (enum
 * dopa_error_context), the code of the module that failed, the index of
 * the file it concerns (or -1), the HTTP status (or 0) and a message. */
int dopa_job_info_has_error(const dopa_job_info *info);
int dopa_job_info_error_context(const dopa_job_info *info);
int dopa_job_info_error_code(const dopa_job_info *info);
int dopa_job_info_error_file(const dopa_job_info *info);
long dopa_job_info_error_http_status(const dopa_job_info *info);
const char *dopa_job_info_error_message(const dopa_job_info *info);
uint32_t dopa_job_info_minimum_retry_delay(const dopa_job_info *info); /* seconds */
uint32_t dopa_job_info_no_progress_timeout(const dopa_job_info *info); /* seconds */
int dopa_job_info_proxy_usage(const dopa_job_info *info);              /* enum dopa_proxy_usage */
/* Changes whenever anything in the job does (dopa_job_wait). */
uint64_t dopa_job_info_version(const dopa_job_info *info);
uint32_t dopa_job_info_notify_flags(const dopa_job_info *info); /* DOPA_NOTIFY_* */
/* Seconds a file waits for dopa_file_set_validation_state(), and the
 * verdict when that time runs out. */
uint32_t dopa_job_info_validation_timeout(const dopa_job_info *info);
int dopa_job_info_validation_default_valid(const dopa_job_info *info);

const char *dopa_file_info_remote_url(const dopa_file_info *info);
const char *dopa_file_info_local_name(const dopa_file_info *info);
/* Where the bytes are until the job is completed. */
const char *dopa_file_info_temporary_name(const dopa_file_info *info);
uint64_t dopa_file_info_bytes_total(const dopa_file_info *info); /* DOPA_SIZE_UNKNOWN until known */
uint64_t dopa_file_info_bytes_transferred(const dopa_file_info *info);
/* The transferred bytes by where they came from. */
uint64_t dopa_file_info_bytes_from_origin(const dopa_file_info *info);
uint64_t dopa_file_info_bytes_from_peers(const dopa_file_info *info);
uint64_t dopa_file_info_bytes_from_cache(const dopa_file_info *info);
/* The number of byte ranges, 0 for the whole file. */
uint32_t dopa_file_info_ranges(const dopa_file_info *info);
/* Every byte is here and checked. */
int dopa_file_info_is_transferred(const dopa_file_info *info);
/* Pieces are checked against a signed manifest; the whole file against a
 * SHA-256. */
int dopa_file_info_has_manifest(const dopa_file_info *info);
int dopa_file_info_has_sha256(const dopa_file_info *info);
int dopa_file_info_validation(const dopa_file_info *info); /* enum dopa_validation */

/* ------------------------------------------------------------------ */
/* Notifications and validation                                       */

/* Which events the job reports (DOPA_NOTIFY_*; BITS's SetNotifyFlags). */
int dopa_job_set_notify_flags(dopa_manager *m, const dopa_id *id, uint32_t flags);

/* The program dopad runs, as the job's owner and without a shell, when an
 * event fires and no client is registered for the job, or when the
 * client's JobTransferred callback failed (BITS's SetNotifyCmdLine). argv
 * is NULL-terminated, argv[0] a full path; its environment has DOPA_JOB_ID
 * and DOPA_EVENT. argv NULL or empty: no program. */
int dopa_job_set_notify_cmdline(dopa_manager *m, const dopa_id *id, const char *const *argv);

/* The job's flags and command line: *argv (if not NULL) is a NULL-terminated
 * array, one allocation with its strings for one dopa_free(), NULL when
 * there is none. */
int dopa_job_get_notify(dopa_manager *m, const dopa_id *id, uint32_t *flags, char ***argv);

/* Callbacks for a job's events (BITS's IBackgroundCopyCallback). Set size
 * (or start from DOPA_CALLBACKS_INIT); callbacks left out are NULL. Each
 * returns 0 when it handled the event. A JobTransferred that is not handled
 * comes again later, with a growing interval (or the job's command line
 * runs instead, if it has one); other events come once. Any pointer may be
 * NULL: that event counts as handled (a file that waits for a verdict then
 * gets the job's default one when its validation timeout ends). */
typedef struct dopa_callbacks {
    size_t size; /* sizeof(dopa_callbacks) */
    void *ctx;
    int (*job_transferred)(void *ctx, dopa_manager *m, const dopa_id *job);
    int (*job_error)(void *ctx, dopa_manager *m, const dopa_id *job);
    int (*job_modification)(void *ctx, dopa_manager *m, const dopa_id *job);
    /* With DOPA_NOTIFY_FILE_TRANSFERRED: file `index` is here, its content
     * in dopa_file_info_temporary_name(info), and dopad waits for
     * dopa_file_set_validation_state(). info is the library's, valid until
     * the callback returns (not for dopa_free()). */
    int (*file_transferred)(void *ctx, dopa_manager *m, const dopa_id *job, uint32_t index,
                            const dopa_file_info *info);
} dopa_callbacks;
#define DOPA_CALLBACKS_INIT                                                                        \
    {                                                                                              \
        .size = sizeof(dopa_callbacks)                                                             \
    }

/* Registers callbacks for a job (NULL: unregisters); *callbacks is copied
 * (DOPA_EINVAL when its size is too small). They run one at a time on a
 * thread of the manager, which keeps polling dopad and registers again
 * after dopad restarts; the registration lasts while the manager is
 * connected (it is not stored). An event may come more than once if an
 * answer is lost on the way. A callback may call any dopa_* function on the
 * manager, dopa_disconnect too (the manager is freed once the callback
 * returns). */
int dopa_job_set_callbacks(dopa_manager *m, const dopa_id *id, const dopa_callbacks *callbacks);

/* The verdict on a file that waits for one (after FileTransferred; BITS's
 * SetValidationState). Invalid content that came from peers is fetched
 * again from the origin; from the origin alone, the job goes to ERROR
 * (DOPA_EVALIDATION) and the file starts over. */
int dopa_file_set_validation_state(dopa_manager *m, const dopa_id *id, uint32_t index, int valid);

/* How long a file waits for its verdict, and the verdict when none comes
 * (defaults: DOPA_DEFAULT_VALIDATION_TIMEOUT, invalid). */
int dopa_job_set_validation_policy(dopa_manager *m, const dopa_id *id, uint32_t seconds,
                                   int default_valid);

/* Names for printing. */
const char *dopa_state_name(int state);
const char *dopa_priority_name(int priority);
const char *dopa_context_name(int context);

#ifdef __cplusplus
}
#endif

#endif /* DOPA_H */

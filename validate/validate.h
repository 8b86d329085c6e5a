/*
 * validate: everything dopa knows about content integrity.
 *
 *  - streaming hashers over libsodium (BLAKE2b-256, SHA-256) and the digester
 *    that computes a file's per-piece and whole-file hashes in one pass;
 *  - publisher keys (Ed25519) and their text forms;
 *  - signed manifests: build, serialise, parse strictly, verify, and check
 *    pieces or whole files against them (format: validate/MANIFEST.md);
 *  - content ids, which peers use to find each other;
 *  - the loader for validator plugins (ABI: validate/dopa_validator.h).
 *
 * The module knows nothing of jobs, peers or storage. Every function that can
 * fail returns 0 or a VALIDATE_E* code; validate_strerror() names it. Functions
 * that take a validate_error *why also say there what failed (why may be
 * NULL). Everything here is safe to call from several threads as long as each
 * object is used by one thread at a time.
 */
#ifndef DOPA_VALIDATE_H
#define DOPA_VALIDATE_H

#include <sodium.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#include "dopa_validator.h"

/* Error codes. The range 100..199 belongs to this module. */
enum validate_err {
    VALIDATE_OK = 0,
    VALIDATE_ENOMEM = 100,     /* out of memory */
    VALIDATE_EINVAL,           /* bad argument from the caller */
    VALIDATE_EIO,              /* a read, write or stat failed */
    VALIDATE_ECRYPTO,          /* libsodium could not initialise */
    VALIDATE_ETOOBIG,          /* manifest larger than VALIDATE_MANIFEST_MAX_BYTES */
    VALIDATE_ETRUNCATED,       /* manifest shorter than its fields say */
    VALIDATE_EMAGIC,           /* not a dopa manifest */
    VALIDATE_EVERSION,         /* manifest format version not supported */
    VALIDATE_ERESERVED,        /* reserved manifest bits set */
    VALIDATE_EPIECE_SIZE,      /* piece size not a power of two in range */
    VALIDATE_ETOO_MANY_PIECES, /* more pieces than VALIDATE_MAX_PIECES */
    VALIDATE_EPIECE_COUNT,     /* piece count disagrees with the sizes */
    VALIDATE_ETRAILING,        /* bytes after the signature */
    VALIDATE_EUNTRUSTED_KEY,   /* signed by a key that is not trusted */
    VALIDATE_ESIGNATURE,       /* signature does not verify */
    VALIDATE_EEXPIRED,         /* manifest past its expiry time */
    VALIDATE_EFILE_SIZE,       /* content length differs from the manifest */
    VALIDATE_EPIECE_INDEX,     /* piece index out of range */
    VALIDATE_EPIECE_LENGTH,    /* piece data has the wrong length */
    VALIDATE_EPIECE_HASH,      /* piece data does not match its hash */
    VALIDATE_EFILE_HASH,       /* whole-file hash does not match */
    VALIDATE_EKEY_FORMAT,      /* key text malformed */
    VALIDATE_EKEY_PERMS,       /* secret key file readable by others */
    VALIDATE_EEXISTS,          /* refusing to overwrite an existing file */
    VALIDATE_EPLUGIN_OPEN,     /* dlopen failed */
    VALIDATE_EPLUGIN_SYMBOL,   /* plugin lacks the entry symbol */
    VALIDATE_EPLUGIN_ABI,      /* plugin built for another ABI version */
    VALIDATE_EPLUGIN_INIT,     /* plugin's init failed */
    VALIDATE_EPLUGIN_UNSAFE,   /* plugin file or directory writable by others */
    VALIDATE_EPLUGIN_REJECTED, /* a plugin judged the content invalid */
    VALIDATE_EPLUGIN_FAILED,   /* a plugin could not decide (error) */
    VALIDATE_ERR_END
};

/* The message for a VALIDATE_E* code (or "unknown error"); never NULL. */
const char *validate_strerror(int err);

/* An error as every module of dopa passes it up: the code of the module that
 * met it, kept intact through each layer (the ranges do not overlap:
 * DOPA_E* 1..99, VALIDATE_E* 100..199, ORIGIN_E* 200..299, PEER_E*
 * 400..499, so the code alone names its module) and one line saying what
 * happened. Handles keep their last error in one; a function without a
 * handle fills the one its caller gives. */
#define VALIDATE_ERROR_TEXT 1024

typedef struct validate_error {
    int code;
    char text[VALIDATE_ERROR_TEXT];
} validate_error;

/* Sets *why (when why is not NULL) to code and the formatted text, and
 * returns code: the one formatter of dopa's errors. */
int validate_error_set(validate_error *why, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Reads len bytes at offset, through interruptions and short reads: the
 * count read, short only at the end of the file, or -1 with errno set. */
ssize_t validate_pread_full(int fd, void *buf, size_t len, uint64_t offset);

/* Initialises libsodium once; every entry point that needs it calls this, so
 * callers need not, but a daemon may call it early to fail fast. */
int validate_init(void);

/* ------------------------------------------------------------------ */
/* Hashing                                                            */

#define VALIDATE_HASH_BYTES 32

typedef struct validate_blake2b_state {
    crypto_generichash_blake2b_state state;
} validate_blake2b_state;

typedef struct validate_sha256_state {
    crypto_hash_sha256_state state;
} validate_sha256_state;

void validate_blake2b_init(validate_blake2b_state *h);
void validate_blake2b_update(validate_blake2b_state *h, const void *data, size_t len);
void validate_blake2b_final(validate_blake2b_state *h, uint8_t out[VALIDATE_HASH_BYTES]);
void validate_blake2b(const void *data, size_t len, uint8_t out[VALIDATE_HASH_BYTES]);

void validate_sha256_init(validate_sha256_state *h);
void validate_sha256_update(validate_sha256_state *h, const void *data, size_t len);
void validate_sha256_final(validate_sha256_state *h, uint8_t out[VALIDATE_HASH_BYTES]);
void validate_sha256(const void *data, size_t len, uint8_t out[VALIDATE_HASH_BYTES]);

/* Lower-case hex of a hash (out holds 2*VALIDATE_HASH_BYTES+1 bytes). */
void validate_hex(const uint8_t *bin, size_t len, char *out);

/* The value of one hex digit (either case), or -1. */
int validate_hex_value(char c);

/* Parses exactly 2*len hex digits; VALIDATE_EINVAL otherwise. */
int validate_unhex(const char *hex, uint8_t *bin, size_t len);

/* ------------------------------------------------------------------ */
/* Pieces and digests                                                 */

#define VALIDATE_PIECE_SIZE_MIN     (64u * 1024u)
#define VALIDATE_PIECE_SIZE_DEFAULT (1024u * 1024u)
#define VALIDATE_PIECE_SIZE_MAX     (16u * 1024u * 1024u)
/* 2^17 pieces keep a manifest near 4 MiB; with 16 MiB pieces that is 2 TiB. */
#define VALIDATE_MAX_PIECES (1u << 17)

/* True when size is a power of two between the minimum and the maximum. */
int validate_piece_size_ok(uint64_t size);

/* Pieces needed for a file: ceil(file_size / piece_size). */
uint64_t validate_piece_count(uint64_t file_size, uint32_t piece_size);

/* Length of piece `index` (the last one may be short). */
uint32_t validate_piece_length(uint64_t file_size, uint32_t piece_size, uint64_t index);

/* Smallest valid piece size, not below VALIDATE_PIECE_SIZE_DEFAULT, that keeps
 * a file of this size within VALIDATE_MAX_PIECES; 0 if none does. */
uint32_t validate_piece_size_for(uint64_t file_size);

/* Everything a manifest says about content, before it is signed. The
 * digest owns piece_hashes (piece_count * VALIDATE_HASH_BYTES bytes). */
typedef struct validate_digest {
    uint64_t file_size;
    uint32_t piece_size;
    uint64_t piece_count;
    uint8_t *piece_hashes;
    uint8_t sha256[VALIDATE_HASH_BYTES];
    uint8_t blake2b[VALIDATE_HASH_BYTES];
} validate_digest;

void validate_digest_clear(validate_digest *d);

/* A streaming digester: feed the content in any split, get the digest. */
typedef struct validate_digester validate_digester;

int validate_digester_new(uint32_t piece_size, validate_digester **out);
/* VALIDATE_ETOO_MANY_PIECES once the content outgrows VALIDATE_MAX_PIECES. */
int validate_digester_update(validate_digester *dg, const void *data, size_t len);
/* Moves the result into *out (which the caller clears); the digester is
 * spent and must only be freed afterwards. */
int validate_digester_finish(validate_digester *dg, validate_digest *out);
void validate_digester_free(validate_digester *dg);

/* Digests an open file from offset 0 to its end. */
int validate_digest_fd(int fd, uint32_t piece_size, validate_digest *out, validate_error *why);

/* ------------------------------------------------------------------ */
/* Files                                                              */

/* Writes a small file (a key, a manifest) whole before it gets its name:
 * a temporary file beside `path` with `mode` whatever the umask, fsynced,
 * then renamed (overwrite) or linked (else; VALIDATE_EEXISTS for any
 * existing name, a symlink included), and the directory fsynced. Never
 * follows a symlink at `path`. */
int validate_write_file(const char *path, const void *buf, size_t len, unsigned mode, int overwrite,
                        validate_error *why);

/* ------------------------------------------------------------------ */
/* Publisher keys                                                     */

#define VALIDATE_KEY_ID_BYTES        16
#define VALIDATE_PUBLIC_KEY_TEXT_MAX 64 /* "dopa-pub1:" + base64, with NUL */

typedef struct validate_public_key {
    uint8_t key[crypto_sign_PUBLICKEYBYTES];
    uint8_t id[VALIDATE_KEY_ID_BYTES];
} validate_public_key;

/* A secret key lives in guarded memory (sodium_malloc) and is wiped on free. */
typedef struct validate_secret_key validate_secret_key;

int validate_secret_key_generate(validate_secret_key **out);
void validate_secret_key_free(validate_secret_key *sk);
const validate_public_key *validate_secret_key_public(const validate_secret_key *sk);

/* Writes the secret key to `path` (mode 0600) and its public key to
 * `path`.pub (mode 0644). Refuses (VALIDATE_EEXISTS) to replace either file
 * unless overwrite is set; never follows a symlink at either path. */
int validate_secret_key_save(const validate_secret_key *sk, const char *path, int overwrite,
                             validate_error *why);

/* Reads a secret key file; refuses one that group or others may read. */
int validate_secret_key_load(const char *path, validate_secret_key **out, validate_error *why);

/* "dopa-pub1:<base64>" */
void validate_public_key_text(const validate_public_key *pk,
                              char out[VALIDATE_PUBLIC_KEY_TEXT_MAX]);
/* Accepts the text form with surrounding blanks; fills in the key id. */
int validate_public_key_parse(const char *text, validate_public_key *out);
/* Reads the first key line of a file (lines starting with '#' are comments). */
int validate_public_key_load(const char *path, validate_public_key *out, validate_error *why);
/* Computes the key id of a raw Ed25519 public key. */
void validate_key_id(const uint8_t key[crypto_sign_PUBLICKEYBYTES],
                     uint8_t id[VALIDATE_KEY_ID_BYTES]);

/* ------------------------------------------------------------------ */
/* Manifests (format: validate/MANIFEST.md)                           */

#define VALIDATE_MANIFEST_FORMAT          1
#define VALIDATE_MANIFEST_HEADER_BYTES    128
#define VALIDATE_MANIFEST_SIGNATURE_BYTES crypto_sign_BYTES
#define VALIDATE_MANIFEST_MAX_BYTES                                                                \
    (VALIDATE_MANIFEST_HEADER_BYTES + (size_t)VALIDATE_MAX_PIECES * VALIDATE_HASH_BYTES +          \
     VALIDATE_MANIFEST_SIGNATURE_BYTES)
#define VALIDATE_CONTENT_ID_BYTES 32
/* expires_at value for a manifest that never expires. */
#define VALIDATE_NEVER_EXPIRES 0

/* A parsed (or freshly signed) manifest. All fields are read-only for
 * callers; piece_hashes points into `encoded`, which holds the exact bytes
 * that were parsed or signed (what is stored and sent to peers). */
typedef struct validate_manifest {
    uint64_t content_version;
    uint64_t expires_at; /* unix seconds, or VALIDATE_NEVER_EXPIRES */
    uint64_t file_size;
    uint32_t piece_size;
    uint64_t piece_count;
    uint8_t key_id[VALIDATE_KEY_ID_BYTES];
    uint8_t sha256[VALIDATE_HASH_BYTES];
    uint8_t blake2b[VALIDATE_HASH_BYTES];
    const uint8_t *piece_hashes;
    const uint8_t *signature;
    uint8_t content_id[VALIDATE_CONTENT_ID_BYTES];
    uint8_t *encoded;
    size_t encoded_len;
} validate_manifest;

/* Signs a digest into a new manifest. */
int validate_manifest_sign(const validate_digest *d, uint64_t content_version, uint64_t expires_at,
                           const validate_secret_key *sk, validate_manifest **out);

/* Strict structural parse of untrusted bytes; does not check the signature.
 * Every rejection has its own code; `why` gets the detail. */
int validate_manifest_parse(const void *buf, size_t len, validate_manifest **out,
                            validate_error *why);

/* Checks that the manifest is signed by one of `trusted` and has not expired
 * at `now` (unix seconds). */
int validate_manifest_verify(const validate_manifest *m, const validate_public_key *trusted,
                             size_t n_trusted, uint64_t now, validate_error *why);

/* parse + verify: the one call for manifests that arrive from outside. */
int validate_manifest_open(const void *buf, size_t len, const validate_public_key *trusted,
                           size_t n_trusted, uint64_t now, validate_manifest **out,
                           validate_error *why);

void validate_manifest_free(validate_manifest *m);

/* Reads a manifest file (bounded by VALIDATE_MANIFEST_MAX_BYTES) and parses it. */
int validate_manifest_load(const char *path, validate_manifest **out, validate_error *why);

/* Writes m->encoded to `path` through a temporary file and a rename. */
int validate_manifest_save(const validate_manifest *m, const char *path, validate_error *why);

/* Hash of piece `index`. */
const uint8_t *validate_manifest_piece_hash(const validate_manifest *m, uint64_t index);

/* Checks one piece's bytes: VALIDATE_EPIECE_INDEX, _LENGTH or _HASH on failure. */
int validate_manifest_check_piece(const validate_manifest *m, uint64_t index, const void *data,
                                  size_t len);

/* What a whole-file check found. */
typedef struct validate_file_report {
    uint64_t bad_pieces;      /* pieces whose hash did not match */
    uint64_t first_bad_piece; /* meaningful when bad_pieces > 0 */
    uint64_t size;            /* the file's size */
} validate_file_report;

/* Checks an open file against the manifest: size, every piece, and both
 * whole-file hashes. The report (may be NULL) says which pieces were bad. */
int validate_manifest_check_fd(const validate_manifest *m, int fd, validate_file_report *report,
                               validate_error *why);

/* ------------------------------------------------------------------ */
/* Content ids                                                        */

/* For content without a manifest but with an expected whole-file SHA-256;
 * distinct from every manifest-derived id. */
void validate_content_id_from_sha256(const uint8_t sha256[VALIDATE_HASH_BYTES], uint64_t file_size,
                                     uint8_t out[VALIDATE_CONTENT_ID_BYTES]);

/* ------------------------------------------------------------------ */
/* Validator plugins (ABI: dopa_validator.h)                          */

typedef struct validate_plugin validate_plugin;

/* Loads one plugin. `config` (may be NULL) is passed to its init. The file
 * (a symlink to one is followed) must be a regular file that only its owner,
 * root or this process's user, may write, and so must every directory above
 * it (a sticky directory such as /tmp counts as safe): then nobody else can
 * swap it between the check and the load. */
int validate_plugin_open(const char *path, const char *config, validate_plugin **out,
                         validate_error *why);
const char *validate_plugin_name(const validate_plugin *p);
const char *validate_plugin_path(const validate_plugin *p);

/* Asks the plugin about a file: VALIDATE_OK (valid), VALIDATE_EPLUGIN_REJECTED
 * (invalid) or VALIDATE_EPLUGIN_FAILED (the plugin erred or answered
 * nonsense); `why` gets the plugin's reason. Runs in the calling process. */
int validate_plugin_check(validate_plugin *p, const struct dopa_validator_file *file,
                          validate_error *why);
void validate_plugin_close(validate_plugin *p);

/* All plugins of a directory: every "*.so" in name order, each with the
 * contents of a "<name>.conf" beside it (if any) as its config. Fails closed:
 * if any plugin cannot be loaded, none is, and `why` names the file. A
 * directory that does not exist is an empty set. */
typedef struct validate_plugin_set validate_plugin_set;

int validate_plugin_set_load(const char *dir, validate_plugin_set **out, validate_error *why);
size_t validate_plugin_set_count(const validate_plugin_set *set);
validate_plugin *validate_plugin_set_get(const validate_plugin_set *set, size_t i);
/* Runs every plugin in order and stops at the first that does not say valid. */
int validate_plugin_set_check(validate_plugin_set *set, const struct dopa_validator_file *file,
                              validate_error *why);
void validate_plugin_set_free(validate_plugin_set *set);

#endif /* DOPA_VALIDATE_H */

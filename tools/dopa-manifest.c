/*
 * dopa-manifest: the publisher's tool. Creates Ed25519 publisher keys,
 * signs manifests for files (validate/MANIFEST.md), verifies a file against
 * a manifest, and shows what a manifest says.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "validate.h"

enum exit_code {
    EXIT_OK = 0,
    EXIT_MISMATCH = 1, /* the file does not match the manifest */
    EXIT_USAGE = 2,    /* bad command line */
    EXIT_REJECTED = 3, /* manifest malformed, untrusted, badly signed or expired */
    EXIT_ERROR = 4,    /* I/O or another failure */
};

#define MAX_PUBKEYS 32

static const char usage_head[] = "usage: dopa-manifest [--json] <command> [options]\n"
                                 "       dopa-manifest <command> --help\n"
                                 "       dopa-manifest --help | --version\n";

static const char usage_foot[] =
    "KEY for --pubkey is a public key file or the key text \"dopa-pub1:...\".\n"
    "--json (one JSON document on standard output instead of text) and -h/--help\n"
    "may also follow the command.\n"
    "\n"
    "exit codes: 0 success; 1 the file does not match the manifest; 2 usage\n"
    "error; 3 manifest rejected (malformed, untrusted key, bad signature,\n"
    "expired); 4 I/O or other error.\n";

static int json;                 /* --json, before or after the command */
static const char *command_name; /* for messages; NULL before the command */

static void print_usage(FILE *out, const char *command);

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "dopa-manifest: ");
    if (command_name != NULL)
        fprintf(stderr, "%s: ", command_name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (command_name != NULL)
        fprintf(stderr, "\nRun `dopa-manifest %s --help` for its usage.\n", command_name);
    else
        fprintf(stderr, "\nRun `dopa-manifest --help` for usage.\n");
    return EXIT_USAGE;
}

/* Reports an option getopt refused (opterr is 0: the message is ours). */
static int bad_option(int c, char **argv, const struct option *opts)
{
    const char *word = argv[optind - 1];
    char name[64];
    /* optopt: a long option's val when it needs or refuses a value, 0 for
     * an unknown long option, else the short option. */
    int is_long = strncmp(word, "--", 2) == 0;
    if (is_long && c != ':' && optopt != 0) {
        is_long = 0;
        for (const struct option *o = opts; o->name != NULL; o++)
            is_long |= o->val == optopt;
    }
    if (is_long)
        snprintf(name, sizeof name, "%.*s", (int)strcspn(word, "="), word);
    else
        snprintf(name, sizeof name, "-%c", optopt);
    if (c == ':')
        return usage_error("%s needs a value", name);
    if (is_long && optopt != 0)
        return usage_error("%s takes no value", name);
    return usage_error("unknown option %s", name);
}

/* Not an exit status: what the option helpers return when the command is
 * to go on. */
#define GO_ON (-1)

/* The options every command takes besides its own (getopt's c): --json,
 * --help, and those getopt refused. GO_ON, or the exit status. */
static int common_option(int c, char **argv, const struct option *opts)
{
    if (c == 'j') {
        json = 1;
        return GO_ON;
    }
    if (c == 'h') {
        print_usage(stdout, command_name);
        return EXIT_OK;
    }
    return bad_option(c, argv, opts);
}

/* Writes value as a JSON member: ,"key":"value" (first: no comma). */
static void json_member(int first, const char *key, const char *value)
{
    printf("%s", first ? "" : ",");
    json_string(key);
    putchar(':');
    json_string(value);
}

/* The exit code for a validate error. */
static int exit_for(int err)
{
    switch (err) {
    case VALIDATE_OK:
        return EXIT_OK;
    case VALIDATE_EFILE_SIZE:
    case VALIDATE_EPIECE_HASH:
    case VALIDATE_EFILE_HASH:
        return EXIT_MISMATCH;
    case VALIDATE_ETOOBIG:
    case VALIDATE_ETRUNCATED:
    case VALIDATE_EMAGIC:
    case VALIDATE_EVERSION:
    case VALIDATE_ERESERVED:
    case VALIDATE_EPIECE_SIZE:
    case VALIDATE_ETOO_MANY_PIECES:
    case VALIDATE_EPIECE_COUNT:
    case VALIDATE_ETRAILING:
    case VALIDATE_EUNTRUSTED_KEY:
    case VALIDATE_ESIGNATURE:
    case VALIDATE_EEXPIRED:
        return EXIT_REJECTED;
    default:
        return EXIT_ERROR;
    }
}

static int fail(int err, const char *why)
{
    fprintf(stderr, "dopa-manifest: %s\n", why);
    return exit_for(err);
}

/* Parses SIZE: digits with an optional K/M suffix (KiB/MiB accepted). */
static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || !isdigit((unsigned char)s[0]))
        return -1;
    uint64_t mult = 1;
    if (strcmp(end, "K") == 0 || strcmp(end, "k") == 0 || strcmp(end, "KiB") == 0)
        mult = 1024;
    else if (strcmp(end, "M") == 0 || strcmp(end, "MiB") == 0)
        mult = 1024 * 1024;
    else if (*end != '\0')
        return -1;
    if (v > UINT64_MAX / mult)
        return -1;
    *out = v * mult;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || !isdigit((unsigned char)s[0]))
        return -1;
    *out = v;
    return 0;
}

/* Parses WHEN (see usage) into unix seconds; never is VALIDATE_NEVER_EXPIRES. */
static int parse_expiry(const char *s, uint64_t now, uint64_t *out)
{
    if (strcmp(s, "never") == 0) {
        *out = VALIDATE_NEVER_EXPIRES;
        return 0;
    }
    if (s[0] == '@')
        return parse_u64(s + 1, out) == 0 && *out != 0 ? 0 : -1;

    struct tm tm = {0};
    const char *rest = strptime(s, "%Y-%m-%d", &tm);
    if (rest != NULL) {
        if (*rest == 'T')
            rest = strptime(rest, "T%H:%M:%SZ", &tm);
        if (rest == NULL || *rest != '\0')
            return -1;
        struct tm asked = tm, back;
        time_t t = timegm(&tm);
        /* timegm normalises 2030-02-31 to March: refuse what did not exist. */
        if (t <= 0 || gmtime_r(&t, &back) == NULL || back.tm_mday != asked.tm_mday ||
            back.tm_mon != asked.tm_mon || back.tm_hour != asked.tm_hour ||
            back.tm_min != asked.tm_min || back.tm_sec != asked.tm_sec)
            return -1;
        *out = (uint64_t)t;
        return 0;
    }

    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || !isdigit((unsigned char)s[0]) || end[0] == '\0' || end[1] != '\0')
        return -1;
    uint64_t unit = end[0] == 'd'   ? 86400
                    : end[0] == 'h' ? 3600
                    : end[0] == 'm' ? 60
                    : end[0] == 's' ? 1
                                    : 0;
    if (unit == 0 || v == 0 || v > (UINT64_MAX - now) / unit)
        return -1;
    *out = now + v * unit;
    return 0;
}

static void format_time(uint64_t t, char *out, size_t len)
{
    if (t == VALIDATE_NEVER_EXPIRES) {
        snprintf(out, len, "never");
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    if (t > (uint64_t)INT64_MAX || gmtime_r(&tt, &tm) == NULL ||
        strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "@%" PRIu64, t);
}

static int load_pubkey(const char *arg, validate_public_key *out)
{
    validate_error why = {0};
    if (strncmp(arg, "dopa-pub1:", 10) == 0) {
        if (validate_public_key_parse(arg, out) != VALIDATE_OK) {
            fprintf(stderr, "dopa-manifest: %s: malformed public key\n", arg);
            return EXIT_ERROR;
        }
        return EXIT_OK;
    }
    int err = validate_public_key_load(arg, out, &why);
    return err == VALIDATE_OK ? EXIT_OK : fail(err, why.text);
}

static int cmd_keygen(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"force", no_argument, NULL, 'f'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = "publisher.key";
    int force = 0, c, rc;
    while ((c = getopt_long(argc, argv, ":o:fh", opts, NULL)) != -1) {
        if (c == 'o')
            path = optarg;
        else if (c == 'f')
            force = 1;
        else if ((rc = common_option(c, argv, opts)) != GO_ON)
            return rc;
    }
    if (optind != argc)
        return usage_error("unexpected argument %s", argv[optind]);

    validate_secret_key *sk = NULL;
    validate_error why = {0};
    int err = validate_secret_key_generate(&sk);
    if (err != VALIDATE_OK)
        return fail(err, validate_strerror(err));
    err = validate_secret_key_save(sk, path, force, &why);
    if (err == VALIDATE_OK) {
        char text[VALIDATE_PUBLIC_KEY_TEXT_MAX], id[2 * VALIDATE_KEY_ID_BYTES + 1];
        const validate_public_key *pk = validate_secret_key_public(sk);
        validate_public_key_text(pk, text);
        validate_hex(pk->id, sizeof pk->id, id);
        if (json) {
            char pub[4200];
            snprintf(pub, sizeof pub, "%s.pub", path);
            putchar('{');
            json_member(1, "secret_key", path);
            json_member(0, "public_key", pub);
            json_member(0, "key_id", id);
            json_member(0, "public_key_text", text);
            printf("}\n");
        } else {
            printf("secret key: %s (keep it private)\npublic key: %s.pub\nkey id:     %s\n%s\n",
                   path, path, id, text);
        }
    }
    validate_secret_key_free(sk);
    if (err == VALIDATE_EEXISTS)
        snprintf(why.text + strlen(why.text), sizeof why.text - strlen(why.text),
                 " (use --force to replace it)");
    return err == VALIDATE_OK ? EXIT_OK : fail(err, why.text);
}

static int cmd_create(int argc, char **argv)
{
    static const struct option opts[] = {
        {"key", required_argument, NULL, 'k'},     {"piece-size", required_argument, NULL, 'p'},
        {"version", required_argument, NULL, 'v'}, {"expires", required_argument, NULL, 'e'},
        {"output", required_argument, NULL, 'o'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *key_path = NULL, *out_path = NULL;
    uint64_t now = (uint64_t)time(NULL);
    uint64_t piece_size = 0, version = now, expires = now + 90 * 86400ull;
    int c, taken;
    while ((c = getopt_long(argc, argv, ":k:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            key_path = optarg;
            break;
        case 'o':
            out_path = optarg;
            break;
        case 'p':
            if (parse_size(optarg, &piece_size) != 0 || !validate_piece_size_ok(piece_size))
                return usage_error("--piece-size %s: need a power of two from 64K to 16M (e.g. 1M)",
                                   optarg);
            break;
        case 'v':
            if (parse_u64(optarg, &version) != 0)
                return usage_error("--version %s: need a non-negative integer", optarg);
            break;
        case 'e':
            if (parse_expiry(optarg, now, &expires) != 0)
                return usage_error("--expires %s: need never, @UNIXTIME, YYYY-MM-DD, "
                                   "YYYY-MM-DDTHH:MM:SSZ or a duration like 90d",
                                   optarg);
            if (expires != VALIDATE_NEVER_EXPIRES && expires <= now)
                return usage_error("--expires %s: that time has passed", optarg);
            break;
        default:
            if ((taken = common_option(c, argv, opts)) != GO_ON)
                return taken;
        }
    }
    if (optind + 1 != argc)
        return usage_error("need exactly one FILE");
    if (key_path == NULL)
        return usage_error("--key KEY is required (make one with dopa-manifest keygen)");
    const char *file = argv[optind];
    char default_out[4096];
    if (out_path == NULL) {
        if (snprintf(default_out, sizeof default_out, "%s.dopa-manifest", file) >=
            (int)sizeof default_out)
            return usage_error("%s: path too long", file);
        out_path = default_out;
    }

    validate_secret_key *sk = NULL;
    validate_manifest *m = NULL;
    validate_digest d = {0};
    validate_error why = {0};
    int rc = -1; /* set when the exit code is decided here, not by err */
    int fd = -1, err = validate_secret_key_load(key_path, &sk, &why);
    if (err != VALIDATE_OK)
        goto done;
    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = VALIDATE_EIO;
        validate_error_set(&why, VALIDATE_EIO, "%s: %s", file, strerror(errno));
        goto done;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        err = VALIDATE_EIO;
        validate_error_set(&why, VALIDATE_EIO, "%s: %s", file, strerror(errno));
        goto done;
    }
    if (!S_ISREG(st.st_mode)) {
        err = VALIDATE_EIO;
        validate_error_set(&why, VALIDATE_EIO, "%s: not a regular file", file);
        goto done;
    }
    /* Refuse a file too large for the pieces before reading any of it. */
    uint32_t fits = validate_piece_size_for((uint64_t)st.st_size);
    if (fits == 0) {
        fprintf(stderr,
                "dopa-manifest: %s: %lld bytes is more than a manifest can describe "
                "(%u pieces of 16 MiB)\n",
                file, (long long)st.st_size, VALIDATE_MAX_PIECES);
        rc = EXIT_ERROR;
        goto done;
    }
    if (piece_size == 0) {
        piece_size = fits;
    } else if (validate_piece_count((uint64_t)st.st_size, (uint32_t)piece_size) >
               VALIDATE_MAX_PIECES) {
        rc = usage_error("%s: %lld bytes need more than %u pieces of %llu; use --piece-size "
                         "%uK or larger",
                         file, (long long)st.st_size, VALIDATE_MAX_PIECES,
                         (unsigned long long)piece_size, fits / 1024);
        goto done;
    }
    err = validate_digest_fd(fd, (uint32_t)piece_size, &d, &why);
    if (err != VALIDATE_OK) {
        validate_error detail = why;
        validate_error_set(&why, err, "%s: %.900s", file, detail.text);
        goto done;
    }
    err = validate_manifest_sign(&d, version, expires, sk, &m);
    if (err != VALIDATE_OK) {
        validate_error_set(&why, err, "%s: %s", file, validate_strerror(err));
        goto done;
    }
    err = validate_manifest_save(m, out_path, &why);
    if (err != VALIDATE_OK)
        goto done;
    char cid[2 * VALIDATE_CONTENT_ID_BYTES + 1], when[32];
    validate_hex(m->content_id, sizeof m->content_id, cid);
    format_time(m->expires_at, when, sizeof when);
    if (json) {
        putchar('{');
        json_member(1, "manifest", out_path);
        json_member(0, "file", file);
        printf(",\"file_size\":%" PRIu64 ",\"piece_size\":%u,\"piece_count\":%" PRIu64
               ",\"content_version\":%" PRIu64 ",\"expires_at\":%" PRIu64,
               m->file_size, m->piece_size, m->piece_count, m->content_version, m->expires_at);
        json_member(0, "expires", when);
        json_member(0, "content_id", cid);
        printf("}\n");
    } else {
        printf("%s: %" PRIu64 " bytes, %" PRIu64 " pieces of %u, version %" PRIu64
               ", expires %s\ncontent id %s\n",
               out_path, m->file_size, m->piece_count, m->piece_size, m->content_version, when,
               cid);
    }
done:
    if (fd >= 0)
        close(fd);
    validate_digest_clear(&d);
    validate_manifest_free(m);
    validate_secret_key_free(sk);
    if (rc >= 0)
        return rc;
    /* Nothing read from outside is judged here: any failure is local. */
    if (err != VALIDATE_OK) {
        fprintf(stderr, "dopa-manifest: %s\n", why.text);
        return EXIT_ERROR;
    }
    return EXIT_OK;
}

/* What verify and show are given: --pubkey keys (and, for show, --pieces). */
struct common_opts {
    validate_public_key keys[MAX_PUBKEYS];
    size_t n_keys;
    int pieces;
};

/* Parses verify's or show's options, as their table opts has them. */
static int parse_common(int argc, char **argv, const struct option *opts, struct common_opts *o)
{
    int c;
    while ((c = getopt_long(argc, argv, ":k:h", opts, NULL)) != -1) {
        if (c == 'k') {
            if (o->n_keys == MAX_PUBKEYS)
                return usage_error("at most %d --pubkey options", MAX_PUBKEYS);
            int rc = load_pubkey(optarg, &o->keys[o->n_keys]);
            if (rc != EXIT_OK)
                return rc;
            o->n_keys++;
        } else if (c == 'p') {
            o->pieces = 1;
        } else {
            int rc = common_option(c, argv, opts);
            if (rc != GO_ON)
                return rc;
        }
    }
    return GO_ON;
}

/* The verdict of verify as JSON: ok, or the reason it is not. */
static void print_verdict_json(const char *file, const char *manifest, const validate_manifest *m,
                               const char *error)
{
    putchar('{');
    json_member(1, "file", file);
    json_member(0, "manifest", manifest);
    printf(",\"ok\":%s", error == NULL ? "true" : "false");
    if (error == NULL) {
        char sha[2 * VALIDATE_HASH_BYTES + 1];
        validate_hex(m->sha256, sizeof m->sha256, sha);
        printf(",\"file_size\":%" PRIu64 ",\"piece_count\":%" PRIu64, m->file_size, m->piece_count);
        json_member(0, "sha256", sha);
    } else {
        json_member(0, "error", error);
    }
    printf("}\n");
}

static int cmd_verify(int argc, char **argv)
{
    static const struct option opts[] = {
        {"pubkey", required_argument, NULL, 'k'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct common_opts o = {0};
    int rc = parse_common(argc, argv, opts, &o);
    if (rc != GO_ON)
        return rc;
    if (optind + 2 != argc)
        return usage_error("need FILE and MANIFEST");
    if (o.n_keys == 0)
        return usage_error("--pubkey KEY is required: the publisher's public key");
    const char *file = argv[optind], *manifest = argv[optind + 1];

    validate_manifest *m = NULL;
    validate_file_report report;
    validate_error why = {0}, detail = {0};
    int fd = -1;
    int err = validate_manifest_load(manifest, &m, &why);
    if (err != VALIDATE_OK)
        goto done;
    err = validate_manifest_verify(m, o.keys, o.n_keys, (uint64_t)time(NULL), &detail);
    if (err != VALIDATE_OK) {
        validate_error_set(&why, err, "%s: %s: %s", manifest, validate_strerror(err), detail.text);
        goto done;
    }
    fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        err = VALIDATE_EIO;
        validate_error_set(&why, VALIDATE_EIO, "%s: %s", file, strerror(errno));
        goto done;
    }
    err = validate_manifest_check_fd(m, fd, &report, &detail);
    if (err != VALIDATE_OK) {
        if (exit_for(err) == EXIT_MISMATCH)
            validate_error_set(&why, err, "%s does not match %s: %s", file, manifest, detail.text);
        else
            validate_error_set(&why, err, "%s: %s", file, detail.text);
        goto done;
    }
    if (json) {
        print_verdict_json(file, manifest, m, NULL);
    } else {
        char sha[2 * VALIDATE_HASH_BYTES + 1];
        validate_hex(m->sha256, sizeof m->sha256, sha);
        printf("OK %s: %" PRIu64 " bytes, %" PRIu64 " pieces match, sha256 %s\n", file,
               m->file_size, m->piece_count, sha);
    }
done:
    if (fd >= 0)
        close(fd);
    /* A mismatch or a rejected manifest is a verdict too: JSON says so. */
    rc = exit_for(err);
    if (json && (rc == EXIT_MISMATCH || rc == EXIT_REJECTED))
        print_verdict_json(file, manifest, m, why.text);
    validate_manifest_free(m);
    return err == VALIDATE_OK ? EXIT_OK : fail(err, why.text);
}

static int cmd_show(int argc, char **argv)
{
    static const struct option opts[] = {
        {"pubkey", required_argument, NULL, 'k'},
        {"pieces", no_argument, NULL, 'p'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct common_opts o = {0};
    int rc = parse_common(argc, argv, opts, &o);
    if (rc != GO_ON)
        return rc;
    if (optind + 1 != argc)
        return usage_error("need exactly one MANIFEST");
    const char *path = argv[optind];

    validate_manifest *m = NULL;
    validate_error why = {0}, detail = {0};
    int err = validate_manifest_load(path, &m, &why);
    if (err != VALIDATE_OK)
        return fail(err, why.text);
    const char *signature = "not checked (give --pubkey)";
    if (o.n_keys > 0) {
        err = validate_manifest_verify(m, o.keys, o.n_keys, (uint64_t)time(NULL), &detail);
        signature = err == VALIDATE_OK ? "valid, trusted key" : validate_strerror(err);
    }

    char cid[2 * VALIDATE_CONTENT_ID_BYTES + 1], sha[2 * VALIDATE_HASH_BYTES + 1];
    char b2[2 * VALIDATE_HASH_BYTES + 1], kid[2 * VALIDATE_KEY_ID_BYTES + 1], when[32];
    validate_hex(m->content_id, sizeof m->content_id, cid);
    validate_hex(m->sha256, sizeof m->sha256, sha);
    validate_hex(m->blake2b, sizeof m->blake2b, b2);
    validate_hex(m->key_id, sizeof m->key_id, kid);
    format_time(m->expires_at, when, sizeof when);

    if (json) {
        putchar('{');
        json_member(1, "manifest", path);
        printf(",\"format\":%d", VALIDATE_MANIFEST_FORMAT);
        json_member(0, "content_id", cid);
        printf(",\"content_version\":%" PRIu64 ",\"expires_at\":%" PRIu64, m->content_version,
               m->expires_at);
        json_member(0, "expires", when);
        printf(",\"file_size\":%" PRIu64 ",\"piece_size\":%u,\"piece_count\":%" PRIu64,
               m->file_size, m->piece_size, m->piece_count);
        json_member(0, "sha256", sha);
        json_member(0, "blake2b", b2);
        json_member(0, "key_id", kid);
        json_member(0, "signature", signature);
        if (o.pieces) {
            printf(",\"pieces\":[");
            for (uint64_t i = 0; i < m->piece_count; i++) {
                char h[2 * VALIDATE_HASH_BYTES + 1];
                validate_hex(validate_manifest_piece_hash(m, i), VALIDATE_HASH_BYTES, h);
                if (i)
                    putchar(',');
                json_string(h);
            }
            putchar(']');
        }
        printf("}\n");
    } else {
        printf("manifest:        %s\n"
               "format:          %d\n"
               "content id:      %s\n"
               "content version: %" PRIu64 "\n"
               "expires:         %s\n"
               "file size:       %" PRIu64 " bytes\n"
               "piece size:      %u bytes\n"
               "pieces:          %" PRIu64 "\n"
               "sha256:          %s\n"
               "blake2b:         %s\n"
               "key id:          %s\n"
               "signature:       %s\n",
               path, VALIDATE_MANIFEST_FORMAT, cid, m->content_version, when, m->file_size,
               m->piece_size, m->piece_count, sha, b2, kid, signature);
        if (o.pieces) {
            for (uint64_t i = 0; i < m->piece_count; i++) {
                char h[2 * VALIDATE_HASH_BYTES + 1];
                validate_hex(validate_manifest_piece_hash(m, i), VALIDATE_HASH_BYTES, h);
                printf("piece %-9" PRIu64 " %s\n", i, h);
            }
        }
    }
    validate_manifest_free(m);
    if (err != VALIDATE_OK) {
        validate_error_set(&why, err, "%s: %s", path, detail.text);
        return fail(err, why.text);
    }
    return EXIT_OK;
}

/* The commands and their usage: the first line is the synopsis, the
 * others say what it does. help has no run: main answers it. */
static const struct command {
    const char *name, *usage;
    int (*run)(int argc, char **argv);
} commands[] = {
    {"keygen",
     "keygen [-o|--output KEY] [-f|--force] [--json]\n"
     "    create a publisher key pair: KEY (secret, mode 0600; default\n"
     "    publisher.key) and KEY.pub (public, for the agents to trust)\n",
     cmd_keygen},
    {"create",
     "create FILE -k|--key KEY [--piece-size SIZE] [--version N]\n"
     "       [--expires WHEN] [-o|--output MANIFEST] [--json]\n"
     "    sign a manifest for FILE (default output FILE.dopa-manifest)\n"
     "    SIZE: a power of two from 64K to 16M (default 1M, raised as the\n"
     "          file needs); N: content version (default: the unix time);\n"
     "    WHEN: never, @UNIXTIME, YYYY-MM-DD[THH:MM:SSZ] (UTC) or a duration\n"
     "          from now in d, h, m or s such as 90d or 12h (default 90d)\n",
     cmd_create},
    {"verify",
     "verify FILE MANIFEST -k|--pubkey KEY [-k|--pubkey KEY ...] [--json]\n"
     "    check the manifest's signature and expiry, then every byte of FILE\n",
     cmd_verify},
    {"show",
     "show MANIFEST [-k|--pubkey KEY ...] [--pieces] [--json]\n"
     "    print what the manifest says; with --pubkey also check its signature\n",
     cmd_show},
    {"help", "help [COMMAND]\n    this text, or one command's usage\n", NULL},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const struct command *find_command(const char *name)
{
    for (size_t i = 0; name != NULL && i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* The usage of dopa-manifest (command NULL), or of one command. */
static void print_usage(FILE *out, const char *command)
{
    const struct command *c = find_command(command);
    if (c != NULL) {
        fprintf(out, "usage: dopa-manifest %s\n%s", c->usage, usage_foot);
        return;
    }
    fprintf(out, "%s\ncommands:\n", usage_head);
    for (size_t i = 0; i < N_COMMANDS; i++)
        for (const char *p = commands[i].usage; *p;) {
            size_t n = strcspn(p, "\n");
            fprintf(out, "  %.*s\n", (int)n, p);
            p += n + (p[n] == '\n');
        }
    fprintf(out, "\n%s", usage_foot);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    /* The options before the command: "+" stops at the command's name,
     * which then starts the command's own vector. */
    static const char before_command[] = "+:h";
    int c, rc, version = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, before_command, opts, NULL)) != -1) {
        if (c == 'V')
            version = 1;
        else if ((rc = common_option(c, argv, opts)) != GO_ON)
            return rc;
    }
    if (version) {
        if (json) {
            putchar('{');
            json_member(1, "version", DOPA_VERSION);
            printf("}\n");
        } else {
            printf("dopa-manifest %s\n", DOPA_VERSION);
        }
        return EXIT_OK;
    }
    if (optind == argc)
        return usage_error("missing command");
    const struct command *cmd = find_command(argv[optind]);
    if (cmd == NULL)
        return usage_error("unknown command %s", argv[optind]);
    if (cmd->run == NULL) { /* help [COMMAND], help --help */
        const char *topic = optind + 1 < argc ? argv[optind + 1] : NULL;
        command_name = cmd->name;
        if (topic != NULL && (strcmp(topic, "--help") == 0 || strcmp(topic, "-h") == 0))
            topic = cmd->name;
        if (optind + 2 < argc || (topic != NULL && find_command(topic) == NULL))
            return usage_error("need nothing, or a command");
        print_usage(stdout, topic);
        return EXIT_OK;
    }
    if (validate_init() != VALIDATE_OK)
        return fail(VALIDATE_ECRYPTO, validate_strerror(VALIDATE_ECRYPTO));
    command_name = cmd->name;
    /* getopt starts afresh at argv[1] of the command's own vector. */
    argc -= optind;
    argv += optind;
    optind = 0;
    return cmd->run(argc, argv);
}

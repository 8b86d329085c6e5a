/* The minisign validator plugin (validate/plugins/minisign.c) against keys
 * and signatures made by the real minisign tool, over file:// URLs and over
 * HTTP from a real nginx on loopback. MINISIGN_PLUGIN is the built plugin.
 * Without the minisign binary every case fails: CI installs it with
 * `tools/install-deps test`. */
#include <fcntl.h>
#include <netinet/in.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "../check.h"
#include "nginx.h"
#include "proc.h"
#include "validate.h"

static test_nginx web;
static const char *fixture_dir; /* the scratch directory */

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

static const char *minisign_bin(void)
{
    static char found[4096];
    if (found[0] != '\0')
        return found;
    const char *path = getenv("PATH");
    char dirs[8192];
    snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(found, sizeof found, "%s/minisign", d);
        if (access(found, X_OK) == 0)
            return found;
    }
    found[0] = '\0';
    check_failed(__FILE__, __LINE__,
                 "the minisign tool is not installed: run `tools/install-deps test`");
    return NULL;
}

static void run_minisign(const char *const argv[])
{
    char out[4096] = "";
    int status = test_run(argv, out, sizeof out, 60, TEST_AS_ME, 0);
    if (status != 0) {
        fprintf(stderr, "  minisign exited with %d:\n%s\n", status, out);
        CHECK_INT(status, 0);
    }
}

static void write_bytes(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, data, len) == (ssize_t)len);
    close(fd);
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

/* Reads a whole small file into buf (NUL-terminated); returns its length. */
static size_t read_text(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    CHECK(n >= 0 && (size_t)n < cap - 1);
    buf[n] = '\0';
    return (size_t)n;
}

/* Writes `len` pattern bytes to path. */
static void write_pattern(const char *path, size_t len, unsigned seed)
{
    unsigned char *buf = malloc(len > 0 ? len : 1);
    CHECK(buf != NULL);
    test_pattern_fill(seed, 0, buf, len);
    write_bytes(path, buf, len);
    free(buf);
}

static void flip_byte(const char *path, off_t offset)
{
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0);
    unsigned char c;
    CHECK(pread(fd, &c, 1, offset) == 1);
    c ^= 0x01;
    CHECK(pwrite(fd, &c, 1, offset) == 1);
    close(fd);
}

/* A minisign key pair without password: <dir>/<name>.pub and .key. The
 * public key's base64 line goes to pub, its key id (as minisign prints it)
 * to id. */
struct key {
    char sec[4096];
    char pub[128];
    char id[32];
};

static void make_key(const char *name, struct key *k)
{
    char pub_name[64], sec_name[64], text[1024];
    snprintf(pub_name, sizeof pub_name, "%.40s.pub", name);
    snprintf(sec_name, sizeof sec_name, "%.40s.key", name);
    const char *pub_path = check_path(pub_name);
    snprintf(k->sec, sizeof k->sec, "%s", check_path(sec_name));
    run_minisign(
        (const char *const[]){minisign_bin(), "-G", "-W", "-p", pub_path, "-s", k->sec, NULL});
    read_text(pub_path, text, sizeof text);
    const char *marker = "minisign public key ";
    char *at = strstr(text, marker);
    char *nl = strchr(text, '\n');
    CHECK(at != NULL && nl != NULL);
    CHECK(sscanf(at + strlen(marker), "%31[0-9A-F]", k->id) == 1);
    CHECK(sscanf(nl + 1, "%127s", k->pub) == 1);
}

/* Signs `path` into `path`.minisig. */
static void sign(const struct key *k, const char *path, int is_legacy, const char *comment)
{
    const char *argv[12] = {minisign_bin(), "-S", "-s", k->sec, "-m", path};
    int n = 6;
    if (is_legacy)
        argv[n++] = "-l";
    if (comment != NULL) {
        argv[n++] = "-t";
        argv[n++] = comment;
    }
    argv[n] = NULL;
    run_minisign(argv);
}

static const char *sig_of(const char *path)
{
    static char out[4200];
    snprintf(out, sizeof out, "%s.minisig", path);
    return out;
}

static validate_plugin *open_with(const char *config)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    int err = validate_plugin_open(MINISIGN_PLUGIN, config, &p, &why);
    if (err != VALIDATE_OK)
        fprintf(stderr, "  %s\n", why.text);
    CHECK_INT(err, VALIDATE_OK);
    CHECK_STR(validate_plugin_name(p), "minisign");
    return p;
}

static validate_plugin *open_with_keys(const struct key *a, const struct key *b)
{
    char config[512];
    snprintf(config, sizeof config, "# test keys\npublic-key = %s\n%s%s%s", a->pub,
             b ? "public-key = " : "", b ? b->pub : "", b ? "\n" : "");
    return open_with(config);
}

/* Judges the local file `path` as if it came from `url`; `size` (when not
 * (uint64_t)-1) overrides the size dopad would announce. */
static int judge_sized(validate_plugin *p, const char *path, const char *url, uint64_t size,
                       validate_error *why)
{
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    static const uint8_t sha[32];
    struct dopa_validator_file f = {
        .struct_size = sizeof f,
        .fd = fd,
        .path = path,
        .remote_url = url,
        .local_name = "/srv/content",
        .size = size != (uint64_t)-1 ? size : (uint64_t)st.st_size,
        .sha256 = sha,
    };
    *why = (validate_error){0};
    int err = validate_plugin_check(p, &f, why);
    close(fd);
    return err;
}

static int judge(validate_plugin *p, const char *path, const char *url, validate_error *why)
{
    return judge_sized(p, path, url, (uint64_t)-1, why);
}

static const char *file_url(const char *path)
{
    static char url[4200];
    snprintf(url, sizeof url, "file://%s", path);
    return url;
}

static const char *http_url(const char *name)
{
    static char url[512];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/%s", web.port, name);
    return url;
}

static const char *web_path(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof path, "%s/%s", web.root, name);
    return path;
}

/* ------------------------------------------------------------------ */
/* Valid signatures                                                   */

static void test_prehashed_signature_over_file_url_is_valid(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 3 * 1024 * 1024 + 7, 1); /* several read chunks */
    sign(&a, path, 0, "release 1.2");
    char sig[1024];
    read_text(sig_of(path), sig, sizeof sig);
    CHECK_HAS(sig, "\nRU"); /* base64 of "ED": prehashed */
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);
    validate_plugin_close(p);
}

static void test_legacy_signature_is_valid(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 100000, 2);
    sign(&a, path, 1, NULL);
    char sig[1024];
    read_text(sig_of(path), sig, sizeof sig);
    CHECK_HAS(sig, "\nRW"); /* base64 of "Ed": legacy */
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);
    validate_plugin_close(p);
}

static void test_empty_file_with_either_signature_is_valid(void)
{
    struct key a;
    make_key("a", &a);
    const char *pre = check_path("empty"), *leg = check_path("empty-legacy");
    write_text(pre, "");
    write_text(leg, "");
    sign(&a, pre, 0, NULL);
    sign(&a, leg, 1, NULL);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, pre, file_url(pre), &why), VALIDATE_OK);
    CHECK_INT(judge(p, leg, file_url(leg), &why), VALIDATE_OK);
    validate_plugin_close(p);
}

static void test_signature_over_http_is_valid(void)
{
    struct key a;
    make_key("a", &a);
    write_pattern(web_path("data.bin"), 200000, 3);
    sign(&a, web_path("data.bin"), 0, NULL);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, web_path("data.bin"), http_url("data.bin"), &why), VALIDATE_OK);
    /* The query stays, the fragment goes: /data.bin.minisig?v=1 is asked for. */
    CHECK_INT(judge(p, web_path("data.bin"), http_url("data.bin?v=1#part"), &why), VALIDATE_OK);
    /* A redirect (nginx sends /moved.bin.minisig to /data.bin.minisig). */
    CHECK_INT(judge(p, web_path("data.bin"), http_url("moved.bin"), &why), VALIDATE_OK);
    validate_plugin_close(p);
}

static void test_second_configured_key_verifies_after_rotation(void)
{
    struct key a, b, c;
    make_key("a", &a);
    make_key("b", &b);
    make_key("c", &c);
    const char *path = check_path("data.bin");
    write_pattern(path, 5000, 4);
    validate_plugin *p = open_with_keys(&a, &b);
    validate_error why = {0};
    sign(&b, path, 0, NULL);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);
    sign(&a, path, 0, NULL);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);
    sign(&c, path, 0, NULL);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, c.id);
    validate_plugin_close(p);
}

static void test_crlf_signature_is_accepted(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 5);
    sign(&a, path, 0, "a comment");
    char sig[1024], crlf[2048];
    read_text(sig_of(path), sig, sizeof sig);
    size_t o = 0;
    for (const char *s = sig; *s; s++) {
        if (*s == '\n')
            crlf[o++] = '\r';
        crlf[o++] = *s;
    }
    crlf[o] = '\0';
    write_text(sig_of(path), crlf);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);
    validate_plugin_close(p);
}

/* ------------------------------------------------------------------ */
/* Invalid content and signatures                                     */

static void test_tampered_content_is_invalid(void)
{
    struct key a;
    make_key("a", &a);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    for (int is_legacy = 0; is_legacy <= 1; is_legacy++) {
        const char *path = check_path(is_legacy ? "legacy.bin" : "prehashed.bin");
        write_pattern(path, 2 * 1024 * 1024, 6);
        sign(&a, path, is_legacy, NULL);
        flip_byte(path, 1024 * 1024 + 3);
        CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_REJECTED);
        CHECK_HAS(why.text, "signature does not match the content");
    }
    validate_plugin_close(p);
}

static void test_signature_by_another_key_is_invalid(void)
{
    struct key a, b;
    make_key("a", &a);
    make_key("b", &b);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 7);
    sign(&a, path, 0, NULL);
    validate_plugin *p = open_with_keys(&b, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, a.id);
    CHECK_HAS(why.text, "not a configured public-key");
    validate_plugin_close(p);
}

static void test_tampered_trusted_comment_is_invalid(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 8);
    sign(&a, path, 0, "version 1");
    char sig[1024];
    read_text(sig_of(path), sig, sizeof sig);
    char *at = strstr(sig, "trusted comment: version 1\n");
    CHECK(at != NULL);
    at[strlen("trusted comment: version ")] = '2';
    write_text(sig_of(path), sig);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "trusted comment");
    /* The untrusted comment is not signed: changing it changes nothing. */
    sign(&a, path, 0, "version 1");
    read_text(sig_of(path), sig, sizeof sig);
    CHECK(strncmp(sig, "untrusted comment: ", 19) == 0);
    sig[19] = sig[19] == 'x' ? 'y' : 'x';
    write_text(sig_of(path), sig);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);
    validate_plugin_close(p);
}

static void test_missing_signature_is_invalid(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 9);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "no signature");
    CHECK_INT(judge(p, path, http_url("unsigned.bin"), &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "no signature (HTTP 404");
    CHECK_INT(judge(p, path, http_url("gone.bin"), &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "no signature (HTTP 410");
    /* Other failures are not a verdict on the content. */
    CHECK_INT(judge(p, path, http_url("broken.bin"), &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "HTTP 500");
    CHECK_INT(judge(p, path, http_url("loop.bin"), &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_INT(judge(p, path, "ftp://127.0.0.1/data.bin", &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_INT(judge(p, path, "not a url", &why), VALIDATE_EPLUGIN_FAILED);
    /* Nothing listens there: a network error. */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/data.bin", test_free_port());
    CHECK_INT(judge(p, path, url, &why), VALIDATE_EPLUGIN_FAILED);
    validate_plugin_close(p);
}

/* Rebuilds a signature file from its four lines with one line replaced. */
static void write_sig_lines(const char *path, char lines[4][256], int which, const char *line)
{
    char out[2048] = "";
    for (int i = 0; i < 4; i++) {
        strcat(out, i == which ? line : lines[i]);
        strcat(out, "\n");
    }
    write_text(path, out);
}

static void b64(const uint8_t *bin, size_t len, char *out, size_t out_len)
{
    CHECK(sodium_bin2base64(out, out_len, bin, len, sodium_base64_VARIANT_ORIGINAL) != NULL);
}

static void test_malformed_signatures_are_refused(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 10);
    sign(&a, path, 0, NULL);
    char sig[1024], lines[4][256];
    size_t sig_len = read_text(sig_of(path), sig, sizeof sig);
    {
        char copy[1024], *save = NULL;
        memcpy(copy, sig, sig_len + 1);
        int i = 0;
        for (char *l = strtok_r(copy, "\n", &save); l && i < 4; l = strtok_r(NULL, "\n", &save))
            snprintf(lines[i++], sizeof lines[0], "%s", l);
        CHECK_INT(i, 4);
    }
    uint8_t blob[80], global[70];
    size_t n = 0;
    CHECK(sodium_base642bin(blob, sizeof blob, lines[1], strlen(lines[1]), NULL, &n, NULL,
                            sodium_base64_VARIANT_ORIGINAL) == 0 &&
          n == 74);
    CHECK(sodium_base642bin(global, sizeof global, lines[3], strlen(lines[3]), NULL, &n, NULL,
                            sodium_base64_VARIANT_ORIGINAL) == 0 &&
          n == 64);

    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    char line[256];
    const char *sp = sig_of(path);
    char sig_path[4200];
    snprintf(sig_path, sizeof sig_path, "%s", sp);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_OK);

    /* Each variant: the verdict must be invalid (or an error), the reason set. */
#define EXPECT_REFUSED(what)                                                                       \
    do {                                                                                           \
        int err_ = judge(p, path, file_url(path), &why);                                           \
        if (err_ != VALIDATE_EPLUGIN_REJECTED && err_ != VALIDATE_EPLUGIN_FAILED)                  \
            fprintf(stderr, "  variant: %s\n", what);                                              \
        CHECK(err_ == VALIDATE_EPLUGIN_REJECTED || err_ == VALIDATE_EPLUGIN_FAILED);               \
        CHECK(why.text[0] != '\0');                                                                \
    } while (0)

    write_text(sig_path, "");
    EXPECT_REFUSED("empty");
    CHECK_HAS(why.text, "not four lines");
    /* Truncated anywhere before the last line's final newline (which is
     * optional). */
    for (size_t cut = 1; cut < sig_len - 1; cut += 3) {
        write_bytes(sig_path, sig, cut);
        EXPECT_REFUSED("truncated");
    }
    write_bytes(sig_path, sig, sig_len - 2); /* loses the last base64 character */
    EXPECT_REFUSED("last line short");
    CHECK_HAS(why.text, "line 4");

    snprintf(line, sizeof line, "%s", lines[1]);
    line[10] = '!';
    write_sig_lines(sig_path, lines, 1, line);
    EXPECT_REFUSED("bad base64 on line 2");
    CHECK_HAS(why.text, "line 2");
    snprintf(line, sizeof line, "%s", lines[3]);
    line[5] = '*';
    write_sig_lines(sig_path, lines, 3, line);
    EXPECT_REFUSED("bad base64 on line 4");
    CHECK_HAS(why.text, "line 4");
    snprintf(line, sizeof line, " %.200s", lines[1]);
    write_sig_lines(sig_path, lines, 1, line);
    EXPECT_REFUSED("a blank before the base64");

    b64(blob, 73, line, sizeof line);
    write_sig_lines(sig_path, lines, 1, line);
    EXPECT_REFUSED("73-byte signature blob");
    uint8_t longer[75];
    memcpy(longer, blob, 74);
    longer[74] = 0;
    b64(longer, 75, line, sizeof line);
    write_sig_lines(sig_path, lines, 1, line);
    EXPECT_REFUSED("75-byte signature blob");
    b64(global, 63, line, sizeof line);
    write_sig_lines(sig_path, lines, 3, line);
    EXPECT_REFUSED("63-byte global signature");

    uint8_t other[74];
    memcpy(other, blob, 74);
    other[0] = 'X';
    b64(other, 74, line, sizeof line);
    write_sig_lines(sig_path, lines, 1, line);
    EXPECT_REFUSED("unknown algorithm");
    CHECK_HAS(why.text, "unsupported signature algorithm");
    other[0] = 'E';
    other[1] = 'd'; /* prehashed signature relabelled as legacy */
    b64(other, 74, line, sizeof line);
    write_sig_lines(sig_path, lines, 1, line);
    EXPECT_REFUSED("relabelled algorithm");

    write_sig_lines(sig_path, lines, 0, "a comment without its prefix");
    EXPECT_REFUSED("line 1 prefix");
    CHECK_HAS(why.text, "line 1");
    snprintf(line, sizeof line, "Trusted comment: %.200s", lines[2] + 17);
    write_sig_lines(sig_path, lines, 2, line);
    EXPECT_REFUSED("line 3 prefix");
    CHECK_HAS(why.text, "line 3");

    char extra[2048];
    snprintf(extra, sizeof extra, "%s\n", sig);
    write_text(sig_path, extra);
    EXPECT_REFUSED("a blank line after");
    snprintf(extra, sizeof extra, "%sextra\n", sig);
    write_text(sig_path, extra);
    EXPECT_REFUSED("a fifth line");

    /* A NUL or a bare CR inside the trusted comment. */
    memcpy(extra, sig, sig_len + 1);
    char *tc = strstr(extra, "\ntrusted comment: ");
    CHECK(tc != NULL);
    tc += 20;
    *tc = '\0';
    write_bytes(sig_path, extra, sig_len);
    EXPECT_REFUSED("NUL in the trusted comment");
    *tc = '\r';
    write_bytes(sig_path, extra, sig_len);
    EXPECT_REFUSED("CR in the trusted comment");

    /* Huge ones: junk just under the limit, and more than the limit. */
    size_t big = 200 * 1024;
    char *junk = malloc(big);
    CHECK(junk != NULL);
    memset(junk, 'A', big);
    write_bytes(sig_path, junk, 64 * 1024);
    EXPECT_REFUSED("64 KiB of junk");
    write_bytes(sig_path, junk, 64 * 1024 + 1);
    EXPECT_REFUSED("64 KiB + 1");
    CHECK_HAS(why.text, "larger than 65536 bytes");
    write_bytes(sig_path, junk, big);
    EXPECT_REFUSED("200 KiB");
    randombytes_buf(junk, big);
    write_bytes(sig_path, junk, 1000);
    EXPECT_REFUSED("random bytes");
    free(junk);

    /* What is not a regular file is refused without blocking on it. */
    CHECK(unlink(sig_path) == 0);
    CHECK(mkfifo(sig_path, 0644) == 0);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "not a regular file");
    CHECK(unlink(sig_path) == 0);
    CHECK(mkdir(sig_path, 0755) == 0);
    CHECK_INT(judge(p, path, file_url(path), &why), VALIDATE_EPLUGIN_FAILED);
    CHECK(rmdir(sig_path) == 0);
#undef EXPECT_REFUSED
    validate_plugin_close(p);
}

static void test_oversized_signature_over_http_is_invalid(void)
{
    struct key a;
    make_key("a", &a);
    write_pattern(web_path("huge.bin"), 1000, 11);
    write_pattern(web_path("huge.bin.minisig"), 300 * 1024, 12);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, web_path("huge.bin"), http_url("huge.bin"), &why),
              VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "larger than 65536 bytes");
    validate_plugin_close(p);
}

/* ------------------------------------------------------------------ */
/* Errors: sizes, legacy limits, hanging servers                      */

static void test_size_other_than_announced_is_an_error(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 13);
    sign(&a, path, 0, NULL);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge_sized(p, path, file_url(path), 999, &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "holds 1000 bytes, not the 999 announced");
    validate_plugin_close(p);
}

static void test_legacy_signature_over_a_huge_file_is_an_error(void)
{
    struct key a;
    make_key("a", &a);
    const char *small = check_path("small.bin"), *huge = check_path("huge.bin");
    write_pattern(small, 10, 14);
    sign(&a, small, 1, NULL);
    char sig[1024];
    read_text(sig_of(small), sig, sizeof sig);
    write_text(sig_of(huge), sig);
    int fd = open(huge, O_WRONLY | O_CREAT | O_TRUNC, 0644); /* sparse: costs no space */
    CHECK(fd >= 0);
    CHECK(ftruncate(fd, (off_t)(1ull << 30) + 1) == 0);
    close(fd);
    validate_plugin *p = open_with_keys(&a, NULL);
    validate_error why = {0};
    CHECK_INT(judge(p, huge, file_url(huge), &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "legacy");
    CHECK_HAS(why.text, "1 GiB");
    validate_plugin_close(p);
}

static void test_server_that_never_answers_times_out(void)
{
    struct key a;
    make_key("a", &a);
    const char *path = check_path("data.bin");
    write_pattern(path, 1000, 15);
    /* Connections complete in the kernel's backlog and are never accepted. */
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    CHECK(s >= 0);
    CHECK(bind(s, (struct sockaddr *)&addr, sizeof addr) == 0);
    CHECK(listen(s, 16) == 0);
    CHECK(getsockname(s, (struct sockaddr *)&addr, &len) == 0);
    char config[256], url[128];
    snprintf(config, sizeof config, "timeout = 1\npublic-key = %s\n", a.pub);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/data.bin", ntohs(addr.sin_port));
    validate_plugin *p = open_with(config);
    validate_error why = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int err = judge(p, path, url, &why);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(s);
    validate_plugin_close(p);
    CHECK_INT(err, VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "timed out after 1 s");
    CHECK(t1.tv_sec - t0.tv_sec < 5);
}

/* ------------------------------------------------------------------ */
/* Configuration                                                      */

static void test_config_errors_refuse_the_load(void)
{
    struct key a, b;
    make_key("a", &a);
    make_key("b", &b);
    char sec[1024];
    read_text(a.sec, sec, sizeof sec);
    char *sec_line = strchr(sec, '\n');
    CHECK(sec_line != NULL);
    sec_line++;
    sec_line[strcspn(sec_line, "\n")] = '\0';
    char short_key[128];
    snprintf(short_key, sizeof short_key, "%.52s", a.pub);
    uint8_t raw[42];
    size_t n = 0;
    CHECK(sodium_base642bin(raw, sizeof raw, a.pub, strlen(a.pub), NULL, &n, NULL,
                            sodium_base64_VARIANT_ORIGINAL) == 0 &&
          n == 42);
    raw[1] = 'D'; /* "ED" is a signature algorithm, never a key's */
    char relabelled[128];
    CHECK(sodium_bin2base64(relabelled, sizeof relabelled, raw, sizeof raw,
                            sodium_base64_VARIANT_ORIGINAL) != NULL);

    char bad[16][512];
    int k = 0;
    snprintf(bad[k++], sizeof bad[0], "%s", "");
    snprintf(bad[k++], sizeof bad[0], "%s", "# nothing but a comment\n\n");
    snprintf(bad[k++], sizeof bad[0], "%s", "public-key = !!!not base64!!!\n");
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\n", short_key);
    snprintf(bad[k++], sizeof bad[0], "public-key = %sAAAA\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\n", relabelled);
    snprintf(bad[k++], sizeof bad[0], "public-key = %.400s\n", sec_line);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\ngarbage\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\nkey = value\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s # the release key\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\npublic-key = %s\n", a.pub, a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\ntimeout = 0\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\ntimeout = 3601\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\ntimeout = 5s\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key = %s\ntimeout = 5\ntimeout = 6\n", a.pub);
    snprintf(bad[k++], sizeof bad[0], "public-key =\n");
    for (int i = 0; i < k; i++) {
        validate_plugin *p = NULL;
        validate_error why = {0};
        int err = validate_plugin_open(MINISIGN_PLUGIN, bad[i], &p, &why);
        if (err != VALIDATE_EPLUGIN_INIT)
            fprintf(stderr, "  config %d loaded: %s\n", i, bad[i]);
        CHECK_INT(err, VALIDATE_EPLUGIN_INIT);
        CHECK(p == NULL);
    }
    validate_plugin *p = NULL;
    validate_error why = {0};
    CHECK_INT(validate_plugin_open(MINISIGN_PLUGIN, NULL, &p, &why), VALIDATE_EPLUGIN_INIT);
    /* 65 keys is one too many. */
    size_t big_len = 65 * 80 + 1;
    char *big = malloc(big_len);
    CHECK(big != NULL);
    big[0] = '\0';
    for (int i = 0; i < 65; i++) {
        uint8_t key[42] = {'E', 'd'};
        key[2] = (uint8_t)i; /* distinct key ids */
        char text[64];
        CHECK(sodium_bin2base64(text, sizeof text, key, sizeof key,
                                sodium_base64_VARIANT_ORIGINAL) != NULL);
        strcat(big, "public-key=");
        strcat(big, text);
        strcat(big, "\n");
    }
    CHECK_INT(validate_plugin_open(MINISIGN_PLUGIN, big, &p, &why), VALIDATE_EPLUGIN_INIT);
    free(big);

    /* What is allowed: comments, blank lines, blanks around '=', CRLF, no
     * final newline, a timeout. */
    char good[1024];
    snprintf(good, sizeof good,
             "# minisign.conf\r\n\r\n  # indented comment\n\tpublic-key=%s \r\n"
             "timeout   =   3600\npublic-key = %s",
             a.pub, b.pub);
    p = open_with(good);
    validate_plugin_close(p);
}

static void test_config_parser_survives_arbitrary_text(void)
{
    struct key a;
    make_key("a", &a);
    char *text = malloc(4096);
    CHECK(text != NULL);
    static const char alphabet[] = "public-key=timeout 0123456789#\n\r\tRWQ+/=AZaz";
    /* One plugin stays open so that each round does not load libcurl anew. */
    char config[256];
    snprintf(config, sizeof config, "public-key = %s\n", a.pub);
    validate_plugin *keep = open_with(config);
    /* The plugin explains each refused configuration on stderr; quiet here. */
    fflush(stderr);
    int saved_stderr = dup(2), devnull = open("/dev/null", O_WRONLY);
    CHECK(saved_stderr >= 0 && devnull >= 0);
    dup2(devnull, 2);
    close(devnull);
    for (int round = 0; round < 2000; round++) {
        size_t len = 1 + (size_t)(randombytes_uniform(4000));
        if (round % 2 == 0) {
            for (size_t i = 0; i < len; i++)
                text[i] = alphabet[randombytes_uniform(sizeof alphabet - 1)];
        } else {
            randombytes_buf(text, len);
            for (size_t i = 0; i < len; i++)
                if (text[i] == '\0')
                    text[i] = 'x';
        }
        text[len] = '\0';
        validate_plugin *p = NULL;
        validate_error why = {0};
        if (validate_plugin_open(MINISIGN_PLUGIN, text, &p, &why) == VALIDATE_OK)
            validate_plugin_close(p);
    }
    dup2(saved_stderr, 2);
    close(saved_stderr);
    validate_plugin_close(keep);
    free(text);
}

/* ------------------------------------------------------------------ */

static void teardown(void)
{
    test_nginx_stop(&web);
}

static int setup(void)
{
    if ((fixture_dir = test_scratch_dir("minisign")) == NULL)
        return -1;
    atexit(teardown);
    test_nginx_config cfg = {
        .server = "location = /gone.bin.minisig { return 410; }"
                  "location = /broken.bin.minisig { return 500; }"
                  "location = /moved.bin.minisig { return 302 /data.bin.minisig; }"
                  "location = /loop.bin.minisig { return 302 /loop.bin.minisig; }",
    };
    return test_nginx_start(&web, fixture_dir, &cfg);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0 || setup() != 0) {
        fprintf(stderr, "fixture failed to start\n");
        return 1;
    }
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_prehashed_signature_over_file_url_is_valid),
                         CASE(test_legacy_signature_is_valid),
                         CASE(test_empty_file_with_either_signature_is_valid),
                         CASE(test_signature_over_http_is_valid),
                         CASE(test_second_configured_key_verifies_after_rotation),
                         CASE(test_crlf_signature_is_accepted),
                         CASE(test_tampered_content_is_invalid),
                         CASE(test_signature_by_another_key_is_invalid),
                         CASE(test_tampered_trusted_comment_is_invalid),
                         CASE(test_missing_signature_is_invalid),
                         CASE(test_malformed_signatures_are_refused),
                         CASE(test_oversized_signature_over_http_is_invalid),
                         CASE(test_size_other_than_announced_is_an_error),
                         CASE(test_legacy_signature_over_a_huge_file_is_an_error),
                         CASE(test_server_that_never_answers_times_out),
                         CASE(test_config_errors_refuse_the_load),
                         CASE(test_config_parser_survives_arbitrary_text),
                         {0},
                     });
}

/*
 * dopa-validate: runs the validator plugins on one file, outside dopad.
 *
 * dopad starts it as the job's file user, with stdout on a pipe, and kills
 * it when it overruns its time. It loads every plugin of the directory,
 * asks each about the file and prints one line:
 *
 *     valid
 *     invalid <reason>
 *     error <reason>
 *
 * Anything else (a crash, nothing, exit status not 0) fails the validation.
 * The line goes to the descriptor dopad gave as stdout; the plugins' own
 * stdout goes where stderr goes, so nothing they print can pass for it.
 *
 * usage: dopa-validate PLUGIN_DIR FILE SIZE URL LOCAL_NAME CONTENT_ID|-
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dopa_validator.h"
#include "validate.h"

static FILE *out;

static int verdict(const char *word, const char *reason)
{
    /* One line: the reason may not break it. */
    char clean[1024];
    size_t n = 0;
    for (; reason[n] != '\0' && n + 1 < sizeof clean; n++)
        clean[n] = reason[n] == '\n' || reason[n] == '\r' ? ' ' : reason[n];
    clean[n] = '\0';
    fprintf(out, "%s%s%s\n", word, n ? " " : "", clean);
    return fflush(out) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int fd_out = dup(1);
    if (fd_out < 0 || dup2(2, 1) < 0 || (out = fdopen(fd_out, "w")) == NULL)
        return 2;
    if (argc != 7) {
        fprintf(stderr, "usage: dopa-validate PLUGIN_DIR FILE SIZE URL LOCAL_NAME CONTENT_ID|-\n");
        return 2;
    }
    const char *dir = argv[1], *path = argv[2], *url = argv[4], *local = argv[5];
    char *end;
    errno = 0;
    unsigned long long size = strtoull(argv[3], &end, 10);
    uint8_t content_id[32];
    int has_id = strcmp(argv[6], "-") != 0;
    if (errno != 0 || *end != '\0' || argv[3][0] == '\0' ||
        (has_id && validate_unhex(argv[6], content_id, sizeof content_id) != VALIDATE_OK))
        return verdict("error", "dopa-validate: bad arguments");

    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < size) {
        char why[512];
        snprintf(why, sizeof why, "%s: %s", path,
                 fd < 0 ? strerror(errno) : "not the file that was transferred");
        return verdict("error", why);
    }
    /* The plugins are promised the whole-file SHA-256: computed here, from
     * the bytes they will read. */
    uint8_t sha[32], buf[1 << 16];
    validate_sha256_state h;
    validate_sha256_init(&h);
    for (uint64_t off = 0; off < size;) {
        size_t want = size - off < sizeof buf ? (size_t)(size - off) : sizeof buf;
        ssize_t n = validate_pread_full(fd, buf, want, off);
        if (n <= 0)
            return verdict("error", n < 0 ? strerror(errno) : "the file is shorter than it was");
        validate_sha256_update(&h, buf, (size_t)n);
        off += (uint64_t)n;
    }
    validate_sha256_final(&h, sha);

    validate_error why = {0};
    validate_plugin_set *set;
    if (validate_plugin_set_load(dir, &set, &why) != VALIDATE_OK)
        return verdict("error", why.text);
    struct dopa_validator_file file = {
        .struct_size = sizeof file,
        .fd = fd,
        .path = path,
        .remote_url = url,
        .local_name = local,
        .size = size,
        .sha256 = sha,
        .content_id = has_id ? content_id : NULL,
    };
    why = (validate_error){0};
    int err = validate_plugin_set_check(set, &file, &why);
    validate_plugin_set_free(set);
    close(fd);
    if (err == VALIDATE_OK)
        return verdict("valid", "");
    return verdict(err == VALIDATE_EPLUGIN_REJECTED ? "invalid" : "error", why.text);
}

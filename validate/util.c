/*
 * The validate module's error table, libsodium start-up, and the small file
 * helpers its key and manifest code share.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "validate.h"

static const char *const messages[] = {
    [VALIDATE_ENOMEM - VALIDATE_ENOMEM] = "out of memory",
    [VALIDATE_EINVAL - VALIDATE_ENOMEM] = "invalid argument",
    [VALIDATE_EIO - VALIDATE_ENOMEM] = "input/output error",
    [VALIDATE_ECRYPTO - VALIDATE_ENOMEM] = "cryptography library failed to initialise",
    [VALIDATE_ETOOBIG - VALIDATE_ENOMEM] = "manifest too large",
    [VALIDATE_ETRUNCATED - VALIDATE_ENOMEM] = "manifest truncated",
    [VALIDATE_EMAGIC - VALIDATE_ENOMEM] = "not a dopa manifest (bad magic)",
    [VALIDATE_EVERSION - VALIDATE_ENOMEM] = "unsupported manifest format version",
    [VALIDATE_ERESERVED - VALIDATE_ENOMEM] = "reserved manifest field is not zero",
    [VALIDATE_EPIECE_SIZE - VALIDATE_ENOMEM] =
        "piece size is not a power of two between 64 KiB and 16 MiB",
    [VALIDATE_ETOO_MANY_PIECES - VALIDATE_ENOMEM] = "too many pieces",
    [VALIDATE_EPIECE_COUNT - VALIDATE_ENOMEM] = "piece count disagrees with file and piece size",
    [VALIDATE_ETRAILING - VALIDATE_ENOMEM] = "trailing bytes after the manifest signature",
    [VALIDATE_EUNTRUSTED_KEY - VALIDATE_ENOMEM] = "manifest signed by an untrusted key",
    [VALIDATE_ESIGNATURE - VALIDATE_ENOMEM] = "manifest signature is invalid",
    [VALIDATE_EEXPIRED - VALIDATE_ENOMEM] = "manifest has expired",
    [VALIDATE_EFILE_SIZE - VALIDATE_ENOMEM] = "file size differs from the manifest",
    [VALIDATE_EPIECE_INDEX - VALIDATE_ENOMEM] = "piece index out of range",
    [VALIDATE_EPIECE_LENGTH - VALIDATE_ENOMEM] = "piece has the wrong length",
    [VALIDATE_EPIECE_HASH - VALIDATE_ENOMEM] = "piece hash mismatch",
    [VALIDATE_EFILE_HASH - VALIDATE_ENOMEM] = "whole-file hash mismatch",
    [VALIDATE_EKEY_FORMAT - VALIDATE_ENOMEM] = "malformed key",
    [VALIDATE_EKEY_PERMS - VALIDATE_ENOMEM] = "secret key file is accessible by other users",
    [VALIDATE_EEXISTS - VALIDATE_ENOMEM] = "file exists",
    [VALIDATE_EPLUGIN_OPEN - VALIDATE_ENOMEM] = "cannot load validator plugin",
    [VALIDATE_EPLUGIN_SYMBOL - VALIDATE_ENOMEM] = "validator plugin has no entry point",
    [VALIDATE_EPLUGIN_ABI - VALIDATE_ENOMEM] = "validator plugin ABI version mismatch",
    [VALIDATE_EPLUGIN_INIT - VALIDATE_ENOMEM] = "validator plugin failed to initialise",
    [VALIDATE_EPLUGIN_UNSAFE - VALIDATE_ENOMEM] =
        "validator plugin is writable by users other than its owner",
    [VALIDATE_EPLUGIN_REJECTED - VALIDATE_ENOMEM] = "validator plugin rejected the content",
    [VALIDATE_EPLUGIN_FAILED - VALIDATE_ENOMEM] = "validator plugin failed",
};

const char *validate_strerror(int err)
{
    if (err == VALIDATE_OK)
        return "success";
    if (err >= VALIDATE_ENOMEM && err < VALIDATE_ERR_END)
        return messages[err - VALIDATE_ENOMEM];
    return "unknown error";
}

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result;

static void init_sodium(void)
{
    init_result = sodium_init() < 0 ? VALIDATE_ECRYPTO : VALIDATE_OK;
}

int validate_init(void)
{
    pthread_once(&init_once, init_sodium);
    return init_result;
}

int validate_read_file(const char *path, size_t max, uint8_t **buf, size_t *len, unsigned *st_mode,
                       unsigned *st_uid, validate_error *why)
{
    int err;
    uint8_t *data = NULL;
    /* O_NONBLOCK so that a FIFO planted at the path cannot hang the open;
     * it is cleared once the file is known to be a regular one. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return validate_error_set(why, VALIDATE_EIO, "%s: %s", path, strerror(errno));

    struct stat st;
    if (fstat(fd, &st) != 0) {
        err = validate_error_set(why, VALIDATE_EIO, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        err = validate_error_set(why, VALIDATE_EIO, "%s: not a regular file", path);
        goto fail;
    }
    (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    if ((uint64_t)st.st_size > max) {
        err =
            validate_error_set(why, VALIDATE_ETOOBIG, "%s: %lld bytes, more than the limit of %zu",
                               path, (long long)st.st_size, max);
        goto fail;
    }
    /* Read one byte past the limit so that a file growing under us is
     * caught instead of silently truncated. */
    data = malloc(max + 2);
    if (data == NULL) {
        err = validate_error_set(why, VALIDATE_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    size_t got = 0;
    while (got <= max) {
        ssize_t n = read(fd, data + got, max + 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = validate_error_set(why, VALIDATE_EIO, "%s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    if (got > max) {
        err = validate_error_set(why, VALIDATE_ETOOBIG, "%s: more than the limit of %zu bytes",
                                 path, max);
        goto fail;
    }
    data[got] = '\0';
    close(fd);
    *buf = data;
    *len = got;
    if (st_mode != NULL)
        *st_mode = (unsigned)st.st_mode;
    if (st_uid != NULL)
        *st_uid = (unsigned)st.st_uid;
    return VALIDATE_OK;

fail:
    free(data);
    close(fd);
    return err;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Makes a rename or creation in the directory of `path` durable. */
static void sync_parent_dir(const char *path)
{
    char copy[PATH_MAX];
    if (strlen(path) >= sizeof copy)
        return;
    strcpy(copy, path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
}

int validate_temp_write(const char *path, const void *buf, size_t len, unsigned mode, char *tmp,
                        validate_error *why)
{
    if (snprintf(tmp, PATH_MAX, "%s.tmp.XXXXXX", path) >= PATH_MAX)
        return validate_error_set(why, VALIDATE_EINVAL, "%s: path too long", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return validate_error_set(why, VALIDATE_EIO, "%s: %s", path, strerror(errno));
    if (fchmod(fd, (mode_t)mode) != 0 || write_all(fd, buf, len) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return validate_error_set(why, VALIDATE_EIO, "%s: %s", path, strerror(e));
    }
    if (close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return validate_error_set(why, VALIDATE_EIO, "%s: %s", path, strerror(e));
    }
    return VALIDATE_OK;
}

int validate_temp_commit(const char *tmp, const char *path, int overwrite, validate_error *why)
{
    /* link() refuses an existing name, symlinks included, so "do not
     * overwrite" holds even against a name that appeared meanwhile. */
    int rc = overwrite ? rename(tmp, path) : link(tmp, path);
    int e = errno;
    if (!overwrite || rc != 0)
        unlink(tmp);
    if (rc != 0)
        return validate_error_set(why, e == EEXIST ? VALIDATE_EEXISTS : VALIDATE_EIO, "%s: %s",
                                  path, strerror(e));
    sync_parent_dir(path);
    return VALIDATE_OK;
}

int validate_write_file(const char *path, const void *buf, size_t len, unsigned mode, int overwrite,
                        validate_error *why)
{
    char tmp[PATH_MAX];
    int err = validate_temp_write(path, buf, len, mode, tmp, why);
    if (err != VALIDATE_OK)
        return err;
    return validate_temp_commit(tmp, path, overwrite, why);
}

/* What the hostile-input tests share; see hostile.h. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "../support/nginx.h"
#include "../support/proc.h"
#include "hostile.h"

int hostile_cli(const char *cli, const char *sock, uid_t uid, gid_t gid, char *out, size_t len,
                int timeout_s, const char *const *args)
{
    const char *argv[40] = {cli, "--socket", sock};
    size_t n = 3;
    while (args[n - 3] != NULL && n < sizeof argv / sizeof argv[0] - 1) {
        argv[n] = args[n - 3];
        n++;
    }
    argv[n] = NULL;
    return test_run(argv, out, out != NULL ? len : 0, timeout_s, uid, gid);
}

int hostile_cli_list(const char *cli, const char *sock, uid_t uid, gid_t gid, char *out, size_t len,
                     int timeout_s, ...)
{
    const char *args[36];
    size_t n = 0;
    va_list ap;
    va_start(ap, timeout_s);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < sizeof args / sizeof args[0] - 1)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return hostile_cli(cli, sock, uid, gid, out, len, timeout_s, args);
}

int hostile_json_text(const char *json, const char *field, char *out, size_t len)
{
    char key[80];
    snprintf(key, sizeof key, "\"%.70s\":\"", field);
    out[0] = '\0';
    const char *v = strstr(json, key);
    if (v == NULL)
        return -1;
    v += strlen(key);
    size_t n = strcspn(v, "\"");
    if (n >= len)
        return -1;
    memcpy(out, v, n);
    out[n] = '\0';
    return 0;
}

void hostile_first_line(const char *text, char *line, size_t len)
{
    size_t n = strcspn(text, "\n");
    if (n >= len)
        n = 0;
    memcpy(line, text, n);
    line[n] = '\0';
}

int hostile_write_pattern(const char *path, unsigned seed, uint64_t size)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        return -1;
    static unsigned char buf[1 << 16];
    for (uint64_t off = 0; off < size;) {
        size_t k = size - off < sizeof buf ? (size_t)(size - off) : sizeof buf;
        test_pattern_fill(seed, (size_t)off, buf, k);
        if (fwrite(buf, 1, k, f) != k) {
            fclose(f);
            return -1;
        }
        off += k;
    }
    return fclose(f) == 0 ? 0 : -1;
}

long long hostile_file_size(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0 ? (long long)st.st_size : -1;
}

int hostile_which_version(const char *path, unsigned seed1, uint64_t size1, unsigned seed2,
                          uint64_t size2, char *what, size_t len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(what, len, "missing");
        return 0;
    }
    /* The first byte that differs from each version, and whether anything
     * after the first difference from version 1 differs from version 2. */
    const uint64_t none = UINT64_MAX;
    uint64_t diff1 = none, diff2 = none, off = 0;
    int blend_broken = 0;
    static unsigned char buf[1 << 16], v1[1 << 16], v2[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        test_pattern_fill(seed1, (size_t)off, v1, n);
        test_pattern_fill(seed2, (size_t)off, v2, n);
        for (size_t i = 0; i < n; i++) {
            if (diff1 == none && (off + i >= size1 || buf[i] != v1[i]))
                diff1 = off + i;
            if (off + i >= size2 || buf[i] != v2[i]) {
                if (diff2 == none)
                    diff2 = off + i;
                if (diff1 != none)
                    blend_broken = 1;
            }
        }
        off += n;
    }
    fclose(f);
    if (diff1 == none && off == size1) {
        snprintf(what, len, "version 1");
        return 1;
    }
    if (diff2 == none && off == size2) {
        snprintf(what, len, "version 2");
        return 2;
    }
    if (diff1 == none || diff2 == none)
        snprintf(what, len, "the first %llu bytes of version %d", (unsigned long long)off,
                 diff1 == none ? 1 : 2);
    else if (diff1 > 0 && !blend_broken && off <= size2)
        snprintf(what, len, "a blend (version 1 to byte %llu, then version 2 to byte %llu)",
                 (unsigned long long)diff1, (unsigned long long)off);
    else
        snprintf(what, len, "%llu bytes of neither version", (unsigned long long)off);
    return 0;
}

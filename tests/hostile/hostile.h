/*
 * What the hostile-input tests share: the dopa command line run against a
 * dopad (as any user), and telling which version of the test content a
 * file holds. Nothing here CHECKs: each program judges what it gets back.
 */
#ifndef DOPA_TEST_HOSTILE_H
#define DOPA_TEST_HOSTILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Runs `cli --socket sock args...` (args ends with NULL) as uid/gid
 * (TEST_AS_ME for this process's) with a deadline; its output (stdout and
 * stderr) goes to out, which may be NULL. Returns its exit status, -1 on
 * timeout. */
int hostile_cli(const char *cli, const char *sock, uid_t uid, gid_t gid, char *out, size_t len,
                int timeout_s, const char *const *args);

/* The same, with the arguments listed up to a NULL. */
int hostile_cli_list(const char *cli, const char *sock, uid_t uid, gid_t gid, char *out, size_t len,
                     int timeout_s, ...);

/* The value of a string field `"field":"..."` in the JSON dopa prints (no
 * escapes expected), into out; "" when there is none. Returns 0, or -1
 * when the field is missing or its value does not fit. */
int hostile_json_text(const char *json, const char *field, char *out, size_t len);

/* The first line of text into line (empty if it does not fit). */
void hostile_first_line(const char *text, char *line, size_t len);

/* Writes `size` pattern bytes made with `seed` (test_pattern_fill) to path. */
int hostile_write_pattern(const char *path, unsigned seed, uint64_t size);

/* Says what path holds, compared with two versions of a content (pattern
 * bytes of seed1 and size1, of seed2 and size2): "missing", "version 1",
 * "version 2", "a blend (version 1 to byte N, then version 2)", or "N bytes
 * of neither version". Returns 1 or 2 for exactly that version, 0 for
 * anything else. */
int hostile_which_version(const char *path, unsigned seed1, uint64_t size1, unsigned seed2,
                          uint64_t size2, char *what, size_t len);

/* A file's size, or -1 when it is missing. */
long long hostile_file_size(const char *path);

#endif

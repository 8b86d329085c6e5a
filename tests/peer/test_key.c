/* Group keys: generation, text form, key files and their permissions. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "../check.h"
#include "peer.h"

static void write_bytes(const char *path, const void *bytes, size_t len, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    CHECK(fd >= 0);
    CHECK(write(fd, bytes, len) == (ssize_t)len);
    CHECK(fchmod(fd, mode) == 0);
    close(fd);
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    write_bytes(path, text, strlen(text), mode);
}

static void read_text(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static int entries_in_tmpdir(void)
{
    DIR *d = opendir(check_tmpdir());
    struct dirent *e;
    int entries = 0;
    while ((e = readdir(d)) != NULL)
        entries += e->d_name[0] != '.';
    closedir(d);
    return entries;
}

static void test_group_key_text_round_trips(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES], other[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    char text[PEER_GROUP_KEY_TEXT_MAX], padded[128];
    peer_group_key_generate(key);
    peer_group_key_generate(other);
    CHECK(memcmp(key, other, sizeof key) != 0);
    peer_group_key_text(key, text);
    CHECK_INT(strlen(text), 10 + 43);
    CHECK(strncmp(text, "dopa-grp1:", 10) == 0);
    CHECK(strspn(text + 10, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
          43);
    CHECK_INT(peer_group_key_parse(text, back), PEER_OK);
    CHECK(memcmp(key, back, sizeof key) == 0);
    snprintf(padded, sizeof padded, " \t%s \r\n", text);
    memset(back, 0, sizeof back);
    CHECK_INT(peer_group_key_parse(padded, back), PEER_OK);
    CHECK(memcmp(key, back, sizeof key) == 0);

    /* A known key: 32 bytes 00..1f. */
    for (int i = 0; i < PEER_GROUP_KEY_BYTES; i++)
        key[i] = (uint8_t)i;
    peer_group_key_text(key, text);
    CHECK_STR(text, "dopa-grp1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
}

static void test_malformed_group_key_texts_are_rejected(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    char text[PEER_GROUP_KEY_TEXT_MAX], bad[128];
    peer_group_key_generate(key);
    peer_group_key_text(key, text);
    memset(back, 0x77, sizeof back);

    snprintf(bad, sizeof bad, "dopa-grp2:%s", text + 10);
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "dopa-pub1:%s", text + 10); /* a publisher key's prefix */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "DOPA-GRP1:%s", text + 10);
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%s", text + 10); /* no prefix */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%.*s", (int)strlen(text) - 1, text); /* short */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%sAA", text); /* long */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%s=", text); /* padding */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%s x", text); /* trailing word */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%s\n%s", text, text); /* two lines */
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "dopa-grp1: %s", text + 10);
    CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    const char *not_url_safe = "+/*.=\x80\xc0\xff";
    for (const char *c = not_url_safe; *c != '\0'; c++) {
        snprintf(bad, sizeof bad, "%s", text);
        bad[20] = *c;
        CHECK_INT(peer_group_key_parse(bad, back), PEER_EKEY_FORMAT);
    }
    /* The last character carries two padding bits, which must be zero:
     * every key has exactly one text form. */
    CHECK_INT(peer_group_key_parse("dopa-grp1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", back),
              PEER_OK);
    CHECK_INT(peer_group_key_parse("dopa-grp1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB", back),
              PEER_EKEY_FORMAT);
    CHECK_INT(peer_group_key_parse("dopa-grp1:", back), PEER_EKEY_FORMAT);
    CHECK_INT(peer_group_key_parse("", back), PEER_EKEY_FORMAT);
    CHECK_INT(peer_group_key_parse("   ", back), PEER_EKEY_FORMAT);
    CHECK_INT(peer_group_key_parse(NULL, back), PEER_EINVAL);
    CHECK_INT(peer_group_key_parse(text, NULL), PEER_EINVAL);
}

static void test_group_key_file_round_trips_with_private_mode(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    char contents[512], text[PEER_GROUP_KEY_TEXT_MAX];
    const mode_t umasks[] = {022, 0, 077, 0277};
    for (size_t i = 0; i < sizeof umasks / sizeof umasks[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "group-%zu.key", i);
        const char *path = check_path(name);
        peer_group_key_generate(key);
        mode_t old = umask(umasks[i]);
        int err = peer_group_key_save(key, path, 0, &why);
        umask(old);
        CHECK_INT(err, PEER_OK);
        struct stat st;
        CHECK(lstat(path, &st) == 0);
        CHECK(S_ISREG(st.st_mode));
        CHECK_INT(st.st_mode & 07777, 0600);
        memset(back, 0, sizeof back);
        CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);
        CHECK(memcmp(key, back, sizeof key) == 0);
    }
    /* The file explains itself and holds the text form. */
    read_text(check_path("group-3.key"), contents, sizeof contents);
    CHECK(contents[0] == '#');
    peer_group_key_text(key, text);
    CHECK_HAS(contents, text);
    CHECK_HAS(contents, "group key");
    CHECK_INT(entries_in_tmpdir(), 4); /* no temporary file left */
}

static void test_group_key_save_refuses_to_overwrite(void)
{
    uint8_t a[PEER_GROUP_KEY_BYTES], b[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    const char *path = check_path("group.key");
    peer_group_key_generate(a);
    peer_group_key_generate(b);
    CHECK_INT(peer_group_key_save(a, path, 0, &why), PEER_OK);
    CHECK_INT(peer_group_key_save(b, path, 0, &why), PEER_EEXISTS);
    CHECK_HAS(why.text, "refusing to overwrite");
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);
    CHECK(memcmp(a, back, sizeof a) == 0);
    CHECK_INT(entries_in_tmpdir(), 1);
    CHECK_INT(peer_group_key_save(b, path, 1, &why), PEER_OK);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);
    CHECK(memcmp(b, back, sizeof b) == 0);
    CHECK_INT(entries_in_tmpdir(), 1);
}

static void test_group_key_save_never_follows_symlinks(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    char text[64];
    const char *victim = check_path("victim");
    const char *link = check_path("group.key");
    write_text(victim, "untouched", 0644);
    CHECK(symlink(victim, link) == 0);
    peer_group_key_generate(key);
    CHECK_INT(peer_group_key_save(key, link, 0, &why), PEER_EEXISTS);
    read_text(victim, text, sizeof text);
    CHECK_STR(text, "untouched");
    /* With overwrite the link itself is replaced, not its target. */
    CHECK_INT(peer_group_key_save(key, link, 1, &why), PEER_OK);
    read_text(victim, text, sizeof text);
    CHECK_STR(text, "untouched");
    struct stat st;
    CHECK(lstat(link, &st) == 0 && S_ISREG(st.st_mode));
    CHECK_INT(st.st_mode & 07777, 0600);

    /* A dangling link does not get its target created. */
    const char *dangling = check_path("dangling.key");
    CHECK(symlink(check_path("elsewhere"), dangling) == 0);
    CHECK_INT(peer_group_key_save(key, dangling, 0, &why), PEER_EEXISTS);
    CHECK(lstat(check_path("elsewhere"), &st) != 0);
    CHECK_INT(entries_in_tmpdir(), 3);
}

static void test_group_key_save_failure_leaves_nothing(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    peer_group_key_generate(key);
    CHECK_INT(peer_group_key_save(key, check_path("missing/group.key"), 0, &why), PEER_EIO);
    CHECK_HAS(why.text, "missing/group.key");
    CHECK(mkdir(check_path("dir"), 0700) == 0);
    CHECK(peer_group_key_save(key, check_path("dir"), 1, &why) != PEER_OK);
    CHECK_INT(entries_in_tmpdir(), 1);
    CHECK_INT(peer_group_key_save(key, NULL, 0, &why), PEER_EINVAL);
    CHECK_INT(peer_group_key_save(key, "", 0, &why), PEER_EINVAL);
    CHECK_INT(peer_group_key_save(NULL, check_path("k"), 0, &why), PEER_EINVAL);
    /* A NULL why is allowed. */
    CHECK_INT(peer_group_key_save(key, check_path("k"), 0, NULL), PEER_OK);
    CHECK_INT(peer_group_key_save(key, check_path("k"), 0, NULL), PEER_EEXISTS);
}

static void test_group_key_readable_by_others_is_refused(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    const char *path = check_path("group.key");
    peer_group_key_generate(key);
    CHECK_INT(peer_group_key_save(key, path, 0, &why), PEER_OK);
    const mode_t refused[] = {0644, 0640, 0604, 0610, 0601, 0660, 0666};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        CHECK(chmod(path, refused[i]) == 0);
        memset(back, 0, sizeof back);
        CHECK_INT(peer_group_key_load(path, back, &why), PEER_EKEY_PERMS);
        CHECK_HAS(why.text, "chmod 600");
        uint8_t zero[PEER_GROUP_KEY_BYTES] = {0};
        CHECK(memcmp(back, zero, sizeof back) == 0);
    }
    CHECK(chmod(path, 0400) == 0);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);
    CHECK(memcmp(key, back, sizeof key) == 0);
}

static void test_group_key_load_refuses_symlinks_and_odd_files(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    const char *path = check_path("group.key");
    peer_group_key_generate(key);
    CHECK_INT(peer_group_key_save(key, path, 0, &why), PEER_OK);
    CHECK(symlink(path, check_path("link.key")) == 0);
    CHECK_INT(peer_group_key_load(check_path("link.key"), back, &why), PEER_EIO);
    CHECK_HAS(why.text, "symbolic link");
    CHECK(mkdir(check_path("dir"), 0700) == 0);
    CHECK_INT(peer_group_key_load(check_path("dir"), back, &why), PEER_EIO);
    /* A FIFO must not hang the load. */
    CHECK(mkfifo(check_path("fifo"), 0600) == 0);
    CHECK_INT(peer_group_key_load(check_path("fifo"), back, &why), PEER_EIO);
    CHECK_HAS(why.text, "not a regular file");
    CHECK_INT(peer_group_key_load(check_path("none"), back, &why), PEER_EIO);
    CHECK_INT(peer_group_key_load(NULL, back, &why), PEER_EINVAL);
    CHECK_INT(peer_group_key_load(path, NULL, &why), PEER_EINVAL);
}

static void test_group_key_file_contents_are_checked(void)
{
    uint8_t key[PEER_GROUP_KEY_BYTES], back[PEER_GROUP_KEY_BYTES];
    validate_error why = {0};
    char text[PEER_GROUP_KEY_TEXT_MAX], file[8192];
    const char *path = check_path("k");
    peer_group_key_generate(key);
    peer_group_key_text(key, text);

    /* Comments and blank lines before the key; what follows it is not read. */
    snprintf(file, sizeof file, "# a group key\n\n   \t\n  # indented comment\r\n  %s \r\nnoise\n",
             text);
    write_text(path, file, 0600);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);
    CHECK(memcmp(key, back, sizeof key) == 0);
    snprintf(file, sizeof file, "%s", text); /* no newline at the end */
    write_text(path, file, 0600);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);

    /* Each: what comes before the key, whether the key is there, after it. */
    const struct {
        const char *before;
        int has_key;
        const char *after;
    } bad[] = {
        {"", 0, ""},
        {"\n\n", 0, ""},
        {"# only\n\n# comments\n", 0, ""},
        {"noise\n", 1, "\n"},
        {"", 1, " junk\n"},
        {"dopa-sec1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", 1, "\n"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(file, sizeof file, "%s%s%s", bad[i].before, bad[i].has_key ? text : "",
                 bad[i].after);
        write_text(path, file, 0600);
        CHECK_INT(peer_group_key_load(path, back, &why), PEER_EKEY_FORMAT);
        CHECK_HAS(why.text, "not a dopa group key");
    }
    /* A NUL byte does not hide what follows it. */
    snprintf(file, sizeof file, "#\n%s\n", text);
    file[1] = '\0';
    write_bytes(path, file, strlen(text) + 3, 0600);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_EKEY_FORMAT);

    /* 4096 bytes at most: the key may end exactly there, not one past. */
    size_t tlen = strlen(text);
    memset(file, '#', 4096);
    file[4096 - tlen - 2] = '\n';
    memcpy(file + 4096 - tlen - 1, text, tlen);
    file[4095] = '\n';
    write_bytes(path, file, 4096, 0600);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_OK);
    CHECK(memcmp(key, back, sizeof key) == 0);
    file[4096] = '\n';
    write_bytes(path, file, 4097, 0600);
    CHECK_INT(peer_group_key_load(path, back, &why), PEER_EKEY_FORMAT);
    CHECK_HAS(why.text, "larger than 4096");
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_group_key_text_round_trips),
                         CASE(test_malformed_group_key_texts_are_rejected),
                         CASE(test_group_key_file_round_trips_with_private_mode),
                         CASE(test_group_key_save_refuses_to_overwrite),
                         CASE(test_group_key_save_never_follows_symlinks),
                         CASE(test_group_key_save_failure_leaves_nothing),
                         CASE(test_group_key_readable_by_others_is_refused),
                         CASE(test_group_key_load_refuses_symlinks_and_odd_files),
                         CASE(test_group_key_file_contents_are_checked),
                         {0},
                     });
}

/* Publisher keys: generation, files, permissions, text forms. */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "../check.h"
#include "validate.h"

static void write_text(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    CHECK(fd >= 0);
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    CHECK(fchmod(fd, mode) == 0);
    close(fd);
}

static void read_text(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static void test_key_files_round_trip_with_private_mode(void)
{
    validate_secret_key *sk = NULL, *back = NULL;
    validate_public_key pub;
    validate_error why = {0};
    const char *path = check_path("publisher.key");
    CHECK_INT(validate_secret_key_generate(&sk), VALIDATE_OK);
    umask(022);
    CHECK_INT(validate_secret_key_save(sk, path, 0, &why), VALIDATE_OK);
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK_INT(st.st_mode & 0777, 0600);
    CHECK(stat(check_path("publisher.key.pub"), &st) == 0);
    CHECK_INT(st.st_mode & 0777, 0644);

    CHECK_INT(validate_secret_key_load(path, &back, &why), VALIDATE_OK);
    CHECK(memcmp(validate_secret_key_public(back)->key, validate_secret_key_public(sk)->key, 32) ==
          0);
    CHECK_INT(validate_public_key_load(check_path("publisher.key.pub"), &pub, &why), VALIDATE_OK);
    CHECK(memcmp(pub.key, validate_secret_key_public(sk)->key, 32) == 0);
    CHECK(memcmp(pub.id, validate_secret_key_public(sk)->id, 16) == 0);
    validate_secret_key_free(back);
    validate_secret_key_free(sk);
}

static void test_key_save_refuses_to_overwrite(void)
{
    validate_secret_key *a = NULL, *b = NULL, *back = NULL;
    validate_error why = {0};
    const char *path = check_path("k");
    CHECK_INT(validate_secret_key_generate(&a), VALIDATE_OK);
    CHECK_INT(validate_secret_key_generate(&b), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(a, path, 0, &why), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(b, path, 0, &why), VALIDATE_EEXISTS);
    CHECK_HAS(why.text, "refusing to overwrite");
    CHECK_INT(validate_secret_key_load(path, &back, &why), VALIDATE_OK);
    CHECK(memcmp(validate_secret_key_public(back)->key, validate_secret_key_public(a)->key, 32) ==
          0);
    validate_secret_key_free(back);
    CHECK_INT(validate_secret_key_save(b, path, 1, &why), VALIDATE_OK);
    CHECK_INT(validate_secret_key_load(path, &back, &why), VALIDATE_OK);
    CHECK(memcmp(validate_secret_key_public(back)->key, validate_secret_key_public(b)->key, 32) ==
          0);
    validate_secret_key_free(back);
    validate_secret_key_free(a);
    validate_secret_key_free(b);
}

static void test_failed_overwrite_keeps_the_old_secret_key(void)
{
    validate_secret_key *a = NULL, *b = NULL, *back = NULL;
    validate_error why = {0};
    const char *path = check_path("k");
    CHECK_INT(validate_secret_key_generate(&a), VALIDATE_OK);
    CHECK_INT(validate_secret_key_generate(&b), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(a, path, 0, &why), VALIDATE_OK);
    /* The public key cannot be written (a directory is in the way): the old
     * secret key must survive, and no temporary file may be left. */
    CHECK(unlink(check_path("k.pub")) == 0);
    CHECK(mkdir(check_path("k.pub"), 0755) == 0);
    CHECK(mkdir(check_path("k.pub/x"), 0755) == 0);
    CHECK(validate_secret_key_save(b, path, 1, &why) != VALIDATE_OK);
    CHECK_INT(validate_secret_key_load(path, &back, &why), VALIDATE_OK);
    CHECK(memcmp(validate_secret_key_public(back)->key, validate_secret_key_public(a)->key, 32) ==
          0);
    DIR *d = opendir(check_tmpdir());
    struct dirent *e;
    int entries = 0;
    while ((e = readdir(d)) != NULL)
        entries += e->d_name[0] != '.';
    closedir(d);
    CHECK_INT(entries, 2); /* k and the k.pub directory */
    validate_secret_key_free(back);
    validate_secret_key_free(a);
    validate_secret_key_free(b);
}

static void test_key_save_never_follows_symlinks(void)
{
    validate_secret_key *sk = NULL;
    validate_error why = {0};
    char text[64];
    const char *victim = check_path("victim");
    write_text(victim, "untouched", 0644);
    CHECK(symlink(victim, check_path("k")) == 0);
    CHECK_INT(validate_secret_key_generate(&sk), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(sk, check_path("k"), 0, &why), VALIDATE_EEXISTS);
    read_text(victim, text, sizeof text);
    CHECK_STR(text, "untouched");
    /* With overwrite the link itself is replaced, not its target. */
    CHECK_INT(validate_secret_key_save(sk, check_path("k"), 1, &why), VALIDATE_OK);
    read_text(victim, text, sizeof text);
    CHECK_STR(text, "untouched");
    struct stat st;
    CHECK(lstat(check_path("k"), &st) == 0 && S_ISREG(st.st_mode));
    validate_secret_key_free(sk);
}

static void test_secret_key_readable_by_others_is_refused(void)
{
    validate_secret_key *sk = NULL;
    validate_error why = {0};
    const char *path = check_path("k");
    CHECK_INT(validate_secret_key_generate(&sk), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(sk, path, 0, &why), VALIDATE_OK);
    validate_secret_key_free(sk);
    sk = NULL;
    CHECK(chmod(path, 0640) == 0);
    CHECK_INT(validate_secret_key_load(path, &sk, &why), VALIDATE_EKEY_PERMS);
    CHECK_HAS(why.text, "chmod 600");
    CHECK(sk == NULL);
    CHECK(chmod(path, 0604) == 0);
    CHECK_INT(validate_secret_key_load(path, &sk, &why), VALIDATE_EKEY_PERMS);
    CHECK(chmod(path, 0400) == 0);
    CHECK_INT(validate_secret_key_load(path, &sk, &why), VALIDATE_OK);
    validate_secret_key_free(sk);
}

static void test_malformed_key_texts_are_rejected(void)
{
    validate_secret_key *sk = NULL;
    validate_public_key pk;
    char text[VALIDATE_PUBLIC_KEY_TEXT_MAX], padded[128];
    CHECK_INT(validate_secret_key_generate(&sk), VALIDATE_OK);
    validate_public_key_text(validate_secret_key_public(sk), text);
    CHECK_INT(strlen(text), 10 + 43);
    snprintf(padded, sizeof padded, "  %s \n", text);
    CHECK_INT(validate_public_key_parse(padded, &pk), VALIDATE_OK);
    CHECK(memcmp(pk.key, validate_secret_key_public(sk)->key, 32) == 0);

    char bad[128];
    snprintf(bad, sizeof bad, "dopa-pub2:%s", text + 10);
    CHECK_INT(validate_public_key_parse(bad, &pk), VALIDATE_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%.*s", (int)strlen(text) - 1, text); /* short */
    CHECK_INT(validate_public_key_parse(bad, &pk), VALIDATE_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%sAA", text); /* long */
    CHECK_INT(validate_public_key_parse(bad, &pk), VALIDATE_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%s x", text); /* trailing word */
    CHECK_INT(validate_public_key_parse(bad, &pk), VALIDATE_EKEY_FORMAT);
    snprintf(bad, sizeof bad, "%s", text);
    bad[20] = '*';
    CHECK_INT(validate_public_key_parse(bad, &pk), VALIDATE_EKEY_FORMAT);
    /* libsodium itself takes bytes past 0x7f for digits: none may pass. */
    for (size_t at = 10; at < strlen(text); at++)
        for (int c = 0x80; c <= 0xff; c++) {
            snprintf(bad, sizeof bad, "%s", text);
            bad[at] = (char)c;
            CHECK_INT(validate_public_key_parse(bad, &pk), VALIDATE_EKEY_FORMAT);
        }
    CHECK_INT(validate_public_key_parse("dopa-pub1:", &pk), VALIDATE_EKEY_FORMAT);
    CHECK_INT(validate_public_key_parse("", &pk), VALIDATE_EKEY_FORMAT);
    /* 32 zero bytes decode fine but are not a usable Ed25519 point. */
    CHECK_INT(
        validate_public_key_parse("dopa-pub1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &pk),
        VALIDATE_EKEY_FORMAT);
    CHECK_INT(validate_public_key_parse(NULL, &pk), VALIDATE_EINVAL);
    validate_secret_key_free(sk);
}

static void test_key_files_with_wrong_contents_are_rejected(void)
{
    validate_secret_key *sk = NULL;
    validate_public_key pk;
    validate_error why = {0};
    const char *path = check_path("k");
    CHECK_INT(validate_secret_key_generate(&sk), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(sk, path, 0, &why), VALIDATE_OK);
    validate_secret_key_free(sk);
    sk = NULL;
    /* A public key file is not a secret key, and the reverse. */
    CHECK(rename(check_path("k.pub"), check_path("pub")) == 0);
    CHECK(chmod(check_path("pub"), 0600) == 0);
    CHECK_INT(validate_secret_key_load(check_path("pub"), &sk, &why), VALIDATE_EKEY_FORMAT);
    CHECK_HAS(why.text, "not a dopa secret key");
    CHECK_INT(validate_public_key_load(path, &pk, &why), VALIDATE_EKEY_FORMAT);
    CHECK_HAS(why.text, "not a dopa public key");
    write_text(check_path("comments"), "# only\n\n# comments\n", 0600);
    CHECK_INT(validate_public_key_load(check_path("comments"), &pk, &why), VALIDATE_EKEY_FORMAT);
    CHECK_INT(validate_public_key_load(check_path("none"), &pk, &why), VALIDATE_EIO);
    /* A NUL byte inside the file does not hide what follows it. */
    int fd = open(check_path("nul"), O_WRONLY | O_CREAT, 0600);
    CHECK(write(fd, "#\0x\n", 4) == 4);
    close(fd);
    CHECK_INT(validate_public_key_load(check_path("nul"), &pk, &why), VALIDATE_EKEY_FORMAT);
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_key_files_round_trip_with_private_mode),
                         CASE(test_key_save_refuses_to_overwrite),
                         CASE(test_failed_overwrite_keeps_the_old_secret_key),
                         CASE(test_key_save_never_follows_symlinks),
                         CASE(test_secret_key_readable_by_others_is_refused),
                         CASE(test_malformed_key_texts_are_rejected),
                         CASE(test_key_files_with_wrong_contents_are_rejected),
                         {0},
                     });
}

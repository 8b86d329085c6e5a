/* The validator plugin loader: the example plugin, every broken plugin, the
 * safety checks, and plugin directories. PLUGIN_DIR holds the plugins that
 * the build made from example_plugin.c and bad_plugin.c. */
#include <fcntl.h>
#include <sys/stat.h>

#include "../check.h"
#include "validate.h"

static const char *built(const char *name)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", PLUGIN_DIR, name);
    return path;
}

static void copy_file(const char *from, const char *to, mode_t mode)
{
    char buf[65536];
    int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, mode);
    CHECK(in >= 0 && out >= 0);
    ssize_t n;
    while ((n = read(in, buf, sizeof buf)) > 0)
        CHECK(write(out, buf, (size_t)n) == n);
    CHECK(fchmod(out, mode) == 0);
    close(in);
    close(out);
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    CHECK(fd >= 0);
    CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
    CHECK(fchmod(fd, mode) == 0);
    close(fd);
}

/* Describes a file with the given contents to a plugin; closes on return
 * through *fd_out. */
static struct dopa_validator_file file_with(const char *contents, int *fd_out)
{
    const char *path = check_path("content");
    write_text(path, contents, 0600);
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    *fd_out = fd;
    static uint8_t sha[32];
    validate_sha256(contents, strlen(contents), sha);
    return (struct dopa_validator_file){
        .struct_size = sizeof(struct dopa_validator_file),
        .fd = fd,
        .path = path,
        .remote_url = "https://example.test/file",
        .local_name = "/srv/file",
        .size = strlen(contents),
        .sha256 = sha,
    };
}

static void test_example_plugin_judges_by_prefix(void)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    int fd;
    CHECK_INT(validate_plugin_open(built("example.so"), "prefix=DOPA\n", &p, &why), VALIDATE_OK);
    CHECK_STR(validate_plugin_name(p), "example-prefix");
    CHECK_STR(validate_plugin_path(p), built("example.so"));
    struct dopa_validator_file f = file_with("DOPA content", &fd);
    CHECK_INT(validate_plugin_check(p, &f, &why), VALIDATE_OK);
    close(fd);
    f = file_with("ELF content", &fd);
    CHECK_INT(validate_plugin_check(p, &f, &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "example-prefix: /srv/file does not start with \"DOPA\"");
    close(fd);
    f = file_with("DO", &fd);
    CHECK_INT(validate_plugin_check(p, &f, &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "shorter than the prefix");
    close(fd);
    /* A file description from an older dopad (smaller struct) is refused. */
    f.struct_size = 8;
    CHECK_INT(validate_plugin_check(p, &f, &why), VALIDATE_EINVAL);
    CHECK_INT(validate_plugin_check(p, NULL, &why), VALIDATE_EINVAL);
    validate_plugin_close(p);
    validate_plugin_close(NULL);
}

static void test_plugin_init_failure_refuses_the_load(void)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    CHECK_INT(validate_plugin_open(built("example.so"), NULL, &p, &why), VALIDATE_EPLUGIN_INIT);
    CHECK_HAS(why.text, "example-prefix refused to start");
    CHECK_INT(validate_plugin_open(built("init_fails.so"), NULL, &p, &why), VALIDATE_EPLUGIN_INIT);
    CHECK(p == NULL);
}

static void test_plugin_errors_and_odd_verdicts_fail_validation(void)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    int fd;
    struct dopa_validator_file f = file_with("x", &fd);
    CHECK_INT(validate_plugin_open(built("odd_verdict.so"), NULL, &p, &why), VALIDATE_OK);
    CHECK_INT(validate_plugin_check(p, &f, &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "(verdict 42)");
    validate_plugin_close(p);
    CHECK_INT(validate_plugin_open(built("says_error.so"), NULL, &p, &why), VALIDATE_OK);
    CHECK_INT(validate_plugin_check(p, &f, &why), VALIDATE_EPLUGIN_FAILED);
    CHECK_HAS(why.text, "xxxxxxxx");
    CHECK_HAS(why.text, "(verdict 3)");
    validate_plugin_close(p);
    close(fd);
}

static void test_loader_refuses_broken_plugins(void)
{
    static const struct {
        const char *file;
        int err;
        const char *detail;
    } cases[] = {
        {"bad_abi.so", VALIDATE_EPLUGIN_ABI, "ABI version 99"},
        {"no_entry.so", VALIDATE_EPLUGIN_SYMBOL, "no symbol dopa_validator_entry"},
        {"null_entry.so", VALIDATE_EPLUGIN_ABI, "returned NULL"},
        {"no_validate.so", VALIDATE_EPLUGIN_ABI, "validate missing"},
        {"short_struct.so", VALIDATE_EPLUGIN_ABI, "size 8"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        validate_plugin *p = NULL;
        validate_error why = {0};
        CHECK_INT(validate_plugin_open(built(cases[i].file), NULL, &p, &why), cases[i].err);
        CHECK_HAS(why.text, cases[i].detail);
        CHECK(p == NULL);
    }
}

static void test_loader_refuses_what_is_not_a_plugin(void)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    write_text(check_path("text.so"), "not an ELF file\n", 0644);
    CHECK_INT(validate_plugin_open(check_path("text.so"), NULL, &p, &why), VALIDATE_EPLUGIN_OPEN);
    CHECK_INT(validate_plugin_open(check_path("missing.so"), NULL, &p, &why),
              VALIDATE_EPLUGIN_OPEN);
    CHECK_HAS(why.text, "No such file");
    CHECK_INT(validate_plugin_open(check_tmpdir(), NULL, &p, &why), VALIDATE_EPLUGIN_OPEN);
    CHECK_HAS(why.text, "not a regular file");
    CHECK_INT(validate_plugin_open("example.so", NULL, &p, &why), VALIDATE_EINVAL);
    CHECK(p == NULL);
}

static void test_loader_refuses_plugins_others_can_change(void)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    copy_file(built("accept_all.so"), check_path("open.so"), 0666);
    CHECK_INT(validate_plugin_open(check_path("open.so"), NULL, &p, &why), VALIDATE_EPLUGIN_UNSAFE);
    CHECK_HAS(why.text, "mode 0666");
    CHECK(chmod(check_path("open.so"), 0755) == 0);
    CHECK_INT(validate_plugin_open(check_path("open.so"), NULL, &p, &why), VALIDATE_OK);
    validate_plugin_close(p);
    p = NULL;
    if (geteuid() == 0) { /* only root can give a file away */
        CHECK(chown(check_path("open.so"), 4242, 4242) == 0);
        CHECK_INT(validate_plugin_open(check_path("open.so"), NULL, &p, &why),
                  VALIDATE_EPLUGIN_UNSAFE);
        CHECK_HAS(why.text, "owned by uid 4242");
    }
}

static void test_loader_checks_every_directory_above_the_plugin(void)
{
    validate_plugin *p = NULL;
    validate_error why = {0};
    CHECK(mkdir(check_path("open"), 0755) == 0);
    CHECK(chmod(check_path("open"), 0777) == 0); /* others may write, not sticky */
    copy_file(built("accept_all.so"), check_path("open/p.so"), 0755);
    CHECK_INT(validate_plugin_open(check_path("open/p.so"), NULL, &p, &why),
              VALIDATE_EPLUGIN_UNSAFE);
    CHECK_HAS(why.text, "/open: mode 0777");
    /* Sticky, like /tmp: nobody else can replace our entries. */
    CHECK(chmod(check_path("open"), 01777) == 0);
    CHECK_INT(validate_plugin_open(check_path("open/p.so"), NULL, &p, &why), VALIDATE_OK);
    validate_plugin_close(p);
    /* A symlink to a safe plugin is judged by its target. */
    CHECK(symlink(check_path("open/p.so"), check_path("link.so")) == 0);
    CHECK_INT(validate_plugin_open(check_path("link.so"), NULL, &p, &why), VALIDATE_OK);
    validate_plugin_close(p);
    CHECK(chmod(check_path("open/p.so"), 0777) == 0);
    CHECK_INT(validate_plugin_open(check_path("link.so"), NULL, &p, &why), VALIDATE_EPLUGIN_UNSAFE);
}

static void test_plugin_dir_loads_in_name_order_with_config(void)
{
    char dir[4096], marker[4096], conf[4200];
    snprintf(dir, sizeof dir, "%s", check_path("plugins"));
    snprintf(marker, sizeof marker, "%s", check_path("fini-marker"));
    CHECK(mkdir(dir, 0755) == 0);
    char path[4200];
    snprintf(path, sizeof path, "%s/20-example.so", dir);
    copy_file(built("example.so"), path, 0755);
    snprintf(path, sizeof path, "%s/20-example.conf", dir);
    write_text(path, "prefix=OK\n", 0644);
    snprintf(path, sizeof path, "%s/10-accept.so", dir);
    copy_file(built("accept_all.so"), path, 0755);
    snprintf(path, sizeof path, "%s/10-accept.conf", dir);
    snprintf(conf, sizeof conf, "%s\n", marker);
    write_text(path, conf, 0644);
    snprintf(path, sizeof path, "%s/README", dir); /* ignored: not *.so */
    write_text(path, "notes", 0644);

    validate_plugin_set *set = NULL;
    validate_error why = {0};
    int fd;
    CHECK_INT(validate_plugin_set_load(dir, &set, &why), VALIDATE_OK);
    CHECK_INT(validate_plugin_set_count(set), 2);
    CHECK_STR(validate_plugin_name(validate_plugin_set_get(set, 0)), "bad");
    CHECK_STR(validate_plugin_name(validate_plugin_set_get(set, 1)), "example-prefix");
    CHECK(validate_plugin_set_get(set, 2) == NULL);
    struct dopa_validator_file f = file_with("OK then", &fd);
    CHECK_INT(validate_plugin_set_check(set, &f, &why), VALIDATE_OK);
    close(fd);
    f = file_with("not ok", &fd);
    CHECK_INT(validate_plugin_set_check(set, &f, &why), VALIDATE_EPLUGIN_REJECTED);
    CHECK_HAS(why.text, "example-prefix");
    close(fd);
    CHECK(access(marker, F_OK) != 0);
    validate_plugin_set_free(set);
    CHECK(access(marker, F_OK) == 0); /* fini ran */
}

static void test_plugin_dir_fails_closed(void)
{
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s", check_path("plugins"));
    CHECK(mkdir(dir, 0755) == 0);
    snprintf(path, sizeof path, "%s/a.so", dir);
    copy_file(built("accept_all.so"), path, 0755);
    snprintf(path, sizeof path, "%s/b.so", dir);
    copy_file(built("bad_abi.so"), path, 0755);
    validate_plugin_set *set = NULL;
    validate_error why = {0};
    CHECK_INT(validate_plugin_set_load(dir, &set, &why), VALIDATE_EPLUGIN_ABI);
    CHECK_HAS(why.text, "/b.so");
    CHECK(set == NULL);

    /* A configuration file others may change is as unsafe as the plugin. */
    CHECK(unlink(path) == 0);
    snprintf(path, sizeof path, "%s/a.conf", dir);
    write_text(path, "x", 0666);
    CHECK_INT(validate_plugin_set_load(dir, &set, &why), VALIDATE_EPLUGIN_UNSAFE);
    CHECK_HAS(why.text, "a.conf");
    CHECK(chmod(path, 0644) == 0);
    CHECK_INT(validate_plugin_set_load(dir, &set, &why), VALIDATE_OK);
    CHECK_INT(validate_plugin_set_count(set), 1);
    validate_plugin_set_free(set);

    /* A configuration that is not a regular file is refused, not read
     * (a FIFO would otherwise block the load). */
    CHECK(unlink(path) == 0);
    CHECK(mkfifo(path, 0644) == 0);
    CHECK_INT(validate_plugin_set_load(dir, &set, &why), VALIDATE_EIO);
    CHECK_HAS(why.text, "not a regular file");
    CHECK(unlink(path) == 0);

    /* So is a directory others may add plugins to. */
    CHECK(chmod(dir, 0777) == 0);
    CHECK_INT(validate_plugin_set_load(dir, &set, &why), VALIDATE_EPLUGIN_UNSAFE);
    CHECK(chmod(dir, 0755) == 0);
}

static void test_missing_plugin_dir_is_an_empty_set(void)
{
    validate_plugin_set *set = NULL;
    validate_error why = {0};
    CHECK_INT(validate_plugin_set_load(check_path("nowhere"), &set, &why), VALIDATE_OK);
    CHECK_INT(validate_plugin_set_count(set), 0);
    int fd;
    struct dopa_validator_file f = file_with("anything", &fd);
    CHECK_INT(validate_plugin_set_check(set, &f, &why), VALIDATE_OK);
    close(fd);
    validate_plugin_set_free(set);
    validate_plugin_set_free(NULL);
}

int main(int argc, char **argv)
{
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_example_plugin_judges_by_prefix),
                         CASE(test_plugin_init_failure_refuses_the_load),
                         CASE(test_plugin_errors_and_odd_verdicts_fail_validation),
                         CASE(test_loader_refuses_broken_plugins),
                         CASE(test_loader_refuses_what_is_not_a_plugin),
                         CASE(test_loader_refuses_plugins_others_can_change),
                         CASE(test_loader_checks_every_directory_above_the_plugin),
                         CASE(test_plugin_dir_loads_in_name_order_with_config),
                         CASE(test_plugin_dir_fails_closed),
                         CASE(test_missing_plugin_dir_is_an_empty_set),
                         {0},
                     });
}

/*
 * dopad reading its settings file, with every allocation of the process
 * failing in turn: `dopad --config FILE --check` runs under the failmalloc
 * interposer, once for each allocation it makes, with a file that uses
 * every section (trusted keys, a group key, peers, cache hosts, limits,
 * the metrics endpoint). Each run must end cleanly: the file found good
 * (the failure fell where nothing needed the memory) or an error that says
 * memory ran out, exit status 2, never a crash, never a false "line N is
 * bad". The run that reaches no failure must find the file good.
 *
 * Not in sanitizer builds: their runtime owns malloc, and the interposer
 * would stand in its way (the parsers' own campaign, alloc.parsers, runs
 * there).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"
#include "../support/proc.h"
#include "peer.h"
#include "validate.h"

#define LIMIT 20000

static void test_every_allocation_of_reading_the_settings_fails_in_turn(void)
{
    char conf[4300], pub[4400], sk_path[4300], key[4300], report[4300];
    validate_error why = {0};
    snprintf(conf, sizeof conf, "%s/dopa.conf", check_tmpdir());
    snprintf(sk_path, sizeof sk_path, "%s/publisher.key", check_tmpdir());
    snprintf(pub, sizeof pub, "%s.pub", sk_path);
    snprintf(key, sizeof key, "%s/group.key", check_tmpdir());
    snprintf(report, sizeof report, "%s/report", check_tmpdir());
    validate_secret_key *sk;
    CHECK_INT(validate_secret_key_generate(&sk), VALIDATE_OK);
    CHECK_INT(validate_secret_key_save(sk, sk_path, 0, &why), VALIDATE_OK);
    validate_secret_key_free(sk);
    uint8_t gk[PEER_GROUP_KEY_BYTES];
    peer_group_key_generate(gk);
    CHECK_INT(peer_group_key_save(gk, key, 0, &why), PEER_OK);
    FILE *f = fopen(conf, "w");
    CHECK(f != NULL);
    fprintf(f,
            "[dopad]\nmax-running = 3\ninactivity-timeout = 3600\ntrusted-key = %s\n"
            "plugin-timeout = 30\norigin-rate = 10M\n"
            "[peers]\ngroup-key = %s\nlisten = tcp://127.0.0.1:7880\n"
            "peer = tcp://127.0.0.2:7880\npeer = tcp://127.0.0.3:7880\n"
            "cache-host = tcp://127.0.0.4:7880\nupload-rate = 5M\nmax-connections = 32\n"
            "beacons = no\ncache-size = 1G\n"
            "[metrics]\nlisten = 127.0.0.1:9464\n",
            pub, key);
    CHECK(fclose(f) == 0);

    const char *argv[] = {DOPAD, "--config", conf, "--check", NULL};
    char out[4096];
    setenv("LD_PRELOAD", FAILMALLOC, 1);
    setenv("DOPA_FAILMALLOC_REPORT", report, 1);
    long points = 0, errors = 0, total = 0;
    int finished = 0;
    for (long at = 1; at <= LIMIT && !finished; at++) {
        char at_s[32];
        snprintf(at_s, sizeof at_s, "%ld", at);
        setenv("DOPA_FAILMALLOC_AT", at_s, 1);
        remove(report);
        int rc = test_run(argv, out, sizeof out, 10, TEST_AS_ME, 0);
        char what[32] = "";
        long counted = 0;
        FILE *r = fopen(report, "r");
        int read = r != NULL && fscanf(r, "%31s %ld", what, &counted) == 2;
        if (r != NULL)
            fclose(r);
        if (!read || (rc != 0 && rc != 2) || (rc == 0 && strstr(out, ": good") == NULL) ||
            (rc == 2 && strstr(out, "memory") == NULL)) {
            fprintf(stderr, "  allocation %ld failing: exit %d, report %s, said: %s\n", at, rc,
                    read ? what : "none (it crashed?)", out);
            CHECK(0);
        }
        if (strcmp(what, "untouched") == 0) {
            CHECK_INT(rc, 0); /* nothing failed: the file is good */
            finished = 1;
            total = counted;
            break;
        }
        points++;
        errors += rc == 2;
    }
    unsetenv("LD_PRELOAD");
    unsetenv("DOPA_FAILMALLOC_AT");
    unsetenv("DOPA_FAILMALLOC_REPORT");
    printf("  dopad --check: %ld allocations failed in turn (of %ld in a clean run), %ld "
           "reported as out of memory, the rest harmless; never a crash\n",
           points, total, errors);
    CHECK(finished);
    CHECK(points > 0);
    CHECK(errors > 0);
}

int main(int argc, char **argv)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    (void)argc;
    (void)argv;
    (void)test_every_allocation_of_reading_the_settings_fails_in_turn;
    printf("skipped: the sanitizer's runtime owns malloc (alloc.parsers covers the parsers)\n");
    return 77;
#else
    return check_run(argc, argv,
                     (struct check_case[]){
                         CASE(test_every_allocation_of_reading_the_settings_fails_in_turn),
                         {0},
                     });
#endif
}

/*
 * The engine's job paths with every allocation failing in turn: Create,
 * AddFile (plain, with ranges, with a manifest), Resume, Complete, and a
 * restart loading stored jobs. The engine runs in-process on a real SQLite
 * store, with file:// sources. A request that fails must change nothing
 * (requests.c's contract): after each run the jobs the engine holds and
 * the jobs a second connection loads from the store must be the same
 * (every job fully there or not at all, no file half added), the store
 * must pass PRAGMA integrity_check, and a failed AddFile must leave no
 * temporary file. Leaks are the ASan build's to find.
 */
#include <fcntl.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "../check.h"
#include "../support/db.h"
#include "engine_internal.h"
#include "fault.h"

#define LIMIT      20000
#define SOURCE_LEN (300 * 1024 + 17)

static agent_engine *E;
static validate_secret_key *publisher;
static validate_manifest *source_manifest; /* of the source file */
static char state_dir[4096], db_path[4200], source_url[4200];
static proto_reply reply;

static int open_engine(void)
{
    validate_public_key key = *validate_secret_key_public(publisher);
    engine_config cfg = {.state_dir = state_dir,
                         .max_running = 4,
                         .trusted_keys = &key,
                         .n_trusted_keys = 1,
                         .origin = origin_config_default()};
    validate_error why = {0};
    return engine_open(&cfg, &E, &why);
}

static void close_engine(void)
{
    engine_close(E);
    E = NULL;
}

static void after_case(void)
{
    fault_disarm();
    if (E != NULL)
        close_engine();
    proto_reply_clear(&reply);
}

/* A fresh engine in the case's directory, with the source file. */
static void start(void)
{
    snprintf(state_dir, sizeof state_dir, "%s", check_path("state"));
    snprintf(db_path, sizeof db_path, "%s/dopa.db", state_dir);
    const char *source = check_path("source.bin");
    snprintf(source_url, sizeof source_url, "file://%s", source);
    int fd = open(source, O_WRONLY | O_CREAT | O_EXCL, 0644);
    CHECK(fd >= 0);
    for (size_t i = 0; i < SOURCE_LEN; i++) {
        unsigned char b = (unsigned char)(i * 7 + i / 251);
        CHECK(write(fd, &b, 1) == 1);
    }
    close(fd);
    CHECK_INT(open_engine(), DOPA_OK);
}

/* The reply's status, or -1 when the engine did not answer at once. */
static int handle(const proto_request *r)
{
    proto_reply_clear(&reply);
    if (engine_handle(E, 0, r, &reply, NULL, NULL) != 0)
        return -1;
    return (int)reply.status;
}

static proto_request *request(int op, const dopa_id *id)
{
    static proto_request r;
    memset(&r, 0, sizeof r);
    r.op = op;
    if (id != NULL)
        r.id = *id;
    return &r;
}

static dopa_id create(const char *name)
{
    proto_request *r = request(PROTO_CREATE, NULL);
    snprintf(r->name, sizeof r->name, "%s", name);
    CHECK_INT(handle(r), DOPA_OK);
    return reply.id;
}

/* AddFile of the source file to dest: how 0 plain, 1 with two ranges, 2
 * with the source's manifest. */
static int add_file(const dopa_id *id, const char *dest, int how)
{
    proto_request *r = request(PROTO_ADD_FILE, id);
    snprintf(r->url, sizeof r->url, "%s", source_url);
    snprintf(r->path, sizeof r->path, "%s", dest);
    if (how == 1) {
        r->ranges[0] = (dopa_range){100, 5000};
        r->ranges[1] = (dopa_range){70000, 90000};
        r->n_ranges = 2;
    }
    if (how == 2) {
        r->manifest = source_manifest->encoded;
        r->manifest_len = source_manifest->encoded_len;
    }
    return handle(r);
}

static int op(int code, const dopa_id *id)
{
    return handle(request(code, id));
}

static int exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* ------------------------------------------------------------------ */
/* The model against the store                                        */

static char text[1 << 20];
static size_t text_len;

__attribute__((format(printf, 1, 2))) static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text + text_len, sizeof text - text_len, fmt, ap);
    va_end(ap);
    CHECK(n >= 0 && (size_t)n < sizeof text - text_len);
    text_len += (size_t)n;
}

/* What a restart must find again of a job that is not final. Running
 * states come back as QUEUED; a file's completed flag may lag behind the
 * rename, which a repeated Complete makes good (fileops_commit). */
static void describe_job(const agent_job *j)
{
    char id[37];
    dopa_id_format(&j->id, id);
    int state = j->state;
    if (state == DOPA_STATE_CONNECTING || state == DOPA_STATE_TRANSFERRING)
        state = DOPA_STATE_QUEUED;
    say("job %s seq %llu state %s name \"%s\" files %zu\n", id, (unsigned long long)j->seq,
        dopa_state_name(state), j->name, j->n_files);
    for (size_t i = 0; i < j->n_files; i++) {
        const agent_file *f = j->files[i];
        say("  file %u %s -> %s (%s) ranges %zu size %llu pieces %llu manifest %zu "
            "transferred %d\n",
            f->index, f->url, f->path, f->tmp_path, f->n_ranges, (unsigned long long)f->size,
            (unsigned long long)f->pieces.count, f->manifest_len, f->transferred);
        for (size_t k = 0; k < f->n_ranges; k++)
            say("    range %llu+%llu\n", (unsigned long long)f->ranges[k].offset,
                (unsigned long long)f->ranges[k].length);
    }
}

static const char *describe_engine(void)
{
    text_len = 0;
    text[0] = '\0';
    for (size_t i = 0; i < E->n_jobs; i++)
        if (E->jobs[i]->purge_at == 0)
            describe_job(E->jobs[i]);
    return text;
}

static void describe_notification(void *ctx, uint64_t id, const dopa_id *job, int kind,
                                  int32_t file)
{
    char text_id[37];
    (void)ctx;
    dopa_id_format(job, text_id);
    say("notification %llu of %s kind %d file %d\n", (unsigned long long)id, text_id, kind,
        (int)file);
}

/* With notifications: they are stored, not kept by the engine's model. */
static const char *describe_store(int notifications)
{
    store *s = NULL;
    agent_job **jobs = NULL;
    size_t n = 0, damaged = 0;
    validate_error why = {0};
    CHECK_INT(store_open(db_path, &s, &why), DOPA_OK);
    int err = store_load(s, &jobs, &n, &damaged, &why);
    text_len = 0;
    text[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        describe_job(jobs[i]);
        agent_job_free(jobs[i]);
    }
    free(jobs);
    if (err == DOPA_OK && notifications)
        err = store_load_notifications(s, describe_notification, NULL, &why);
    store_close(s);
    CHECK_INT(err, DOPA_OK);
    CHECK_INT(damaged, 0);
    return text;
}

static char *copy_text(const char *t)
{
    char *c = strdup(t);
    CHECK(c != NULL);
    return c;
}

/* The store is whole and holds exactly the jobs the engine holds. */
static void check_store_matches_engine(void)
{
    CHECK(test_db_integrity_ok(db_path));
    char *model = copy_text(describe_engine());
    const char *stored = describe_store(0);
    if (strcmp(model, stored) != 0) {
        fprintf(stderr, "  the engine holds:\n%s  the store holds:\n%s", model, stored);
        free(model);
        CHECK(0);
    }
    free(model);
}

/* Fails the case unless the campaign injected failures and ended with a
 * clean run; returns its figures. */
static fault_figures campaign(const fault_op *o, void *ctx)
{
    fault_figures fig = fault_campaign(o, ctx, LIMIT);
    CHECK(fig.finished);
    CHECK(fig.points > 0);
    CHECK(fig.errors > 0);
    return fig;
}

/* ------------------------------------------------------------------ */
/* Create                                                             */

static size_t jobs_before;

static void create_prepare(void *ctx)
{
    (void)ctx;
    jobs_before = engine_job_count(E);
}

static int create_op(void *ctx)
{
    (void)ctx;
    proto_request *r = request(PROTO_CREATE, NULL);
    snprintf(r->name, sizeof r->name, "created");
    return handle(r);
}

static void create_check(void *ctx, int result, int struck)
{
    (void)ctx;
    CHECK(struck || result == DOPA_OK);
    if (result != DOPA_OK) {
        CHECK(result > 0);
        CHECK_INT(engine_job_count(E), jobs_before);
    } else {
        CHECK_INT(engine_job_count(E), jobs_before + 1);
        CHECK(engine_find(E, &reply.id) != NULL);
    }
    check_store_matches_engine();
}

static void test_every_allocation_of_create_fails_in_turn(void)
{
    start();
    fault_op o = {"Create", create_prepare, create_op, create_check};
    campaign(&o, NULL);
}

/* ------------------------------------------------------------------ */
/* AddFile                                                            */

struct add_ctx {
    int how;
    dopa_id job; /* a new job for each run; the one before is cancelled */
    int has_job;
    char dest[4200];
};

static void add_prepare(void *arg)
{
    struct add_ctx *c = arg;
    if (c->has_job)
        CHECK_INT(op(PROTO_CANCEL, &c->job), DOPA_OK);
    c->job = create("adding");
    c->has_job = 1;
}

static int add_op(void *arg)
{
    struct add_ctx *c = arg;
    return add_file(&c->job, c->dest, c->how);
}

static void add_check(void *arg, int result, int struck)
{
    struct add_ctx *c = arg;
    char tmp[4300];
    CHECK(struck || result == DOPA_OK);
    agent_job *j = engine_find(E, &c->job);
    CHECK(j != NULL);
    CHECK_INT(fileops_temp_name(c->dest, &c->job, 0, tmp, sizeof tmp), 0);
    if (result != DOPA_OK) {
        CHECK(result > 0);
        CHECK_INT(j->n_files, 0);
        CHECK(!exists(tmp));
    } else {
        CHECK_INT(j->n_files, 1);
        CHECK(exists(tmp));
        CHECK_INT(j->files[0]->size, c->how == 1   ? 95000
                                     : c->how == 2 ? SOURCE_LEN
                                                   : DOPA_SIZE_UNKNOWN);
    }
    check_store_matches_engine();
}

static void test_every_allocation_of_add_file_fails_in_turn(void)
{
    start();
    static const char *names[] = {"AddFile", "AddFile with ranges", "AddFile with a manifest"};
    for (int how = 0; how < 3; how++) {
        struct add_ctx c = {.how = how};
        snprintf(c.dest, sizeof c.dest, "%s", check_path(names[how]));
        fault_op o = {names[how], add_prepare, add_op, add_check};
        campaign(&o, &c);
    }
}

/* ------------------------------------------------------------------ */
/* Resume                                                             */

static void resume_prepare(void *arg)
{
    struct add_ctx *c = arg;
    add_prepare(c);
    CHECK_INT(add_file(&c->job, c->dest, 0), DOPA_OK);
}

static int resume_op(void *arg)
{
    struct add_ctx *c = arg;
    return op(PROTO_RESUME, &c->job);
}

static void resume_check(void *arg, int result, int struck)
{
    struct add_ctx *c = arg;
    CHECK(struck || result == DOPA_OK);
    agent_job *j = engine_find(E, &c->job);
    CHECK(j != NULL);
    CHECK_INT(j->state, result == DOPA_OK ? DOPA_STATE_QUEUED : DOPA_STATE_SUSPENDED);
    check_store_matches_engine();
}

static void test_every_allocation_of_resume_fails_in_turn(void)
{
    start();
    struct add_ctx c = {.how = 0};
    snprintf(c.dest, sizeof c.dest, "%s", check_path("resumed"));
    fault_op o = {"Resume", resume_prepare, resume_op, resume_check};
    campaign(&o, &c);
}

/* ------------------------------------------------------------------ */
/* Complete                                                           */

struct complete_ctx {
    dopa_id job;
    unsigned n;
    char dest[4200], tmp[4300];
};

static void run_until_transferred(const dopa_id *id)
{
    double end = check_now() + 20;
    for (;;) {
        agent_job *j = engine_find(E, id);
        CHECK(j != NULL);
        if (j->state == DOPA_STATE_TRANSFERRED)
            return;
        CHECK(j->state != DOPA_STATE_ERROR && check_now() < end);
        CHECK_INT(engine_step(E, 20), DOPA_OK);
    }
}

/* The destination holds the source's bytes. */
static void check_dest(const char *dest)
{
    static unsigned char buf[SOURCE_LEN + 1];
    int fd = open(dest, O_RDONLY);
    CHECK(fd >= 0);
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    CHECK_INT(n, SOURCE_LEN);
    for (size_t i = 0; i < SOURCE_LEN; i++)
        CHECK(buf[i] == (unsigned char)(i * 7 + i / 251));
}

static void complete_prepare(void *arg)
{
    struct complete_ctx *c = arg;
    char name[64];
    snprintf(name, sizeof name, "completed-%u", c->n++);
    snprintf(c->dest, sizeof c->dest, "%s", check_path(name));
    c->job = create(name);
    CHECK_INT(add_file(&c->job, c->dest, 2), DOPA_OK);
    CHECK_INT(fileops_temp_name(c->dest, &c->job, 0, c->tmp, sizeof c->tmp), 0);
    CHECK_INT(op(PROTO_RESUME, &c->job), DOPA_OK);
    run_until_transferred(&c->job);
    /* Nothing waits to be written that a restart below would lose. */
    check_store_matches_engine();
}

static int complete_op(void *arg)
{
    struct complete_ctx *c = arg;
    return op(PROTO_COMPLETE, &c->job);
}

static void complete_check(void *arg, int result, int struck)
{
    struct complete_ctx *c = arg;
    CHECK(struck || result == DOPA_OK);
    agent_job *j = engine_find(E, &c->job);
    CHECK(j != NULL);
    if (result == DOPA_OK) {
        CHECK_INT(j->state, DOPA_STATE_ACKNOWLEDGED);
        CHECK(!exists(c->tmp));
        check_dest(c->dest);
        check_store_matches_engine();
        return;
    }
    CHECK(result > 0);
    CHECK_INT(j->state, DOPA_STATE_TRANSFERRED);
    check_store_matches_engine();
    /* What the failure left, a restart included, completes when asked again. */
    close_engine();
    CHECK_INT(open_engine(), DOPA_OK);
    CHECK_INT(engine_find(E, &c->job)->state, DOPA_STATE_TRANSFERRED);
    CHECK_INT(op(PROTO_COMPLETE, &c->job), DOPA_OK);
    CHECK(!exists(c->tmp));
    check_dest(c->dest);
    check_store_matches_engine();
}

static void test_every_allocation_of_complete_fails_in_turn(void)
{
    start();
    struct complete_ctx c = {.n = 0};
    fault_op o = {"Complete", complete_prepare, complete_op, complete_check};
    campaign(&o, &c);
}

/* ------------------------------------------------------------------ */
/* A restart                                                          */

static char *stored_before;

static int open_op(void *ctx)
{
    (void)ctx;
    return open_engine();
}

static void open_check(void *ctx, int result, int struck)
{
    (void)ctx;
    CHECK(struck || result == DOPA_OK);
    CHECK(test_db_integrity_ok(db_path));
    if (result != DOPA_OK) {
        CHECK(E == NULL);
        CHECK_STR(describe_store(1), stored_before);
        return;
    }
    CHECK(E != NULL);
    /* The engine has every stored job, and the store all it had. */
    size_t jobs_end = strlen(stored_before);
    const char *notes = strstr(stored_before, "notification ");
    if (notes != NULL)
        jobs_end = (size_t)(notes - stored_before);
    const char *loaded = describe_engine();
    if (strlen(loaded) != jobs_end || memcmp(loaded, stored_before, jobs_end) != 0) {
        fprintf(stderr, "  the store held:\n%s  the engine loaded:\n%s", stored_before, loaded);
        CHECK(0);
    }
    close_engine();
    CHECK_STR(describe_store(1), stored_before);
}

static void test_every_allocation_of_a_restart_fails_in_turn(void)
{
    start();
    dopa_id a = create("plain"), b = create("ranges"), m = create("manifest");
    CHECK_INT(add_file(&a, check_path("a1"), 0), DOPA_OK);
    CHECK_INT(add_file(&a, check_path("a2"), 0), DOPA_OK);
    CHECK_INT(add_file(&b, check_path("b"), 1), DOPA_OK);
    CHECK_INT(add_file(&m, check_path("m"), 2), DOPA_OK);
    CHECK_INT(op(PROTO_RESUME, &m), DOPA_OK);
    run_until_transferred(&m);
    create("empty");
    check_store_matches_engine();
    close_engine();
    stored_before = copy_text(describe_store(1));
    CHECK(strstr(stored_before, "notification ") != NULL);
    fault_op o = {"engine_open", NULL, open_op, open_check};
    campaign(&o, NULL);
    free(stored_before);
    stored_before = NULL;
}

/* ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    fault_init();
    if (validate_secret_key_generate(&publisher) != VALIDATE_OK)
        return 1;
    /* The source file's manifest: its bytes as start() writes them. */
    static unsigned char content[SOURCE_LEN];
    for (size_t i = 0; i < SOURCE_LEN; i++)
        content[i] = (unsigned char)(i * 7 + i / 251);
    validate_digester *dg = NULL;
    validate_digest d;
    if (validate_digester_new(65536, &dg) != VALIDATE_OK ||
        validate_digester_update(dg, content, SOURCE_LEN) != VALIDATE_OK ||
        validate_digester_finish(dg, &d) != VALIDATE_OK ||
        validate_manifest_sign(&d, 1, 0, publisher, &source_manifest) != VALIDATE_OK)
        return 1;
    validate_digester_free(dg);
    validate_digest_clear(&d);
    check_cleanup = after_case;
    int rc = check_run(argc, argv,
                       (struct check_case[]){
                           CASE(test_every_allocation_of_create_fails_in_turn),
                           CASE(test_every_allocation_of_add_file_fails_in_turn),
                           CASE(test_every_allocation_of_resume_fails_in_turn),
                           CASE(test_every_allocation_of_complete_fails_in_turn),
                           CASE(test_every_allocation_of_a_restart_fails_in_turn),
                           {0},
                       });
    validate_manifest_free(source_manifest);
    validate_secret_key_free(publisher);
    return rc;
}

/*
 * The accessors of libdopa's opaque job and file information (dopa.h's
 * ABI notes), dopa_free() and dopa_version().
 *
 * Everything the library hands out is one malloc() block (calls.c), so
 * that one dopa_free() frees it, whatever it holds.
 */
#include <stdlib.h>

#include "client.h"

#define STRINGIFY(x)                      #x
#define VERSION_TEXT(major, minor, patch) STRINGIFY(major) "." STRINGIFY(minor) "." STRINGIFY(patch)

const char *dopa_version(void)
{
    /* agent/CMakeLists.txt checks that dopa.h's numbers are the project's. */
    return VERSION_TEXT(DOPA_VERSION_MAJOR, DOPA_VERSION_MINOR, DOPA_VERSION_PATCH);
}

void dopa_free(void *p)
{
    free(p);
}

/* ------------------------------------------------------------------ */
/* The accessors                                                      */

const dopa_id *dopa_job_info_id(const dopa_job_info *info)
{
    static const dopa_id none; /* all zeros */
    return info != NULL ? &info->id : &none;
}

/* The others: TYPE dopa_job_info_NAME(info) is info->FIELD, and TYPE
 * dopa_file_info_FIELD(info) info->FIELD, or NONE when info is NULL (as
 * dopa.h says: 0 or "", but -1 where 0 is a value: a state, type,
 * priority, proxy usage or file index). */
#define JOB_ACCESSOR(type, name, field, none)                                                      \
    type dopa_job_info_##name(const dopa_job_info *info)                                           \
    {                                                                                              \
        return info != NULL ? info->field : (none);                                                \
    }
#define FILE_ACCESSOR(type, field, none)                                                           \
    type dopa_file_info_##field(const dopa_file_info *info)                                        \
    {                                                                                              \
        return info != NULL ? info->field : (none);                                                \
    }

/* The progress a job and a file both have, by the same names: bytes in
 * all, so far, and by source. */
#define PROGRESS(each)                                                                             \
    each(bytes_total) each(bytes_transferred) each(bytes_from_origin) each(bytes_from_peers)       \
        each(bytes_from_cache)
#define JOB_PROGRESS(name)  JOB_ACCESSOR(uint64_t, name, name, 0)
#define FILE_PROGRESS(name) FILE_ACCESSOR(uint64_t, name, 0)
PROGRESS(JOB_PROGRESS)
PROGRESS(FILE_PROGRESS)

JOB_ACCESSOR(uint32_t, owner, owner, 0)
JOB_ACCESSOR(int, type, type, -1)
JOB_ACCESSOR(int, state, state, -1)
JOB_ACCESSOR(int, priority, priority, -1)
JOB_ACCESSOR(const char *, display_name, display_name, "")
JOB_ACCESSOR(const char *, description, description, "")
JOB_ACCESSOR(uint32_t, files_total, files_total, 0)
JOB_ACCESSOR(uint32_t, files_transferred, files_transferred, 0)
JOB_ACCESSOR(uint64_t, bytes_uploaded, bytes_uploaded, 0)
JOB_ACCESSOR(int64_t, created, created, 0)
JOB_ACCESSOR(int64_t, modified, modified, 0)
JOB_ACCESSOR(int64_t, transfer_completed, transfer_completed, 0)
JOB_ACCESSOR(uint32_t, error_count, error_count, 0)
JOB_ACCESSOR(int, has_error, has_error, 0)
JOB_ACCESSOR(int, error_context, error.context, DOPA_CONTEXT_NONE)
JOB_ACCESSOR(int, error_code, error.code, 0)
JOB_ACCESSOR(int, error_file, error.file, -1)
JOB_ACCESSOR(long, error_http_status, error.http_status, 0)
JOB_ACCESSOR(const char *, error_message, error.message, "")
JOB_ACCESSOR(uint32_t, minimum_retry_delay, minimum_retry_delay, 0)
JOB_ACCESSOR(uint32_t, no_progress_timeout, no_progress_timeout, 0)
JOB_ACCESSOR(int, proxy_usage, proxy_usage, -1)
JOB_ACCESSOR(uint64_t, version, version, 0)
JOB_ACCESSOR(uint32_t, notify_flags, notify_flags, 0)
JOB_ACCESSOR(uint32_t, validation_timeout, validation_timeout, 0)
JOB_ACCESSOR(int, validation_default_valid, validation_default_valid, 0)

FILE_ACCESSOR(const char *, remote_url, "")
FILE_ACCESSOR(const char *, local_name, "")
FILE_ACCESSOR(const char *, temporary_name, "")
FILE_ACCESSOR(uint32_t, ranges, 0)
FILE_ACCESSOR(int, has_manifest, 0)
FILE_ACCESSOR(int, has_sha256, 0)
FILE_ACCESSOR(int, validation, DOPA_VALIDATION_NONE)

int dopa_file_info_is_transferred(const dopa_file_info *info)
{
    return info != NULL && info->transferred;
}

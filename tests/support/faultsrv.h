/*
 * A loopback HTTP server that misbehaves on purpose, for what nginx will not
 * do. It serves one file of FAULT_SIZE pattern bytes (test_pattern_byte with
 * seed FAULT_SEED) under paths that choose the misbehaviour:
 *
 *   /good          a correct server: 206 for ranges, ETag "v1"
 *   /close-mid     sends half of the range, then closes
 *   /endless       206 with a correct Content-Range, then bytes without end
 *   /endless200    200 without Content-Length, bytes without end
 *   /wrong-start   206 whose Content-Range starts one byte late
 *   /ignore-range  200 with the whole file, whatever the Range
 *   /bigger        206 with more than asked (to the end of the file)
 *   /short         206 with at most 64 KiB of the range per response
 *   /chunked       206 sent with Transfer-Encoding: chunked
 *   /429           429 with Retry-After: 3
 *   /503           503 with Retry-After: 7
 *   /changing-etag a new ETag on every response
 *   /changing-size the size grows by one byte after the first response
 *   /drop-etag     ETag on the first response, a 200 without one afterwards
 *   /stall         206 headers, then one byte every 2 seconds
 *
 * Every connection is closed after one response.
 */
#ifndef DOPA_TEST_FAULTSRV_H
#define DOPA_TEST_FAULTSRV_H

#include <pthread.h>

#define FAULT_SIZE (1024 * 1024)
#define FAULT_SEED 77u

typedef struct test_faultsrv test_faultsrv;

/* Starts the server on a free loopback port; NULL on failure. */
test_faultsrv *test_faultsrv_start(void);
int test_faultsrv_port(const test_faultsrv *s);
/* Requests served so far for a path (e.g. "/short"). */
int test_faultsrv_hits(test_faultsrv *s, const char *path);
/* Closes every connection, joins every thread, frees. */
void test_faultsrv_stop(test_faultsrv *s);

#endif

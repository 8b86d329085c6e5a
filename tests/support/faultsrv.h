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
 *   /cl-mismatch   206 whose Content-Length is twice its Content-Range
 *   /overlong      206 for at most 100 bytes, then 100 more without a length
 *   /lm-only       Last-Modified, no ETag
 *   /weak-etag     a weak ETag and a Last-Modified
 *   /short-changing  like /short, with a new ETag after the first response
 *   /503-date      503 with Retry-After as an HTTP date 30 s ahead
 *   /chunked200    200 with the whole file, chunked, whatever the Range
 *   /empty416      an empty file: 416 with "bytes * /0" (no blank) for any range
 *   /star          206 with "bytes a-b/ *" (no blank): the size is not given
 *
 * Under /flip-MODE/TAG (any TAG, so that each test has a file of its own)
 * the file is replaced while a job fetches it: version 1 is the file above;
 * once FAULT_FLIP_AFTER body bytes have been sent for the path, version 2
 * (pattern bytes with seed FAULT_SEED2) takes its place. Ranges are served
 * at most 64 KiB at a time, so that a job makes many requests:
 *
 *   /flip-etag/..  version 2 has ETag "v2" (version 1 "v1"); a request whose
 *                  If-Range no longer matches gets a 200 with the whole new
 *                  version, as from a correct server
 *   /flip-grow/..  the same, and version 2 has FAULT_SIZE2 bytes
 *   /flip-quiet/.. version 2 keeps version 1's ETag and size: nothing says
 *                  that the content changed
 *   /flip-mid/..   not short: the file is rewritten in place during the
 *                  response that crosses FAULT_FLIP_AFTER, which carries
 *                  version 1 up to there and version 2 after; the ETag
 *                  stays "v1"
 *
 * Every connection is closed after one response.
 */
#ifndef DOPA_TEST_FAULTSRV_H
#define DOPA_TEST_FAULTSRV_H

#include <pthread.h>
#include <stddef.h>

#define FAULT_SIZE       (1024 * 1024)
#define FAULT_SEED       77u
#define FAULT_SEED2      78u
#define FAULT_SIZE2      (FAULT_SIZE + 70000)
#define FAULT_FLIP_AFTER 300000u

typedef struct test_faultsrv test_faultsrv;

/* Starts the server on a free loopback port; NULL on failure. */
test_faultsrv *test_faultsrv_start(void);
int test_faultsrv_port(const test_faultsrv *s);
/* Requests served so far for a path (e.g. "/short"). */
int test_faultsrv_hits(test_faultsrv *s, const char *path);
/* Body bytes sent for a path so far, counted as each response ends (bytes
 * the kernel took: a client that hangs up early may not have read them). */
unsigned long long test_faultsrv_bytes(test_faultsrv *s, const char *path);
/* The If-Range header of the last request for a path ("" if none). */
void test_faultsrv_if_range(test_faultsrv *s, const char *path, char *out, size_t len);
/* Closes every connection, joins every thread, frees. */
void test_faultsrv_stop(test_faultsrv *s);

#endif

/*
 * dopad's SQLite store seen from a test: opened read-only beside a running
 * (or killed) dopad, as an operator would look at it.
 */
#ifndef DOPA_TEST_DB_H
#define DOPA_TEST_DB_H

/* 1 when `PRAGMA integrity_check` on the database at db_path says "ok";
 * 0 when it finds damage or the database cannot be opened. */
int test_db_integrity_ok(const char *db_path);

#endif

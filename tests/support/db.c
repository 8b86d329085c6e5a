/* dopad's store seen from a test; see db.h. */
#include <sqlite3.h>
#include <string.h>

#include "db.h"

int test_db_integrity_ok(const char *db_path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int ok = 0;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const unsigned char *said = sqlite3_column_text(st, 0);
        ok = said != NULL && strcmp((const char *)said, "ok") == 0;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return ok;
}

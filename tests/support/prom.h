/*
 * Reading the Prometheus text of dopad's metrics endpoint in tests
 * (header-only: it fails the running case through check.h).
 */
#ifndef DOPA_TEST_PROM_H
#define DOPA_TEST_PROM_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"

/* The value of one series ("name" or "name{labels}", as written) in the
 * text; the case fails when the text has no such sample. */
static inline double prom_sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; (p = strstr(p, series)) != NULL; p += n)
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    char msg[256];
    snprintf(msg, sizeof msg, "no sample %s in the metrics", series);
    check_failed(__FILE__, __LINE__, msg);
    return -1;
}

#endif

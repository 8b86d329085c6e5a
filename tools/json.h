/* JSON output for the command-line tools. */
#ifndef DOPA_TOOLS_JSON_H
#define DOPA_TOOLS_JSON_H

/* Writes s to stdout as a JSON string (quotes and control characters
 * escaped; other bytes as they are, so UTF-8 stays UTF-8). */
void json_string(const char *s);

#endif

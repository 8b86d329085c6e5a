/* JSON output for the command-line tools. */
#ifndef DOPA_TOOLS_JSON_H
#define DOPA_TOOLS_JSON_H

/* Writes s to stdout as a JSON string: quotes, backslashes and control
 * characters escaped, UTF-8 as it is, and each byte that is not part of
 * well-formed UTF-8 (a file name may hold any) as U+FFFD, so that the
 * document is valid JSON whatever s holds. */
void json_string(const char *s);

#endif

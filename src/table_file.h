/*
 * table_file.h - the recipient list format, shared by the "file" table
 * backend and `mxkeepctl map compile` (which turns a list into an lmdb map).
 *
 * Format: one entry per line, "local@domain" or "@domain" (every local
 * part of that domain), '#' starts a comment at line start or after white
 * space ('#' is legal inside a local part), blank lines ignored, surrounding
 * white space trimmed.  Matching is case-insensitive: entries are stored
 * normalized (domain lower case without a trailing dot; local part lower
 * case, and a quoted local part whose content needs no quotes ("john")
 * the same as the bare atom (john)).
 */
#ifndef MXKEEP_TABLE_FILE_H
#define MXKEEP_TABLE_FILE_H

#include <stddef.h>

struct table;

/* Longest local part an entry may hold: the file table keeps the length in
 * one octet.  Real long local parts (SRS, VERP, list confirmations) run to
 * a hundred octets or so; a longer entry is refused with its file:line. */
#define TABLE_LOCAL_MAX     255

/*
 * One parsed entry: local (ln octets, 0 for "@domain") and domain (dn
 * octets), both normalized, not NUL-terminated; line is its line number.
 * Returns 0, or -1 with a reason in *why (static text) to stop the parse.
 */
typedef int table_file_entry_fn(void *arg, const char *local, size_t ln, const char *domain,
                                size_t dn, size_t line, const char **why);

/*
 * Parse a whole list (text, len octets; need not be NUL-terminated) read
 * from path.  Pure: no I/O.  Returns 0, or -1 with "path:line: reason" in
 * err.
 */
int table_file_parse(const char *text, size_t len, const char *path, table_file_entry_fn *fn,
                     void *arg, char *err, size_t errlen);

/* Read a whole regular file.  NULL and "path: reason" in err on failure;
 * the caller frees.  *len gets its length; the text is NUL-terminated. */
char *table_file_slurp(const char *path, size_t *len, char *err, size_t errlen);

/*
 * Normalize the local part s (n octets) into out (room for n octets).
 * Returns the normalized length.
 */
size_t table_file_local_normalize(const char *s, size_t n, char *out);

/*
 * For a file table: the first entry whose domain served() refuses.  Walks
 * the distinct domains of the file (not its entries).  Returns 0 when every
 * domain is accepted, or 1 with *domain (NUL-terminated, owned by the
 * table) and *line (its first line) set.  A table of another backend: 0.
 */
int table_file_foreign(const struct table *t, int (*served)(void *arg, const char *domain),
                       void *arg, const char **domain, size_t *line);
/* The path of a file table (NULL for other backends). */
const char *table_file_path(const struct table *t);

#endif

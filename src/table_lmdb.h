/*
 * table_lmdb.h - compiled recipient maps: `mxkeepctl map compile` writes
 * them, the "lmdb" table backend (table_lmdb.c) reads them.
 *
 * A map is one LMDB environment in a single file (MDB_NOSUBDIR), default
 * name LIST.lmdb, whose unnamed database holds:
 *   "\0mxkeep-map"  -> the header: version (1 octet, TABLE_LMDB_VERSION),
 *                      entries (8, little endian), compile time (8, LE,
 *                      seconds since the epoch), the source path (rest)
 *   "local@domain"  -> "" one per entry, normalized as table_file.h says
 *   "@domain"       -> "" a catch-all entry
 * The map is written beside its final name, synced, and renamed over it,
 * so a reader holding the old file keeps its old inode and never sees a
 * half-written map.
 */
#ifndef MXKEEP_TABLE_LMDB_H
#define MXKEEP_TABLE_LMDB_H

#include <stddef.h>
#include <stdint.h>

#define TABLE_LMDB_VERSION      1
#define TABLE_LMDB_HEADER_KEY   "\0mxkeep-map"
#define TABLE_LMDB_HEADER_KEYLEN (sizeof TABLE_LMDB_HEADER_KEY - 1)

/*
 * Compile the list file src into the map out.  0 and *entries (may be
 * NULL) set, or -1 with a one-line reason in err ("file:line: reason" for
 * a bad list line).  The old map at out is left untouched on failure.
 */
int table_lmdb_compile(const char *src, const char *out, size_t *entries, char *err,
                       size_t errlen);

#endif

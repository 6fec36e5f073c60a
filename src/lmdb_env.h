/*
 * lmdb_env.h - one LMDB environment with its unnamed database, opened
 * with a mode and flags, whose write transactions grow the map and retry
 * when it is full.
 *
 * For the small stores beside the spool that keep one database each
 * (greylist.c's triplets, verify_cache.c's callout answers); the spool's
 * own index (queue_db.c) has more to it and keeps its own code.
 *
 * Threads: an environment is opened with MDB_NOTLS by its owner and used
 * from one thread (the loop).
 * Ownership: lmdb_env_open() -> lmdb_env_close() (accepts NULL).
 */
#ifndef MXKEEP_LMDB_ENV_H
#define MXKEEP_LMDB_ENV_H

#include <stddef.h>
#include <sys/types.h>
#include <lmdb.h>

struct lmdb_env;

/*
 * Open (creating the directory with dir_mode unless flags has
 * MDB_RDONLY) the environment in dir with flags and file_mode, its map
 * at least map_size (never shrunk: a larger map from an earlier run
 * stays), and its unnamed database.  NULL with "dir: reason" in err.
 */
struct lmdb_env *lmdb_env_open(const char *dir, unsigned int flags, mode_t dir_mode,
                               mode_t file_mode, size_t map_size, char *err, size_t errlen);
/* Close; sync first (mdb_env_sync, forced) when sync is set. */
void lmdb_env_close(struct lmdb_env *e, int sync);

MDB_env *lmdb_env_handle(const struct lmdb_env *e);
MDB_dbi lmdb_env_dbi(const struct lmdb_env *e);

/*
 * Run fn in a write transaction and commit it.  fn returns 0 (commit) or
 * an LMDB error (abort; MDB_MAP_FULL included).  A full map doubles and
 * fn runs again in a new transaction (so fn must compute everything from
 * the transaction, and set its outputs only from the run that commits),
 * at most a few times; a map resized by another process is adopted.
 * Returns 0, or the LMDB error that ended it.
 */
typedef int (*lmdb_env_write_fn)(MDB_txn *txn, MDB_dbi dbi, void *arg);
int lmdb_env_write(struct lmdb_env *e, lmdb_env_write_fn fn, void *arg);

#endif

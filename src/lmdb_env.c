/*
 * lmdb_env.c - an LMDB environment with its unnamed database, and write
 * transactions that grow a full map and run again.
 *
 * Owns: the MDB_env and its map size as we last set it.
 * Must never: keep a transaction open past a call (LMDB: short
 * transactions, never held across callbacks); grow the map while one of
 * ours is open (mdb_env_set_mapsize requires none, and lmdb_env_write
 * grows only between its transactions); shrink a map an earlier run grew.
 * Security: the directory and files get the modes the caller gives (the
 * spool's 0700/0600); nothing here reads peer input.
 */
#include "config.h"
#include "lmdb_env.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Doublings of a full map within one write before giving up. */
#define LMDB_ENV_GROW_TRIES 4

struct lmdb_env {
    MDB_env *env;
    MDB_dbi dbi;
    size_t map_size;
};

struct lmdb_env *lmdb_env_open(const char *dir, unsigned int flags, mode_t dir_mode,
                               mode_t file_mode, size_t map_size, char *err, size_t errlen)
{
    struct lmdb_env *e = calloc(1, sizeof *e);
    int readonly = (flags & MDB_RDONLY) != 0;
    MDB_txn *txn = NULL;
    MDB_envinfo info;
    int rc;

    if (e == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (!readonly && mkdir(dir, dir_mode) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        free(e);
        return NULL;
    }
    if ((rc = mdb_env_create(&e->env)) != 0)
        goto fail;
    if ((rc = mdb_env_open(e->env, dir, flags, file_mode)) != 0)
        goto fail;
    mdb_env_info(e->env, &info);
    e->map_size = info.me_mapsize;
    if (!readonly && map_size > e->map_size) {
        if ((rc = mdb_env_set_mapsize(e->env, map_size)) != 0)
            goto fail;
        e->map_size = map_size;
    }
    if ((rc = mdb_txn_begin(e->env, NULL, readonly ? MDB_RDONLY : 0, &txn)) != 0)
        goto fail;
    if ((rc = mdb_dbi_open(txn, NULL, 0, &e->dbi)) != 0) {
        mdb_txn_abort(txn);
        goto fail;
    }
    if ((rc = mdb_txn_commit(txn)) != 0)
        goto fail;
    return e;
fail:
    snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
    if (e->env)
        mdb_env_close(e->env);
    free(e);
    return NULL;
}

void lmdb_env_close(struct lmdb_env *e, int sync)
{
    if (e == NULL)
        return;
    if (sync)
        mdb_env_sync(e->env, 1);
    mdb_env_close(e->env);
    free(e);
}

MDB_env *lmdb_env_handle(const struct lmdb_env *e) { return e->env; }
MDB_dbi lmdb_env_dbi(const struct lmdb_env *e) { return e->dbi; }

/* A full map doubles (no transaction of ours is open between calls). */
static int lmdb_env_grow(struct lmdb_env *e)
{
    size_t ns = e->map_size * 2;
    if (mdb_env_set_mapsize(e->env, ns) != 0)
        return -1;
    e->map_size = ns;
    return 0;
}

int lmdb_env_write(struct lmdb_env *e, lmdb_env_write_fn fn, void *arg)
{
    int rc = MDB_MAP_FULL;
    for (int tries = 0; tries < LMDB_ENV_GROW_TRIES; tries++) {
        MDB_txn *txn;
        rc = mdb_txn_begin(e->env, NULL, 0, &txn);
        if (rc == MDB_MAP_RESIZED) {
            /* another process grew it: adopt its size and begin again */
            mdb_env_set_mapsize(e->env, 0);
            MDB_envinfo info;
            mdb_env_info(e->env, &info);
            e->map_size = info.me_mapsize;
            continue;
        }
        if (rc != 0)
            return rc;
        rc = fn(txn, e->dbi, arg);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != MDB_MAP_FULL)
            return rc;
        if (lmdb_env_grow(e) != 0)
            return rc;
    }
    return rc;
}

/*
 * genspool.c - fill a spool index with synthetic messages for bench/scale.
 *
 *   genspool SPOOLDIR MESSAGES DOMAINS BODY_OCTETS
 *
 * Writes straight through queue_db (the daemon must be stopped): each
 * message has one recipient user@dNNNNN.example and an inline body, in
 * transactions of GEN_BATCH messages, growing the map as needed.  Domains
 * are filled round-robin, so every domain holds MESSAGES/DOMAINS messages.
 * A benchmark tool, not part of mxkeepd.
 */
#include "config.h"
#include "queue_db.h"
#include "qid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define GEN_BATCH 5000
#define GEN_MAP_INITIAL (1024L * 1024 * 1024)

int main(int argc, char **argv)
{
    char err[256], path[4096];
    if (argc != 5) {
        fprintf(stderr, "usage: genspool SPOOLDIR MESSAGES DOMAINS BODY_OCTETS\n");
        return 64;
    }
    long n = atol(argv[2]), ndom = atol(argv[3]), blen = atol(argv[4]);
    if (n <= 0 || ndom <= 0 || blen <= 0) {
        fprintf(stderr, "genspool: bad numbers\n");
        return 64;
    }
    mkdir(argv[1], 0700);
    snprintf(path, sizeof path, "%s/index", argv[1]);
    mkdir(path, 0700);
    struct qdb *db = qdb_open(path, GEN_MAP_INITIAL, err, sizeof err);
    if (db == NULL) {
        fprintf(stderr, "genspool: %s\n", err);
        return 1;
    }
    char *body = malloc((size_t)blen);
    for (long i = 0; i < blen; i++)
        body[i] = (i % 78 == 76) ? '\r' : (i % 78 == 77) ? '\n' : (char)('a' + i % 26);
    memcpy(body, "Subject: scale\r\n\r\n", 18);
    time_t now = time(NULL);
    long done = 0;
    while (done < n) {
        struct qdb_txn *t;
        long upto = done + GEN_BATCH < n ? done + GEN_BATCH : n;
        if (qdb_txn_begin(db, &t) != 0) {
            fprintf(stderr, "genspool: txn begin failed\n");
            return 1;
        }
        int rc = 0;
        for (long i = done; i < upto && rc == 0; i++) {
            struct qmsg m;
            struct qrcpt r;
            memset(&m, 0, sizeof m);
            memset(&r, 0, sizeof r);
            qid_next(m.qid);
            m.arrival = now;
            m.size = (uint64_t)blen;
            m.nrcpt = 1;
            m.flags = QMSG_F_INLINE;
            snprintf(m.sender, sizeof m.sender, "sender%ld@example.net", i % 1000);
            snprintf(m.client_addr, sizeof m.client_addr, "127.0.0.1");
            snprintf(m.client_name, sizeof m.client_name, "unknown");
            snprintf(m.helo, sizeof m.helo, "bench");
            r.state = QRCPT_PENDING;
            r.expiry = now + 30 * 86400;
            snprintf(r.domain, sizeof r.domain, "d%05ld.example", i % ndom);
            snprintf(r.addr, sizeof r.addr, "user%ld@%s", i / ndom, r.domain);
            rc = qdb_msg_put(t, &m, &r, 1, body, (size_t)blen);
        }
        if (rc == QDB_MAPFULL) {
            qdb_txn_abort(t);
            if (qdb_grow(db) != 0) {
                fprintf(stderr, "genspool: cannot grow the map\n");
                return 1;
            }
            continue;       /* the batch again, with new QIDs */
        }
        if (rc != 0 || qdb_txn_commit(t) != 0) {
            fprintf(stderr, "genspool: write failed at %ld\n", done);
            return 1;
        }
        done = upto;
    }
    qdb_close(db);
    free(body);
    printf("%ld messages over %ld domains\n", n, ndom);
    return 0;
}

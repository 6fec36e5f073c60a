/*
 * authdns.c - blocking DNS for the SPF and DKIM worker threads, through the
 * configured `resolver`.
 *
 * Owns: one struct __res_state per worker thread (thread-local, made at
 * the first query, released by authdns_thread_end).
 * Must never: run on the loop thread (it blocks for up to 2 x timeout);
 * share a res_state between threads.
 * Security: answers are parsed by the callers with ns_initparse/ns_parserr
 * (bounds-checked); a query name is passed as the caller got it and
 * res_nquery refuses names that are not valid.
 */
#include "config.h"
#include "authdns.h"
#include "log.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netdb.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AUTHDNS_TRIES 2

static __thread struct __res_state *authdns_res;

/* Point st at "ip" or "ip:port" (IPv4).  0, or -1 when it is not one. */
static int authdns_set_server(struct __res_state *st, const char *spec)
{
    char host[INET_ADDRSTRLEN + 1];
    const char *colon = strchr(spec, ':');
    size_t hl = colon ? (size_t)(colon - spec) : strlen(spec);
    struct in_addr a;
    long port = 53;

    if (spec[0] == '[' || hl == 0 || hl >= sizeof host || (colon && strchr(colon + 1, ':')))
        return -1;
    memcpy(host, spec, hl);
    host[hl] = '\0';
    if (inet_pton(AF_INET, host, &a) != 1)
        return -1;
    if (colon) {
        char *end;
        port = strtol(colon + 1, &end, 10);
        if (*end || port < 1 || port > 65535)
            return -1;
    }
    memset(&st->nsaddr_list[0], 0, sizeof st->nsaddr_list[0]);
    st->nsaddr_list[0].sin_family = AF_INET;
    st->nsaddr_list[0].sin_addr = a;
    st->nsaddr_list[0].sin_port = htons((unsigned short)port);
    st->nscount = 1;
    return 0;
}

static struct __res_state *authdns_state(const char *resolver, long timeout)
{
    static int warned;
    if (authdns_res != NULL)
        return authdns_res;
    struct __res_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return NULL;
    if (res_ninit(st) != 0) {
        free(st);
        return NULL;
    }
    if (resolver != NULL && authdns_set_server(st, resolver) != 0 && !warned) {
        warned = 1;     /* a benign race between workers: at worst two lines */
        log_warn("auth dns: resolver %s is not an IPv4 address; SPF and DKIM use the "
                 "system resolver", resolver);
    }
    st->retrans = (int)(timeout > 0 ? timeout : 1);
    st->retry = AUTHDNS_TRIES;
    /* No search list: SPF and DKIM names are fully qualified. */
    st->options &= ~(unsigned long)(RES_DNSRCH | RES_DEFNAMES);
    authdns_res = st;
    return st;
}

int authdns_query(const char *resolver, long timeout, const char *name, int type,
                  unsigned char *ans, int anslen, int *herr)
{
    struct __res_state *st = authdns_state(resolver, timeout);
    if (st == NULL) {
        *herr = TRY_AGAIN;
        return -1;
    }
    int n = res_nquery(st, name, ns_c_in, type, ans, anslen);
    if (n < 0) {
        *herr = st->res_h_errno ? st->res_h_errno : TRY_AGAIN;
        return -1;
    }
    *herr = NETDB_SUCCESS;
    return n;
}

void authdns_thread_end(void)
{
    if (authdns_res != NULL) {
        res_nclose(authdns_res);
        free(authdns_res);
        authdns_res = NULL;
    }
}

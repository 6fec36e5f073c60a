/*
 * authdns.h - blocking DNS queries for the authentication workers (spf.c,
 * dkim.c), sent to the configured `resolver`.
 *
 * libspf2 and libopendkim resolve synchronously in the calling thread;
 * they run in worker threads (never on the loop), and this gives them a
 * per-thread resolver state (res_ninit) whose name server is our
 * `resolver` ("ip", "ip:port"), so tests and operators choose where SPF
 * and DKIM records come from, as for every other lookup of mxkeep.
 */
#ifndef MXKEEP_AUTHDNS_H
#define MXKEEP_AUTHDNS_H

/*
 * Query name/type (class IN) in the calling thread.  resolver: NULL for
 * the system's (/etc/resolv.conf), else "ip", "ip:port" or "[ipv6]:port"
 * (IPv6 name servers: the system's resolver is used, logged once).
 * timeout: seconds per try (two tries).  Returns the answer's length
 * (may exceed anslen: ask again with more room), or -1 with *herr set to
 * the h_errno value (HOST_NOT_FOUND, NO_DATA, TRY_AGAIN, NO_RECOVERY).
 */
int authdns_query(const char *resolver, long timeout, const char *name, int type,
                  unsigned char *ans, int anslen, int *herr);

/* Release the calling thread's resolver state (at worker exit). */
void authdns_thread_end(void);

#endif

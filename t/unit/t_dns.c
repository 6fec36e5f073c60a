/*
 * t_dns.c - next-hop resolution against a real DNS server: dnsmasq on a
 * free loopback port serving the test zones, plus tiny in-process servers
 * for the failure paths (one answering SERVFAIL, one never answering, a
 * closed port).  Covers MX ordering and shuffling, self-detection by name
 * and by address, loops, NXDOMAIN, null MX, implicit MX, fixed next hops,
 * bounds, temporary failures and cancellation by dns_free(); client names
 * (FCrDNS): confirmed, unconfirmed, absent, several PTRs, IPv6, cancel.
 */
#include "config.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf.h"
#include "dns.h"
#include "tap.h"

#define DNSMASQ         "/usr/sbin/dnsmasq"
#define SMTP_PORT       2526
#define WATCHDOG_SEC    15
#define START_WAIT_MS   5000
#define POLL_MS         20
#define SHUFFLE_ROUNDS  40
#define MANY_MX         25
/* A host with more addresses than a route keeps (DNS_MAX_ADDRS), one of
 * them ours: self-detection must see it wherever dnsmasq rotates it. */
#define MANY_ADDRS      (2 * DNS_MAX_ADDRS)
#define MAX_ARGS        (64 + 2 * MANY_MX + MANY_ADDRS + 1)
#define PKT_MAX         512
#define DNS_FLAGS_QR    0x80
#define DNS_FLAGS_RA    0x80
#define DNS_RCODE_SERVFAIL 2
#define FIRST_FREE_PROBE 16

static const char *const our_names[] = { "MX2.Example.NET.", "backup.example.net" };

static struct event_base *base;
static pid_t dnsmasq_pid = -1;
static char pidfile[64];
static int dm_port;

/* ---------- helpers ---------- */

static void dnsmasq_stop(void)
{
    if (dnsmasq_pid > 0) {
        kill(dnsmasq_pid, SIGTERM);
        waitpid(dnsmasq_pid, NULL, 0);
        dnsmasq_pid = -1;
    }
    if (pidfile[0])
        unlink(pidfile);
}

static void on_signal_exit(int sig)
{
    dnsmasq_stop();
    _exit(128 + sig);
}

static int udp_bound(int port, int *out_port)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0)
        return -1;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    if (out_port) {
        getsockname(fd, (struct sockaddr *)&sa, &sl);
        *out_port = ntohs(sa.sin_port);
    }
    return fd;
}

/* A port free for both UDP and TCP on 127.0.0.1. */
static int free_port(void)
{
    for (int i = 0; i < FIRST_FREE_PROBE; i++) {
        int port, ufd = udp_bound(0, &port), tfd, okp;
        struct sockaddr_in sa;
        if (ufd < 0)
            return -1;
        tfd = socket(AF_INET, SOCK_STREAM, 0);
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        okp = tfd >= 0 && bind(tfd, (struct sockaddr *)&sa, sizeof sa) == 0;
        close(ufd);
        if (tfd >= 0)
            close(tfd);
        if (okp)
            return port;
    }
    return -1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int dnsmasq_start(void)
{
    static char args[MAX_ARGS][128];
    char *argv[MAX_ARGS + 1];
    int n = 0;
    static const char *const fixed_args[] = {
        "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
        "--keep-in-foreground", "--user=root", "--local=/test/", "--log-facility=/dev/null",
        "--mx-host=order.test,mx3.order.test,30", "--mx-host=order.test,mx1.order.test,10",
        "--mx-host=order.test,mx2.order.test,20",
        "--host-record=mx1.order.test,127.0.0.11", "--host-record=mx2.order.test,127.0.0.12",
        "--host-record=mx3.order.test,127.0.0.13",
        "--mx-host=eq.test,a.eq.test,10", "--mx-host=eq.test,b.eq.test,10",
        "--mx-host=eq.test,c.eq.test,5",
        "--host-record=a.eq.test,127.0.0.21", "--host-record=b.eq.test,127.0.0.22",
        "--host-record=c.eq.test,127.0.0.23",
        "--mx-host=selfname.test,better.selfname.test,10",
        "--mx-host=selfname.test,mx2.example.net,20",
        "--mx-host=selfname.test,worse.selfname.test,30",
        "--host-record=better.selfname.test,127.0.0.31",
        "--host-record=mx2.example.net,127.0.0.32",
        "--host-record=worse.selfname.test,127.0.0.33",
        "--mx-host=selfaddr.test,good.selfaddr.test,10",
        "--mx-host=selfaddr.test,me.selfaddr.test,20",
        "--mx-host=selfaddr.test,peer.selfaddr.test,20",
        "--mx-host=selfaddr.test,worse.selfaddr.test,30",
        "--host-record=good.selfaddr.test,127.0.0.41",
        "--host-record=me.selfaddr.test,127.0.0.1",
        "--host-record=peer.selfaddr.test,127.0.0.44",
        "--host-record=worse.selfaddr.test,127.0.0.43",
        "--mx-host=loop.test,mx2.example.net,10", "--mx-host=loop.test,other.loop.test,20",
        "--host-record=other.loop.test,127.0.0.52",
        "--mx-host=loopaddr.test,me.loopaddr.test,10",
        "--host-record=me.loopaddr.test,127.0.0.1",
        "--mx-host=nullmx.test,.,0",
        "--host-record=nodata.test,127.0.0.50",
        "--host-record=dual.test,127.0.0.70,::1",
        "--mx-host=noaddr.test,ghost.noaddr.test,10",
        "--mx-host=mixed.test,ghost.mixed.test,10", "--mx-host=mixed.test,real.mixed.test,20",
        "--host-record=real.mixed.test,127.0.0.61",
        "--mx-host=lit.test,127.0.0.80,10",
        "--host-record=fixed.test,127.0.0.1",
        "--host-record=selfhost.test,127.0.0.90",
        /* client names (FCrDNS); --local keeps unlisted reverse names
         * answered here (NXDOMAIN) instead of refused */
        "--local=/127.in-addr.arpa/", "--local=/ip6.arpa/",
        "--host-record=good.rdns.test,127.0.0.101",
        "--host-record=liar.rdns.test,127.0.0.103",
        "--ptr-record=102.0.0.127.in-addr.arpa,liar.rdns.test",
        "--ptr-record=105.0.0.127.in-addr.arpa,ghost.rdns.test",
        "--ptr-record=105.0.0.127.in-addr.arpa,second.rdns.test",
        "--address=/second.rdns.test/127.0.0.105",
        "--host-record=v6.rdns.test,fd00::101",
        NULL };
    pid_t pid;

    if (access(DNSMASQ, X_OK) < 0)
        return -1;
    if ((dm_port = free_port()) < 0)
        return -1;
    snprintf(pidfile, sizeof pidfile, "/tmp/t_dns.%d.pid", (int)getpid());
    snprintf(args[n++], sizeof args[0], "%s", DNSMASQ);
    snprintf(args[n++], sizeof args[0], "--port=%d", dm_port);
    snprintf(args[n++], sizeof args[0], "--pid-file=%s", pidfile);
    for (int i = 0; fixed_args[i]; i++)
        snprintf(args[n++], sizeof args[0], "%s", fixed_args[i]);
    for (int i = 0; i < MANY_MX; i++) {
        snprintf(args[n++], sizeof args[0], "--mx-host=many.test,h%d.many.test,%d", i, 100 - i);
        snprintf(args[n++], sizeof args[0], "--host-record=h%d.many.test,127.0.1.%d", i, i + 1);
    }
    snprintf(args[n++], sizeof args[0], "--mx-host=manyaddr.test,multi.manyaddr.test,10");
    for (int i = 0; i < MANY_ADDRS - 1; i++)
        snprintf(args[n++], sizeof args[0], "--host-record=multi.manyaddr.test,127.0.2.%d", i + 1);
    snprintf(args[n++], sizeof args[0], "--host-record=multi.manyaddr.test,127.0.0.1");
    for (int i = 0; i < n; i++)
        argv[i] = args[i];
    argv[n] = NULL;

    if ((pid = fork()) < 0)
        return -1;
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, STDIN_FILENO);
            dup2(nul, STDOUT_FILENO);
        }
        execv(DNSMASQ, argv);
        _exit(127);
    }
    dnsmasq_pid = pid;
    atexit(dnsmasq_stop);
    signal(SIGINT, on_signal_exit);
    signal(SIGTERM, on_signal_exit);
    /* ready when the UDP port is taken */
    for (int waited = 0; waited < START_WAIT_MS; waited += POLL_MS) {
        int fd = udp_bound(dm_port, NULL);
        if (fd < 0)
            return 0;
        close(fd);
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            dnsmasq_pid = -1;
            return -1;
        }
        sleep_ms(POLL_MS);
    }
    return -1;
}

/* ---------- running one route ---------- */

struct result {
    int fired;
    int inside_route;
    struct dns_route r;
};

static int in_route;
static int watchdog_fired;

static void on_route(void *arg, const struct dns_route *r)
{
    struct result *res = arg;
    res->fired++;
    res->inside_route |= in_route;
    res->r = *r;
    event_base_loopbreak(base);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    watchdog_fired = 1;
    event_base_loopbreak(base);
}

static int run_route(struct dns *d, const char *host, int port, int fixed,
                     const struct dns_self *self, struct result *res)
{
    struct timeval tv = { WATCHDOG_SEC, 0 };
    struct event *wd = evtimer_new(base, on_watchdog, NULL);
    int rc;

    memset(res, 0, sizeof *res);
    watchdog_fired = 0;
    in_route = 1;
    rc = dns_route(d, host, port, fixed, self, on_route, res);
    in_route = 0;
    if (rc == 0) {
        evtimer_add(wd, &tv);
        event_base_dispatch(base);
    }
    event_free(wd);
    if (watchdog_fired)
        diag("%s: no answer within %d s", host, WATCHDOG_SEC);
    if (res->fired)
        diag("%s: status %d, %zu hosts, why \"%s\"", host, (int)res->r.status,
             res->r.nhosts, res->r.why);
    return rc;
}

static const char *addr_str(const struct dns_host *h, size_t i, char *buf, size_t len)
{
    const struct sockaddr_storage *ss = &h->addr[i];
    if (ss->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, buf, (socklen_t)len);
    else if (ss->ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, buf, (socklen_t)len);
    else
        snprintf(buf, len, "?");
    return buf;
}

static int addr_port(const struct dns_host *h, size_t i)
{
    const struct sockaddr_storage *ss = &h->addr[i];
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static void self_addr4(struct sockaddr_storage *ss, const char *ip)
{
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    s4->sin_family = AF_INET;
    s4->sin_port = htons(25);
    inet_pton(AF_INET, ip, &s4->sin_addr);
}

static void self_addr6(struct sockaddr_storage *ss, const char *ip)
{
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    s6->sin6_family = AF_INET6;
    inet_pton(AF_INET6, ip, &s6->sin6_addr);
}

/* ---------- client names ---------- */

struct ptr_result {
    int fired;
    int inside_call;
    char name[256];
    int null_name;
};

static int in_ptr_call;

static void on_ptr(void *arg, const char *name)
{
    struct ptr_result *res = arg;
    res->fired++;
    res->inside_call |= in_ptr_call;
    res->null_name = name == NULL;
    snprintf(res->name, sizeof res->name, "%s", name ? name : "");
    event_base_loopbreak(base);
}

struct canceller {
    int fired;
    struct dns_ptr_req *victim;
};

static void on_ptr_cancel_other(void *arg, const char *name)
{
    struct canceller *c = arg;
    c->fired++;
    dns_ptr_cancel(c->victim);
}

static void sa_of(struct sockaddr_storage *ss, const char *ip)
{
    if (strchr(ip, ':'))
        self_addr6(ss, ip);
    else
        self_addr4(ss, ip);
}

/* Name of ip, "" when none; fired is checked by the caller. */
static void run_ptr(struct dns *d, const char *ip, struct ptr_result *res)
{
    struct timeval tv = { WATCHDOG_SEC, 0 };
    struct event *wd = evtimer_new(base, on_watchdog, NULL);
    struct sockaddr_storage ss;
    struct dns_ptr_req *h;

    memset(res, 0, sizeof *res);
    sa_of(&ss, ip);
    watchdog_fired = 0;
    in_ptr_call = 1;
    h = dns_ptr(d, (struct sockaddr *)&ss, on_ptr, res);
    in_ptr_call = 0;
    if (h) {
        evtimer_add(wd, &tv);
        event_base_dispatch(base);
    }
    event_free(wd);
    if (watchdog_fired)
        diag("ptr %s: no answer within %d s", ip, WATCHDOG_SEC);
    if (res->fired)
        diag("ptr %s: %s", ip, res->null_name ? "(null)" : res->name);
}

/* ---------- fake servers for the failure paths ---------- */

static int servfail_queries;

static void on_servfail_query(evutil_socket_t fd, short what, void *arg)
{
    unsigned char buf[PKT_MAX];
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
    if (n < 4)
        return;
    servfail_queries++;
    buf[2] |= DNS_FLAGS_QR;
    buf[3] = (unsigned char)(DNS_FLAGS_RA | DNS_RCODE_SERVFAIL);
    sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
}

/* ---------- tests ---------- */

static void test_resolver_syntax(void)
{
    static const char *const good[] = { "127.0.0.1", "127.0.0.1:5353", "[::1]:5353", "::1",
                                        "[127.0.0.1]" };
    static const char *const bad[] = { "localhost", "127.0.0.1:0", "127.0.0.1:65536",
                                       "127.0.0.1:", "[::1", "[::1]x", "1.2.3.4:53x", "" };
    char err[256];
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct dns *d = dns_new(base, good[i], err, sizeof err);
        ok(d != NULL, "resolver \"%s\" accepted", good[i]);
        dns_free(d);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct dns *d;
        err[0] = '\0';
        d = dns_new(base, bad[i], err, sizeof err);
        ok(d == NULL && err[0], "resolver \"%s\" refused (%s)", bad[i], err);
        dns_free(d);
    }
    dns_free(NULL);
    ok(1, "dns_free(NULL) is harmless");
}

static void test_literal_fixed(void)
{
    /* resolver where nothing answers: an IP literal must not need it */
    char err[256], resolver[64], buf[INET6_ADDRSTRLEN];
    int port, fd = udp_bound(0, &port);
    struct dns *d;
    struct result res;

    close(fd);
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", port);
    d = dns_new(base, resolver, err, sizeof err);
    ok(d != NULL, "dns_new with a dead resolver");
    run_route(d, "127.0.0.1", SMTP_PORT, 1, NULL, &res);
    is_int(res.fired, 1, "[127.0.0.1]: callback ran once");
    ok(!res.inside_route, "[127.0.0.1]: callback deferred to the loop");
    is_int(res.r.status, DNS_OK, "[127.0.0.1]: DNS_OK without DNS");
    is_int(res.r.nhosts, 1, "[127.0.0.1]: one host");
    is_int(res.r.hosts[0].naddr, 1, "[127.0.0.1]: one address");
    is_str(addr_str(&res.r.hosts[0], 0, buf, sizeof buf), "127.0.0.1", "[127.0.0.1]: address");
    is_int(addr_port(&res.r.hosts[0], 0), SMTP_PORT, "[127.0.0.1]: port set");

    run_route(d, "::1", SMTP_PORT, 1, NULL, &res);
    is_int(res.r.status, DNS_OK, "[::1]: DNS_OK");
    is_int(res.r.hosts[0].addr[0].ss_family, AF_INET6, "[::1]: IPv6 sockaddr");
    is_int(res.r.hosts[0].addrlen[0], sizeof(struct sockaddr_in6), "[::1]: addrlen");
    is_int(addr_port(&res.r.hosts[0], 0), SMTP_PORT, "[::1]: port set");

    run_route(d, "example.test", SMTP_PORT, 0, NULL, &res);
    is_int(res.fired, 1, "closed resolver port: callback ran");
    ok(!res.inside_route, "closed resolver port: callback deferred to the loop");
    is_int(res.r.status, DNS_TEMP, "closed resolver port: DNS_TEMP");
    is_int(res.r.nhosts, 0, "closed resolver port: no hosts");

    run_route(d, "", SMTP_PORT, 0, NULL, &res);
    is_int(res.fired, 1, "empty name: callback ran");
    is_int(res.r.status, DNS_PERM, "empty name: DNS_PERM");
    dns_free(d);
}

static void test_servfail_and_timeout(void)
{
    char err[256], resolver[64];
    int port, fd = udp_bound(0, &port), sport, silent = udp_bound(0, &sport);
    struct event *ev = event_new(base, fd, EV_READ | EV_PERSIST, on_servfail_query, NULL);
    struct dns *d;
    struct result res;
    time_t t0;

    event_add(ev, NULL);
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", port);
    d = dns_new(base, resolver, err, sizeof err);
    run_route(d, "order.test", SMTP_PORT, 0, NULL, &res);
    is_int(res.r.status, DNS_TEMP, "SERVFAIL: DNS_TEMP");
    ok(servfail_queries > 0, "SERVFAIL: the server was asked (%d queries)", servfail_queries);
    ok(strstr(res.r.why, "failure") != NULL, "SERVFAIL: why reports a server failure");
    ok(strstr(res.r.why, "order.test") != NULL, "SERVFAIL: why names the domain");
    run_route(d, "fixed.test", SMTP_PORT, 1, NULL, &res);
    is_int(res.r.status, DNS_TEMP, "SERVFAIL on a fixed host's A/AAAA: DNS_TEMP");
    dns_free(d);
    event_free(ev);
    close(fd);

    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", sport);
    d = dns_new(base, resolver, err, sizeof err);
    t0 = time(NULL);
    run_route(d, "order.test", SMTP_PORT, 0, NULL, &res);
    is_int(res.fired, 1, "silent server: callback ran (time-out)");
    is_int(res.r.status, DNS_TEMP, "silent server: DNS_TEMP");
    ok(time(NULL) - t0 < WATCHDOG_SEC, "silent server: bounded wait (%ld s)",
       (long)(time(NULL) - t0));

    /* cancellation: pending work vanishes without a callback */
    {
        struct ptr_result p1, p2;
        struct sockaddr_storage ss;
        struct dns_ptr_req *h;
        memset(&p1, 0, sizeof p1);
        memset(&p2, 0, sizeof p2);
        self_addr4(&ss, "127.0.0.101");
        ok((h = dns_ptr(d, (struct sockaddr *)&ss, on_ptr, &p1)) != NULL,
           "queued a PTR lookup to the silent server, then cancelled it");
        dns_ptr_cancel(h);
        ok(dns_ptr(d, (struct sockaddr *)&ss, on_ptr, &p2) != NULL,
           "queued a PTR lookup to the silent server, left pending");
        dns_free(d);
        {
            struct timeval tv = { 0, 200000 };
            event_base_loopexit(base, &tv);
            event_base_dispatch(base);
        }
        is_int(p1.fired + p2.fired, 0, "dns_free: no callback for PTR lookups");
        d = dns_new(base, resolver, err, sizeof err);
    }
    {
        struct result r2;
        struct timeval tv = { 0, 200000 };
        memset(&r2, 0, sizeof r2);
        ok(dns_route(d, "order.test", SMTP_PORT, 0, NULL, on_route, &r2) == 0,
           "queued a lookup to the silent server");
        ok(dns_route(d, "127.0.0.1", SMTP_PORT, 1, NULL, on_route, &r2) == 0,
           "queued a literal whose callback is already due");
        dns_free(d);
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        is_int(r2.fired, 0, "dns_free: no callback for cancelled work");
    }
    close(silent);
}

static void test_ptr(struct dns *d)
{
    struct ptr_result res;
    struct sockaddr_storage ss;

    run_ptr(d, "127.0.0.101", &res);
    is_int(res.fired, 1, "PTR confirmed: callback ran once");
    is_int(res.inside_call, 0, "PTR: callback not run from inside dns_ptr()");
    is_str(res.name, "good.rdns.test", "PTR confirmed: the name");

    run_ptr(d, "127.0.0.102", &res);
    is_int(res.fired, 1, "PTR not confirmed: callback ran");
    ok(res.null_name, "PTR to a name with another address: NULL");

    run_ptr(d, "127.0.0.104", &res);
    is_int(res.fired, 1, "no PTR: callback ran");
    ok(res.null_name, "no PTR: NULL");

    run_ptr(d, "127.0.0.105", &res);
    ok(res.fired == 1 && !res.null_name, "two PTRs, first unresolvable: a name");
    is_str(res.name, "second.rdns.test", "two PTRs: the one that confirms");

    run_ptr(d, "fd00::101", &res);
    is_str(res.name, "v6.rdns.test", "IPv6 PTR (ip6.arpa) confirmed by AAAA");

    run_ptr(d, "::ffff:127.0.0.101", &res);
    is_str(res.name, "good.rdns.test", "IPv4-mapped IPv6 is looked up as IPv4");

    {
        struct sockaddr_un_like { sa_family_t f; char pad[32]; } bad = { AF_UNIX, { 0 } };
        memset(&res, 0, sizeof res);
        ok(dns_ptr(d, (struct sockaddr *)&bad, on_ptr, &res) == NULL,
           "non-IP address: NULL handle, no callback");
    }

    /* cancel: the answers still arrive, the callback must not run */
    {
        struct timeval tv = { 1, 0 };
        struct dns_ptr_req *h;
        memset(&res, 0, sizeof res);
        sa_of(&ss, "127.0.0.101");
        h = dns_ptr(d, (struct sockaddr *)&ss, on_ptr, &res);
        ok(h != NULL, "cancel: lookup started");
        dns_ptr_cancel(h);
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        is_int(res.fired, 0, "cancel: no callback");
        /* and the resolver still works afterwards */
        run_ptr(d, "127.0.0.101", &res);
        is_str(res.name, "good.rdns.test", "after cancel: next lookup answered");
    }
    /* cancel from another callback: the second answer (same server, same
     * question) is usually in by then, its callback due but not yet run */
    {
        struct timeval tv = { 1, 0 };
        struct ptr_result second;
        struct canceller c;
        memset(&second, 0, sizeof second);
        memset(&c, 0, sizeof c);
        sa_of(&ss, "127.0.0.104");
        ok(dns_ptr(d, (struct sockaddr *)&ss, on_ptr_cancel_other, &c) != NULL &&
               (c.victim = dns_ptr(d, (struct sockaddr *)&ss, on_ptr, &second)) != NULL,
           "cancel racing completion: two lookups started");
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
        is_int(c.fired, 1, "cancel racing completion: first callback ran");
        is_int(second.fired, 0, "cancel racing completion: cancelled callback did not");
    }
    dns_ptr_cancel(NULL);
    ok(1, "dns_ptr_cancel(NULL) is harmless");
}

static int host_is(const struct dns_route *r, size_t i, const char *name, const char *ip)
{
    char buf[INET6_ADDRSTRLEN];
    if (i >= r->nhosts || strcmp(r->hosts[i].name, name) != 0 || r->hosts[i].naddr < 1)
        return 0;
    return strcmp(addr_str(&r->hosts[i], 0, buf, sizeof buf), ip) == 0 &&
           addr_port(&r->hosts[i], 0) == SMTP_PORT;
}

static void test_mx(struct dns *d)
{
    struct sockaddr_storage me[2];
    struct dns_self self = { our_names, 2, me, 1 };
    struct dns_self none = { NULL, 0, NULL, 0 };
    struct result res;
    int seen_ab = 0, seen_ba = 0, always_c_first = 1, both = 1;
    char buf[INET6_ADDRSTRLEN];

    self_addr4(&me[0], "127.0.0.1");

    run_route(d, "order.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "order: DNS_OK");
    is_int(res.r.nhosts, 3, "order: three hosts");
    ok(host_is(&res.r, 0, "mx1.order.test", "127.0.0.11"), "order: pref 10 first");
    ok(host_is(&res.r, 1, "mx2.order.test", "127.0.0.12"), "order: pref 20 second");
    ok(host_is(&res.r, 2, "mx3.order.test", "127.0.0.13"), "order: pref 30 third");
    is_int(res.r.hosts[0].pref, 10, "order: preference reported");
    is_int(res.r.hosts[2].pref, 30, "order: preference reported (last)");

    run_route(d, "ORDER.TEST.", SMTP_PORT, 0, NULL, &res);
    is_int(res.r.status, DNS_OK, "trailing dot and case in the domain: DNS_OK, no self given");

    for (int i = 0; i < SHUFFLE_ROUNDS; i++) {
        run_route(d, "eq.test", SMTP_PORT, 0, &none, &res);
        if (res.r.status != DNS_OK || res.r.nhosts != 3) {
            both = 0;
            break;
        }
        always_c_first &= strcmp(res.r.hosts[0].name, "c.eq.test") == 0;
        if (!strcmp(res.r.hosts[1].name, "a.eq.test") && !strcmp(res.r.hosts[2].name, "b.eq.test"))
            seen_ab++;
        else if (!strcmp(res.r.hosts[1].name, "b.eq.test") &&
                 !strcmp(res.r.hosts[2].name, "a.eq.test"))
            seen_ba++;
        else
            both = 0;
    }
    ok(both, "equal preferences: both hosts present every time");
    ok(always_c_first, "equal preferences: the better MX stays first");
    ok(seen_ab > 0 && seen_ba > 0, "equal preferences shuffled (a-b %d, b-a %d of %d)", seen_ab,
       seen_ba, SHUFFLE_ROUNDS);

    run_route(d, "selfname.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "self by name: DNS_OK");
    is_int(res.r.nhosts, 1, "self by name: self and worse dropped");
    ok(host_is(&res.r, 0, "better.selfname.test", "127.0.0.31"), "self by name: better kept");

    run_route(d, "selfaddr.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "self by address: DNS_OK");
    is_int(res.r.nhosts, 1, "self by address: self, equal and worse dropped");
    ok(host_is(&res.r, 0, "good.selfaddr.test", "127.0.0.41"), "self by address: better kept");

    run_route(d, "selfaddr.test", SMTP_PORT, 0, &none, &res);
    is_int(res.r.nhosts, 4, "no self given: all four MX kept");

    run_route(d, "loop.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_LOOP, "we are the best MX (name): DNS_LOOP");
    is_str(res.r.why, "mail for loop.test loops back to myself", "loop: why");
    is_int(res.r.nhosts, 0, "loop: no hosts");

    {
        /* IPv4-mapped listen address equals the IPv4 MX address */
        struct dns_self mapped = { NULL, 0, me + 1, 1 };
        self_addr6(&me[1], "::ffff:127.0.0.1");
        run_route(d, "loopaddr.test", SMTP_PORT, 0, &mapped, &res);
        is_int(res.r.status, DNS_LOOP, "we are the only MX (v4-mapped address): DNS_LOOP");
    }
    {
        /* a wildcard listen address covers loopback too */
        struct dns_self wild = { NULL, 0, me + 1, 1 };
        self_addr4(&me[1], "0.0.0.0");
        run_route(d, "loopaddr.test", SMTP_PORT, 0, &wild, &res);
        is_int(res.r.status, DNS_LOOP, "wildcard listen address matches 127.0.0.1: DNS_LOOP");
    }

    {
        /* our address among MANY_ADDRS of the only MX host; dnsmasq
         * rotates the answer, so over MANY_ADDRS rounds it sits beyond
         * the DNS_MAX_ADDRS a route keeps about half the time */
        int loops = 0;
        for (int i = 0; i < MANY_ADDRS; i++) {
            run_route(d, "manyaddr.test", SMTP_PORT, 0, &self, &res);
            loops += res.r.status == DNS_LOOP;
        }
        is_int(loops, MANY_ADDRS, "our address beyond the kept %d of %d: DNS_LOOP every time",
               DNS_MAX_ADDRS, MANY_ADDRS);
    }

    run_route(d, "nx.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_PERM, "NXDOMAIN: DNS_PERM");
    ok(strstr(res.r.why, "NXDOMAIN") != NULL, "NXDOMAIN: why says so");

    run_route(d, "nullmx.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_PERM, "null MX: DNS_PERM");
    ok(strstr(res.r.why, "null MX") != NULL, "null MX: why says so");

    run_route(d, "nodata.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "no MX (NODATA): implicit MX");
    is_int(res.r.nhosts, 1, "implicit MX: one host");
    ok(host_is(&res.r, 0, "nodata.test", "127.0.0.50"), "implicit MX: the domain itself");
    is_int(res.r.hosts[0].pref, 0, "implicit MX: preference 0");

    run_route(d, "dual.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "A and AAAA: DNS_OK");
    is_int(res.r.nhosts == 1 ? res.r.hosts[0].naddr : 0, 2, "A and AAAA: two addresses");
    ok(res.r.nhosts == 1 && res.r.hosts[0].naddr == 2 &&
           strcmp(addr_str(&res.r.hosts[0], 0, buf, sizeof buf), "127.0.0.70") == 0 &&
           strcmp(addr_str(&res.r.hosts[0], 1, buf, sizeof buf), "::1") == 0 &&
           addr_port(&res.r.hosts[0], 1) == SMTP_PORT,
       "A and AAAA: both, ports set");

    run_route(d, "noaddr.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_PERM, "only MX host is NXDOMAIN: DNS_PERM");

    run_route(d, "mixed.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "one MX host NXDOMAIN, one fine: DNS_OK");
    is_int(res.r.nhosts, 1, "mixed: the unresolvable host left out");
    ok(host_is(&res.r, 0, "real.mixed.test", "127.0.0.61"), "mixed: the good host");

    run_route(d, "lit.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "MX host written as an IP literal: DNS_OK");
    ok(host_is(&res.r, 0, "127.0.0.80", "127.0.0.80"), "MX literal used as is");

    run_route(d, "many.test", SMTP_PORT, 0, &self, &res);
    is_int(res.r.status, DNS_OK, "many MX: DNS_OK");
    is_int(res.r.nhosts, DNS_MAX_HOSTS, "many MX: capped at DNS_MAX_HOSTS");
    {
        int sorted = 1;
        for (size_t i = 1; i < res.r.nhosts; i++)
            sorted &= res.r.hosts[i - 1].pref < res.r.hosts[i].pref;
        ok(sorted && res.r.hosts[0].pref == 100 - (MANY_MX - 1), "many MX: best ones, in order");
    }

    run_route(d, "fixed.test", SMTP_PORT, 1, &self, &res);
    is_int(res.r.status, DNS_OK, "fixed name: A lookup, no MX");
    ok(host_is(&res.r, 0, "fixed.test", "127.0.0.1"),
       "fixed name: our own address is not a loop (the port differs)");

    run_route(d, "order.test", SMTP_PORT, 1, &self, &res);
    is_int(res.r.status, DNS_TEMP, "fixed name without address: DNS_TEMP, never a bounce");

    {
        const char *const hostnames[] = { "selfhost.test" };
        struct dns_self s = { hostnames, 1, NULL, 0 };
        run_route(d, "selfhost.test", SMTP_PORT, 0, &s, &res);
        is_int(res.r.status, DNS_LOOP, "implicit MX that is our own name: DNS_LOOP");
    }
}

/* dns_self_new: who we are, sized by the config.  0.1.0's scheduler kept
 * 32 names and 16 addresses; the 40th alias and the 20th address must be
 * there, copied (a reload frees the conf they came from). */
static void test_self_new(void)
{
    enum { NAL = 40, NLS = 20 };
    char *aliases[NAL];
    struct conf_listen listen[NLS];
    char hostname[] = "mx2.example.net";
    struct conf c;

    memset(&c, 0, sizeof c);
    c.hostname = hostname;
    for (int i = 0; i < NAL; i++) {
        aliases[i] = malloc(32);
        snprintf(aliases[i], 32, "alias%02d.example.net", i + 1);
    }
    for (int i = 0; i < NLS; i++) {
        listen[i].address = malloc(48);
        listen[i].port = SMTP_PORT;
        if (i == NLS - 1)
            snprintf(listen[i].address, 48, "2001:db8::%d", i + 1);
        else
            snprintf(listen[i].address, 48, "127.0.1.%d", i + 1);
    }
    c.aliases = aliases;
    c.naliases = NAL;
    c.listen = listen;
    c.nlisten = NLS;

    struct dns_self *s = dns_self_new(&c);
    if (!ok(s != NULL, "dns_self_new: built"))
        return;
    is_int(s->nnames, NAL + 1, "hostname and all %d aliases", NAL);
    is_str(s->names[0], "mx2.example.net", "the hostname first");
    is_str(s->names[NAL], "alias40.example.net", "the 40th alias");
    is_int(s->naddrs, NLS, "all %d listen addresses", NLS);
    struct in_addr a4;
    inet_pton(AF_INET, "127.0.1.17", &a4);
    ok(s->addrs[16].ss_family == AF_INET &&
       memcmp(&((const struct sockaddr_in *)&s->addrs[16])->sin_addr, &a4, sizeof a4) == 0,
       "the 17th address (beyond the old 16) is 127.0.1.17");
    struct in6_addr a6;
    inet_pton(AF_INET6, "2001:db8::20", &a6);
    ok(s->addrs[NLS - 1].ss_family == AF_INET6 &&
       memcmp(&((const struct sockaddr_in6 *)&s->addrs[NLS - 1])->sin6_addr, &a6, sizeof a6) == 0,
       "the 20th address, IPv6");
    /* the conf goes (a reload): the self stays intact */
    for (int i = 0; i < NAL; i++) {
        memset(aliases[i], 'x', 8);
        free(aliases[i]);
    }
    for (int i = 0; i < NLS; i++)
        free(listen[i].address);
    is_str(s->names[NAL], "alias40.example.net", "names are copies, not borrowed");
    dns_self_free(s);
    dns_self_free(NULL);
}

int main(void)
{
    char err[256], resolver[64];
    struct dns *d;

    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    test_self_new();
    test_resolver_syntax();
    test_literal_fixed();
    test_servfail_and_timeout();

    if (dnsmasq_start() < 0) {
        diag("dnsmasq not available or did not start: DNS server tests skipped");
        ok(access(DNSMASQ, X_OK) < 0, "dnsmasq missing (not failing to start)");
        event_base_free(base);
        return done_testing();
    }
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", dm_port);
    d = dns_new(base, resolver, err, sizeof err);
    ok(d != NULL, "dns_new(%s): %s", resolver, d ? "ok" : err);
    if (d) {
        test_mx(d);
        test_ptr(d);
    }
    dns_free(d);
    dnsmasq_stop();
    event_base_free(base);
    return done_testing();
}

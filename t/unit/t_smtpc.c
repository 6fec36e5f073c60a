/*
 * t_smtpc.c - the outbound SMTP client against real peers on loopback:
 * Postfix's smtp-sink (probe, several messages per connection, dumps checked
 * byte for byte, RCPT rejects, 421, no 8BITMIME) and t/unit/fake_smtpd.py
 * (STARTTLS under every policy with a self-signed certificate, CHUNKING,
 * SIZE, SMTPUTF8, DSN parameters, greeting 421, lost connection, time-outs).
 * Every wait is bounded by a watchdog.
 */
#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "log.h"
#include "smtpc.h"
#include "tls.h"
#include "tap.h"

#define WATCHDOG_SEC   20
#define MAXR           4
#define MAXMSG         8
#define SINK_BIN       "/usr/sbin/smtp-sink"
#define BIG_BODY_LINES 20000

static struct event_base *base;
static char tmp[PATH_MAX / 2];   /* room left for file names below it */
static char fake_py[PATH_MAX];
static SSL_CTX *client_ctx;

/* ---- messages ----------------------------------------------------------- */

struct tmsg {
    struct qmsg m;
    struct qrcpt r[MAXR];
    int code[MAXR];
    char text[MAXR][512];
    struct smtpc_msg sm;
};

static struct tmsg *tmsg_new(const char *sender, const char *const rcpts[], size_t n, const void *body,
                             size_t len, unsigned flags)
{
    struct tmsg *t = calloc(1, sizeof *t);
    snprintf(t->m.qid, sizeof t->m.qid, "T%u", (unsigned)rand());
    snprintf(t->m.sender, sizeof t->m.sender, "%s", sender);
    t->m.size = len;
    t->m.flags = flags;
    t->m.nrcpt = (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        snprintf(t->r[i].addr, sizeof t->r[i].addr, "%s", rcpts[i]);
    t->sm.m = &t->m;
    t->sm.rcpt = t->r;
    t->sm.nrcpt = n;
    t->sm.code = t->code;
    t->sm.text = t->text;
    t->sm.body = evbuffer_new();
    evbuffer_add(t->sm.body, body, len);
    return t;
}

static void tmsg_free(struct tmsg *t)
{
    if (t) {
        evbuffer_free(t->sm.body);
        free(t);
    }
}

/* ---- one session -------------------------------------------------------- */

struct run {
    struct tmsg *msgs[MAXMSG];
    size_t nmsg, next_i, ndone;
    int ready, closed, closed_sync, wait_first, nwait;
    int abort_in_ready;
    int is_tls, has_dsn;
    enum smtpc_end how;
    enum smtpc_stage stage;
    char why[1024];
    struct smtpc *c;
    struct event *resume_ev;
};

static void on_ready(void *arg, struct smtpc *c)
{
    struct run *r = arg;
    r->ready++;
    r->is_tls = smtpc_is_tls(c);
    r->has_dsn = smtpc_has_dsn(c);
    if (r->abort_in_ready)
        smtpc_abort(c);
}

static void do_resume(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    smtpc_resume(r->c);
}

static enum smtpc_next on_next(void *arg, struct smtpc *c, struct smtpc_msg **msg)
{
    struct run *r = arg;
    if (r->wait_first && r->nwait == 0) {
        struct timeval tv = { 0, 50000 };
        r->nwait++;
        r->resume_ev = evtimer_new(base, do_resume, r);
        evtimer_add(r->resume_ev, &tv);
        return SMTPC_NEXT_WAIT;
    }
    if (r->next_i < r->nmsg) {
        *msg = &r->msgs[r->next_i++]->sm;
        return SMTPC_NEXT_MSG;
    }
    return SMTPC_NEXT_NONE;
}

static void on_done(void *arg, struct smtpc *c, struct smtpc_msg *msg)
{
    struct run *r = arg;
    r->ndone++;
}

static void on_closed(void *arg, struct smtpc *c, enum smtpc_end how, enum smtpc_stage stage,
                      const char *why)
{
    struct run *r = arg;
    r->closed++;
    r->how = how;
    r->stage = stage;
    snprintf(r->why, sizeof r->why, "%s", why);
    event_base_loopbreak(base);
}

static const struct smtpc_ops ops = { on_ready, on_next, on_done, on_closed };

static void watchdog(evutil_socket_t fd, short what, void *arg)
{
    diag("watchdog fired");
    event_base_loopbreak(base);
}

struct peer {
    struct sockaddr_in sin;
    const char *name;
    enum tls_policy tls;
    const char *fp;
    long timeout;
};

static struct peer peer_at(int port)
{
    struct peer p = { .tls = TLS_POLICY_NONE };
    p.sin.sin_family = AF_INET;
    p.sin.sin_port = htons((uint16_t)port);
    p.sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return p;
}

/* ---- peers -------------------------------------------------------------- */

static int free_port(void)
{
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        close(fd);
        return -1;
    }
    port = ntohs(sin.sin_port);
    close(fd);
    return port;
}

static int wait_listening(int port)
{
    for (int i = 0; i < 200; i++) {
        struct peer p = peer_at(port);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int rc = connect(fd, (struct sockaddr *)&p.sin, sizeof p.sin);
        close(fd);
        if (rc == 0)
            return 0;
        usleep(25000);
    }
    return -1;
}

/* smtp-sink with extra options; returns its pid, port in *port. */
static pid_t sink_start(const char *dumpdir, const char *opt1, const char *opt2, int *port)
{
    char addr[64], tmpl[PATH_MAX];
    const char *argv[16];
    int n = 0;
    pid_t pid;

    *port = free_port();
    snprintf(addr, sizeof addr, "127.0.0.1:%d", *port);
    argv[n++] = SINK_BIN;
    if (geteuid() == 0) {
        argv[n++] = "-u";
        argv[n++] = "nobody";
    }
    if (dumpdir) {
        snprintf(tmpl, sizeof tmpl, "%s/m.", dumpdir);
        argv[n++] = "-d";
        argv[n++] = tmpl;
    }
    if (opt1)
        argv[n++] = opt1;
    if (opt2)
        argv[n++] = opt2;
    argv[n++] = addr;
    argv[n++] = "10";
    argv[n] = NULL;
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execv(SINK_BIN, (char *const *)argv);
        _exit(127);
    }
    if (wait_listening(*port) < 0)
        diag("smtp-sink did not start on port %d", *port);
    return pid;
}

/* fake_smtpd.py with options; the port comes back on its stdout. */
static pid_t fake_start(const char *outdir, const char *const opts[], int *port)
{
    const char *argv[20];
    int n = 0, pfd[2];
    pid_t pid;
    char buf[32] = "";
    ssize_t got;

    *port = 0;
    argv[n++] = "python3";
    argv[n++] = fake_py;
    argv[n++] = "--out";
    argv[n++] = outdir;
    for (size_t i = 0; opts && opts[i]; i++)
        argv[n++] = opts[i];
    argv[n] = NULL;
    if (pipe(pfd) < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    for (size_t o = 0; o < sizeof buf - 1 && !strchr(buf, '\n'); o += (size_t)got) {
        got = read(pfd[0], buf + o, sizeof buf - 1 - o);
        if (got <= 0)
            break;
        buf[o + (size_t)got] = '\0';
    }
    close(pfd[0]);
    *port = atoi(buf);
    if (*port <= 0)
        diag("fake_smtpd did not start");
    return pid;
}

static void stop(pid_t pid)
{
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
}

static char *mkdir_tmp(const char *name)
{
    static char path[8][PATH_MAX];
    static int k;
    char *p = path[k++ % 8];
    snprintf(p, PATH_MAX, "%s/%s", tmp, name);
    mkdir(p, 0777);
    chmod(p, 0777);     /* smtp-sink runs as nobody */
    return p;
}

/* ---- file helpers --------------------------------------------------------- */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    buf = malloc((size_t)n + 1);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n)
        n = 0;
    buf[n] = '\0';
    fclose(f);
    if (len)
        *len = (size_t)n;
    return buf;
}

static int count_files(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    if (!d)
        return 0;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            n++;
    closedir(d);
    return n;
}

/* The smtp-sink dump holding `needle`; malloc'd content or NULL. */
static char *sink_find(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX], *hit = NULL;

    if (!d)
        return NULL;
    while (!hit && (e = readdir(d)) != NULL) {
        char *s;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        s = slurp(path, NULL);
        if (s && strstr(s, needle))
            hit = s;
        else
            free(s);
    }
    closedir(d);
    return hit;
}

/* smtp-sink stores lines with LF and appends an empty line; its own headers
 * end with the three-line Received header. */
static int sink_body_is(const char *dump, const char *crlf_body)
{
    const char *p = strstr(dump, "Received: from ");
    char want[8192];
    size_t o = 0;

    if (!p)
        return 0;
    for (int i = 0; i < 3 && p; i++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    if (!p)
        return 0;
    for (const char *s = crlf_body; *s; s++)
        if (!(s[0] == '\r' && s[1] == '\n'))
            want[o++] = *s;
    want[o++] = '\n';
    want[o] = '\0';
    if (strcmp(p, want) != 0) {
        diag("dump body differs:\n%s\n--- want:\n%s", p, want);
        return 0;
    }
    return 1;
}

static void wait_files(const char *dir, const char *prefix, int n)
{
    for (int i = 0; i < 100 && count_files(dir, prefix) < n; i++)
        usleep(20000);
}

/* Run one session handing out msgs (kept by the caller). */
static void run_keep(struct run *r, const struct peer *p, struct tmsg **m, size_t n)
{
    struct smtpc_config cfg = {
        .helo = "mx2.test", .peer_name = p->name ? p->name : "127.0.0.1",
        .addr = (const struct sockaddr *)&p->sin, .addrlen = sizeof p->sin, .tls = p->tls,
        .tls_ctx = client_ctx, .tls_fingerprint = p->fp, .connect_timeout = 5,
        .greeting_timeout = p->timeout ? p->timeout : 10, .command_timeout = 10,
        .data_timeout = 10 };
    struct event *wd = evtimer_new(base, watchdog, NULL);
    struct timeval tv = { WATCHDOG_SEC, 0 };

    for (size_t i = 0; i < n; i++)
        r->msgs[i] = m[i];
    r->nmsg = n;
    evtimer_add(wd, &tv);
    r->c = smtpc_new(base, &cfg, &ops, r);
    if (r->c && r->abort_in_ready < 0) {
        smtpc_abort(r->c);
        r->closed_sync = r->closed;
    }
    if (r->c)
        event_base_dispatch(base);
    event_free(wd);
    if (r->resume_ev)
        event_free(r->resume_ev);
}

/* ---- tests against smtp-sink --------------------------------------------- */

static const char *const one_rcpt[] = { "user@example.org" };

static void test_probe(void)
{
    int port;
    pid_t pid = sink_start(NULL, NULL, NULL, &port);
    struct run r = { 0 };
    struct peer p = peer_at(port);
    struct tmsg *m[1];

    p.name = "sink.test";
    run_keep(&r, &p, NULL, 0);
    is_int(r.ready, 1, "probe: ready once");
    is_int(r.closed, 1, "probe: closed once");
    is_int(r.how, SMTPC_END_OK, "probe: QUIT -> SMTPC_END_OK (%s)", r.why);
    ok(r.has_dsn && !r.is_tls, "probe: DSN seen, no TLS");

    /* tls=may against a peer without STARTTLS: clear text is fine */
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_MAY;
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 1 && r.how == SMTPC_END_OK && !r.is_tls, "may without STARTTLS: clear");
    is_int(r.stage, SMTPC_STAGE_QUIT, "a probe ends at the QUIT stage");

    /* tls=encrypt against a peer without STARTTLS: refused */
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_ENCRYPT;
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.how == SMTPC_END_TLS && strstr(r.why, "does not offer STARTTLS"),
       "encrypt without STARTTLS: SMTPC_END_TLS (%s)",
       r.why);

    /* NEXT_WAIT then smtpc_resume */
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_NONE;
    r.wait_first = 1;
    m[0] = tmsg_new("a@b.test", one_rcpt, 1, "Subject: w\r\n\r\nw\r\n", 17, 0);
    run_keep(&r, &p, m, 1);
    ok(r.nwait == 1 && r.ndone == 1 && m[0]->code[0] == 250 && r.how == SMTPC_END_OK,
       "WAIT, resume, message sent");
    tmsg_free(m[0]);

    /* abort right after smtpc_new: closed() comes from the loop */
    memset(&r, 0, sizeof r);
    r.abort_in_ready = -1;
    run_keep(&r, &p, NULL, 0);
    ok(r.closed_sync == 0 && r.closed == 1, "abort after new: closed() from the loop only");

    /* abort inside ready(): QUIT, closed once, OK */
    memset(&r, 0, sizeof r);
    r.abort_in_ready = 1;
    m[0] = tmsg_new("a@b.test", one_rcpt, 1, "x\r\n", 3, 0);
    run_keep(&r, &p, m, 1);
    ok(r.closed == 1 && r.how == SMTPC_END_OK && r.ndone == 0, "abort in ready: QUIT, no message");
    tmsg_free(m[0]);
    stop(pid);
}

static const char body1[] =
    "Subject: m1\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nmiddle\r\n. \r\nend\r\n";
static const char body2[] = "Subject: m2\r\n\r\n8-bit: caf\xc3\xa9\r\n";
static const char body3[] = "Subject: m3\r\n\r\nno final newline";

static void test_sink_messages(void)
{
    char *dir = mkdir_tmp("sink1");
    int port;
    pid_t pid = sink_start(dir, NULL, NULL, &port);
    struct run r = { 0 };
    struct peer p = peer_at(port);
    const char *three[] = { "a@example.org", "b@example.org", "c@example.org" };
    char *d;

    struct tmsg *keep[3];
    keep[0] = tmsg_new("s1@sender.test", one_rcpt, 1, body1, sizeof body1 - 1, 0);
    keep[1] = tmsg_new("s2@sender.test", one_rcpt, 1, body2, sizeof body2 - 1, QMSG_F_8BIT);
    keep[2] = tmsg_new("", three, 3, body3, sizeof body3 - 1, 0);
    struct tmsg *m1 = keep[0], *m2 = keep[1], *m3 = keep[2];
    p.name = "sink.test";
    run_keep(&r, &p, keep, 3);
    is_int(r.ndone, 3, "3 messages done on one connection");
    is_int(r.how, SMTPC_END_OK, "then QUIT (%s)", r.why);
    is_int(m1->code[0], 250, "m1 accepted");
    ok(strncmp(m1->text[0], "250 2.0.0", 9) == 0, "reply text kept with code: %s", m1->text[0]);
    is_int(m2->code[0], 250, "m2 (8-bit) accepted");
    ok(m3->code[0] == 250 && m3->code[1] == 250 && m3->code[2] == 250, "m3: 3 recipients accepted");
    is_int(evbuffer_get_length(m1->sm.body), 0, "body drained");
    wait_files(dir, "m.", 3);
    is_int(count_files(dir, "m."), 3, "3 dumps");
    d = sink_find(dir, "Subject: m1");
    ok(d && sink_body_is(d, body1), "m1 body byte-exact after dot-stuffing round trip");
    ok(d && strstr(d, "X-Mail-Args: <s1@sender.test>\n"), "m1: MAIL FROM without 8BITMIME");
    free(d);
    d = sink_find(dir, "Subject: m2");
    ok(d && sink_body_is(d, body2), "m2 8-bit body byte-exact");
    ok(d && strstr(d, "X-Mail-Args: <s2@sender.test> BODY=8BITMIME"), "m2: BODY=8BITMIME");
    free(d);
    d = sink_find(dir, "Subject: m3");
    ok(d && sink_body_is(d, "Subject: m3\r\n\r\nno final newline\r\n"), "m3: CRLF added at end");
    ok(d && strstr(d, "X-Mail-Args: <>") && strstr(d, "X-Rcpt-Args: <c@example.org>"),
       "m3: null sender, 3rd recipient");
    free(d);
    for (int i = 0; i < 3; i++)
        tmsg_free(keep[i]);
    stop(pid);
}

static void test_sink_faults(void)
{
    int port;
    pid_t pid;
    struct run r;
    struct peer p;
    struct tmsg *m[2];

    /* 5xx on RCPT (smtp-sink -f implies no PIPELINING): two messages, the
     * second after an RSET */
    pid = sink_start(NULL, "-f", "RCPT", &port);
    p = peer_at(port);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", one_rcpt, 1, "x\r\n", 3, 0);
    m[1] = tmsg_new("a@b.test", one_rcpt, 1, "y\r\n", 3, 0);
    run_keep(&r, &p, m, 2);
    is_int(m[0]->code[0], 500, "RCPT 5xx kept per recipient: %s", m[0]->text[0]);
    is_int(m[1]->code[0], 500, "second message on the same connection too");
    ok(r.ndone == 2 && r.how == SMTPC_END_OK, "RCPT rejects: connection ends OK (%s)", r.why);
    tmsg_free(m[0]);
    tmsg_free(m[1]);
    stop(pid);

    /* 421 after end of data */
    pid = sink_start(NULL, "-Q", ".", &port);
    p = peer_at(port);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", one_rcpt, 1, "x\r\n", 3, 0);
    m[1] = tmsg_new("a@b.test", one_rcpt, 1, "y\r\n", 3, 0);
    run_keep(&r, &p, m, 2);
    is_int(m[0]->code[0], 421, "421 at end of data: recipient gets 421 (%s)", m[0]->text[0]);
    is_int(r.how, SMTPC_END_421, "closed SMTPC_END_421 (%s)", r.why);
    is_int(r.ndone, 1, "second message never handed out");
    tmsg_free(m[0]);
    tmsg_free(m[1]);
    stop(pid);

    /* no 8BITMIME: 8-bit message bounced locally, 7-bit one sent */
    pid = sink_start(NULL, "-8", NULL, &port);
    p = peer_at(port);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", one_rcpt, 1, body2, sizeof body2 - 1, QMSG_F_8BIT);
    m[1] = tmsg_new("a@b.test", one_rcpt, 1, "y\r\n", 3, 0);
    /* declared BODY=8BITMIME, all 7-bit: sent without BODY= (issue 7, 14) */
    m[1]->m.body = SMTP_BODY_8BITMIME;
    run_keep(&r, &p, m, 2);
    ok(m[0]->code[0] == 554 && strstr(m[0]->text[0], "5.6.3"), "no 8BITMIME: 554 5.6.3 (%s)",
       m[0]->text[0]);
    is_int(m[1]->code[0], 250, "declared 8BITMIME but 7-bit: still sent (%s)", m[1]->text[0]);
    tmsg_free(m[0]);
    tmsg_free(m[1]);
    stop(pid);

    /* connection refused */
    port = free_port();
    p = peer_at(port);
    memset(&r, 0, sizeof r);
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.closed == 1 && r.how == SMTPC_END_CONNECT,
       "connect refused: SMTPC_END_CONNECT (%s)", r.why);
    is_int(r.stage, SMTPC_STAGE_CONNECT, "connect refused: stage connect");
}

/* ---- tests against fake_smtpd.py ------------------------------------------ */

static pid_t fake(const char *name, const char *const opts[], struct peer *p, char **dir)
{
    int port = 0;
    pid_t pid;
    *dir = mkdir_tmp(name);
    pid = fake_start(*dir, opts, &port);
    *p = peer_at(port);
    return pid;
}

static int file_is(const char *path, const void *want, size_t len)
{
    size_t n;
    char *s = slurp(path, &n);
    int same = s && n == len && memcmp(s, want, len) == 0;
    if (s && !same)
        diag("%s: %zu octets, want %zu", path, n, len);
    free(s);
    return same;
}

static char *big_body(size_t *len)
{
    struct evbuffer *b = evbuffer_new();
    char *s;
    evbuffer_add_printf(b, "Subject: big\r\n\r\n");
    for (int i = 0; i < BIG_BODY_LINES; i++)
        evbuffer_add_printf(b, i % 3 == 0 ? ".line %d with a leading dot\r\n" :
                                            "line %d ..............................\r\n", i);
    evbuffer_add_printf(b, ".\r\n");
    *len = evbuffer_get_length(b);
    s = malloc(*len);
    evbuffer_remove(b, s, *len);
    evbuffer_free(b);
    return s;
}

static void test_fake_protocol(void)
{
    struct peer p;
    char *dir, path[PATH_MAX], *log;
    struct run r;
    struct tmsg *m[4];
    size_t blen;
    char *big = big_body(&blen);
    const char *mixed[] = { "ok1@example.org", "reject@example.org", "defer@example.org" };
    pid_t pid;

    /* PIPELINING, mixed RCPT outcomes, a large body across many pumps */
    static const char *const plain[] = { NULL };
    pid = fake("fake1", plain, &p, &dir);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", mixed, 3, "Subject: mix\r\n\r\nhi\r\n", 20, 0);
    m[1] = tmsg_new("a@b.test", mixed + 1, 1, "never\r\n", 7, 0);
    m[2] = tmsg_new("a@b.test", one_rcpt, 1, big, blen, 0);
    m[0]->r[0].notify = SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE;
    snprintf(m[0]->r[0].orcpt, sizeof m[0]->r[0].orcpt, "rfc822;ok1+x@example.org");
    m[0]->m.ret = SMTP_RET_HDRS;
    snprintf(m[0]->m.envid, sizeof m[0]->m.envid, "env=1");
    run_keep(&r, &p, m, 3);
    ok(m[0]->code[0] == 250 && m[0]->code[1] == 550 && m[0]->code[2] == 451,
       "per-recipient codes 250/550/451 (%d %d %d)", m[0]->code[0], m[0]->code[1], m[0]->code[2]);
    ok(strstr(m[0]->text[1], "5.1.1") != NULL, "RCPT reply text kept: %s", m[0]->text[1]);
    is_int(m[1]->code[0], 550, "message with no accepted recipient: 550");
    is_int(m[2]->code[0], 250, "large body accepted (after RSET)");
    is_int(r.how, SMTPC_END_OK, "session OK (%s)", r.why);
    snprintf(path, sizeof path, "%s/msg1", dir);
    ok(file_is(path, "Subject: mix\r\n\r\nhi\r\n", 20), "mixed message delivered once, exact");
    snprintf(path, sizeof path, "%s/msg2", dir);
    ok(file_is(path, big, blen), "%zu-octet body byte-exact through dot-stuffing", blen);
    is_int(count_files(dir, "msg"), 2, "nothing delivered for the all-rejected message");
    snprintf(path, sizeof path, "%s/log", dir);
    log = slurp(path, NULL);
    ok(log && strstr(log, "MAIL FROM:<a@b.test> SIZE=20 RET=HDRS ENVID=env+3D1\n"),
       "MAIL with SIZE, RET, ENVID as xtext");
    ok(log && strstr(log, "RCPT TO:<ok1@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;ok1+2Bx@example.org\n"),
       "RCPT with NOTIFY and ORCPT as xtext");
    ok(log && strstr(log, "RSET\n"), "RSET after the failed transaction");
    free(log);
    for (int i = 0; i < 3; i++)
        tmsg_free(m[i]);
    stop(pid);

    /* CHUNKING + SIZE limit + no SMTPUTF8 */
    static const char *const chunk[] = { "--chunking", "--size", "100000", NULL };
    pid = fake("fake2", chunk, &p, &dir);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", one_rcpt, 1, big, blen, 0);
    m[1] = tmsg_new("a@b.test", one_rcpt, 1, body1, sizeof body1 - 1, 0);
    /* SMTPUTF8 declared: decided on what the message holds (issue 7, 14) */
    static const char utf8_hdr[] = "Subject: gr\xc3\xbc\xc3\x9f" "e\r\n\r\nascii body\r\n";
    static const char plain_msg[] = "Subject: plain\r\n\r\nx\r\n";
    m[2] = tmsg_new("u8@b.test", one_rcpt, 1, plain_msg, sizeof plain_msg - 1, QMSG_F_SMTPUTF8);
    m[3] = tmsg_new("a@b.test", one_rcpt, 1, utf8_hdr, sizeof utf8_hdr - 1,
                    QMSG_F_SMTPUTF8 | QMSG_F_8BIT);
    run_keep(&r, &p, m, 4);
    ok(m[0]->code[0] == 552 && strstr(m[0]->text[0], "5.3.4"), "over SIZE: 552 5.3.4 (%s)",
       m[0]->text[0]);
    is_int(m[1]->code[0], 250, "BDAT message accepted");
    is_int(m[2]->code[0], 250, "SMTPUTF8 declared, all ASCII, peer without it: sent (%s)",
           m[2]->text[0]);
    ok(m[3]->code[0] == 553 && strstr(m[3]->text[0], "5.6.7"),
       "SMTPUTF8 declared, UTF-8 in a header, peer without it: 553 5.6.7 (%s)", m[3]->text[0]);
    snprintf(path, sizeof path, "%s/msg1", dir);
    ok(file_is(path, body1, sizeof body1 - 1), "BDAT body byte-exact, not dot-stuffed");
    is_int(count_files(dir, "msg"), 2, "the ASCII one sent too, the UTF-8 one not");
    snprintf(path, sizeof path, "%s/log", dir);
    log = slurp(path, NULL);
    char bdat[64];
    snprintf(bdat, sizeof bdat, "BDAT %zu LAST\n", sizeof body1 - 1);
    ok(log && strstr(log, bdat), "%.*s", (int)strlen(bdat) - 1, bdat);
    char mail_u8[64];
    snprintf(mail_u8, sizeof mail_u8, "MAIL FROM:<u8@b.test> SIZE=%zu\n", sizeof plain_msg - 1);
    ok(log && strstr(log, mail_u8), "declared SMTPUTF8 not passed to a peer without it");
    free(log);
    for (int i = 0; i < 4; i++)
        tmsg_free(m[i]);
    stop(pid);

    /* multi-line replies keep their enhanced status (issue 7, 10) */
    static const char *const multi[] = { "multi@example.org", "mdefer@example.org",
                                         "ok@example.org" };
    pid = fake("fakem", plain, &p, &dir);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", multi, 3, "x\r\n", 3, 0);
    run_keep(&r, &p, m, 1);
    is_int(m[0]->code[0], 550, "multi-line 550 to RCPT");
    is_str(m[0]->text[0], "550 5.2.1 The account is disabled more text",
           "multi-line 550: one text, code and status once");
    is_int(m[0]->code[1], 450, "multi-line 450 to RCPT");
    is_str(m[0]->text[1], "450 4.2.1 The mailbox is busy try again", "multi-line 450 text");
    is_int(m[0]->code[2], 250, "the third recipient delivered");
    tmsg_free(m[0]);
    stop(pid);

    /* per-transaction recipient limit: 552 taken as 452, limit reported
     * (issue 7, 11) */
    static const char *const four[] = { "r1@example.org", "r2@example.org", "r3@example.org",
                                        "r4@example.org" };
    static const char *const lim[] = { "--rcpt-max", "2", NULL };
    pid = fake("fakel", lim, &p, &dir);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", four, 4, "x\r\n", 3, 0);
    run_keep(&r, &p, m, 1);
    ok(m[0]->code[0] == 250 && m[0]->code[1] == 250, "limit 2: first two delivered (%d %d)",
       m[0]->code[0], m[0]->code[1]);
    ok(m[0]->code[2] == 452 && m[0]->code[3] == 452, "552 to RCPT over the limit: 452 (%d %d)",
       m[0]->code[2], m[0]->code[3]);
    is_str(m[0]->text[2], "452 4.5.3 Too many recipients", "its text says 452 4.5.3");
    is_int((int)m[0]->sm.rcpt_limit, 2, "rcpt_limit reported: 2");
    tmsg_free(m[0]);
    stop(pid);

    /* lost connection after the body: 451 4.4.2, SMTPC_END_LOST */
    static const char *const drop[] = { "--drop-after-body", NULL };
    pid = fake("fake3", drop, &p, &dir);
    memset(&r, 0, sizeof r);
    m[0] = tmsg_new("a@b.test", mixed, 2, "x\r\n", 3, 0);
    run_keep(&r, &p, m, 1);
    ok(m[0]->code[0] == 451 && strstr(m[0]->text[0], "4.4.2"), "lost: accepted rcpt 451 4.4.2 (%s)",
       m[0]->text[0]);
    is_int(m[0]->code[1], 550, "lost: rejected rcpt keeps its 550");
    ok(r.ndone == 1 && r.how == SMTPC_END_LOST, "SMTPC_END_LOST (%s)", r.why);
    tmsg_free(m[0]);
    stop(pid);

    /* 421 greeting */
    static const char *const g421[] = { "--greeting", "421 4.3.2 busy, come back later", NULL };
    pid = fake("fake4", g421, &p, &dir);
    memset(&r, 0, sizeof r);
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.how == SMTPC_END_GREETING && strstr(r.why, "said: 421 4.3.2 busy"),
       "421 greeting: SMTPC_END_GREETING (%s)", r.why);
    is_int(r.stage, SMTPC_STAGE_GREETING, "421 greeting: stage greeting");
    stop(pid);

    /* silent peer: greeting time-out */
    static const char *const silent[] = { "--silent", NULL };
    pid = fake("fake5", silent, &p, &dir);
    p.timeout = 1;
    memset(&r, 0, sizeof r);
    time_t t0 = time(NULL);
    run_keep(&r, &p, NULL, 0);
    ok(r.how == SMTPC_END_GREETING && time(NULL) - t0 <= 3, "greeting time-out (%s)", r.why);
    stop(pid);

    /* over-long reply line: protocol error */
    static const char *const longl[] = { "--long-ehlo", NULL };
    pid = fake("fake6", longl, &p, &dir);
    memset(&r, 0, sizeof r);
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.how == SMTPC_END_LOST && strstr(r.why, "longer than"),
       "over-long reply line refused (%s)", r.why);
    stop(pid);
    free(big);
}

static int cert_fingerprint(const char *pem, char *buf, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    FILE *f = fopen(pem, "r");
    X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;

    if (f)
        fclose(f);
    if (!x || X509_digest(x, EVP_sha256(), md, &n) != 1) {
        X509_free(x);
        return -1;
    }
    X509_free(x);
    size_t o = (size_t)snprintf(buf, len, "sha256:");
    for (unsigned i = 0; i < n && o + 2 < len; i++) {
        buf[o++] = hex[md[i] >> 4];
        buf[o++] = hex[md[i] & 15];
    }
    buf[o] = '\0';
    return 0;
}

static void test_tls(void)
{
    char cert[PATH_MAX], key[PATH_MAX], cmd[3 * PATH_MAX], fp[80], path[PATH_MAX];
    const char *opts[5] = { "--tls", cert, key, NULL };
    struct peer p;
    char *dir;
    struct run r;
    struct tmsg *m[1];
    pid_t pid;
    char err[256];

    snprintf(cert, sizeof cert, "%s/cert.pem", tmp);
    snprintf(key, sizeof key, "%s/key.pem", tmp);
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=primary.test "
             "-addext subjectAltName=DNS:primary.test -keyout %s -out %s 2>/dev/null", key, cert);
    if (system(cmd) != 0 || cert_fingerprint(cert, fp, sizeof fp) < 0) {
        ok(0, "self-signed certificate made");
        return;
    }
    client_ctx = tls_client_ctx_new(NULL, err, sizeof err);
    ok(client_ctx != NULL, "client context on the system store (%s)", client_ctx ? "" : err);
    ok(tls_client_ctx_new("/nonexistent/ca.pem", err, sizeof err) == NULL && strstr(err, "/nonexistent"),
       "missing CA file: NULL with reason (%s)", err);

    pid = fake("tls", opts, &p, &dir);
    p.name = "primary.test";
    static const enum tls_policy pol[] = { TLS_POLICY_MAY, TLS_POLICY_ENCRYPT, TLS_POLICY_VERIFY };
    static const char *const pname[] = { "may", "encrypt", "verify with the right pin" };
    for (int i = 0; i < 3; i++) {
        memset(&r, 0, sizeof r);
        p.tls = pol[i];
        p.fp = pol[i] == TLS_POLICY_VERIFY ? fp : NULL;
        m[0] = tmsg_new("a@b.test", one_rcpt, 1, body1, sizeof body1 - 1, 0);
        run_keep(&r, &p, m, 1);
        ok(r.is_tls && m[0]->code[0] == 250 && r.how == SMTPC_END_OK, "STARTTLS %s: sent over TLS (%s)",
           pname[i], r.why);
        snprintf(path, sizeof path, "%s/msg%d", dir, i + 1);
        ok(file_is(path, body1, sizeof body1 - 1), "STARTTLS %s: body byte-exact", pname[i]);
        tmsg_free(m[0]);
    }
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_VERIFY;
    p.fp = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.how == SMTPC_END_TLS && strstr(r.why, "fingerprint"),
       "verify with a wrong pin: SMTPC_END_TLS (%s)", r.why);
    memset(&r, 0, sizeof r);
    p.fp = NULL;
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.how == SMTPC_END_TLS && strstr(r.why, "verification failed"),
       "verify against the system store: SMTPC_END_TLS (%s)", r.why);

    /* verify against the self-signed cert as CA, by name */
    SSL_CTX *sys = client_ctx;
    client_ctx = tls_client_ctx_new(cert, err, sizeof err);
    memset(&r, 0, sizeof r);
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 1 && r.is_tls && r.how == SMTPC_END_OK, "verify with tls_ca and name: OK (%s)",
       r.why);
    memset(&r, 0, sizeof r);
    p.name = "other.test";
    run_keep(&r, &p, NULL, 0);
    ok(r.ready == 0 && r.how == SMTPC_END_TLS, "verify with tls_ca, wrong name: SMTPC_END_TLS (%s)",
       r.why);
    SSL_CTX_free(client_ctx);
    client_ctx = sys;
    stop(pid);

    /* handshake failure under may: retry in clear; under encrypt: down */
    static const char *const bad[] = { "--bad-tls", NULL };
    pid = fake("badtls", bad, &p, &dir);
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_MAY;
    run_keep(&r, &p, NULL, 0);
    ok(r.how == SMTPC_END_TLS_RETRY, "may, handshake fails: SMTPC_END_TLS_RETRY (%s)", r.why);
    is_int(r.stage, SMTPC_STAGE_TLS, "handshake failure: stage TLS");
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_ENCRYPT;
    run_keep(&r, &p, NULL, 0);
    ok(r.how == SMTPC_END_TLS, "encrypt, handshake fails: SMTPC_END_TLS (%s)", r.why);
    stop(pid);

    /* 220 to STARTTLS with clear text after it in the same segment: under
     * may a TLS-step failure (go on in clear), under encrypt a TLS failure;
     * classified by stage, not by the error text (issue 7, 13) */
    static const char *const inj[] = { "--inject-tls", NULL };
    pid = fake("injtls", inj, &p, &dir);
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_MAY;
    run_keep(&r, &p, NULL, 0);
    ok(r.how == SMTPC_END_TLS_RETRY && r.stage == SMTPC_STAGE_TLS,
       "may, data after the STARTTLS 220: SMTPC_END_TLS_RETRY at the TLS stage (%s)", r.why);
    memset(&r, 0, sizeof r);
    p.tls = TLS_POLICY_ENCRYPT;
    run_keep(&r, &p, NULL, 0);
    ok(r.how == SMTPC_END_TLS && r.stage == SMTPC_STAGE_TLS,
       "encrypt, data after the STARTTLS 220: SMTPC_END_TLS (%s)", r.why);
    stop(pid);
}

/* ---- the reply parser (pure) ---------------------------------------------- */

static enum smtpc_reply_result feed(struct smtpc_reply *r, const char *const lines[])
{
    enum smtpc_reply_result x = SMTPC_REPLY_BAD;
    smtpc_reply_init(r);
    for (size_t i = 0; lines[i]; i++)
        x = smtpc_reply_line(r, lines[i], strlen(lines[i]), NULL);
    return x;
}

static void test_reply_parser(void)
{
    struct smtpc_reply r;
    char st[SMTPC_STATUS_MAX];
    const char *t = NULL;

    static const char *const m550[] = { "550-5.2.1 The account is disabled",
                                        "550 5.2.1 more text", NULL };
    is_int(feed(&r, m550), SMTPC_REPLY_DONE, "multi-line 550: done after the last line");
    is_int(r.code, 550, "code 550");
    is_str(r.status, "5.2.1", "status 5.2.1 from a multi-line reply");
    is_str(r.text, "550 5.2.1 The account is disabled more text", "joined text");
    smtpc_reply_status(r.code, r.text, st, sizeof st);
    is_str(st, "5.2.1", "stored text gives 5.2.1 back");

    static const char *const m451[] = { "451-4.7.1 greylisted", "451-4.7.1 see x",
                                        "451 4.7.1 later", NULL };
    feed(&r, m451);
    is_str(r.text, "451 4.7.1 greylisted see x later", "three lines joined");
    smtpc_reply_status(r.code, r.text, st, sizeof st);
    is_str(st, "4.7.1", "multi-line 4xx keeps 4.7.1");

    /* continuation lines: MORE, and the text of each for EHLO keywords */
    smtpc_reply_init(&r);
    is_int(smtpc_reply_line(&r, "250-mx.test", 11, &t), SMTPC_REPLY_MORE, "continuation: MORE");
    is_int(smtpc_reply_line(&r, "250-PIPELINING", 14, &t), SMTPC_REPLY_MORE, "still MORE");
    is_str(t, "PIPELINING", "line text for the caller");
    is_int(smtpc_reply_line(&r, "250 SIZE 1000", 13, &t), SMTPC_REPLY_DONE, "last line: DONE");
    is_str(r.status, "", "no enhanced status: empty");
    smtpc_reply_status(r.code, r.text, st, sizeof st);
    is_str(st, "2.0.0", "none given: 2.0.0 from the code");

    static const char *const mixed[] = { "250-a", "251 b", NULL };
    is_int(feed(&r, mixed), SMTPC_REPLY_MIXED, "code changes inside a reply: MIXED");
    static const char *const bad1[] = { "hello", NULL };
    is_int(feed(&r, bad1), SMTPC_REPLY_BAD, "not a reply: BAD");
    static const char *const bad2[] = { "250x", NULL };
    is_int(feed(&r, bad2), SMTPC_REPLY_BAD, "no space or dash after the code: BAD");
    static const char *const bad3[] = { "650 x", NULL };
    is_int(feed(&r, bad3), SMTPC_REPLY_BAD, "code 650: BAD");
    static const char *const bare[] = { "354", NULL };
    ok(feed(&r, bare) == SMTPC_REPLY_DONE && r.code == 354 && strcmp(r.text, "354") == 0,
       "bare code: DONE, text \"354\"");

    /* class mismatch: the reply code's class wins (RFC 3463) */
    static const char *const mism[] = { "550 4.2.2 mailbox full", NULL };
    feed(&r, mism);
    is_str(r.status, "5.2.2", "550 4.2.2 -> 5.2.2");
    /* not a status: version numbers, four digits, no dot */
    static const char *const notst[] = { "550 5.1 short", NULL };
    feed(&r, notst);
    is_str(r.status, "", "\"5.1\" is no enhanced status");
    static const char *const longd[] = { "550 5.1.1234 x", NULL };
    feed(&r, longd);
    is_str(r.status, "", "four-digit detail is no enhanced status");
    static const char *const three[] = { "550 5.123.123 x", NULL };
    feed(&r, three);
    is_str(r.status, "5.123.123", "three-digit subject and detail");
    smtpc_reply_status(r.code, r.text, st, sizeof st);
    is_str(st, "5.123.123", "and back from the text");
    /* the first line without status, a later one with: text kept, status
     * only from the first line */
    static const char *const late[] = { "550-no status here", "550 5.1.1 but here", NULL };
    feed(&r, late);
    is_str(r.text, "550 no status here but here", "continuation status stripped from the text");
    /* a long reply is cut, never overrun */
    char longline[2000];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "250-", 4);
    smtpc_reply_init(&r);
    for (int i = 0; i < 5; i++)
        smtpc_reply_line(&r, longline, sizeof longline, NULL);
    ok(r.len == sizeof r.text - 1 && strlen(r.text) == r.len, "long reply cut at %zu octets",
       sizeof r.text - 1);
    /* old stored texts ("NNN-x.y.z", from 0.1.0) and garbage: from the code */
    smtpc_reply_status(550, "550-5.2.1 x 5.2.1 y", st, sizeof st);
    is_str(st, "5.0.0", "text without \"NNN x.y.z\": 5.0.0 from the code");
    smtpc_reply_status(451, "", st, sizeof st);
    is_str(st, "4.0.0", "empty text: 4.0.0");
}

static void find_fake_py(void)
{
    const char *srcdir = getenv("srcdir");
    const char *cands[] = { srcdir, ".", "..", NULL };
    for (size_t i = 0; i < 3; i++) {
        if (!cands[i])
            continue;
        snprintf(fake_py, sizeof fake_py, "%s/t/unit/fake_smtpd.py", cands[i]);
        if (access(fake_py, R_OK) == 0)
            return;
    }
    snprintf(fake_py, sizeof fake_py, "%s", __FILE__);
    char *slash = strrchr(fake_py, '/');
    snprintf(slash ? slash + 1 : fake_py, sizeof fake_py - (size_t)(slash ? slash + 1 - fake_py : 0),
             "fake_smtpd.py");
}

int main(void)
{
    char cmd[PATH_MAX + 16];

    signal(SIGPIPE, SIG_IGN);
    log_open("t_smtpc", 1);
    if (getenv("SMTPC_DEBUG"))
        log_set_debug(1);
    srand((unsigned)getpid());
    snprintf(tmp, sizeof tmp, "/tmp/t_smtpc.XXXXXX");
    if (!mkdtemp(tmp))
        return 1;
    chmod(tmp, 0777);
    find_fake_py();
    base = event_base_new();

    test_reply_parser();
    if (access(SINK_BIN, X_OK) == 0) {
        test_probe();
        test_sink_messages();
        test_sink_faults();
    } else {
        diag("no %s: smtp-sink tests skipped", SINK_BIN);
    }
    test_fake_protocol();
    test_tls();

    SSL_CTX_free(client_ctx);
    event_base_free(base);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp);
    if (system(cmd) != 0)
        diag("could not remove %s", tmp);
    return done_testing();
}

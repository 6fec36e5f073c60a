/*
 * main.c - mxkeepd start-up, signals and shutdown.
 *
 * Start-up order (qmail's "do little as root"): parse arguments -> load and
 * validate the config and recipient lists -> open the log -> create the
 * spool directory for the mail user and enter it -> lock the spool (a
 * second daemon on the same spool stops here with 75, before it binds or
 * touches a control socket) -> bind the listeners and sockets -> load TLS
 * keys -> daemonize (the flock spool lock passes to the child, see
 * spool.h) -> write the pid file as root (a root-owned /run works) -> drop
 * privileges (setgroups/setresgid/setresuid, verified) -> open the spool
 * and recover -> enter the loop.  Everything after the drop runs as the
 * unprivileged user, including recovery and every byte of SMTP.
 *
 * Signals: SIGHUP reloads config and recipient lists (an invalid new config
 * keeps the old one); SIGTERM/SIGINT stop accepting, close idle sessions,
 * let transactions finish for a bounded time, and exit with the spool
 * consistent.
 *
 * Exit codes: 0 normal, 64 usage, 78 bad configuration (one line naming
 * file:line), 75 the spool is in use by another mxkeepd (one line naming
 * the spool and its pid), 71 other start-up failure.
 */
#include "config.h"
#include "cluster.h"
#include "conf.h"
#include "control.h"
#include "delivery.h"
#include "dns.h"
#include "domain_source.h"
#include "listen.h"
#include "odmr.h"
#include "log.h"
#include "maint.h"
#include "metrics.h"
#include "pg.h"
#include "policy.h"
#include "smtpd.h"
#include "spf.h"
#include "dkim.h"
#include "spool.h"
#include "tls.h"
#include "verify.h"
#include "heartbeat.h"
#include "replay.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <event2/event.h>
#include <event2/thread.h>

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif

#define EX_USAGE_CODE 64
#define EX_OSERR_CODE 71
#define EX_TEMPFAIL_CODE 75
/* How long SIGTERM waits for transactions in progress. */
#define SHUTDOWN_GRACE_SECONDS 30

/* The end-of-pass flush of batched log lines (log_batch_start). */
static struct event *main_log_ev;

static void main_log_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    log_flush();
}

/* Any thread: activation is thread-safe (evthread_use_pthreads), and runs
 * after the callbacks this pass had already queued. */
static void main_log_arm(void)
{
    event_active(main_log_ev, EV_TIMEOUT, 1);
}

struct daemon {
    struct event_base *base;
    struct conf *conf;              /* what runs: the file's plus domains_from's */
    struct domain_source *domains;  /* domains_from (always there; idle without it) */
    struct policy *policy;
    struct listener *lst;
    struct spool *spool;
    struct smtpd *smtpd;
    struct dns *dns;
    struct spf_pool *spf;
    struct dkim_pool *dkim;
    struct delivery *delivery;
    struct control *control;
    struct metrics *metrics;
    struct cluster *cluster;
    struct odmr *odmr;              /* ODMR listener (RFC 2645), or NULL */
    SSL_CTX *tls;
    struct event *ev_term, *ev_int, *ev_hup, *ev_drain;
    int stopping;
    time_t stop_deadline;
};

static void usage(void)
{
    fprintf(stderr, "usage: mxkeepd [-f] [-t] [-d] [-V] [-c config]\n"
                    "  -c FILE  configuration (default %s/mxkeep.conf)\n"
                    "  -f       stay in the foreground, log to stderr\n"
                    "  -t       check the configuration and exit (0 good, 78 bad)\n"
                    "  -d       log session state transitions\n"
                    "  -V       print the version\n",
            SYSCONFDIR);
    exit(EX_USAGE_CODE);
}

/* Create the spool directory owned by the mail user, so that everything
 * below it is made after the privilege drop by that user. */
static void main_spool_dir(const struct conf *c, uid_t uid, gid_t gid)
{
    struct stat st;
    if (mkdir(c->spool, 0700) != 0 && errno != EEXIST)
        log_fatal(EX_OSERR_CODE, "cannot create spool %s: %s", c->spool, strerror(errno));
    if (stat(c->spool, &st) != 0 || !S_ISDIR(st.st_mode))
        log_fatal(EX_OSERR_CODE, "spool %s is not a directory", c->spool);
    if (geteuid() == 0 && (st.st_uid != uid || st.st_gid != gid)) {
        if (chown(c->spool, uid, gid) != 0)
            log_fatal(EX_OSERR_CODE, "chown %s: %s", c->spool, strerror(errno));
    }
}

static void main_drop_privileges(const struct conf *c, uid_t uid, gid_t gid)
{
    if (geteuid() != 0)
        return;
    if (setgroups(1, &gid) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
        log_fatal(EX_OSERR_CODE, "cannot drop privileges to %s: %s", c->user, strerror(errno));
    /* Verify: a drop that silently failed must not go unnoticed. */
    if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid ||
        setuid(0) == 0)
        log_fatal(EX_OSERR_CODE, "privilege drop to %s did not take", c->user);
    log_info("running as user %s (uid %ld, gid %ld)", c->user, (long)uid, (long)gid);
}

/* Say which served domains a new conf drops while mail still waits for
 * them: the mail stays in the spool and goes on to the domain's MX, as
 * for any destination we do not serve. */
static void main_report_removed(struct daemon *dm, const struct conf *nc)
{
    struct delivery_dest_info info;
    for (size_t i = 0; i < dm->conf->ndomains; i++) {
        const char *name = dm->conf->domains[i].name;
        if (conf_domain_find(nc, name) == NULL && dm->delivery &&
            delivery_dest_info(dm->delivery, name, &info) == 0 && info.nmsg > 0)
            log_info("domain %s is no longer served; its %llu queued messages stay in the "
                     "spool and are delivered to its MX", name, (unsigned long long)info.nmsg);
    }
}

/* Swap in a new conf and its policy (both references become ours): the
 * one path for SIGHUP, mxkeepctl reload and domains_from changes. */
static void main_apply(struct daemon *dm, struct conf *nc, struct policy *np)
{
    char err[1024];

    main_report_removed(dm, nc);
    smtpd_configure(dm->smtpd, nc, np);
    if (delivery_configure(dm->delivery, nc, err, sizeof err) != 0)
        log_warn("reload: %s", err);
    maint_configure(nc);
    cluster_reload(dm->cluster, nc);
    listen_set_limits(dm->lst, nc->limits.connections, nc->limits.per_client);
    if (dm->control)
        control_set_conf(dm->control, nc);
    metrics_set_conf(dm->metrics, nc);
    odmr_set_conf(dm->odmr, nc);
    if (verify_reload(nc) != 0)
        log_warn("reload: verify: out of memory; callouts keep the previous settings");
    if (heartbeat_reload(nc) != 0)
        log_warn("reload: heartbeat: out of memory; gated primaries may be missing");
    replay_reload(nc);
    /* Drop our references only: whoever still holds the old policy or
     * conf (the scheduler, a policy, a connection's SSL_CTX) keeps it. */
    policy_free(dm->policy);
    conf_free(dm->conf);
    dm->conf = nc;
    dm->policy = np;
}

/* domains_from read a changed set of domains. */
static void main_on_domains(void *arg, struct conf *nc)
{
    struct daemon *dm = arg;
    char err[1024];
    struct policy *np = policy_new(nc, err, sizeof err);

    if (np == NULL) {
        log_warn("domains_from: %s; keeping the current domains", err);
        conf_free(nc);
        return;
    }
    main_apply(dm, nc, np);
}

/* Re-read config and lists (SIGHUP, mxkeepctl reload).  0 done, -1 kept
 * the old ones; msg gets a one-line account either way. */
/* The resolver the daemon started with (NULL: the system's): the DNS, SPF
 * and DKIM clients keep it until a restart. */
static char *main_resolver;
/* "certificate\nkey" the daemon started with ("" without TLS): read once,
 * as root, into the server SSL_CTX that serves until a restart. */
static char *main_tls_files;

static char *main_tls_files_of(const struct conf *c)
{
    char *s = NULL;
    if (asprintf(&s, "%s\n%s", c->tls_certificate ? c->tls_certificate : "",
                 c->tls_key ? c->tls_key : "") < 0)
        return NULL;
    return s;
}

static int main_reload(struct daemon *dm, char *msg, size_t len)
{
    char err[1024];
    struct conf *fc = conf_load(dm->conf->path, err, sizeof err), *nc;
    struct policy *np;

    if (fc == NULL) {
        log_warn("reload: %s; keeping the old configuration", err);
        snprintf(msg, len, "%s; keeping the old configuration", err);
        return -1;
    }
    /* The file alone first: a bad list keeps everything as it was. */
    np = policy_new(fc, err, sizeof err);
    if (np == NULL) {
        log_warn("reload: %s; keeping the old configuration", err);
        snprintf(msg, len, "%s; keeping the old configuration", err);
        conf_free(fc);
        return -1;
    }
    if (pg_configure(dm->base, fc, err, sizeof err) != 0)
        log_warn("reload: %s", err);
    nc = domain_source_configure(dm->domains, fc);
    if (nc != NULL && nc != fc) {
        /* The database's domains as last read, added to the new file's. */
        policy_free(np);
        np = policy_new(nc, err, sizeof err);
    }
    conf_free(fc);              /* nc (or the domain source) holds it now */
    if (nc == NULL || np == NULL) {
        log_warn("reload: %s; keeping the old configuration", nc ? err : "out of memory");
        snprintf(msg, len, "%s; keeping the old configuration", nc ? err : "out of memory");
        conf_free(nc);
        return -1;
    }
    /* The resolver is bound into the DNS, SPF and DKIM clients at start:
     * say so rather than seem to take a new one. */
    const char *or = main_resolver ? main_resolver : "";
    const char *nr = nc->resolver ? nc->resolver : "";
    int resolver_kept = strcmp(or, nr) != 0;
    if (resolver_kept)
        log_warn("reload: resolver changed to %s: it takes effect at the next restart; "
                 "still using %s", nr[0] ? nr : "the system resolver",
                 or[0] ? or : "the system resolver");
    /* So are the server certificate and key: read as root at start, and
     * unreadable for the daemon's user by design. */
    char *tf = main_tls_files_of(nc);
    int tls_kept = tf != NULL && main_tls_files != NULL && strcmp(tf, main_tls_files) != 0;
    free(tf);
    if (tls_kept)
        log_warn("reload: tls.certificate or tls.key changed: they are read at start, as root; "
                 "the new ones take effect at the next restart");
    main_apply(dm, nc, np);
    log_info("reloaded %s: %zu domains, %zu recipient entries", nc->path, nc->ndomains,
             policy_entry_count(np));
    snprintf(msg, len, "reloaded %s: %zu domains, %zu recipient entries%s%s", nc->path,
             nc->ndomains, policy_entry_count(np),
             resolver_kept ? " (the new resolver needs a restart)" : "",
             tls_kept ? " (the new TLS certificate or key needs a restart)" : "");
    return 0;
}

static void main_on_reload(evutil_socket_t sig, short what, void *arg)
{
    char msg[1024];

    main_reload(arg, msg, sizeof msg);
}

static int main_control_reload(void *arg, char *msg, size_t len)
{
    return main_reload(arg, msg, len);
}

static void main_control_gauges(void *arg, size_t *in_sessions, size_t *out_connections)
{
    struct daemon *dm = arg;

    *in_sessions = smtpd_session_count(dm->smtpd);
    *out_connections = delivery_active_connections(dm->delivery);
}

static void main_on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *dm = arg;
    /* Sessions finishing their transactions, and deliveries whose
     * outcomes are still being written, both end before we exit. */
    size_t n = smtpd_session_count(dm->smtpd) + delivery_active_connections(dm->delivery) +
               spool_outstanding(dm->spool);
    if (n == 0 || time(NULL) >= dm->stop_deadline) {
        if (n)
            log_warn("shutdown: %zu sessions still open after %d s; closing them", n,
                     SHUTDOWN_GRACE_SECONDS);
        event_base_loopexit(dm->base, NULL);
        return;
    }
    smtpd_drain(dm->smtpd);
}

static void main_on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *dm = arg;
    struct timeval tick = { 0, 100 * 1000 };
    if (dm->stopping) {
        log_info("second stop signal: exiting now");
        event_base_loopexit(dm->base, NULL);
        return;
    }
    dm->stopping = 1;
    dm->stop_deadline = time(NULL) + SHUTDOWN_GRACE_SECONDS;
    log_info("stopping: no new connections, finishing transactions");
    listen_stop(dm->lst);
    odmr_stop(dm->odmr);
    smtpd_drain(dm->smtpd);
    delivery_stop(dm->delivery);
    dm->ev_drain = event_new(dm->base, -1, EV_PERSIST, main_on_drain_tick, dm);
    event_add(dm->ev_drain, &tick);
}

static void main_daemonize(const struct conf *c)
{
    pid_t pid = fork();
    if (pid < 0)
        log_fatal(EX_OSERR_CODE, "fork: %s", strerror(errno));
    if (pid > 0)
        _exit(0);
    if (setsid() < 0)
        log_fatal(EX_OSERR_CODE, "setsid: %s", strerror(errno));
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
}

/* Written as root, before the drop: the directory (/run) may be root's.
 * Root writes into a directory that may be another user's: no symlink,
 * only a plain file. */
static void main_pid_file(const struct conf *c)
{
    char buf[32];
    struct stat st;
    if (c->pid_file == NULL)
        return;
    int fd = open(c->pid_file, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        log_warn("cannot write pid file %s: %s", c->pid_file,
                 fd < 0 ? strerror(errno) : "not a plain file");
        if (fd >= 0)
            close(fd);
        return;
    }
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || write(fd, buf, (size_t)n) != n)
        log_warn("cannot write pid file %s: %s", c->pid_file, strerror(errno));
    close(fd);
}

/* At exit, as the mail user: a pid file in a root-owned directory cannot
 * go, and need not (its pid is dead; the next start rewrites it). */
static void main_pid_file_remove(const struct conf *c)
{
    if (c->pid_file && unlink(c->pid_file) != 0 && errno != ENOENT && errno != EACCES &&
        errno != EPERM)
        log_warn("cannot remove pid file %s: %s", c->pid_file, strerror(errno));
}

/* The spool's index was reopened after a failure: the destinations whose
 * reads failed meanwhile start again (a down one keeps its probe timer). */
struct main_resume {
    char (*names)[SMTP_DOMAIN_MAX + 1];
    size_t n, cap;
};

static int main_resume_collect(void *arg, const struct delivery_dest_info *i)
{
    struct main_resume *r = arg;
    if (i->held || i->state == QDEST_DOWN)
        return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        void *p = realloc(r->names, cap * sizeof *r->names);
        if (p == NULL)
            return 1;
        r->names = p;
        r->cap = cap;
    }
    snprintf(r->names[r->n++], sizeof r->names[0], "%s", i->domain);
    return 0;
}

static void main_on_index_reopened(void *arg)
{
    struct daemon *dm = arg;
    struct main_resume r = { NULL, 0, 0 };
    delivery_dest_each(dm->delivery, main_resume_collect, &r);
    for (size_t i = 0; i < r.n; i++)
        delivery_flush(dm->delivery, r.names[i], NULL);
    free(r.names);
}

int main(int argc, char **argv)
{
    const char *path = SYSCONFDIR "/mxkeep.conf";
    int foreground = 0, check = 0, debug = 0, ch;
    char err[1024];
    struct daemon dm;
    uid_t uid = getuid();
    gid_t gid = getgid();

    memset(&dm, 0, sizeof dm);
    while ((ch = getopt(argc, argv, "c:ftdVh")) != -1) {
        switch (ch) {
        case 'c': path = optarg; break;
        case 'f': foreground = 1; break;
        case 't': check = 1; break;
        case 'd': debug++; break;
        case 'V': printf("mxkeepd %s\n", PACKAGE_VERSION); return 0;
        default: usage();
        }
    }
    if (optind != argc)
        usage();

    log_open("mxkeepd", 1);
    log_set_debug(debug);
    /* mxkeepd later works inside its spool: pin the config file and the
     * base of its relative paths to where it was started, for reloads. */
    char startdir[PATH_MAX], abspath[PATH_MAX];
    if (getcwd(startdir, sizeof startdir) != NULL)
        conf_set_basedir(startdir);
    if (path[0] != '/' && realpath(path, abspath) != NULL)
        path = abspath;
    dm.conf = conf_load(path, err, sizeof err);
    if (dm.conf == NULL) {
        fprintf(stderr, "%s\n", err);
        return EX_CONFIG_CODE;
    }
    dm.policy = policy_new(dm.conf, err, sizeof err);
    if (dm.policy == NULL) {
        fprintf(stderr, "%s\n", err);
        goto config_fail;
    }
    if (geteuid() == 0) {
        struct passwd *pw;
        if (dm.conf->user == NULL) {
            fprintf(stderr, "%s: refusing to run as root: set `user`\n", dm.conf->path);
            goto config_fail;
        }
        pw = getpwnam(dm.conf->user);
        if (pw == NULL) {
            fprintf(stderr, "%s: user %s does not exist\n", dm.conf->path, dm.conf->user);
            goto config_fail;
        }
        uid = pw->pw_uid;
        gid = pw->pw_gid;
        if (dm.conf->group) {
            struct group *gr = getgrnam(dm.conf->group);
            if (gr == NULL) {
                fprintf(stderr, "%s: group %s does not exist\n", dm.conf->path, dm.conf->group);
                goto config_fail;
            }
            gid = gr->gr_gid;
        }
        if (uid == 0) {
            fprintf(stderr, "%s: user %s is root: pick an unprivileged user\n", dm.conf->path,
                    dm.conf->user);
            goto config_fail;
        }
    }
    if (check) {
        printf("%s: configuration OK: %zu domains, %zu recipient entries\n", dm.conf->path,
               dm.conf->ndomains, policy_entry_count(dm.policy));
        policy_free(dm.policy);
        conf_free(dm.conf);
        return 0;
    }

    log_open("mxkeepd", foreground);
    signal(SIGPIPE, SIG_IGN);
    /* The spool's writer thread hands completions to the loop. */
    if (evthread_use_pthreads() != 0)
        log_fatal(EX_OSERR_CODE, "libevent has no thread support");
    dm.base = event_base_new();
    if (dm.base == NULL)
        log_fatal(EX_OSERR_CODE, "cannot create event base");
    if (foreground) {
        /* One write(2) of log lines per loop pass (log.h). */
        main_log_ev = event_new(dm.base, -1, 0, main_log_flush, NULL);
        if (main_log_ev != NULL)
            log_batch_start(main_log_arm);
    }

    main_spool_dir(dm.conf, uid, gid);
    /* Enter the spool while root: after the drop the mail user reaches it
     * through the working directory, even below a 0700 /root. */
    if (chdir(dm.conf->spool) != 0)
        log_fatal(EX_OSERR_CODE, "cannot enter spool %s: %s", dm.conf->spool, strerror(errno));
    spool_open_from_cwd();
    /* Before anything is bound or a control socket replaced: a second
     * daemon on this spool must leave the first one's alone. */
    switch (spool_lock(dm.conf->spool, uid, gid, err, sizeof err)) {
    case 0:
        break;
    case SPOOL_LOCK_BUSY:
        if (!foreground)
            fprintf(stderr, "mxkeepd: %s\n", err);
        log_fatal(EX_TEMPFAIL_CODE, "%s", err);
    default:
        log_fatal(EX_OSERR_CODE, "%s", err);
    }
    dm.lst = listen_new(dm.base, dm.conf, err, sizeof err);
    if (dm.lst == NULL)
        log_fatal(EX_OSERR_CODE, "%s", err);
    /* NULL with no reason: no metrics listener configured. */
    dm.metrics = metrics_new(dm.base, dm.conf, err, sizeof err);
    if (dm.metrics == NULL && err[0] != '\0')
        log_fatal(EX_OSERR_CODE, "%s", err);
    /* ODMR's listeners too, as root (port 366 is privileged). */
    dm.odmr = odmr_new(dm.base, dm.conf, err, sizeof err);
    if (dm.odmr == NULL && err[0] != '\0')
        log_fatal(EX_OSERR_CODE, "%s", err);
    if (dm.conf->control_socket) {
        dm.control = control_new(dm.base, dm.conf, uid, gid, err, sizeof err);
        if (dm.control == NULL)
            log_fatal(EX_OSERR_CODE, "%s", err);
    }
    if (dm.conf->tls_certificate) {
        dm.tls = tls_server_ctx_new(dm.conf->tls_certificate, dm.conf->tls_key, err, sizeof err);
        if (dm.tls == NULL)
            log_fatal(EX_CONFIG_CODE, "%s", err);
    }
    /* Fork as root, so the pid file written next holds the pid that
     * stays; the spool lock is a flock and passes to the child. */
    if (!foreground) {
        main_daemonize(dm.conf);
        spool_lock_update_pid();
    }
    main_pid_file(dm.conf);
    main_drop_privileges(dm.conf, uid, gid);

    /* After the drop: the database sees the mail user's connections, and
     * nothing here waits for it (domains_from starts with the file's
     * domains and adds the database's when it answers). */
    if (pg_configure(dm.base, dm.conf, err, sizeof err) != 0)
        log_fatal(EX_OSERR_CODE, "%s", err);
    dm.domains = domain_source_new(dm.base, main_on_domains, &dm);
    if (dm.domains == NULL)
        log_fatal(EX_OSERR_CODE, "out of memory");
    {
        struct conf *nc = domain_source_configure(dm.domains, dm.conf);
        if (nc == NULL)
            log_fatal(EX_OSERR_CODE, "out of memory");
        conf_free(dm.conf);
        dm.conf = nc;
        if (nc->parent != NULL) {
            /* One conf for everyone: the policy follows the composed one. */
            policy_free(dm.policy);
            dm.policy = policy_new(nc, err, sizeof err);
            if (dm.policy == NULL)
                log_fatal(EX_CONFIG_CODE, "%s", err);
        }
    }

    dm.spool = spool_open(dm.conf, dm.base, err, sizeof err);
    if (dm.spool == NULL)
        log_fatal(EX_OSERR_CODE, "%s", err);
    dm.smtpd = smtpd_new(dm.base, dm.lst, dm.spool, dm.tls);
    if (dm.smtpd == NULL)
        log_fatal(EX_OSERR_CODE, "out of memory");
    smtpd_configure(dm.smtpd, dm.conf, dm.policy);
    main_tls_files = main_tls_files_of(dm.conf);
    if (dm.conf->resolver && !(main_resolver = strdup(dm.conf->resolver)))
        log_fatal(EX_OSERR_CODE, "out of memory");
    dm.dns = dns_new(dm.base, dm.conf->resolver, err, sizeof err);
    if (dm.dns == NULL)
        log_fatal(EX_CONFIG_CODE, "%s: resolver: %s", dm.conf->path, err);
    smtpd_set_dns(dm.smtpd, dm.dns);
    /* Worker threads: after daemonize's fork, like the spool's writer. */
    dm.spf = spf_pool_new(dm.base, dm.conf, err, sizeof err);
    if (dm.spf == NULL)
        log_fatal(EX_OSERR_CODE, "%s", err);
    smtpd_set_spf(dm.smtpd, dm.spf);
    dm.dkim = dkim_pool_new(dm.base, dm.spool, dm.conf, err, sizeof err);
    if (dm.dkim == NULL)
        log_fatal(EX_OSERR_CODE, "%s", err);
    smtpd_set_dkim(dm.smtpd, dm.dkim);
    /* The callout cache lives beside the spool index, in its own
     * environment; probes resolve primaries through the same dns. */
    if (verify_init(dm.base, dm.dns, dm.conf, err, sizeof err) != 0)
        log_fatal(EX_OSERR_CODE, "verify: %s", err);
    /* Gated domains (accept = "when-primary-down"): their primaries'
     * heartbeat, through the same dns. */
    if (heartbeat_init(dm.base, dm.dns, dm.conf, err, sizeof err) != 0)
        log_fatal(EX_OSERR_CODE, "heartbeat: %s", err);
    /* Holds and windows kept in the spool: read before the scheduler's
     * configure asks which domains they hold. */
    if (maint_init(dm.base, dm.spool, dm.conf, err, sizeof err) != 0)
        log_fatal(EX_OSERR_CODE, "%s", err);
    dm.delivery = delivery_new(dm.base, dm.spool, dm.dns, err, sizeof err);
    if (dm.delivery == NULL || delivery_configure(dm.delivery, dm.conf, err, sizeof err) != 0)
        log_fatal(EX_OSERR_CODE, "delivery: %s", err);
    smtpd_set_hooks(dm.smtpd, delivery_etrn, delivery_queued, dm.delivery);
    delivery_set_busy(dm.delivery, dkim_busy, dm.dkim);
    /* Before delivery_start: the fleet's holds are read first. */
    dm.cluster = cluster_new(dm.base, dm.conf, dm.delivery, dm.spool, err, sizeof err);
    if (dm.cluster == NULL && err[0] != '\0')
        log_fatal(EX_CONFIG_CODE, "%s", err);
    if (dm.cluster != NULL) {
        delivery_set_fleet(dm.delivery, cluster_etrn_count, dm.cluster);
        /* A probe on one node answers for the fleet. */
        verify_set_shared(cluster_verify_ops(), dm.cluster);
    }
    spool_set_reopen_hook(dm.spool, main_on_index_reopened, &dm);
    delivery_start(dm.delivery);
    /* Kept copies: replay, and dropped first when the disk runs short. */
    if (replay_init(dm.base, dm.spool, dm.delivery, dm.conf, err, sizeof err) != 0)
        log_fatal(EX_OSERR_CODE, "replay: %s", err);
    maint_start(dm.delivery);
    metrics_start(dm.metrics, dm.spool, dm.delivery, main_control_gauges, &dm);
    if (dm.control) {
        control_start(dm.control, dm.spool, dm.delivery, main_control_reload,
                      main_control_gauges, &dm);
        control_set_cluster(dm.control, dm.cluster);
    }

    dm.ev_term = evsignal_new(dm.base, SIGTERM, main_on_stop, &dm);
    dm.ev_int = evsignal_new(dm.base, SIGINT, main_on_stop, &dm);
    dm.ev_hup = evsignal_new(dm.base, SIGHUP, main_on_reload, &dm);
    event_add(dm.ev_term, NULL);
    event_add(dm.ev_int, NULL);
    event_add(dm.ev_hup, NULL);

    listen_start(dm.lst, smtpd_accept, dm.smtpd);
    odmr_start(dm.odmr, dm.tls, dm.delivery);
    log_info("mxkeepd %s ready: %s, %zu domains, %zu recipient entries", PACKAGE_VERSION,
             dm.conf->hostname, dm.conf->ndomains, policy_entry_count(dm.policy));

    event_base_dispatch(dm.base);
    log_batch_stop();                   /* no loop passes any more */

    domain_source_free(dm.domains);
    odmr_free(dm.odmr);
    metrics_free(dm.metrics);
    smtpd_free(dm.smtpd);
    delivery_set_busy(dm.delivery, NULL, NULL);     /* the pool it asks goes now */
    dkim_pool_free(dm.dkim);            /* before the spool it reads, and before
                                           the SPF checks its jobs took over */
    spf_pool_free(dm.spf);              /* after the sessions that used it */
    control_set_cluster(dm.control, NULL);
    delivery_set_fleet(dm.delivery, NULL, NULL);
    replay_shutdown();
    maint_shutdown();                   /* before the scheduler it holds through */
    delivery_free(dm.delivery);
    /* verify first: it cancels its shared lookups through the cluster. */
    verify_shutdown();
    heartbeat_shutdown();
    cluster_free(dm.cluster);
    dns_free(dm.dns);
    listen_free(dm.lst);
    spool_close(dm.spool);
    /* After the spool: its last completions may still answer a client. */
    control_free(dm.control);
    if (dm.ev_drain)
        event_free(dm.ev_drain);
    event_free(dm.ev_term);
    event_free(dm.ev_int);
    event_free(dm.ev_hup);
    SSL_CTX_free(dm.tls);
    policy_free(dm.policy);
    main_pid_file_remove(dm.conf);
    conf_free(dm.conf);
    free(main_resolver);
    free(main_tls_files);
    /* Last: the tables (closed with the policy) cancel their queries. */
    pg_shutdown();
    if (main_log_ev)
        event_free(main_log_ev);
    event_base_free(dm.base);
    log_info("mxkeepd stopped");
    return 0;

config_fail:
    /* Bad configuration: one line went to stderr; leave nothing behind. */
    policy_free(dm.policy);
    conf_free(dm.conf);
    return EX_CONFIG_CODE;
}

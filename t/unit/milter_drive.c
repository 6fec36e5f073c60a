/*
 * milter_drive.c - a test driver for src/milter.c: one transaction against
 * one milter, every step, as smtpd will run it; prints one line per step
 * answer and one per modification, for t/integration/145-milter-client.t.
 * Usage: milter_drive SOCKET tempfail|accept TIMEOUT_MS SENDER RCPT MSGFILE
 * The message file is header lines, an empty line, then the body.
 */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "milter.h"

#define DRIVE_CHUNK 65535

static struct event_base *base;
static struct milter *mlt;
static char *msg;
static size_t msg_len, body_off;
static const char *sender, *rcpt;
static int stepno;
static int stop_after;          /* stepno at which an answer other than continue ends it */

static void next(void);

static void on_done(void *arg, const struct milter_result *r)
{
    static const char *const vname[] = { "continue", "accept", "reject", "tempfail",
                                         "discard", "skip" };
    printf("%s %s%s%s%s\n", (const char *)arg, vname[r->verdict], r->failed ? " failed" : "",
           r->text ? " " : "", r->text ? r->text : "");
    if (r->quarantine)
        printf("quarantine %s\n", r->quarantine);
    for (size_t i = 0; i < r->nmods; i++) {
        const struct milter_mod *d = &r->mods[i];
        printf("mod %c %u [%s] [%s] [%s] [%s] [%.*s]\n", d->cmd, d->index, d->name, d->value,
               d->addr, d->args, (int)d->body_len, d->body ? (const char *)d->body : "");
    }
    fflush(stdout);
    if (r->verdict == MILTER_SKIP)
        body_off = msg_len;
    else if (r->verdict != MILTER_CONTINUE)
        stop_after = 1;
    next();
}

static void send_step(enum milter_step st, struct milter_buf *b, const char *name)
{
    milter_step(mlt, st, b, on_done, (void *)name);
    milter_buf_free(b);
}

static void next(void)
{
    struct milter_buf b = { 0 };
    if (stop_after && stepno < 100) {
        stepno = 100;           /* abort then quit */
        milter_proto_simple(&b, SMFIC_ABORT);
        send_step(MILTER_STEP_ABORT, &b, "abort");
        return;
    }
    switch (stepno++) {
    case 0: {
        const char *n[] = { "j", "{daemon_name}", "{client_addr}", "{client_name}" };
        const char *v[] = { "mx.test", "mxkeepd", "127.0.0.1", "localhost" };
        milter_proto_macro(&b, SMFIC_CONNECT, n, v, 4);
        milter_proto_connect(&b, "localhost", '4', 40000, "127.0.0.1");
        send_step(MILTER_STEP_CONNECT, &b, "connect");
        return;
    }
    case 1:
        milter_proto_helo(&b, "client.test");
        send_step(MILTER_STEP_HELO, &b, "helo");
        return;
    case 2: {
        const char *n[] = { "i", "{mail_addr}", "{auth_authen}" };
        const char *v[] = { "QID0001", sender, "" };
        milter_proto_macro(&b, SMFIC_MAIL, n, v, 3);
        char a[512];
        snprintf(a, sizeof a, "<%s>", sender);
        const char *argv[] = { a };
        milter_proto_args(&b, SMFIC_MAIL, argv, 1);
        send_step(MILTER_STEP_MAIL, &b, "mail");
        return;
    }
    case 3: {
        const char *n[] = { "{rcpt_addr}" };
        const char *v[] = { rcpt };
        milter_proto_macro(&b, SMFIC_RCPT, n, v, 1);
        char a[512];
        snprintf(a, sizeof a, "<%s>", rcpt);
        const char *argv[] = { a };
        milter_proto_args(&b, SMFIC_RCPT, argv, 1);
        send_step(MILTER_STEP_RCPT, &b, "rcpt");
        return;
    }
    case 4:
        milter_proto_simple(&b, SMFIC_DATA);
        send_step(MILTER_STEP_DATA, &b, "data");
        return;
    default:
        break;
    }
    if (stepno == 6) {
        /* all headers as one step each, then eoh */
        static size_t off;
        for (;;) {
            char *eol = strstr(msg + off, "\n");
            if (!eol || eol == msg + off) {
                body_off = eol ? (size_t)(eol - msg) + 1 : msg_len;
                break;
            }
            *eol = '\0';
            char *line = msg + off;
            off = (size_t)(eol - msg) + 1;
            char *colon = strchr(line, ':');
            if (!colon)
                continue;
            *colon = '\0';
            char *val = colon + 1;
            if (*val == ' ')
                val++;
            milter_proto_header(&b, line, val);
            stepno = 5;         /* the switch above brings it back to 6 */
            send_step(MILTER_STEP_HEADER, &b, "header");
            return;
        }
        stepno = 7;
        milter_proto_simple(&b, SMFIC_EOH);
        send_step(MILTER_STEP_EOH, &b, "eoh");
        return;
    }
    if (stepno == 8) {
        if (body_off < msg_len) {
            size_t n = msg_len - body_off < DRIVE_CHUNK ? msg_len - body_off : DRIVE_CHUNK;
            milter_proto_body(&b, msg + body_off, n);
            body_off += n;
            stepno = 7;
            send_step(MILTER_STEP_BODY, &b, "body");
            return;
        }
        stepno = 10;
        milter_proto_simple(&b, SMFIC_BODYEOB);
        send_step(MILTER_STEP_EOM, &b, "eom");
        return;
    }
    if (stepno == 11 || stepno == 101) {
        milter_proto_simple(&b, SMFIC_QUIT);
        stepno = 200;
        send_step(MILTER_STEP_QUIT, &b, "quit");
        return;
    }
    /* freed from inside its own callback, as a session that ends does */
    milter_free(mlt);
    mlt = NULL;
    event_base_loopexit(base, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: milter_drive SOCKET tempfail|accept TIMEOUT_MS SENDER RCPT MSGFILE\n");
        return 2;
    }
    struct milter_spec spec = { .fail_accept = !strcmp(argv[2], "accept") };
    snprintf(spec.socket, sizeof spec.socket, "%s", argv[1]);
    spec.connect_ms = spec.command_ms = spec.content_ms = atol(argv[3]);
    sender = argv[4];
    rcpt = argv[5];
    FILE *f = fopen(argv[6], "rb");
    if (!f)
        return 2;
    msg = calloc(1, 1 << 22);
    msg_len = fread(msg, 1, (1 << 22) - 1, f);
    fclose(f);
    base = event_base_new();
    mlt = milter_new(base, &spec, "drive");
    stepno = 0;
    next();
    event_base_dispatch(base);
    milter_free(mlt);
    event_base_free(base);
    free(msg);
    return 0;
}

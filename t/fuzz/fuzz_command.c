// fuzz-sources: src/smtp_parse.c src/utf8.c
/*
 * fuzz_command.c - libFuzzer target for the SMTP command layer: the line
 * splitter, then whatever the verb leads to (path + MAIL/RCPT parameters,
 * ETRN, HELO, BDAT), plus every argument parser on the raw input.
 * Build: clang -g -fsanitize=fuzzer,address,undefined -Isrc \
 *            t/fuzz/fuzz_command.c src/smtp_parse.c -o /tmp/fz
 * Invariants checked (abort() on violation so libFuzzer reports it): every
 * reply is "ddd d.d.d text" with no CR/LF; outputs are NUL-terminated
 * inside their buffers; accepted sizes respect the limit.
 */
#include "config.h"
#include "smtp_parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_BDAT_MAX   1000000L
#define FUZZ_SMALL_BUF  8

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_reply(const char *r)
{
    if (r == NULL)
        return;
    if (strlen(r) < 10 || r[0] < '2' || r[0] > '5' || r[3] != ' ' || r[5] != '.' ||
        strpbrk(r, "\r\n") != NULL)
        abort();
}

static void check_in(const char *p, const char *buf, size_t size)
{
    if (p < buf || p > buf + size)
        abort();
}

static void check_string(const char *s, size_t cap)
{
    if (memchr(s, '\0', cap) == NULL)
        abort();
}

static void args(const char *arg, const char *buf, size_t size)
{
    struct smtp_mail_params mp;
    struct smtp_rcpt_params rp;
    char out[SMTP_DOMAIN_MAX + 1], small[FUZZ_SMALL_BUF];
    long bsize;
    int kind, last;
    const char *r;

    check_reply(smtp_parse_mail_params(arg, &mp));
    check_string(mp.envid, sizeof mp.envid);
    check_reply(smtp_parse_rcpt_params(arg, &rp));
    check_string(rp.orcpt, sizeof rp.orcpt);
    check_string(rp.orcpt_type, sizeof rp.orcpt_type);

    r = smtp_parse_etrn(arg, &kind, out, sizeof out);
    check_reply(r);
    if (r == NULL && (kind != 0 && kind != '@' && kind != '#'))
        abort();
    check_string(out, sizeof out);
    check_reply(smtp_parse_etrn(arg, &kind, small, sizeof small));

    check_reply(smtp_parse_helo(arg, out, sizeof out));
    check_string(out, sizeof out);
    check_reply(smtp_parse_helo(arg, small, sizeof small));
    check_string(small, sizeof small);

    r = smtp_parse_bdat(arg, FUZZ_BDAT_MAX, &bsize, &last);
    check_reply(r);
    if (r == NULL && (bsize < 0 || bsize > FUZZ_BDAT_MAX))
        abort();
    (void)buf;
    (void)size;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    struct smtp_command c;
    struct smtp_addr a;
    struct smtp_mail_params mp;
    struct smtp_rcpt_params rp;
    const char *r, *rest;

    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';

    r = smtp_parse_command(buf, size, &c);
    check_reply(r);
    if (c.arg == NULL || (unsigned)c.cmd >= SMTP_CMD_COUNT_ || smtp_cmd_name(c.cmd) == NULL)
        abort();
    if (*c.arg)                         /* "" may be a static empty string */
        check_in(c.arg, buf, size);
    if (r == NULL) {
        for (int utf8 = 0; utf8 < 2; utf8++) {
            if (c.cmd == SMTP_CMD_MAIL || c.cmd == SMTP_CMD_RCPT) {
                int rcpt = c.cmd == SMTP_CMD_RCPT;
                r = smtp_parse_path(c.arg, &rest, &a, !rcpt, utf8, rcpt);
                check_reply(r);
                check_in(rest, buf, size);
                if (r == NULL) {
                    if (rcpt)
                        check_reply(smtp_parse_rcpt_params(rest, &rp));
                    else
                        check_reply(smtp_parse_mail_params(rest, &mp));
                }
            }
        }
        args(c.arg, buf, size);
    }
    /* Every parser on the raw input too, so none depends on the splitter. */
    if (memchr(data, '\0', size) == NULL)
        args(buf, buf, size);
    free(buf);
    return 0;
}

/*
 * t_milter_proto.c - the milter packet codec: encoders give the exact wire
 * octets libmilter expects, every reply kind decodes, partial input asks
 * for more at every split point, and bad packets (too long, empty,
 * unterminated strings, unknown replies) are protocol errors.  Reply-code
 * validation and the OPTNEG check as Postfix does them.
 */
#include "config.h"
#include <stdlib.h>
#include <string.h>

#include "milter_proto.h"
#include "tap.h"

#define MAXLEN 65536

static int bytes_eq(const struct milter_buf *b, const void *want, size_t n)
{
    return b->len == n && memcmp(b->data, want, n) == 0;
}

/* Frame a reply: length word + cmd + data. */
static size_t frame(unsigned char *out, char cmd, const void *data, size_t n)
{
    uint32_t l = (uint32_t)n + 1;
    out[0] = (unsigned char)(l >> 24);
    out[1] = (unsigned char)(l >> 16);
    out[2] = (unsigned char)(l >> 8);
    out[3] = (unsigned char)l;
    out[4] = (unsigned char)cmd;
    memcpy(out + 5, data, n);
    return n + 5;
}

static enum milter_parse parse(const unsigned char *in, size_t len, struct milter_reply *r,
                               size_t *used, const char **why)
{
    return milter_proto_parse(in, len, MAXLEN, r, used, why);
}

int main(void)
{
    struct milter_buf b = { 0 };
    struct milter_reply r;
    size_t used;
    const char *why;
    unsigned char in[512];
    size_t n;

    /* --- encoders --- */
    ok(milter_proto_optneg(&b, 6, SMFIF_ALL, SMFIP_CLIENT_ALL) == 0, "optneg encodes");
    {
        static const unsigned char want[] = { 0, 0, 0, 13, 'O', 0, 0, 0, 6, 0, 0, 1, 0xff,
                                              0, 0x0f, 0xff, 0xff };
        ok(bytes_eq(&b, want, sizeof want), "optneg octets: len 13, version, actions, protocol");
    }
    b.len = 0;
    milter_proto_connect(&b, "mail.example", '4', 2525, "192.0.2.1");
    {
        static const char want[] = "\0\0\0\x1b" "Cmail.example\0" "4\x09\xdd" "192.0.2.1";
        ok(bytes_eq(&b, want, sizeof want), "connect octets: host, family, port, address");
    }
    b.len = 0;
    milter_proto_connect(&b, "localhost", 'U', 0, NULL);
    ok(bytes_eq(&b, "\0\0\0\x0c" "Clocalhost\0U", 16), "connect with unknown family has no port");
    b.len = 0;
    {
        const char *names[] = { "j", "i", "{client_addr}", "auth_authen" };
        const char *vals[] = { "mx.example", "QID1", "192.0.2.1", "" };
        milter_proto_macro(&b, SMFIC_MAIL, names, vals, 4);
        static const char want[] = "\0\0\0\x3d" "DM" "j\0mx.example\0" "i\0QID1\0"
                                   "{client_addr}\0" "192.0.2.1\0" "{auth_authen}\0";
        ok(bytes_eq(&b, want, sizeof want), "macro octets: stage, braced long names, empty value");
    }
    b.len = 0;
    {
        const char *argv[] = { "<a@b.example>", "SIZE=100" };
        milter_proto_args(&b, SMFIC_MAIL, argv, 2);
        static const char want[] = "\0\0\0\x18" "M<a@b.example>\0SIZE=100";
        ok(bytes_eq(&b, want, sizeof want), "mail octets: address then parameters");
    }
    b.len = 0;
    milter_proto_header(&b, "Subject", " hi");
    ok(bytes_eq(&b, "\0\0\0\x0d" "LSubject\0 hi", 17), "header octets: name NUL value NUL");
    b.len = 0;
    milter_proto_body(&b, "a\0b", 3);
    ok(bytes_eq(&b, "\0\0\0\x04" "Ba\0b", 8), "body is raw octets, NUL included");
    b.len = 0;
    milter_proto_simple(&b, SMFIC_BODYEOB);
    milter_proto_simple(&b, SMFIC_QUIT);
    ok(bytes_eq(&b, "\0\0\0\x01" "E" "\0\0\0\x01" "Q", 10), "simple commands append");
    milter_buf_free(&b);
    milter_buf_free(&b);
    milter_buf_free(NULL);
    ok(b.data == NULL && b.len == 0, "buf_free resets and is idempotent");

    /* --- decoding: each reply kind --- */
    static const char simple[] = "acdrtps4f";
    for (const char *c = simple; *c; c++) {
        n = frame(in, *c, "", 0);
        is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_OK, "reply '%c' decodes", *c);
        ok(r.cmd == *c && used == n, "reply '%c' kind and length", *c);
    }
    {
        unsigned char d[12] = { 0, 0, 0, 6, 0, 0, 0, 0x3f, 0, 0, 0x10, 0x01 };
        n = frame(in, 'O', d, sizeof d);
        is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_OK, "OPTNEG reply decodes");
        ok(r.version == 6 && r.actions == 0x3f && r.protocol == 0x1001, "OPTNEG words");
        ok(milter_proto_optneg_ok(&r, SMFIF_ALL, SMFIP_CLIENT_ALL), "OPTNEG within offer is ok");
        ok(!milter_proto_optneg_ok(&r, SMFIF_ADDHDRS, SMFIP_CLIENT_ALL), "OPTNEG asking more actions than offered refused");
        r.version = 7;
        ok(!milter_proto_optneg_ok(&r, SMFIF_ALL, SMFIP_CLIENT_ALL), "OPTNEG version 7 refused");
        r.version = 1;
        ok(!milter_proto_optneg_ok(&r, SMFIF_ALL, SMFIP_CLIENT_ALL), "OPTNEG version 1 refused");
        n = frame(in, 'O', d, 8);
        is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "short OPTNEG is an error");
    }
    n = frame(in, 'y', "554 5.7.1 Gtube pattern", 24);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_OK, "replycode decodes");
    is_str(r.text, "554 5.7.1 Gtube pattern", "replycode text");
    n = frame(in, 'y', "554 5.7.1 no NUL", 16);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "unterminated replycode is an error");
    n = frame(in, 'q', "spam\0", 5);
    parse(in, n, &r, &used, &why);
    is_str(r.text, "spam", "quarantine reason");
    n = frame(in, 'h', "X-Spam\0yes\0", 11);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_OK, "addheader decodes");
    ok(!strcmp(r.name, "X-Spam") && !strcmp(r.value, "yes"), "addheader name and value");
    n = frame(in, 'h', "\0yes\0", 5);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "empty header name is an error");
    n = frame(in, 'h', "X-Spam\0yes", 10);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "unterminated header value is an error");
    n = frame(in, 'i', "\0\0\0\x02X-A\0v\0", 10);
    parse(in, n, &r, &used, &why);
    ok(r.cmd == 'i' && r.index == 2 && !strcmp(r.name, "X-A") && !strcmp(r.value, "v"), "insheader index, name, value");
    n = frame(in, 'm', "\0\0\0\x01Subject\0\0", 13);
    parse(in, n, &r, &used, &why);
    ok(r.cmd == 'm' && r.index == 1 && !strcmp(r.name, "Subject") && r.value[0] == '\0',
       "chgheader with empty value (= delete)");
    n = frame(in, 'm', "\0\0\0", 3);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "chgheader without full index is an error");
    n = frame(in, 'e', "<new@a.example>\0SIZE=5\0", 23);
    parse(in, n, &r, &used, &why);
    ok(!strcmp(r.addr, "<new@a.example>") && !strcmp(r.args, "SIZE=5"), "chgfrom address and args");
    n = frame(in, 'e', "<new@a.example>\0", 16);
    parse(in, n, &r, &used, &why);
    ok(!strcmp(r.args, ""), "chgfrom without args");
    n = frame(in, '+', "<x@b.example>\0", 14);
    parse(in, n, &r, &used, &why);
    ok(r.cmd == '+' && !strcmp(r.addr, "<x@b.example>"), "addrcpt");
    n = frame(in, '2', "<x@b.example>\0NOTIFY=NEVER\0", 27);
    parse(in, n, &r, &used, &why);
    ok(r.cmd == '2' && !strcmp(r.args, "NOTIFY=NEVER"), "addrcpt_par with args");
    n = frame(in, '-', "<x@b.example>\0", 14);
    parse(in, n, &r, &used, &why);
    ok(r.cmd == '-' && !strcmp(r.addr, "<x@b.example>"), "delrcpt");
    n = frame(in, '-', "", 0);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "delrcpt without address is an error");
    n = frame(in, 'b', "new\0body", 8);
    parse(in, n, &r, &used, &why);
    ok(r.body_len == 8 && !memcmp(r.body, "new\0body", 8), "replbody raw chunk");
    n = frame(in, 'Z', "", 0);
    is_int(parse(in, n, &r, &used, &why), MILTER_PARSE_ERROR, "unknown reply is an error");
    ok(why != NULL, "an error names its reason");

    /* --- framing --- */
    n = frame(in, 'h', "X-Spam\0yes\0", 11);
    int more_ok = 1;
    for (size_t i = 0; i < n; i++)
        if (parse(in, i, &r, &used, &why) != MILTER_PARSE_MORE || used != 0)
            more_ok = 0;
    ok(more_ok, "every proper prefix asks for more");
    {
        unsigned char two[64];
        size_t a = frame(two, 'c', "", 0);
        size_t c = frame(two + a, 'a', "", 0);
        parse(two, a + c, &r, &used, &why);
        ok(r.cmd == 'c' && used == a, "two packets: the first decodes and consumes only itself");
        parse(two + used, a + c - used, &r, &used, &why);
        ok(r.cmd == 'a', "then the second");
    }
    memcpy(in, "\0\0\0\0", 4);
    is_int(parse(in, 4, &r, &used, &why), MILTER_PARSE_ERROR, "zero-length packet is an error");
    memcpy(in, "\x7f\xff\xff\xff", 4);
    is_int(parse(in, 4, &r, &used, &why), MILTER_PARSE_ERROR, "length over the bound is an error at once");
    memcpy(in, "\0\x01\0\x01", 4);
    is_int(milter_proto_parse(in, 4, 65536, &r, &used, &why), MILTER_PARSE_ERROR, "65537 over a 65536 bound");
    is_int(milter_proto_parse(in, 4, 65537, &r, &used, &why), MILTER_PARSE_MORE, "65537 within a 65537 bound waits");

    /* --- reply text --- */
    ok(milter_proto_reply_valid("554 5.7.1 Gtube pattern"), "554 5.7.1 valid");
    ok(milter_proto_reply_valid("451 4.7.1 try later"), "451 4.7.1 valid");
    ok(milter_proto_reply_valid("550 no enhanced code"), "5xx without enhanced code valid");
    ok(milter_proto_reply_valid("550"), "bare code valid");
    ok(milter_proto_reply_valid("550-5.7.1 first\r\n550 5.7.1 last"), "multi-line valid");
    ok(!milter_proto_reply_valid("250 2.0.0 ok"), "2xx refused");
    ok(!milter_proto_reply_valid("354 go"), "3xx refused");
    ok(!milter_proto_reply_valid("554 4.7.1 mismatch"), "5xx with 4.x.x refused");
    ok(!milter_proto_reply_valid("451 5.7.1 mismatch"), "4xx with 5.x.x refused");
    ok(!milter_proto_reply_valid("55 short"), "two digits refused");
    ok(!milter_proto_reply_valid("550-5.7.1 first\r\n450 4.7.1 last"), "class change between lines refused");
    ok(!milter_proto_reply_valid("550-5.7.1 no last line"), "continuation without a last line refused");
    ok(!milter_proto_reply_valid("550 5.7.1 a\r\n550 5.7.1 b"), "line after the last refused");
    ok(!milter_proto_reply_valid("550 5.7.1 bare\nLF"), "bare LF refused");
    ok(!milter_proto_reply_valid(""), "empty refused");
    ok(!milter_proto_reply_valid(NULL), "NULL refused");

    return done_testing();
}

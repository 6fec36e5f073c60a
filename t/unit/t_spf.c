/*
 * t_spf.c - spf.c without a DNS server: result names, the resinfo it adds
 * to the record, identities that are never looked up (address-literal
 * HELO, null sender), and a resolver that does not answer (temperror,
 * within the timeout).  The record-level evaluation against served
 * records is t/integration/155-spf.t (dnsmasq).
 */
#include "config.h"
#include "spf.h"
#include "authres.h"
#include "tap.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    struct spf_answer a;
    char buf[AUTHRES_RESINFO_MAX];
    unsigned char lo[4] = { 127, 0, 0, 1 };

    is_str(spf_result_name(SPF_RES_PASS), "pass", "pass");
    is_str(spf_result_name(SPF_RES_SOFTFAIL), "softfail", "softfail");
    is_str(spf_result_name(SPF_RES_PERMERROR), "permerror", "permerror");
    is_str(spf_result_name((enum spf_result)99), "permerror", "out of range: permerror");

    a.mailfrom = SPF_RES_FAIL;
    a.helo = SPF_RES_NONE;
    buf[0] = '\0';
    is_int(spf_answer_resinfo(&a, "u@a.example", "mx.a.example", buf, sizeof buf), 0, "resinfo");
    is_str(buf, "spf=fail smtp.mailfrom=u@a.example; spf=none smtp.helo=mx.a.example",
           "both identities");
    buf[0] = '\0';
    spf_answer_resinfo(&a, "", "mx.a.example", buf, sizeof buf);
    is_str(buf, "spf=none smtp.helo=mx.a.example", "null sender: HELO only");

    /* A UDP port that is bound but never read: queries go unanswered. */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t sl = sizeof sin;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok(fd >= 0 && bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0 &&
       getsockname(fd, (struct sockaddr *)&sin, &sl) == 0, "a silent resolver port");
    char resolver[64];
    snprintf(resolver, sizeof resolver, "127.0.0.1:%d", ntohs(sin.sin_port));

    time_t t0 = time(NULL);
    spf_check_sync(resolver, 1, AF_INET, lo, "[127.0.0.1]", "u@a.example", &a);
    is_str(spf_result_name(a.helo), "none", "address-literal HELO: not looked up");
    is_str(spf_result_name(a.mailfrom), "temperror", "no DNS answer: temperror");
    ok(time(NULL) - t0 <= 6, "bounded by the timeout (%lds)", (long)(time(NULL) - t0));

    spf_check_sync(resolver, 1, AF_INET, lo, "mx.a.example", "", &a);
    is_str(spf_result_name(a.mailfrom), "none", "null sender: MAIL FROM not checked");
    is_str(spf_result_name(a.helo), "temperror", "HELO identity looked up");
    close(fd);
    return done_testing();
}

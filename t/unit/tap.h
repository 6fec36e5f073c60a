/*
 * tap.h - a minimal TAP (Test Anything Protocol) emitter for the C unit
 * tests.  Header-only: every test program includes it once.
 *   plan_no_plan(); ok(cond, "name %d", x); is_int(a, b, name); is_str(...);
 *   return done_testing();
 */
#ifndef MXKEEP_TAP_H
#define MXKEEP_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

static void __attribute__((format(printf, 2, 0))) tap_vresult(int pass, const char *fmt, va_list ap)
{
    tap_n++;
    if (!pass)
        tap_failed++;
    printf("%sok %d - ", pass ? "" : "not ", tap_n);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
}

static int __attribute__((format(printf, 2, 3), unused)) ok(int pass, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tap_vresult(pass, fmt, ap);
    va_end(ap);
    return pass;
}

static void __attribute__((unused, format(printf, 1, 2))) diag(const char *fmt, ...)
{
    va_list ap;
    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

#define is_int(got, want, ...)                                                  \
    do {                                                                        \
        long long tap_g_ = (long long)(got), tap_w_ = (long long)(want);        \
        if (!ok(tap_g_ == tap_w_, __VA_ARGS__))                                 \
            diag("  got %lld, want %lld", tap_g_, tap_w_);                      \
    } while (0)

#define is_str(got, want, ...)                                                  \
    do {                                                                        \
        const char *tap_g_ = (got), *tap_w_ = (want);                           \
        int tap_p_ = (tap_g_ == NULL && tap_w_ == NULL) ||                      \
                     (tap_g_ && tap_w_ && strcmp(tap_g_, tap_w_) == 0);         \
        if (!ok(tap_p_, __VA_ARGS__))                                           \
            diag("  got \"%s\", want \"%s\"", tap_g_ ? tap_g_ : "(null)",     \
                 tap_w_ ? tap_w_ : "(null)");                                   \
    } while (0)

static int __attribute__((unused)) done_testing(void)
{
    printf("1..%d\n", tap_n);
    return tap_failed ? 1 : 0;
}

#endif

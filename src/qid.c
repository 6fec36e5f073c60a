/*
 * qid.c - queue IDs (see qid.h).
 *
 * Owns: the last ID handed out, so that IDs never repeat or go backwards
 * within a process, even when the wall clock steps back.
 * Never: touches the disk or allocates.  Called on the loop thread only.
 * Security: qid_valid() is the guard for every path built from an ID (it
 * admits exactly QID_LEN characters of the base32 alphabet, so no '/', no
 * "..", no NUL tricks).
 */
#include "config.h"
#include "qid.h"

#include <string.h>
#include <sys/time.h>

#define QID_BITS_SEQ   6
#define QID_BITS_USEC  20
#define QID_BITS_SEC   34
#define QID_BITS_CHAR  5
#define QID_CHAR_MASK  0x1fu
#define QID_TOTAL_BITS (QID_BITS_SEC + QID_BITS_USEC + QID_BITS_SEQ)
#define QID_MAX_VALUE  ((UINT64_C(1) << QID_TOTAL_BITS) - 1)

static const char qid_alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUV";

static uint64_t qid_last;

static void qid_encode(uint64_t v, char out[QID_SIZE])
{
    for (int i = QID_LEN - 1; i >= 0; i--) {
        out[i] = qid_alphabet[v & QID_CHAR_MASK];
        v >>= QID_BITS_CHAR;
    }
    out[QID_LEN] = '\0';
}

static int qid_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'V')
        return c - 'A' + 10;
    return -1;
}

/* -1 when s is not a well-formed ID. */
static int qid_decode(const char *s, uint64_t *v)
{
    uint64_t acc = 0;
    for (int i = 0; i < QID_LEN; i++) {
        int d = qid_digit(s[i]);
        if (d < 0)
            return -1;
        acc = (acc << QID_BITS_CHAR) | (uint64_t)d;
    }
    if (s[QID_LEN] != '\0')
        return -1;
    *v = acc;
    return 0;
}

void qid_next(char out[QID_SIZE])
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t sec = (uint64_t)tv.tv_sec & ((UINT64_C(1) << QID_BITS_SEC) - 1);
    uint64_t v = (sec << (QID_BITS_USEC + QID_BITS_SEQ)) |
                 ((uint64_t)tv.tv_usec << QID_BITS_SEQ);
    /* Same microsecond, or the clock went back: keep counting from the last
     * ID, which borrows from the microsecond field when the sequence runs
     * out; the order stays strict either way. */
    if (v <= qid_last)
        v = qid_last + 1;
    v &= QID_MAX_VALUE;
    qid_last = v;
    qid_encode(v, out);
}

void qid_seed(const char *newest)
{
    uint64_t v;
    if (newest && qid_decode(newest, &v) == 0 && v > qid_last)
        qid_last = v;
}

int qid_valid(const char *s)
{
    uint64_t v;
    return s != NULL && qid_decode(s, &v) == 0;
}

time_t qid_time(const char *qid)
{
    uint64_t v;
    if (!qid || qid_decode(qid, &v) < 0)
        return 0;
    return (time_t)(v >> (QID_BITS_USEC + QID_BITS_SEQ));
}

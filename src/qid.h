/*
 * qid.h - queue IDs: short, unique within a spool, sortable by arrival.
 *
 * Form: 12 characters of base32 "0-9A-V" encoding 60 bits:
 * 34 bits of seconds since the epoch, 20 bits of microseconds and a 6-bit
 * sequence.  Byte-wise order is arrival order.  qid_next() never returns a
 * value <= the previous one (clock steps back: it keeps counting from the
 * last), and qid_seed() lets the spool seed it with the newest ID it holds
 * so a restart after a clock step back stays unique.
 */
#ifndef MXKEEP_QID_H
#define MXKEEP_QID_H

#include <stdint.h>
#include <time.h>

#define QID_LEN 12
#define QID_SIZE (QID_LEN + 1)

/* Write the next ID (NUL-terminated) into out.  Loop thread only. */
void qid_next(char out[QID_SIZE]);
/* Make every later ID greater than this one. */
void qid_seed(const char *newest);
/* Is s a well-formed ID?  (Guards paths built from IDs.) */
int qid_valid(const char *s);
/* Arrival time encoded in an ID, seconds. */
time_t qid_time(const char *qid);

#endif

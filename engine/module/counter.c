/* Additive counters (docs/multi-region.md, "Additive counters"): keys matching a `counters <glob>`
 * pattern (patterns.c) replicate INCR, DECR, INCRBY and DECRBY as increments, which every region
 * adds up, instead of as the value they left. The integer arithmetic lives here; stamps.c keeps the
 * increments. */
#include "engram.h"

/* A value is kept exactly below 10^38, which an __int128 holds with room for any int64 added. */
#define MAX_DIGITS 38

/* A value counts as an integer when it is written as INCR writes one: no sign on 0, no leading
 * zeros, at most MAX_DIGITS digits. Any other value ignores increments (lww.counter_value). */
int eg_counter_parse(const char *s, size_t len, __int128 *out) {
    size_t i = len && s[0] == '-' ? 1 : 0;
    if (i == len || len - i > MAX_DIGITS || (s[i] == '0' && len - i > 1) || (i && s[i] == '0')) return 0;
    __int128 v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = s[0] == '-' ? -v : v;
    return 1;
}

size_t eg_counter_format(__int128 v, char *buf, size_t cap) {
    char tmp[48];
    size_t n = 0;
    unsigned __int128 u = v < 0 ? (unsigned __int128)0 - (unsigned __int128)v : (unsigned __int128)v;
    do {
        tmp[n++] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u && n < sizeof tmp);
    if (v < 0 && n < sizeof tmp) tmp[n++] = '-';
    if (n >= cap) n = cap - 1;
    for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
    return n;
}

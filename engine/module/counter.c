/* Additive counters (docs/multi-region.md, "Additive counters"): keys matching a pattern given with
 * the module argument `counters <glob>` replicate INCR, DECR, INCRBY and DECRBY as increments, which
 * every region adds up, instead of as the value they left. The patterns and the integer arithmetic
 * live here; stamps.c keeps the increments. */
#include <string.h>

#include "engram.h"

#define MAX_PATTERNS 64
/* A value is kept exactly below 10^38, which an __int128 holds with room for any int64 added. */
#define MAX_DIGITS 38

static char *patterns[MAX_PATTERNS];
static size_t pattern_lens[MAX_PATTERNS];
static int n_patterns;

int eg_counters_add_pattern(const char *pattern, size_t len) {
    if (n_patterns == MAX_PATTERNS || len == 0) return VK_ERR;
    patterns[n_patterns] = Vk_Alloc(len);
    memcpy(patterns[n_patterns], pattern, len);
    pattern_lens[n_patterns++] = len;
    return VK_OK;
}

/* A [...] class at p (just after '['): whether c is in it; *end is set past the closing ']'. */
static int in_class(const char *p, const char *pend, char c, const char **end) {
    int negate = p < pend && (*p == '^' || *p == '!');
    if (negate) p++;
    int hit = 0;
    while (p < pend && *p != ']') {
        char lo = *p == '\\' && p + 1 < pend ? *++p : *p;
        p++;
        char hi = lo;
        if (p + 1 < pend && *p == '-' && p[1] != ']') {
            hi = p[1] == '\\' && p + 2 < pend ? p[2] : p[1];
            p += p[1] == '\\' ? 3 : 2;
        }
        if (lo > hi) {
            char t = lo;
            lo = hi;
            hi = t;
        }
        if (c >= lo && c <= hi) hit = 1;
    }
    *end = p < pend ? p + 1 : pend;
    return hit != negate;
}

/* Glob matching as KEYS reads patterns: * any run, ? one byte, [a-z] [^a] classes, \ escapes. */
static int glob(const char *p, const char *pend, const char *s, const char *send) {
    while (p < pend) {
        switch (*p) {
        case '*':
            while (p < pend && *p == '*') p++;
            if (p == pend) return 1;
            for (const char *t = s; t <= send; t++)
                if (glob(p, pend, t, send)) return 1;
            return 0;
        case '?':
            if (s == send) return 0;
            p++, s++;
            break;
        case '[': {
            const char *end;
            if (s == send || !in_class(p + 1, pend, *s, &end)) return 0;
            p = end, s++;
            break;
        }
        case '\\':
            if (p + 1 < pend) p++;
            /* fall through */
        default:
            if (s == send || *p != *s) return 0;
            p++, s++;
        }
    }
    return s == send;
}

int eg_counter_key(const char *key, size_t len) {
    for (int i = 0; i < n_patterns; i++)
        if (glob(patterns[i], patterns[i] + pattern_lens[i], key, key + len)) return 1;
    return 0;
}

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

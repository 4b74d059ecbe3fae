/* Key patterns of multi-region keys that replicate beyond last-writer-wins (docs/multi-region.md):
 * the module arguments `counters <glob>` (additive counters, counter.c) and `ttls <glob>` (TTLs that
 * converge, stamps.c). Globs are read as KEYS reads them. */
#include <string.h>

#include "engram.h"

#define MAX_PATTERNS 64

typedef struct PatternList {
    char *patterns[MAX_PATTERNS];
    size_t lens[MAX_PATTERNS];
    int n;
} PatternList;

static PatternList lists[EG_PATTERN_LISTS];

int eg_patterns_add(int list, const char *pattern, size_t len) {
    PatternList *l = &lists[list];
    if (l->n == MAX_PATTERNS || len == 0) return VK_ERR;
    l->patterns[l->n] = Vk_Alloc(len);
    memcpy(l->patterns[l->n], pattern, len);
    l->lens[l->n++] = len;
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

int eg_key_matches(int list, const char *key, size_t len) {
    PatternList *l = &lists[list];
    for (int i = 0; i < l->n; i++)
        if (glob(l->patterns[i], l->patterns[i] + l->lens[i], key, key + len)) return 1;
    return 0;
}

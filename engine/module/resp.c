/* Replies held as parsed RESP: CLUSTER replies the node renders and pushes once (ENGRAM.TOPOLOGY),
 * and replies the module builds itself.
 *
 * A reply is parsed once, when it arrives, and re-emitted with the ValkeyModule_ReplyWith* calls,
 * which write it in the protocol of the client that asked: a RESP3 map reaches a RESP2 client as
 * a flat array of keys and values, and a RESP3 null as RESP2's null bulk string. */
#include <stdlib.h>
#include <string.h>

#include "engram.h"

#define EG_RESP_MAX_DEPTH 32

typedef struct Cursor {
    const char *p, *end;
} Cursor;

/* One line after the type byte, without its CRLF; the cursor moves past it. */
static int take_line(Cursor *c, const char **line, size_t *len) {
    const char *start = c->p + 1;
    for (const char *q = start; q + 1 < c->end; q++) {
        if (q[0] == '\r' && q[1] == '\n') {
            *line = start;
            *len = (size_t)(q - start);
            c->p = q + 2;
            return 0;
        }
    }
    return -1;
}

static int parse_ll(const char *s, size_t len, long long *out) {
    size_t i = 0;
    int neg = 0;
    long long v = 0;
    if (len && s[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == len || len - i > 18) return -1; /* no overflow; no reply carries more digits */
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

static char *copy(const char *s, size_t len) {
    char *out = Vk_Alloc(len + 1);
    memcpy(out, s, len);
    out[len] = 0;
    return out;
}

static void free_node(EgResp *r) {
    Vk_Free(r->str);
    if (r->items) {
        long long n = r->type == '%' ? 2 * r->n : r->n;
        for (long long i = 0; i < n; i++) free_node(&r->items[i]);
        Vk_Free(r->items);
    }
}

static int parse_node(Cursor *c, EgResp *r, int depth) {
    const char *line;
    size_t len;
    if (depth > EG_RESP_MAX_DEPTH || c->p >= c->end || take_line(c, &line, &len) != 0) return -1;
    r->type = line[-1];
    switch (r->type) {
    case '+':
    case '-':
    case ',':
        /* One line each: a CR or LF inside would break the client's framing. */
        if (memchr(line, '\r', len) || memchr(line, '\n', len)) return -1;
        r->str = copy(line, len);
        r->n = (long long)len;
        return 0;
    case ':': return parse_ll(line, len, &r->n);
    case '#':
        if (len != 1 || (line[0] != 't' && line[0] != 'f')) return -1;
        r->n = line[0] == 't';
        return 0;
    case '_': return len == 0 ? 0 : -1;
    case '$':
        if (parse_ll(line, len, &r->n) != 0 || r->n < -1) return -1;
        if (r->n == -1) {
            r->type = '_'; /* RESP2's null bulk string: a null in either protocol */
            return 0;
        }
        if (r->n > c->end - c->p - 2 || c->p[r->n] != '\r' || c->p[r->n + 1] != '\n') return -1;
        r->str = copy(c->p, (size_t)r->n);
        c->p += r->n + 2;
        return 0;
    case '*':
    case '%':
    case '~': {
        if (parse_ll(line, len, &r->n) != 0 || r->n < -1 || (r->n == -1 && r->type != '*')) return -1;
        /* Every element takes at least three bytes: a count past that is a lie, not an allocation. */
        if (r->n <= 0) return 0;
        if (r->n > (c->end - c->p) / 3) return -1;
        long long n = r->type == '%' ? 2 * r->n : r->n;
        if (n > (c->end - c->p) / 3) return -1;
        r->items = Vk_Calloc((size_t)n, sizeof(*r->items));
        for (long long i = 0; i < n; i++)
            if (parse_node(c, &r->items[i], depth + 1) != 0) return -1;
        return 0;
    }
    default: return -1;
    }
}

static size_t node_bytes(const EgResp *r) {
    size_t n = 24 + (r->str ? (size_t)r->n : 0);
    long long items = r->items ? (r->type == '%' ? 2 * r->n : r->n) : 0;
    for (long long i = 0; i < items; i++) n += node_bytes(&r->items[i]);
    return n;
}

static EgResp *root(EgResp *r) {
    r->refs = 1;
    r->bytes = node_bytes(r);
    return r;
}

/* Exactly one reply, or NULL when buf is not one well-formed reply. */
EgResp *eg_resp_parse(const char *buf, size_t len) {
    Cursor c = {buf, buf + len};
    EgResp *r = Vk_Calloc(1, sizeof(*r));
    if (parse_node(&c, r, 0) != 0 || c.p != c.end) {
        free_node(r);
        Vk_Free(r);
        return NULL;
    }
    return root(r);
}

void eg_resp_emit(VkCtx *ctx, const EgResp *r) {
    switch (r->type) {
    case '+': Vk_ReplyWithSimpleString(ctx, r->str); break;
    case '-': Vk_ReplyWithError(ctx, r->str); break;
    case ':': Vk_ReplyWithLongLong(ctx, r->n); break;
    case '#': Vk_ReplyWithBool(ctx, (int)r->n); break;
    case ',': Vk_ReplyWithDouble(ctx, strtod(r->str, NULL)); break;
    case '$': Vk_ReplyWithStringBuffer(ctx, r->str, (size_t)r->n); break;
    case '_': Vk_ReplyWithNull(ctx); break;
    case '*':
        if (r->n < 0) {
            Vk_ReplyWithNullArray(ctx);
            break;
        }
        Vk_ReplyWithArray(ctx, (long)r->n);
        for (long long i = 0; i < r->n; i++) eg_resp_emit(ctx, &r->items[i]);
        break;
    case '~':
        Vk_ReplyWithSet(ctx, (long)r->n);
        for (long long i = 0; i < r->n; i++) eg_resp_emit(ctx, &r->items[i]);
        break;
    case '%':
        Vk_ReplyWithMap(ctx, (long)r->n);
        for (long long i = 0; i < 2 * r->n; i++) eg_resp_emit(ctx, &r->items[i]);
        break;
    }
}

EgResp *eg_resp_retain(EgResp *r) {
    r->refs++;
    return r;
}

void eg_resp_release(EgResp *r) {
    if (!r || --r->refs > 0) return;
    free_node(r);
    Vk_Free(r);
}

EgResp *eg_resp_integer(long long v) {
    EgResp *r = Vk_Calloc(1, sizeof(*r));
    r->type = ':';
    r->n = v;
    return root(r);
}

static EgResp *line(char type, const char *text) {
    EgResp *r = Vk_Calloc(1, sizeof(*r));
    r->type = type;
    r->str = eg_strdup(text);
    r->n = (long long)strlen(text);
    return root(r);
}

EgResp *eg_resp_error(const char *text) {
    return line('-', text);
}

EgResp *eg_resp_status(const char *text) {
    return line('+', text);
}

/* An array of bulk strings; it takes each strs[i] (Vk_Alloc'ed) and frees strs and lens. */
EgResp *eg_resp_bulk_array(char **strs, size_t *lens, size_t n) {
    EgResp *r = Vk_Calloc(1, sizeof(*r));
    r->type = '*';
    r->n = (long long)n;
    if (n) r->items = Vk_Calloc(n, sizeof(*r->items));
    for (size_t i = 0; i < n; i++) {
        r->items[i].type = '$';
        r->items[i].str = strs[i];
        r->items[i].n = (long long)lens[i];
    }
    Vk_Free(strs);
    Vk_Free(lens);
    return root(r);
}

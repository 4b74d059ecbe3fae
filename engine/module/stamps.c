/* The last-writer-wins metadata of a multi-region node: per key, the type and stamp of its latest
 * write and the stamp below which writes of that type lost; per field or member, the stamp of the
 * write that decided it and whether it is present. eg_stamps_apply is lww.KeyState.apply, made to
 * change the key in Valkey as it decides (data 1), or only the metadata when Valkey already holds
 * the result (a local write, data 0). The metadata is kept across restarts in an RDB aux field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram.h"

#define MAX_REGIONS 2047 /* an element's region has 11 bits */
#define HLC_BITS 52      /* microseconds up to the year 2112 */

/* Kept small, one per stamped key: stamps packed as clock << 11 | region (0: none). */
typedef struct KeyMeta {
    uint64_t top;  /* the latest write */
    uint64_t base; /* the latest write of another type than kind: writes of kind at or before it lost */
    VkDict *elems; /* field or member -> packed element (see pack) */
    uint32_t present, removed;
    uint8_t kind; /* the latest write's type */
} KeyMeta;

static VkDict *keys;
static char *region_names[MAX_REGIONS];
static uint32_t n_regions;
static long long n_elements, meta_bytes;
/* Tombstones, kept as they change so that ENGRAM.MR.INFO need not walk every key: removed
 * elements, and stamped keys that show nothing (deleted, or a collection left empty). */
static long long n_removed, n_invisible;
static const char *kind_names[EG_KIND_COUNT] = {"none", "string", "hash", "set", "zset"};

/* An element fits in the dict's value pointer: no allocation per field, and never NULL. */
static void *pack(EgStamp s, int present) {
    return (void *)(uintptr_t)((s.hlc << 12) | ((uint64_t)s.region << 1) | (uint64_t)(present != 0));
}

static uint64_t packs(EgStamp s) {
    return (s.hlc << 11) | s.region;
}

static EgStamp unpacks(uint64_t p) {
    return (EgStamp){p >> 11, (uint32_t)(p & 0x7FF)};
}

static EgStamp unpack(void *v, int *present) {
    uint64_t x = (uint64_t)(uintptr_t)v;
    if (present) *present = (int)(x & 1);
    return (EgStamp){x >> 12, (uint32_t)((x >> 1) & 0x7FF)};
}

uint32_t eg_region_intern(const char *name, size_t len) {
    for (uint32_t i = 0; i < n_regions; i++)
        if (strlen(region_names[i]) == len && !memcmp(region_names[i], name, len)) return i + 1;
    if (n_regions == MAX_REGIONS || len == 0 || memchr(name, 0, len)) return 0;
    char *copy = Vk_Alloc(len + 1);
    memcpy(copy, name, len);
    copy[len] = 0;
    region_names[n_regions++] = copy;
    return n_regions;
}

const char *eg_region_name(uint32_t region) {
    return region && region <= n_regions ? region_names[region - 1] : "";
}

/* Stamps order by clock, then by region name: every region orders two writes alike. */
int eg_stamp_cmp(EgStamp a, EgStamp b) {
    if (a.hlc != b.hlc) return a.hlc < b.hlc ? -1 : 1;
    if (a.region == b.region) return 0;
    return strcmp(eg_region_name(a.region), eg_region_name(b.region)) < 0 ? -1 : 1;
}

int eg_kind_parse(const char *name, size_t len) {
    for (int k = 0; k < EG_KIND_COUNT; k++)
        if (strlen(kind_names[k]) == len && !strncmp(kind_names[k], name, len)) return k;
    return -1;
}

const char *eg_kind_name(int kind) {
    return kind >= 0 && kind < EG_KIND_COUNT ? kind_names[kind] : "?";
}

static int is_collection(int kind) {
    return kind == EG_KIND_HASH || kind == EG_KIND_SET || kind == EG_KIND_ZSET;
}

/* ---- Elements ---------------------------------------------------------------------------- */

static void elem_set(KeyMeta *m, const char *member, size_t len, EgStamp s, int present) {
    if (!m->elems) m->elems = Vk_CreateDict(NULL);
    int nokey = 0, was = 0;
    void *old = Vk_DictGetC(m->elems, (void *)member, len, &nokey);
    if (!nokey) {
        unpack(old, &was);
        if (was) m->present--; else m->removed--, n_removed--;
        Vk_DictReplaceC(m->elems, (void *)member, len, pack(s, present));
    } else {
        Vk_DictSetC(m->elems, (void *)member, len, pack(s, present));
        n_elements++;
        meta_bytes += (long long)(len + 16); /* a rax node and its value pointer, roughly */
    }
    if (present) m->present++; else m->removed++, n_removed++;
}

static void elem_forget(KeyMeta *m, const char *member, size_t len) {
    void *old = NULL;
    if (Vk_DictDelC(m->elems, (void *)member, len, &old) != VK_OK) return;
    int was;
    unpack(old, &was);
    if (was) m->present--; else m->removed--, n_removed--;
    n_elements--;
    meta_bytes -= (long long)(len + 16);
}

static void elems_clear(KeyMeta *m) {
    if (!m->elems) return;
    VkDictIter *it = Vk_DictIteratorStartC(m->elems, "^", NULL, 0);
    size_t len;
    while (Vk_DictNextC(it, &len, NULL)) {
        n_elements--;
        meta_bytes -= (long long)(len + 16);
    }
    Vk_DictIteratorStop(it);
    Vk_FreeDict(NULL, m->elems);
    m->elems = NULL;
    n_removed -= m->removed;
    m->present = m->removed = 0;
}

/* ---- Keys -------------------------------------------------------------------------------- */

/* A stamped key that shows nothing: a tombstone itself. */
static int invisible(const KeyMeta *m) {
    return m->top && (m->kind == EG_KIND_NONE || (is_collection(m->kind) && m->present == 0));
}

static KeyMeta *meta_of(const char *key, size_t len, int create) {
    if (!keys) keys = Vk_CreateDict(NULL);
    KeyMeta *m = Vk_DictGetC(keys, (void *)key, len, NULL);
    if (m || !create) return m;
    m = Vk_Calloc(1, sizeof *m);
    Vk_DictSetC(keys, (void *)key, len, m);
    meta_bytes += (long long)(sizeof *m + len + 16);
    return m;
}

static void meta_drop(const char *key, size_t len) {
    KeyMeta *m = NULL;
    if (Vk_DictDelC(keys, (void *)key, len, &m) != VK_OK || !m) return;
    n_invisible -= invisible(m);
    elems_clear(m);
    Vk_Free(m);
    meta_bytes -= (long long)(sizeof *m + len + 16);
}

/* ---- Changing Valkey --------------------------------------------------------------------- */

static const char *put_command(int kind) {
    return kind == EG_KIND_HASH ? "HSET" : kind == EG_KIND_SET ? "SADD" : "ZADD";
}

static const char *remove_command(int kind) {
    return kind == EG_KIND_HASH ? "HDEL" : kind == EG_KIND_SET ? "SREM" : "ZREM";
}

/* One call for many elements: args holds the key first, then what the command takes. */
static void call(VkCtx *ctx, const char *cmd, VkString **args, size_t n) {
    VkCallReply *r = Vk_Call(ctx, cmd, "v", args, n);
    if (!r || Vk_CallReplyType(r) == VK_REPLY_ERROR) {
        size_t elen = 0;
        const char *e = r ? Vk_CallReplyStringPtr(r, &elen) : "no reply";
        Vk_Log(ctx, "warning", "engram: applying a stamped write, %s failed: %.*s", cmd, (int)elen, e);
    }
    if (r) Vk_FreeCallReply(r);
}

/* ---- Converging TTLs --------------------------------------------------------------------- */
/* A string key of a `ttls` pattern keeps its latest set's deadline (unix ms). Every region's Valkey
 * holds it as the key's TTL; when it passes, each region deletes the key with a delete stamped at
 * the deadline (eg_stamps_expired), which replicates like any delete, so a region that missed the
 * moment still ends as the others. */

static VkDict *deadlines; /* key -> deadline, for the keys that have one */
static long long n_deadlines;

long long eg_stamps_deadline(const char *key, size_t len) {
    return deadlines ? (long long)(uintptr_t)Vk_DictGetC(deadlines, (void *)key, len, NULL) : 0;
}

static void deadline_set(VkString *key, long long ms) {
    size_t len;
    const char *k = Vk_StringPtrLen(key, &len);
    int had = eg_stamps_deadline(k, len) != 0;
    if (ms) {
        if (!deadlines) deadlines = Vk_CreateDict(NULL);
        Vk_DictReplaceC(deadlines, (void *)k, len, (void *)(uintptr_t)ms);
        if (!had) n_deadlines++, meta_bytes += (long long)(len + 16);
    } else if (had) {
        Vk_DictDelC(deadlines, (void *)k, len, NULL);
        n_deadlines--, meta_bytes -= (long long)(len + 16);
    }
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A deadline that is not one: keep whatever TTL the key has (KEEPTTL). 0 sets none. */
#define KEEP_TTL (-1LL)

/* SET the value, with the deadline as its TTL (PXAT), or with none, or keeping the one it has. */
static void value_put(VkCtx *ctx, VkString *key, VkString *value, long long deadline) {
    VkString *args[4] = {key, value, NULL, NULL};
    size_t n = 2;
    char ms[32];
    if (deadline == KEEP_TTL) {
        args[n++] = Vk_CreateString(NULL, "KEEPTTL", 7);
    } else if (deadline > 0) {
        args[n++] = Vk_CreateString(NULL, "PXAT", 4);
        args[n++] = Vk_CreateString(NULL, ms, (size_t)snprintf(ms, sizeof ms, "%lld", deadline));
    }
    call(ctx, "SET", args, n);
    for (size_t i = 2; i < n; i++) Vk_FreeString(NULL, args[i]);
}

/* Names copied out of a dictionary being walked, to be forgotten once the walk is over (a dict
 * must not change under its iterator). */
typedef struct {
    char **names;
    size_t *lens;
    size_t n, cap;
} NameList;

static void names_push(NameList *l, const char *name, size_t len) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->names = Vk_Realloc(l->names, l->cap * sizeof *l->names);
        l->lens = Vk_Realloc(l->lens, l->cap * sizeof *l->lens);
    }
    l->names[l->n] = Vk_Alloc(len);
    memcpy(l->names[l->n], name, len);
    l->lens[l->n++] = len;
}

static void names_free(NameList *l) {
    for (size_t i = 0; i < l->n; i++) Vk_Free(l->names[i]);
    if (l->cap) {
        Vk_Free(l->names);
        Vk_Free(l->lens);
    }
}

/* The key's elements decided at or before `upto`, present ones into `present` (when not NULL) and
 * removed ones into `removed`. */
static void elements_upto(KeyMeta *m, EgStamp upto, NameList *present, NameList *removed) {
    VkDictIter *it = Vk_DictIteratorStartC(m->elems, "^", NULL, 0);
    size_t len;
    void *v;
    char *member;
    while ((member = Vk_DictNextC(it, &len, &v))) {
        int is_present;
        EgStamp s = unpack(v, &is_present);
        if (eg_stamp_cmp(s, upto) > 0) continue;
        if (!is_present) names_push(removed, member, len);
        else if (present) names_push(present, member, len);
    }
    Vk_DictIteratorStop(it);
}

/* Remove from Valkey (data) and forget every element decided at or before `upto`. */
static void drop_older(VkCtx *ctx, KeyMeta *m, VkString *key, int kind, EgStamp upto, int data) {
    if (!m->elems) return;
    NameList present = {0}, removed = {0};
    elements_upto(m, upto, &present, &removed);
    VkString **args = Vk_Alloc((present.n + 1) * sizeof *args);
    args[0] = key;
    size_t ngone = 0;
    for (size_t i = 0; i < present.n; i++) {
        if (data) args[1 + ngone++] = Vk_CreateString(NULL, present.names[i], present.lens[i]);
        elem_forget(m, present.names[i], present.lens[i]);
    }
    for (size_t i = 0; i < removed.n; i++) elem_forget(m, removed.names[i], removed.lens[i]);
    if (ngone) call(ctx, remove_command(kind), args, ngone + 1);
    for (size_t i = 0; i < ngone; i++) Vk_FreeString(NULL, args[1 + i]);
    Vk_Free(args);
    names_free(&present);
    names_free(&removed);
}

/* Decide each element the write names: a newer stamp than the one held wins it. */
static void merge(VkCtx *ctx, KeyMeta *m, const EgWrite *w, int data) {
    if (w->kind == EG_KIND_STRING && eg_stamp_cmp(w->stamp, unpacks(m->top)) == 0) {
        deadline_set(w->key, w->deadline);
        if (data) value_put(ctx, w->key, w->value, w->deadline);
        return;
    }
    if (!is_collection(w->kind)) return;
    int step = w->kind == EG_KIND_SET ? 1 : 2;
    VkString **args = Vk_Alloc((size_t)(1 + 2 * w->nput + w->nrem) * sizeof *args);
    size_t n = 1;
    args[0] = w->key;
    for (int i = 0; i < w->nput; i++) {
        size_t len;
        const char *member = Vk_StringPtrLen(w->put[i * step], &len);
        int nokey = 1;
        void *held = m->elems ? Vk_DictGetC(m->elems, (void *)member, len, &nokey) : NULL;
        if (!nokey && eg_stamp_cmp(w->stamp, unpack(held, NULL)) <= 0) continue;
        elem_set(m, member, len, w->stamp, 1);
        if (w->kind == EG_KIND_HASH) {
            args[n++] = w->put[i * 2];
            args[n++] = w->put[i * 2 + 1];
        } else if (w->kind == EG_KIND_ZSET) {
            args[n++] = w->put[i * 2 + 1]; /* ZADD takes the score first */
            args[n++] = w->put[i * 2];
        } else {
            args[n++] = w->put[i];
        }
    }
    if (data && n > 1) call(ctx, put_command(w->kind), args, n);
    n = 1;
    for (int i = 0; i < w->nrem; i++) {
        size_t len;
        const char *member = Vk_StringPtrLen(w->rem[i], &len);
        int nokey = 1;
        void *held = m->elems ? Vk_DictGetC(m->elems, (void *)member, len, &nokey) : NULL;
        if (!nokey && eg_stamp_cmp(w->stamp, unpack(held, NULL)) <= 0) continue;
        elem_set(m, member, len, w->stamp, 0);
        args[n++] = w->rem[i];
    }
    if (data && n > 1) call(ctx, remove_command(w->kind), args, n);
    Vk_Free(args);
}

/* The key holds a value of the write's type that no stamp accounts for: data from before the node
 * was in multi-region mode. */
static int unstamped_same_type(VkCtx *ctx, VkString *key, int kind) {
    static const char *types[EG_KIND_COUNT] = {"", "string", "hash", "set", "zset"};
    VkCallReply *r = Vk_Call(ctx, "TYPE", "s", key);
    size_t len = 0;
    const char *t = r ? Vk_CallReplyStringPtr(r, &len) : NULL;
    int same = t && kind > EG_KIND_NONE && len == strlen(types[kind]) && !memcmp(t, types[kind], len);
    if (r) Vk_FreeCallReply(r);
    return same;
}

/* ---- Additive counters ------------------------------------------------------------------- */
/* A string key incremented as a counter remembers, in its element tree, each increment not yet
 * settled (member: clock, delta and region, so a region's increments never collide) and, while
 * any is remembered, the stamp of the latest set before them (member "="). Its value is that set's
 * value, or 0, plus every increment after it (lww.counter_value). A key never incremented has no
 * tree: its latest write, the top, is its set. */

#define SET_MARK "="

static size_t inc_member(char *buf, EgStamp s, long long delta) {
    const char *name = eg_region_name(s.region);
    size_t nlen = strlen(name);
    uint64_t d = (uint64_t)delta;
    for (int i = 0; i < 8; i++) buf[i] = (char)(s.hlc >> (56 - 8 * i));
    for (int i = 0; i < 8; i++) buf[8 + i] = (char)(d >> (56 - 8 * i));
    memcpy(buf + 16, name, nlen);
    return 16 + nlen;
}

static long long inc_delta(const char *member) {
    uint64_t d = 0;
    for (int i = 0; i < 8; i++) d = (d << 8) | (uint8_t)member[8 + i];
    return (long long)d;
}

static void inc_set(KeyMeta *m, EgStamp s, long long delta) {
    char buf[16 + 2048];
    elem_set(m, buf, inc_member(buf, s, delta), s, 1);
}

static int inc_held(KeyMeta *m, EgStamp s, long long delta) {
    char buf[16 + 2048];
    int nokey = 1;
    if (m->elems) Vk_DictGetC(m->elems, buf, inc_member(buf, s, delta), &nokey);
    return !nokey;
}

static int mark_get(KeyMeta *m, EgStamp *out) {
    int nokey = 1;
    void *v = m->elems ? Vk_DictGetC(m->elems, SET_MARK, 1, &nokey) : NULL;
    if (!nokey) *out = unpack(v, NULL);
    return !nokey;
}

/* Increments remembered, and the sum of those after `after` (all of them when `after` is none). */
static long long incs_after(KeyMeta *m, EgStamp after, __int128 *sum) {
    *sum = 0;
    if (!m->elems) return 0;
    long long n = 0;
    VkDictIter *it = Vk_DictIteratorStartC(m->elems, "^", NULL, 0);
    size_t len;
    void *v;
    char *member;
    while ((member = Vk_DictNextC(it, &len, &v))) {
        if (len < 16) continue;
        if (after.region && eg_stamp_cmp(unpack(v, NULL), after) <= 0) continue;
        *sum += inc_delta(member);
        n++;
    }
    Vk_DictIteratorStop(it);
    return n;
}

/* Forget the increments (and the set's mark) at or before `upto`; free an emptied tree. */
static void incs_forget_upto(KeyMeta *m, EgStamp upto) {
    if (!m->elems) return;
    NameList gone = {0};
    elements_upto(m, upto, &gone, &gone);
    for (size_t i = 0; i < gone.n; i++) elem_forget(m, gone.names[i], gone.lens[i]);
    names_free(&gone);
    if (!Vk_DictSize(m->elems)) elems_clear(m);
}

static void value_set_number(VkCtx *ctx, VkString *key, __int128 v, long long deadline) {
    char buf[48];
    VkString *s = Vk_CreateString(NULL, buf, eg_counter_format(v, buf, sizeof buf));
    value_put(ctx, key, s, deadline);
    Vk_FreeString(NULL, s);
}

/* Add to the value Valkey holds: an absent key counts from 0, a value that is not an integer
 * ignores increments. */
static void value_add(VkCtx *ctx, VkString *key, long long delta) {
    VkCallReply *r = Vk_Call(ctx, "GET", "s", key);
    size_t len = 0;
    const char *v = r && Vk_CallReplyType(r) == VK_REPLY_STRING ? Vk_CallReplyStringPtr(r, &len) : NULL;
    __int128 n = 0;
    /* An increment keeps the TTL of the set it adds to, as INCRBY does. */
    if (!v || eg_counter_parse(v, len, &n)) value_set_number(ctx, key, n + delta, KEEP_TTL);
    if (r) Vk_FreeCallReply(r);
}

/* A write of the key's own type, string, newer than its base: a set or an increment. */
static void string_write(VkCtx *ctx, KeyMeta *m, const EgWrite *w, int data) {
    EgStamp top = unpacks(m->top), mark;
    int marked = mark_get(m, &mark);
    __int128 sum;
    long long incs = incs_after(m, (EgStamp){0, 0}, &sum);
    /* Lost to a newer set: the one marked, or else the top when no increment is remembered. */
    if (marked ? eg_stamp_cmp(w->stamp, mark) <= 0 : (incs == 0 && eg_stamp_cmp(w->stamp, top) < 0)) return;
    if (w->add) {
        if (inc_held(m, w->stamp, w->delta)) return; /* applied before */
        if (!marked && incs == 0) elem_set(m, SET_MARK, 1, top, 1); /* the top was the set */
        inc_set(m, w->stamp, w->delta);
        if (eg_stamp_cmp(w->stamp, top) > 0) m->top = packs(w->stamp);
        if (data) value_add(ctx, w->key, w->delta);
        return;
    }
    incs_forget_upto(m, w->stamp);
    incs = incs_after(m, (EgStamp){0, 0}, &sum);
    if (incs) elem_set(m, SET_MARK, 1, w->stamp, 1);
    if (eg_stamp_cmp(w->stamp, top) > 0) m->top = packs(w->stamp);
    deadline_set(w->key, w->deadline);
    if (!data) return;
    size_t len;
    const char *v = Vk_StringPtrLen(w->value, &len);
    __int128 n;
    if (incs && eg_counter_parse(v, len, &n)) value_set_number(ctx, w->key, n + sum, w->deadline);
    else value_put(ctx, w->key, w->value, w->deadline);
}

/* A write of another type at `cut`, older than the key's top, outdates the string writes before
 * it: when the latest set is among them, the count restarts at 0 from the increments after it. */
static void string_cut(VkCtx *ctx, KeyMeta *m, VkString *key, EgStamp cut, int data) {
    EgStamp mark;
    if (!m->elems || (mark_get(m, &mark) && eg_stamp_cmp(mark, cut) > 0)) return;
    incs_forget_upto(m, cut); /* the mark too, when the set is at or before the cut */
    __int128 sum;
    if (incs_after(m, (EgStamp){0, 0}, &sum) == 0) return; /* cannot be: the top is after the cut */
    deadline_set(key, 0); /* the set and its TTL are gone: the count restarts with neither */
    if (data) value_set_number(ctx, key, sum, 0);
}

static void apply_to(VkCtx *ctx, KeyMeta *m, const EgWrite *w, int data);

static void expire_at(VkCtx *ctx, VkString *key, long long deadline, int data);

void eg_stamps_apply(VkCtx *ctx, const EgWrite *w, int data) {
    size_t klen;
    const char *key = Vk_StringPtrLen(w->key, &klen);
    KeyMeta *m = meta_of(key, klen, 1);
    int was_invisible = invisible(m);
    apply_to(ctx, m, w, data);
    n_invisible += invisible(m) - was_invisible;
    /* A set whose deadline passed before it arrived (a lagging link, a replayed journal): the key
     * expired then, here as everywhere else. */
    long long deadline = eg_stamps_deadline(key, klen);
    if (data && eg_region && deadline && deadline <= now_ms()) expire_at(ctx, w->key, deadline, 1);
}

/* The key's deadline passed: delete it with a delete stamped at the deadline by this region, and
 * replicate that, to this region's replicas and journal and so to the other regions. */
static void expire_at(VkCtx *ctx, VkString *key, long long deadline, int data) {
    uint64_t hlc = (uint64_t)deadline * 1000;
    uint32_t region = eg_region_intern(eg_region, strlen(eg_region));
    if (hlc == 0 || hlc >= (1ULL << HLC_BITS) || !region) return;
    EgWrite w;
    memset(&w, 0, sizeof w);
    w.stamp = (EgStamp){hlc, region};
    w.kind = EG_KIND_NONE;
    w.key = key;
    eg_stamps_apply(ctx, &w, data);
    Vk_Replicate(ctx, "ENGRAM.MR.APPLY", "lccs", (long long)hlc, eg_region, "none", key);
}

void eg_stamps_expired(VkCtx *ctx, VkString *key) {
    size_t len;
    const char *k = Vk_StringPtrLen(key, &len);
    long long deadline = eg_stamps_deadline(k, len);
    if (eg_region && deadline) expire_at(ctx, key, deadline, 0); /* Valkey already deleted it */
}

static void apply_to(VkCtx *ctx, KeyMeta *m, const EgWrite *w, int data) {
    if (!m->top || (w->kind != m->kind && eg_stamp_cmp(w->stamp, unpacks(m->top)) > 0)) {
        /* A new type, or the key's first write: every earlier write was of another type, so none
         * counts, and the old top bounds what older writes of this type may still add. A key
         * never stamped keeps what it held before multi-region mode when the write's type is its
         * type, as a local write leaves it: a replica then ends as its primary does. */
        if (data && (m->top || !unstamped_same_type(ctx, w->key, w->kind))) {
            VkString *args[1] = {w->key};
            call(ctx, "DEL", args, 1);
        }
        m->base = m->top;
        m->kind = (uint8_t)w->kind;
        m->top = packs(w->stamp);
        elems_clear(m);
        deadline_set(w->key, 0); /* a new key: the old one's TTL went with it */
        if (w->add) {
            /* No set since the new base: the count starts at 0 (or at an unstamped value kept). */
            inc_set(m, w->stamp, w->delta);
            if (data) value_add(ctx, w->key, w->delta);
        } else {
            merge(ctx, m, w, data);
        }
    } else if (w->kind != m->kind) {
        /* An older write of another type: it still outdates this type's writes before it. */
        if (!m->base || eg_stamp_cmp(w->stamp, unpacks(m->base)) > 0) {
            m->base = packs(w->stamp);
            if (m->kind == EG_KIND_STRING) string_cut(ctx, m, w->key, w->stamp, data);
            else drop_older(ctx, m, w->key, m->kind, w->stamp, data);
        }
    } else if (!m->base || eg_stamp_cmp(w->stamp, unpacks(m->base)) > 0) {
        if (w->kind == EG_KIND_STRING) {
            string_write(ctx, m, w, data);
            return;
        }
        if (eg_stamp_cmp(w->stamp, unpacks(m->top)) > 0) m->top = packs(w->stamp);
        merge(ctx, m, w, data);
    }
}

/* lww.Store.collect: forget what no write still to come can need, every write at or before the
 * frontier having been applied here. Returns the keys forgotten. */
long long eg_stamps_collect(EgStamp frontier) {
    if (!keys) return 0;
    NameList gone = {0};
    VkDictIter *it = Vk_DictIteratorStartC(keys, "^", NULL, 0);
    size_t len;
    KeyMeta *m;
    char *key;
    while ((key = Vk_DictNextC(it, &len, (void **)&m))) {
        if (m->base && eg_stamp_cmp(unpacks(m->base), frontier) <= 0) m->base = 0;
        if (m->kind == EG_KIND_STRING && m->elems) incs_forget_upto(m, frontier); /* settled: in the value */
        if (m->removed) {
            /* Removed elements at or before the frontier: collected after the walk. */
            NameList removed = {0};
            elements_upto(m, frontier, NULL, &removed);
            for (size_t i = 0; i < removed.n; i++) elem_forget(m, removed.names[i], removed.lens[i]);
            names_free(&removed);
        }
        if (eg_stamp_cmp(unpacks(m->top), frontier) > 0 || !invisible(m)) continue;
        names_push(&gone, key, len);
    }
    Vk_DictIteratorStop(it);
    for (size_t i = 0; i < gone.n; i++) meta_drop(gone.names[i], gone.lens[i]);
    names_free(&gone);
    return (long long)gone.n;
}

void eg_stamps_stats(EgStampStats *st) {
    memset(st, 0, sizeof *st);
    st->bytes = meta_bytes;
    st->elements = n_elements;
    st->tombstones = n_removed + n_invisible;
    st->keys = keys ? (long long)Vk_DictSize(keys) : 0;
}

void eg_stamps_clear(void) {
    if (!keys) return;
    VkDictIter *it = Vk_DictIteratorStartC(keys, "^", NULL, 0);
    KeyMeta *m;
    while (Vk_DictNextC(it, NULL, (void **)&m)) {
        elems_clear(m);
        Vk_Free(m);
    }
    Vk_DictIteratorStop(it);
    Vk_FreeDict(NULL, keys);
    keys = NULL;
    n_elements = n_removed = n_invisible = 0;
    meta_bytes = 0;
    if (deadlines) Vk_FreeDict(NULL, deadlines);
    deadlines = NULL;
    n_deadlines = 0;
}

/* ---- The RDB aux field ------------------------------------------------------------------- */

#define AUX_ENCVER 2 /* 1: no deadlines (still loaded) */

static void save_stamp(VkIO *io, EgStamp s) {
    Vk_SaveUnsigned(io, s.hlc);
    Vk_SaveUnsigned(io, s.region);
}

/* Encoding 2 adds the deadlines of converging TTLs, after the keys. */
static void save_deadlines(VkIO *io) {
    Vk_SaveUnsigned(io, deadlines ? Vk_DictSize(deadlines) : 0);
    if (!deadlines) return;
    VkDictIter *it = Vk_DictIteratorStartC(deadlines, "^", NULL, 0);
    size_t len;
    void *v;
    char *key;
    while ((key = Vk_DictNextC(it, &len, &v))) {
        Vk_SaveStringBuffer(io, key, len);
        Vk_SaveUnsigned(io, (uint64_t)(uintptr_t)v);
    }
    Vk_DictIteratorStop(it);
}

static void aux_save(VkIO *io, int when) {
    if (when != VK_AUX_AFTER_RDB) return;
    if ((!keys || !Vk_DictSize(keys)) && !eg_hlc) return; /* nothing stamped: no aux field at all */
    Vk_SaveUnsigned(io, eg_hlc);
    Vk_SaveUnsigned(io, n_regions);
    for (uint32_t i = 0; i < n_regions; i++) Vk_SaveStringBuffer(io, region_names[i], strlen(region_names[i]));
    Vk_SaveUnsigned(io, keys ? Vk_DictSize(keys) : 0);
    if (!keys) {
        save_deadlines(io);
        return;
    }
    VkDictIter *it = Vk_DictIteratorStartC(keys, "^", NULL, 0);
    size_t len;
    KeyMeta *m;
    char *key;
    while ((key = Vk_DictNextC(it, &len, (void **)&m))) {
        Vk_SaveStringBuffer(io, key, len);
        Vk_SaveUnsigned(io, (uint64_t)m->kind);
        save_stamp(io, unpacks(m->top));
        save_stamp(io, unpacks(m->base));
        Vk_SaveUnsigned(io, m->elems ? Vk_DictSize(m->elems) : 0);
        if (!m->elems) continue;
        VkDictIter *eit = Vk_DictIteratorStartC(m->elems, "^", NULL, 0);
        size_t mlen;
        void *v;
        char *member;
        while ((member = Vk_DictNextC(eit, &mlen, &v))) {
            int present;
            EgStamp s = unpack(v, &present);
            Vk_SaveStringBuffer(io, member, mlen);
            save_stamp(io, s);
            Vk_SaveUnsigned(io, (uint64_t)present);
        }
        Vk_DictIteratorStop(eit);
    }
    Vk_DictIteratorStop(it);
    save_deadlines(io);
}

static int aux_load(VkIO *io, int encver, int when) {
    if (when != VK_AUX_AFTER_RDB) return VK_OK;
    if (encver != 1 && encver != AUX_ENCVER) return VK_ERR;
    /* The RDB replaces the keyspace, and so the stamps that decided it. */
    eg_stamps_clear();
    eg_hlc_observe(Vk_LoadUnsigned(io));
    uint64_t nr = Vk_LoadUnsigned(io);
    if (Vk_IsIOError(io) || nr > MAX_REGIONS) return VK_ERR;
    uint32_t map[MAX_REGIONS + 1];
    map[0] = 0;
    for (uint64_t i = 0; i < nr; i++) {
        size_t len;
        char *name = Vk_LoadStringBuffer(io, &len);
        if (!name) return VK_ERR;
        map[i + 1] = eg_region_intern(name, len);
        Vk_Free(name);
    }
    uint64_t nk = Vk_LoadUnsigned(io);
    for (uint64_t k = 0; k < nk && !Vk_IsIOError(io); k++) {
        size_t len;
        char *key = Vk_LoadStringBuffer(io, &len);
        if (!key) return VK_ERR;
        KeyMeta *m = meta_of(key, len, 1);
        Vk_Free(key);
        uint64_t kind = Vk_LoadUnsigned(io);
        if (kind >= EG_KIND_COUNT) return VK_ERR;
        m->kind = (uint8_t)kind;
        uint64_t *s[2] = {&m->top, &m->base};
        for (int i = 0; i < 2; i++) {
            uint64_t hlc = Vk_LoadUnsigned(io), r = Vk_LoadUnsigned(io);
            if (r > nr || hlc >= (1ULL << HLC_BITS)) return VK_ERR;
            *s[i] = r ? packs((EgStamp){hlc, map[r]}) : 0;
            eg_hlc_observe(hlc);
        }
        uint64_t ne = Vk_LoadUnsigned(io);
        for (uint64_t e = 0; e < ne && !Vk_IsIOError(io); e++) {
            size_t mlen;
            char *member = Vk_LoadStringBuffer(io, &mlen);
            if (!member) return VK_ERR;
            EgStamp es;
            es.hlc = Vk_LoadUnsigned(io);
            uint64_t r = Vk_LoadUnsigned(io);
            int present = (int)Vk_LoadUnsigned(io);
            if (r == 0 || r > nr) {
                Vk_Free(member);
                return VK_ERR;
            }
            es.region = map[r];
            elem_set(m, member, mlen, es, present);
            Vk_Free(member);
        }
        n_invisible += invisible(m);
    }
    uint64_t nd = encver >= 2 && !Vk_IsIOError(io) ? Vk_LoadUnsigned(io) : 0;
    for (uint64_t d = 0; d < nd && !Vk_IsIOError(io); d++) {
        size_t len;
        char *key = Vk_LoadStringBuffer(io, &len);
        if (!key) return VK_ERR;
        VkString *name = Vk_CreateString(NULL, key, len);
        deadline_set(name, (long long)Vk_LoadUnsigned(io));
        Vk_FreeString(NULL, name);
        Vk_Free(key);
    }
    return Vk_IsIOError(io) ? VK_ERR : VK_OK;
}

int eg_stamps_register(VkCtx *ctx) {
    /* Registered on every node, region or not: an RDB with stamps (a snapshot) loads anywhere. */
    VkTypeMethods methods;
    memset(&methods, 0, sizeof methods);
    methods.version = VK_TYPE_METHOD_VERSION;
    methods.aux_load = aux_load;
    methods.aux_save2 = aux_save;
    methods.aux_save_triggers = VK_AUX_AFTER_RDB;
    return Vk_CreateDataType(ctx, "engramlww", AUX_ENCVER, &methods) ? VK_OK : VK_ERR;
}

/* Keys with uncommitted writes, and WATCHed keys of emulated transactions.
 *
 * Keyspace events (delivered to modules even with notify-keyspace-events off) mark a key dirty
 * until the replica link acknowledges the offset of the write that touched it; a read of a
 * dirty key is held until then. Keys are tracked without their database: a key of another
 * database with the same name is held too, which is safe and rare. */
#include <stdio.h>
#include <string.h>

#include "engram.h"

typedef struct EgDirty {
    long long target; /* -1 until the offset is read before sleep */
} EgDirty;

/* Writes in commit order, so the oldest are forgotten first when an ack arrives. */
typedef struct EgDirtyRef {
    char *key;
    size_t len;
    EgDirty *dirty;
    struct EgDirtyRef *next;
} EgDirtyRef;

static VkDict *dirty;
static EgDirtyRef *oldest, *newest, *first_unassigned;
static long long n_dirty;
/* A FLUSHALL/FLUSHDB touches every key at once: every read waits for it to commit. */
static long long flush_target = 0;
static int flush_unassigned = 0;

/* WATCH: key ("db:key") -> array of watching client ids. */
typedef struct EgWatchers {
    unsigned long long *ids;
    int n, cap;
} EgWatchers;
static VkDict *watchers;
static long long n_watching_clients;

void eg_dirty_init(void) {
    dirty = Vk_CreateDict(NULL);
    watchers = Vk_CreateDict(NULL);
}

static size_t watch_key(char *buf, size_t cap, int db, const char *key, size_t len) {
    size_t n = (size_t)snprintf(buf, cap, "%d:", db);
    if (n + len > cap) len = cap - n; /* keys past the buffer compare by prefix: safe, more aborts */
    memcpy(buf + n, key, len);
    return n + len;
}

int eg_on_keyspace(VkCtx *ctx, int type, const char *event, VkString *key) {
    (void)event;
    if ((type & VK_NOTIFY_EXPIRED) && eg_region) eg_mr_expired(ctx, key); /* converging TTLs */
    size_t len;
    const char *k = Vk_StringPtrLen(key, &len);
    if (n_watching_clients) eg_watch_touch_key(Vk_GetSelectedDb(ctx), k, len);
    if (!eg_active) return VK_OK;
    EgDirty *d = Vk_Alloc(sizeof(*d));
    d->target = -1;
    Vk_DictReplaceC(dirty, (void *)k, len, d);
    EgDirtyRef *r = Vk_Alloc(sizeof(*r));
    r->key = Vk_Alloc(len ? len : 1);
    memcpy(r->key, k, len);
    r->len = len;
    r->dirty = d;
    r->next = NULL;
    if (newest)
        newest->next = r;
    else
        oldest = r;
    newest = r;
    if (!first_unassigned) {
        first_unassigned = r;
        eg_mark_unassigned();
    }
    n_dirty++;
    return VK_OK;
}

static long long flushes;

long long eg_dirty_flushes(void) {
    return flushes;
}

void eg_dirty_flushed(void) {
    flushes++;
    flush_unassigned = 1;
    eg_mark_unassigned();
    eg_watch_touch_all();
}

/* The whole dataset was replaced (ENGRAM.LOADRDB): no key holds an uncommitted write any more,
 * and the flush the load began with entered no replication stream, so nothing is left to wait
 * for. Every mark is forgotten; a WATCHed key counts as touched. */
void eg_dirty_reset(void) {
    while (oldest) {
        EgDirtyRef *r = oldest;
        oldest = r->next;
        if (Vk_DictGetC(dirty, r->key, r->len, NULL) == r->dirty) Vk_DictDelC(dirty, r->key, r->len, NULL);
        Vk_Free(r->dirty);
        Vk_Free(r->key);
        Vk_Free(r);
    }
    newest = first_unassigned = NULL;
    n_dirty = 0;
    flush_target = 0;
    flush_unassigned = 0;
    eg_watch_touch_all();
}

int eg_dirty_any(void) {
    return oldest != NULL || flush_unassigned || flush_target > eg_committed;
}

/* The offset a read of these arguments must wait for; *unassigned when a key was written in
 * this event-loop iteration, whose offset is known only before sleep. */
long long eg_dirty_target(VkString **argv, int argc, int *unassigned) {
    int nkeys = 0, *flags = NULL;
    int *pos = Vk_GetCommandKeysWithFlags(NULL, argv, argc, &nkeys, &flags);
    long long target = 0;
    /* A flush holds reads of keys; DBSIZE, SCAN and other keyless reads are held by their class. */
    if (nkeys > 0) {
        if (flush_unassigned) *unassigned = 1;
        if (flush_target > eg_committed) target = flush_target;
    }
    for (int i = 0; oldest && pos && i < nkeys; i++) {
        size_t len;
        const char *k = Vk_StringPtrLen(argv[pos[i]], &len);
        EgDirty *d = Vk_DictGetC(dirty, (void *)k, len, NULL);
        if (!d) continue;
        if (d->target < 0)
            *unassigned = 1;
        else if (d->target > target)
            target = d->target;
    }
    if (pos) Vk_Free(pos);
    if (flags) Vk_Free(flags);
    return target;
}

void eg_dirty_assign(long long offset) {
    for (EgDirtyRef *r = first_unassigned; r; r = r->next) r->dirty->target = offset;
    first_unassigned = NULL;
    if (flush_unassigned) {
        flush_target = offset;
        flush_unassigned = 0;
    }
}

void eg_dirty_release(long long committed) {
    while (oldest && oldest != first_unassigned && oldest->dirty->target <= committed) {
        EgDirtyRef *r = oldest;
        oldest = r->next;
        if (!oldest) newest = NULL;
        if (Vk_DictGetC(dirty, r->key, r->len, NULL) == r->dirty) Vk_DictDelC(dirty, r->key, r->len, NULL);
        Vk_Free(r->dirty);
        Vk_Free(r->key);
        Vk_Free(r);
        n_dirty--;
    }
}

long long eg_dirty_count(void) {
    return n_dirty;
}

/* ---- WATCH ------------------------------------------------------------------------------ */

void eg_watch_touch_key(int db, const char *key, size_t len) {
    char buf[512];
    size_t n = watch_key(buf, sizeof buf, db, key, len);
    EgWatchers *w = Vk_DictGetC(watchers, buf, n, NULL);
    if (!w) return;
    for (int i = 0; i < w->n; i++) {
        EgClient *cl = eg_client(w->ids[i], 0);
        if (cl) cl->watch_touched = 1;
    }
}

static long long flush_epoch;

void eg_watch_touch_all(void) {
    flush_epoch++;
}

void eg_watch_add(EgClient *cl, int db, VkString *key) {
    char buf[512];
    size_t len;
    const char *k = Vk_StringPtrLen(key, &len);
    size_t n = watch_key(buf, sizeof buf, db, k, len);
    for (int i = 0; i < cl->n_watched; i++)
        if (cl->watched_len[i] == n && !memcmp(cl->watched[i], buf, n)) return;
    EgWatchers *w = Vk_DictGetC(watchers, buf, n, NULL);
    if (!w) {
        w = Vk_Calloc(1, sizeof(*w));
        Vk_DictSetC(watchers, buf, n, w);
    }
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 4;
        w->ids = Vk_Realloc(w->ids, sizeof(*w->ids) * (size_t)w->cap);
    }
    w->ids[w->n++] = cl->id;
    if (!cl->n_watched) {
        n_watching_clients++;
        cl->watch_epoch = flush_epoch;
    }
    cl->watched = Vk_Realloc(cl->watched, sizeof(*cl->watched) * (size_t)(cl->n_watched + 1));
    cl->watched_len = Vk_Realloc(cl->watched_len, sizeof(*cl->watched_len) * (size_t)(cl->n_watched + 1));
    cl->watched[cl->n_watched] = Vk_Alloc(n);
    memcpy(cl->watched[cl->n_watched], buf, n);
    cl->watched_len[cl->n_watched] = n;
    cl->n_watched++;
}

int eg_watch_broken(EgClient *cl) {
    return cl->watch_touched || (cl->n_watched && cl->watch_epoch != flush_epoch);
}

void eg_watch_clear(EgClient *cl) {
    for (int i = 0; i < cl->n_watched; i++) {
        EgWatchers *w = Vk_DictGetC(watchers, cl->watched[i], cl->watched_len[i], NULL);
        if (w) {
            for (int j = 0; j < w->n; j++) {
                if (w->ids[j] == cl->id) {
                    w->ids[j] = w->ids[--w->n];
                    break;
                }
            }
            if (!w->n) {
                Vk_DictDelC(watchers, cl->watched[i], cl->watched_len[i], NULL);
                Vk_Free(w->ids);
                Vk_Free(w);
            }
        }
        Vk_Free(cl->watched[i]);
    }
    if (cl->n_watched) n_watching_clients--;
    Vk_Free(cl->watched);
    Vk_Free(cl->watched_len);
    cl->watched = NULL;
    cl->watched_len = NULL;
    cl->n_watched = 0;
    cl->watch_touched = 0;
}

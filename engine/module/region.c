/* Multi-region mode (docs/multi-region.md): a node started with the module argument `region <name>`
 * stamps every local write with its hybrid logical clock and replicates the write's effect as
 * ENGRAM.MR.APPLY, which replicas and other regions apply under the last-writer-wins rules
 * (stamps.c). Writes whose effects cannot be merged that way are refused before they run. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "engram.h"

char *eg_region;
uint64_t eg_hlc;
static uint32_t own_region;

#define HLC_LIMIT (1ULL << 52) /* an element packs its stamp's clock in 52 bits (stamps.c) */

static uint64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* A stamp above every stamp given or observed: wall time where clocks agree. */
static uint64_t hlc_now(void) {
    uint64_t w = wall_us();
    eg_hlc = w > eg_hlc ? w : eg_hlc + 1;
    return eg_hlc;
}

void eg_hlc_observe(uint64_t hlc) {
    if (hlc > eg_hlc) eg_hlc = hlc;
}

int eg_region_set(const char *name) {
    own_region = eg_region_intern(name, strlen(name));
    if (!own_region) return VK_ERR;
    eg_region = eg_strdup(name);
    return VK_OK;
}

/* ---- What a multi-region node accepts ----------------------------------------------------- */

/* How a supported write's effect is found once it has run. */
enum {
    FX_STRING,      /* the string keys it names: their full value, or their deletion */
    FX_STRING_PAIRS, /* MSET: keys at every other argument */
    FX_DEL,         /* every key named: deleted */
    FX_HASH_PAIRS,  /* the fields it names, every other argument after the key */
    FX_HASH_ONE,    /* the one field after the key */
    FX_HASH_ALL,    /* every argument after the key is a field */
    FX_SET_ALL,     /* every argument after the key is a member */
    FX_SET_REPLY,   /* SPOP: the members it replied */
    FX_ZADD,        /* ZADD: options, then score member pairs */
    FX_ZSET_SECOND, /* ZINCRBY key increment member */
    FX_ZSET_ALL,    /* every argument after the key is a member */
    FX_ZSET_REPLY,  /* ZPOPMIN/ZPOPMAX: the members it replied */
    FX_ZSET_BEFORE, /* ZREMRANGEBY*: the members the key held before */
    FX_TTL,         /* EXPIRE and friends on a key of a ttls pattern: the string with its deadline */
};

static const struct {
    const char *name;
    int effect;
} supported[] = {
    {"set", FX_STRING},           {"setnx", FX_STRING},          {"getset", FX_STRING},
    {"getdel", FX_STRING},        {"incr", FX_STRING},           {"decr", FX_STRING},
    {"incrby", FX_STRING},        {"decrby", FX_STRING},         {"incrbyfloat", FX_STRING},
    {"mset", FX_STRING_PAIRS},    {"msetnx", FX_STRING_PAIRS},   {"del", FX_DEL},
    {"unlink", FX_DEL},           {"hset", FX_HASH_PAIRS},       {"hmset", FX_HASH_PAIRS},
    {"hsetnx", FX_HASH_ONE},      {"hincrby", FX_HASH_ONE},      {"hincrbyfloat", FX_HASH_ONE},
    {"hdel", FX_HASH_ALL},        {"sadd", FX_SET_ALL},          {"srem", FX_SET_ALL},
    {"spop", FX_SET_REPLY},       {"zadd", FX_ZADD},             {"zincrby", FX_ZSET_SECOND},
    {"zrem", FX_ZSET_ALL},        {"zpopmin", FX_ZSET_REPLY},    {"zpopmax", FX_ZSET_REPLY},
    {"zremrangebyscore", FX_ZSET_BEFORE}, {"zremrangebyrank", FX_ZSET_BEFORE},
    {"zremrangebylex", FX_ZSET_BEFORE},
    /* Only on keys of a ttls pattern (eg_mr_refusal): */
    {"setex", FX_STRING},         {"psetex", FX_STRING},         {"getex", FX_TTL},
    {"expire", FX_TTL},           {"pexpire", FX_TTL},           {"expireat", FX_TTL},
    {"pexpireat", FX_TTL},        {"persist", FX_TTL},
};

static int effect_of(const char *name, size_t len) {
    char lower[32];
    if (len >= sizeof lower) return -1;
    eg_lower(lower, sizeof lower, name, len);
    for (size_t i = 0; i < sizeof supported / sizeof supported[0]; i++)
        if (!strcmp(lower, supported[i].name)) return supported[i].effect;
    return -1;
}

static void upper(char *out, size_t cap, const char *s, size_t len) {
    if (len >= cap) len = cap - 1;
    for (size_t i = 0; i < len; i++) out[i] = (s[i] >= 'a' && s[i] <= 'z') ? (char)(s[i] - 32) : s[i];
    out[len] = 0;
}

/* Why a command may not run on this multi-region node, or NULL. Checked before it runs, so a
 * refused command changes nothing. */
const char *eg_mr_refusal(VkFilterCtx *f, const char *name, size_t len, int argc, int cls, char *buf, size_t cap) {
    if (!eg_region) return NULL;
    char cmd[48];
    upper(cmd, sizeof cmd, name, len);
    if ((cls & EG_CMD_TX) && !strcmp(cmd, "MULTI")) {
        snprintf(buf, cap,
                 "ERR engram: MULTI is refused on a multi-region node: other regions would apply a "
                 "transaction's writes one by one, not atomically");
        return buf;
    }
    if (!(cls & EG_CMD_WRITE)) return NULL;
    if (effect_of(name, len) < 0) {
        snprintf(buf, cap,
                 "ERR engram: %s is refused on a multi-region node: its effect cannot be merged "
                 "last-writer-wins across regions (strings, hashes, sets and sorted sets can)",
                 cmd);
        return buf;
    }
    if (!strcmp(cmd, "INCRBYFLOAT") && argc > 1) {
        size_t klen;
        const char *key = Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 1), &klen);
        if (eg_key_matches(EG_PATTERNS_COUNTERS, key, klen)) {
            snprintf(buf, cap,
                     "ERR engram: INCRBYFLOAT is refused on an additive counter (module argument "
                     "counters): regions add integers exactly, and floats would not sum alike");
            return buf;
        }
    }
    size_t klen = 0;
    const char *key = argc > 1 ? Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 1), &klen) : "";
    if (argc > 1 && eg_key_matches(EG_PATTERNS_TTLS, key, klen)) return NULL; /* TTLs converge */
    static const char *ttl_commands[] = {"SETEX", "PSETEX", "GETEX", "EXPIRE", "PEXPIRE", "EXPIREAT",
                                         "PEXPIREAT", "PERSIST"};
    for (size_t i = 0; i < sizeof ttl_commands / sizeof ttl_commands[0]; i++) {
        if (strcmp(cmd, ttl_commands[i])) continue;
        snprintf(buf, cap,
                 "ERR engram: %s is refused on a multi-region node: TTLs replicate between regions "
                 "only on keys of a ttls pattern (module argument ttls)",
                 cmd);
        return buf;
    }
    if (!strcmp(cmd, "SET")) {
        for (int i = 3; i < argc; i++) {
            const char *opt = Vk_StringPtrLen(Vk_CommandFilterArgGet(f, i), NULL);
            if (!strcasecmp(opt, "ex") || !strcasecmp(opt, "px") || !strcasecmp(opt, "exat") ||
                !strcasecmp(opt, "pxat")) {
                snprintf(buf, cap,
                         "ERR engram: SET with a TTL (%s) is refused on a multi-region node: TTLs "
                         "replicate between regions only on keys of a ttls pattern (module argument ttls)",
                         opt);
                return buf;
            }
        }
    }
    return NULL;
}

/* ---- Stamped writes as commands ----------------------------------------------------------- */

/* ENGRAM.MR.APPLY <hlc> <region> <kind> <key> [<value> | <nput> <put...> <removed...>]: read
 * into w, its strings borrowed from argv. NULL, or why the write is malformed. */
static const char *parse_write(VkString **argv, int argc, EgWrite *w) {
    memset(w, 0, sizeof *w);
    if (argc < 5) return "ERR wrong number of arguments for 'engram.mr.apply' command";
    long long hlc, nput;
    if (Vk_StringToLongLong(argv[1], &hlc) != VK_OK || hlc < 1 || (uint64_t)hlc >= HLC_LIMIT)
        return "ERR engram: a stamp's clock is a positive number of microseconds below 2^52";
    size_t rlen, klen;
    const char *region = Vk_StringPtrLen(argv[2], &rlen);
    const char *kind = Vk_StringPtrLen(argv[3], &klen);
    w->stamp = (EgStamp){(uint64_t)hlc, eg_region_intern(region, rlen)};
    if (!w->stamp.region) return "ERR engram: a stamp's region is a non-empty name (at most 2047 regions)";
    w->key = argv[4];
    if (klen == 3 && !strncmp(kind, "add", 3)) {
        /* An additive counter's increment: a string write that adds instead of replacing. */
        w->kind = EG_KIND_STRING;
        w->add = 1;
        if (argc != 6 || Vk_StringToLongLong(argv[5], &w->delta) != VK_OK)
            return "ERR engram: an increment carries one integer";
        return NULL;
    }
    w->kind = eg_kind_parse(kind, klen);
    if (w->kind < 0) return "ERR engram: the kind is none, string, hash, set, zset or add";
    if (w->kind == EG_KIND_NONE) return argc == 5 ? NULL : "ERR engram: a delete carries nothing";
    if (w->kind == EG_KIND_STRING) {
        /* A key of a ttls pattern carries its deadline (unix ms) after the value. */
        w->value = argc == 6 || argc == 7 ? argv[5] : NULL;
        if (!w->value) return "ERR engram: a string write carries one value, and maybe its deadline";
        if (argc == 7 && (Vk_StringToLongLong(argv[6], &w->deadline) != VK_OK || w->deadline < 1 ||
                          (uint64_t)w->deadline * 1000 >= HLC_LIMIT))
            return "ERR engram: a string's deadline is a positive number of milliseconds (unix time)";
        return NULL;
    }
    int step = w->kind == EG_KIND_SET ? 1 : 2;
    if (argc < 6 || Vk_StringToLongLong(argv[5], &nput) != VK_OK || nput < 0 || 6 + nput * step > argc)
        return "ERR engram: a collection write gives how many elements it puts, then them";
    w->put = argv + 6;
    w->nput = (int)nput;
    w->rem = argv + 6 + nput * step;
    w->nrem = argc - 6 - (int)nput * step;
    if (w->nput + w->nrem == 0) return "ERR engram: a collection write names at least one element";
    for (int i = 0; w->kind == EG_KIND_ZSET && i < w->nput; i++) {
        double score;
        if (Vk_StringToDouble(w->put[i * 2 + 1], &score) != VK_OK || score != score)
            return "ERR engram: a sorted set's score is a number";
    }
    /* lww.Write allows an element once: a write that both puts and removes it says nothing. */
    VkDict *seen = Vk_CreateDict(NULL);
    const char *err = NULL;
    for (int i = 0; i < w->nput + w->nrem && !err; i++) {
        size_t mlen;
        const char *m = Vk_StringPtrLen(i < w->nput ? w->put[i * step] : w->rem[i - w->nput], &mlen);
        if (Vk_DictSetC(seen, (void *)m, mlen, (void *)1) != VK_OK)
            err = "ERR engram: a write names a field or member once";
    }
    Vk_FreeDict(NULL, seen);
    return err;
}

static int from_node(VkCtx *ctx, const char *cmd) {
    if (eg_from_unix_socket(ctx)) return 1;
    char buf[200];
    snprintf(buf, sizeof buf,
             "ERR engram: %s is accepted only from the node, over Valkey's unix socket: a client could "
             "forge stamps",
             cmd);
    Vk_ReplyWithError(ctx, buf);
    return 0;
}

/* ENGRAM.MR.APPLY: a stamped write from another region, or replayed from the journal. Its reply
 * waits for the journal like a write's, so an applier that heard OK knows it is durable. Applying
 * needs no region of its own: a snapshot's scratch Valkey replays a region's journal. */
int eg_cmd_mr_apply(VkCtx *ctx, VkString **argv, int argc) {
    if (!from_node(ctx, "ENGRAM.MR.APPLY")) return VK_OK;
    if (Vk_GetSelectedDb(ctx) != 0) return Vk_ReplyWithError(ctx, "ERR engram: stamped writes are to database 0");
    EgWrite w;
    const char *err = parse_write(argv, argc, &w);
    if (err) return Vk_ReplyWithError(ctx, err);
    eg_hlc_observe(w.stamp.hlc);
    eg_stamps_apply(ctx, &w, 1);
    Vk_ReplicateVerbatim(ctx);
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    if (!eg_active || cl->internal || (Vk_GetContextFlags(ctx) & (VK_CTX_FLAGS_LUA | VK_CTX_FLAGS_MULTI)))
        return Vk_ReplyWithSimpleString(ctx, "OK");
    eg_queue(cl, EG_STATUS, NULL, "OK");
    eg_need_offset(cl);
    return eg_finish(ctx, cl);
}

/* ENGRAM.MR.COLLECT <hlc> <region>: every region has applied every write up to this stamp (the
 * frontier): forget the tombstones at or before it. Replies with the keys forgotten. */
int eg_cmd_mr_collect(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 3) return Vk_WrongArity(ctx);
    if (!from_node(ctx, "ENGRAM.MR.COLLECT")) return VK_OK;
    long long hlc;
    size_t rlen;
    const char *region = Vk_StringPtrLen(argv[2], &rlen);
    if (Vk_StringToLongLong(argv[1], &hlc) != VK_OK || hlc < 0)
        return Vk_ReplyWithError(ctx, "ERR engram: the frontier's clock is a number of microseconds");
    EgStamp frontier = {(uint64_t)hlc, eg_region_intern(region, rlen)};
    if (!frontier.region) return Vk_ReplyWithError(ctx, "ERR engram: the frontier's region is a name");
    long long gone = eg_stamps_collect(frontier);
    Vk_ReplicateVerbatim(ctx); /* replicas forget the same */
    return Vk_ReplyWithLongLong(ctx, gone);
}

/* ENGRAM.MR.CLOCK: a stamp with no write, so that other regions learn this region's clock while it
 * takes no writes (an idle region would otherwise hold every other region's frontier, and with it
 * the collection of tombstones, back). Replicated as ENGRAM.MR.CLOCK <hlc> <region>, which a
 * replica or another region only observes. Replies with the stamp's clock. */
int eg_cmd_mr_clock(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 1 && argc != 3) return Vk_WrongArity(ctx);
    if (!from_node(ctx, "ENGRAM.MR.CLOCK")) return VK_OK;
    /* Replayed (a replica, a snapshot's scratch Valkey, which has no region): only observed. */
    if (argc == 3) {
        long long hlc;
        if (Vk_StringToLongLong(argv[1], &hlc) != VK_OK || hlc < 1 || (uint64_t)hlc >= HLC_LIMIT)
            return Vk_ReplyWithError(ctx, "ERR engram: a stamp's clock is a positive number of microseconds below 2^52");
        eg_hlc_observe((uint64_t)hlc);
        Vk_ReplicateVerbatim(ctx);
        return Vk_ReplyWithLongLong(ctx, hlc);
    }
    if (!eg_region)
        return Vk_ReplyWithError(ctx, "ERR engram: this node is not in multi-region mode (module argument region)");
    uint64_t hlc = hlc_now();
    Vk_Replicate(ctx, "ENGRAM.MR.CLOCK", "lc", (long long)hlc, eg_region);
    return Vk_ReplyWithLongLong(ctx, (long long)hlc);
}

/* ENGRAM.MR.INFO: the region, its clock, and what the stamps hold and cost. */
int eg_cmd_mr_info(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    if (argc != 1) return Vk_WrongArity(ctx);
    EgStampStats st;
    eg_stamps_stats(&st);
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "region:%s\r\nhlc:%llu\r\nstamped_keys:%lld\r\nstamped_elements:%lld\r\ntombstones:%lld\r\n"
                     "stamp_bytes:%lld\r\n",
                     eg_region ? eg_region : "", (unsigned long long)eg_hlc, st.keys, st.elements,
                     st.tombstones, st.bytes);
    return Vk_ReplyWithStringBuffer(ctx, buf, (size_t)(n > 0 && (size_t)n < sizeof buf ? n : 0));
}

/* ---- Expiry ---------------------------------------------------------------------------------- */

static void expired_job(VkCtx *ctx, void *pd) {
    eg_stamps_expired(ctx, pd);
}

static void free_key(void *pd) {
    Vk_FreeString(NULL, pd);
}

/* Valkey expired a key (a keyspace event): once the event is over, delete it as every region does,
 * with a delete stamped at its deadline (stamps.c). */
void eg_mr_expired(VkCtx *ctx, VkString *key) {
    size_t len;
    const char *k = Vk_StringPtrLen(key, &len);
    if (!eg_region || !eg_stamps_deadline(k, len)) return;
    Vk_AddPostNotificationJob(ctx, expired_job, Vk_CreateString(NULL, k, len), free_key);
}

/* ---- Local writes --------------------------------------------------------------------------- */

typedef struct Effect {
    VkString **argv; /* argv[0] is a placeholder for the command name, as parse_write reads it */
    int argc, cap;
} Effect;

static void add(Effect *e, VkString *s) {
    if (e->argc == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 16;
        e->argv = Vk_Realloc(e->argv, (size_t)e->cap * sizeof *e->argv);
    }
    e->argv[e->argc++] = s;
}

static VkString *str(const char *s, size_t len) {
    return Vk_CreateString(NULL, s, len);
}

/* Clocks, counts, deadlines and deltas: all fit a long long (a clock is below 2^52). */
static VkString *num(long long v) {
    char b[32];
    int n = snprintf(b, sizeof b, "%lld", v);
    return str(b, (size_t)n);
}

static void start_as(Effect *e, uint64_t hlc, const char *kind, VkString *key) {
    e->argc = 0;
    add(e, str("ENGRAM.MR.APPLY", 15));
    add(e, num((long long)hlc));
    add(e, str(eg_region, strlen(eg_region)));
    add(e, str(kind, strlen(kind)));
    Vk_RetainString(NULL, key);
    add(e, key);
}

static void start(Effect *e, uint64_t hlc, int kind, VkString *key) {
    start_as(e, hlc, eg_kind_name(kind), key);
}

/* Apply the effect to the stamps (Valkey already holds it) and replicate it. */
static void finish(VkCtx *ctx, Effect *e) {
    EgWrite w;
    const char *err = parse_write(e->argv, e->argc, &w);
    if (!err) {
        eg_stamps_apply(ctx, &w, 0);
        Vk_Replicate(ctx, "ENGRAM.MR.APPLY", "v", e->argv + 1, (size_t)(e->argc - 1));
    } else {
        Vk_Log(ctx, "warning", "engram: a local write's effect was malformed: %s", err);
    }
    for (int i = 0; i < e->argc; i++) Vk_FreeString(NULL, e->argv[i]);
    e->argc = 0;
}

/* The increment of INCR, DECR, INCRBY or DECRBY on an additive counter, or 0 for any other write
 * (which replicates the value it left). */
static int counter_delta(const char *cmd, size_t len, VkString **args, int n, long long *delta) {
    char lower[16];
    if (n < 1 || len >= sizeof lower) return 0;
    eg_lower(lower, sizeof lower, cmd, len);
    size_t klen;
    const char *key = Vk_StringPtrLen(args[0], &klen);
    if (!eg_key_matches(EG_PATTERNS_COUNTERS, key, klen)) return 0;
    long long by = 1;
    if ((!strcmp(lower, "incrby") || !strcmp(lower, "decrby")) &&
        (n < 2 || Vk_StringToLongLong(args[1], &by) != VK_OK))
        return 0;
    if (!strcmp(lower, "incr") || !strcmp(lower, "incrby")) *delta = by;
    else if (!strcmp(lower, "decr") || !strcmp(lower, "decrby")) *delta = -by; /* Valkey refused LLONG_MIN */
    else return 0;
    return 1;
}

/* The key's TTL as a deadline (unix ms), for a key of a ttls pattern; 0: none. */
static long long deadline_of(VkCtx *ctx, VkString *key) {
    size_t klen;
    const char *k = Vk_StringPtrLen(key, &klen);
    if (!eg_key_matches(EG_PATTERNS_TTLS, k, klen)) return 0;
    VkCallReply *r = Vk_Call(ctx, "PEXPIRETIME", "s", key);
    long long at = r && Vk_CallReplyType(r) == VK_REPLY_INTEGER ? Vk_CallReplyInteger(r) : 0;
    if (r) Vk_FreeCallReply(r);
    return at > 0 ? at : 0;
}

static void emit_string(VkCtx *ctx, Effect *e, uint64_t hlc, VkString *key) {
    VkCallReply *r = Vk_Call(ctx, "GET", "s", key);
    if (!r) return;
    int type = Vk_CallReplyType(r);
    if (type == VK_REPLY_STRING) {
        size_t len;
        const char *v = Vk_CallReplyStringPtr(r, &len);
        start(e, hlc, EG_KIND_STRING, key);
        add(e, str(v, len));
        long long deadline = deadline_of(ctx, key);
        if (deadline) add(e, num(deadline));
        finish(ctx, e);
    } else if (type == VK_REPLY_NULL) {
        start(e, hlc, EG_KIND_NONE, key);
        finish(ctx, e);
    }
    Vk_FreeCallReply(r);
}

/* The named elements as the key holds them now: each put with its value, or removed. */
static void emit_elements(VkCtx *ctx, Effect *e, uint64_t hlc, int kind, VkString *key, VkString **members,
                          int n) {
    if (n == 0) return;
    VkDict *seen = Vk_CreateDict(NULL);
    VkString **unique = Vk_Alloc((size_t)n * sizeof *unique);
    int nu = 0;
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *m = Vk_StringPtrLen(members[i], &len);
        if (Vk_DictSetC(seen, (void *)m, len, (void *)1) == VK_OK) unique[nu++] = members[i];
    }
    Vk_FreeDict(NULL, seen);
    const char *query = kind == EG_KIND_HASH ? "HMGET" : kind == EG_KIND_SET ? "SMISMEMBER" : "ZMSCORE";
    VkCallReply *r = Vk_Call(ctx, query, "sv", key, unique, (size_t)nu);
    if (!r || Vk_CallReplyType(r) != VK_REPLY_ARRAY || Vk_CallReplyLength(r) != (size_t)nu) {
        if (r) Vk_FreeCallReply(r);
        Vk_Free(unique);
        return;
    }
    char *is_put = Vk_Calloc((size_t)nu, 1);
    int nput = 0;
    for (int i = 0; i < nu; i++) {
        VkCallReply *x = Vk_CallReplyArrayElement(r, (size_t)i);
        int t = Vk_CallReplyType(x);
        is_put[i] = kind == EG_KIND_SET ? (t == VK_REPLY_INTEGER && Vk_CallReplyInteger(x)) : t == VK_REPLY_STRING;
        nput += is_put[i];
    }
    start(e, hlc, kind, key);
    add(e, num(nput));
    for (int i = 0; i < nu; i++) {
        if (!is_put[i]) continue;
        Vk_RetainString(NULL, unique[i]);
        add(e, unique[i]);
        if (kind == EG_KIND_SET) continue;
        size_t len;
        const char *v = Vk_CallReplyStringPtr(Vk_CallReplyArrayElement(r, (size_t)i), &len);
        add(e, str(v, len));
    }
    for (int i = 0; i < nu; i++) {
        if (is_put[i]) continue;
        Vk_RetainString(NULL, unique[i]);
        add(e, unique[i]);
    }
    finish(ctx, e);
    Vk_Free(is_put);
    Vk_FreeCallReply(r);
    Vk_Free(unique);
}

/* Members named by a reply: a string, or an array (RESP2 ZPOP*: member, score; RESP3: pairs). */
static int reply_members(VkCallReply *r, int pairs, VkString ***out) {
    int t = Vk_CallReplyType(r);
    size_t len;
    if (t == VK_REPLY_STRING) {
        const char *s = Vk_CallReplyStringPtr(r, &len);
        *out = Vk_Alloc(sizeof **out);
        (*out)[0] = str(s, len);
        return 1;
    }
    if (t != VK_REPLY_ARRAY && t != VK_REPLY_SET) return 0;
    size_t n = Vk_CallReplyLength(r);
    *out = Vk_Alloc((n ? n : 1) * sizeof **out);
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        VkCallReply *x = t == VK_REPLY_SET ? Vk_CallReplySetElement(r, i) : Vk_CallReplyArrayElement(r, i);
        if (Vk_CallReplyType(x) == VK_REPLY_ARRAY) x = Vk_CallReplyArrayElement(x, 0);
        else if (pairs && i % 2) continue;
        const char *s = Vk_CallReplyStringPtr(x, &len);
        if (s) (*out)[k++] = str(s, len);
    }
    return k;
}

static void free_members(VkString **m, int n) {
    for (int i = 0; i < n; i++) Vk_FreeString(NULL, m[i]);
    Vk_Free(m);
}

/* Run a supported write on a multi-region primary without replicating it, then replicate its
 * effect, stamped, as ENGRAM.MR.APPLY. Returns the command's reply; NULL when it did not run. */
VkCallReply *eg_mr_call(VkCtx *ctx, const char *cmd, size_t len, VkString **args, int n,
                        const char **refused) {
    int fx = effect_of(cmd, len);
    VkString **before = NULL;
    int nbefore = 0;
    int existed = 0;
    if (fx == FX_TTL && n > 0) {
        /* A converging TTL is part of a string's value (its deadline): other types have none. */
        VkCallReply *t = Vk_Call(ctx, "TYPE", "s", args[0]);
        size_t tlen = 0;
        const char *type = t ? Vk_CallReplyStringPtr(t, &tlen) : NULL;
        existed = type && !(tlen == 4 && !memcmp(type, "none", 4));
        int string = type && tlen == 6 && !memcmp(type, "string", 6);
        if (t) Vk_FreeCallReply(t);
        if (existed && !string) {
            *refused = "ERR engram: a TTL on a multi-region node converges on a string only; this key "
                       "holds another type";
            return NULL;
        }
    }
    if (fx == FX_ZSET_BEFORE && n > 0) {
        VkCallReply *b = Vk_Call(ctx, "ZRANGE", "scc", args[0], "0", "-1");
        if (b) {
            nbefore = reply_members(b, 0, &before);
            Vk_FreeCallReply(b);
        }
    }
    /* A write the filter did not refuse yet whose effect is unknown here (a path around the filter)
     * would change this region alone: it does not run. */
    if (fx < 0) return NULL;
    /* No '!': the effect replicates, not the command. The other flags as cmd_call's. */
    VkCallReply *r = Vk_Call(ctx, cmd, "0ECMv", args, (size_t)n);
    if (!r || Vk_CallReplyType(r) == VK_REPLY_ERROR || n < 1) {
        if (before) free_members(before, nbefore);
        return r;
    }
    uint64_t hlc = hlc_now();
    Effect e = {0};
    VkString *key = args[0];
    long long delta;
    switch (fx) {
    case FX_STRING:
        if (counter_delta(cmd, len, args, n, &delta)) {
            start_as(&e, hlc, "add", key);
            add(&e, num(delta));
            finish(ctx, &e);
        } else {
            emit_string(ctx, &e, hlc, key);
        }
        break;
    case FX_STRING_PAIRS:
        for (int i = 0; i < n; i += 2) emit_string(ctx, &e, hlc, args[i]);
        break;
    case FX_DEL:
        for (int i = 0; i < n; i++) {
            start(&e, hlc, EG_KIND_NONE, args[i]);
            finish(ctx, &e);
        }
        break;
    case FX_HASH_PAIRS: {
        VkString **fields = Vk_Alloc((size_t)n * sizeof *fields);
        int k = 0;
        for (int i = 1; i < n; i += 2) fields[k++] = args[i];
        emit_elements(ctx, &e, hlc, EG_KIND_HASH, key, fields, k);
        Vk_Free(fields);
        break;
    }
    case FX_HASH_ONE:
        emit_elements(ctx, &e, hlc, EG_KIND_HASH, key, args + 1, n > 1 ? 1 : 0);
        break;
    case FX_HASH_ALL:
        emit_elements(ctx, &e, hlc, EG_KIND_HASH, key, args + 1, n - 1);
        break;
    case FX_SET_ALL:
        emit_elements(ctx, &e, hlc, EG_KIND_SET, key, args + 1, n - 1);
        break;
    case FX_ZSET_ALL:
        emit_elements(ctx, &e, hlc, EG_KIND_ZSET, key, args + 1, n - 1);
        break;
    case FX_ZSET_SECOND:
        emit_elements(ctx, &e, hlc, EG_KIND_ZSET, key, args + 2, n > 2 ? 1 : 0);
        break;
    case FX_ZADD: {
        int i = 1;
        while (i < n) {
            const char *o = Vk_StringPtrLen(args[i], NULL);
            if (strcasecmp(o, "nx") && strcasecmp(o, "xx") && strcasecmp(o, "gt") && strcasecmp(o, "lt") &&
                strcasecmp(o, "ch") && strcasecmp(o, "incr"))
                break;
            i++;
        }
        VkString **members = Vk_Alloc((size_t)n * sizeof *members);
        int k = 0;
        for (i = i + 1; i < n; i += 2) members[k++] = args[i];
        emit_elements(ctx, &e, hlc, EG_KIND_ZSET, key, members, k);
        Vk_Free(members);
        break;
    }
    case FX_SET_REPLY:
    case FX_ZSET_REPLY: {
        VkString **members = NULL;
        int k = reply_members(r, fx == FX_ZSET_REPLY, &members);
        emit_elements(ctx, &e, hlc, fx == FX_SET_REPLY ? EG_KIND_SET : EG_KIND_ZSET, key, members, k);
        if (members) free_members(members, k);
        break;
    }
    case FX_ZSET_BEFORE:
        emit_elements(ctx, &e, hlc, EG_KIND_ZSET, key, before, nbefore);
        break;
    case FX_TTL:
        /* The value with its new deadline; an EXPIRE into the past deleted the key. Nothing when it
         * held nothing: a delete would win over concurrent writes the command never saw. */
        if (existed) emit_string(ctx, &e, hlc, key);
        break;
    }
    if (before) free_members(before, nbefore);
    Vk_Free(e.argv);
    return r;
}

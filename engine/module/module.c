/* Engram's Valkey module: load, configuration, the command table and the commands.
 *
 * The filter (filter.c) rewrites commands into the wrappers below; a wrapper runs the real
 * command with Call on the client's behalf and puts its reply in the client's queue
 * (replies.c), which the commit signal (commit.c) releases. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engram.h"

#define VK_DEFINE(ret, name, params) ret(*Vk_##name) params;
VK_API(VK_DEFINE)
#undef VK_DEFINE

long long eg_commit_timeout_ms = 5000;
long long eg_max_queued_bytes = 4LL << 20;
long long eg_iter = 0;
int eg_active = 1;
int eg_managed = 0;
VkString *eg_wrappers[2][EG_W_COUNT];
VkCtx *eg_ctx;

#define EG_WRAPPER_ACL_CATEGORIES                                                                  \
    "read write keyspace string list set sortedset hash stream bitmap hyperloglog geo scripting " \
    "transaction blocking pubsub connection fast"

static VkDict *command_classes; /* lower-case "name" or "container|sub" -> class + 1 */

int vk_resolve_api(VkCtx *ctx) {
    /* The server puts its GetApi function first in every module's load context. */
    void *getapi = ((void **)ctx)[0];
    int (*get_api)(const char *, void *) = (int (*)(const char *, void *))(uintptr_t)getapi;
    int missing = 0;
#define VK_RESOLVE(ret, name, params) \
    if (get_api("ValkeyModule_" #name, (void *)&Vk_##name) != VK_OK) missing++;
    VK_API(VK_RESOLVE)
#undef VK_RESOLVE
    return missing ? VK_ERR : VK_OK;
}

char *eg_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = Vk_Alloc(n);
    memcpy(p, s, n);
    return p;
}

/* ---- The command table ------------------------------------------------------------------ */

size_t eg_lower(char *out, size_t cap, const char *s, size_t len) {
    if (len >= cap) len = cap - 1;
    for (size_t i = 0; i < len; i++) out[i] = (char)tolower((unsigned char)s[i]);
    out[len] = 0;
    return len;
}

static void add_class(const char *name, size_t len, int cls) {
    char buf[128];
    size_t n = eg_lower(buf, sizeof buf, name, len);
    intptr_t old = (intptr_t)Vk_DictGetC(command_classes, buf, n, NULL);
    int merged = (old ? (int)old - 1 : 0) | cls;
    Vk_DictReplaceC(command_classes, buf, n, (void *)(intptr_t)(merged + 1));
}

static int has_flag(VkCallReply *flags, const char *flag) {
    size_t n = Vk_CallReplyLength(flags), want = strlen(flag);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *f = Vk_CallReplyStringPtr(Vk_CallReplyArrayElement(flags, i), &len);
        if (f && len == want && !memcmp(f, flag, len)) return 1;
    }
    return 0;
}

static void load_command(VkCallReply *c) {
    size_t len;
    const char *name = Vk_CallReplyStringPtr(Vk_CallReplyArrayElement(c, 0), &len);
    VkCallReply *flags = Vk_CallReplyArrayElement(c, 2);
    int cls = 0;
    if (has_flag(flags, "write")) cls |= EG_CMD_WRITE;
    if (has_flag(flags, "blocking")) cls |= EG_CMD_BLOCKING;
    if (has_flag(flags, "no_multi")) cls |= EG_CMD_NO_MULTI;
    /* DBSIZE, KEYS, SCAN, RANDOMKEY: no key to look up as dirty, yet they see every write. */
    if (Vk_CallReplyLength(c) > 6 && has_flag(flags, "readonly") &&
        has_flag(Vk_CallReplyArrayElement(c, 6), "@keyspace") &&
        Vk_CallReplyInteger(Vk_CallReplyArrayElement(c, 3)) == 0)
        cls |= EG_CMD_KEYSPACE_READ;
    if (Vk_CallReplyLength(c) > 9) {
        VkCallReply *subs = Vk_CallReplyArrayElement(c, 9);
        size_t nsubs = Vk_CallReplyLength(subs);
        if (nsubs) cls |= EG_CMD_CONTAINER;
        for (size_t i = 0; i < nsubs; i++) load_command(Vk_CallReplyArrayElement(subs, i));
    }
    add_class(name, len, cls);
}

static void load_command_table(VkCtx *ctx) {
    command_classes = Vk_CreateDict(NULL);
    VkCallReply *all = Vk_Call(ctx, "COMMAND", "");
    size_t n = all ? Vk_CallReplyLength(all) : 0;
    for (size_t i = 0; i < n; i++) load_command(Vk_CallReplyArrayElement(all, i));
    if (all) Vk_FreeCallReply(all);
    /* Scripts may write: their replies wait like a write's. */
    static const char *scripts[] = {"eval", "evalsha", "fcall", NULL};
    for (int i = 0; scripts[i]; i++) add_class(scripts[i], strlen(scripts[i]), EG_CMD_WRITE);
    /* Commands that act on the calling connection itself, which Call would run on a
     * temporary client instead, or that must get through while a script is busy. */
    static const char *native[] = {
        "hello", "auth", "reset", "quit", "client", "subscribe", "unsubscribe", "psubscribe",
        "punsubscribe", "ssubscribe", "sunsubscribe", "monitor", "sync", "psync", "replconf",
        "readonly", "readwrite", "asking", "wait", "waitaof", "shutdown", "failover", "replicaof",
        "slaveof", "script|kill", "function|kill", NULL};
    for (int i = 0; native[i]; i++) add_class(native[i], strlen(native[i]), EG_CMD_NATIVE);
    static const char *tx[] = {"multi", "exec", "discard", "watch", "unwatch", NULL};
    for (int i = 0; tx[i]; i++) add_class(tx[i], strlen(tx[i]), EG_CMD_TX);
    add_class("select", 6, EG_CMD_SELECT);
    add_class("acl|setuser", 11, EG_CMD_USERS);
    add_class("acl|deluser", 11, EG_CMD_USERS);
}

int eg_command_class(const char *name, size_t len, VkString *sub) {
    char buf[160];
    size_t n = eg_lower(buf, 64, name, len);
    intptr_t cls = (intptr_t)Vk_DictGetC(command_classes, buf, n, NULL);
    if (!cls) return 0;
    int result = (int)cls - 1;
    if ((result & EG_CMD_CONTAINER) && sub) {
        size_t sublen;
        const char *s = Vk_StringPtrLen(sub, &sublen);
        buf[n] = '|';
        size_t m = n + 1 + eg_lower(buf + n + 1, sizeof buf - n - 1, s, sublen);
        intptr_t subcls = (intptr_t)Vk_DictGetC(command_classes, buf, m, NULL);
        if (subcls) result = ((int)subcls - 1) | (result & EG_CMD_NATIVE);
    }
    return result;
}

/* ---- Wrappers ---------------------------------------------------------------------------- */

static int in_script_or_multi(VkCtx *ctx) {
    return (Vk_GetContextFlags(ctx) & (VK_CTX_FLAGS_LUA | VK_CTX_FLAGS_MULTI)) != 0;
}

/* ENGRAM.W / ENGRAM.R <command> <args...>: run the command now, queue its reply. */
static int cmd_call(VkCtx *ctx, VkString **argv, int argc, int is_write) {
    if (argc < 2) return Vk_WrongArity(ctx);
    size_t len;
    const char *cmd = Vk_StringPtrLen(argv[1], &len);
    int cls = eg_command_class(cmd, len, argc > 2 ? argv[2] : NULL);
    if (in_script_or_multi(ctx)) {
        /* Inside a script the script's own reply is what waits; run the command as it is. */
        VkCallReply *r = Vk_Call(ctx, cmd, is_write ? "!0EC" : "0EC", argv + 2, (size_t)(argc - 2));
        char *missing = eg_gap_error(ctx, r, cmd, len, argv + 2, argc - 2);
        if (missing) {
            Vk_ReplyWithError(ctx, missing);
            Vk_Free(missing);
            return VK_OK;
        }
        if (!r) return Vk_ReplyWithError(ctx, "ERR engram: the command could not be run");
        Vk_ReplyWithCallReply(ctx, r);
        Vk_FreeCallReply(r);
        return VK_OK;
    }
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    /* ! replicates the effects, 0 answers in the client's protocol, E returns errors as replies
     * (so they keep their place in the queue), C checks the client's ACL on the real command,
     * M refuses deny-oom commands over maxmemory, K lets a blocking command block. */
    const char *fmt = is_write ? ((cls & EG_CMD_BLOCKING) ? "!0ECMKv" : "!0ECMv")
                               : ((cls & EG_CMD_BLOCKING) ? "0ECKv" : "0ECv");
    VkCallReply *r;
    if (is_write && eg_region) {
        /* A multi-region primary replicates the write's stamped effect (region.c). Its stamps know
         * keys by name alone, so writes go to database 0, the only one a cluster has. */
        if (Vk_GetSelectedDb(ctx) != 0) {
            eg_queue(cl, EG_ERROR, NULL, "ERR engram: a multi-region node takes writes in database 0 only");
            return eg_finish(ctx, cl);
        }
        const char *refused = NULL;
        r = eg_mr_call(ctx, cmd, len, argv + 2, argc - 2, &refused);
        if (refused) {
            eg_queue(cl, EG_ERROR, NULL, refused);
            return eg_finish(ctx, cl);
        }
    } else {
        r = Vk_Call(ctx, cmd, fmt, argv + 2, (size_t)(argc - 2));
    }
    char *missing = eg_gap_error(ctx, r, cmd, len, argv + 2, argc - 2);
    if (missing) {
        eg_queue(cl, EG_ERROR, NULL, missing);
        Vk_Free(missing);
        return eg_finish(ctx, cl);
    }
    if (!r) {
        eg_queue(cl, EG_ERROR, NULL, "ERR engram: the command could not be run");
        return eg_finish(ctx, cl);
    }
    if (Vk_CallReplyType(r) == VK_REPLY_PROMISE) return eg_block_for_promise(ctx, cl, r);
    if (is_write) eg_migration_called(cmd, len, r);
    eg_queue(cl, EG_CALL, r, NULL);
    if (is_write || ((cls & EG_CMD_KEYSPACE_READ) && eg_dirty_any())) {
        eg_need_offset(cl); /* waits for everything run so far */
    } else if (eg_dirty_any()) {
        int unassigned = 0;
        long long target = eg_dirty_target(argv + 1, argc - 1, &unassigned);
        if (unassigned)
            eg_need_offset(cl);
        else
            eg_need_target(cl, target);
    }
    return eg_finish(ctx, cl);
}

static int cmd_write(VkCtx *ctx, VkString **argv, int argc) {
    return cmd_call(ctx, argv, argc, 1);
}

static int cmd_read(VkCtx *ctx, VkString **argv, int argc) {
    return cmd_call(ctx, argv, argc, 0);
}

/* ENGRAM.X CLIENT REPLY <mode>, emulated (acl.c): behind queued replies, or on a connection that
 * may not have authenticated. Its reply (+OK for ON, or an error) takes its place in the queue,
 * or goes out at once when nothing waits, so that what follows may run natively. */
static int client_reply(VkCtx *ctx, EgClient *cl, VkString **argv, int argc) {
    int queued = cl->head != NULL;
    VkCallReply *denied = Vk_Call(ctx, "CLIENT", "DCEv", argv + 2, (size_t)(argc - 2));
    const char *error = NULL;
    if (denied && Vk_CallReplyType(denied) == VK_REPLY_ERROR) {
        if (queued) {
            eg_queue(cl, EG_CALL, denied, NULL);
            return eg_finish(ctx, cl);
        }
        if (!eg_silenced(cl)) Vk_ReplyWithCallReply(ctx, denied);
        Vk_FreeCallReply(denied);
        return VK_OK;
    }
    if (denied) Vk_FreeCallReply(denied);
    const char *mode = Vk_StringPtrLen(argv[3], NULL);
    if (strcasecmp(mode, "on") && strcasecmp(mode, "off") && strcasecmp(mode, "skip")) {
        error = "ERR syntax error";
    } else {
        eg_client_reply_apply(cl, mode);
        cl->reply_desync = cl->reply_off || cl->skip_next; /* Valkey's own flag is not set */
    }
    int ok = !error && !strcasecmp(mode, "on"); /* ON replies, after it turned replies on */
    if (queued) {
        if (error) eg_queue(cl, EG_ERROR, NULL, error);
        if (ok) eg_queue(cl, EG_STATUS, NULL, "OK");
        return eg_finish(ctx, cl);
    }
    if (error && !eg_silenced(cl)) return Vk_ReplyWithError(ctx, error);
    if (ok) return Vk_ReplyWithSimpleString(ctx, "OK");
    return VK_OK;
}

/* ENGRAM.X <command> ...: a command that acts on the connection itself arrived behind replies
 * that wait for a commit. Run later it would answer out of order, run now its reply would
 * overtake theirs: it is refused in order instead, after the checks Valkey makes first (arity,
 * the user's rights). CLIENT REPLY is emulated in order (acl.c). */
static int cmd_native(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 2) return Vk_WrongArity(ctx);
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    char buf[256];
    char name[64];
    size_t len;
    const char *cmd = Vk_StringPtrLen(argv[1], &len);
    eg_lower(name, sizeof name, cmd, len);
    if (!strcmp(name, "client") && argc > 2 && !strcasecmp(Vk_StringPtrLen(argv[2], NULL), "reply"))
        return client_reply(ctx, cl, argv, argc);
    VkCallReply *denied = Vk_Call(ctx, name, "DCEv", argv + 2, (size_t)(argc - 2));
    if (denied && Vk_CallReplyType(denied) == VK_REPLY_ERROR) {
        eg_queue(cl, EG_CALL, denied, NULL);
        return eg_finish(ctx, cl);
    }
    if (denied) Vk_FreeCallReply(denied);
    int refused = eg_is_refused_client_setting(argv + 1, argc - 1);
    if (refused)
        snprintf(buf, sizeof buf,
                 "ERR engram: CLIENT TRACKING is not supported yet; an invalidation could overtake "
                 "a read that waits for a commit");
    else
        snprintf(buf, sizeof buf,
                 "ERR engram: '%s' cannot follow pipelined commands whose replies wait for a commit; "
                 "send it after their replies arrive",
                 name);
    eg_queue(cl, EG_ERROR, NULL, buf);
    return eg_finish(ctx, cl);
}

/* ENGRAM.SELECT SELECT <db>: SELECT on the real client, its reply in order. */
static int cmd_select(VkCtx *ctx, VkString **argv, int argc) {
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    long long db;
    /* The user's right to SELECT, as Valkey would check it. */
    VkCallReply *denied = argc > 1 ? Vk_Call(ctx, "SELECT", "DCEv", argv + 2, (size_t)(argc - 2)) : NULL;
    if (denied && Vk_CallReplyType(denied) == VK_REPLY_ERROR) {
        eg_queue(cl, EG_CALL, denied, NULL);
        return eg_finish(ctx, cl);
    }
    if (denied) Vk_FreeCallReply(denied);
    if (argc != 3)
        eg_queue(cl, EG_ERROR, NULL, "ERR wrong number of arguments for 'select' command");
    else if (Vk_StringToLongLong(argv[2], &db) != VK_OK || db < 0 || db > 0x7fffffff)
        eg_queue(cl, EG_ERROR, NULL, "ERR value is not an integer or out of range");
    else if (Vk_SelectDb(ctx, (int)db) != VK_OK)
        eg_queue(cl, EG_ERROR, NULL, "ERR DB index is out of range");
    else
        eg_queue(cl, EG_STATUS, NULL, "OK");
    return eg_finish(ctx, cl);
}

static VkCmdFunc wrapper_fn[EG_W_COUNT];

/* A ".auth" twin: Valkey let it run, so the connection has authenticated (acl.c); then the
 * wrapper it stands for. */
static int cmd_twin(VkCtx *ctx, VkString **argv, int argc) {
    size_t len;
    const char *name = Vk_StringPtrLen(argv[0], &len);
    eg_auth_proven(eg_client(Vk_GetClientId(ctx), 1));
    len -= 5; /* ".auth" */
    for (int i = 0; i < EG_W_COUNT; i++) {
        size_t n;
        const char *w = Vk_StringPtrLen(eg_wrappers[0][i], &n);
        if (n == len && !strncasecmp(name, w, n)) return wrapper_fn[i](ctx, argv, argc);
    }
    return Vk_ReplyWithError(ctx, "ERR engram: unknown wrapper");
}

/* ---- Control commands ------------------------------------------------------------------- */

/* ENGRAM.STEPDOWN <reason>: the node lost leadership; no held reply can be confirmed now. */
static int cmd_stepdown(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 2) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx))
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.STEPDOWN is accepted only from the node, over "
                                      "Valkey's unix socket");
    char reason[256];
    eg_join_args(argv, 1, argc, reason, sizeof reason);
    eg_fail_all(reason);
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

/* ENGRAM.COMMITTIMEOUT [ms]: read or set how long a reply waits for its commit. */
static int cmd_committimeout(VkCtx *ctx, VkString **argv, int argc) {
    if (argc > 2) return Vk_WrongArity(ctx);
    if (argc == 2) {
        if (!eg_from_unix_socket(ctx))
            return Vk_ReplyWithError(ctx,
                                     "ERR engram: the commit timeout is set only over Valkey's unix socket");
        long long ms;
        if (Vk_StringToLongLong(argv[1], &ms) != VK_OK || ms < 1)
            return Vk_ReplyWithError(ctx,
                                     "ERR engram: the commit timeout is a positive number of milliseconds");
        eg_commit_timeout_ms = ms;
    }
    return Vk_ReplyWithLongLong(ctx, eg_commit_timeout_ms);
}

/* ENGRAM.INFO: the module's state, one field a line. */
static int cmd_info(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    if (argc != 1) return Vk_WrongArity(ctx);
    EgStats st;
    eg_replies_stats(&st);
    eg_users_stats(&st);
    char buf[2048];
    int n = snprintf(buf, sizeof buf,
                     "active:%d\r\ncommitted_offset:%lld\r\ndirty_keys:%lld\r\ntracked_clients:%lld\r\n"
                     "blocked_clients:%lld\r\nqueued_reply_bytes:%lld\r\ncommit_timeout_ms:%lld\r\n"
                     "blocks:%lld\r\nearly_blocks:%lld\r\nreplies_released:%lld\r\ncommit_timeouts:%lld\r\n"
                     "replies_failed:%lld\r\nuser_changes_pending:%lld\r\nuser_changes_done:%lld\r\n",
                     eg_active, eg_committed, eg_dirty_count(), st.clients, st.blocked, st.queued_bytes,
                     eg_commit_timeout_ms, st.blocks, st.early_blocks, st.emitted, st.timeouts, st.failed,
                     st.users_pending, st.users_done);
    if (n > 0 && (size_t)n < sizeof buf) n += eg_commit_wait_info(buf + n, sizeof buf - (size_t)n);
    if (n > 0 && (size_t)n < sizeof buf) n += eg_control_info(buf + n, sizeof buf - (size_t)n);
    if (n > 0 && (size_t)n < sizeof buf) n += eg_migration_info(buf + n, sizeof buf - (size_t)n);
    if (n < 0 || (size_t)n >= sizeof buf) n = (int)strlen(buf);
    return Vk_ReplyWithStringBuffer(ctx, buf, (size_t)n);
}

static int cmd_clients(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    if (argc != 1) return Vk_WrongArity(ctx);
    return eg_reply_clients(ctx);
}

/* ---- Server events ---------------------------------------------------------------------- */

static void on_event_loop(VkCtx *ctx, VkEvent e, uint64_t sub, void *data) {
    (void)e;
    (void)data;
    eg_iter++;
    if (sub != VK_SUBEVENT_BEFORE_SLEEP) return;
    long long offset = -1;
    if (eg_unassigned_pending()) {
        offset = eg_current_offset(ctx);
        eg_dirty_assign(offset);
    }
    eg_before_sleep_clients(ctx, offset);
    eg_dirty_release(eg_committed);
    eg_release_ready();
}

static void on_client_change(VkCtx *ctx, VkEvent e, uint64_t sub, void *data) {
    (void)ctx;
    (void)e;
    if (sub == VK_SUBEVENT_CLIENT_DISCONNECTED) eg_client_gone(((VkClientInfo *)data)->id);
}

static void on_role_change(VkCtx *ctx, VkEvent e, uint64_t sub, void *data) {
    (void)ctx;
    (void)e;
    (void)data;
    eg_on_valkey_role(sub == VK_SUBEVENT_NOW_PRIMARY);
}

static void on_flush(VkCtx *ctx, VkEvent e, uint64_t sub, void *data) {
    (void)ctx;
    (void)e;
    (void)sub;
    (void)data;
    eg_dirty_flushed();
    /* The keyspace is emptied (or about to be replaced by an RDB, whose aux field brings its own
     * stamps): stamps of keys that are gone would decide writes to come. */
    eg_stamps_clear();
}

static int keyspace_event(VkCtx *ctx, int type, const char *event, VkString *key) {
    return eg_on_keyspace(ctx, type, event, key);
}

/* ---- Configuration ---------------------------------------------------------------------- */

static long long get_numeric(const char *name, void *priv) {
    (void)name;
    return *(long long *)priv;
}

static int set_numeric(const char *name, long long val, void *priv, VkString **err) {
    (void)name;
    (void)err;
    *(long long *)priv = val;
    return VK_OK;
}

static int get_bool(const char *name, void *priv) {
    (void)name;
    return *(int *)priv;
}

static int set_bool(const char *name, int val, void *priv, VkString **err) {
    (void)name;
    (void)err;
    *(int *)priv = val;
    return VK_OK;
}

static int register_configs(VkCtx *ctx) {
    /* engram.managed: a node owns this Valkey and will push its role; until then nothing runs
     * that the node has not allowed. Set at startup only: turning it off under running clients
     * would drop every check. */
    if (Vk_RegisterBoolConfig(ctx, "managed", 0, VK_CONFIG_IMMUTABLE, get_bool, set_bool, NULL, &eg_managed) !=
        VK_OK)
        return VK_ERR;
    if (Vk_RegisterNumericConfig(ctx, "commit-timeout-ms", 5000, VK_CONFIG_DEFAULT, 1, 86400000LL,
                                 get_numeric, set_numeric, NULL, &eg_commit_timeout_ms) != VK_OK)
        return VK_ERR;
    if (Vk_RegisterNumericConfig(ctx, "max-queued-bytes", 4LL << 20, VK_CONFIG_DEFAULT, 1024, 1LL << 40,
                                 get_numeric, set_numeric, NULL, &eg_max_queued_bytes) != VK_OK)
        return VK_ERR;
    return Vk_LoadConfigs(ctx);
}

/* Module arguments: commit-timeout-ms <ms>, max-queued-bytes <n>, managed 0|1, region <name>,
 * counters <glob> and ttls <glob> (any number). */
static int parse_args(VkCtx *ctx, VkString **argv, int argc) {
    for (int i = 0; i < argc; i += 2) {
        const char *key = Vk_StringPtrLen(argv[i], NULL);
        long long v;
        if (!strcasecmp(key, "region")) {
            /* Multi-region mode (region.c): writes are stamped, and only mergeable ones run. */
            size_t n = 0;
            const char *name = i + 1 < argc ? Vk_StringPtrLen(argv[i + 1], &n) : "";
            if (!n || eg_region || eg_region_set(name) != VK_OK) {
                Vk_Log(ctx, "warning", "engram: module argument 'region' takes the region's name, once");
                return VK_ERR;
            }
            continue;
        }
        if (!strcasecmp(key, "counters") || !strcasecmp(key, "ttls")) {
            /* Keys matching these globs are additive counters, or keep converging TTLs, in
             * multi-region mode (patterns.c). */
            size_t n = 0;
            const char *glob = i + 1 < argc ? Vk_StringPtrLen(argv[i + 1], &n) : "";
            int list = strcasecmp(key, "ttls") ? EG_PATTERNS_COUNTERS : EG_PATTERNS_TTLS;
            if (eg_patterns_add(list, glob, n) != VK_OK) {
                Vk_Log(ctx, "warning", "engram: module argument '%s' takes a key pattern (at most 64)", key);
                return VK_ERR;
            }
            continue;
        }
        if (!strcasecmp(key, "managed")) {
            const char *val = i + 1 < argc ? Vk_StringPtrLen(argv[i + 1], NULL) : "";
            if (!strcmp(val, "1") || !strcasecmp(val, "yes")) {
                eg_managed = 1;
            } else if (!strcmp(val, "0") || !strcasecmp(val, "no")) {
                eg_managed = 0;
            } else {
                Vk_Log(ctx, "warning", "engram: module argument 'managed' takes 1 or 0 (yes or no)");
                return VK_ERR;
            }
            continue;
        }
        if (i + 1 >= argc || Vk_StringToLongLong(argv[i + 1], &v) != VK_OK || v < 1) {
            Vk_Log(ctx, "warning", "engram: module argument '%s' needs a positive integer value", key);
            return VK_ERR;
        }
        if (!strcasecmp(key, "commit-timeout-ms")) {
            eg_commit_timeout_ms = v;
        } else if (!strcasecmp(key, "max-queued-bytes")) {
            eg_max_queued_bytes = v;
        } else {
            Vk_Log(ctx, "warning", "engram: unknown module argument '%s'", key);
            return VK_ERR;
        }
    }
    return VK_OK;
}

__attribute__((visibility("default"))) int ValkeyModule_OnLoad(VkCtx *ctx, VkString **argv, int argc);
__attribute__((visibility("default"))) int ValkeyModule_OnUnload(VkCtx *ctx);

/* Unloading would strand every held reply and drop the commit gate under running clients. */
int ValkeyModule_OnUnload(VkCtx *ctx) {
    Vk_Log(ctx, "warning", "engram: the module cannot be unloaded; restart valkey-server without it");
    return VK_ERR;
}

int ValkeyModule_OnLoad(VkCtx *ctx, VkString **argv, int argc) {
    if (vk_resolve_api(ctx) != VK_OK) return VK_ERR;
    if (Vk_IsModuleNameBusy("engram")) return VK_ERR;
    Vk_SetModuleAttribs(ctx, "engram", 1, VK_APIVER_1);
    if (register_configs(ctx) != VK_OK || parse_args(ctx, argv, argc) != VK_OK) return VK_ERR;

    /* Wrappers are flagged neither write nor deny-oom: the server would refuse them before they
     * run (READONLY, OOM...) and that refusal would overtake the queued replies. The real
     * command's checks run inside Call, and its refusal takes its place in the queue. */
    struct {
        const char *name;
        VkCmdFunc fn;
        const char *flags;
    } commands[] = {
        {"engram.stepdown", cmd_stepdown, "admin fast"},
        {"engram.internal", eg_cmd_internal, "admin fast deny-script no-auth"},
        {"engram.role", eg_cmd_role, "admin fast deny-script"},
        {"engram.lease", eg_cmd_lease, "admin fast deny-script"},
        {"engram.topology", eg_cmd_topology, "admin deny-script"},
        {"engram.loadrdb", eg_cmd_loadrdb, "admin deny-script"},
        {"engram.committimeout", cmd_committimeout, "admin fast"},
        {"engram.info", cmd_info, "readonly fast"},
        {"engram.migration", eg_cmd_migration, "admin fast deny-script"},
        {"engram.clients", cmd_clients, "readonly"},
        {"engram.users.pending", eg_cmd_users_pending, "admin fast deny-script"},
        {"engram.users.done", eg_cmd_users_done, "admin fast deny-script"},
        {"engram.users.apply", eg_cmd_users_apply, "admin deny-script"},
        {"engram.users.declare", eg_cmd_users_declare, "admin fast deny-script"},
        {"engram.mr.apply", eg_cmd_mr_apply, "write deny-oom deny-script"},
        {"engram.mr.collect", eg_cmd_mr_collect, "write deny-script"},
        {"engram.mr.clock", eg_cmd_mr_clock, "write deny-script"},
        {"engram.mr.info", eg_cmd_mr_info, "readonly fast"},
    };
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (Vk_CreateCommand(ctx, commands[i].name, commands[i].fn, commands[i].flags, 0, 0, 0) != VK_OK)
            return VK_ERR;
    /* A wrapper is only the vehicle: the user's rights are checked on the real command inside it
     * (Call's C flag, with Valkey's own NOPERM message and ACL LOG entry). Each wrapper comes in
     * two forms (acl.c): "no-auth", which Valkey's ACL command check skips, for connections known
     * to be authenticated; and the ".auth" twin, checked as any command, for default-user
     * connections while the default user has a password. The twin belongs to every category a
     * wrapped command can come from and to none that users usually take away (@dangerous, @admin,
     * @slow: hence "fast"), so a default user granted +@read +@write needs nothing more. */
    static const struct {
        const char *name;
        VkCmdFunc fn;
        const char *flags;
    } wrappers[EG_W_COUNT] = {
        [EG_W_WRITE] = {"engram.w", cmd_write, "may-replicate fast"},
        [EG_W_READ] = {"engram.r", cmd_read, "readonly fast"},
        [EG_W_NATIVE] = {"engram.x", cmd_native, "readonly fast"},
        [EG_W_SELECT] = {"engram.select", cmd_select, "readonly fast"},
        [EG_W_TX] = {"engram.tx", eg_cmd_tx, "may-replicate fast"},
        [EG_W_REFUSE] = {"engram.refuse", eg_cmd_refuse, "readonly fast"},
        [EG_W_CLUSTER] = {"engram.cluster", eg_cmd_cluster, "readonly fast"},
        [EG_W_USERS] = {"engram.users", eg_cmd_users, "fast"},
    };
    for (int i = 0; i < EG_W_COUNT; i++) {
        char name[64], flags[64];
        snprintf(flags, sizeof flags, "%s no-auth", wrappers[i].flags);
        if (Vk_CreateCommand(ctx, wrappers[i].name, wrappers[i].fn, flags, 0, 0, 0) != VK_OK) return VK_ERR;
        snprintf(name, sizeof name, "%s.auth", wrappers[i].name);
        if (Vk_CreateCommand(ctx, name, cmd_twin, wrappers[i].flags, 0, 0, 0) != VK_OK) return VK_ERR;
        wrapper_fn[i] = wrappers[i].fn;
        VkCommand *twin = Vk_GetCommand(ctx, name);
        if (!twin || Vk_SetCommandACLCategories(twin, EG_WRAPPER_ACL_CATEGORIES) != VK_OK) return VK_ERR;
        eg_wrappers[0][i] = Vk_CreateString(NULL, wrappers[i].name, strlen(wrappers[i].name));
        eg_wrappers[1][i] = Vk_CreateString(NULL, name, strlen(name));
    }
    eg_ctx = Vk_GetDetachedThreadSafeContext(ctx);

    if (eg_stamps_register(ctx) != VK_OK) return VK_ERR;
    load_command_table(ctx);
    eg_users_init();
    eg_dirty_init();
    eg_crc16_init();
    eg_active = !(Vk_GetContextFlags(ctx) & VK_CTX_FLAGS_REPLICA);
    eg_valkey_replica = !eg_active;
    if (eg_managed) eg_fail_closed();
    if (!Vk_RegisterCommandFilter(ctx, eg_filter, VK_CMDFILTER_NOSELF)) return VK_ERR;
    Vk_SubscribeToKeyspaceEvents(ctx, VK_NOTIFY_DATA, keyspace_event);
    Vk_SubscribeToServerEvent(ctx, (VkEvent){VK_EVENT_EVENTLOOP, 1}, on_event_loop);
    Vk_SubscribeToServerEvent(ctx, (VkEvent){VK_EVENT_CLIENT_CHANGE, 1}, on_client_change);
    Vk_SubscribeToServerEvent(ctx, (VkEvent){VK_EVENT_ROLE_CHANGED, 1}, on_role_change);
    Vk_SubscribeToServerEvent(ctx, (VkEvent){VK_EVENT_FLUSHDB, 1}, on_flush);
    return VK_OK;
}

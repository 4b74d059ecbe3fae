/* The cluster protocol, for clients that connect to Valkey directly while Valkey runs standalone:
 * slot and role checks in the command filter, and READONLY, READWRITE, ASKING and CLUSTER answered
 * by the module, from the state the node pushed (control.c).
 *
 * Slots moving between shards (MIGRATING, IMPORTING, ASK, TRYAGAIN) are migration.c's.
 * The checks mirror the node's front door (engram.frontdoor.server.FrontDoor.admission) and its
 * error texts. The filter cannot reply: a refused command is rewritten into ENGRAM.REFUSE, which
 * replies at once or, behind replies that wait for a commit, takes its place in the queue. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "engram.h"

#define CROSSSLOT "CROSSSLOT Keys in request don't hash to the same slot"
#define SLOT_MAP_UNKNOWN "CLUSTERDOWN the slot map is not known yet"
#define READONLY_REPLICA "READONLY You can't write against a read only replica."

static int is(const char *name, size_t len, const char *want) {
    return len == strlen(want) && !strncasecmp(name, want, len);
}

/* ---- The checks, in the command filter ----------------------------------------------------- */

void eg_refuse(VkFilterCtx *f, EgClient *cl, const char *text) {
    Vk_CommandFilterArgInsert(f, 0, Vk_CreateString(NULL, text, strlen(text)));
    VkString *wrapper = eg_wrapper(cl, EG_W_REFUSE);
    Vk_RetainString(NULL, wrapper);
    Vk_CommandFilterArgInsert(f, 0, wrapper);
}

/* The slot of the command's keys, -1 without keys, -2 when they hash to different slots. */
static int command_slot(VkFilterCtx *f, int argc) {
    VkString *stack[64], **argv = argc <= 64 ? stack : Vk_Alloc(sizeof(*argv) * (size_t)argc);
    for (int i = 0; i < argc; i++) argv[i] = Vk_CommandFilterArgGet(f, i);
    int nkeys = 0, slot = -1;
    int *pos = Vk_GetCommandKeysWithFlags(NULL, argv, argc, &nkeys, NULL);
    for (int i = 0; pos && i < nkeys; i++) {
        size_t len;
        const char *key = Vk_StringPtrLen(argv[pos[i]], &len);
        int s = eg_key_slot(key, len);
        if (slot >= 0 && s != slot) {
            slot = -2;
            break;
        }
        slot = s;
    }
    if (pos) Vk_Free(pos);
    if (argv != stack) Vk_Free(argv);
    return slot;
}

/* The refusal of this command under the pushed state, or NULL when it may run. */
static const char *refusal(VkFilterCtx *f, EgClient *cl, const char *name, size_t len, int argc, int cls,
                           char *buf, size_t cap) {
    /* EXEC runs what was queued: it is checked on the transaction's slot and writes. */
    int exec = cl->in_tx && cl->tx_n > 0 && is(name, len, "exec");
    /* ASKING lasts one command, or a whole transaction (MULTI keeps it, EXEC ends it), as in
     * Valkey. MIGRATE sends RESTORE without it (the source runs standalone): RESTORE counts. */
    int asking = cl->asking || is(name, len, "restore") || is(name, len, "restore-asking");
    if ((!cl->in_tx || exec) && !is(name, len, "multi")) cl->asking = 0;
    int migrate = is(name, len, "migrate");
    int slot = exec ? cl->tx_slot - 1 : migrate ? -1 : command_slot(f, argc);
    int write = exec ? cl->tx_writes : (cls & EG_CMD_WRITE) != 0;
    if (slot == -2) return CROSSSLOT;
    EgTopology *t = eg_topology;
    int moving_out = 0;
    if (migrate && eg_active) {
        const char *why = eg_migrate_refusal(f, argc, buf, cap);
        if (why) return why;
    }
    if (slot >= 0) {
        if (!t || !t->slots_known) return SLOT_MAP_UNKNOWN;
        int owner = t->owner[slot];
        if (owner == EG_NO_SHARD) return "CLUSTERDOWN Hash slot not served";
        int importing = eg_active && asking && t->moving[slot] == t->shard && owner != t->shard;
        moving_out = owner == t->shard && t->moving[slot] != EG_NO_SHARD;
        if (owner != t->shard && !importing) {
            const char *address = eg_leader_of(owner);
            if (address)
                snprintf(buf, cap, "MOVED %d %s", slot, address);
            else
                snprintf(buf, cap, "CLUSTERDOWN shard %d, owner of slot %d, has no primary", owner, slot);
            return buf;
        }
        if (cl->in_tx && !exec) { /* a transaction runs on one slot, as in Valkey cluster */
            if (!cl->tx_slot) {
                cl->tx_slot = slot + 1;
                cl->tx_moves = eg_mig_moves;
            } else if (cl->tx_slot != slot + 1) {
                return CROSSSLOT;
            }
        }
        if (importing && !exec && eg_serving()) {
            const char *why = eg_importing_refusal(f, cl, argc);
            if (why) return why;
        }
    }
    if (eg_active) {
        if (eg_serving()) {
            if (!moving_out) return NULL;
            /* Keys may have moved since the transaction's commands were checked. */
            if (exec) {
                if (!eg_mig_frozen && cl->tx_moves == eg_mig_moves) return NULL;
                snprintf(buf, cap, "TRYAGAIN engram: slot %d is moving to shard %d; run the transaction again",
                         slot, t->moving[slot]);
                return buf;
            }
            return eg_migrating_refusal(f, cl, slot, argc, buf, cap);
        }
        /* Past the lease: nothing that reads or writes data. Connection commands still work, and
         * so does an EXEC with nothing to run (its commands were refused while queued). */
        if (!write && slot < 0 && !(cls & EG_CMD_KEYSPACE_READ) && !exec && !migrate) return NULL;
        snprintf(buf, cap, "TRYAGAIN %s", eg_lease_reason());
        return buf;
    }
    if (slot < 0 && !write) return NULL; /* PING, INFO, CLIENT, HELLO...: harmless on a replica */
    if (!write && cl->readonly) return NULL;
    if (slot < 0) return READONLY_REPLICA;
    const char *leader = eg_leader_of(t->shard);
    if (!leader)
        snprintf(buf, cap, "CLUSTERDOWN %s", eg_no_primary_reason());
    else
        snprintf(buf, cap, "MOVED %d %s", slot, leader);
    return buf;
}

/* Runs the cluster checks on a command from a client connection; 1 when the command was
 * rewritten (into ENGRAM.REFUSE or ENGRAM.CLUSTER) and the filter has nothing more to do. */
int eg_cluster_filter(VkFilterCtx *f, EgClient *cl, const char *name, size_t len, int argc, int cls) {
    if (!eg_cluster_on || eg_valkey_replica) return 0;
    /* Scripts' and modules' commands run on fake clients, which have no connection: the script
     * itself was checked on its declared keys. */
    if (cl->conn == EG_CONN_UNKNOWN)
        cl->conn = Vk_GetClientInfoById(NULL, cl->id) == VK_OK ? EG_CONN_CLIENT : EG_CONN_FAKE;
    if (cl->conn != EG_CONN_CLIENT) return 0;
    if (is(name, len, "cluster") || is(name, len, "readonly") || is(name, len, "readwrite") ||
        is(name, len, "asking")) {
        VkString *wrapper = eg_wrapper(cl, EG_W_CLUSTER);
        Vk_RetainString(NULL, wrapper);
        Vk_CommandFilterArgInsert(f, 0, wrapper);
        return 1;
    }
    if (is(name, len, "reset") && !cl->head && !cl->in_tx) cl->readonly = 0; /* runs natively */
    char buf[512];
    const char *text = refusal(f, cl, name, len, argc, cls, buf, sizeof buf);
    if (!text) return 0;
    eg_refuse(f, cl, text);
    return 1;
}

/* ---- Replies ----------------------------------------------------------------------------- */

/* Reply now, or behind the client's queued replies; wait_commit: it read uncommitted data. */
static int answer(VkCtx *ctx, EgClient *cl, EgResp *r, int wait_commit) {
    if (!cl->head && !wait_commit) {
        if (!eg_silenced(cl)) eg_resp_emit(ctx, r); /* CLIENT REPLY OFF/SKIP */
        eg_resp_release(r);
        return VK_OK;
    }
    eg_queue_resp(cl, r);
    if (wait_commit) eg_need_offset(cl);
    return eg_finish(ctx, cl);
}

static int answer_error(VkCtx *ctx, EgClient *cl, const char *text) {
    return answer(ctx, cl, eg_resp_error(text), 0);
}

/* ENGRAM.REFUSE <error> <command> <args...>: the filter refused the command. Inside MULTI the
 * transaction is doomed (EXECABORT at EXEC), and a refused EXEC discards it, as in Valkey cluster.
 * Valkey checks the command itself first (unknown, arity, the user's rights): a dry run gives
 * those errors their precedence, in Valkey's words. */
int eg_cmd_refuse(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 2) return Vk_WrongArity(ctx);
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    char checked[512];
    const char *text = Vk_StringPtrLen(argv[1], NULL);
    if (argc > 2) {
        size_t len;
        const char *cmd = Vk_StringPtrLen(argv[2], &len);
        VkCallReply *dry = eg_is_wrapper(cmd, len) ? NULL : Vk_Call(ctx, cmd, "DCEv", argv + 3, (size_t)(argc - 3));
        if (dry && Vk_CallReplyType(dry) == VK_REPLY_ERROR) {
            size_t elen = 0;
            const char *err = Vk_CallReplyStringPtr(dry, &elen);
            snprintf(checked, sizeof checked, "%.*s", (int)elen, err ? err : "");
            for (char *p = checked; *p; p++)
                if (*p == '\r' || *p == '\n') *p = ' ';
            text = checked;
        }
        if (dry) Vk_FreeCallReply(dry);
    }
    if (cl->in_tx) {
        size_t len = 0;
        const char *cmd = argc > 2 ? Vk_StringPtrLen(argv[2], &len) : "";
        if (is(cmd, len, "exec"))
            eg_discard_tx(cl);
        else
            cl->tx_abort = 1;
    }
    /* An ASK for keys whose deletion (a MIGRATE's) is not committed waits for it: until then
     * a failover could bring the keys back here, and the target must not have been used. */
    int wait_ask = !strncmp(text, "ASK ", 4) && eg_active && eg_dirty_any() && argc > 2;
    if (!cl->head && !wait_ask) return eg_silenced(cl) ? VK_OK : Vk_ReplyWithError(ctx, text);
    eg_queue(cl, EG_ERROR, NULL, text);
    if (wait_ask) {
        int unassigned = 0;
        long long target = eg_dirty_target(argv + 2, argc - 2, &unassigned);
        if (unassigned)
            eg_need_offset(cl);
        else if (target > eg_committed)
            eg_need_target(cl, target);
    }
    return eg_finish(ctx, cl);
}

typedef struct SlotScan {
    int slot;
    long long limit; /* keys to collect, -1 to count only */
    long long n;
    size_t cap;
    char **keys;
    size_t *lens;
} SlotScan;

static void on_key(VkCtx *ctx, VkString *keyname, VkKey *key, void *privdata) {
    (void)ctx;
    (void)key;
    SlotScan *s = privdata;
    size_t len;
    const char *k = Vk_StringPtrLen(keyname, &len);
    if (eg_key_slot(k, len) != s->slot || (s->limit >= 0 && s->n >= s->limit)) return;
    if (s->limit >= 0) {
        if ((size_t)s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 16;
            s->keys = Vk_Realloc(s->keys, sizeof(*s->keys) * s->cap);
            s->lens = Vk_Realloc(s->lens, sizeof(*s->lens) * s->cap);
        }
        s->keys[s->n] = Vk_Alloc(len ? len : 1);
        memcpy(s->keys[s->n], k, len);
        s->lens[s->n] = len;
    }
    s->n++;
}

/* CLUSTER COUNTKEYSINSLOT <slot> | GETKEYSINSLOT <slot> <count>: standalone Valkey keeps no
 * index of keys by slot, so the selected database is scanned (an administrator's command). */
static int slot_keys(VkCtx *ctx, EgClient *cl, VkString **args, int n, const char *sub) {
    int count_only = !strcmp(sub, "countkeysinslot");
    char buf[128];
    if (n != (count_only ? 3 : 4)) {
        snprintf(buf, sizeof buf, "ERR wrong number of arguments for 'cluster|%s' command", sub);
        return answer_error(ctx, cl, buf);
    }
    long long slot, limit = -1;
    if (Vk_StringToLongLong(args[2], &slot) != VK_OK || slot < 0 || slot >= EG_SLOTS)
        return answer_error(ctx, cl, "ERR Invalid or out of range slot");
    if (!count_only && (Vk_StringToLongLong(args[3], &limit) != VK_OK || limit < 0))
        return answer_error(ctx, cl, "ERR Invalid number of keys");
    SlotScan s = {(int)slot, limit, 0, 0, NULL, NULL};
    if (limit != 0) {
        VkScanCursor *cursor = Vk_ScanCursorCreate();
        while ((limit < 0 || s.n < limit) && Vk_Scan(ctx, cursor, on_key, &s)) {
        }
        Vk_ScanCursorDestroy(cursor);
    }
    /* The keys may have been written by commands not committed yet. */
    int wait = eg_active && eg_dirty_any();
    if (count_only) return answer(ctx, cl, eg_resp_integer(s.n), wait);
    return answer(ctx, cl, eg_resp_bulk_array(s.keys, s.lens, (size_t)s.n), wait);
}

static int pushed(VkCtx *ctx, EgClient *cl, int replicas, const char *name) {
    EgResp *r = eg_topology_reply(replicas, name);
    if (r) return answer(ctx, cl, eg_resp_retain(r), 0);
    char buf[128];
    snprintf(buf, sizeof buf, "ERR engram: the node pushed no reply to CLUSTER %s", name);
    return answer_error(ctx, cl, buf);
}

/* CLUSTER <subcommand> ...: args[0] is CLUSTER. Mirrors engram.cluster.protocol.cluster_command
 * and the node's COUNTKEYSINSLOT/GETKEYSINSLOT, errors included. */
static int cluster(VkCtx *ctx, EgClient *cl, VkString **args, int n) {
    if (n < 2) return answer_error(ctx, cl, "ERR wrong number of arguments for 'cluster' command");
    char sub[32];
    size_t sublen;
    const char *raw = Vk_StringPtrLen(args[1], &sublen);
    eg_lower(sub, sizeof sub, raw, sublen);
    if (sublen >= sizeof sub) sub[0] = 0; /* no subcommand is that long */
    if (!strcmp(sub, "countkeysinslot") || !strcmp(sub, "getkeysinslot"))
        return slot_keys(ctx, cl, args, n, sub);
    if (!strcmp(sub, "keyslot")) {
        if (n != 3)
            return answer_error(ctx, cl, "ERR wrong number of arguments for 'cluster|keyslot' command");
        size_t len;
        const char *key = Vk_StringPtrLen(args[2], &len);
        return answer(ctx, cl, eg_resp_integer(eg_key_slot(key, len)), 0);
    }
    if (!strcmp(sub, "myid") || !strcmp(sub, "myshardid")) {
        if (!eg_topology) return answer_error(ctx, cl, SLOT_MAP_UNKNOWN);
        return pushed(ctx, cl, 0, sub);
    }
    if (!eg_topology || !eg_topology->slots_known) return answer_error(ctx, cl, SLOT_MAP_UNKNOWN);
    if (!strcmp(sub, "replicas") || !strcmp(sub, "slaves")) {
        if (n != 3)
            return answer_error(ctx, cl, "ERR wrong number of arguments for 'cluster|replicas' command");
        char id[256];
        size_t len;
        const char *node = Vk_StringPtrLen(args[2], &len);
        snprintf(id, sizeof id, "%.*s", (int)(len < 200 ? len : 200), node);
        EgResp *r = strlen(id) == len ? eg_topology_reply(1, id) : NULL;
        if (r) return answer(ctx, cl, eg_resp_retain(r), 0);
        char buf[300];
        snprintf(buf, sizeof buf, "ERR Unknown node %s", id);
        return answer_error(ctx, cl, buf);
    }
    if (!strcmp(sub, "info") || !strcmp(sub, "slots") || !strcmp(sub, "shards") || !strcmp(sub, "nodes"))
        return pushed(ctx, cl, 0, sub);
    char buf[300];
    snprintf(buf, sizeof buf, "ERR unknown subcommand '%.*s'. Try CLUSTER HELP.",
             (int)(sublen < 200 ? sublen : 200), raw);
    return answer_error(ctx, cl, buf);
}

/* ENGRAM.CLUSTER <CLUSTER|READONLY|READWRITE|ASKING> <args...>: the filter's rewrite of commands
 * that standalone Valkey refuses ("cluster support disabled"). */
int eg_cmd_cluster(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 2) return Vk_WrongArity(ctx);
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    size_t len;
    const char *cmd = Vk_StringPtrLen(argv[1], &len);
    char name[16];
    eg_lower(name, sizeof name, cmd, len);
    /* The user's right to the real command, checked as Valkey would before running it. */
    VkCallReply *denied = Vk_Call(ctx, name, "DCEv", argv + 2, (size_t)(argc - 2));
    if (denied) {
        size_t elen = 0;
        const char *err =
            Vk_CallReplyType(denied) == VK_REPLY_ERROR ? Vk_CallReplyStringPtr(denied, &elen) : NULL;
        if (err && elen >= 6 && !strncmp(err, "NOPERM", 6)) {
            char buf[512];
            snprintf(buf, sizeof buf, "%.*s", (int)elen, err);
            Vk_FreeCallReply(denied);
            return answer_error(ctx, cl, buf);
        }
        Vk_FreeCallReply(denied);
    }
    if (!strcmp(name, "cluster")) return cluster(ctx, cl, argv + 1, argc - 1);
    if (argc != 2) {
        char buf[128];
        snprintf(buf, sizeof buf, "ERR wrong number of arguments for '%s' command", name);
        return answer_error(ctx, cl, buf);
    }
    if (!strcmp(name, "readonly")) cl->readonly = 1;
    if (!strcmp(name, "readwrite")) cl->readonly = 0;
    if (!strcmp(name, "asking")) cl->asking = 1;
    return answer(ctx, cl, eg_resp_status("OK"), 0);
}

/* What the node pushes into the module over Valkey's unix socket, and the state it sets.
 *
 *   ENGRAM.INTERNAL                      this connection is the node's own: the filter leaves it alone
 *   ENGRAM.ROLE primary|replica          replies wait for commits, or nothing is held
 *   ENGRAM.LEASE <deadline-us> [reason]  serve until this CLOCK_MONOTONIC time; 0 = not serving
 *   ENGRAM.TOPOLOGY SHARD <n> SLOTS <map> ...   slot map, leaders and CLUSTER replies (below)
 *
 * Nothing is checked until the node pushes its first ROLE, LEASE or TOPOLOGY: until then the
 * module behaves as in phase 1. From then on the slot map is "not known yet" until a TOPOLOGY
 * carries one, and a primary serves nothing that needs its lease until a LEASE is pushed.
 * With the module argument "managed 1" (or engram.managed yes) the module starts as if the node
 * had pushed ENGRAM.ROLE replica with the slot map unknown: no client write runs before the node
 * has taken charge, however late its first push comes. */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "engram.h"

#define DEFAULT_LEASE_REASON \
    "primary lease expired or journal unavailable; leadership is being re-established"
#define DEFAULT_NO_PRIMARY_REASON "the shard has no primary right now (leader election in progress)"

int eg_cluster_on = 0;
int eg_valkey_replica = 0;
EgTopology *eg_topology = NULL;
static int role_pushed = 0;
static long long lease_until_us = 0;
static char *lease_reason = NULL; /* NULL: the default */

long long eg_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int eg_serving(void) {
    return lease_until_us > 0 && eg_now_us() < lease_until_us;
}

const char *eg_lease_reason(void) {
    return lease_reason ? lease_reason : DEFAULT_LEASE_REASON;
}

const char *eg_no_primary_reason(void) {
    return eg_topology && eg_topology->reason ? eg_topology->reason : DEFAULT_NO_PRIMARY_REASON;
}

const char *eg_leader_of(int shard) {
    EgTopology *t = eg_topology;
    return t && shard >= 0 && shard < t->n_leader ? t->leader[shard] : NULL;
}

/* The node's private socket; a script or another module has no connection and is refused. */
int eg_from_unix_socket(VkCtx *ctx) {
    VkClientInfo ci;
    memset(&ci, 0, sizeof ci);
    ci.version = 1;
    return Vk_GetClientInfoById(&ci, Vk_GetClientId(ctx)) == VK_OK &&
           (ci.flags & VK_CLIENTINFO_FLAG_UNIXSOCKET);
}

static int refuse_remote(VkCtx *ctx, const char *command) {
    char buf[192];
    snprintf(buf, sizeof buf, "ERR engram: %s is accepted only from the node, over Valkey's unix socket",
             command);
    return Vk_ReplyWithError(ctx, buf);
}

/* Arguments from..argc-1 joined by spaces, on one line (an error reply cannot span two). */
void eg_join_args(VkString **argv, int from, int argc, char *out, size_t cap) {
    size_t used = 0;
    out[0] = 0;
    for (int i = from; i < argc && used < cap - 1; i++) {
        size_t len;
        const char *s = Vk_StringPtrLen(argv[i], &len);
        int n = snprintf(out + used, cap - used, "%s%.*s", i > from ? " " : "", (int)len, s);
        if (n < 0) break;
        used += (size_t)n;
    }
    for (size_t i = 0; out[i]; i++)
        if (out[i] == '\r' || out[i] == '\n') out[i] = ' ';
}

/* Valkey itself changed role (REPLICAOF). A replica holds nothing; once the node has pushed a
 * role, only its ENGRAM.ROLE primary starts holding again. */
void eg_on_valkey_role(int primary) {
    eg_valkey_replica = !primary;
    if (primary) {
        if (!role_pushed) eg_active = 1;
        return;
    }
    eg_active = 0;
    lease_until_us = 0;
    eg_fail_all("this node became a replica");
}

/* managed: from load, as if ENGRAM.ROLE replica had been pushed and no TOPOLOGY yet. Keyed
 * commands get CLUSTERDOWN (slot map not known), keyless writes READONLY, nothing is held. */
void eg_fail_closed(void) {
    eg_active = 0;
    lease_until_us = 0;
    role_pushed = 1;
    eg_cluster_on = 1;
}

/* ---- ENGRAM.INTERNAL, ENGRAM.ROLE, ENGRAM.LEASE ------------------------------------------- */

int eg_cmd_internal(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    if (argc != 1) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx))
        return Vk_ReplyWithError(ctx,
                                 "ERR engram: ENGRAM.INTERNAL is accepted only over Valkey's unix socket: "
                                 "it exempts the connection from every check");
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    if (cl->head) /* its reply would overtake the queued ones */
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.INTERNAL must come before any reply that waits");
    cl->internal = 1;
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

int eg_cmd_role(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 2) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx)) return refuse_remote(ctx, "ENGRAM.ROLE");
    const char *role = Vk_StringPtrLen(argv[1], NULL);
    if (!strcasecmp(role, "primary")) {
        eg_active = 1;
    } else if (!strcasecmp(role, "replica")) {
        eg_active = 0;
        lease_until_us = 0; /* a later primary term serves on a lease of its own */
        eg_fail_all("this node became a replica");
    } else {
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.ROLE takes primary or replica");
    }
    role_pushed = 1;
    eg_cluster_on = 1;
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

int eg_cmd_lease(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 2) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx)) return refuse_remote(ctx, "ENGRAM.LEASE");
    long long deadline;
    if (Vk_StringToLongLong(argv[1], &deadline) != VK_OK || deadline < 0)
        return Vk_ReplyWithError(ctx,
                                 "ERR engram: the lease deadline is CLOCK_MONOTONIC microseconds, 0 when not "
                                 "serving");
    Vk_Free(lease_reason);
    lease_reason = NULL;
    if (argc > 2) {
        char reason[256];
        eg_join_args(argv, 2, argc, reason, sizeof reason);
        lease_reason = eg_strdup(reason);
    }
    lease_until_us = deadline;
    eg_cluster_on = 1;
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

/* ---- ENGRAM.TOPOLOGY ----------------------------------------------------------------------
 *
 *   ENGRAM.TOPOLOGY SHARD <n> SLOTS <map|UNKNOWN> [REASON <text>]
 *                   [LEADER <shard> <host:port>]... [REPLY <subcommand> <resp>]...
 *                   [REPLICAS <node-id> <resp>]...
 *
 * SHARD: this node's shard. SLOTS: 32768 bytes, the owning shard of each of the 16384 slots as
 * a big-endian uint16 (0xFFFF unassigned), or UNKNOWN. REASON: why a shard has no primary (the
 * CLUSTERDOWN text on a replica). LEADER: a shard's primary (none when absent or empty); for
 * this node's own shard, the leader its replicas redirect to. REPLY: the reply to CLUSTER
 * <subcommand> (MYID, MYSHARDID, INFO, SLOTS, SHARDS, NODES) and REPLICAS: to CLUSTER REPLICAS
 * <node-id>, both as RESP3 bytes. Each push replaces the whole state at once. */

static void free_topology(EgTopology *t) {
    if (!t) return;
    for (int i = 0; i < t->n_leader; i++) Vk_Free(t->leader[i]);
    Vk_Free(t->leader);
    Vk_Free(t->reason);
    for (int i = 0; i < t->n_replies; i++) {
        Vk_Free(t->replies[i].name);
        eg_resp_release(t->replies[i].reply);
    }
    Vk_Free(t->replies);
    for (int i = 0; i < t->n_replicas; i++) {
        Vk_Free(t->replicas[i].name);
        eg_resp_release(t->replicas[i].reply);
    }
    Vk_Free(t->replicas);
    Vk_Free(t);
}

static int parse_shard(VkString *s, int *out) {
    long long v;
    if (Vk_StringToLongLong(s, &v) != VK_OK || v < 0 || v >= EG_NO_SHARD) return -1;
    *out = (int)v;
    return 0;
}

static char *copy_string(VkString *s, int lower) {
    size_t len;
    const char *p = Vk_StringPtrLen(s, &len);
    char *out = Vk_Alloc(len + 1);
    if (lower)
        eg_lower(out, len + 1, p, len);
    else
        memcpy(out, p, len);
    out[len] = 0;
    return out;
}

/* A later entry of the same name replaces the earlier one. */
static const char *add_named(EgNamedReply **arr, int *n, VkString *name, VkString *bytes, int lower) {
    size_t len;
    const char *p = Vk_StringPtrLen(bytes, &len);
    EgResp *reply = eg_resp_parse(p, len);
    if (!reply) return "a reply is not one well-formed RESP3 reply";
    char *key = copy_string(name, lower);
    for (int i = 0; i < *n; i++) {
        if (!strcmp((*arr)[i].name, key)) {
            Vk_Free(key);
            eg_resp_release((*arr)[i].reply);
            (*arr)[i].reply = reply;
            return NULL;
        }
    }
    *arr = Vk_Realloc(*arr, sizeof(**arr) * (size_t)(*n + 1));
    (*arr)[*n].name = key;
    (*arr)[*n].reply = reply;
    (*n)++;
    return NULL;
}

static const char *set_leader(EgTopology *t, VkString *shard_arg, VkString *addr) {
    int shard;
    if (parse_shard(shard_arg, &shard) != 0) return "LEADER takes a shard number below 65535";
    if (shard >= t->n_leader) {
        t->leader = Vk_Realloc(t->leader, sizeof(*t->leader) * (size_t)(shard + 1));
        for (int i = t->n_leader; i <= shard; i++) t->leader[i] = NULL;
        t->n_leader = shard + 1;
    }
    size_t len;
    Vk_StringPtrLen(addr, &len);
    Vk_Free(t->leader[shard]);
    t->leader[shard] = len ? copy_string(addr, 0) : NULL;
    return NULL;
}

static const char *set_slots(EgTopology *t, VkString *map) {
    size_t len;
    const unsigned char *p = (const unsigned char *)Vk_StringPtrLen(map, &len);
    if (len == 7 && !strncasecmp((const char *)p, "unknown", 7)) {
        t->slots_known = 0;
        return NULL;
    }
    if (len != 2 * EG_SLOTS) return "SLOTS takes 32768 bytes (a big-endian uint16 per slot) or UNKNOWN";
    for (int i = 0; i < EG_SLOTS; i++) t->owner[i] = (uint16_t)(p[2 * i] << 8 | p[2 * i + 1]);
    t->slots_known = 1;
    return NULL;
}

static const char *parse_topology(EgTopology *t, VkString **argv, int argc) {
    int have_shard = 0, have_slots = 0;
    for (int i = 1; i < argc;) {
        char kw[16];
        size_t len;
        const char *s = Vk_StringPtrLen(argv[i], &len);
        eg_lower(kw, sizeof kw, s, len);
        int two = !strcmp(kw, "leader") || !strcmp(kw, "reply") || !strcmp(kw, "replicas");
        int one = !strcmp(kw, "shard") || !strcmp(kw, "slots") || !strcmp(kw, "reason");
        if (!one && !two) return "unknown keyword (SHARD, SLOTS, REASON, LEADER, REPLY, REPLICAS)";
        if (i + (two ? 2 : 1) >= argc) return "a keyword lacks its value";
        const char *err = NULL;
        if (!strcmp(kw, "shard")) {
            if (parse_shard(argv[i + 1], &t->shard) != 0) return "SHARD takes a shard number below 65535";
            have_shard = 1;
        } else if (!strcmp(kw, "slots")) {
            err = set_slots(t, argv[i + 1]);
            have_slots = 1;
        } else if (!strcmp(kw, "reason")) {
            char reason[256];
            eg_join_args(argv, i + 1, i + 2, reason, sizeof reason);
            Vk_Free(t->reason);
            t->reason = eg_strdup(reason);
        } else if (!strcmp(kw, "leader")) {
            err = set_leader(t, argv[i + 1], argv[i + 2]);
        } else if (!strcmp(kw, "reply")) {
            err = add_named(&t->replies, &t->n_replies, argv[i + 1], argv[i + 2], 1);
        } else {
            err = add_named(&t->replicas, &t->n_replicas, argv[i + 1], argv[i + 2], 0);
        }
        if (err) return err;
        i += two ? 3 : 2;
    }
    if (!have_shard || !have_slots) return "SHARD and SLOTS are required";
    return NULL;
}

int eg_cmd_topology(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 5) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx)) return refuse_remote(ctx, "ENGRAM.TOPOLOGY");
    EgTopology *t = Vk_Calloc(1, sizeof(*t));
    const char *err = parse_topology(t, argv, argc);
    if (err) {
        free_topology(t);
        char buf[256];
        snprintf(buf, sizeof buf, "ERR engram: ENGRAM.TOPOLOGY: %s; nothing was changed", err);
        return Vk_ReplyWithError(ctx, buf);
    }
    /* Queued CLUSTER replies hold their own references to the old replies. */
    free_topology(eg_topology);
    eg_topology = t;
    eg_cluster_on = 1;
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

EgResp *eg_topology_reply(int replicas, const char *name) {
    EgTopology *t = eg_topology;
    if (!t) return NULL;
    EgNamedReply *arr = replicas ? t->replicas : t->replies;
    int n = replicas ? t->n_replicas : t->n_replies;
    for (int i = 0; i < n; i++)
        if (!strcmp(arr[i].name, name)) return arr[i].reply;
    return NULL;
}

/* ENGRAM.INFO's lines about the cluster protocol. */
int eg_control_info(char *buf, size_t cap) {
    long long left = lease_until_us ? (lease_until_us - eg_now_us()) / 1000 : 0;
    return snprintf(buf, cap,
                    "managed:%d\r\ncluster_checks:%d\r\nslot_map:%s\r\nlease_left_ms:%lld\r\n"
                    "valkey_replica:%d\r\n",
                    eg_managed, eg_cluster_on, eg_topology && eg_topology->slots_known ? "known" : "unknown",
                    left > 0 ? left : 0, eg_valkey_replica);
}

/* What the node pushes into the module over Valkey's unix socket, and the state it sets.
 *
 *   ENGRAM.INTERNAL                      this connection is the node's own: the filter leaves it alone
 *   ENGRAM.ROLE primary|replica          replies wait for commits, or nothing is held
 *   ENGRAM.LEASE <deadline-us> [reason]  serve until this CLOCK_MONOTONIC time; 0 = not serving
 *   ENGRAM.TOPOLOGY SHARD <n> SLOTS <map> ...   slot map, leaders and CLUSTER replies (below)
 *   ENGRAM.LOADRDB <path>                replace the whole dataset with an RDB file (below)
 *
 * Nothing is checked until the node pushes its first ROLE, LEASE or TOPOLOGY: until then the
 * module behaves as in phase 1. From then on the slot map is "not known yet" until a TOPOLOGY
 * carries one, and a primary serves nothing that needs its lease until a LEASE is pushed.
 * With the module argument "managed 1" (or engram.managed yes) the module starts as if the node
 * had pushed ENGRAM.ROLE replica with the slot map unknown: no client write runs before the node
 * has taken charge, however late its first push comes. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engram.h"

#define DEFAULT_LEASE_REASON \
    "primary lease expired or journal unavailable; leadership is being re-established"
#define DEFAULT_NO_PRIMARY_REASON "the shard has no primary right now (leader election in progress)"

int eg_cluster_on = 0;
int eg_valkey_replica = 0;
EgTopology *eg_topology = NULL;
static int role_pushed = 0;
static int pushed_primary = 0; /* the last ENGRAM.ROLE was primary */
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

/* Where MIGRATE reaches the shard's primary: its MIGRATE address if pushed, else its leader address. */
const char *eg_migrate_address_of(int shard) {
    EgTopology *t = eg_topology;
    if (t && shard >= 0 && shard < t->n_migrate && t->migrate[shard]) return t->migrate[shard];
    return eg_leader_of(shard);
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
    pushed_primary = 0;
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
    /* The node's connections must work whatever the cluster's users say (the default user off, or
     * with a password): they run as the module's own user, which ACL LIST does not show and no
     * client can change. Only the unix socket, in the node's private directory, gets here. */
    static VkUser *node_user;
    if (!eg_managed) { /* no node: users are this server's own, and the connection keeps its user */
        cl->internal = 1;
        return Vk_ReplyWithSimpleString(ctx, "OK");
    }
    if (!node_user) {
        node_user = Vk_CreateModuleUser("engram-node");
        const char *rules[] = {"on", "nopass", "allkeys", "allchannels", "allcommands", NULL};
        for (int i = 0; node_user && rules[i]; i++) Vk_SetModuleUserACL(node_user, rules[i]);
    }
    if (!node_user || Vk_AuthenticateClientWithUser(ctx, node_user, NULL, NULL, NULL) != VK_OK)
        return Vk_ReplyWithError(ctx, "ERR engram: the node's connection could not be authenticated");
    cl->internal = 1;
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

int eg_cmd_role(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 2) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx)) return refuse_remote(ctx, "ENGRAM.ROLE");
    const char *role = Vk_StringPtrLen(argv[1], NULL);
    if (!strcasecmp(role, "primary")) {
        if (!pushed_primary) eg_migration_promoted();
        eg_active = 1;
    } else if (!strcasecmp(role, "replica")) {
        eg_active = 0;
        lease_until_us = 0; /* a later primary term serves on a lease of its own */
        eg_fail_all("this node became a replica");
    } else {
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.ROLE takes primary or replica");
    }
    role_pushed = 1;
    pushed_primary = eg_active;
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

/* ---- ENGRAM.LOADRDB ---------------------------------------------------------------------
 *
 *   ENGRAM.LOADRDB <path>
 *
 * Replaces the whole dataset with the RDB file at <path> (absolute, as Valkey's process sees
 * it): the node restores a replica from a snapshot this way before it replays the journal's
 * tail. Refused on a primary, whose data is history the journal may not have committed yet.
 *
 * What the server's RdbLoad does, and what is left to this command:
 * - A corrupt file can end the whole process: Valkey's RDB reader reports corruption with
 *   rdbReportError, which in Valkey 8.0 runs the RDB check and exits. (Valkey 9.1 was seen to
 *   fail with EIO instead, keeping what it had loaded so far.) The node checks the snapshot's
 *   SHA-256 before it sends this command; the module does not try to guard against it.
 * - Valkey 8.0 empties every database before it even opens the file; 9.1 first checks the
 *   file's signature and version. So the file is opened here first, and a missing, unreadable
 *   or non-regular file is refused with the data untouched. A failure past the server's flush
 *   leaves the dataset empty or partly loaded: the error says so (the flush fires the FLUSHDB
 *   server event, counted in dirty.c).
 * - It disconnects every replica and frees the replication backlog: the node's replication tap,
 *   if attached, is dropped and must attach again (PSYNC then gets a full sync). The offset goes
 *   on from where it was, so the commit offset the module keeps stays valid.
 * - While it loads, the server serves other clients' events (-LOADING); the calling connection
 *   is protected until it returns.
 * - Valkey refuses it (ENOTSUP) while Valkey itself replicates from another server.
 * Once the data was replaced (or emptied by a failed load): replies still held, possible only
 * before the node pushed a role, wrote into data that is gone and fail at once as of unknown
 * outcome; every dirty-key mark is forgotten and every WATCH is broken. */

static int loadrdb_error(VkCtx *ctx, const char *path, const char *why) {
    char buf[4608];
    snprintf(buf, sizeof buf, "ERR engram: cannot load RDB '%s': %s", path, why);
    for (size_t i = 0; buf[i]; i++)
        if (buf[i] == '\r' || buf[i] == '\n') buf[i] = ' ';
    return Vk_ReplyWithError(ctx, buf);
}

/* 0 when the file opens for reading as a regular file; else an errno. Non-blocking, so a FIFO
 * cannot hang the server here. */
static int rdb_file_error(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return errno;
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0)
        err = errno;
    else if (S_ISDIR(st.st_mode))
        err = EISDIR;
    else if (!S_ISREG(st.st_mode))
        err = EINVAL;
    close(fd);
    return err;
}

int eg_cmd_loadrdb(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 2) return Vk_WrongArity(ctx);
    if (!eg_from_unix_socket(ctx)) return refuse_remote(ctx, "ENGRAM.LOADRDB");
    if (Vk_GetContextFlags(ctx) & (VK_CTX_FLAGS_MULTI | VK_CTX_FLAGS_LUA))
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.LOADRDB cannot run inside MULTI or a script");
    if (pushed_primary)
        return Vk_ReplyWithError(ctx,
                                 "ERR engram: ENGRAM.LOADRDB is refused on a primary: its data holds writes "
                                 "the journal may not have committed, which a load would destroy");
    size_t len;
    const char *path = Vk_StringPtrLen(argv[1], &len);
    if (len == 0 || len >= 4096 || strlen(path) != len || path[0] != '/')
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.LOADRDB takes an absolute file path");
    int err = rdb_file_error(path);
    if (err == EINVAL) return loadrdb_error(ctx, path, "not a regular file");
    if (err) return loadrdb_error(ctx, path, strerror(err));

    long long flushes = eg_dirty_flushes();
    VkRdbStream *stream = Vk_RdbStreamCreateFromFile(path);
    errno = 0;
    int rc = Vk_RdbLoad(ctx, stream, 0);
    err = errno;
    Vk_RdbStreamFree(stream);
    int replaced = rc == VK_OK || eg_dirty_flushes() != flushes;
    if (replaced) {
        eg_fail_all("this node's dataset was replaced from a snapshot");
        eg_dirty_reset();
    }
    if (rc == VK_OK) {
        Vk_Log(ctx, "notice", "engram: the dataset was replaced from the RDB file %s", path);
        return Vk_ReplyWithSimpleString(ctx, "OK");
    }
    char why[256];
    snprintf(why, sizeof why, "%s%s%s", strerror(err ? err : EIO),
             err == ENOTSUP ? "; Valkey loads no RDB while it replicates from another server" : "",
             replaced ? "; the dataset was emptied first and may now hold part of the file" : "");
    Vk_Log(ctx, "warning", "engram: loading the RDB file %s failed: %s", path, why);
    return loadrdb_error(ctx, path, why);
}

/* ---- ENGRAM.TOPOLOGY ----------------------------------------------------------------------
 *
 *   ENGRAM.TOPOLOGY SHARD <n> SLOTS <map|UNKNOWN> [MOVING <map>] [EPOCH <n>] [REASON <text>]
 *                   [LEADER <shard> <host:port>]... [MIGRATE <shard> <host:port>]...
 *                   [REPLY <subcommand> <resp>]...
 *                   [REPLICAS <node-id> <resp>]...
 *
 * SHARD: this node's shard. SLOTS: 32768 bytes, the owning shard of each of the 16384 slots as
 * a big-endian uint16 (0xFFFF unassigned), or UNKNOWN. MOVING: the same for the shard each slot
 * is migrating to (0xFFFF: not moving; migration.c). EPOCH: the slot map's config epoch. REASON: why a shard has no primary (the
 * CLUSTERDOWN text on a replica). LEADER: a shard's primary (none when absent or empty); for
 * this node's own shard, the leader its replicas redirect to. MIGRATE: where another Valkey reaches
 * a shard's primary with MIGRATE when that is not its LEADER address (the node terminates client TLS
 * in front of a Valkey that has none: MIGRATE speaks plain TCP to Valkey's own port). REPLY: the reply to CLUSTER
 * <subcommand> (MYID, MYSHARDID, INFO, SLOTS, SHARDS, NODES) and REPLICAS: to CLUSTER REPLICAS
 * <node-id>, both as RESP3 bytes. Each push replaces the whole state at once. */

static void free_topology(EgTopology *t) {
    if (!t) return;
    for (int i = 0; i < t->n_leader; i++) Vk_Free(t->leader[i]);
    Vk_Free(t->leader);
    for (int i = 0; i < t->n_migrate; i++) Vk_Free(t->migrate[i]);
    Vk_Free(t->migrate);
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

/* A per-shard address (LEADER, MIGRATE); an empty one means none. */
static const char *set_address(char ***addrs, int *n, VkString *shard_arg, VkString *addr) {
    int shard;
    if (parse_shard(shard_arg, &shard) != 0) return "LEADER and MIGRATE take a shard number below 65535";
    if (shard >= *n) {
        *addrs = Vk_Realloc(*addrs, sizeof(**addrs) * (size_t)(shard + 1));
        for (int i = *n; i <= shard; i++) (*addrs)[i] = NULL;
        *n = shard + 1;
    }
    size_t len;
    Vk_StringPtrLen(addr, &len);
    Vk_Free((*addrs)[shard]);
    (*addrs)[shard] = len ? copy_string(addr, 0) : NULL;
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

static const char *set_moving(EgTopology *t, VkString *map) {
    size_t len;
    const unsigned char *p = (const unsigned char *)Vk_StringPtrLen(map, &len);
    if (len != 2 * EG_SLOTS) return "MOVING takes 32768 bytes (a big-endian uint16 per slot)";
    for (int i = 0; i < EG_SLOTS; i++) t->moving[i] = (uint16_t)(p[2 * i] << 8 | p[2 * i + 1]);
    return NULL;
}

static const char *parse_topology(EgTopology *t, VkString **argv, int argc) {
    int have_shard = 0, have_slots = 0;
    for (int i = 0; i < EG_SLOTS; i++) t->moving[i] = EG_NO_SHARD;
    for (int i = 1; i < argc;) {
        char kw[16];
        size_t len;
        const char *s = Vk_StringPtrLen(argv[i], &len);
        eg_lower(kw, sizeof kw, s, len);
        int two = !strcmp(kw, "leader") || !strcmp(kw, "migrate") || !strcmp(kw, "reply") ||
                  !strcmp(kw, "replicas");
        int one = !strcmp(kw, "shard") || !strcmp(kw, "slots") || !strcmp(kw, "reason") ||
                  !strcmp(kw, "moving") || !strcmp(kw, "epoch");
        if (!one && !two)
            return "unknown keyword (SHARD, SLOTS, MOVING, EPOCH, REASON, LEADER, MIGRATE, REPLY, REPLICAS)";
        if (i + (two ? 2 : 1) >= argc) return "a keyword lacks its value";
        const char *err = NULL;
        if (!strcmp(kw, "shard")) {
            if (parse_shard(argv[i + 1], &t->shard) != 0) return "SHARD takes a shard number below 65535";
            have_shard = 1;
        } else if (!strcmp(kw, "slots")) {
            err = set_slots(t, argv[i + 1]);
            have_slots = 1;
        } else if (!strcmp(kw, "moving")) {
            err = set_moving(t, argv[i + 1]);
        } else if (!strcmp(kw, "epoch")) {
            if (Vk_StringToLongLong(argv[i + 1], &t->epoch) != VK_OK || t->epoch < 0)
                return "EPOCH takes a non-negative number";
        } else if (!strcmp(kw, "reason")) {
            char reason[256];
            eg_join_args(argv, i + 1, i + 2, reason, sizeof reason);
            Vk_Free(t->reason);
            t->reason = eg_strdup(reason);
        } else if (!strcmp(kw, "leader")) {
            err = set_address(&t->leader, &t->n_leader, argv[i + 1], argv[i + 2]);
        } else if (!strcmp(kw, "migrate")) {
            err = set_address(&t->migrate, &t->n_migrate, argv[i + 1], argv[i + 2]);
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
    eg_migration_topology(t);
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

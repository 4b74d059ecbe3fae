/* The command filter: sees every command as it executes, before the server runs it.
 *
 * It counts each client's wire bytes (to find the end of its input), takes the replica link's
 * REPLCONF ACK as the commit signal, and rewrites a command into one of Engram's wrappers when
 * its reply must wait: a write, anything behind a queued reply, a read of an uncommitted key.
 * Once the node has pushed its cluster state, the cluster checks (cluster.c) run first. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "engram.h"

static int digits(size_t v) {
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* The RESP size of the command: what the client sent, unless it used the inline protocol. */
static long long wire_bytes(VkFilterCtx *f, int argc) {
    long long n = 1 + digits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        size_t len;
        Vk_StringPtrLen(Vk_CommandFilterArgGet(f, i), &len);
        n += 1 + digits(len) + 2 + (long long)len + 2;
    }
    return n;
}

static void wrap(VkFilterCtx *f, EgClient *cl, int kind) {
    VkString *wrapper = eg_wrapper(cl, kind);
    Vk_RetainString(NULL, wrapper);
    Vk_CommandFilterArgInsert(f, 0, wrapper);
}

/* One of the wrappers, or its ".auth" twin. */
int eg_is_wrapper(const char *name, size_t len) {
    if (len > 5 && !strncasecmp(name + len - 5, ".auth", 5)) len -= 5;
    for (int i = 0; i < EG_W_COUNT; i++) {
        size_t n;
        const char *w = Vk_StringPtrLen(eg_wrappers[0][i], &n);
        if (len == n && !strncasecmp(name, w, len)) return 1;
    }
    return 0;
}

static int is_client_reply(VkFilterCtx *f, const char *name, size_t len, int argc) {
    return len == 6 && !strncasecmp(name, "client", 6) && argc >= 2 &&
           !strcasecmp(Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 1), NULL), "reply");
}

static int reads_dirty_key(VkFilterCtx *f, int argc) {
    VkString *argv[64];
    if (argc > 64) return 1; /* too long to look through cheaply: hold it */
    for (int i = 0; i < argc; i++) argv[i] = Vk_CommandFilterArgGet(f, i);
    int unassigned = 0;
    return eg_dirty_target(argv, argc, &unassigned) > eg_committed || unassigned;
}

/* A connection setting the queue would break, refused until the module handles it: CLIENT
 * TRACKING ON (an invalidation is pushed at once and could reach the client before a held read
 * that carries the old value). */
int eg_is_refused_client_setting(VkString **argv, int argc) {
    if (argc < 3) return 0;
    const char *cmd = Vk_StringPtrLen(argv[0], NULL), *sub = Vk_StringPtrLen(argv[1], NULL);
    const char *mode = Vk_StringPtrLen(argv[2], NULL);
    if (strcasecmp(cmd, "client") != 0) return 0;
    if (!strcasecmp(sub, "tracking")) return !strcasecmp(mode, "on");
    return 0;
}

static int refused_client_setting(VkFilterCtx *f, int argc) {
    if (argc < 3) return 0;
    VkString *argv[3];
    for (int i = 0; i < 3; i++) argv[i] = Vk_CommandFilterArgGet(f, i);
    return eg_is_refused_client_setting(argv, argc);
}

/* Commands that would change users on this node alone, where users change cluster-wide (users.c):
 * CONFIG SET requirepass (the default user), and ACL LOAD (every user, from a local file; it also
 * drops every connection of a user the file lacks, the node's own among them). */
static const char *local_users_change(VkFilterCtx *f, size_t len, const char *name, int argc) {
    if (len == 3 && !strncasecmp(name, "acl", 3) && argc >= 2 &&
        !strcasecmp(Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 1), NULL), "load"))
        return "ERR engram: users are cluster state: declare them in the cluster's users file or change "
               "them with ACL SETUSER and ACL DELUSER, which every node keeps";
    if (len != 6 || strncasecmp(name, "config", 6) != 0 || argc < 4 ||
        strcasecmp(Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 1), NULL), "set") != 0)
        return NULL;
    for (int i = 2; i < argc; i += 2)
        if (!strcasecmp(Vk_StringPtrLen(Vk_CommandFilterArgGet(f, i), NULL), "requirepass"))
            return "ERR engram: CONFIG SET requirepass would change the default user on this node alone; "
                   "use ACL SETUSER default >password, which every node keeps";
    return NULL;
}

static int on_unix_socket(unsigned long long id) {
    VkClientInfo ci;
    memset(&ci, 0, sizeof ci);
    ci.version = 1;
    return Vk_GetClientInfoById(&ci, id) == VK_OK && (ci.flags & VK_CLIENTINFO_FLAG_UNIXSOCKET);
}

void eg_filter(VkFilterCtx *f) {
    int argc = Vk_CommandFilterArgsCount(f);
    size_t len;
    const char *name = Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 0), &len);
    unsigned long long id = Vk_CommandFilterGetClientId(f);
    if (len == 8 && !strncasecmp(name, "replconf", 8)) {
        long long offset;
        /* Only a replica's acknowledgement is a commit: any client can send these words. */
        if (argc >= 3 && !strcasecmp(Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 1), NULL), "ack") &&
            Vk_StringToLongLong(Vk_CommandFilterArgGet(f, 2), &offset) == VK_OK && eg_is_replica_link(id))
            eg_on_ack(offset);
        return;
    }
    EgClient *cl = eg_client(id, 1);
    cl->consumed += wire_bytes(f, argc);
    int attaches = (len == 5 && !strncasecmp(name, "psync", 5)) || (len == 4 && !strncasecmp(name, "sync", 4));
    int reattaches = (len == 9 && !strncasecmp(name, "replicaof", 9)) || (len == 7 && !strncasecmp(name, "slaveof", 7));
    if ((attaches || (reattaches && eg_managed)) && !on_unix_socket(id)) {
        /* The replica link's acknowledgements release held replies: a link from the network could
         * confirm writes the journal never had. Replicas are fed from the journal, not by Valkey. */
        eg_refuse(f, cl, attaches ? "ERR engram: replication is served only to the node's journal tap, over "
                                    "Valkey's unix socket; replicas are fed from the journal"
                                  : "ERR engram: this Valkey's role is set by its Engram node, not by REPLICAOF");
        return;
    }
    if (attaches) {
        /* The replication tap attaches with PSYNC and starts from a snapshot of everything run so
         * far: replies still held were never journaled through it, and cannot be confirmed. */
        eg_fail_all("the replication link to the journal was replaced");
        cl->replica_link = 1;
    }
    eg_acl_command_seen(name, len);
    if (cl->internal) return; /* the node's own connection: nothing is wrapped, checked or held */
    eg_reply_mode_next_command(cl);
    if (len == 5 && !strncasecmp(name, "reset", 5)) {
        cl->authed = 0; /* RESET makes the connection the default user's again */
        if (!cl->head && !cl->in_tx) cl->reply_off = cl->skip_next = cl->reply_desync = 0; /* runs natively */
    }
    if (len > 7 && !strncasecmp(name, "engram.", 7)) {
        /* A wrapper named by a client would run a command unchecked, or a write unreplicated. */
        if (eg_is_wrapper(name, len)) {
            char buf[160];
            snprintf(buf, sizeof buf, "ERR engram: '%.*s' is the module's own; send the command itself",
                     (int)(len < 32 ? len : 32), name);
            eg_refuse(f, cl, buf);
        }
        return;
    }

    int cls = eg_command_class(name, len, argc > 1 ? Vk_CommandFilterArgGet(f, 1) : NULL);
    if (eg_managed && !eg_valkey_replica) {
        const char *refusal = (cls & EG_CMD_USERS) ? eg_users_refusal(cl) : local_users_change(f, len, name, argc);
        if (refusal) {
            eg_refuse(f, cl, refusal);
            return;
        }
        if (cls & EG_CMD_USERS) {
            wrap(f, cl, EG_W_USERS);
            return;
        }
    }
    if (eg_cluster_filter(f, cl, name, len, argc, cls)) return;
    if (eg_region && eg_active) {
        /* A multi-region primary runs only writes whose effects merge across regions (region.c). */
        char buf[256];
        const char *refusal = eg_mr_refusal(f, name, len, argc, cls, buf, sizeof buf);
        if (refusal) {
            eg_refuse(f, cl, refusal);
            return;
        }
    }
    int pending = cl->head != NULL;
    /* Replies silenced by a CLIENT REPLY the module applied: commands run where it can drop them.
     * A default-user connection not yet known to be authenticated: a command that would run
     * natively runs in a checked twin instead, whose running proves it (acl.c). */
    int silencing = eg_reply_mode_wraps(cl) || !eg_auth_known(cl);
    if (!cl->in_tx && is_client_reply(f, name, len, argc)) {
        eg_client_reply_filter(f, cl, argc);
        return;
    }
    if (!eg_active) {
        /* Replicas hold nothing; but replies queued before the role changed keep their order,
         * and transactions stay emulated (a refusal inside one must doom it, not be QUEUED);
         * one begun on the primary does not run its writes here. While Valkey replicates from
         * another server its primary's MULTI/EXEC blocks run natively, as everything else. */
        if (!pending && !silencing && !cl->in_tx && (!(cls & EG_CMD_TX) || eg_valkey_replica)) return;
        int exec = cl->in_tx && cl->tx_n > 0 && len == 4 && !strncasecmp(name, "exec", 4);
        if ((cls & EG_CMD_WRITE) || (exec && cl->tx_writes)) {
            eg_refuse(f, cl, "READONLY You can't write against a read only replica.");
            return;
        }
    }
    if (cl->in_tx || (cls & EG_CMD_TX)) {
        wrap(f, cl, EG_W_TX);
    } else if (cls & EG_CMD_NATIVE) {
        if (pending || refused_client_setting(f, argc)) wrap(f, cl, EG_W_NATIVE);
    } else if (cls & EG_CMD_SELECT) {
        if (pending || silencing) wrap(f, cl, EG_W_SELECT);
    } else if (cls & EG_CMD_WRITE) {
        wrap(f, cl, EG_W_WRITE);
    } else if (pending || silencing ||
               (eg_dirty_any() && ((cls & EG_CMD_KEYSPACE_READ) || reads_dirty_key(f, argc)))) {
        wrap(f, cl, EG_W_READ);
    }
}

/* Users as cluster state (docs/security.md).
 *
 * Valkey keeps users in memory and never replicates them, so a user made on one primary would
 * be gone after a failover, and missing on every other shard. Here ACL SETUSER and ACL DELUSER
 * from a client run on the primary as usual, and the user's resulting rules (Valkey's own
 * description of them, passwords hashed) are recorded as a pending change; the reply waits, like
 * a write's, until the node has stored the change in the cluster's metadata and said so
 * (ENGRAM.USERS.DONE). Every node then makes its Valkey's users match the metadata
 * (ENGRAM.USERS.APPLY), which also undoes a change the node could not store. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "engram.h"

typedef struct {
    long long seq;
    char *name;
    char *rules; /* NULL: the user was deleted */
} EgUserChange;

static EgUserChange *changes;
static size_t n_changes, cap_changes;
static long long users_seq;
long long eg_users_done;
/* The default user's rules as Valkey started: what it returns to when the metadata has none. */
static char *baseline_default;
/* Users declared by the cluster's configuration (ENGRAM.USERS.DECLARE): not changed by clients. */
static VkDict *declared;

/* Per user, the rules last applied and Valkey's description right after: declared rules are
 * written by hand (">password", any order) and never equal the description, yet need no
 * change while neither side moved. */
typedef struct {
    char *given;
    char *described;
} EgApplied;
static VkDict *applied;

static char *copy_rules(VkString *name) {
    VkUser *user = Vk_GetModuleUserFromUserName(name);
    if (!user) return NULL;
    char *rules = NULL;
    VkString *acl = Vk_GetModuleUserACLString(user);
    if (acl) {
        rules = eg_strdup(Vk_StringPtrLen(acl, NULL));
        Vk_FreeString(NULL, acl);
    }
    Vk_FreeModuleUser(user);
    return rules;
}

void eg_users_init(void) {
    VkString *name = Vk_CreateString(NULL, "default", 7);
    baseline_default = copy_rules(name);
    Vk_FreeString(NULL, name);
}

static void record(VkString *name) {
    if (n_changes == cap_changes) {
        cap_changes = cap_changes ? cap_changes * 2 : 8;
        changes = Vk_Realloc(changes, sizeof(*changes) * cap_changes);
    }
    EgUserChange *c = &changes[n_changes++];
    c->seq = ++users_seq;
    c->name = eg_strdup(Vk_StringPtrLen(name, NULL));
    c->rules = copy_rules(name);
}

static int is_declared(VkString *name) {
    size_t len;
    const char *s = Vk_StringPtrLen(name, &len);
    int missing = 1;
    if (declared) Vk_DictGetC(declared, (void *)s, len, &missing);
    return !missing;
}

static int pending(const char *name, size_t len) {
    for (size_t i = 0; i < n_changes; i++)
        if (strlen(changes[i].name) == len && !memcmp(changes[i].name, name, len)) return 1;
    return 0;
}

/* ENGRAM.USERS ACL SETUSER|DELUSER ...: run it as the client, record what it changed, and queue
 * its reply behind the metadata's confirmation. */
int eg_cmd_users(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 4) return Vk_WrongArity(ctx);
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    int setuser = !strcasecmp(Vk_StringPtrLen(argv[2], NULL), "setuser");
    for (int i = 3; i < (setuser ? 4 : argc); i++) {
        if (!is_declared(argv[i])) continue;
        char buf[200];
        size_t len;
        const char *name = Vk_StringPtrLen(argv[i], &len);
        snprintf(buf, sizeof buf, "ERR engram: user '%.*s' is declared in the cluster's configuration; change it there",
                 (int)(len < 64 ? len : 64), name);
        eg_queue(cl, EG_ERROR, NULL, buf);
        return eg_finish(ctx, cl);
    }
    VkCallReply *r = Vk_Call(ctx, "ACL", "0ECv", argv + 2, (size_t)(argc - 2));
    if (!r) {
        eg_queue(cl, EG_ERROR, NULL, "ERR engram: the command could not be run");
        return eg_finish(ctx, cl);
    }
    if (Vk_CallReplyType(r) != VK_REPLY_ERROR) {
        for (int i = 3; i < (setuser ? 4 : argc); i++) record(argv[i]);
        cl->users_target = users_seq;
        eg_users_changed();
    }
    eg_queue(cl, EG_CALL, r, NULL);
    return eg_finish(ctx, cl);
}

static int internal_only(VkCtx *ctx, const char *command) {
    if (eg_from_unix_socket(ctx)) return 0;
    char buf[160];
    snprintf(buf, sizeof buf, "ERR engram: %s is accepted only from the node, over Valkey's unix socket", command);
    Vk_ReplyWithError(ctx, buf);
    return 1;
}

/* ENGRAM.USERS.PENDING: [seq, name, rules or null] for every change not yet confirmed. */
int eg_cmd_users_pending(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    if (argc != 1) return Vk_WrongArity(ctx);
    if (internal_only(ctx, "ENGRAM.USERS.PENDING")) return VK_OK;
    Vk_ReplyWithArray(ctx, (long)n_changes);
    for (size_t i = 0; i < n_changes; i++) {
        Vk_ReplyWithArray(ctx, 3);
        Vk_ReplyWithLongLong(ctx, changes[i].seq);
        Vk_ReplyWithStringBuffer(ctx, changes[i].name, strlen(changes[i].name));
        if (changes[i].rules)
            Vk_ReplyWithStringBuffer(ctx, changes[i].rules, strlen(changes[i].rules));
        else
            Vk_ReplyWithNull(ctx);
    }
    return VK_OK;
}

/* ENGRAM.USERS.DONE <seq>: the metadata holds every change up to seq; their replies may go. */
int eg_cmd_users_done(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 2) return Vk_WrongArity(ctx);
    if (internal_only(ctx, "ENGRAM.USERS.DONE")) return VK_OK;
    long long seq;
    if (Vk_StringToLongLong(argv[1], &seq) != VK_OK || seq < 0 || seq > users_seq)
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.USERS.DONE takes a sequence from ENGRAM.USERS.PENDING");
    if (seq > eg_users_done) eg_users_done = seq;
    size_t kept = 0;
    for (size_t i = 0; i < n_changes; i++) {
        if (changes[i].seq <= eg_users_done) {
            Vk_Free(changes[i].name);
            Vk_Free(changes[i].rules);
        } else {
            changes[kept++] = changes[i];
        }
    }
    n_changes = kept;
    eg_release_ready();
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

/* ACL SETUSER name reset <rules>: the rules as Valkey describes a user, split where ACL SAVE's
 * file is split (selectors in parentheses are merged back by Valkey). */
static VkCallReply *set_rules(VkCtx *ctx, const char *name, const char *rules) {
    size_t cap = 8, n = 0;
    VkString **args = Vk_Alloc(sizeof(*args) * cap);
    args[n++] = Vk_CreateString(ctx, "SETUSER", 7);
    args[n++] = Vk_CreateString(ctx, name, strlen(name));
    args[n++] = Vk_CreateString(ctx, "reset", 5);
    for (const char *p = rules; *p;) {
        while (*p == ' ') p++;
        const char *end = p;
        while (*end && *end != ' ') end++;
        if (end > p) {
            if (n == cap) {
                cap *= 2;
                args = Vk_Realloc(args, sizeof(*args) * cap);
            }
            args[n++] = Vk_CreateString(ctx, p, (size_t)(end - p));
        }
        p = end;
    }
    VkCallReply *r = Vk_Call(ctx, "ACL", "Ev", args, n);
    for (size_t i = 0; i < n; i++) Vk_FreeString(ctx, args[i]);
    Vk_Free(args);
    return r;
}

static int desired_index(VkString **argv, int argc, const char *name, size_t len) {
    for (int i = 1; i + 1 < argc; i += 2) {
        size_t n;
        const char *s = Vk_StringPtrLen(argv[i], &n);
        if (n == len && !memcmp(s, name, len)) return i;
    }
    return -1;
}

static void forget_applied(const char *name, size_t len) {
    EgApplied *a = NULL;
    if (!applied || Vk_DictDelC(applied, (void *)name, len, &a) != VK_OK || !a) return;
    Vk_Free(a->given);
    Vk_Free(a->described);
    Vk_Free(a);
}

static int unchanged(const char *name, size_t len, const char *current, const char *rules) {
    if (!strcmp(current, rules)) return 1;
    EgApplied *a = applied ? Vk_DictGetC(applied, (void *)name, len, NULL) : NULL;
    return a && !strcmp(a->given, rules) && !strcmp(a->described, current);
}

static void remember_applied(VkString *name, const char *rules) {
    size_t len;
    const char *s = Vk_StringPtrLen(name, &len);
    forget_applied(s, len);
    if (!applied) applied = Vk_CreateDict(NULL);
    EgApplied *a = Vk_Calloc(1, sizeof(*a));
    a->given = eg_strdup(rules);
    a->described = copy_rules(name);
    if (!a->described) a->described = eg_strdup("");
    Vk_DictSetC(applied, (void *)s, len, a);
}

/* Make one user's rules these (NULL: delete it); 1 if it changed. A failure is kept in err. */
static int converge(VkCtx *ctx, const char *name, size_t len, const char *rules, char *err, size_t cap) {
    VkString *vname = Vk_CreateString(ctx, name, len);
    char *current = copy_rules(vname);
    int changed = 0;
    VkCallReply *r = NULL;
    if (!rules) {
        if (current) r = Vk_Call(ctx, "ACL", "Ecs", "DELUSER", vname);
        forget_applied(name, len);
    } else if (!current || !unchanged(name, len, current, rules)) {
        r = set_rules(ctx, Vk_StringPtrLen(vname, NULL), rules);
    }
    if (r) {
        if (Vk_CallReplyType(r) == VK_REPLY_ERROR) {
            if (!err[0]) {
                size_t elen;
                const char *e = Vk_CallReplyStringPtr(r, &elen);
                snprintf(err, cap, "ERR engram: user '%.*s' could not be applied: %.*s", (int)(len < 64 ? len : 64),
                         name, (int)(elen < 200 ? elen : 200), e ? e : "");
            }
        } else {
            changed = 1;
            if (rules) remember_applied(vname, rules);
        }
        Vk_FreeCallReply(r);
    }
    Vk_Free(current);
    Vk_FreeString(ctx, vname);
    return changed;
}

/* ENGRAM.USERS.DECLARE [name ...]: the users the cluster's configuration declares (replacing the
 * last set); clients may not change them. */
int eg_cmd_users_declare(VkCtx *ctx, VkString **argv, int argc) {
    if (internal_only(ctx, "ENGRAM.USERS.DECLARE")) return VK_OK;
    if (!declared) declared = Vk_CreateDict(NULL);
    while (Vk_DictSize(declared)) {
        VkDictIter *it = Vk_DictIteratorStartC(declared, "^", NULL, 0);
        size_t len;
        char *key = Vk_DictNextC(it, &len, NULL);
        char *copy = Vk_Alloc(len ? len : 1);
        memcpy(copy, key, len);
        Vk_DictIteratorStop(it);
        Vk_DictDelC(declared, copy, len, NULL);
        Vk_Free(copy);
    }
    for (int i = 1; i < argc; i++) {
        size_t len;
        const char *name = Vk_StringPtrLen(argv[i], &len);
        Vk_DictReplaceC(declared, (void *)name, len, NULL);
    }
    return Vk_ReplyWithLongLong(ctx, (long long)Vk_DictSize(declared));
}

/* ENGRAM.USERS.APPLY [name rules ...]: the cluster's users, all of them; this Valkey's users are
 * made to match (users absent are deleted, the default user returns to its rules at start),
 * except users with a change still pending here. Replies with the number of users changed. */
int eg_cmd_users_apply(VkCtx *ctx, VkString **argv, int argc) {
    if (argc % 2 != 1) return Vk_WrongArity(ctx);
    if (internal_only(ctx, "ENGRAM.USERS.APPLY")) return VK_OK;
    char err[320] = "";
    long long changed = 0;
    VkCallReply *users = Vk_Call(ctx, "ACL", "c", "USERS");
    size_t n = users ? Vk_CallReplyLength(users) : 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *name = Vk_CallReplyStringPtr(Vk_CallReplyArrayElement(users, i), &len);
        if (!name || pending(name, len) || desired_index(argv, argc, name, len) >= 0) continue;
        int is_default = len == 7 && !memcmp(name, "default", 7);
        changed += converge(ctx, name, len, is_default ? baseline_default : NULL, err, sizeof err);
    }
    if (users) Vk_FreeCallReply(users);
    for (int i = 1; i + 1 < argc; i += 2) {
        size_t len;
        const char *name = Vk_StringPtrLen(argv[i], &len);
        if (pending(name, len)) continue;
        changed += converge(ctx, name, len, Vk_StringPtrLen(argv[i + 1], NULL), err, sizeof err);
    }
    if (changed) eg_users_changed();
    if (err[0]) return Vk_ReplyWithError(ctx, err);
    return Vk_ReplyWithLongLong(ctx, changed);
}

/* A user change the filter must not let through: inside MULTI (the change and its confirmation
 * could not be one atomic step), or on a replica (the primary is where users change). */
const char *eg_users_refusal(EgClient *cl) {
    if (cl->in_tx)
        return "ERR engram: ACL SETUSER and ACL DELUSER cannot be queued in MULTI: users are cluster state, "
               "changed one command at a time";
    if (!eg_active)
        return "ERR engram: users are cluster state and change through a primary; this node is a replica";
    return NULL;
}

void eg_users_stats(EgStats *s) {
    s->users_pending = (long long)n_changes;
    s->users_done = eg_users_done;
}

/* Slot migration between shards (docs/scaling.md), as Valkey cluster clients expect it.
 *
 * The node pushes, with the slot map, the shard each slot is moving to. On the source primary a
 * command on a moving slot runs when all its keys are here, gets ASK to the target's primary when
 * none are, and TRYAGAIN when some are. The mover moves keys with MIGRATE, whose reply (like any
 * write's) waits until the source's journal holds the deletion; an ASK for a key whose deletion
 * is not committed waits for it too, so no client is sent to the target for a key the source may
 * still hold after a failover. On the target primary, a command on an importing slot runs after
 * ASKING (RESTORE, which MIGRATE sends, counts as asking).
 *
 * A failed MIGRATE, or a replica promoted while slots move, leaves the target possibly holding
 * copies of keys the source still has: the source then answers TRYAGAIN for the moving slots
 * ("frozen") until the mover has migrated every such key again and sends ENGRAM.MIGRATION SETTLE.
 * Otherwise a client could delete a key here and then be sent to the target's stale copy. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "engram.h"

int eg_mig_frozen = 0;
long long eg_mig_moves = 0; /* MIGRATE calls run: a transaction queued before one may see moved keys */
static long long migrate_failures = 0;

static int is(const char *name, size_t len, const char *want) {
    return len == strlen(want) && !strncasecmp(name, want, len);
}

/* How many of the command's keys exist in the client's database (EG_KEYS_*); all when keyless.
 * nkeys, when given, receives how many keys the command names. */
int eg_keys_present(VkFilterCtx *f, int argc, unsigned long long client_id, int *nkeys_out) {
    VkString *stack[64], **argv = argc <= 64 ? stack : Vk_Alloc(sizeof(*argv) * (size_t)argc);
    for (int i = 0; i < argc; i++) argv[i] = Vk_CommandFilterArgGet(f, i);
    int nkeys = 0, found = 0;
    int *pos = Vk_GetCommandKeysWithFlags(NULL, argv, argc, &nkeys, NULL);
    VkClientInfo ci;
    memset(&ci, 0, sizeof ci);
    ci.version = 1;
    int db = Vk_GetClientInfoById(&ci, client_id) == VK_OK ? ci.db : 0;
    /* The filter has no context of its own: the module's detached one looks in the client's db. */
    Vk_SelectDb(eg_ctx, db);
    for (int i = 0; pos && i < nkeys; i++) found += Vk_KeyExists(eg_ctx, argv[pos[i]]) ? 1 : 0;
    if (pos) Vk_Free(pos);
    if (argv != stack) Vk_Free(argv);
    if (nkeys_out) *nkeys_out = nkeys;
    if (found == nkeys) return EG_KEYS_ALL;
    return found ? EG_KEYS_SOME : EG_KEYS_NONE;
}

/* The source primary: a command on a slot moving away. NULL: it runs here. */
const char *eg_migrating_refusal(VkFilterCtx *f, EgClient *cl, int slot, int argc, char *buf, size_t cap) {
    EgTopology *t = eg_topology;
    int target = t->moving[slot];
    if (eg_mig_frozen) {
        snprintf(buf, cap,
                 "TRYAGAIN engram: slot %d is moving to shard %d and its last keys are being checked", slot,
                 target);
        return buf;
    }
    int present = eg_keys_present(f, argc, cl->id, NULL);
    if (present == EG_KEYS_ALL) return NULL;
    if (present == EG_KEYS_SOME) return "TRYAGAIN Multiple keys request during rehashing of slot";
    const char *address = eg_leader_of(target);
    if (!address) {
        snprintf(buf, cap, "TRYAGAIN engram: slot %d is moving to shard %d, which has no primary right now",
                 slot, target);
        return buf;
    }
    /* ENGRAM.REFUSE holds an ASK until the keys' deletion, if any, is committed. */
    snprintf(buf, cap, "ASK %d %s", slot, address);
    return buf;
}

/* The target primary: a command on a slot it imports, sent after ASKING. NULL: it runs here. */
const char *eg_importing_refusal(VkFilterCtx *f, EgClient *cl, int argc) {
    int nkeys = 0;
    int present = eg_keys_present(f, argc, cl->id, &nkeys);
    /* As Valkey: one key may be created here; several must all have arrived already. */
    if (nkeys > 1 && present != EG_KEYS_ALL) return "TRYAGAIN Multiple keys request during rehashing of slot";
    return NULL;
}

/* MIGRATE host port key|"" db timeout ... [KEYS k...]: only the keys of slots this shard is
 * moving, and only to the primary of the shard they move to (its MIGRATE address when the node
 * pushed one, else its leader address). NULL: it may run. */
const char *eg_migrate_refusal(VkFilterCtx *f, int argc, char *buf, size_t cap) {
    EgTopology *t = eg_topology;
    if (argc < 6) return NULL; /* Valkey's own arity error, from the dry run */
    VkString *stack[64], **argv = argc <= 64 ? stack : Vk_Alloc(sizeof(*argv) * (size_t)argc);
    for (int i = 0; i < argc; i++) argv[i] = Vk_CommandFilterArgGet(f, i);
    int nkeys = 0, target = -1;
    const char *why = NULL;
    int *pos = Vk_GetCommandKeysWithFlags(NULL, argv, argc, &nkeys, NULL);
    for (int i = 0; pos && i < nkeys && !why; i++) {
        size_t len;
        const char *key = Vk_StringPtrLen(argv[pos[i]], &len);
        int slot = eg_key_slot(key, len);
        if (!t || !t->slots_known || t->owner[slot] != t->shard || t->moving[slot] == EG_NO_SHARD) {
            snprintf(buf, cap,
                     "ERR engram: MIGRATE moves only keys of slots this shard is migrating (slot %d is not); "
                     "slots move with `engram reshard`",
                     slot);
            why = buf;
        } else if (target >= 0 && t->moving[slot] != target) {
            why = "ERR engram: MIGRATE's keys move to different shards; send one MIGRATE per target";
        }
        target = t ? t->moving[slot] : -1;
    }
    if (pos) Vk_Free(pos);
    if (!why && target >= 0) {
        size_t hl, pl;
        const char *host = Vk_StringPtrLen(argv[1], &hl), *port = Vk_StringPtrLen(argv[2], &pl);
        /* The primary's Valkey as MIGRATE reaches it: its own port where a node's TLS front is announced. */
        const char *leader = eg_migrate_address_of(target);
        char dest[300];
        snprintf(dest, sizeof dest, "%.*s:%.*s", (int)(hl < 200 ? hl : 200), host, (int)(pl < 20 ? pl : 20), port);
        if (!leader || strcmp(dest, leader) != 0) {
            snprintf(buf, cap, "ERR engram: MIGRATE must go to %s, the primary of shard %d, not %s",
                     leader ? leader : "(none right now)", target, dest);
            why = buf;
        }
    }
    if (argv != stack) Vk_Free(argv);
    return why;
}

/* After a wrapped command ran: MIGRATE's outcome. An error may come after the target committed
 * some keys the source still holds, so the moving slots freeze until the mover settles them. */
void eg_migration_called(const char *cmd, size_t len, VkCallReply *reply) {
    if (!is(cmd, len, "migrate")) return;
    eg_mig_moves++;
    if (reply && Vk_CallReplyType(reply) != VK_REPLY_ERROR) return;
    EgTopology *t = eg_topology;
    if (!t || !t->moving_out) return;
    eg_mig_frozen = 1;
    migrate_failures++;
}

/* A replica became primary: the failed primary may have had a MIGRATE in flight. */
void eg_migration_promoted(void) {
    if (eg_topology && eg_topology->moving_out) eg_mig_frozen = 1;
}

/* A new slot map: nothing moving away, nothing to settle. */
void eg_migration_topology(EgTopology *t) {
    t->moving_out = t->moving_in = 0;
    if (!t->slots_known) return;
    for (int i = 0; i < EG_SLOTS; i++) {
        if (t->moving[i] == EG_NO_SHARD) continue;
        if (t->owner[i] == t->shard) t->moving_out++;
        if (t->moving[i] == t->shard) t->moving_in++;
    }
    if (!t->moving_out) eg_mig_frozen = 0;
}

int eg_migration_info(char *buf, size_t cap) {
    EgTopology *t = eg_topology;
    return snprintf(buf, cap,
                    "slot_map_epoch:%lld\r\nslots_migrating:%d\r\nslots_importing:%d\r\nmigration_frozen:%d\r\n"
                    "migrate_calls:%lld\r\nmigrate_failures:%lld\r\n",
                    t ? t->epoch : 0, t ? t->moving_out : 0, t ? t->moving_in : 0, eg_mig_frozen, eg_mig_moves,
                    migrate_failures);
}

/* ENGRAM.MIGRATION SETTLE <epoch>: the mover has migrated again every key of the moving slots
 * under this slot map; ASK may be answered again. */
int eg_cmd_migration(VkCtx *ctx, VkString **argv, int argc) {
    if (argc != 3) return Vk_WrongArity(ctx);
    const char *sub = Vk_StringPtrLen(argv[1], NULL);
    if (strcasecmp(sub, "settle") != 0) return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.MIGRATION takes SETTLE <epoch>");
    long long epoch;
    if (Vk_StringToLongLong(argv[2], &epoch) != VK_OK)
        return Vk_ReplyWithError(ctx, "ERR engram: ENGRAM.MIGRATION SETTLE takes the slot map's epoch");
    EgTopology *t = eg_topology;
    if (!t || t->epoch != epoch) {
        char buf[160];
        snprintf(buf, sizeof buf, "ERR engram: this node's slot map is at epoch %lld, not %lld", t ? t->epoch : 0,
                 epoch);
        return Vk_ReplyWithError(ctx, buf);
    }
    if (!eg_active) return Vk_ReplyWithError(ctx, "ERR engram: this node is not its shard's primary");
    eg_mig_frozen = 0;
    return Vk_ReplyWithSimpleString(ctx, "OK");
}

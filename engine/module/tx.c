/* MULTI, EXEC, DISCARD, WATCH and UNWATCH, emulated in the module.
 *
 * Valkey's own EXEC writes its reply at once and cannot be held; here the transaction's commands
 * are kept by the module and EXEC runs them inside one command, so they replicate as one
 * MULTI/EXEC block and EXEC's reply waits for their commit like any other reply. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "engram.h"

void eg_free_tx(EgClient *cl) {
    for (int i = 0; i < cl->tx_n; i++) {
        for (int j = 0; j < cl->tx[i].argc; j++) Vk_FreeString(NULL, cl->tx[i].argv[j]);
        Vk_Free(cl->tx[i].argv);
    }
    Vk_Free(cl->tx);
    cl->tx = NULL;
    cl->tx_n = cl->tx_cap = 0;
    cl->in_tx = cl->tx_abort = 0;
    cl->tx_slot = cl->tx_writes = 0;
}

/* The transaction ends without running: its commands and WATCHed keys are forgotten. */
void eg_discard_tx(EgClient *cl) {
    eg_free_tx(cl);
    eg_watch_clear(cl);
}

static int contains(const char *s, size_t len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; n <= len && i <= len - n; i++)
        if (!memcmp(s + i, needle, n)) return 1;
    return 0;
}

/* Call's refusal of a command the user may no longer run, in the words Valkey's EXEC uses for a
 * user whose rights changed after the command was queued, freeing the reply; NULL, the reply
 * untouched, for any other reply. */
static char *rights_changed(VkCallReply *reply) {
    size_t len = 0;
    const char *err = Vk_CallReplyType(reply) == VK_REPLY_ERROR ? Vk_CallReplyStringPtr(reply, &len) : NULL;
    if (!err || len < 7 || strncmp(err, "NOPERM ", 7)) return NULL;
    const char *reason = "no permission";
    if (contains(err, len, "has no permissions to run"))
        reason = "no permission to execute the command or subcommand";
    else if (contains(err, len, "access a key"))
        reason = "no permission to touch the specified keys";
    else if (contains(err, len, "access a channel"))
        reason = "no permission to access one of the channels used as arguments";
    char buf[320];
    snprintf(buf, sizeof buf,
             "NOPERM ACLs rules changed between the moment the transaction was accumulated and the EXEC "
             "call. This command is no longer allowed for the following reason: %s",
             reason);
    Vk_FreeCallReply(reply);
    return eg_strdup(buf);
}

static void run_tx(VkCtx *ctx, EgClient *cl) {
    size_t n = (size_t)(cl->tx_n ? cl->tx_n : 1);
    VkCallReply **items = Vk_Calloc(n, sizeof(*items));
    char **errors = NULL;
    /* Call inside one command: the server propagates the effects wrapped in MULTI/EXEC. */
    for (int i = 0; i < cl->tx_n; i++) {
        const char *cmd = Vk_StringPtrLen(cl->tx[i].argv[0], NULL);
        items[i] = Vk_Call(ctx, cmd, "!0ECv", cl->tx[i].argv + 1, (size_t)(cl->tx[i].argc - 1));
        /* Both free the reply when they answer in its place. */
        char *instead = eg_gap_error(ctx, items[i], cmd, strlen(cmd), cl->tx[i].argv + 1, cl->tx[i].argc - 1);
        if (!instead && items[i]) instead = rights_changed(items[i]);
        if (instead) {
            if (!errors) errors = Vk_Calloc(n, sizeof(*errors));
            errors[i] = instead;
            items[i] = NULL;
            continue;
        }
        /* Call's SELECT switches only its own client: the real one switches too, so that the
         * transaction's next commands and the client after EXEC use that database, as in Valkey. */
        long long db;
        if (items[i] && !strcasecmp(cmd, "select") && cl->tx[i].argc == 2 &&
            Vk_CallReplyType(items[i]) != VK_REPLY_ERROR &&
            Vk_StringToLongLong(cl->tx[i].argv[1], &db) == VK_OK)
            Vk_SelectDb(ctx, (int)db);
    }
    eg_queue_exec(cl, items, errors, (size_t)cl->tx_n);
    eg_need_offset(cl);
}

/* ENGRAM.TX <command> ...: MULTI, EXEC, DISCARD, WATCH, UNWATCH and commands queued in a
 * transaction, emulated so that EXEC's reply can wait for the commit like any other. */
int eg_cmd_tx(VkCtx *ctx, VkString **argv, int argc) {
    if (argc < 2) return Vk_WrongArity(ctx);
    EgClient *cl = eg_client(Vk_GetClientId(ctx), 1);
    size_t len;
    const char *cmd = Vk_StringPtrLen(argv[1], &len);
    char name[32];
    eg_lower(name, sizeof name, cmd, len);
    int cls = eg_command_class(cmd, len, argc > 2 ? argv[2] : NULL);
    if (cls & EG_CMD_TX) {
        /* The user's rights on MULTI/EXEC/... themselves: Valkey checks them before it runs them. */
        VkCallReply *denied = Vk_Call(ctx, cmd, "DCEv", argv + 2, (size_t)(argc - 2));
        if (denied && Vk_CallReplyType(denied) == VK_REPLY_ERROR) {
            size_t elen;
            const char *err = Vk_CallReplyStringPtr(denied, &elen);
            if (!strcmp(name, "exec")) { /* a refused EXEC always ends the transaction */
                char buf[512];
                snprintf(buf, sizeof buf, "EXECABORT Transaction discarded because of: %.*s", (int)elen, err);
                eg_discard_tx(cl);
                eg_queue(cl, EG_ERROR, NULL, buf);
                Vk_FreeCallReply(denied);
            } else {
                if (cl->in_tx) cl->tx_abort = 1;
                eg_queue(cl, EG_CALL, denied, NULL);
            }
            return eg_finish(ctx, cl);
        }
        if (denied) Vk_FreeCallReply(denied);
    }
    if (!strcmp(name, "exec") || !strcmp(name, "discard")) {
        int exec = name[0] == 'e';
        if (argc != 2) {
            eg_queue(cl, EG_ERROR, NULL,
                     exec ? "ERR wrong number of arguments for 'exec' command"
                          : "ERR wrong number of arguments for 'discard' command");
            if (cl->in_tx) cl->tx_abort = 1;
        } else if (!cl->in_tx) {
            eg_queue(cl, EG_ERROR, NULL, exec ? "ERR EXEC without MULTI" : "ERR DISCARD without MULTI");
        } else if (!exec) {
            eg_discard_tx(cl);
            eg_queue(cl, EG_STATUS, NULL, "OK");
        } else if (cl->tx_abort) {
            eg_discard_tx(cl);
            eg_queue(cl, EG_ERROR, NULL, "EXECABORT Transaction discarded because of previous errors.");
        } else if (eg_watch_broken(cl)) {
            eg_discard_tx(cl);
            eg_queue(cl, EG_NULLARR, NULL, NULL);
        } else {
            eg_watch_clear(cl);
            run_tx(ctx, cl);
            eg_free_tx(cl);
        }
        return eg_finish(ctx, cl);
    }
    if (cl->in_tx && (cls & EG_CMD_NO_MULTI)) {
        /* MULTI and WATCH inside MULTI included: refused, and the transaction is aborted. */
        char buf[192], full[96];
        snprintf(full, sizeof full, "%s", name);
        if (argc > 2 && (eg_command_class(cmd, len, NULL) & EG_CMD_CONTAINER)) { /* Valkey names "client|reply" */
            size_t sublen;
            const char *sub = Vk_StringPtrLen(argv[2], &sublen);
            size_t n = strlen(full);
            full[n++] = '|';
            eg_lower(full + n, sizeof full - n, sub, sublen);
        }
        snprintf(buf, sizeof buf, "ERR Command '%s' not allowed inside a transaction", full);
        eg_queue(cl, EG_ERROR, NULL, buf);
        cl->tx_abort = 1;
        return eg_finish(ctx, cl);
    }
    if (!strcmp(name, "multi") && !cl->in_tx) {
        if (argc != 2) {
            eg_queue(cl, EG_ERROR, NULL, "ERR wrong number of arguments for 'multi' command");
        } else {
            cl->in_tx = 1;
            cl->tx_abort = 0;
            cl->tx_slot = cl->tx_writes = 0;
            eg_queue(cl, EG_STATUS, NULL, "OK");
        }
        return eg_finish(ctx, cl);
    }
    if (!strcmp(name, "watch") && !cl->in_tx) {
        if (argc < 3) {
            eg_queue(cl, EG_ERROR, NULL, "ERR wrong number of arguments for 'watch' command");
        } else {
            int db = Vk_GetSelectedDb(ctx);
            for (int i = 2; i < argc; i++) eg_watch_add(cl, db, argv[i]);
            eg_queue(cl, EG_STATUS, NULL, "OK");
        }
        return eg_finish(ctx, cl);
    }
    if (!strcmp(name, "unwatch") && !cl->in_tx) {
        if (argc != 2) {
            eg_queue(cl, EG_ERROR, NULL, "ERR wrong number of arguments for 'unwatch' command");
        } else {
            eg_watch_clear(cl);
            eg_queue(cl, EG_STATUS, NULL, "OK");
        }
        return eg_finish(ctx, cl);
    }
    /* A command queued inside the transaction: a dry run reports now what the server would
     * refuse while queueing (unknown command, arity, ACL), which aborts the transaction. */
    VkCallReply *dry = Vk_Call(ctx, cmd, "DECv", argv + 2, (size_t)(argc - 2));
    if (dry && Vk_CallReplyType(dry) == VK_REPLY_ERROR) {
        cl->tx_abort = 1;
        eg_queue(cl, EG_CALL, dry, NULL);
        return eg_finish(ctx, cl);
    }
    if (dry) Vk_FreeCallReply(dry);
    if (!cl->tx_abort) {
        if (cl->tx_n == cl->tx_cap) {
            cl->tx_cap = cl->tx_cap ? cl->tx_cap * 2 : 8;
            cl->tx = Vk_Realloc(cl->tx, sizeof(*cl->tx) * (size_t)cl->tx_cap);
        }
        if (cls & EG_CMD_WRITE) cl->tx_writes = 1;
        EgTxCommand *c = &cl->tx[cl->tx_n++];
        c->argc = argc - 1;
        c->argv = Vk_Alloc(sizeof(*c->argv) * (size_t)c->argc);
        for (int i = 0; i < c->argc; i++) {
            Vk_RetainString(NULL, argv[1 + i]);
            c->argv[i] = argv[1 + i];
        }
    }
    eg_queue(cl, EG_STATUS, NULL, "QUEUED");
    return eg_finish(ctx, cl);
}

/* Replies the module API loses, filled in so that clients see what Valkey would send them.
 *
 * On Valkey 9.1.2, Call of GETDEL or GETSET on a key of another type returns an empty reply
 * (no type, no bytes) where a client, MULTI/EXEC or a script gets WRONGTYPE. A scan of every
 * command whose first argument is a key, over keys of all six types, found no other. Forwarded as it is,
 * the client would wait forever for a reply that never comes (an EXEC's array would be one
 * element short). An empty reply from Call is therefore replaced by the error Valkey gives. */
#include <stdio.h>
#include <string.h>

#include "engram.h"

#define WRONGTYPE "WRONGTYPE Operation against a key holding the wrong kind of value"

static int is_empty(VkCallReply *reply) {
    size_t len = 0;
    return Vk_CallReplyType(reply) != VK_REPLY_PROMISE && (Vk_CallReplyProto(reply, &len), len == 0);
}

/* NULL, the reply untouched, unless Call gave no reply: then the reply is freed and the error
 * returned (caller frees) is WRONGTYPE when the key holds another type than the strings GETDEL
 * and GETSET work on, else an error naming the gap. */
char *eg_gap_error(VkCtx *ctx, VkCallReply *reply, const char *cmd, size_t len, VkString **args, int nargs) {
    if (!reply || !is_empty(reply)) return NULL;
    Vk_FreeCallReply(reply);
    char name[32];
    eg_lower(name, sizeof name, cmd, len);
    if (nargs > 0 && (!strcmp(name, "getdel") || !strcmp(name, "getset"))) {
        VkCallReply *type = Vk_Call(ctx, "TYPE", "s", args[0]);
        size_t tlen = 0;
        const char *t = type ? Vk_CallReplyStringPtr(type, &tlen) : NULL;
        int wrong = t && !(tlen == 6 && !memcmp(t, "string", 6)) && !(tlen == 4 && !memcmp(t, "none", 4));
        if (type) Vk_FreeCallReply(type);
        if (wrong) return eg_strdup(WRONGTYPE);
    }
    char buf[160];
    snprintf(buf, sizeof buf, "ERR engram: Valkey gave no reply to '%s' called from the module", name);
    return eg_strdup(buf);
}

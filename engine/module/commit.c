/* Commit offsets: what the replica link acknowledged, and what the server has written.
 *
 * The journal-backed replica (the node's replication tap) acknowledges an offset with
 * REPLCONF ACK only after the journal committed every byte up to it; no server event fires on
 * acks, so the command filter reports them here. A write's own offset is known only once the
 * command has run and its effects were propagated: it is read once per event-loop iteration,
 * before sleep, for everything that ran in it. */
#include <string.h>

#include "engram.h"

long long eg_committed = 0;
static int unassigned_pending = 0;

void eg_on_ack(long long offset) {
    if (offset <= eg_committed) return;
    eg_committed = offset;
    eg_dirty_release(eg_committed);
    eg_release_ready();
}

void eg_mark_unassigned(void) {
    unassigned_pending = 1;
}

int eg_unassigned_pending(void) {
    return unassigned_pending;
}

/* master_repl_offset through ROLE: a fraction of the cost of INFO replication. */
long long eg_current_offset(VkCtx *ctx) {
    unassigned_pending = 0;
    VkCallReply *role = Vk_Call(ctx, "ROLE", "");
    long long offset = 0;
    if (role && Vk_CallReplyLength(role) >= 2) {
        size_t len;
        const char *kind = Vk_CallReplyStringPtr(Vk_CallReplyArrayElement(role, 0), &len);
        if (kind && len == 6 && !memcmp(kind, "master", 6))
            offset = Vk_CallReplyInteger(Vk_CallReplyArrayElement(role, 1));
    }
    if (role) Vk_FreeCallReply(role);
    /* Without a replica the server keeps no backlog and its offset stays 0: nothing can be
     * acknowledged then, so a write waits for a replica link (or the commit timeout). */
    return offset < 1 ? 1 : offset;
}

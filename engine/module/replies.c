/* Per-client queues of replies that wait for a commit.
 *
 * A client's write runs at once; its reply, and the reply of every later command of that
 * client, joins the client's queue. The command that ends the client's input blocks the
 * client; the queue is emitted, in order, from one reply callback once the replica link has
 * acknowledged an offset covering everything in it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engram.h"

static VkDict *clients;
static EgClient *last_client; /* a pipeline hits the same client many times in a row */

/* Clients to visit before sleep (queued effects need an offset) and clients blocked now. */
static EgClient **touched, **blocked;
static size_t n_touched, cap_touched, n_blocked, cap_blocked;
static long long total_queued_bytes;
static long long stat_blocks, stat_emitted, stat_timeouts, stat_failed, stat_early;

/* Commit waits: from a batch blocking to the acknowledgement that releases it, the part of a
 * write's latency the journal round trip adds (ENGRAM.INFO, docs/data-path.md). Bucket bounds in
 * microseconds; counts per bucket, reported cumulative as Prometheus does. */
static const long long wait_bounds_us[] = {250, 500, 1000, 2000, 3000, 5000, 7500, 10000, 25000, 100000};
#define EG_WAIT_BUCKETS (sizeof wait_bounds_us / sizeof wait_bounds_us[0])
static long long wait_buckets[EG_WAIT_BUCKETS + 1], wait_count, wait_sum_us;

static void record_wait(long long us) {
    size_t i = 0;
    while (i < EG_WAIT_BUCKETS && us > wait_bounds_us[i]) i++;
    wait_buckets[i]++;
    wait_count++;
    wait_sum_us += us;
}

/* Queued replies live outside the client's output buffer, where neither client-output-buffer
 * limits nor maxmemory-clients see them: past these, a client blocks before its input ends. */
#define EG_MAX_QUEUED_ENTRIES 4096
#define EG_MAX_TOTAL_QUEUED_BYTES (256LL << 20)
/* The shortest complete command in RESP: "*1\r\n$1\r\nX\r\n". */
#define EG_MIN_COMMAND_BYTES 11

long long eg_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void push(EgClient ***arr, size_t *n, size_t *cap, EgClient *cl) {
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *arr = Vk_Realloc(*arr, sizeof(**arr) * *cap);
    }
    (*arr)[(*n)++] = cl;
}

static void remove_blocked(EgClient *cl) {
    for (size_t i = 0; i < n_blocked; i++) {
        if (blocked[i] == cl) {
            blocked[i] = blocked[--n_blocked];
            return;
        }
    }
}

EgClient *eg_client(unsigned long long id, int create) {
    if (last_client && last_client->id == id) return last_client;
    if (!clients) clients = Vk_CreateDict(NULL);
    EgClient *cl = Vk_DictGetC(clients, &id, sizeof(id), NULL);
    if (!cl && create) {
        cl = Vk_Calloc(1, sizeof(*cl));
        cl->id = id;
        cl->netin_iter = -1;
        Vk_DictSetC(clients, &id, sizeof(id), cl);
    }
    if (cl) last_client = cl;
    return cl;
}

static void touch(EgClient *cl) {
    if (!cl->touched) {
        cl->touched = 1;
        push(&touched, &n_touched, &cap_touched, cl);
    }
}

static size_t entry_bytes(EgEntry *e) {
    size_t n = sizeof(*e), len = 0;
    if (e->reply) {
        Vk_CallReplyProto(e->reply, &len);
        n += len;
    }
    for (size_t i = 0; i < e->nitems; i++) {
        if (e->item_errors && e->item_errors[i]) n += strlen(e->item_errors[i]);
        if (!e->items[i]) continue;
        Vk_CallReplyProto(e->items[i], &len);
        n += len;
    }
    if (e->text) n += strlen(e->text);
    if (e->resp) n += e->resp->bytes;
    return n;
}

static void free_entry(EgEntry *e) {
    EG_CHECK(!e->reply || Vk_CallReplyType(e->reply) != VK_REPLY_ERROR,
             "a queued error reply outlived the command that made it");
    for (size_t i = 0; i < e->nitems; i++)
        EG_CHECK(!e->items[i] || Vk_CallReplyType(e->items[i]) != VK_REPLY_ERROR,
                 "a queued EXEC error reply outlived the command that made it");
    if (e->reply) Vk_FreeCallReply(e->reply);
    for (size_t i = 0; i < e->nitems; i++) {
        if (e->items[i]) Vk_FreeCallReply(e->items[i]);
        if (e->item_errors) Vk_Free(e->item_errors[i]);
    }
    Vk_Free(e->items);
    Vk_Free(e->item_errors);
    Vk_Free(e->text);
    eg_resp_release(e->resp);
    Vk_Free(e);
}

static void free_queue(EgClient *cl) {
    EgEntry *e = cl->head;
    while (e) {
        EgEntry *next = e->next;
        free_entry(e);
        e = next;
    }
    cl->head = cl->tail = NULL;
    cl->queued = 0;
    total_queued_bytes -= (long long)cl->queued_bytes;
    cl->queued_bytes = 0;
    cl->target = 0;
    cl->users_target = 0;
    cl->unassigned = 0;
    cl->fail_at = 0;
    Vk_Free(cl->fail);
    cl->fail = NULL;
}

static void free_client(EgClient *cl) {
    free_queue(cl);
    eg_free_tx(cl);
    eg_watch_clear(cl);
    Vk_Free(cl);
}

/* A disconnected client's record goes once nothing points at it: no blocked handle, and not on
 * the list visited before sleep (a client can be freed in the iteration it queued a reply). */
static void free_if_unused(EgClient *cl) {
    if (cl->dead && !cl->ticket && !cl->touched) free_client(cl);
}

/* An error reply's text, freeing the reply; NULL, the reply untouched, for any other reply.
 *
 * The error replies Call makes itself (an unknown command, a wrong arity, a user's missing right,
 * a refused write under maxmemory) point at the calling command's context, which is a stack
 * frame gone once the command returns. Freeing such a reply later reads that dead frame, and
 * crashed Valkey when the bytes left there looked like a context with auto memory. So a queued
 * error is kept as text, and every reply is freed while its command still runs. */
static char *take_error(VkCallReply *reply) {
    if (!reply || Vk_CallReplyType(reply) != VK_REPLY_ERROR) return NULL;
    size_t len = 0;
    const char *p = Vk_CallReplyStringPtr(reply, &len);
    char *text = Vk_Alloc(len + 1);
    if (p) memcpy(text, p, len);
    text[p ? len : 0] = 0;
    Vk_FreeCallReply(reply);
    return text;
}

/* Called while the command that queues the entry runs (its context is alive). */
static void keep_errors_as_text(EgEntry *e) {
    char *text;
    if (e->kind == EG_CALL && (text = take_error(e->reply))) {
        e->kind = EG_ERROR;
        e->text = text;
        e->reply = NULL;
    }
    for (size_t i = 0; i < e->nitems; i++) {
        if (!(text = take_error(e->items[i]))) continue;
        if (!e->item_errors) e->item_errors = Vk_Calloc(e->nitems, sizeof(*e->item_errors));
        e->item_errors[i] = text;
        e->items[i] = NULL;
    }
}

/* A reply Valkey would drop (CLIENT REPLY OFF/SKIP in force when its command ran) is dropped
 * now; a blocking command's place is kept, silenced: the client still waits for it. */
static EgEntry *append(EgClient *cl, EgEntry *e) {
    keep_errors_as_text(e);
    if (eg_silenced(cl)) {
        if (e->kind != EG_PENDING) {
            free_entry(e);
            return NULL;
        }
        e->silenced = 1;
    }
    if (cl->tail)
        cl->tail->next = e;
    else
        cl->head = e;
    cl->tail = e;
    cl->queued++;
    size_t bytes = entry_bytes(e);
    cl->queued_bytes += bytes;
    total_queued_bytes += (long long)bytes;
    touch(cl);
    return e;
}

EgEntry *eg_queue(EgClient *cl, EgKind kind, VkCallReply *reply, const char *text) {
    EgEntry *e = Vk_Calloc(1, sizeof(*e));
    e->kind = kind;
    e->reply = reply;
    e->text = text ? eg_strdup(text) : NULL;
    return append(cl, e);
}

/* An emulated EXEC's replies, owned by the queue from now on. */
EgEntry *eg_queue_exec(EgClient *cl, VkCallReply **items, char **errors, size_t n) {
    EgEntry *e = Vk_Calloc(1, sizeof(*e));
    e->kind = EG_EXEC;
    e->items = items;
    e->item_errors = errors;
    e->nitems = n;
    return append(cl, e);
}

/* A parsed reply (a CLUSTER reply, a refusal...); the queue takes the caller's reference. */
EgEntry *eg_queue_resp(EgClient *cl, EgResp *resp) {
    EgEntry *e = Vk_Calloc(1, sizeof(*e));
    e->kind = EG_RESP;
    e->resp = resp;
    return append(cl, e);
}

/* The queue now holds an effect that is in the replication stream only once this event-loop
 * iteration ends: its offset is read before sleep. */
void eg_need_offset(EgClient *cl) {
    if (!eg_active) return; /* a replica holds nothing */
    if (!cl->unassigned) eg_mark_unassigned();
    cl->unassigned = 1;
    touch(cl);
}

void eg_need_target(EgClient *cl, long long target) {
    if (!eg_active) return;
    if (target > cl->target) cl->target = target;
}

static int ready(EgClient *cl) {
    if (cl->promise) return 0;
    if (cl->fail) return 1;
    return !cl->unassigned && cl->target <= eg_committed && cl->users_target <= eg_users_done;
}

static void emit(VkCtx *ctx, EgClient *cl) {
    for (EgEntry *e = cl->head; e; e = e->next) {
        if (e->silenced) continue;
        if (cl->fail) {
            char buf[512];
            snprintf(buf, sizeof buf, "UNKNOWN %s; the outcome of this command is unknown", cl->fail);
            Vk_ReplyWithError(ctx, buf);
            stat_failed++;
            continue;
        }
        switch (e->kind) {
        case EG_CALL: Vk_ReplyWithCallReply(ctx, e->reply); break;
        case EG_ERROR: Vk_ReplyWithError(ctx, e->text); break;
        case EG_STATUS: Vk_ReplyWithSimpleString(ctx, e->text); break;
        case EG_NULLARR: Vk_ReplyWithNullArray(ctx); break;
        case EG_EXEC:
            Vk_ReplyWithArray(ctx, (long)e->nitems);
            for (size_t i = 0; i < e->nitems; i++) {
                if (e->items[i])
                    Vk_ReplyWithCallReply(ctx, e->items[i]);
                else if (e->item_errors && e->item_errors[i])
                    Vk_ReplyWithError(ctx, e->item_errors[i]);
                else
                    Vk_ReplyWithError(ctx, "ERR engram: the command could not be run");
            }
            break;
        case EG_PENDING: Vk_ReplyWithError(ctx, "ERR engram: a blocking command lost its reply"); break;
        case EG_RESP: eg_resp_emit(ctx, e->resp); break;
        }
        stat_emitted++;
    }
    free_queue(cl);
}

static int on_reply(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    (void)argc;
    EgTicket *t = Vk_GetBlockedClientPrivateData(ctx);
    if (t && t->client) emit(ctx, t->client);
    return VK_OK;
}

/* No acknowledgement within the commit timeout: the writes ran, their commit is unknown. */
static int on_timeout(VkCtx *ctx, VkString **argv, int argc) {
    (void)argv;
    (void)argc;
    EgTicket *t = Vk_GetBlockedClientPrivateData(ctx);
    EgClient *cl = t ? t->client : NULL;
    if (!cl) return VK_OK;
    stat_timeouts++;
    if (!cl->fail) {
        char buf[128];
        snprintf(buf, sizeof buf, "commit not confirmed by the journal within %lld ms", eg_commit_timeout_ms);
        cl->fail = eg_strdup(buf);
    }
    if (cl->promise) {
        Vk_CallReplyPromiseAbort(cl->promise, NULL);
        Vk_FreeCallReply(cl->promise);
        cl->promise = NULL;
        cl->promise_entry = NULL;
    }
    emit(ctx, cl);
    remove_blocked(cl);
    cl->ticket = NULL;
    t->client = NULL;
    /* A client blocked without keys is freed only through UnblockClient, even after a timeout. */
    t->released = 1;
    Vk_UnblockClient(t->bc, t);
    return VK_OK;
}

static void on_free(VkCtx *ctx, void *privdata) {
    (void)ctx;
    EgTicket *t = privdata;
    if (!t) return;
    EgClient *cl = t->client;
    if (cl && cl->ticket == t) {
        cl->ticket = NULL;
        free_if_unused(cl);
    }
    Vk_Free(t);
}

/* The client went away while blocked: the server calls this before it frees the client, and
 * the blocked handle is released only by UnblockClient. */
static void on_disconnect(VkCtx *ctx, VkBlockedClient *bc) {
    (void)ctx;
    EgTicket *t = Vk_BlockClientGetPrivateData(bc);
    EgClient *cl = t ? t->client : NULL;
    if (!cl) return;
    if (cl->promise) {
        Vk_CallReplyPromiseAbort(cl->promise, NULL);
        Vk_FreeCallReply(cl->promise);
        cl->promise = NULL;
        cl->promise_entry = NULL;
    }
    remove_blocked(cl);
    free_queue(cl);
    t->client = NULL;
    cl->ticket = NULL;
    free_if_unused(cl);
    /* Already released (its reply callback was still to run): the handle is on its way out. */
    if (!t->released) Vk_UnblockClient(bc, t);
}

static void block(VkCtx *ctx, EgClient *cl, long long timeout_ms) {
    EgTicket *t = Vk_Calloc(1, sizeof(*t));
    t->client = cl;
    t->bc = Vk_BlockClient(ctx, on_reply, on_timeout, on_free, timeout_ms);
    /* The timeout and disconnect paths find the ticket here; UnblockClient passes it again. */
    Vk_BlockClientSetPrivateData(t->bc, t);
    cl->ticket = t;
    Vk_SetDisconnectCallback(t->bc, on_disconnect);
    push(&blocked, &n_blocked, &cap_blocked, cl);
    stat_blocks++;
}

/* Bytes of this client's input that no command has consumed yet. */
static long long input_left(VkCtx *ctx, EgClient *cl) {
    if (cl->netin_iter != eg_iter) {
        VkCallReply *r = Vk_Call(ctx, "CLIENT", "ccl", "LIST", "ID", (long long)cl->id);
        size_t len = 0;
        const char *p = r ? Vk_CallReplyStringPtr(r, &len) : NULL;
        const char *q = p ? strstr(p, " tot-net-in=") : NULL;
        cl->netin = q ? atoll(q + 12) : cl->consumed;
        if (r) Vk_FreeCallReply(r);
        cl->netin_iter = eg_iter;
    }
    long long left = cl->netin - cl->consumed;
    if (left < 0) { /* inline commands are shorter than the bytes counted for them */
        cl->consumed = cl->netin;
        left = 0;
    }
    return left;
}

/* After a reply joined the queue: return without replying while more of the client's input
 * waits (Valkey runs the next command), block when this command ends the input. */
int eg_finish(VkCtx *ctx, EgClient *cl) {
    if (!cl->head) return VK_OK;
    /* Nothing in the queue waits for anything (reads of committed data run in a wrapper while
     * replies are silenced, or to prove a connection authenticated): it goes out now, and the
     * client's next commands need not queue behind it. */
    if (!cl->fail && !cl->ticket && ready(cl)) {
        emit(ctx, cl);
        return VK_OK;
    }
    int over_cap = cl->queued_bytes > (size_t)eg_max_queued_bytes || cl->queued >= EG_MAX_QUEUED_ENTRIES ||
                   total_queued_bytes > EG_MAX_TOTAL_QUEUED_BYTES;
    long long left = input_left(ctx, cl);
    if (left >= EG_MIN_COMMAND_BYTES && !over_cap) return VK_OK;
    if (left >= EG_MIN_COMMAND_BYTES) stat_early++;
    /* Fewer bytes than any command: the start of one still arriving, or bytes that hold no
     * command at all (an empty "*0" array). Waiting for a command that never comes would strand
     * the queue, so the client blocks now, and its count is checked again before sleep. */
    if (left > 0) cl->recount = 1;
    if (ready(cl)) {
        emit(ctx, cl);
        return VK_OK;
    }
    block(ctx, cl, eg_commit_timeout_ms);
    cl->ticket->blocked_us = eg_now_us();
    return VK_OK;
}

/* A blocking command (BLPOP...) blocked on Call's client: the real client blocks now, and the
 * command's reply fills its place in the queue when it comes. */
static void on_promise(VkCtx *ctx, VkCallReply *reply, void *privdata) {
    (void)ctx;
    unsigned long long id = (unsigned long long)(uintptr_t)privdata;
    EgClient *cl = eg_client(id, 0);
    if (!cl || !cl->promise || !cl->promise_entry) {
        Vk_FreeCallReply(reply);
        return;
    }
    EgEntry *e = cl->promise_entry;
    e->kind = EG_CALL;
    e->reply = reply;
    keep_errors_as_text(e); /* while the handler's context lives */
    /* The module owns the promise handle: it is freed before sleep, not inside its handler. */
    cl->promise_entry = NULL;
    eg_need_offset(cl); /* the command may have written (BLPOP pops) */
}

int eg_block_for_promise(VkCtx *ctx, EgClient *cl, VkCallReply *promise) {
    cl->promise = promise;
    cl->promise_entry = eg_queue(cl, EG_PENDING, NULL, NULL);
    Vk_CallReplyPromiseSetUnblockHandler(promise, on_promise, (void *)(uintptr_t)cl->id);
    /* The blocking command has its own timeout; the commit timeout starts once it returned. */
    block(ctx, cl, 0);
    return VK_OK;
}

void eg_release_ready(void) {
    long long now = 0;
    for (size_t i = 0; i < n_blocked;) {
        EgClient *cl = blocked[i];
        if (cl->ticket && !cl->ticket->released && ready(cl)) {
            blocked[i] = blocked[--n_blocked];
            if (cl->ticket->blocked_us && !cl->fail) {
                if (!now) now = eg_now_us(); /* one clock read for every client an ack releases */
                record_wait(now - cl->ticket->blocked_us);
            }
            /* The ticket stays on the client until the server frees it: the client can still
             * disconnect before its reply callback runs, and must not be freed under it. */
            cl->ticket->released = 1;
            Vk_UnblockClient(cl->ticket->bc, cl->ticket);
            continue;
        }
        i++;
    }
}

/* ENGRAM.STEPDOWN: every queued reply fails; blocked clients are released at once, clients in
 * the middle of a pipeline when their batch ends. */
void eg_fail_all(const char *reason) {
    if (!clients) return;
    VkDictIter *it = Vk_DictIteratorStartC(clients, "^", NULL, 0);
    EgClient *cl;
    while (Vk_DictNextC(it, NULL, (void **)&cl)) {
        /* A released queue was committed: its replies are already on their way. */
        if (!cl->head || (cl->ticket && cl->ticket->released)) continue;
        if (!cl->fail) cl->fail = eg_strdup(reason);
        if (cl->promise) {
            Vk_CallReplyPromiseAbort(cl->promise, NULL);
            Vk_FreeCallReply(cl->promise);
            cl->promise = NULL;
            cl->promise_entry = NULL;
        }
    }
    Vk_DictIteratorStop(it);
    eg_release_ready();
}

/* ENGRAM.CLIENTS: [id, queued replies, blocked] for every client the module tracks. */
int eg_reply_clients(VkCtx *ctx) {
    long n = clients ? (long)Vk_DictSize(clients) : 0;
    Vk_ReplyWithArray(ctx, n);
    if (!n) return VK_OK;
    VkDictIter *it = Vk_DictIteratorStartC(clients, "^", NULL, 0);
    EgClient *cl;
    while (Vk_DictNextC(it, NULL, (void **)&cl)) {
        Vk_ReplyWithArray(ctx, 3);
        Vk_ReplyWithLongLong(ctx, (long long)cl->id);
        Vk_ReplyWithLongLong(ctx, (long long)cl->queued);
        Vk_ReplyWithLongLong(ctx, cl->ticket != NULL);
    }
    Vk_DictIteratorStop(it);
    return VK_OK;
}

/* Set the byte count to what the server has read, when nothing of this client's input waits
 * to be parsed: bytes that carried no command are forgotten. Returns 0 when it must wait. */
static int recount(VkCtx *ctx, EgClient *cl) {
    VkCallReply *r = Vk_Call(ctx, "CLIENT", "ccl", "LIST", "ID", (long long)cl->id);
    size_t len = 0;
    const char *p = r ? Vk_CallReplyStringPtr(r, &len) : NULL;
    const char *netin = p ? strstr(p, " tot-net-in=") : NULL;
    const char *qbuf = p ? strstr(p, " qbuf=") : NULL;
    const char *argv_mem = p ? strstr(p, " argv-mem=") : NULL;
    int done = 0;
    /* Before sleep qbuf holds only unparsed bytes, and argv-mem the arguments of a command
     * parsed in part: both 0 means every byte read so far was consumed. */
    if (netin && qbuf && argv_mem && atoll(qbuf + 6) == 0 && atoll(argv_mem + 10) == 0) {
        cl->consumed = atoll(netin + 12);
        done = 1;
    } else if (!p) {
        done = 1; /* the client is gone */
    }
    if (r) Vk_FreeCallReply(r);
    return done;
}

void eg_before_sleep_clients(VkCtx *ctx, long long offset) {
    size_t n = n_touched, carried = 0;
    n_touched = 0;
    for (size_t i = 0; i < n; i++) {
        EgClient *cl = touched[i];
        cl->touched = 0;
        if (cl->promise && !cl->promise_entry) {
            Vk_FreeCallReply(cl->promise); /* its reply already joined the queue */
            cl->promise = NULL;
            /* The commit timeout starts now that the blocking command has answered. */
            cl->fail_at = eg_now_ms() + eg_commit_timeout_ms;
        }
        if (cl->unassigned) {
            cl->unassigned = 0;
            if (offset > cl->target) cl->target = offset;
        }
        /* A blocked client's parsed commands wait in a queue no counter shows: recount later. */
        int stranded = cl->head && !cl->ticket && !cl->dead;
        if ((cl->recount || stranded) && !cl->ticket && !cl->dead) {
            if (recount(ctx, cl)) cl->recount = 0;
        }
        if (cl->recount && !cl->dead) {
            touched[carried++] = cl; /* visited again next time */
            cl->touched = 1;
            continue;
        }
        free_if_unused(cl);
    }
    n_touched = carried;
    /* Clients blocked on a blocking command have no server-side commit timeout. */
    long long now = -1;
    for (size_t i = 0; i < n_blocked; i++) {
        EgClient *cl = blocked[i];
        if (!cl->fail_at || cl->fail) continue;
        if (now < 0) now = eg_now_ms();
        if (now >= cl->fail_at) {
            char buf[128];
            snprintf(buf, sizeof buf, "commit not confirmed by the journal within %lld ms",
                     eg_commit_timeout_ms);
            cl->fail = eg_strdup(buf);
            stat_timeouts++;
        }
    }
}

int eg_is_replica_link(unsigned long long id) {
    EgClient *cl = eg_client(id, 0);
    return cl && cl->replica_link;
}

/* The client disconnected (server event). A blocked client is cleaned up by on_disconnect. */
void eg_client_gone(unsigned long long id) {
    if (!clients) return;
    EgClient *cl = Vk_DictGetC(clients, &id, sizeof(id), NULL);
    if (!cl) return;
    Vk_DictDelC(clients, &id, sizeof(id), NULL);
    if (last_client == cl) last_client = NULL;
    cl->dead = 1;
    /* Whatever the link had not acknowledged may never reach the journal, and a new link's first
     * ack covers bytes it never saw (it starts from a snapshot): no held reply can be confirmed. */
    if (cl->replica_link) eg_fail_all("the replication link to the journal was lost");
    if (cl->ticket) return; /* on_disconnect finishes it */
    free_queue(cl);
    free_if_unused(cl);
}

/* ENGRAM.INFO's commit wait lines: count, sum and cumulative buckets "le_us=count,...,inf=count". */
int eg_commit_wait_info(char *buf, size_t cap) {
    int n = snprintf(buf, cap, "commit_waits:%lld\r\ncommit_wait_us_sum:%lld\r\ncommit_wait_us_buckets:",
                     wait_count, wait_sum_us);
    long long cumulative = 0;
    for (size_t i = 0; i <= EG_WAIT_BUCKETS && n > 0 && (size_t)n < cap; i++) {
        cumulative += wait_buckets[i];
        if (i < EG_WAIT_BUCKETS)
            n += snprintf(buf + n, cap - (size_t)n, "%lld=%lld,", wait_bounds_us[i], cumulative);
        else
            n += snprintf(buf + n, cap - (size_t)n, "inf=%lld\r\n", cumulative);
    }
    return n;
}

void eg_replies_stats(EgStats *s) {
    s->clients = clients ? (long long)Vk_DictSize(clients) : 0;
    s->blocked = (long long)n_blocked;
    s->queued_bytes = total_queued_bytes;
    s->blocks = stat_blocks;
    s->early_blocks = stat_early;
    s->emitted = stat_emitted;
    s->timeouts = stat_timeouts;
    s->failed = stat_failed;
}

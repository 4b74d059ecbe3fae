/* Engram's Valkey module: our own declarations of the parts of the Valkey module API we use,
 * and the types shared by the module's files.
 *
 * The server hands every module a function, first in the load context, that resolves API
 * functions by name ("ValkeyModule_<Name>"); vk_resolve_api() fills the pointers below through
 * it. Constants and struct layouts are the server's ABI (Valkey 8/9, API version 1). */
#ifndef ENGRAM_H
#define ENGRAM_H

#include <stddef.h>
#include <stdint.h>

/* ---- The server's ABI ---------------------------------------------------------------- */

typedef struct VkCtx VkCtx;
typedef struct VkString VkString;
typedef struct VkCallReply VkCallReply;
typedef struct VkBlockedClient VkBlockedClient;
typedef struct VkFilterCtx VkFilterCtx;
typedef struct VkFilter VkFilter;
typedef struct VkDict VkDict;
typedef struct VkDictIter VkDictIter;
typedef struct VkCommand VkCommand;
typedef struct VkKey VkKey;
typedef struct VkScanCursor VkScanCursor;
typedef struct VkUser VkUser;
typedef struct VkRdbStream VkRdbStream;

#define VK_OK 0
#define VK_ERR 1

/* The module's internal invariants, checked only in engram-checked.so (tests): a broken one
 * aborts Valkey with its reason in the log instead of corrupting memory later and elsewhere. */
#ifdef EG_CHECKED
#include <stdio.h>
#include <stdlib.h>
#define EG_CHECK(cond, what)                                                                   \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "engram: invariant broken at %s:%d: %s\n", __FILE__, __LINE__, what); \
            abort();                                                                           \
        }                                                                                      \
    } while (0)
#else
#define EG_CHECK(cond, what) ((void)0)
#endif
#define VK_APIVER_1 1

#define VK_REPLY_ERROR 1
#define VK_REPLY_PROMISE 12

#define VK_CTX_FLAGS_LUA (1 << 0)
#define VK_CTX_FLAGS_MULTI (1 << 1)
#define VK_CTX_FLAGS_REPLICA (1 << 3)

#define VK_CMDFILTER_NOSELF (1 << 0)

/* Keyspace notification classes: generic, string, list, set, hash, zset, expired, evicted,
 * stream and module keys, which is every class that changes data. */
#define VK_NOTIFY_EXPIRED (1 << 8)
#define VK_NOTIFY_DATA                                                                         \
    ((1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | \
     (1 << 10) | (1 << 13))

typedef struct VkEvent {
    uint64_t id;
    uint64_t dataver;
} VkEvent;

#define VK_EVENT_ROLE_CHANGED 0
#define VK_EVENT_FLUSHDB 2
#define VK_EVENT_CLIENT_CHANGE 4
#define VK_EVENT_EVENTLOOP 15
#define VK_SUBEVENT_NOW_PRIMARY 0
#define VK_SUBEVENT_CLIENT_DISCONNECTED 1
#define VK_SUBEVENT_BEFORE_SLEEP 0
#define VK_SUBEVENT_AFTER_SLEEP 1

typedef struct VkClientInfo { /* version 1 */
    uint64_t version;
    uint64_t flags;
    uint64_t id;
    char addr[46];
    uint16_t port;
    uint16_t db;
} VkClientInfo;

#define VK_CLIENTINFO_FLAG_UNIXSOCKET (1 << 4)

#define VK_CONFIG_DEFAULT 0
#define VK_CONFIG_IMMUTABLE 1 /* set only at startup: module argument, --engram.<name>, config file */

/* A module data type used only for its RDB aux field (region.c keeps its stamps there). */
typedef struct VkType VkType;
typedef struct VkIO VkIO;
typedef int (*VkAuxLoadFunc)(VkIO *rdb, int encver, int when);
typedef void (*VkAuxSaveFunc)(VkIO *rdb, int when);
typedef struct VkTypeMethods { /* version 5; unused callbacks stay NULL */
    uint64_t version;
    void *rdb_load, *rdb_save, *aof_rewrite, *mem_usage, *digest, *free;
    VkAuxLoadFunc aux_load;
    VkAuxSaveFunc aux_save;
    int aux_save_triggers;
    void *free_effort, *unlink, *copy, *defrag, *mem_usage2, *free_effort2, *unlink2, *copy2;
    VkAuxSaveFunc aux_save2; /* writes nothing: no aux field, so RDBs without stamps stay as they were */
} VkTypeMethods;
#define VK_TYPE_METHOD_VERSION 5
#define VK_AUX_AFTER_RDB (1 << 1)

#define VK_REPLY_STRING 0
#define VK_REPLY_INTEGER 2
#define VK_REPLY_ARRAY 3
#define VK_REPLY_NULL 4
#define VK_REPLY_SET 6

typedef int (*VkCmdFunc)(VkCtx *ctx, VkString **argv, int argc);
typedef void (*VkFilterFunc)(VkFilterCtx *filter);
typedef void (*VkEventCallback)(VkCtx *ctx, VkEvent event, uint64_t subevent, void *data);
typedef int (*VkNotifyFunc)(VkCtx *ctx, int type, const char *event, VkString *key);
typedef void (*VkPostJobFunc)(VkCtx *ctx, void *pd);
typedef void (*VkDisconnectFunc)(VkCtx *ctx, VkBlockedClient *bc);
typedef void (*VkFreePrivFunc)(VkCtx *ctx, void *privdata);
typedef void (*VkOnUnblocked)(VkCtx *ctx, VkCallReply *reply, void *privdata);
typedef long long (*VkGetNumericFunc)(const char *name, void *privdata);
typedef int (*VkSetNumericFunc)(const char *name, long long val, void *privdata, VkString **err);
typedef int (*VkApplyFunc)(VkCtx *ctx, void *privdata, VkString **err);
typedef int (*VkGetBoolFunc)(const char *name, void *privdata);
typedef int (*VkSetBoolFunc)(const char *name, int val, void *privdata, VkString **err);
typedef void (*VkUserChangedFunc)(uint64_t client_id, void *privdata);
typedef void (*VkScanFunc)(VkCtx *ctx, VkString *keyname, VkKey *key, void *privdata);

/* X(return type, name, parameters): every API function Engram calls. */
#define VK_API(X)                                                                                  \
    X(void, SetModuleAttribs, (VkCtx * ctx, const char *name, int ver, int apiver))                \
    X(int, IsModuleNameBusy, (const char *name))                                                   \
    X(void *, Alloc, (size_t bytes))                                                               \
    X(void *, Calloc, (size_t nmemb, size_t size))                                                 \
    X(void *, Realloc, (void *ptr, size_t bytes))                                                  \
    X(void, Free, (void *ptr))                                                                     \
    X(int, CreateCommand,                                                                          \
      (VkCtx * ctx, const char *name, VkCmdFunc f, const char *flags, int first, int last, int step)) \
    X(int, WrongArity, (VkCtx * ctx))                                                              \
    X(VkCommand *, GetCommand, (VkCtx * ctx, const char *name))                                    \
    X(int, SetCommandACLCategories, (VkCommand * command, const char *categories))                 \
    X(int, ReplyWithError, (VkCtx * ctx, const char *err))                                         \
    X(int, ReplyWithSimpleString, (VkCtx * ctx, const char *msg))                                  \
    X(int, ReplyWithArray, (VkCtx * ctx, long len))                                                \
    X(int, ReplyWithNullArray, (VkCtx * ctx))                                                      \
    X(int, ReplyWithMap, (VkCtx * ctx, long len))                                                  \
    X(int, ReplyWithSet, (VkCtx * ctx, long len))                                                  \
    X(int, ReplyWithNull, (VkCtx * ctx))                                                           \
    X(int, ReplyWithBool, (VkCtx * ctx, int b))                                                    \
    X(int, ReplyWithDouble, (VkCtx * ctx, double d))                                               \
    X(int, ReplyWithLongLong, (VkCtx * ctx, long long ll))                                         \
    X(int, ReplyWithCallReply, (VkCtx * ctx, VkCallReply * reply))                                 \
    X(int, ReplyWithStringBuffer, (VkCtx * ctx, const char *buf, size_t len))                      \
    X(VkCallReply *, Call, (VkCtx * ctx, const char *cmd, const char *fmt, ...))                   \
    X(int, CallReplyType, (VkCallReply * reply))                                                   \
    X(size_t, CallReplyLength, (VkCallReply * reply))                                              \
    X(VkCallReply *, CallReplyArrayElement, (VkCallReply * reply, size_t idx))                     \
    X(const char *, CallReplyStringPtr, (VkCallReply * reply, size_t * len))                       \
    X(long long, CallReplyInteger, (VkCallReply * reply))                                          \
    X(void, FreeCallReply, (VkCallReply * reply))                                                  \
    X(const char *, CallReplyProto, (VkCallReply * reply, size_t * len))                           \
    X(void, CallReplyPromiseSetUnblockHandler, (VkCallReply * reply, VkOnUnblocked cb, void *priv)) \
    X(int, CallReplyPromiseAbort, (VkCallReply * reply, void **priv))                              \
    X(const char *, StringPtrLen, (const VkString *str, size_t *len))                              \
    X(VkString *, CreateString, (VkCtx * ctx, const char *ptr, size_t len))                        \
    X(void, FreeString, (VkCtx * ctx, VkString * str))                                             \
    X(void, RetainString, (VkCtx * ctx, VkString * str))                                           \
    X(int, StringToLongLong, (const VkString *str, long long *ll))                                 \
    X(VkFilter *, RegisterCommandFilter, (VkCtx * ctx, VkFilterFunc cb, int flags))                \
    X(int, CommandFilterArgsCount, (VkFilterCtx * f))                                              \
    X(VkString *, CommandFilterArgGet, (VkFilterCtx * f, int pos))                                 \
    X(int, CommandFilterArgInsert, (VkFilterCtx * f, int pos, VkString *arg))                      \
    X(unsigned long long, CommandFilterGetClientId, (VkFilterCtx * f))                             \
    X(int, CommandFilterArgReplace, (VkFilterCtx * f, int pos, VkString *arg))                     \
    X(VkString *, GetClientUserNameById, (VkCtx * ctx, uint64_t id))                               \
    X(VkUser *, GetModuleUserFromUserName, (VkString * name))                                      \
    X(VkString *, GetModuleUserACLString, (VkUser * user))                                         \
    X(int, FreeModuleUser, (VkUser * user))                                                        \
    X(VkUser *, CreateModuleUser, (const char *name))                                              \
    X(int, SetModuleUserACL, (VkUser * user, const char *acl))                                     \
    X(int, AuthenticateClientWithUser,                                                             \
      (VkCtx * ctx, VkUser * user, VkUserChangedFunc callback, void *privdata, uint64_t *client_id)) \
    X(int, ACLCheckCommandPermissions, (VkUser * user, VkString **argv, int argc))                 \
    X(VkBlockedClient *, BlockClient,                                                              \
      (VkCtx * ctx, VkCmdFunc reply, VkCmdFunc timeout, VkFreePrivFunc free_priv, long long ms))   \
    X(int, UnblockClient, (VkBlockedClient * bc, void *privdata))                                  \
    X(void *, GetBlockedClientPrivateData, (VkCtx * ctx))                                          \
    X(void *, BlockClientGetPrivateData, (VkBlockedClient * bc))                                   \
    X(void, BlockClientSetPrivateData, (VkBlockedClient * bc, void *privdata))                     \
    X(void, SetDisconnectCallback, (VkBlockedClient * bc, VkDisconnectFunc cb))                    \
    X(unsigned long long, GetClientId, (VkCtx * ctx))                                              \
    X(int, GetClientInfoById, (void *ci, uint64_t id))                                             \
    X(VkScanCursor *, ScanCursorCreate, (void))                                                    \
    X(void, ScanCursorDestroy, (VkScanCursor * cursor))                                            \
    X(int, Scan, (VkCtx * ctx, VkScanCursor * cursor, VkScanFunc fn, void *privdata))               \
    X(int, GetContextFlags, (VkCtx * ctx))                                                         \
    X(int, SelectDb, (VkCtx * ctx, int db))                                                        \
    X(int, GetSelectedDb, (VkCtx * ctx))                                                           \
    X(int, KeyExists, (VkCtx * ctx, VkString * keyname))                                           \
    X(int, SubscribeToKeyspaceEvents, (VkCtx * ctx, int types, VkNotifyFunc cb))                   \
    X(int, SubscribeToServerEvent, (VkCtx * ctx, VkEvent event, VkEventCallback cb))               \
    X(int *, GetCommandKeysWithFlags,                                                              \
      (VkCtx * ctx, VkString * *argv, int argc, int *num_keys, int **out_flags))                   \
    X(void, Log, (VkCtx * ctx, const char *level, const char *fmt, ...))                           \
    X(VkCtx *, GetDetachedThreadSafeContext, (VkCtx * ctx))                                        \
    X(VkDict *, CreateDict, (VkCtx * ctx))                                                         \
    X(uint64_t, DictSize, (VkDict * d))                                                            \
    X(int, DictSetC, (VkDict * d, void *key, size_t keylen, void *ptr))                            \
    X(int, DictReplaceC, (VkDict * d, void *key, size_t keylen, void *ptr))                        \
    X(void *, DictGetC, (VkDict * d, void *key, size_t keylen, int *nokey))                        \
    X(int, DictDelC, (VkDict * d, void *key, size_t keylen, void *oldval))                         \
    X(VkDictIter *, DictIteratorStartC, (VkDict * d, const char *op, void *key, size_t keylen))    \
    X(void *, DictNextC, (VkDictIter * it, size_t *keylen, void **data))                           \
    X(void, DictIteratorStop, (VkDictIter * it))                                                   \
    X(int, RegisterNumericConfig,                                                                  \
      (VkCtx * ctx, const char *name, long long dflt, unsigned int flags, long long min,           \
       long long max, VkGetNumericFunc get, VkSetNumericFunc set, VkApplyFunc apply, void *priv))  \
    X(int, RegisterBoolConfig,                                                                     \
      (VkCtx * ctx, const char *name, int dflt, unsigned int flags, VkGetBoolFunc get,             \
       VkSetBoolFunc set, VkApplyFunc apply, void *priv))                                          \
    X(int, LoadConfigs, (VkCtx * ctx))                                                             \
    X(VkRdbStream *, RdbStreamCreateFromFile, (const char *filename))                              \
    X(void, RdbStreamFree, (VkRdbStream * stream))                                                 \
    X(int, RdbLoad, (VkCtx * ctx, VkRdbStream * stream, int flags))                                \
    X(void, FreeDict, (VkCtx * ctx, VkDict * d))                                                   \
    X(int, Replicate, (VkCtx * ctx, const char *cmd, const char *fmt, ...))                        \
    X(int, ReplicateVerbatim, (VkCtx * ctx))                                                       \
    X(int, AddPostNotificationJob, (VkCtx * ctx, VkPostJobFunc cb, void *pd, void (*free_pd)(void *))) \
    X(VkCallReply *, CallReplySetElement, (VkCallReply * reply, size_t idx))                       \
    X(int, StringToDouble, (const VkString *str, double *d))                                       \
    X(VkType *, CreateDataType, (VkCtx * ctx, const char *name, int encver, VkTypeMethods *methods)) \
    X(int, IsIOError, (VkIO * io))                                                                 \
    X(void, SaveUnsigned, (VkIO * io, uint64_t value))                                             \
    X(uint64_t, LoadUnsigned, (VkIO * io))                                                         \
    X(void, SaveStringBuffer, (VkIO * io, const char *str, size_t len))                            \
    X(char *, LoadStringBuffer, (VkIO * io, size_t *len))

#define VK_DECLARE(ret, name, params) extern ret(*Vk_##name) params;
VK_API(VK_DECLARE)
#undef VK_DECLARE

/* Fills every Vk_ pointer from the load context; VK_ERR names nothing, the server logs it. */
int vk_resolve_api(VkCtx *ctx);

/* ---- Engram's own types ------------------------------------------------------------- */

/* A reply waiting in a client's queue. */
typedef enum {
    EG_CALL,    /* the reply of a command run with Call */
    EG_ERROR,   /* an error built by the module, text without the leading '-' */
    EG_STATUS,  /* a simple string built by the module */
    EG_EXEC,    /* an emulated EXEC: an array of replies */
    EG_NULLARR, /* an EXEC aborted by a touched WATCHed key */
    EG_PENDING, /* a blocking command still waiting; its reply fills this entry */
    EG_RESP,    /* a reply the module built or the node pushed (CLUSTER ...) */
} EgKind;

/* A reply parsed from RESP (resp.c), emitted with the ValkeyModule_ReplyWith* calls so that it
 * takes the client's protocol: a RESP3 map goes out as a flat array to a RESP2 client. */
typedef struct EgResp {
    char type;             /* the RESP3 type byte: + - : $ * % ~ _ # , */
    long long n;           /* ':' and '#' value; '+' '-' '$' ',' length; aggregates: elements (map: pairs) */
    char *str;             /* string types: the text, NUL-terminated */
    struct EgResp *items;  /* aggregates: the elements, keys and values alternating in a map */
    int refs;              /* the root only: the owner and every queued entry that emits it */
    size_t bytes;          /* the root only: the RESP size, for the queue's caps */
} EgResp;

typedef struct EgEntry {
    EgKind kind;
    VkCallReply *reply;
    EgResp *resp; /* EG_RESP: one reference */
    char *text;
    VkCallReply **items; /* EG_EXEC; NULL where the command's reply is an error kept as text */
    char **item_errors;  /* EG_EXEC: those errors' text, NULL when there is none */
    size_t nitems;
    int silenced; /* CLIENT REPLY OFF/SKIP was in force: waited for, never sent */
    struct EgEntry *next;
} EgEntry;

typedef struct EgClient EgClient;

/* One RM_BlockClient: the server frees it after the client it blocked may be long gone. */
typedef struct EgTicket {
    EgClient *client;
    VkBlockedClient *bc;
    int released; /* UnblockClient was called: the reply callback and free are to come */
    long long blocked_us; /* when a batch blocked for its commit (eg_now_us); 0: a blocking command */
} EgTicket;

typedef struct EgTxCommand {
    VkString **argv;
    int argc;
} EgTxCommand;

struct EgClient {
    unsigned long long id;
    long long consumed;    /* wire bytes of every command the filter saw from this client */
    long long netin;       /* tot-net-in as last read from CLIENT LIST */
    long long netin_iter;  /* event-loop iteration netin was read in */
    EgEntry *head, *tail;
    size_t queued;         /* entries in the queue */
    size_t queued_bytes;   /* estimate of their memory, for the caps */
    long long target;      /* replication offset that must be committed to release the queue */
    long long users_target; /* user change the cluster's metadata must hold to release it */
    int unassigned;        /* the queue holds effects whose offset is known only before sleep */
    int touched;           /* on the list visited before sleep */
    int dead;              /* disconnected; freed once no ticket refers to it */
    int recount;           /* the byte count may include bytes that held no command */
    int replica_link;      /* sent PSYNC/SYNC: its REPLCONF ACK is the commit signal */
    long long fail_at;     /* monotonic ms: commit timeout of a queue behind a blocking command */
    char *fail;            /* step-down reason: the queue fails instead of waiting */
    EgTicket *ticket;      /* set while the client is blocked */
    VkCallReply *promise;  /* a blocking command running on the module's behalf */
    EgEntry *promise_entry;
    /* Emulated MULTI/EXEC/WATCH: the server's own EXEC reply cannot be held. */
    int in_tx, tx_abort, watch_touched;
    EgTxCommand *tx;
    int tx_n, tx_cap;
    char **watched; /* "db:key" strings, length-prefixed */
    size_t *watched_len;
    int n_watched;
    long long watch_epoch; /* flushes seen when the first key was watched */
    /* The cluster protocol (cluster.c). */
    int internal;   /* the node's own connection (ENGRAM.INTERNAL): the filter leaves it alone */
    int conn;       /* EG_CONN_*: a client connection or a script's/module's fake client */
    int readonly;   /* READONLY: keyed reads are served on a replica */
    int tx_slot;    /* slot + 1 of the keyed commands queued in MULTI; 0 none yet */
    int tx_writes;  /* a write was queued in MULTI */
    int asking;     /* ASKING: the next command (or the transaction) may use a slot being imported */
    long long tx_moves; /* MIGRATE calls run when the transaction's slot was first checked */
    /* ACL (acl.c): the connection is known to be authenticated (its user is not "default"). */
    int authed;
    /* CLIENT REPLY, as Valkey applies it (acl.c): replies off until ON; the next command's
     * replies skipped; this command's replies skipped. desync: the mode was set by the module
     * (behind queued replies), not on the connection, so Valkey itself silences nothing. */
    int reply_off, skip_next, skip_cur, reply_desync;
};

enum { EG_CONN_UNKNOWN = 0, EG_CONN_CLIENT = 1, EG_CONN_FAKE = 2 };

/* Per-command classes, from COMMAND at load time (lower-case name or "container|sub"). */
enum {
    EG_CMD_WRITE = 1 << 0,    /* its effects enter the replication stream: hold its reply */
    EG_CMD_NATIVE = 1 << 1,   /* cannot run through Call on the client's behalf */
    EG_CMD_TX = 1 << 2,       /* MULTI/EXEC/DISCARD/WATCH/UNWATCH: emulated */
    EG_CMD_SELECT = 1 << 3,   /* SELECT: emulated on the real client when queued */
    EG_CMD_BLOCKING = 1 << 4, /* may block: run with a promise */
    EG_CMD_NO_MULTI = 1 << 5, /* refused inside MULTI */
    EG_CMD_CONTAINER = 1 << 6,
    EG_CMD_KEYSPACE_READ = 1 << 7, /* reads the whole keyspace, no key of its own (DBSIZE, SCAN) */
    EG_CMD_USERS = 1 << 8,         /* ACL SETUSER/DELUSER: a change of the cluster's users */
};

/* The wrappers the filter rewrites commands into. Each has two forms: the common one is flagged
 * no-auth, which exempts it from Valkey's ACL command check (the real command's rights are
 * checked inside it); the ".auth" twin is checked like any command, and is used for a
 * connection that may not have authenticated (acl.c). */
enum { EG_W_WRITE, EG_W_READ, EG_W_NATIVE, EG_W_SELECT, EG_W_TX, EG_W_REFUSE, EG_W_CLUSTER, EG_W_USERS, EG_W_COUNT };
extern VkString *eg_wrappers[2][EG_W_COUNT];

/* module.c */
extern long long eg_commit_timeout_ms;
extern long long eg_max_queued_bytes; /* per client */
extern long long eg_iter;             /* event-loop iteration, for per-iteration caches */
extern int eg_active;                 /* primary role: the module holds replies */
extern int eg_managed;                /* managed 1: fail closed until the node pushes its state */
extern VkCtx *eg_ctx;                 /* a context for calls made outside any command */
int eg_command_class(const char *name, size_t len, VkString *sub);
char *eg_strdup(const char *s);
size_t eg_lower(char *out, size_t cap, const char *s, size_t len);

/* tx.c */
int eg_cmd_tx(VkCtx *ctx, VkString **argv, int argc);
void eg_free_tx(EgClient *cl);
void eg_discard_tx(EgClient *cl);

/* filter.c */
void eg_filter(VkFilterCtx *f);
int eg_is_refused_client_setting(VkString **argv, int argc);
int eg_is_wrapper(const char *name, size_t len);

/* acl.c */
int eg_auth_known(EgClient *cl);
void eg_auth_proven(EgClient *cl);
VkString *eg_wrapper(EgClient *cl, int kind);
void eg_acl_command_seen(const char *name, size_t len);
void eg_reply_mode_next_command(EgClient *cl);
int eg_silenced(EgClient *cl);
int eg_reply_mode_wraps(EgClient *cl);
int eg_client_reply_filter(VkFilterCtx *f, EgClient *cl, int argc);
void eg_client_reply_apply(EgClient *cl, const char *mode);

/* replies.c */
EgClient *eg_client(unsigned long long id, int create);
EgEntry *eg_queue(EgClient *cl, EgKind kind, VkCallReply *reply, const char *text);
/* gaps.c: replies the module API loses */
char *eg_gap_error(VkCtx *ctx, VkCallReply *reply, const char *cmd, size_t len, VkString **args, int nargs);
EgEntry *eg_queue_exec(EgClient *cl, VkCallReply **items, char **errors, size_t n); /* errors[i]: text instead of items[i] */
EgEntry *eg_queue_resp(EgClient *cl, EgResp *resp);
void eg_need_offset(EgClient *cl);
void eg_need_target(EgClient *cl, long long target);
int eg_finish(VkCtx *ctx, EgClient *cl);
long long eg_now_ms(void);
void eg_release_ready(void);
void eg_fail_all(const char *reason);
void eg_before_sleep_clients(VkCtx *ctx, long long offset);
void eg_client_gone(unsigned long long id);
int eg_is_replica_link(unsigned long long id);
int eg_block_for_promise(VkCtx *ctx, EgClient *cl, VkCallReply *promise);
typedef struct EgStats {
    long long clients, blocked, queued_bytes, blocks, early_blocks, emitted, timeouts, failed;
    long long users_pending, users_done;
} EgStats;
void eg_replies_stats(EgStats *stats);
int eg_reply_clients(VkCtx *ctx);
int eg_commit_wait_info(char *buf, size_t cap);

/* dirty.c */
void eg_dirty_init(void);
int eg_on_keyspace(VkCtx *ctx, int type, const char *event, VkString *key);
long long eg_dirty_target(VkString **argv, int argc, int *unassigned);
int eg_dirty_any(void);
void eg_dirty_assign(long long offset);
void eg_dirty_release(long long committed);
long long eg_dirty_count(void);
void eg_watch_touch_key(int db, const char *key, size_t len);
void eg_watch_touch_all(void);
void eg_watch_add(EgClient *cl, int db, VkString *key);
void eg_watch_clear(EgClient *cl);
int eg_watch_broken(EgClient *cl);
void eg_dirty_flushed(void);
void eg_dirty_reset(void);
long long eg_dirty_flushes(void); /* FLUSHALL/FLUSHDB and loads seen, ever */

/* crc16.c */
#define EG_SLOTS 16384
void eg_crc16_init(void);
int eg_key_slot(const char *key, size_t len);

/* resp.c */
EgResp *eg_resp_parse(const char *buf, size_t len);
void eg_resp_emit(VkCtx *ctx, const EgResp *r);
EgResp *eg_resp_retain(EgResp *r);
void eg_resp_release(EgResp *r);
EgResp *eg_resp_integer(long long v);
EgResp *eg_resp_error(const char *text);
EgResp *eg_resp_status(const char *text);
EgResp *eg_resp_bulk_array(char **strs, size_t *lens, size_t n); /* takes strs[i] */

/* control.c: what the node pushed */
#define EG_NO_SHARD 0xFFFF
typedef struct EgNamedReply {
    char *name; /* lower-case subcommand, or a node id for REPLICAS */
    EgResp *reply;
} EgNamedReply;
typedef struct EgTopology {
    int shard;         /* this node's shard */
    int slots_known;
    uint16_t owner[EG_SLOTS]; /* shard per slot, EG_NO_SHARD unassigned */
    uint16_t moving[EG_SLOTS]; /* shard a slot is migrating to, EG_NO_SHARD when it is not */
    long long epoch;           /* the slot map's config epoch */
    int moving_out, moving_in; /* slots this shard is migrating away and importing */
    char **leader;     /* per shard id below n_leader: its primary's host:port, or NULL */
    int n_leader;
    /* per shard id below n_migrate: where MIGRATE reaches its primary's Valkey when that is not the
     * announced leader address (the node terminates client TLS in front of a Valkey without it) */
    char **migrate;
    int n_migrate;
    char *reason;      /* why the shard has no primary: the CLUSTERDOWN text on a replica */
    EgNamedReply *replies, *replicas;
    int n_replies, n_replicas;
} EgTopology;
extern int eg_cluster_on;      /* the node pushed ROLE, LEASE or TOPOLOGY: cluster checks run */
extern int eg_valkey_replica;  /* Valkey itself replicates from another server (REPLICAOF) */
extern EgTopology *eg_topology; /* NULL: the slot map is not known yet */
long long eg_now_us(void);
int eg_serving(void);
const char *eg_lease_reason(void);
const char *eg_no_primary_reason(void);
const char *eg_leader_of(int shard);
const char *eg_migrate_address_of(int shard);
EgResp *eg_topology_reply(int replicas, const char *name);
int eg_control_info(char *buf, size_t cap);
void eg_fail_closed(void);
int eg_from_unix_socket(VkCtx *ctx);
void eg_join_args(VkString **argv, int from, int argc, char *out, size_t cap);
void eg_on_valkey_role(int primary);
int eg_cmd_internal(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_role(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_lease(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_topology(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_loadrdb(VkCtx *ctx, VkString **argv, int argc);

/* cluster.c */
int eg_cluster_filter(VkFilterCtx *f, EgClient *cl, const char *name, size_t len, int argc, int cls);
int eg_cmd_refuse(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_cluster(VkCtx *ctx, VkString **argv, int argc);
void eg_refuse(VkFilterCtx *f, EgClient *cl, const char *text);

/* migration.c */
enum { EG_KEYS_NONE = 0, EG_KEYS_SOME = 1, EG_KEYS_ALL = 2 };
extern int eg_mig_frozen;
extern long long eg_mig_moves;
int eg_keys_present(VkFilterCtx *f, int argc, unsigned long long client_id, int *nkeys);
const char *eg_migrating_refusal(VkFilterCtx *f, EgClient *cl, int slot, int argc, char *buf, size_t cap);
const char *eg_importing_refusal(VkFilterCtx *f, EgClient *cl, int argc);
const char *eg_migrate_refusal(VkFilterCtx *f, int argc, char *buf, size_t cap);
void eg_migration_called(const char *cmd, size_t len, VkCallReply *reply);
void eg_migration_promoted(void);
void eg_migration_topology(EgTopology *t);
int eg_migration_info(char *buf, size_t cap);
int eg_cmd_migration(VkCtx *ctx, VkString **argv, int argc);

/* commit.c */
extern long long eg_committed; /* highest offset the replica link acknowledged */
void eg_on_ack(long long offset);
long long eg_current_offset(VkCtx *ctx);
int eg_unassigned_pending(void);
void eg_mark_unassigned(void);

/* users.c */
extern long long eg_users_done; /* user changes up to this one are in the cluster's metadata */
void eg_users_init(void);
int eg_cmd_users(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_users_pending(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_users_done(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_users_apply(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_users_declare(VkCtx *ctx, VkString **argv, int argc);
const char *eg_users_refusal(EgClient *cl);
void eg_users_stats(EgStats *stats);
void eg_users_changed(void);

/* stamps.c: the last-writer-wins metadata of a multi-region node (docs/multi-region.md) */
enum { EG_KIND_NONE = 0, EG_KIND_STRING, EG_KIND_HASH, EG_KIND_SET, EG_KIND_ZSET, EG_KIND_COUNT };
typedef struct EgStamp {
    uint64_t hlc;    /* hybrid logical clock, microseconds */
    uint32_t region; /* interned region name + 1; 0: no stamp */
} EgStamp;
/* One stamped write's effect on one key, its arguments borrowed from the command that carries it. */
typedef struct EgWrite {
    EgStamp stamp;
    int kind;
    VkString *key;
    VkString *value; /* string */
    VkString **put;  /* hash: field value pairs; set: members; zset: member score pairs */
    int nput;        /* elements put */
    VkString **rem;  /* fields or members removed */
    int nrem;
    int add;         /* an increment of an additive counter (kind string): delta, not value */
    long long delta;
    long long deadline; /* a string set's expiry, unix ms (a key of a ttls pattern); 0: none */
} EgWrite;
typedef struct EgStampStats {
    long long keys, elements, tombstones, bytes;
} EgStampStats;
uint32_t eg_region_intern(const char *name, size_t len);
const char *eg_region_name(uint32_t region);
int eg_stamp_cmp(EgStamp a, EgStamp b);
int eg_kind_parse(const char *name, size_t len);
const char *eg_kind_name(int kind);
void eg_stamps_apply(VkCtx *ctx, const EgWrite *w, int data);
long long eg_stamps_collect(EgStamp frontier);
void eg_stamps_stats(EgStampStats *st);
void eg_stamps_clear(void);
void eg_stamps_expired(VkCtx *ctx, VkString *key);
long long eg_stamps_deadline(const char *key, size_t len);
int eg_stamps_register(VkCtx *ctx);

/* region.c: multi-region mode */
/* patterns.c: key patterns of keys that replicate beyond last-writer-wins (docs/multi-region.md) */
enum { EG_PATTERNS_COUNTERS = 0, EG_PATTERNS_TTLS, EG_PATTERN_LISTS };
int eg_patterns_add(int list, const char *pattern, size_t len);
int eg_key_matches(int list, const char *key, size_t len);

/* counter.c: additive counters' arithmetic */
int eg_counter_parse(const char *s, size_t len, __int128 *out);
size_t eg_counter_format(__int128 v, char *buf, size_t cap);

extern char *eg_region;   /* this node's region; NULL: not a multi-region node */
extern uint64_t eg_hlc;   /* the newest stamp given or observed */
void eg_hlc_observe(uint64_t hlc);
int eg_region_set(const char *name);
const char *eg_mr_refusal(VkFilterCtx *f, const char *name, size_t len, int argc, int cls, char *buf, size_t cap);
VkCallReply *eg_mr_call(VkCtx *ctx, const char *cmd, size_t len, VkString **args, int n, const char **refused);
void eg_mr_expired(VkCtx *ctx, VkString *key);
int eg_cmd_mr_apply(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_mr_collect(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_mr_clock(VkCtx *ctx, VkString **argv, int argc);
int eg_cmd_mr_info(VkCtx *ctx, VkString **argv, int argc);

#endif

/* Who may run the wrappers, and CLIENT REPLY.
 *
 * ACL. The filter rewrites a command into a wrapper (ENGRAM.W SET k v); Valkey then checks the
 * user's ACL on the wrapper, and the wrapper checks it on the real command (Call's C flag, which
 * gives Valkey's own NOPERM text and ACL LOG entry, keys and channels included). A user granted
 * single commands (+get +set) has no right to ENGRAM.W, so the wrappers are created "no-auth":
 * Valkey's ACL command check skips no-auth commands (acl.c, ACLSelectorCheckCmd), and the
 * wrappers have no keys or channels of their own to check. No-auth also lets a command run
 * before the connection authenticated, so the filter hands a command to a no-auth wrapper only
 * when the connection is known to be authenticated: its user is not "default" (only a
 * successful AUTH/HELLO gives a connection another user), or the default user needs no password
 * (on, nopass), when Valkey requires no authentication at all. Otherwise (the default user has
 * a password, or is off) the ".auth" twin of the wrapper is used: Valkey checks authentication
 * and the ACL on it as on any command, so an unauthenticated connection gets -NOAUTH, and the
 * default user needs the right to the twin (its categories, or +@all). A twin that runs proves
 * the connection authenticated: its later commands use the no-auth wrappers.
 *
 * CLIENT REPLY. Valkey silences a reply when it is written; a reply that waits for a commit is
 * written later, from a reply callback, when the flag may have changed, and a wrapper writes
 * nothing while its command runs. So the module keeps each client's mode as Valkey would (off;
 * skip the next command; skip this one) and drops, when it is queued, every reply Valkey would
 * have dropped. CLIENT REPLY itself runs natively when nothing waits (Valkey's own flag then
 * silences the commands that run natively, and nothing is ever queued while it is set); behind
 * queued replies it is emulated in order, and until the client sends CLIENT REPLY again Valkey's
 * own flag is not set ("desync"): the filter then wraps every command it can, so that the
 * module drops their replies. */
#include <string.h>
#include <strings.h>

#include "engram.h"



/* ---- Authentication ------------------------------------------------------------------------ */

static VkString *default_name;
static int default_open_cached = -1;
static long long default_open_read_ms = 0, default_open_iter = -1;
static int recheck_default = 0;
/* Users change through commands the filter sees; another module's API call is not seen, and is
 * caught within this long. */
#define DEFAULT_RECHECK_MS 100

static int has_token(const char *s, size_t len, const char *token) {
    size_t n = strlen(token);
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || s[i - 1] == ' ') && !memcmp(s + i, token, n) && (i + n == len || s[i + n] == ' '))
            return 1;
    }
    return 0;
}

/* Valkey requires no authentication: the default user is "nopass" and not "off" (networking.c,
 * authRequired). Read from the user's ACL description after any command that may have changed
 * users, and at least every DEFAULT_RECHECK_MS. */
static int default_open(void) {
    if (default_open_cached >= 0 && default_open_iter == eg_iter) return default_open_cached;
    long long now = eg_now_ms();
    default_open_iter = eg_iter;
    if (default_open_cached >= 0 && now - default_open_read_ms < DEFAULT_RECHECK_MS) return default_open_cached;
    if (!default_name) default_name = Vk_CreateString(NULL, "default", 7);
    int open = 0;
    VkUser *user = Vk_GetModuleUserFromUserName(default_name);
    if (user) {
        VkString *acl = Vk_GetModuleUserACLString(user);
        if (acl) {
            size_t len;
            const char *s = Vk_StringPtrLen(acl, &len);
            open = has_token(s, len, "nopass") && !has_token(s, len, "off");
            Vk_FreeString(NULL, acl);
        }
        Vk_FreeModuleUser(user);
    }
    default_open_cached = open;
    default_open_read_ms = now;
    return open;
}

/* The filter sees every client command before it runs. ACL SETUSER/LOAD/DELUSER, CONFIG SET
 * requirepass, EXEC (an emulated transaction may hold any of them) and MODULE may change the
 * default user: it is read again from the next command on, after this one ran. */
void eg_acl_command_seen(const char *name, size_t len) {
    if (recheck_default) {
        default_open_cached = -1;
        recheck_default = 0;
    }
    if ((len == 3 && !strncasecmp(name, "acl", 3)) || (len == 6 && !strncasecmp(name, "config", 6)) ||
        (len == 4 && !strncasecmp(name, "exec", 4)) || (len == 6 && !strncasecmp(name, "module", 6)))
        recheck_default = 1;
}

/* Users were changed by the module itself (users.c): read the default user again. */
void eg_users_changed(void) {
    default_open_cached = -1;
}

int eg_auth_known(EgClient *cl) {
    if (cl->authed || default_open()) return 1;
    VkString *name = Vk_GetClientUserNameById(eg_ctx, cl->id);
    /* No connection (a script's or another module's client, whose caller was checked), or no
     * user (the AOF loader): nothing to authenticate. */
    if (!name) return 1;
    size_t len;
    const char *s = Vk_StringPtrLen(name, &len);
    int is_default = len == 7 && !memcmp(s, "default", 7);
    Vk_FreeString(eg_ctx, name);
    if (!is_default) cl->authed = 1; /* until RESET: a connection can only change user by AUTH/HELLO */
    return !is_default;
}

/* A ".auth" twin ran: Valkey found the connection authenticated, or asking for no
 * authentication. Unless the default user is open (then nothing is learnt: it may close again),
 * the connection stays authenticated until RESET, and the no-auth wrappers serve it from now on. */
void eg_auth_proven(EgClient *cl) {
    default_open_cached = -1;
    if (!default_open()) cl->authed = 1;
}

VkString *eg_wrapper(EgClient *cl, int kind) {
    return eg_wrappers[eg_auth_known(cl) ? 0 : 1][kind];
}

/* ---- CLIENT REPLY ---------------------------------------------------------------------------- */

/* A new command of the client starts: what SKIP asked for applies to it (networking.c,
 * resetClient moves reply_skip_next to reply_skip after each command). */
void eg_reply_mode_next_command(EgClient *cl) {
    cl->skip_cur = cl->skip_next;
    cl->skip_next = 0;
}

/* Valkey would drop the replies of the command running now. */
int eg_silenced(EgClient *cl) {
    return cl->reply_off || cl->skip_cur;
}

/* Replies are silenced but Valkey's own flag is not set: commands must run in a wrapper. */
int eg_reply_mode_wraps(EgClient *cl) {
    return cl->reply_desync && eg_silenced(cl);
}

/* CLIENT REPLY <mode> took effect (networking.c, clientCommand). */
void eg_client_reply_apply(EgClient *cl, const char *mode) {
    if (!strcasecmp(mode, "on")) {
        cl->reply_off = cl->skip_cur = cl->skip_next = 0;
    } else if (!strcasecmp(mode, "off")) {
        cl->reply_off = 1;
    } else if (!strcasecmp(mode, "skip")) {
        if (!cl->reply_off) cl->skip_next = 1;
    }
}

static int valid_mode(const char *mode) {
    return !strcasecmp(mode, "on") || !strcasecmp(mode, "off") || !strcasecmp(mode, "skip");
}

/* Valkey will run this CLIENT REPLY: the mode is valid and the user may run it. (The filter runs
 * before Valkey's own checks; authentication was checked by the caller.) */
static int will_run(VkFilterCtx *f, EgClient *cl, int argc) {
    if (argc != 3 || !valid_mode(Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 2), NULL))) return 0;
    VkString *name = Vk_GetClientUserNameById(eg_ctx, cl->id);
    if (!name) return 1;
    VkUser *user = Vk_GetModuleUserFromUserName(name);
    Vk_FreeString(eg_ctx, name);
    if (!user) return 0;
    VkString *argv[3];
    for (int i = 0; i < 3; i++) argv[i] = Vk_CommandFilterArgGet(f, i);
    int allowed = Vk_ACLCheckCommandPermissions(user, argv, 3) == VK_OK;
    Vk_FreeModuleUser(user);
    return allowed;
}

/* CLIENT REPLY ...: natively when nothing waits (Valkey's flag then matches the module's mode),
 * else in order through ENGRAM.X. Returns 1 when the command was rewritten. */
int eg_client_reply_filter(VkFilterCtx *f, EgClient *cl, int argc) {
    if (!cl->head && !cl->ticket && eg_auth_known(cl) && will_run(f, cl, argc)) {
        const char *mode = Vk_StringPtrLen(Vk_CommandFilterArgGet(f, 2), NULL);
        /* Off in the module only: SKIP does nothing while replies are off, and OFF does the same
         * while it sets Valkey's own flag. */
        if (cl->reply_desync && cl->reply_off && !strcasecmp(mode, "skip")) {
            Vk_CommandFilterArgReplace(f, 2, Vk_CreateString(NULL, "OFF", 3));
            mode = "off";
        }
        eg_client_reply_apply(cl, mode);
        cl->reply_desync = 0;
        return 0;
    }
    VkString *wrapper = eg_wrapper(cl, EG_W_NATIVE);
    Vk_RetainString(NULL, wrapper);
    Vk_CommandFilterArgInsert(f, 0, wrapper);
    return 1;
}

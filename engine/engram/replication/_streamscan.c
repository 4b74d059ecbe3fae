/* The replication stream scanner: where the tap may cut Valkey's stream into journal entries.
 *
 * The tap hands raw chunks of the stream to StreamScanner.feed as they arrive. The scanner walks
 * the RESP framing (arrays of bulk strings, nothing else) without building per-command objects:
 * bulk payloads are skipped by length, and only a command's name, and SELECT's argument, are
 * looked at. A command cut by a chunk's end is carried over in a few integers of state.
 *
 * feed() returns a Scan (safe, db, data_end) of the stream up to its last safe place, as
 * absolute stream offsets:
 *   safe      end of the last complete command outside MULTI...EXEC: an entry may end there
 *             (a transaction is never split across entries; replicas apply an entry at once);
 *   db        the database selected at `safe` (SELECT n in the stream);
 *   data_end  end of the last command up to `safe` that is not link-only (PING, REPLCONF ...).
 *             It is a safe place too (a transaction open there would end with an EXEC after it),
 *             and only link-only commands lie between it and `safe`: an entry ends at data_end,
 *             and what follows up to `safe` concerns only the replication link.
 *
 * Anything that is not an array of bulk strings, a bad length, a SELECT whose database is not a
 * plain number, or MULTI/EXEC out of order raises StreamError, and the scanner stays failed:
 * a stream we cannot frame must stop the tap rather than be cut in the wrong place.
 *
 * engram/replication/streamscan.py holds a plain Python implementation of the same rules; the
 * tests compare the two on random streams split at every byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Lengths in the stream are at most 18 decimal digits: they always fit in a long long. */
#define MAX_DIGITS 18
/* Only names up to REPLCONF's 8 bytes are told apart; a longer name is an ordinary command. */
#define MAX_NAME 8
/* SELECT's database: a plain decimal number of 1 to 9 digits. */
#define MAX_DB_DIGITS 9

enum state {
    ST_STAR,        /* expecting '*', the start of a command */
    ST_ARRAY_LEN,   /* digits of the argument count */
    ST_ARRAY_LF,    /* '\n' after the count's '\r' */
    ST_DOLLAR,      /* expecting '$', the start of an argument */
    ST_BULK_LEN,    /* digits of the argument's length */
    ST_BULK_LF,     /* '\n' after the length's '\r' */
    ST_BULK_DATA,   /* the argument's bytes */
    ST_BULK_CR,     /* '\r' after the argument */
    ST_BULK_END_LF, /* '\n' after the argument */
};

enum kind { CMD_OTHER, CMD_MULTI, CMD_EXEC, CMD_SELECT, CMD_LINK };

typedef struct {
    PyObject_HEAD
    long long offset;   /* absolute stream offset of the next byte fed */
    long long safe;     /* see the file comment */
    long long safe_db;
    long long safe_data_end;
    long long data_end; /* end of the last complete command that is not link-only */
    long long db;       /* selected after the last complete command */
    int in_multi;
    PyObject *failure;  /* the error message, once the stream was found malformed */
    /* The command being read. */
    enum state state;
    long long num;      /* the length being read */
    int digits;
    long long nargs;
    long long argi;     /* the argument being read */
    long long remaining; /* bytes of the current argument still to come */
    enum kind kind;
    int capturing;      /* the current argument's bytes are kept in cap */
    int cap_len;
    char cap[16];
    int select_ok;      /* SELECT's argument was a valid database number */
    long long select_db;
} Scanner;

static PyObject *StreamError;
static PyTypeObject *ScanType;

static PyStructSequence_Field scan_fields[] = {
    {"safe", "end offset of the last complete command outside MULTI...EXEC"},
    {"db", "the database selected at safe"},
    {"data_end", "end offset of the last command up to safe that is not link-only (PING, REPLCONF)"},
    {NULL, NULL},
};

static PyStructSequence_Desc scan_desc = {
    "engram.replication._streamscan.Scan",
    "Where the stream may be cut, as absolute offsets: (safe, db, data_end).",
    scan_fields,
    3,
};

/* Case-insensitive (ASCII) comparison of a captured name with a lower-case literal. */
static int name_is(const char *name, int len, const char *lower) {
    if ((size_t)len != strlen(lower)) return 0;
    for (int i = 0; i < len; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != lower[i]) return 0;
    }
    return 1;
}

static enum kind classify(const char *name, int len) {
    if (name_is(name, len, "multi")) return CMD_MULTI;
    if (name_is(name, len, "exec")) return CMD_EXEC;
    if (name_is(name, len, "select")) return CMD_SELECT;
    if (name_is(name, len, "ping") || name_is(name, len, "replconf")) return CMD_LINK;
    return CMD_OTHER;
}

/* Records the failure (it sticks) and raises it. Returns -1 for the caller to pass on. */
static int fail(Scanner *s, long long at, const char *reason, int byte) {
    PyObject *message = byte >= 0
        ? PyUnicode_FromFormat("offset %lld: %s, got byte 0x%02x", at, reason, byte)
        : PyUnicode_FromFormat("offset %lld: %s", at, reason);
    if (message == NULL) return -1;
    Py_XSETREF(s->failure, message);
    PyErr_SetObject(StreamError, message);
    return -1;
}

static void argument_done(Scanner *s) {
    if (s->argi == 0) {
        s->kind = s->capturing ? classify(s->cap, s->cap_len) : CMD_OTHER;
    } else if (s->argi == 1 && s->kind == CMD_SELECT && s->capturing) {
        long long db = 0;
        int ok = 1;
        for (int i = 0; i < s->cap_len; i++) {
            if (s->cap[i] < '0' || s->cap[i] > '9') ok = 0;
            else db = db * 10 + (s->cap[i] - '0');
        }
        s->select_ok = ok;
        s->select_db = db;
    }
}

/* A command ended with the byte at offset `at`. */
static int command_done(Scanner *s, long long at) {
    long long end = at + 1;
    switch (s->kind) {
    case CMD_MULTI:
        if (s->in_multi) return fail(s, at, "MULTI inside MULTI", -1);
        s->in_multi = 1;
        s->data_end = end;
        break;
    case CMD_EXEC:
        if (!s->in_multi) return fail(s, at, "EXEC without MULTI", -1);
        s->in_multi = 0;
        s->data_end = end;
        break;
    case CMD_SELECT:
        if (s->nargs != 2 || !s->select_ok)
            return fail(s, at, "SELECT needs exactly one database number of at most 9 digits", -1);
        s->db = s->select_db;
        s->data_end = end;
        break;
    case CMD_LINK:
        break;
    case CMD_OTHER:
        s->data_end = end;
        break;
    }
    if (!s->in_multi) {
        s->safe = end;
        s->safe_db = s->db;
        s->safe_data_end = s->data_end;
    }
    s->state = ST_STAR;
    return 0;
}

/* One step over a length's digits; `lf` is the state after its '\r'. */
static int length_byte(Scanner *s, unsigned char c, long long at, enum state lf, int array) {
    const char *what = array ? "malformed array length" : "malformed bulk length";
    if (c >= '0' && c <= '9') {
        if (s->digits == MAX_DIGITS)
            return fail(s, at, array ? "array length of more than 18 digits" : "bulk length of more than 18 digits", -1);
        s->num = s->num * 10 + (c - '0');
        s->digits++;
    } else if (c == '\r' && s->digits > 0) {
        s->state = lf;
    } else {
        return fail(s, at, what, c);
    }
    return 0;
}

static int scan(Scanner *s, const unsigned char *data, Py_ssize_t size) {
    const unsigned char *p = data, *end = data + size;
    while (p < end) {
        long long at = s->offset + (p - data);
        unsigned char c = *p;
        switch (s->state) {
        case ST_STAR:
            if (c != '*') return fail(s, at, "expected '*' starting a command array", c);
            s->state = ST_ARRAY_LEN;
            s->num = 0;
            s->digits = 0;
            s->argi = 0;
            s->kind = CMD_OTHER;
            s->select_ok = 0;
            p++;
            break;
        case ST_ARRAY_LEN:
            if (length_byte(s, c, at, ST_ARRAY_LF, 1) < 0) return -1;
            p++;
            break;
        case ST_ARRAY_LF:
            if (c != '\n') return fail(s, at, "malformed array length", c);
            if (s->num == 0) return fail(s, at, "empty command array", -1);
            s->nargs = s->num;
            s->state = ST_DOLLAR;
            p++;
            break;
        case ST_DOLLAR:
            if (c != '$') return fail(s, at, "expected '$' starting a bulk string", c);
            s->state = ST_BULK_LEN;
            s->num = 0;
            s->digits = 0;
            p++;
            break;
        case ST_BULK_LEN:
            if (length_byte(s, c, at, ST_BULK_LF, 0) < 0) return -1;
            p++;
            break;
        case ST_BULK_LF:
            if (c != '\n') return fail(s, at, "malformed bulk length", c);
            s->remaining = s->num;
            s->cap_len = 0;
            s->capturing = (s->argi == 0 && s->num <= MAX_NAME) ||
                           (s->argi == 1 && s->kind == CMD_SELECT && s->num >= 1 && s->num <= MAX_DB_DIGITS);
            s->state = s->num ? ST_BULK_DATA : ST_BULK_CR;
            p++;
            break;
        case ST_BULK_DATA: {
            /* The hot path: an argument's bytes are skipped by length, never looked at. */
            Py_ssize_t avail = end - p;
            Py_ssize_t take = s->remaining < (long long)avail ? (Py_ssize_t)s->remaining : avail;
            if (s->capturing) {
                memcpy(s->cap + s->cap_len, p, (size_t)take);
                s->cap_len += (int)take;
            }
            p += take;
            s->remaining -= take;
            if (s->remaining == 0) s->state = ST_BULK_CR;
            break;
        }
        case ST_BULK_CR:
            if (c != '\r') return fail(s, at, "bulk string not followed by CRLF", c);
            s->state = ST_BULK_END_LF;
            p++;
            break;
        case ST_BULK_END_LF:
            if (c != '\n') return fail(s, at, "bulk string not followed by CRLF", c);
            p++;
            argument_done(s);
            if (++s->argi == s->nargs) {
                if (command_done(s, at) < 0) return -1;
            } else {
                s->state = ST_DOLLAR;
            }
            break;
        }
    }
    s->offset += size;
    return 0;
}

static PyObject *scanner_feed(PyObject *self, PyObject *arg) {
    Scanner *s = (Scanner *)self;
    if (s->failure != NULL) {
        PyErr_SetObject(StreamError, s->failure);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int rc = scan(s, (const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0) return NULL;
    PyObject *result = PyStructSequence_New(ScanType);
    if (result == NULL) return NULL;
    long long values[3] = {s->safe, s->safe_db, s->safe_data_end};
    for (Py_ssize_t i = 0; i < 3; i++) {
        PyObject *value = PyLong_FromLongLong(values[i]);
        if (value == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyStructSequence_SetItem(result, i, value);
    }
    return result;
}

static int scanner_init(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"offset", NULL};
    long long offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|L", keywords, &offset)) return -1;
    if (offset < 0) {
        PyErr_SetString(PyExc_ValueError, "a stream offset cannot be negative");
        return -1;
    }
    Scanner *s = (Scanner *)self;
    /* The stream starts at a command boundary in database 0: after a full resync Valkey
     * selects the database again before the first command that needs it. */
    s->offset = s->safe = s->safe_data_end = s->data_end = offset;
    s->safe_db = s->db = 0;
    s->in_multi = 0;
    s->state = ST_STAR;
    Py_CLEAR(s->failure);
    return 0;
}

static void scanner_dealloc(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    Py_CLEAR(((Scanner *)self)->failure);
    type->tp_free(self);
    Py_DECREF(type);
}

static PyObject *get_offset(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(((Scanner *)self)->offset);
}

static PyObject *get_safe(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(((Scanner *)self)->safe);
}

static PyObject *get_db(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(((Scanner *)self)->safe_db);
}

static PyObject *get_data_end(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(((Scanner *)self)->safe_data_end);
}

static PyObject *get_in_multi(PyObject *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(((Scanner *)self)->in_multi);
}

static PyGetSetDef scanner_getset[] = {
    {"offset", get_offset, NULL, "absolute stream offset after the last byte fed", NULL},
    {"safe", get_safe, NULL, "as in the last Scan", NULL},
    {"db", get_db, NULL, "as in the last Scan", NULL},
    {"data_end", get_data_end, NULL, "as in the last Scan", NULL},
    {"in_multi", get_in_multi, NULL, "the last complete command is inside MULTI...EXEC", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef scanner_methods[] = {
    {"feed", scanner_feed, METH_O, "feed(data) -> Scan: scan the next bytes of the stream."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot scanner_slots[] = {
    {Py_tp_doc, "StreamScanner(offset=0): finds safe places to cut a replication stream."},
    {Py_tp_init, scanner_init},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, scanner_dealloc},
    {Py_tp_methods, scanner_methods},
    {Py_tp_getset, scanner_getset},
    {0, NULL},
};

static PyType_Spec scanner_spec = {
    "engram.replication._streamscan.StreamScanner",
    sizeof(Scanner),
    0,
    Py_TPFLAGS_DEFAULT,
    scanner_slots,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "engram.replication._streamscan",
    "The replication stream scanner of the tap (see engram.replication.streamscan).",
    -1,
    NULL,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__streamscan(void) {
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    StreamError = PyErr_NewExceptionWithDoc(
        "engram.replication._streamscan.StreamError",
        "The replication stream is not a sequence of RESP arrays of bulk strings the tap can cut.",
        PyExc_ValueError, NULL);
    ScanType = PyStructSequence_NewType(&scan_desc);
    PyObject *scanner = PyType_FromSpec(&scanner_spec);
    if (StreamError == NULL || ScanType == NULL || scanner == NULL ||
        PyModule_AddObjectRef(module, "StreamError", StreamError) < 0 ||
        PyModule_AddObjectRef(module, "Scan", (PyObject *)ScanType) < 0 ||
        PyModule_AddObjectRef(module, "StreamScanner", scanner) < 0) {
        Py_XDECREF(scanner);
        Py_DECREF(module);
        return NULL;
    }
    Py_DECREF(scanner);
    return module;
}

/*
 * pgmux._speedups: the byte scans of the forwarding path, in C.
 *
 * Every read a pooler relays needs its message headers walked and, in transaction mode, the text of
 * each Query screened for statements that change session state pgmux tracks (SET, advisory locks,
 * temp tables, ...). In Python those loops were most of pgmux's own work per transaction; here each
 * is one call:
 *   screen  the session-state screen of a Query's text (protocol/scans.py)
 *   query   whether a client's read is exactly one whole Query (and its screen), or a batch of the
 *           unnamed statement the client sent last
 *   steps   the client relay's walk over any other read (Syncs, extended batch, COPY, Terminate)
 *   walk    the server relay's walk over a reply (ReadyForQuery and the messages it must see)
 *   shape   what the unnamed statement's fast path needs to know of a client's messages
 *   binds   the Binds of a named prepared statement's steady state
 * Each keeps a Python definition (protocol/scans.py): tests/unit/test_speedups.py
 * checks both agree, and pgmux falls back to the Python where this module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_views.h"
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

typedef struct {
    const char *s;
    Py_ssize_t n;
} Word;
#define W(lit) {lit, (Py_ssize_t)sizeof(lit) - 1}

/* Whether the lower-case ASCII word w occurs at p[i:], ignoring ASCII case (as bytes.lower() does). */
static inline int at(const unsigned char *p, Py_ssize_t n, Py_ssize_t i, Word w)
{
    if (i + w.n > n)
        return 0;
    for (Py_ssize_t j = 0; j < w.n; j++)
        if (lower(p[i + j]) != (unsigned char)w.s[j])
            return 0;
    return 1;
}

static int contains(const unsigned char *p, Py_ssize_t n, Word w)
{
    for (Py_ssize_t i = 0; i + w.n <= n; i++)
        if (lower(p[i]) == (unsigned char)w.s[0] && at(p, n, i, w))
            return 1;
    return 0;
}

/* The same word lists as protocol/scans.py (_FIRST and _SCREEN). FIRST is grouped by first letter:
 * screen_bytes compares a text's first word only with the words that start as it does (FIRST_AT). */
static const Word FIRST[] = {W("set"), W("savepoint"), W("reset"), W("rollback"), W("release"), W("discard"),
                             W("deallocate"), W("declare"), W("do"), W("drop"), W("listen"), W("load"),
                             W("unlisten"), W("close"), W("create"), W("/*"), W("--"), W("execute"),
                             W("explain"), W("prepare"), {NULL, 0}};
static const Word ANYWHERE[] = {W("set"), W("discard"), W("deallocate"), W("listen"), W("temp"), W("advisory"),
                                W("hold"), W("load"), W("close"), W("u&"), W("savepoint"), W("rollback"),
                                W("release"), {NULL, 0}};
static const Word ADVISORY = W("advisory"), SET_CONFIG = W("set_config"), TEMP = W("temp"), U_AMP = W("u&");

/* For each byte, the first word of FIRST that starts with it (either case), and one past its last; 0 and
 * 0 for none. Filled once, at import (first_index). */
static unsigned char FIRST_AT[256][2];

static void first_index(void)
{
    for (int k = 0; FIRST[k].s; k++) {
        unsigned char c = (unsigned char)FIRST[k].s[0];
        unsigned char cs[2] = {c, (c >= 'a' && c <= 'z') ? (unsigned char)(c - 32) : c};
        for (int u = 0; u < 2; u++) {
            if (FIRST_AT[cs[u]][1] == 0)
                FIRST_AT[cs[u]][0] = (unsigned char)k;
            FIRST_AT[cs[u]][1] = (unsigned char)(k + 1);
        }
    }
}

/* Whether the lower-case word w occurs in p[0:n], ignoring ASCII case: each place of its byte w.s[k]
 * (either case; memchr finds them) is tried. k names a rare byte of the word ('v' of "advisory"), so
 * a text without one costs two memchr calls, not a loop over its bytes. */
static int has(const unsigned char *p, Py_ssize_t n, Word w, Py_ssize_t k)
{
    unsigned char lo = (unsigned char)w.s[k];
    unsigned char cases[2] = {lo, (lo >= 'a' && lo <= 'z') ? (unsigned char)(lo - 32) : lo};
    for (int u = 0; u < (cases[1] != lo ? 2 : 1); u++) {
        const unsigned char *q = p + k, *stop = p + n - (w.n - k) + 1; /* the key's last possible place + 1 */
        while (q < stop && (q = memchr(q, cases[u], (size_t)(stop - q))) != NULL) {
            if (at(p, n, q - p - k, w))
                return 1;
            q++;
        }
    }
    return 0;
}

static int screen_bytes(const unsigned char *p, Py_ssize_t n)
{
    /* The words that count anywhere in the text: "advisory" and "set_config" (with a '_' somewhere, as
     * in every function of theirs), "temp", and "u&", each looked for from its rarest byte. */
    if (n <= 0)
        return 0;
    if (memchr(p, '_', (size_t)n) != NULL && (has(p, n, ADVISORY, 2) || has(p, n, SET_CONFIG, 3)))
        return 1;
    if (has(p, n, TEMP, 2) || has(p, n, U_AMP, 1))
        return 1;
    Py_ssize_t s = 0;  /* bytes.lstrip(): ASCII whitespace */
    while (s < n && (p[s] == ' ' || p[s] == '\t' || p[s] == '\n' || p[s] == '\r' || p[s] == '\v' || p[s] == '\f'))
        s++;
    if (s < n) {
        for (int k = FIRST_AT[p[s]][0]; k < FIRST_AT[p[s]][1]; k++)
            if (at(p, n, s, FIRST[k]))
                return 1;
    }
    const unsigned char *semi = memchr(p, ';', (size_t)n);
    if (semi == NULL)
        return 0;
    int more = 0;  /* anything after the first ';' but blanks, ';' and NUL: more than one statement */
    for (const unsigned char *q = semi; q < p + n; q++) {
        if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\n' && *q != ';' && *q != '\0') {
            more = 1;
            break;
        }
    }
    if (!more)
        return 0;
    for (int k = 0; ANYWHERE[k].s; k++)
        if (contains(p, n, ANYWHERE[k]))
            return 1;
    return 0;
}

static PyObject *screen(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "screen(data, start, end) takes 3 arguments");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if ((start == -1 || end == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (get_view(args[0], &view) < 0)
        return NULL;
    /* Python slice semantics for the bounds the callers use (0 <= start, end may pass the length). */
    if (start < 0)
        start = 0;
    if (end > view.len)
        end = view.len;
    int r = end > start ? screen_bytes((const unsigned char *)view.buf + start, end - start) : 0;
    put_view(&view);
    return PyBool_FromLong(r);
}

/*
 * The read of an extended-protocol batch of the unnamed statement whose Parse is `screened` (sp, sn),
 * byte for byte: whole messages of at most `limit` bytes, that Parse first, then Binds of the unnamed
 * portal and statement, Describes of a portal or of the unnamed statement, Executes (one at least) and
 * Parses of the same bytes, and one Sync, last. 1 for that read, else 0.
 */
/* The `screened` argument of query() and shape(): bytes (an unnamed Parse the screen passed) or None.
   0 with *sp/*sn set for bytes and left as they are for None; -1 with TypeError for anything else. */
static int screened_arg(const char *name, PyObject *arg, const char **sp, Py_ssize_t *sn)
{
    if (arg == Py_None)
        return 0;
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s(): screened must be bytes or None", name);
        return -1;
    }
    *sp = PyBytes_AS_STRING(arg);
    *sn = PyBytes_GET_SIZE(arg);
    return 0;
}

static int same_batch(const unsigned char *p, Py_ssize_t n, Py_ssize_t limit, const char *sp, Py_ssize_t sn)
{
    Py_ssize_t pos = 0;
    int executed = 0;
    while (n - pos >= 5) {
        unsigned char t = p[pos];
        if ((pos == 0 && t != 'P') || (p[pos + 1] & 0x80))
            return 0;
        Py_ssize_t len = ((Py_ssize_t)p[pos + 1] << 24) | (p[pos + 2] << 16) | (p[pos + 3] << 8) | p[pos + 4];
        Py_ssize_t end = pos + 1 + len;
        if (len < 4 || len > limit || end > n)
            return 0;
        Py_ssize_t body = len - 4;
        switch (t) {
        case 'P':
            if (end - pos != sn || body < 1 || p[pos + 5] != 0 || memcmp(p + pos, sp, (size_t)sn) != 0)
                return 0;
            break;
        case 'B':
            if (body < 2 || p[pos + 5] != 0 || p[pos + 6] != 0)
                return 0;
            break;
        case 'D':
            if (body < 2 || !(p[pos + 5] == 'P' || (p[pos + 5] == 'S' && p[pos + 6] == 0)))
                return 0;
            break;
        case 'E':
            executed = 1;
            break;
        case 'S':
            return end == n && executed;
        default:
            return 0;
        }
        pos = end;
    }
    return 0;
}

/*
 * query(data, limit, screened=None) -> 0, 1, 2 or 3
 *
 * The first test of ClientSession.data_received on every read after login, for its two fast paths:
 * 1 when `data` is exactly one whole Query message of at most `limit` bytes whose text screen() passes,
 * 2 for such a Query whose text may change tracked session state, 3 when it is an extended-protocol
 * batch of the unnamed statement (see same_batch) whose Parse is `screened` (bytes: the client's last
 * unnamed Parse that the screen passed), and 0 for any other read (the caller walks it then).
 * pgmux.protocol.scans.query_py is the definition.
 */
static PyObject *query(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 && nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "query(data, limit, screened=None) takes 2 or 3 arguments");
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    const char *sp = NULL;
    Py_ssize_t sn = -1;
    if (nargs == 3 && screened_arg("query", args[2], &sp, &sn) < 0)
        return NULL;
    Py_buffer view;
    if (get_view(args[0], &view) < 0)
        return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    long r = 0;
    if (n > 5 && p[0] == 'Q') {
        uint32_t len = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | (uint32_t)p[4];
        if (n <= limit && (Py_ssize_t)len == n - 1)
            r = screen_bytes(p + 5, n - 5) ? 2 : 1;
    } else if (sp != NULL && n > 5 && p[0] == 'P') {
        r = same_batch(p, n, limit, sp, sn) ? 3 : 0;
    }
    put_view(&view);
    return PyLong_FromLong(r);
}

/*
 * The header of the message at p[pos:]: its type in *t and its end in *end. Returns 1 for a whole
 * message, 0 when the data ends inside it, and -1 with ValueError(type, length) set for an impossible
 * length: below 4, above limit, or a ReadyForQuery not of 5 (the length read as a signed int32, as
 * struct "!i" reads it).
 */
/* The result tuples of the functions below, built directly: Py_BuildValue parses its format string on
   every call, which cost more than some of the walks themselves. `kinds` has one letter per item:
   'n' a Py_ssize_t, 'b' an int read as a bool, 'O' an object reference the tuple takes over. */
static PyObject *pack(const char *kinds, ...)
{
    Py_ssize_t n = (Py_ssize_t)strlen(kinds);
    PyObject *t = PyTuple_New(n);
    va_list ap;
    va_start(ap, kinds);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item;
        if (kinds[i] == 'n')
            item = PyLong_FromSsize_t(va_arg(ap, Py_ssize_t));
        else if (kinds[i] == 'b')
            item = Py_NewRef(va_arg(ap, int) ? Py_True : Py_False);
        else
            item = va_arg(ap, PyObject *);
        if (t == NULL || item == NULL) {  /* still take every 'O' over, so none leaks */
            Py_XDECREF(item);
            continue;
        }
        PyTuple_SET_ITEM(t, i, item);
    }
    va_end(ap);
    if (t != NULL) {
        for (Py_ssize_t i = 0; i < n; i++)
            if (PyTuple_GET_ITEM(t, i) == NULL) {
                Py_DECREF(t);
                return NULL;
            }
    }
    return t;
}

static int header(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos, long long limit, unsigned char *t,
                  Py_ssize_t *end)
{
    if (n - pos < 5)
        return 0;
    *t = p[pos];
    long long len = ((long long)p[pos + 1] << 24) | (p[pos + 2] << 16) | (p[pos + 3] << 8) | p[pos + 4];
    if (p[pos + 1] & 0x80)
        len -= 1LL << 32;
    if (len < 4 || len > limit || (*t == 'Z' && len != 5)) {
        PyObject *err = Py_BuildValue("(iL)", (int)*t, len);
        if (err) {
            PyErr_SetObject(PyExc_ValueError, err);
            Py_DECREF(err);
        }
        return -1;
    }
    *end = pos + 1 + (Py_ssize_t)len;
    return *end <= n;
}

/* The arguments of walk() and ready(): (data, limit, noted), `noted` a 256-byte table of message types.
   0 with both views held (the caller puts them back), or -1 with an exception set and neither held. */
static int reply_args(const char *name, PyObject *const *args, Py_ssize_t nargs, long long *limit,
                      Py_buffer *view, Py_buffer *table)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s(data, limit, noted) takes 3 arguments", name);
        return -1;
    }
    *limit = PyLong_AsSsize_t(args[1]); /* (AsLongLong takes a slow path for two-digit ints) */
    if (*limit == -1 && PyErr_Occurred())
        return -1;
    if (get_view(args[0], view) < 0)
        return -1;
    if (get_view(args[2], table) < 0) {
        put_view(view);
        return -1;
    }
    if (table->len != 256) {
        PyErr_Format(PyExc_ValueError, "%s: noted must be a 256-byte table", name);
        put_view(table);
        put_view(view);
        return -1;
    }
    return 0;
}

/*
 * walk(data, limit, noted) -> (end, nz, z, zpos, items)
 *
 * The header walk of ServerSession._relay: over the complete messages at the start of `data`
 * (5-byte headers, lengths checked against `limit`), count the ReadyForQuery messages (nz), the last
 * one's status byte (z, 0 if none) and offset (zpos). `noted` is a 256-byte table of the other
 * message types the caller must see: when any of them occurs, `items` lists every noted message
 * and every ReadyForQuery as (type, start, total) in order, so the caller handles them exactly as
 * its own loop would; otherwise items is None. `end` is where the first incomplete message starts.
 * An impossible length (below 4, above limit, or a ReadyForQuery not of 5) raises ValueError(type,
 * length). pgmux.protocol.scans.walk_py is the definition.
 */
static PyObject *walk(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long limit;
    Py_buffer view, table;
    if (reply_args("walk", args, nargs, &limit, &view, &table) < 0)
        return NULL;
    PyObject *result = NULL;
    const unsigned char *p = view.buf, *noted = table.buf;
    Py_ssize_t n = view.len, pos = 0, zpos = 0, nz = 0, nnoted = 0;
    int z = 0;
    /* First pass: find the end, count ReadyForQuery and noted messages. */
    for (;;) {
        unsigned char t;
        Py_ssize_t end;
        int whole = header(p, n, pos, limit, &t, &end);
        if (whole < 0)
            goto done;
        if (!whole)
            break;
        if (t == 'Z') {
            nz++;
            z = p[pos + 5];  /* length 5, checked above: the status byte */
            zpos = pos;
        } else if (noted[t]) {
            nnoted++;
        }
        pos = end;
    }
    PyObject *items = Py_None;
    Py_INCREF(Py_None);
    if (nnoted) {
        Py_DECREF(Py_None);
        items = PyList_New(0);
        if (items == NULL)
            goto done;
        Py_ssize_t q = 0;
        while (q < pos) {
            unsigned char t = p[q];
            Py_ssize_t total = 1 + (((Py_ssize_t)p[q + 1] << 24) | (p[q + 2] << 16) | (p[q + 3] << 8) | p[q + 4]);
            if (t == 'Z' || noted[t]) {
                PyObject *item = pack("nnn", (Py_ssize_t)t, q, total);
                if (item == NULL || PyList_Append(items, item) < 0) {
                    Py_XDECREF(item);
                    Py_DECREF(items);
                    goto done;
                }
                Py_DECREF(item);
            }
            q += total;
        }
    }
    result = pack("nnnnO", pos, nz, (Py_ssize_t)z, zpos, items);
done:
    put_view(&table);
    put_view(&view);
    return result;
}

/*
 * ready(data, limit, noted) -> int
 *
 * The server relay's usual read, told without walk()'s tuple: the status byte of its ReadyForQuery when
 * `data` is whole messages (lengths within walk()'s bounds) of which exactly one is a ReadyForQuery, the
 * last, and none is of a type marked in `noted`; 0 for any other read, which the caller then walks (and
 * walk() raises for an impossible length). What walk() returns for such a read is (len(data), 1, z,
 * len(data) - 6, None). A read that does not end in a ReadyForQuery's header costs no walk: the first
 * test looks at its last six bytes. pgmux.protocol.scans.ready_py is the definition.
 */
static PyObject *ready(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long limit;
    Py_buffer view, table;
    if (reply_args("ready", args, nargs, &limit, &view, &table) < 0)
        return NULL;
    const unsigned char *p = view.buf, *noted = table.buf;
    Py_ssize_t n = view.len, pos = 0;
    int z = 0;
    if (n >= 6 && p[n - 6] == 'Z' && p[n - 5] == 0 && p[n - 4] == 0 && p[n - 3] == 0 && p[n - 2] == 5) {
        while (n - pos >= 5) {
            unsigned char t = p[pos];
            long long len = ((long long)p[pos + 1] << 24) | (p[pos + 2] << 16) | (p[pos + 3] << 8) | p[pos + 4];
            if (p[pos + 1] & 0x80)
                len -= 1LL << 32;
            if (len < 4 || len > limit || len > n - pos - 1)
                break;
            Py_ssize_t end = pos + 1 + (Py_ssize_t)len;
            if (t == 'Z') {
                if (len == 5 && end == n)
                    z = p[pos + 5];
                break;
            }
            if (noted[t])
                break;
            pos = end;
        }
    }
    put_view(&table);
    put_view(&view);
    return PyLong_FromLong(z);
}

/*
 * steps(data, limit, copy_syncs, unsynced, watch, copy_in)
 *     -> (end, syncs, copy_syncs, unsynced, ext, track, ignored, copy_in, terminate)
 *
 * ClientSession._relay's walk over a read that is not one whole Query, in one call: over the complete
 * messages at the start of `data` (lengths checked as walk() checks them), count Query, Sync and
 * FunctionCall (each ends in one ReadyForQuery), follow the extended-protocol batch, screen each
 * Query's text when `watch`, and stop at a Terminate (`end` is then where it starts). `copy_in` says
 * the server is in a COPY FROM STDIN started by Execute: at its CopyDone or CopyFail, the Syncs sent
 * since the Execute, but one, get no reply (`ignored`), and copy_in ends. pgmux.protocol.scans.steps_py
 * is the definition.
 */
static PyObject *steps(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "steps(data, limit, copy_syncs, unsynced, watch, copy_in) takes 6 arguments");
        return NULL;
    }
    long long limit = PyLong_AsSsize_t(args[1]); /* (AsLongLong takes a slow path for two-digit ints) */
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t copy_syncs = PyLong_AsSsize_t(args[2]);
    if (copy_syncs == -1 && PyErr_Occurred())
        return NULL;
    int unsynced = PyObject_IsTrue(args[3]);
    int watch = PyObject_IsTrue(args[4]);
    int copy_in = PyObject_IsTrue(args[5]);
    if (unsynced < 0 || watch < 0 || copy_in < 0)
        return NULL;
    Py_buffer view;
    if (get_view(args[0], &view) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, pos = 0, syncs = 0, ignored = 0;
    int ext = 0, track = 0, terminate = 0;
    PyObject *result = NULL;
    for (;;) {
        unsigned char t;
        Py_ssize_t end;
        int whole = header(p, n, pos, limit, &t, &end);
        if (whole < 0)
            goto done;
        if (!whole)
            break;
        switch (t) {
        case 'Q':
        case 'S':
        case 'F':
            syncs++;
            unsynced = 0;
            copy_syncs = t == 'S' ? copy_syncs + 1 : 0;
            if (t == 'Q' && watch && !track && screen_bytes(p + pos + 5, end - pos - 5))
                track = 1;
            break;
        case 'P':
        case 'B':
        case 'D':
        case 'C':
        case 'H':
            unsynced = 1;
            ext = 1;
            break;
        case 'E':
            unsynced = 1;
            ext = 1;
            copy_syncs = 0;
            break;
        case 'c':
        case 'f':
            if (copy_syncs && copy_in) {
                ignored += copy_syncs;
                copy_in = 0;
            }
            copy_syncs = 0;
            break;
        case 'X':
            terminate = 1;
            break;
        }
        if (terminate)
            break;
        pos = end;
    }
    result = pack("nnnbbbnbb", pos, syncs, copy_syncs, (int)unsynced, (int)ext, (int)track, ignored,
                  (int)copy_in, (int)terminate);
done:
    put_view(&view);
    return result;
}

/*
 * shape(chunk, screened=None) -> (flags, start, end)
 *
 * What session/fastpath.py's as_is needs to know of a client's complete messages, in one pass:
 * `flags` is an OR of the SHAPE_* bits below, and data[start:end] is the last Parse of the unnamed
 * statement (start -1 when there is none). An unnamed Parse equal to `screened` (one whose text
 * screen() passed before: the client's last, for drivers that send the same text every time) is not
 * screened again. pgmux.protocol.scans.shape_py is the definition.
 */
enum {
    SHAPE_PARSE_NAMED = 1,       /* a Parse of a named statement */
    SHAPE_SCREEN_NAMED = 2,      /* ... whose text screen() flags */
    SHAPE_PARSE_UNNAMED = 4,     /* a Parse of the unnamed statement */
    SHAPE_SCREEN_UNNAMED = 8,    /* ... whose text screen() flags */
    SHAPE_BIND = 16,             /* a Bind */
    SHAPE_BIND_NAMED = 32,       /* ... naming a portal or a statement */
    SHAPE_UNNAMED_EARLY = 64,    /* a Bind or Describe of the unnamed statement before any Parse of it here */
    SHAPE_DESCRIBE_NAMED = 128,  /* a Describe of a named statement */
    SHAPE_CLOSE_STATEMENT = 256, /* a Close of a statement */
    SHAPE_EXECUTE = 512,         /* an Execute */
    SHAPE_OTHER = 1024,          /* a Query, a FunctionCall, or a message too short for its kind */
    SHAPE_SAME = 2048,           /* the last unnamed Parse is `screened`, byte for byte (not screened again) */
};

static PyObject *shape(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "shape(chunk, screened=None) takes 1 or 2 arguments");
        return NULL;
    }
    const char *sp = NULL; /* `screened`: an unnamed Parse whose text screen() passed before */
    Py_ssize_t sn = -1;
    if (nargs == 2 && screened_arg("shape", args[1], &sp, &sn) < 0)
        return NULL;
    Py_buffer view;
    if (get_view(args[0], &view) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, pos = 0, ustart = -1, uend = -1;
    long flags = 0;
    int same = 0; /* the last unnamed Parse is `screened`, byte for byte */
    while (n - pos >= 5) {
        unsigned char t = p[pos];
        Py_ssize_t len = ((Py_ssize_t)p[pos + 1] << 24) | (p[pos + 2] << 16) | (p[pos + 3] << 8) | p[pos + 4];
        Py_ssize_t end = pos + 1 + len;
        if (len < 4 || end > n) {
            flags |= SHAPE_OTHER;
            break;
        }
        Py_ssize_t body = len - 4; /* bytes after the header */
        switch (t) {
        case 'P':
            if (body < 1) {
                flags |= SHAPE_OTHER;
            } else if (p[pos + 5] != 0) {
                flags |= SHAPE_PARSE_NAMED;
                const unsigned char *nul = memchr(p + pos + 5, 0, (size_t)body);
                Py_ssize_t from = nul ? (Py_ssize_t)(nul - p) + 1 : pos + 5;
                if (screen_bytes(p + from, end - from))
                    flags |= SHAPE_SCREEN_NAMED;
            } else {
                flags |= SHAPE_PARSE_UNNAMED;
                same = sn == end - pos && memcmp(p + pos, sp, (size_t)sn) == 0;
                if (!same && screen_bytes(p + pos + 6, end - pos - 6))
                    flags |= SHAPE_SCREEN_UNNAMED;
                ustart = pos;
                uend = end;
            }
            break;
        case 'B':
            if (body < 2) {
                flags |= SHAPE_OTHER;
                break;
            }
            flags |= SHAPE_BIND;
            if (p[pos + 5] != 0 || p[pos + 6] != 0)
                flags |= SHAPE_BIND_NAMED;
            else if (ustart < 0)
                flags |= SHAPE_UNNAMED_EARLY;
            break;
        case 'D':
            if (body < 2) {
                flags |= SHAPE_OTHER;
            } else if (p[pos + 5] == 'S') {
                if (p[pos + 6] != 0)
                    flags |= SHAPE_DESCRIBE_NAMED;
                else if (ustart < 0)
                    flags |= SHAPE_UNNAMED_EARLY;
            }
            break;
        case 'C':
            if (body < 1)
                flags |= SHAPE_OTHER;
            else if (p[pos + 5] == 'S')
                flags |= SHAPE_CLOSE_STATEMENT;
            break;
        case 'E':
            flags |= SHAPE_EXECUTE;
            break;
        case 'Q':
        case 'F':
            flags |= SHAPE_OTHER;
            break;
        }
        pos = end;
    }
    put_view(&view);
    if (same)
        flags |= SHAPE_SAME;
    return pack("nnn", (Py_ssize_t)flags, ustart, uend);
}

/*
 * binds(chunk) -> [(start, portal_end, name_end, end), ...] or None
 *
 * The walk of session/fastpath.py's rebound: when the complete messages in `chunk` are only Binds of
 * named statements, Describes of portals, Executes and Syncs, and a Sync comes last, the Binds' offsets:
 * where each starts, ends, and where the NUL after its portal name and after its statement name are.
 * None for anything else. pgmux.protocol.scans.binds_py is the definition.
 */
static PyObject *binds(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "binds(chunk) takes 1 argument");
        return NULL;
    }
    Py_buffer view;
    if (get_view(args[0], &view) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, pos = 0;
    unsigned char last = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto fail;
    while (pos < n) {
        if (n - pos < 5)
            goto none;
        unsigned char t = p[pos];
        Py_ssize_t len = ((Py_ssize_t)p[pos + 1] << 24) | (p[pos + 2] << 16) | (p[pos + 3] << 8) | p[pos + 4];
        Py_ssize_t end = pos + 1 + len;
        if (len < 4 || end > n)
            goto none;
        if (t == 'B') {
            const unsigned char *pe = memchr(p + pos + 5, 0, (size_t)(end - pos - 5));
            if (pe == NULL)
                goto none;
            const unsigned char *ne = memchr(pe + 1, 0, (size_t)(p + end - pe - 1));
            if (ne == NULL || ne == pe + 1)  /* malformed, or the unnamed statement */
                goto none;
            PyObject *item = pack("nnnn", pos, (Py_ssize_t)(pe - p), (Py_ssize_t)(ne - p), end);
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                goto fail;
            }
            Py_DECREF(item);
        } else if (t == 'D') {
            if (len < 5 || p[pos + 5] == 'S')  /* a statement's description may need it prepared first */
                goto none;
        } else if (t != 'E' && t != 'S') {
            goto none;
        }
        last = t;
        pos = end;
    }
    if (last != 'S')  /* replies not ended by a ReadyForQuery stay queued, ahead of what pgmux answers */
        goto none;
    put_view(&view);
    return out;
none:
    put_view(&view);
    Py_DECREF(out);
    Py_RETURN_NONE;
fail:
    put_view(&view);
    Py_XDECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL,
     "walk(data, limit, noted) -> (end, nz, z, zpos, items): the header walk of the server relay."},
    {"ready", (PyCFunction)(void (*)(void))ready, METH_FASTCALL,
     "ready(data, limit, noted) -> the status byte of the one ReadyForQuery that ends a read of whole messages "
     "none of which is noted, else 0 (see pgmux.protocol.scans.ready_py)."},
    {"binds", (PyCFunction)(void (*)(void))binds, METH_FASTCALL,
     "binds(chunk) -> [(start, portal_end, name_end, end), ...] or None: the Binds of a chunk of only Binds "
     "of named statements, Describes of portals, Executes and Syncs, ending in a Sync."},
    {"shape", (PyCFunction)(void (*)(void))shape, METH_FASTCALL,
     "shape(chunk, screened=None) -> (flags, start, end): what the extended-protocol fast path needs to know of a "
     "client's complete messages (see pgmux.protocol.scans.shape_py)."},
    {"steps", (PyCFunction)(void (*)(void))steps, METH_FASTCALL,
     "steps(data, limit, copy_syncs, unsynced, watch, copy_in) -> (end, syncs, copy_syncs, unsynced, ext, track, "
     "ignored, copy_in, terminate): the client relay's walk over a read (see pgmux.protocol.scans.steps_py)."},
    {"query", (PyCFunction)(void (*)(void))query, METH_FASTCALL,
     "query(data, limit, screened=None) -> 0 (neither fast path), 1 (one whole Query, changing nothing "
     "tracked), 2 (one that may change tracked session state) or 3 (an extended batch of the unnamed statement "
     "whose Parse is screened; see pgmux.protocol.scans.query_py)."},
    {"screen", (PyCFunction)(void (*)(void))screen, METH_FASTCALL,
     "screen(data, start, end) -> bool: False when the Query text data[start:end] certainly changes no "
     "session state pgmux tracks (see pgmux.protocol.scans)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pgmux._speedups", NULL, 0, methods};

PyMODINIT_FUNC PyInit__speedups(void)
{
    first_index();
    return PyModule_Create(&module);
}

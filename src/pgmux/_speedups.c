/*
 * pgmux._speedups: the one per-query text scan of the forwarding path, in C.
 *
 * session/tracking.py's screen() decides, for every Query a client sends in transaction mode,
 * whether the text may change session state pgmux tracks (SET, advisory locks, temp tables, ...).
 * Its pure-Python version costs about 0.7 us per query, a fifth of pgmux's own work on a pgbench
 * transaction; this one does the same test in one pass over the bytes. The Python version stays the
 * definition: tests/unit/test_speedups.py checks both agree, and pgmux falls back to it when this
 * module was not built.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Whether the lower-case ASCII `word` occurs in p[0:n], ignoring ASCII case (as bytes.lower() does). */
static int contains(const unsigned char *p, Py_ssize_t n, const char *word)
{
    Py_ssize_t m = (Py_ssize_t)strlen(word);
    unsigned char first = (unsigned char)word[0];
    for (Py_ssize_t i = 0; i + m <= n; i++) {
        if (lower(p[i]) != first)
            continue;
        Py_ssize_t j = 1;
        while (j < m && lower(p[i + j]) == (unsigned char)word[j])
            j++;
        if (j == m)
            return 1;
    }
    return 0;
}

static int starts_with(const unsigned char *p, Py_ssize_t n, const char *word)
{
    Py_ssize_t m = (Py_ssize_t)strlen(word);
    if (m > n)
        return 0;
    for (Py_ssize_t j = 0; j < m; j++)
        if (lower(p[j]) != (unsigned char)word[j])
            return 0;
    return 1;
}

/* The same word lists as session/tracking.py (_FIRST and _SCREEN). */
static const char *const FIRST[] = {"set", "reset", "discard", "deallocate", "listen", "unlisten", "load",
                                    "close", "declare", "/*", "--", "do", "execute", "explain", NULL};
static const char *const ANYWHERE[] = {"set", "discard", "deallocate", "listen", "temp", "advisory", "hold",
                                       "load", "close", "u&", NULL};

static int screen_bytes(const unsigned char *p, Py_ssize_t n)
{
    if (memchr(p, '_', (size_t)n) && (contains(p, n, "advisory") || contains(p, n, "set_config")))
        return 1;
    if (contains(p, n, "temp") || (memchr(p, '&', (size_t)n) && contains(p, n, "u&")))
        return 1;
    Py_ssize_t s = 0;  /* bytes.lstrip(): ASCII whitespace */
    while (s < n && (p[s] == ' ' || p[s] == '\t' || p[s] == '\n' || p[s] == '\r' || p[s] == '\v' || p[s] == '\f'))
        s++;
    for (int k = 0; FIRST[k]; k++)
        if (starts_with(p + s, n - s, FIRST[k]))
            return 1;
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
    for (int k = 0; ANYWHERE[k]; k++)
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
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    /* Python slice semantics for the bounds the callers use (0 <= start, end may pass the length). */
    if (start < 0)
        start = 0;
    if (end > view.len)
        end = view.len;
    int r = end > start ? screen_bytes((const unsigned char *)view.buf + start, end - start) : 0;
    PyBuffer_Release(&view);
    return PyBool_FromLong(r);
}

static PyMethodDef methods[] = {
    {"screen", (PyCFunction)(void (*)(void))screen, METH_FASTCALL,
     "screen(data, start, end) -> bool: False when the Query text data[start:end] certainly changes no "
     "session state pgmux tracks (see pgmux.session.tracking)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pgmux._speedups", NULL, 0, methods};

PyMODINIT_FUNC PyInit__speedups(void)
{
    return PyModule_Create(&module);
}

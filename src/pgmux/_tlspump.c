/*
 * pgmux._tlspump: the records of an open TLS connection, decrypted and encrypted in C.
 *
 * net/tlsconn.py drives TLS with an ssl.SSLObject over two memory BIOs. Once the handshake is done,
 * every read of a TLS connection feeds ciphertext to the incoming BIO and takes plaintext out with
 * SSL_read, and every write puts plaintext in with SSL_write and takes the records out of the outgoing
 * BIO. Through the ssl module that is six or more Python-level calls per message exchange, and the
 * module gives up and takes back the GIL around each SSL_read, SSL_write and SSL_pending (pgmux runs
 * one thread: nothing else could use it). Here it is two calls:
 *
 *   Pump(sslobj, incoming, outgoing)  sslobj is SSLObject._sslobj (the _ssl module's _SSLSocket),
 *                                      incoming and outgoing the ssl.MemoryBIO pair it was made with
 *   pump.decrypt(data) -> bytes        data into the incoming BIO; the plaintext of every complete
 *                                      record out. Once the peer's close_notify has come (pump.eof),
 *                                      or when OpenSSL has records to send back, the rare read, a
 *                                      tuple (plaintext, eof) instead: the caller then flushes the
 *                                      outgoing BIO and closes on eof.
 *   pump.encrypt(data) -> bytes        the records of data, ready for the socket
 *
 * Both raise ssl.SSLError on any TLS error (a record that does not decrypt, an alert): tlsconn.py then
 * closes the connection, as it does for the ssl module's errors.
 *
 * The OpenSSL objects are the ssl module's own: the SSL of the _SSLSocket and the BIOs of the two
 * MemoryBIOs, read from their C structs (their first fields, the same in every CPython 3 release). The
 * functions are those of the very libssl the _ssl module was linked with: looked up with dlsym in the
 * _ssl module's own library, not linked here. Before a Pump is made, everything read is checked
 * against OpenSSL: the SSL's read and write BIOs must be the two MemoryBIOs' BIOs, and its app data
 * (which _ssl sets to the _SSLSocket) must be the _SSLSocket itself. If anything differs, Pump()
 * raises TypeError and tlsconn.py keeps the ssl module's path (as it does where this module was not
 * built).
 *
 * Memory: one plaintext buffer for the whole module (pgmux runs one thread), 64 KiB, grown while a
 * single read needs more (at most that read's ciphertext plus one record, 16 KiB) and given back to
 * 64 KiB after such a read. Nothing per connection but the Pump itself.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include "_views.h"
#include <structmember.h>
#include <dlfcn.h>
#include <stddef.h>

/* OpenSSL's types are opaque here; its constants are fixed by its ABI. */
typedef struct ssl_st SSL;
typedef struct bio_st BIO;

#define X_SSL_ERROR_NONE 0
#define X_SSL_ERROR_SSL 1
#define X_SSL_ERROR_WANT_READ 2
#define X_SSL_ERROR_WANT_WRITE 3
#define X_SSL_ERROR_SYSCALL 5
#define X_SSL_ERROR_ZERO_RETURN 6

/* The first fields of the _ssl module's structs (Modules/_ssl.c): unchanged since Python 3.2. */
typedef struct {
    PyObject_HEAD
    PyObject *Socket;
    SSL *ssl;
} SSLSocketHead;

typedef struct {
    PyObject_HEAD
    BIO *bio;
} MemoryBIOHead;

static int (*p_SSL_read_ex)(SSL *, void *, size_t, size_t *);
static int (*p_SSL_write_ex)(SSL *, const void *, size_t, size_t *);
static int (*p_SSL_get_error)(const SSL *, int);
static int (*p_SSL_pending)(const SSL *);
static BIO *(*p_SSL_get_rbio)(const SSL *);
static BIO *(*p_SSL_get_wbio)(const SSL *);
static void *(*p_SSL_get_ex_data)(const SSL *, int);
static int (*p_BIO_write)(BIO *, const void *, int);
static int (*p_BIO_read)(BIO *, void *, int);
static size_t (*p_BIO_ctrl_pending)(BIO *);
static unsigned long (*p_ERR_get_error)(void);
static unsigned long (*p_ERR_peek_error)(void);
static void (*p_ERR_clear_error)(void);
static void (*p_ERR_error_string_n)(unsigned long, char *, size_t);

static PyObject *SSLError;         /* ssl.SSLError */
static PyTypeObject *SocketType;   /* _ssl._SSLSocket */
static PyTypeObject *MemoryBIOType; /* _ssl.MemoryBIO */

#define RECORD 16384              /* the most plaintext one record holds (and one SSL_read returns) */
#define SCRATCH_KEEP (64 * 1024)  /* the buffer's size between reads */
static char *scratch;
static size_t scratch_cap;
static int scratch_busy;

typedef struct {
    PyObject_HEAD
    SSL *ssl;
    BIO *rbio;
    BIO *wbio;
    PyObject *sslobj;  /* kept alive: they own the SSL and the BIOs */
    PyObject *incoming;
    PyObject *outgoing;
    char eof;
} Pump;

/* ssl.SSLError with OpenSSL's reason (its error queue emptied), or `what` when the queue is empty. */
static PyObject *ssl_error(const char *what)
{
    unsigned long code = p_ERR_get_error();
    char buf[256];
    if (code != 0) {
        p_ERR_error_string_n(code, buf, sizeof(buf));
        p_ERR_clear_error();
        PyErr_Format(SSLError, "%s: %s", what, buf);
    } else {
        PyErr_SetString(SSLError, what);
    }
    return NULL;
}

static int grow(size_t need)
{
    if (need <= scratch_cap)
        return 0;
    size_t cap = scratch_cap ? scratch_cap : SCRATCH_KEEP;
    while (cap < need)
        cap *= 2;
    char *p = PyMem_RawRealloc(scratch, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    scratch = p;
    scratch_cap = cap;
    return 0;
}

static PyObject *Pump_decrypt(Pump *self, PyObject *arg)
{
    Py_buffer view;
    if (get_view(arg, &view) < 0)
        return NULL;
    if (view.len > INT_MAX) {
        put_view(&view);
        PyErr_SetString(PyExc_OverflowError, "a read of more than 2 GiB");
        return NULL;
    }
    if (p_ERR_peek_error() != 0)
        p_ERR_clear_error(); /* SSL_get_error needs an empty queue to tell what happened */
    if (view.len > 0 && p_BIO_write(self->rbio, view.buf, (int)view.len) != (int)view.len) {
        put_view(&view);
        return ssl_error("the incoming BIO refused the ciphertext");
    }
    put_view(&view);
    if (scratch_busy) { /* never: nothing here calls back into pgmux; refuse rather than share */
        PyErr_SetString(PyExc_RuntimeError, "pgmux._tlspump: decrypt re-entered");
        return NULL;
    }
    scratch_busy = 1;
    size_t total = 0;
    PyObject *result = NULL;
    for (;;) {
        if (grow(total + RECORD) < 0)
            goto done;
        size_t got = 0;
        int ok = p_SSL_read_ex(self->ssl, scratch + total, RECORD, &got);
        if (ok == 1) {
            total += got;
            /* No more complete records: stop without the SSL_read that would only say so. */
            if (p_BIO_ctrl_pending(self->rbio) == 0 && p_SSL_pending(self->ssl) == 0)
                break;
            continue;
        }
        int err = p_SSL_get_error(self->ssl, ok);
        if (err == X_SSL_ERROR_WANT_READ)
            break; /* the rest of a record comes with a later read */
        if (err == X_SSL_ERROR_ZERO_RETURN) {
            self->eof = 1; /* the peer's close_notify */
            break;
        }
        ssl_error(err == X_SSL_ERROR_SSL ? "TLS error" : "TLS read failed");
        goto done;
    }
    result = PyBytes_FromStringAndSize(scratch, (Py_ssize_t)total);
    if (result != NULL && (self->eof || p_BIO_ctrl_pending(self->wbio) != 0)) {
        /* The rare read: the peer closed, or OpenSSL has something to send back (a KeyUpdate's
         * answer, an alert). Say so in the result, so the usual read costs the caller no check. */
        PyObject *pair = Py_BuildValue("(Ni)", result, (int)self->eof);
        result = pair;
    }
done:
    if (scratch_cap > SCRATCH_KEEP) { /* a large read: give back what the next small ones do not need */
        char *p = PyMem_RawRealloc(scratch, SCRATCH_KEEP);
        if (p != NULL) {
            scratch = p;
            scratch_cap = SCRATCH_KEEP;
        }
    }
    scratch_busy = 0;
    return result;
}

static PyObject *Pump_encrypt(Pump *self, PyObject *arg)
{
    Py_buffer view;
    if (get_view(arg, &view) < 0)
        return NULL;
    if (p_ERR_peek_error() != 0)
        p_ERR_clear_error();
    if (view.len > 0) {
        size_t written = 0;
        int ok = p_SSL_write_ex(self->ssl, view.buf, (size_t)view.len, &written);
        if (ok != 1 || written != (size_t)view.len) {
            int err = p_SSL_get_error(self->ssl, ok);
            put_view(&view);
            return ssl_error(err == X_SSL_ERROR_SSL ? "TLS error" : "TLS write failed");
        }
    }
    put_view(&view);
    size_t n = p_BIO_ctrl_pending(self->wbio);
    if (n > INT_MAX) /* never: a write is one batch of protocol messages, far below 2 GiB */
        return ssl_error("more than 2 GiB of records from one write");
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (out == NULL || n == 0)
        return out;
    int r = p_BIO_read(self->wbio, PyBytes_AS_STRING(out), (int)n);
    if (r != (int)n) {
        Py_DECREF(out);
        return ssl_error("the outgoing BIO gave less than it held");
    }
    return out;
}

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds)
{
    PyObject *sslobj, *incoming, *outgoing;
    static char *kwlist[] = {"sslobj", "incoming", "outgoing", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Pump", kwlist, &sslobj, &incoming, &outgoing))
        return -1;
    if (Py_TYPE(sslobj) != SocketType || Py_TYPE(incoming) != MemoryBIOType ||
        Py_TYPE(outgoing) != MemoryBIOType) {
        PyErr_SetString(PyExc_TypeError, "Pump(): an _ssl._SSLSocket and two _ssl.MemoryBIO expected");
        return -1;
    }
    SSL *ssl = ((SSLSocketHead *)sslobj)->ssl;
    BIO *rbio = ((MemoryBIOHead *)incoming)->bio;
    BIO *wbio = ((MemoryBIOHead *)outgoing)->bio;
    if (ssl == NULL || rbio == NULL || wbio == NULL || p_SSL_get_rbio(ssl) != rbio ||
        p_SSL_get_wbio(ssl) != wbio || p_SSL_get_ex_data(ssl, 0) != (void *)sslobj) {
        PyErr_SetString(PyExc_TypeError, "Pump(): the SSL object is not over these two BIOs");
        return -1;
    }
    self->ssl = ssl;
    self->rbio = rbio;
    self->wbio = wbio;
    Py_INCREF(sslobj);
    Py_XSETREF(self->sslobj, sslobj);
    Py_INCREF(incoming);
    Py_XSETREF(self->incoming, incoming);
    Py_INCREF(outgoing);
    Py_XSETREF(self->outgoing, outgoing);
    self->eof = 0;
    return 0;
}

static PyObject *Pump_call_unmade(Pump *self)
{
    PyErr_SetString(PyExc_ValueError, "Pump: not initialised");
    return NULL;
}

static PyObject *Pump_decrypt_checked(Pump *self, PyObject *arg)
{
    if (self->ssl == NULL)
        return Pump_call_unmade(self);
    return Pump_decrypt(self, arg);
}

static PyObject *Pump_encrypt_checked(Pump *self, PyObject *arg)
{
    if (self->ssl == NULL)
        return Pump_call_unmade(self);
    return Pump_encrypt(self, arg);
}

static void Pump_dealloc(Pump *self)
{
    Py_XDECREF(self->sslobj);
    Py_XDECREF(self->incoming);
    Py_XDECREF(self->outgoing);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Pump_methods[] = {
    {"decrypt", (PyCFunction)Pump_decrypt_checked, METH_O,
     "decrypt(data) -> bytes, or (bytes, eof) when the peer closed or OpenSSL has records to send back"},
    {"encrypt", (PyCFunction)Pump_encrypt_checked, METH_O,
     "encrypt(data) -> bytes: the TLS records of data, for the socket"},
    {NULL, NULL, 0, NULL}};

static PyMemberDef Pump_members[] = {
    {"eof", T_BOOL, offsetof(Pump, eof), READONLY, "the peer's close_notify has come"},
    {NULL, 0, 0, 0, NULL}};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgmux._tlspump.Pump",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The records of one open TLS connection (an ssl.SSLObject over two MemoryBIOs).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_methods = Pump_methods,
    .tp_members = Pump_members,
};

/* OpenSSL's functions as the _ssl module's library sees them. */
static int bind_openssl(PyObject *ssl_module)
{
    PyObject *file = PyObject_GetAttrString(ssl_module, "__file__");
    if (file == NULL)
        return -1; /* _ssl built into the interpreter: not supported here */
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(file, &path)) {
        Py_DECREF(file);
        return -1;
    }
    Py_DECREF(file);
    void *lib = dlopen(PyBytes_AS_STRING(path), RTLD_NOW | RTLD_NOLOAD);
    Py_DECREF(path);
    if (lib == NULL) {
        PyErr_SetString(PyExc_ImportError, "pgmux._tlspump: the _ssl module's library is not loaded");
        return -1;
    }
#define BIND(name)                                                                                   \
    do {                                                                                             \
        *(void **)(&p_##name) = dlsym(lib, #name);                                                   \
        if (p_##name == NULL) {                                                                      \
            PyErr_SetString(PyExc_ImportError, "pgmux._tlspump: OpenSSL has no " #name);             \
            return -1;                                                                               \
        }                                                                                            \
    } while (0)
    BIND(SSL_read_ex);
    BIND(SSL_write_ex);
    BIND(SSL_get_error);
    BIND(SSL_pending);
    BIND(SSL_get_rbio);
    BIND(SSL_get_wbio);
    BIND(SSL_get_ex_data);
    BIND(BIO_write);
    BIND(BIO_read);
    BIND(BIO_ctrl_pending);
    BIND(ERR_get_error);
    BIND(ERR_peek_error);
    BIND(ERR_clear_error);
    BIND(ERR_error_string_n);
#undef BIND
    /* The handle stays open: the module keeps using the library, which _ssl keeps loaded anyway. */
    return 0;
}

static struct PyModuleDef tlspump_module = {
    PyModuleDef_HEAD_INIT, "pgmux._tlspump",
    "The records of an open TLS connection, decrypted and encrypted in C (net/tlsconn.py).", -1, NULL};

PyMODINIT_FUNC PyInit__tlspump(void)
{
    PyObject *ssl_c = PyImport_ImportModule("_ssl");
    if (ssl_c == NULL)
        return NULL;
    if (bind_openssl(ssl_c) < 0) {
        Py_DECREF(ssl_c);
        return NULL;
    }
    SSLError = PyObject_GetAttrString(ssl_c, "SSLError");
    PyObject *mbio = PyObject_GetAttrString(ssl_c, "MemoryBIO");
    PyObject *sock = PyObject_GetAttrString(ssl_c, "_SSLSocket");
    Py_DECREF(ssl_c);
    if (SSLError == NULL || mbio == NULL || sock == NULL || !PyType_Check(mbio) || !PyType_Check(sock)) {
        Py_XDECREF(mbio);
        Py_XDECREF(sock);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ImportError, "pgmux._tlspump: _ssl has no MemoryBIO or _SSLSocket type");
        return NULL;
    }
    MemoryBIOType = (PyTypeObject *)mbio; /* references kept for the module's life */
    SocketType = (PyTypeObject *)sock;
    if (PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&tlspump_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(m, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

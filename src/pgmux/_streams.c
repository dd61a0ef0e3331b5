/* pgmux._streams: the sockets of clients and pooled servers, read and written in C.
 *
 * Why: under uvloop every read of a socket cost a GIL hand-off (libuv runs with the GIL released and
 * each callback takes it back), a context entered and left, and uvloop's read and write machinery
 * around the one recv() and send() that matter; a bare relay through uvloop transports costs 18.8 us
 * of CPU per pgbench -S transaction on the 2-core machine against 16.2 us for the same relay here.
 * A Poller is one epoll set for all of pgmux's connections, itself watched by the event loop
 * (loop.add_reader on the epoll fd): one event-loop callback runs every ready socket of a batch.
 *
 * A Stream is an asyncio transport in all but its class (write, writelines, close, abort,
 * is_closing, pause_reading, resume_reading, is_reading, write_eof, can_write_eof,
 * get_write_buffer_size, set_write_buffer_limits, get_write_buffer_limits, set_protocol,
 * get_protocol, get_extra_info), and calls its protocol as uvloop does: data_received for every
 * read, eof_received at the end of the stream (closing unless it returns true), pause_writing and
 * resume_writing at the buffer's high and low water marks, connection_lost once, soon after the
 * stream is closed (loop.call_soon). An exception from a protocol callback goes to the loop's
 * exception handler with the transport and protocol named, and the stream is aborted (as uvloop's
 * _fatal_error does); an OSError of the socket closes it with that error, unlogged.
 *
 * An Acceptor accepts the connections of one listening socket (accept4, non-blocking), makes the
 * protocol with its factory, a Stream, and calls connection_made at once, then reads what the client
 * has sent already (with tcp_defer_accept, its first packet), without waiting for the next epoll turn.
 *
 * Bounds: one receive buffer per process (STREAMS_RBUF bytes); a stream's write buffer holds what
 * the socket did not take at once and is freed when it drains; it is bounded by the protocols' flow
 * control (pause_writing at the high-water mark, 64 KiB by default, as in asyncio).
 *
 * Lifetime: an open stream is kept alive by the Poller (one reference from creation to close); the
 * events of one epoll batch hold a reference each while the batch runs, so a stream closed (or a
 * file descriptor number reused) by an earlier callback of the batch is never read through a stale
 * pointer. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define STREAMS_RBUF (256 * 1024) /* uvloop reads into 256 KiB too */
#define BATCH 128
#define ACCEPTS_PER_EVENT 64

enum { K_STREAM = 1, K_ACCEPTOR = 2 };
enum {
    F_READING = 1,   /* the protocol wants to be read (not paused) */
    F_CLOSING = 2,   /* close() or abort(): no more reads, writes dropped */
    F_CLOSED = 4,    /* the fd is closed, connection_lost scheduled */
    F_WPAUSED = 8,   /* pause_writing() told, resume_writing() not yet */
    F_EOF_IN = 16,   /* the peer's end of stream seen */
    F_EOF_OUT = 32,  /* write_eof(): shut down writing once the buffer drains */
    F_SHUT = 64,     /* shutdown(SHUT_WR) done */
};

typedef struct Poller Poller;

/* What a Stream and an Acceptor begin with: an epoll event's data.ptr is either. */
#define ENTRY_HEAD                                                                                      \
    PyObject_HEAD int kind;                                                                             \
    int fd;                                                                                             \
    uint32_t events; /* what epoll watches now; 0: not in the epoll set */                             \
    Poller *poller;

typedef struct {
    ENTRY_HEAD
    uint32_t flags;
    PyObject *protocol;
    PyObject *on_data; /* protocol.data_received, looked up once per protocol */
    char *wbuf;
    Py_ssize_t woff, wlen, wcap;
    Py_ssize_t high, low;
} Stream;

typedef struct {
    ENTRY_HEAD
    int nodelay;
    PyObject *factory;
} Acceptor;

struct Poller {
    PyObject_HEAD
    int ep;
    PyObject *loop;
    PyObject *call_soon;
    PyObject *call_later;
    PyObject *exc_handler;
    PyObject *extra; /* get_extra_info for what C does not answer: (stream, name, default) */
    Py_ssize_t open; /* streams open */
};

typedef struct {
    ENTRY_HEAD
} Entry;

static PyTypeObject StreamType, AcceptorType, PollerType;
static char *rbuf;
static PyObject *lost_fn; /* lost(stream, exc): what st_force_close schedules */

/* -- helpers ----------------------------------------------------------------------------------- */

static int watch(Poller *p, PyObject *entry, int fd, uint32_t *cur, uint32_t want) {
    if (want == *cur)
        return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = want;
    ev.data.ptr = entry;
    int op = *cur == 0 ? EPOLL_CTL_ADD : want == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(p->ep, op, fd, &ev) < 0)
        return -1;
    *cur = want;
    return 0;
}

static int st_rewatch(Stream *s) {
    if (s->fd < 0)
        return 0;
    uint32_t want = 0;
    if ((s->flags & (F_READING | F_CLOSING | F_EOF_IN)) == F_READING)
        want |= EPOLLIN;
    if (s->wlen)
        want |= EPOLLOUT;
    return watch(s->poller, (PyObject *)s, s->fd, &s->events, want);
}

/* Whether the exception set now is an Exception (reported, the stream closed) rather than a
 * BaseException such as KeyboardInterrupt (left set, to propagate out of poll()). */
static int is_plain_error(void) {
    PyObject *t = PyErr_Occurred();
    return t != NULL && PyErr_GivenExceptionMatches(t, PyExc_Exception);
}

/* The exception set now, normalized, with its traceback; the error indicator cleared. */
static PyObject *take_exception(void) {
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v != NULL ? v : Py_NewRef(Py_None);
}

static void report(Poller *p, const char *message, PyObject *exc, PyObject *transport, PyObject *protocol) {
    PyObject *ctx = Py_BuildValue("{s:s,s:O}", "message", message, "exception", exc);
    if (ctx != NULL && transport != NULL && PyDict_SetItemString(ctx, "transport", transport) < 0)
        Py_CLEAR(ctx);
    if (ctx != NULL && protocol != NULL && PyDict_SetItemString(ctx, "protocol", protocol) < 0)
        Py_CLEAR(ctx);
    PyObject *r = ctx ? PyObject_CallOneArg(p->exc_handler, ctx) : NULL;
    Py_XDECREF(ctx);
    if (r == NULL)
        PyErr_WriteUnraisable(p->exc_handler);
    Py_XDECREF(r);
}

/* The exception set now: an Exception is reported to the loop (with the transport and protocol named
 * where given) and cleared (0); a BaseException is left set (-1). */
static int report_raised(Poller *p, const char *message, PyObject *transport, PyObject *protocol) {
    if (!is_plain_error())
        return -1;
    PyObject *exc = take_exception();
    report(p, message, exc, transport, protocol);
    Py_DECREF(exc);
    return 0;
}

/* A new Stream or Acceptor (GC-tracked by the caller once its own fields are set). */
static void *entry_new(PyTypeObject *type, int kind, int fd, Poller *p) {
    Entry *e = (Entry *)_PyObject_GC_New(type);
    if (e == NULL)
        return NULL;
    e->kind = kind;
    e->fd = fd;
    e->events = 0;
    e->poller = (Poller *)Py_NewRef(p);
    return e;
}

/* Close the socket now; connection_lost(exc) soon. Idempotent. Steals nothing. */
static void st_force_close(Stream *s, PyObject *exc) {
    if (s->flags & F_CLOSED)
        return;
    s->flags |= F_CLOSING | F_CLOSED;
    PyMem_Free(s->wbuf);
    s->wbuf = NULL;
    s->woff = s->wlen = s->wcap = 0;
    if (s->fd >= 0) {
        if (s->events)
            epoll_ctl(s->poller->ep, EPOLL_CTL_DEL, s->fd, NULL);
        s->events = 0;
        close(s->fd);
        s->fd = -1;
    }
    s->poller->open--;
    PyObject *args[3] = {lost_fn, (PyObject *)s, exc ? exc : Py_None};
    PyObject *r = PyObject_Vectorcall(s->poller->call_soon, args, 3, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)s);
    Py_XDECREF(r);
    Py_DECREF(s); /* the Poller's reference (the scheduled _lost holds its own) */
}

/* A protocol callback raised (set now): report an Exception and abort the stream (0); leave a
 * BaseException set (-1). */
static int st_fatal(Stream *s, const char *message) {
    if (!is_plain_error())
        return -1;
    PyObject *exc = take_exception();
    Py_INCREF(s);
    PyObject *proto = s->protocol;
    Py_XINCREF(proto);
    report(s->poller, message, exc, (PyObject *)s, proto);
    st_force_close(s, exc);
    Py_XDECREF(proto);
    Py_DECREF(exc);
    Py_DECREF(s);
    return 0;
}

/* The socket failed (errno): close with that OSError, not reported (as asyncio and uvloop). */
static void st_os_error(Stream *s) {
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", errno, strerror(errno));
    if (exc == NULL) {
        PyErr_Clear();
        exc = Py_NewRef(Py_None);
    }
    st_force_close(s, exc);
    Py_DECREF(exc);
}

static int call_protocol0(Stream *s, const char *name, const char *message) {
    PyObject *proto = s->protocol;
    if (proto == NULL)
        return 0;
    Py_INCREF(proto);
    PyObject *r = PyObject_CallMethod(proto, name, NULL);
    Py_DECREF(proto);
    if (r == NULL)
        return st_fatal(s, message);
    Py_DECREF(r);
    return 0;
}

/* Send what is buffered; 0, or -1 with a BaseException set. */
static int st_flush(Stream *s) {
    while (s->wlen > 0) {
        ssize_t n = send(s->fd, s->wbuf + s->woff, (size_t)s->wlen, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            st_os_error(s);
            return 0;
        }
        s->woff += n;
        s->wlen -= n;
    }
    if (s->wlen == 0) {
        PyMem_Free(s->wbuf);
        s->wbuf = NULL;
        s->woff = s->wcap = 0;
    }
    if ((s->flags & F_WPAUSED) && s->wlen <= s->low) {
        s->flags &= ~F_WPAUSED;
        if (call_protocol0(s, "resume_writing", "protocol.resume_writing() failed") < 0)
            return -1;
        if (s->flags & F_CLOSED)
            return 0;
    }
    if (s->wlen == 0) {
        if (s->flags & F_CLOSING) {
            st_force_close(s, NULL);
            return 0;
        }
        if ((s->flags & (F_EOF_OUT | F_SHUT)) == F_EOF_OUT) {
            s->flags |= F_SHUT;
            shutdown(s->fd, SHUT_WR);
        }
    }
    if (st_rewatch(s) < 0)
        st_os_error(s);
    return 0;
}

static int st_read(Stream *s) {
    ssize_t n;
    do {
        n = recv(s->fd, rbuf, STREAMS_RBUF, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            st_os_error(s);
        return 0;
    }
    if (n == 0) {
        s->flags |= F_EOF_IN;
        if (st_rewatch(s) < 0) {
            st_os_error(s);
            return 0;
        }
        PyObject *proto = s->protocol;
        if (proto == NULL)
            return 0;
        Py_INCREF(proto);
        PyObject *r = PyObject_CallMethod(proto, "eof_received", NULL);
        Py_DECREF(proto);
        if (r == NULL)
            return st_fatal(s, "Fatal error: protocol.eof_received() call failed.");
        int keep = PyObject_IsTrue(r);
        Py_DECREF(r);
        if (keep < 0)
            return st_fatal(s, "Fatal error: protocol.eof_received() call failed.");
        if (!keep && !(s->flags & F_CLOSING)) {
            s->flags |= F_CLOSING;
            if (s->wlen == 0)
                st_force_close(s, NULL);
        }
        return 0;
    }
    PyObject *data = PyBytes_FromStringAndSize(rbuf, n);
    if (data == NULL)
        return -1;
    PyObject *fn = s->on_data;
    Py_INCREF(fn);
    PyObject *r = PyObject_CallOneArg(fn, data);
    Py_DECREF(fn);
    Py_DECREF(data);
    if (r == NULL)
        return st_fatal(s, "Fatal error: protocol.data_received() call failed.");
    Py_DECREF(r);
    return 0;
}

static int set_protocol(Stream *s, PyObject *protocol) {
    PyObject *fn = PyObject_GetAttrString(protocol, "data_received");
    if (fn == NULL)
        return -1;
    Py_INCREF(protocol);
    Py_XSETREF(s->protocol, protocol);
    Py_XSETREF(s->on_data, fn);
    return 0;
}

static Stream *new_stream(Poller *p, int fd, PyObject *protocol) {
    Stream *s = entry_new(&StreamType, K_STREAM, fd, p);
    if (s == NULL)
        return NULL;
    s->flags = F_READING;
    s->protocol = s->on_data = NULL;
    s->wbuf = NULL;
    s->woff = s->wlen = s->wcap = 0;
    s->high = 64 * 1024;
    s->low = 16 * 1024;
    PyObject_GC_Track(s);
    if (set_protocol(s, protocol) < 0 || st_rewatch(s) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetFromErrno(PyExc_OSError);
        s->fd = -1; /* the caller keeps the fd */
        Py_DECREF(s);
        return NULL;
    }
    p->open++;
    Py_INCREF(s); /* the Poller's, until st_force_close */
    return s;
}

/* -- Stream methods ---------------------------------------------------------------------------- */

static PyObject *st_write_bytes(Stream *s, const char *p, Py_ssize_t len) {
    if (s->flags & F_CLOSING || len == 0)
        Py_RETURN_NONE;
    if (s->flags & (F_EOF_OUT))
        return PyErr_Format(PyExc_RuntimeError, "Cannot call write() after write_eof()");
    if (s->wlen == 0) {
        while (len > 0) {
            ssize_t n = send(s->fd, p, (size_t)len, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                st_os_error(s);
                Py_RETURN_NONE;
            }
            p += n;
            len -= n;
        }
        if (len == 0)
            Py_RETURN_NONE;
    }
    if (s->woff + s->wlen + len > s->wcap) {
        if (s->woff) {
            memmove(s->wbuf, s->wbuf + s->woff, (size_t)s->wlen);
            s->woff = 0;
        }
        if (s->wlen + len > s->wcap) {
            Py_ssize_t cap = s->wcap ? s->wcap : 4096;
            while (cap < s->wlen + len)
                cap *= 2;
            char *nb = PyMem_Realloc(s->wbuf, (size_t)cap);
            if (nb == NULL)
                return PyErr_NoMemory();
            s->wbuf = nb;
            s->wcap = cap;
        }
    }
    memcpy(s->wbuf + s->woff + s->wlen, p, (size_t)len);
    s->wlen += len;
    if (st_rewatch(s) < 0) {
        st_os_error(s);
        Py_RETURN_NONE;
    }
    if (s->wlen > s->high && !(s->flags & F_WPAUSED)) {
        s->flags |= F_WPAUSED;
        if (call_protocol0(s, "pause_writing", "protocol.pause_writing() failed") < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *Stream_write(Stream *s, PyObject *data) {
    if (PyBytes_CheckExact(data))
        return st_write_bytes(s, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *r = st_write_bytes(s, view.buf, view.len);
    PyBuffer_Release(&view);
    return r;
}

static PyObject *Stream_writelines(Stream *s, PyObject *seq) {
    PyObject *empty = PyBytes_FromStringAndSize(NULL, 0);
    if (empty == NULL)
        return NULL;
    PyObject *joined = PyObject_CallMethod(empty, "join", "O", seq);
    Py_DECREF(empty);
    if (joined == NULL)
        return NULL;
    PyObject *r = Stream_write(s, joined);
    Py_DECREF(joined);
    return r;
}

static PyObject *Stream_close(Stream *s, PyObject *unused) {
    if (s->flags & F_CLOSING)
        Py_RETURN_NONE;
    s->flags |= F_CLOSING;
    if (s->wlen == 0)
        st_force_close(s, NULL);
    else if (st_rewatch(s) < 0)
        st_os_error(s);
    Py_RETURN_NONE;
}

static PyObject *Stream_abort(Stream *s, PyObject *unused) {
    st_force_close(s, NULL);
    Py_RETURN_NONE;
}

static PyObject *Stream_is_closing(Stream *s, PyObject *unused) {
    return PyBool_FromLong(s->flags & F_CLOSING);
}

static PyObject *Stream_pause_reading(Stream *s, PyObject *unused) {
    s->flags &= ~F_READING;
    if (st_rewatch(s) < 0)
        st_os_error(s);
    Py_RETURN_NONE;
}

static PyObject *Stream_resume_reading(Stream *s, PyObject *unused) {
    s->flags |= F_READING;
    if (st_rewatch(s) < 0)
        st_os_error(s);
    Py_RETURN_NONE;
}

static PyObject *Stream_is_reading(Stream *s, PyObject *unused) {
    return PyBool_FromLong((s->flags & (F_READING | F_CLOSING)) == F_READING);
}

static PyObject *Stream_write_eof(Stream *s, PyObject *unused) {
    if (s->flags & (F_CLOSING | F_EOF_OUT))
        Py_RETURN_NONE;
    s->flags |= F_EOF_OUT;
    if (s->wlen == 0) {
        s->flags |= F_SHUT;
        shutdown(s->fd, SHUT_WR);
    }
    Py_RETURN_NONE;
}

static PyObject *Stream_can_write_eof(Stream *s, PyObject *unused) { Py_RETURN_TRUE; }

static PyObject *Stream_get_write_buffer_size(Stream *s, PyObject *unused) {
    return PyLong_FromSsize_t(s->wlen);
}

static PyObject *Stream_get_write_buffer_limits(Stream *s, PyObject *unused) {
    return Py_BuildValue("(nn)", s->low, s->high);
}

static PyObject *Stream_set_write_buffer_limits(Stream *s, PyObject *args, PyObject *kw) {
    static char *names[] = {"high", "low", NULL};
    PyObject *high = Py_None, *low = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", names, &high, &low))
        return NULL;
    Py_ssize_t h, l;
    if (high == Py_None) {
        if (low == Py_None)
            h = 64 * 1024;
        else {
            l = PyLong_AsSsize_t(low);
            if (l == -1 && PyErr_Occurred())
                return NULL;
            h = 4 * l;
        }
    } else {
        h = PyLong_AsSsize_t(high);
        if (h == -1 && PyErr_Occurred())
            return NULL;
    }
    if (low == Py_None)
        l = h / 4;
    else {
        l = PyLong_AsSsize_t(low);
        if (l == -1 && PyErr_Occurred())
            return NULL;
    }
    if (!(h >= l && l >= 0))
        return PyErr_Format(PyExc_ValueError, "high (%zd) must be >= low (%zd) must be >= 0", h, l);
    s->high = h;
    s->low = l;
    Py_RETURN_NONE;
}

static PyObject *Stream_set_protocol(Stream *s, PyObject *protocol) {
    if (set_protocol(s, protocol) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Stream_get_protocol(Stream *s, PyObject *unused) {
    return Py_NewRef(s->protocol ? s->protocol : Py_None);
}

static PyObject *Stream_fileno(Stream *s, PyObject *unused) { return PyLong_FromLong(s->fd); }

static PyObject *sockaddr_object(struct sockaddr_storage *ss, socklen_t len) {
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) { /* dotted quad without inet_ntop's sprintf */
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        const unsigned char *b = (const unsigned char *)&a->sin_addr;
        char *o = host;
        for (int i = 0; i < 4; i++) {
            unsigned v = b[i];
            if (v >= 100)
                *o++ = (char)('0' + v / 100);
            if (v >= 10)
                *o++ = (char)('0' + v / 10 % 10);
            *o++ = (char)('0' + v % 10);
            if (i < 3)
                *o++ = '.';
        }
        PyObject *h = PyUnicode_FromStringAndSize(host, o - host);
        PyObject *port = h ? PyLong_FromLong(ntohs(a->sin_port)) : NULL;
        PyObject *t = port ? PyTuple_Pack(2, h, port) : NULL;
        Py_XDECREF(h);
        Py_XDECREF(port);
        return t;
    }
    if (ss->ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, ntohs(a->sin6_port), ntohl(a->sin6_flowinfo), a->sin6_scope_id);
    }
    return NULL; /* the Python hook answers */
}

static PyObject *Stream_get_extra_info(Stream *s, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *dflt = Py_None;
    if (nargs + nkw < 1 || nargs + nkw > 2 || (nargs == 0) ||
        (nkw == 1 && !_PyUnicode_EqualToASCIIString(PyTuple_GET_ITEM(kwnames, 0), "default")))
        return PyErr_Format(PyExc_TypeError, "get_extra_info(name, default=None)");
    if (nargs + nkw == 2)
        dflt = args[1];
    PyObject *nameobj = args[0];
    if (!PyUnicode_Check(nameobj))
        return PyErr_Format(PyExc_TypeError, "get_extra_info: the name is a str");
    int peer = _PyUnicode_EqualToASCIIString(nameobj, "peername");
    if ((peer || _PyUnicode_EqualToASCIIString(nameobj, "sockname")) && s->fd >= 0) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        memset(&ss, 0, sizeof ss);
        int rc = peer ? getpeername(s->fd, (struct sockaddr *)&ss, &len)
                      : getsockname(s->fd, (struct sockaddr *)&ss, &len);
        if (rc == 0) {
            PyObject *r = sockaddr_object(&ss, len);
            if (r != NULL || PyErr_Occurred())
                return r;
        }
    }
    PyObject *call[3] = {(PyObject *)s, nameobj, dflt};
    return PyObject_Vectorcall(s->poller->extra, call, 3, NULL);
}

/* Scheduled by st_force_close: the protocol's connection_lost, then the protocol let go. */
static PyObject *Stream_lost(Stream *s, PyObject *exc);

static PyObject *lost(PyObject *module, PyObject *const *args, Py_ssize_t n) {
    if (n != 2 || !PyObject_TypeCheck(args[0], &StreamType))
        return PyErr_Format(PyExc_TypeError, "lost(stream, exc)");
    return Stream_lost((Stream *)args[0], args[1]);
}

static PyMethodDef lost_def = {"lost", (PyCFunction)(void (*)(void))lost, METH_FASTCALL, NULL};

static PyObject *Stream_lost(Stream *s, PyObject *exc) {
    PyObject *proto = s->protocol;
    s->protocol = NULL;
    Py_CLEAR(s->on_data);
    if (proto == NULL)
        Py_RETURN_NONE;
    PyObject *r = PyObject_CallMethod(proto, "connection_lost", "O", exc);
    if (r == NULL && report_raised(s->poller, "protocol.connection_lost() failed", (PyObject *)s, proto) == 0)
        r = Py_NewRef(Py_None);
    Py_DECREF(proto);
    return r;
}

static int Stream_traverse(Stream *s, visitproc visit, void *arg) {
    Py_VISIT(s->poller);
    Py_VISIT(s->protocol);
    Py_VISIT(s->on_data);
    return 0;
}

static int Stream_clear(Stream *s) {
    Py_CLEAR(s->protocol);
    Py_CLEAR(s->on_data);
    return 0;
}

static void Stream_dealloc(Stream *s) {
    PyObject_GC_UnTrack(s);
    /* Never an open stream: the Poller holds those, and a failed new_stream has set fd to -1. */
    PyMem_Free(s->wbuf);
    Py_CLEAR(s->protocol);
    Py_CLEAR(s->on_data);
    Py_CLEAR(s->poller);
    PyObject_GC_Del(s);
}

static PyObject *Stream_repr(Stream *s) {
    return PyUnicode_FromFormat("<pgmux Stream fd=%d%s>", s->fd,
                                (s->flags & F_CLOSED) ? " closed" : (s->flags & F_CLOSING) ? " closing" : "");
}

static PyMethodDef Stream_methods[] = {
    {"write", (PyCFunction)Stream_write, METH_O, NULL},
    {"writelines", (PyCFunction)Stream_writelines, METH_O, NULL},
    {"close", (PyCFunction)Stream_close, METH_NOARGS, NULL},
    {"abort", (PyCFunction)Stream_abort, METH_NOARGS, NULL},
    {"is_closing", (PyCFunction)Stream_is_closing, METH_NOARGS, NULL},
    {"pause_reading", (PyCFunction)Stream_pause_reading, METH_NOARGS, NULL},
    {"resume_reading", (PyCFunction)Stream_resume_reading, METH_NOARGS, NULL},
    {"is_reading", (PyCFunction)Stream_is_reading, METH_NOARGS, NULL},
    {"write_eof", (PyCFunction)Stream_write_eof, METH_NOARGS, NULL},
    {"can_write_eof", (PyCFunction)Stream_can_write_eof, METH_NOARGS, NULL},
    {"get_write_buffer_size", (PyCFunction)Stream_get_write_buffer_size, METH_NOARGS, NULL},
    {"get_write_buffer_limits", (PyCFunction)Stream_get_write_buffer_limits, METH_NOARGS, NULL},
    {"set_write_buffer_limits", (PyCFunction)(void (*)(void))Stream_set_write_buffer_limits,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"set_protocol", (PyCFunction)Stream_set_protocol, METH_O, NULL},
    {"get_protocol", (PyCFunction)Stream_get_protocol, METH_NOARGS, NULL},
    {"get_extra_info", (PyCFunction)(void (*)(void))Stream_get_extra_info, METH_FASTCALL | METH_KEYWORDS, NULL},
    {"fileno", (PyCFunction)Stream_fileno, METH_NOARGS, NULL},
    {NULL}};

static PyTypeObject StreamType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgmux._streams.Stream",
    .tp_basicsize = sizeof(Stream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)Stream_dealloc,
    .tp_traverse = (traverseproc)Stream_traverse,
    .tp_clear = (inquiry)Stream_clear,
    .tp_repr = (reprfunc)Stream_repr,
    .tp_methods = Stream_methods,
};

/* -- Acceptor ---------------------------------------------------------------------------------- */

static int ac_accept(Acceptor *a) {
    Poller *p = a->poller;
    for (int k = 0; k < ACCEPTS_PER_EVENT && a->fd >= 0; k++) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors or memory: stop accepting for a second (as asyncio does). */
                PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", errno, strerror(errno));
                watch(p, (PyObject *)a, a->fd, &a->events, 0);
                PyObject *cb = PyObject_GetAttrString((PyObject *)a, "resume");
                PyObject *r = cb ? PyObject_CallFunction(p->call_later, "dO", 1.0, cb) : NULL;
                Py_XDECREF(cb);
                if (r == NULL)
                    PyErr_WriteUnraisable((PyObject *)a);
                Py_XDECREF(r);
                if (exc != NULL) {
                    report(p, "socket.accept() out of system resource", exc, NULL, NULL);
                    Py_DECREF(exc);
                } else
                    PyErr_Clear();
                return 0;
            }
            continue; /* ECONNABORTED, EPROTO, EINTR...: that one connection */
        }
        if (a->nodelay) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        PyObject *proto = PyObject_CallNoArgs(a->factory);
        if (proto == NULL) {
            close(fd);
            if (report_raised(p, "protocol factory failed", NULL, NULL) < 0)
                return -1;
            continue;
        }
        Stream *s = new_stream(p, fd, proto);
        if (s == NULL) {
            close(fd);
            Py_DECREF(proto);
            if (report_raised(p, "accepted connection failed", NULL, NULL) < 0)
                return -1;
            continue;
        }
        PyObject *r = PyObject_CallMethod(proto, "connection_made", "O", (PyObject *)s);
        Py_DECREF(proto);
        int rc = 0;
        if (r == NULL)
            rc = st_fatal(s, "protocol.connection_made() failed");
        Py_XDECREF(r);
        /* What the client sent is usually there already (tcp_defer_accept: accept() returns once the
         * startup packet has come): read it now rather than one event-loop turn later. */
        if (rc == 0 && (s->flags & (F_READING | F_CLOSING)) == F_READING && (s->events & EPOLLIN))
            rc = st_read(s);
        Py_DECREF(s);
        if (rc < 0)
            return -1;
    }
    return 0;
}

static PyObject *Acceptor_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    Poller *p;
    int fd, nodelay;
    PyObject *factory;
    if (!PyArg_ParseTuple(args, "O!iOp", &PollerType, &p, &fd, &factory, &nodelay))
        return NULL;
    Acceptor *a = entry_new(&AcceptorType, K_ACCEPTOR, fd, p);
    if (a == NULL)
        return NULL;
    a->nodelay = nodelay;
    a->factory = Py_NewRef(factory);
    PyObject_GC_Track(a);
    if (watch(p, (PyObject *)a, fd, &a->events, EPOLLIN) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        a->fd = -1;
        Py_DECREF(a);
        return NULL;
    }
    Py_INCREF(a); /* the Poller's, until close() */
    return (PyObject *)a;
}

static PyObject *Acceptor_close(Acceptor *a, PyObject *unused) {
    if (a->fd < 0)
        Py_RETURN_NONE;
    if (a->events)
        epoll_ctl(a->poller->ep, EPOLL_CTL_DEL, a->fd, NULL);
    a->events = 0;
    a->fd = -1; /* the listening socket is its owner's to close */
    Py_DECREF(a);
    Py_RETURN_NONE;
}

static PyObject *Acceptor_resume(Acceptor *a, PyObject *unused) {
    if (a->fd >= 0 && watch(a->poller, (PyObject *)a, a->fd, &a->events, EPOLLIN) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static int Acceptor_traverse(Acceptor *a, visitproc visit, void *arg) {
    Py_VISIT(a->poller);
    Py_VISIT(a->factory);
    return 0;
}

static int Acceptor_clear(Acceptor *a) {
    Py_CLEAR(a->factory);
    return 0;
}

static void Acceptor_dealloc(Acceptor *a) {
    PyObject_GC_UnTrack(a);
    Py_CLEAR(a->factory);
    Py_CLEAR(a->poller);
    PyObject_GC_Del(a);
}

static PyMethodDef Acceptor_methods[] = {
    {"close", (PyCFunction)Acceptor_close, METH_NOARGS, NULL},
    {"resume", (PyCFunction)Acceptor_resume, METH_NOARGS, NULL},
    {NULL}};

static PyTypeObject AcceptorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgmux._streams.Acceptor",
    .tp_basicsize = sizeof(Acceptor),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Acceptor_new,
    .tp_dealloc = (destructor)Acceptor_dealloc,
    .tp_traverse = (traverseproc)Acceptor_traverse,
    .tp_clear = (inquiry)Acceptor_clear,
    .tp_methods = Acceptor_methods,
};

/* -- Poller ------------------------------------------------------------------------------------ */

static PyObject *Poller_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    PyObject *loop, *extra;
    if (!PyArg_ParseTuple(args, "OO", &loop, &extra))
        return NULL;
    if (rbuf == NULL && (rbuf = PyMem_RawMalloc(STREAMS_RBUF)) == NULL)
        return PyErr_NoMemory();
    Poller *p = (Poller *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    p->ep = -1;
    p->loop = Py_NewRef(loop);
    p->extra = Py_NewRef(extra);
    p->call_soon = PyObject_GetAttrString(loop, "call_soon");
    p->call_later = p->call_soon ? PyObject_GetAttrString(loop, "call_later") : NULL;
    p->exc_handler = p->call_later ? PyObject_GetAttrString(loop, "call_exception_handler") : NULL;
    if (p->exc_handler == NULL) {
        Py_DECREF(p);
        return NULL;
    }
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    if (p->ep < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(p);
        return NULL;
    }
    return (PyObject *)p;
}

static PyObject *Poller_poll(Poller *p, PyObject *unused) {
    struct epoll_event evs[BATCH];
    int n;
    do {
        n = epoll_wait(p->ep, evs, BATCH, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    for (int i = 0; i < n; i++)
        Py_INCREF((PyObject *)evs[i].data.ptr);
    int failed = 0;
    for (int i = 0; i < n && !failed; i++) {
        Entry *e = evs[i].data.ptr;
        uint32_t ev = evs[i].events;
        if (e->kind == K_ACCEPTOR) {
            if (e->fd >= 0 && ac_accept((Acceptor *)e) < 0)
                failed = 1;
            continue;
        }
        Stream *s = (Stream *)e;
        if ((ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) && (s->events & EPOLLIN) && !(s->flags & F_CLOSING)) {
            if (st_read(s) < 0) {
                failed = 1;
                continue;
            }
        }
        if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s->wlen > 0 && !(s->flags & F_CLOSED)) {
            if (st_flush(s) < 0)
                failed = 1;
        }
    }
    for (int i = 0; i < n; i++)
        Py_DECREF((PyObject *)evs[i].data.ptr);
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Poller_stream(Poller *p, PyObject *args) {
    int fd;
    PyObject *protocol;
    if (!PyArg_ParseTuple(args, "iO", &fd, &protocol))
        return NULL;
    Stream *s = new_stream(p, fd, protocol);
    if (s == NULL)
        return NULL;
    return (PyObject *)s;
}

static PyObject *Poller_fileno(Poller *p, PyObject *unused) { return PyLong_FromLong(p->ep); }

static PyObject *Poller_get_open(Poller *p, void *unused) { return PyLong_FromSsize_t(p->open); }

static PyObject *Poller_get_loop(Poller *p, void *unused) { return Py_NewRef(p->loop); }

static void Poller_dealloc(Poller *p) {
    if (p->ep >= 0)
        close(p->ep);
    Py_CLEAR(p->loop);
    Py_CLEAR(p->extra);
    Py_CLEAR(p->call_soon);
    Py_CLEAR(p->call_later);
    Py_CLEAR(p->exc_handler);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyMethodDef Poller_methods[] = {
    {"poll", (PyCFunction)Poller_poll, METH_NOARGS, NULL},
    {"stream", (PyCFunction)Poller_stream, METH_VARARGS, NULL},
    {"fileno", (PyCFunction)Poller_fileno, METH_NOARGS, NULL},
    {NULL}};

static PyGetSetDef Poller_getset[] = {
    {"open", (getter)Poller_get_open, NULL, NULL, NULL},
    {"loop", (getter)Poller_get_loop, NULL, NULL, NULL},
    {NULL}};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pgmux._streams.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Poller_new,
    .tp_dealloc = (destructor)Poller_dealloc,
    .tp_methods = Poller_methods,
    .tp_getset = Poller_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "pgmux._streams",
                                    "Client and server sockets read and written in C (see the source).", -1, NULL};

PyMODINIT_FUNC PyInit__streams(void) {
    if (PyType_Ready(&StreamType) < 0 || PyType_Ready(&AcceptorType) < 0 || PyType_Ready(&PollerType) < 0)
        return NULL;
    if (lost_fn == NULL && (lost_fn = PyCFunction_New(&lost_def, NULL)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Stream", (PyObject *)&StreamType) < 0 ||
        PyModule_AddObjectRef(m, "Acceptor", (PyObject *)&AcceptorType) < 0 ||
        PyModule_AddObjectRef(m, "Poller", (PyObject *)&PollerType) < 0 ||
        PyModule_AddIntConstant(m, "RBUF", STREAMS_RBUF) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

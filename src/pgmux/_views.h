/*
 * The bytes argument of pgmux's C modules (_speedups.c, _tlspump.c).
 *
 * get_view: a read's bytes without the buffer protocol when it is a bytes object (the usual case: what
 * the event loop read), else through it (bytearray, memoryview). put_view releases only what get_view
 * exported.
 */
#ifndef PGMUX_VIEWS_H
#define PGMUX_VIEWS_H

#include <Python.h>

static inline int get_view(PyObject *o, Py_buffer *v)
{
    if (PyBytes_CheckExact(o)) {
        v->buf = PyBytes_AS_STRING(o);
        v->len = PyBytes_GET_SIZE(o);
        v->obj = NULL;
        return 0;
    }
    return PyObject_GetBuffer(o, v, PyBUF_SIMPLE);
}

static inline void put_view(Py_buffer *v)
{
    if (v->obj != NULL)
        PyBuffer_Release(v);
}

#endif

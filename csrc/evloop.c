/* aiolowlat._native._evloop: the loop's per-event path in C (CPython C API).
 *
 * cffi is fine for set-up calls, but per event it cost a Python frame per
 * completion, a GIL release per call and a bound method per transport. Here:
 *   Dispatcher.run(ns)  waits once (al_wait; the GIL is held when ns == 0) and
 *                       hands each completion to its owner: a stream's bytes go
 *                       straight to protocol.data_received, the rest to the
 *                       transport's _on_* method or the op's callback;
 *   Writer(data)        a transport's write(): bytes go to al_conn_send without
 *                       a Python frame; anything unusual falls back to Python;
 *   run_ready(deque)    the loop's ready queue: each handle's callback run in
 *                       its context, errors to Handle._run's own handler.
 * The C core (csrc/uring.c, cffi module _uring) is reached through function
 * pointers handed over by Python, so both modules share one al_loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>

#include "uring.h"

enum { MAX_EVENTS = 1024, CQE_F_MORE = 1 << 1 };

typedef int (*wait_fn)(al_loop *, int64_t, uint64_t *, int64_t *, uint64_t *, int64_t *, int);
typedef int64_t (*send_fn)(al_loop *, al_conn *, const char *, size_t);

static PyObject *s_fast_proto, *s_data_received, *s_on_data, *s_on_dgram, *s_on_eof,
    *s_on_error, *s_on_drain, *s_on_released, *s_fatal_error, *s_on_error_attr,
    *s_message, *s_exception, *s_write, *s_after_send, *s_cancelled,
    *s_run;
static PyObject *msg_data_failed, *msg_completion;

/* ---- errors ---- */

static int is_fatal_exit(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

/* The pending exception, normalized, with its traceback attached; clears it. */
static PyObject *take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb && value)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* ---- Dispatcher ---- */

typedef struct {
    PyObject_HEAD
    al_loop *ring;
    wait_fn wait;
    unsigned char *pool;
    PyObject *owner; /* the Ring: its on_error reports a failed callback */
    PyObject *conns, *ops;
    uint64_t toks[MAX_EVENTS], aux[MAX_EVENTS];
    int64_t res[MAX_EVENTS], stamps[MAX_EVENTS];
} Dispatcher;

static int Dispatcher_init(Dispatcher *self, PyObject *args, PyObject *kw)
{
    unsigned long long ring, wait, pool;
    PyObject *owner, *conns, *ops;
    if (!PyArg_ParseTuple(args, "KKKOO!O!", &ring, &wait, &pool, &owner, &PyDict_Type, &conns,
                          &PyDict_Type, &ops))
        return -1;
    self->ring = (al_loop *)(uintptr_t)ring;
    self->wait = (wait_fn)(uintptr_t)wait;
    self->pool = (unsigned char *)(uintptr_t)pool;
    Py_XSETREF(self->owner, Py_NewRef(owner));
    Py_XSETREF(self->conns, Py_NewRef(conns));
    Py_XSETREF(self->ops, Py_NewRef(ops));
    return 0;
}

static int Dispatcher_traverse(Dispatcher *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    Py_VISIT(self->conns);
    Py_VISIT(self->ops);
    return 0;
}

static int Dispatcher_clear(Dispatcher *self)
{
    Py_CLEAR(self->owner);
    Py_CLEAR(self->conns);
    Py_CLEAR(self->ops);
    return 0;
}

static void Dispatcher_dealloc(Dispatcher *self)
{
    PyObject_GC_UnTrack(self);
    Dispatcher_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A callback failed (not SystemExit/KeyboardInterrupt): owner.on_error({...}),
 * as the Python dispatcher did, so one bad callback does not lose the batch. */
static int report(Dispatcher *self, PyObject *message)
{
    PyObject *exc = take_exception();
    PyObject *ctx = PyDict_New();
    PyObject *r = NULL;
    if (ctx && PyDict_SetItem(ctx, s_message, message) == 0 &&
        PyDict_SetItem(ctx, s_exception, exc ? exc : Py_None) == 0) {
        PyObject *handler = PyObject_GetAttr(self->owner, s_on_error_attr);
        if (handler) {
            r = PyObject_CallOneArg(handler, ctx);
            Py_DECREF(handler);
        }
    }
    Py_XDECREF(exc);
    Py_XDECREF(ctx);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Bytes for a stream: protocol.data_received(bytes) when the transport allows
 * it (_fast_proto set: reading, nothing stashed, not a BufferedProtocol). */
static PyObject *deliver_data(Dispatcher *self, PyObject *conn, int64_t n, uint64_t off)
{
    PyObject *proto = PyObject_GetAttr(conn, s_fast_proto);
    if (!proto)
        return NULL;
    if (proto == Py_None) {
        Py_DECREF(proto);
        PyObject *args[] = {conn, PyLong_FromLongLong(n), PyLong_FromUnsignedLongLong(off)};
        PyObject *r = NULL;
        if (args[1] && args[2])
            r = PyObject_VectorcallMethod(s_on_data, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        Py_XDECREF(args[1]);
        Py_XDECREF(args[2]);
        return r;
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)self->pool + off, (Py_ssize_t)n);
    PyObject *r = NULL;
    if (data) {
        PyObject *args[] = {proto, data};
        r = PyObject_VectorcallMethod(s_data_received, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      NULL);
        Py_DECREF(data);
    }
    Py_DECREF(proto);
    if (r || is_fatal_exit())
        return r;
    /* As the transport's _on_data: the protocol failed, the connection goes. */
    PyObject *exc = take_exception();
    PyObject *fargs[] = {conn, exc ? exc : Py_None, msg_data_failed};
    r = PyObject_VectorcallMethod(s_fatal_error, fargs, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(exc);
    return r;
}

static PyObject *call_method(PyObject *obj, PyObject *name, PyObject *a, PyObject *b,
                             PyObject *c)
{
    PyObject *args[] = {obj, a, b, c};
    size_t n = 1 + (a != NULL) + (b != NULL) + (c != NULL);
    return PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static PyObject *conn_event(Dispatcher *self, PyObject *tok, PyObject *conn, int kind, int i)
{
    int64_t r = self->res[i];
    PyObject *a = NULL, *b = NULL, *c = NULL, *out = NULL;
    switch (kind) {
    case AL_EV_DATA:
        return deliver_data(self, conn, r, self->aux[i]);
    case AL_EV_DGRAM:
        a = PyLong_FromLongLong(r);
        b = PyLong_FromUnsignedLongLong(self->aux[i]);
        c = PyLong_FromLongLong(self->stamps[i]);
        if (a && b && c)
            out = call_method(conn, s_on_dgram, a, b, c);
        break;
    case AL_EV_EOF:
        return call_method(conn, s_on_eof, NULL, NULL, NULL);
    case AL_EV_ERR:
        a = PyLong_FromLongLong(r);
        if (a)
            out = call_method(conn, s_on_error, a, NULL, NULL);
        break;
    case AL_EV_DRAIN:
        return call_method(conn, s_on_drain, NULL, NULL, NULL);
    case AL_EV_CLOSED:
        if (PyDict_DelItem(self->conns, tok) < 0)
            return NULL;
        return call_method(conn, s_on_released, NULL, NULL, NULL);
    default:
        Py_RETURN_NONE;
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    return out;
}

static PyObject *op_event(Dispatcher *self, PyObject *tok, int i)
{
    uint64_t flags = self->aux[i];
    PyObject *cb = PyDict_GetItemWithError(self->ops, tok);
    if (!cb) {
        if (!PyErr_Occurred())
            PyErr_SetObject(PyExc_KeyError, tok);
        return NULL;
    }
    Py_INCREF(cb);
    if (!(flags & CQE_F_MORE) && PyDict_DelItem(self->ops, tok) < 0) {
        Py_DECREF(cb);
        return NULL;
    }
    PyObject *args[] = {NULL, PyLong_FromLongLong(self->res[i]), PyLong_FromUnsignedLongLong(flags)};
    PyObject *out = NULL;
    if (args[1] && args[2])
        out = PyObject_Vectorcall(cb, args + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(args[1]);
    Py_XDECREF(args[2]);
    Py_DECREF(cb);
    return out;
}

/* One event; -1 only when the exception must propagate (SystemExit & co.). */
static int dispatch_one(Dispatcher *self, int i)
{
    uint64_t t = self->toks[i];
    int kind = (int)(t & 7);
    PyObject *tok = PyLong_FromUnsignedLongLong(t >> 3);
    PyObject *out = NULL;
    if (!tok)
        return -1;
    if (kind == AL_EV_OP) {
        out = op_event(self, tok, i);
    } else {
        PyObject *conn = PyDict_GetItemWithError(self->conns, tok);
        if (conn) {
            Py_INCREF(conn); /* a callback may drop it from conns */
            out = conn_event(self, tok, conn, kind, i);
            Py_DECREF(conn);
        } else if (!PyErr_Occurred()) {
            out = Py_NewRef(Py_None); /* closed by a callback earlier in this batch: stale */
        }
    }
    Py_DECREF(tok);
    if (out) {
        Py_DECREF(out);
        return 0;
    }
    if (is_fatal_exit())
        return -1;
    return report(self, msg_completion);
}

/* run(timeout_ns) -> events handled, or -errno from the wait. */
static PyObject *Dispatcher_run(Dispatcher *self, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    if (!self->ring) {
        PyErr_SetString(PyExc_RuntimeError, "the event loop's ring is closed");
        return NULL;
    }
    int n;
    if (ns == 0) { /* no wait: not worth giving the GIL away */
        n = self->wait(self->ring, 0, self->toks, self->res, self->aux, self->stamps, MAX_EVENTS);
    } else {
        Py_BEGIN_ALLOW_THREADS
        n = self->wait(self->ring, ns, self->toks, self->res, self->aux, self->stamps, MAX_EVENTS);
        Py_END_ALLOW_THREADS
    }
    for (int i = 0; i < n; i++)
        if (dispatch_one(self, i) < 0)
            return NULL;
    return PyLong_FromLong(n);
}

static PyObject *Dispatcher_close(Dispatcher *self, PyObject *unused)
{
    self->ring = NULL;
    Py_RETURN_NONE;
}

static PyMethodDef Dispatcher_methods[] = {
    {"run", (PyCFunction)Dispatcher_run, METH_O, "Wait up to ns (-1: forever) and dispatch."},
    {"close", (PyCFunction)Dispatcher_close, METH_NOARGS, "Forget the ring (it is freed)."},
    {NULL},
};

static PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.Dispatcher",
    .tp_doc = "Dispatcher(ring, al_wait, pool, owner, conns, ops): the loop's wait and dispatch.",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatcher_init,
    .tp_dealloc = (destructor)Dispatcher_dealloc,
    .tp_traverse = (traverseproc)Dispatcher_traverse,
    .tp_clear = (inquiry)Dispatcher_clear,
    .tp_methods = Dispatcher_methods,
};

/* ---- Writer: a stream transport's write() ---- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    al_loop *ring;
    unsigned long long conn; /* al_conn *, 0 while writes must take the Python path */
    long long high_water;
    send_fn send;
    PyObject *transport; /* a weak reference: the transport holds us */
} Writer;

static PyObject *writer_slow(Writer *self, PyObject *name, PyObject *arg)
{
    PyObject *t = PyWeakref_GetObject(self->transport);
    if (!t)
        return NULL;
    if (t == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is gone");
        return NULL;
    }
    Py_INCREF(t);
    PyObject *r = PyObject_CallMethodOneArg(t, name, arg);
    Py_DECREF(t);
    return r;
}

static PyObject *Writer_vectorcall(Writer *self, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames && PyTuple_GET_SIZE(kwnames))) {
        PyErr_SetString(PyExc_TypeError, "write() takes exactly one argument (data)");
        return NULL;
    }
    PyObject *data = args[0];
    if (!self->conn || !PyBytes_CheckExact(data))
        return writer_slow(self, s_write, data);
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len == 0)
        Py_RETURN_NONE;
    int64_t pending = self->send(self->ring, (al_conn *)(uintptr_t)self->conn,
                                 PyBytes_AS_STRING(data), (size_t)len);
    if (pending >= 0 && pending <= self->high_water)
        Py_RETURN_NONE;
    PyObject *p = PyLong_FromLongLong(pending);
    if (!p)
        return NULL;
    PyObject *r = writer_slow(self, s_after_send, p);
    Py_DECREF(p);
    return r;
}

static int Writer_init(Writer *self, PyObject *args, PyObject *kw)
{
    PyObject *transport;
    unsigned long long ring, send;
    if (!PyArg_ParseTuple(args, "OKK", &transport, &ring, &send))
        return -1;
    PyObject *ref = PyWeakref_NewRef(transport, NULL);
    if (!ref)
        return -1;
    Py_XSETREF(self->transport, ref);
    self->ring = (al_loop *)(uintptr_t)ring;
    self->send = (send_fn)(uintptr_t)send;
    self->conn = 0;
    self->high_water = 0;
    self->vectorcall = (vectorcallfunc)Writer_vectorcall;
    return 0;
}

static void Writer_dealloc(Writer *self)
{
    Py_CLEAR(self->transport);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Writer_members[] = {
    {"conn", T_ULONGLONG, offsetof(Writer, conn), 0, "al_conn address; 0: Python path"},
    {"high_water", T_LONGLONG, offsetof(Writer, high_water), 0, "pending bytes that pause"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(Writer, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.Writer",
    .tp_doc = "Writer(transport, ring, al_conn_send): the transport's write() in C.",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(Writer, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_members = Writer_members,
};

/* ---- run_ready: the loop's ready queue ---- */

/* run_ready(ready, n): pop n handles off the deque and run the live ones, as
 * asyncio.Handle._run does (an exception goes to handle._run's own handling by
 * calling handle_error(handle, exc)). */
static PyObject *run_ready(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run_ready(ready, n)");
        return NULL;
    }
    PyObject *ready = args[0];
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    PyObject *popleft = PyObject_GetAttrString(ready, "popleft");
    if (!popleft)
        return NULL;
    PyObject *ret = NULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *h = PyObject_CallNoArgs(popleft);
        if (!h)
            goto done;
        PyObject *cancelled = PyObject_GetAttr(h, s_cancelled);
        if (!cancelled) {
            Py_DECREF(h);
            goto done;
        }
        int skip = PyObject_IsTrue(cancelled);
        Py_DECREF(cancelled);
        if (skip) {
            Py_DECREF(h);
            if (skip < 0)
                goto done;
            continue;
        }
        PyObject *r = PyObject_CallMethodNoArgs(h, s_run);
        Py_DECREF(h);
        if (!r)
            goto done;
        Py_DECREF(r);
    }
    ret = Py_NewRef(Py_None);
done:
    Py_DECREF(popleft);
    return ret;
}

static PyMethodDef module_methods[] = {
    {"run_ready", (PyCFunction)(void (*)(void))run_ready, METH_FASTCALL,
     "run_ready(ready, n): run n handles off the ready deque."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aiolowlat._native._evloop",
    "The io_uring loop's per-event path in C.", -1, module_methods,
};

#define INTERN(var, text)                           \
    if (!(var = PyUnicode_InternFromString(text))) \
        return NULL

PyMODINIT_FUNC PyInit__evloop(void)
{
    INTERN(s_fast_proto, "_fast_proto");
    INTERN(s_data_received, "data_received");
    INTERN(s_on_data, "_on_data");
    INTERN(s_on_dgram, "_on_dgram");
    INTERN(s_on_eof, "_on_eof");
    INTERN(s_on_error, "_on_error");
    INTERN(s_on_drain, "_on_drain");
    INTERN(s_on_released, "_on_released");
    INTERN(s_fatal_error, "_fatal_error");
    INTERN(s_on_error_attr, "on_error");
    INTERN(s_message, "message");
    INTERN(s_exception, "exception");
    INTERN(s_write, "_write");
    INTERN(s_after_send, "_after_send");
    INTERN(s_cancelled, "_cancelled");
    INTERN(s_run, "_run");
    INTERN(msg_data_failed, "Fatal error: protocol.data_received() call failed.");
    INTERN(msg_completion, "Exception in io_uring completion handler");
    if (PyType_Ready(&DispatcherType) < 0 || PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Dispatcher", (PyObject *)&DispatcherType) < 0 ||
        PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

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
 *   DgramReceiver       a datagram transport's receive state: a datagram goes
 *                       straight to protocol.datagram_received(data, addr);
 *   DgramSender(d, a)   a datagram transport's sendto(): bytes to a cached
 *                       address go to al_dgram_send without a Python frame;
 *   LoopCore.run_once() asyncio's _run_once: timers, the wait (above), then
 *                       the ready handles, each callback run in its context
 *                       without Handle._run's Python frame.
 * The C core (csrc/uring.c, cffi module _uring) is reached through function
 * pointers handed over by Python, so both modules share one al_loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

#include "uring.h"

enum { MAX_EVENTS = 1024, CQE_F_MORE = 1 << 1 };

typedef int (*wait_fn)(al_loop *, int64_t, uint64_t *, int64_t *, uint64_t *, int64_t *, int);
typedef int64_t (*send_fn)(al_loop *, al_conn *, const char *, size_t);
typedef int64_t (*dsend_fn)(al_loop *, al_conn *, const char *, size_t, const void *, unsigned);

static PyObject *s_fast_proto, *s_data_received, *s_on_data, *s_on_dgram, *s_on_eof,
    *s_on_error, *s_on_drain, *s_on_released, *s_fatal_error, *s_on_error_attr,
    *s_message, *s_exception, *s_write, *s_after_send, *s_cancelled, *s_run, *s_when,
    *s_stopping, *s_debug, *s_scheduled, *s_append, *s_popleft, *s_drop_cancelled,
    *s_flush_batches, *s_process_events, *s_run_ready_debug, *s_callback, *s_args, *s_context,
    *s_handle_run, *s_datagram_received, *s_dgram_failed, *s_peer, *s_sendto_py,
    *s_after_sendto, *s_closed;
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
    int busy; /* the ring busy-polls: its waits spin in user space */
    uint64_t toks[MAX_EVENTS], aux[MAX_EVENTS];
    int64_t res[MAX_EVENTS], stamps[MAX_EVENTS];
} Dispatcher;

static int Dispatcher_init(Dispatcher *self, PyObject *args, PyObject *kw)
{
    unsigned long long ring, wait, pool;
    PyObject *owner, *conns, *ops;
    int busy = 0;
    if (!PyArg_ParseTuple(args, "KKKOO!O!|p", &ring, &wait, &pool, &owner, &PyDict_Type, &conns,
                          &PyDict_Type, &ops, &busy))
        return -1;
    self->busy = busy;
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

/* ---- DgramReceiver: what the dispatcher needs to hand a datagram to its protocol ---- */

enum { NAME_MAX_LEN = AL_DGRAM_NAME_SPACE };

typedef struct {
    PyObject_HEAD
    PyObject *protocol; /* the transport's protocol (set by Python) */
    PyObject *batch;    /* or, for a datagrams_received protocol, the transport's batch list */
    PyObject *batching; /* the ring's list of transports with a batch to flush */
    PyObject *peers;    /* the transport's cache: raw sockaddr bytes -> address */
    unsigned name_gap;  /* bytes from a sender's sockaddr to its payload */
    /* The last sender: a feed or a ping-pong has one, so its address is reused
     * without building a bytes key per datagram. */
    unsigned last_len;
    unsigned char last_name[NAME_MAX_LEN];
    PyObject *last_addr;
} DgramReceiver;

static int DgramReceiver_init(DgramReceiver *self, PyObject *args, PyObject *kw)
{
    PyObject *peers;
    unsigned gap;
    if (!PyArg_ParseTuple(args, "O!I", &PyDict_Type, &peers, &gap))
        return -1;
    Py_XSETREF(self->peers, Py_NewRef(peers));
    Py_XSETREF(self->protocol, Py_NewRef(Py_None));
    Py_XSETREF(self->batch, Py_NewRef(Py_None));
    Py_XSETREF(self->batching, Py_NewRef(Py_None));
    Py_CLEAR(self->last_addr);
    self->name_gap = gap;
    self->last_len = 0;
    return 0;
}

static int DgramReceiver_traverse(DgramReceiver *self, visitproc visit, void *arg)
{
    Py_VISIT(self->protocol);
    Py_VISIT(self->batch);
    Py_VISIT(self->batching);
    Py_VISIT(self->peers);
    Py_VISIT(self->last_addr);
    return 0;
}

static int DgramReceiver_clear(DgramReceiver *self)
{
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->batching);
    Py_CLEAR(self->peers);
    Py_CLEAR(self->last_addr);
    return 0;
}

static void DgramReceiver_dealloc(DgramReceiver *self)
{
    PyObject_GC_UnTrack(self);
    DgramReceiver_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef DgramReceiver_members[] = {
    {"protocol", T_OBJECT, offsetof(DgramReceiver, protocol), 0, "the protocol to call"},
    {"batch", T_OBJECT, offsetof(DgramReceiver, batch), 0, "the batch list to append to"},
    {"batching", T_OBJECT, offsetof(DgramReceiver, batching), 0, "the ring's batching list"},
    {NULL},
};

static PyTypeObject DgramReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.DgramReceiver",
    .tp_doc = "DgramReceiver(peers, name_gap): lets the dispatcher call datagram_received.",
    .tp_basicsize = sizeof(DgramReceiver),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DgramReceiver_init,
    .tp_dealloc = (destructor)DgramReceiver_dealloc,
    .tp_traverse = (traverseproc)DgramReceiver_traverse,
    .tp_clear = (inquiry)DgramReceiver_clear,
    .tp_members = DgramReceiver_members,
};

/* A batch item, as the Python paths build it: (data, addr, rx_ns); addr borrowed. */
static PyObject *dgram_item(const char *p, Py_ssize_t n, PyObject *addr, int64_t rx_ns)
{
    PyObject *data = PyBytes_FromStringAndSize(p, n);
    PyObject *ns = data ? PyLong_FromLongLong(rx_ns) : NULL;
    PyObject *item = ns ? PyTuple_Pack(3, data, addr, ns) : NULL;
    Py_XDECREF(data);
    Py_XDECREF(ns);
    return item;
}

/* The sender's address (a new reference): the last sender's, else the peers
 * cache's, else the transport's _peer(raw), which decodes and caches it. */
static PyObject *sender_address(DgramReceiver *rcv, PyObject *conn, const unsigned char *name,
                                unsigned len)
{
    if (rcv->last_addr && len == rcv->last_len && memcmp(name, rcv->last_name, len) == 0)
        return Py_NewRef(rcv->last_addr);
    PyObject *raw = PyBytes_FromStringAndSize((const char *)name, len);
    if (!raw)
        return NULL;
    PyObject *addr = PyDict_GetItemWithError(rcv->peers, raw);
    if (addr)
        Py_INCREF(addr);
    else if (!PyErr_Occurred())
        addr = PyObject_CallMethodOneArg(conn, s_peer, raw);
    Py_DECREF(raw);
    if (addr) {
        memcpy(rcv->last_name, name, len);
        rcv->last_len = len;
        Py_XSETREF(rcv->last_addr, Py_NewRef(addr));
    }
    return addr;
}

/* A datagram: protocol.datagram_received(data, addr) when the transport allows
 * it (_fast_proto is its DgramReceiver: reading, nothing stashed, no batch
 * protocol), else the transport's _on_dgram. An exception of the protocol goes
 * to the transport's _dgram_failed (the loop's exception handler); the endpoint
 * stays open, as call_protocol does. */
static PyObject *deliver_dgram(Dispatcher *self, PyObject *conn, int64_t n, uint64_t aux,
                               int64_t stamp)
{
    PyObject *fast = PyObject_GetAttr(conn, s_fast_proto);
    if (!fast)
        return NULL;
    DgramReceiver *rx = Py_IS_TYPE(fast, &DgramReceiverType) ? (DgramReceiver *)fast : NULL;
    int batched = rx && rx->batch && PyList_CheckExact(rx->batch) && rx->batching &&
                  PyList_CheckExact(rx->batching);
    if (!rx || (!batched && (!rx->protocol || rx->protocol == Py_None))) {
        Py_DECREF(fast);
        PyObject *args[] = {conn, PyLong_FromLongLong(n), PyLong_FromUnsignedLongLong(aux),
                            PyLong_FromLongLong(stamp)};
        PyObject *r = NULL;
        if (args[1] && args[2] && args[3])
            r = PyObject_VectorcallMethod(s_on_dgram, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          NULL);
        Py_XDECREF(args[1]);
        Py_XDECREF(args[2]);
        Py_XDECREF(args[3]);
        return r;
    }
    DgramReceiver *rcv = rx;
    uint64_t off = aux & 0xFFFFFFFFFFull;
    unsigned namelen = (unsigned)(aux >> 40);
    if (batched) { /* as _on_dgram: (data, addr, rx_ns) onto the batch, flushed once per wait */
        PyObject *addr = sender_address(rcv, conn, self->pool + off - rcv->name_gap,
                                        namelen < NAME_MAX_LEN ? namelen : NAME_MAX_LEN);
        PyObject *item = addr ? dgram_item((const char *)self->pool + off, n, addr, stamp) : NULL;
        Py_XDECREF(addr);
        PyObject *batch = Py_NewRef(rcv->batch);
        int err = !item || (PyList_GET_SIZE(batch) == 0 && PyList_Append(rcv->batching, conn)) ||
                  PyList_Append(batch, item);
        Py_DECREF(batch);
        Py_XDECREF(item);
        Py_DECREF(fast);
        return err ? NULL : Py_NewRef(Py_None);
    }
    PyObject *proto = Py_NewRef(rcv->protocol);
    PyObject *addr = sender_address(rcv, conn, self->pool + off - rcv->name_gap,
                                    namelen < NAME_MAX_LEN ? namelen : NAME_MAX_LEN);
    PyObject *data = addr ? PyBytes_FromStringAndSize((const char *)self->pool + off, n) : NULL;
    PyObject *r = NULL;
    if (data) {
        PyObject *args[] = {proto, data, addr};
        r = PyObject_VectorcallMethod(s_datagram_received, args,
                                      3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (!r && !is_fatal_exit()) {
            PyObject *exc = take_exception();
            PyObject *fargs[] = {conn, proto, exc ? exc : Py_None};
            r = PyObject_VectorcallMethod(s_dgram_failed, fargs,
                                          3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_XDECREF(exc);
        }
    }
    Py_XDECREF(data);
    Py_XDECREF(addr);
    Py_DECREF(proto);
    Py_DECREF(fast);
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
        return deliver_dgram(self, conn, r, self->aux[i], self->stamps[i]);
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

/* Wait up to ns (<0: forever) and dispatch: the count of events, -errno from
 * the wait, or PY_ERROR with a Python exception set. */
enum { PY_ERROR = INT_MIN, GIL_HOLD_NS = 50000 };

static double monotonic(void);

static int dispatch_all(Dispatcher *self, int n)
{
    for (int i = 0; i < n; i++)
        if (dispatch_one(self, i) < 0)
            return PY_ERROR;
    return n;
}

static int dispatcher_wait(Dispatcher *self, int64_t ns)
{
    if (!self->ring) {
        PyErr_SetString(PyExc_RuntimeError, "the event loop's ring is closed");
        return PY_ERROR;
    }
    int n;
    if (ns == 0) { /* no wait: not worth giving the GIL away */
        n = self->wait(self->ring, 0, self->toks, self->res, self->aux, self->stamps, MAX_EVENTS);
        return dispatch_all(self, n);
    }
    if (self->busy) {
        /* A busy-polling ring spins up to GIL_HOLD_NS holding the GIL, then gives it away
         * for the rest of the wait: a reply within a round trip costs no GIL hand-over
         * (release and take, ~0.1 us a wait here), and no thread waits on us longer than
         * a slice far under CPython's own switch interval (5 ms). */
        int64_t held = ns > 0 && ns < GIL_HOLD_NS ? ns : GIL_HOLD_NS;
        double until = monotonic() + held / 1e9;
        n = self->wait(self->ring, held, self->toks, self->res, self->aux, self->stamps, MAX_EVENTS);
        if (n != 0 || held == ns || monotonic() < until)
            return dispatch_all(self, n); /* events, an error, or woken: back to Python */
        if (ns > 0)
            ns -= held;
    }
    Py_BEGIN_ALLOW_THREADS
    n = self->wait(self->ring, ns, self->toks, self->res, self->aux, self->stamps, MAX_EVENTS);
    Py_END_ALLOW_THREADS
    return dispatch_all(self, n);
}

/* run(timeout_ns) -> events handled, or -errno from the wait. */
static PyObject *Dispatcher_run(Dispatcher *self, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    int n = dispatcher_wait(self, ns);
    return n == PY_ERROR ? NULL : PyLong_FromLong(n);
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

/* ---- DgramSender: a datagram transport's sendto() ---- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    al_loop *ring;
    unsigned long long conn; /* al_conn *, 0 while sends must take the Python path */
    long long high_water;
    dsend_fn send;
    PyObject *address;   /* the connected peer, or None */
    PyObject *packed;    /* the transport's cache: address -> C sockaddr bytes */
    PyObject *transport; /* a weak reference: the transport holds us */
} DgramSender;

/* transport._sendto(*args, **kw): type and address errors, closed endpoints,
 * addresses not packed yet -- whatever the C path does not take. */
static PyObject *sender_slow(DgramSender *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *t = PyWeakref_GetObject(self->transport);
    if (!t)
        return NULL;
    if (t == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is gone");
        return NULL;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[5];
    PyObject **vec = nargs + nkw + 1 <= 5 ? small
                                          : PyMem_Malloc((nargs + nkw + 1) * sizeof(PyObject *));
    if (!vec)
        return PyErr_NoMemory();
    vec[0] = t;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        vec[i + 1] = args[i];
    Py_INCREF(t);
    PyObject *r = PyObject_VectorcallMethod(s_sendto_py, vec, (nargs + 1), kwnames);
    Py_DECREF(t);
    if (vec != small)
        PyMem_Free(vec);
    return r;
}

/* The sockaddr for addr, borrowed from the cache: 1 found (NULL name: the
 * connected peer or none), 0 not there (Python packs it or raises). */
static int cached_name(DgramSender *self, PyObject *addr, PyObject **name)
{
    *name = NULL;
    if (self->address != Py_None) {
        if (addr == Py_None || addr == self->address)
            return 1;
        int eq = PyObject_RichCompareBool(addr, self->address, Py_EQ);
        if (eq < 0)
            PyErr_Clear();
        return eq > 0;
    }
    if (addr == Py_None)
        return 1;
    *name = PyDict_GetItemWithError(self->packed, addr);
    if (*name && PyBytes_CheckExact(*name))
        return 1;
    PyErr_Clear(); /* unhashable & co.: Python says what is wrong */
    return 0;
}

static PyObject *DgramSender_vectorcall(DgramSender *self, PyObject *const *args, size_t nargsf,
                                        PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!self->conn || nargs < 1 || nargs > 2 || (kwnames && PyTuple_GET_SIZE(kwnames)) ||
        !PyBytes_CheckExact(args[0]))
        return sender_slow(self, args, nargs, kwnames);
    PyObject *data = args[0], *name;
    Py_ssize_t len = PyBytes_GET_SIZE(data);
    if (len == 0)
        Py_RETURN_NONE; /* as asyncio: an empty datagram is not sent */
    if (!cached_name(self, nargs == 2 ? args[1] : Py_None, &name))
        return sender_slow(self, args, nargs, kwnames);
    int64_t pending = self->send(self->ring, (al_conn *)(uintptr_t)self->conn,
                                 PyBytes_AS_STRING(data), (size_t)len,
                                 name ? PyBytes_AS_STRING(name) : NULL,
                                 name ? (unsigned)PyBytes_GET_SIZE(name) : 0);
    if (pending >= 0 && pending <= self->high_water)
        Py_RETURN_NONE;
    PyObject *t = PyWeakref_GetObject(self->transport);
    if (!t || t == Py_None)
        return t ? Py_NewRef(Py_None) : NULL;
    PyObject *p = PyLong_FromLongLong(pending);
    if (!p)
        return NULL;
    Py_INCREF(t);
    PyObject *r = PyObject_CallMethodOneArg(t, s_after_sendto, p);
    Py_DECREF(t);
    Py_DECREF(p);
    return r;
}

static int DgramSender_init(DgramSender *self, PyObject *args, PyObject *kw)
{
    PyObject *transport, *address, *packed;
    unsigned long long ring, send;
    if (!PyArg_ParseTuple(args, "OKKOO!", &transport, &ring, &send, &address, &PyDict_Type,
                          &packed))
        return -1;
    PyObject *ref = PyWeakref_NewRef(transport, NULL);
    if (!ref)
        return -1;
    Py_XSETREF(self->transport, ref);
    Py_XSETREF(self->address, Py_NewRef(address));
    Py_XSETREF(self->packed, Py_NewRef(packed));
    self->ring = (al_loop *)(uintptr_t)ring;
    self->send = (dsend_fn)(uintptr_t)send;
    self->conn = 0;
    self->high_water = 0;
    self->vectorcall = (vectorcallfunc)DgramSender_vectorcall;
    return 0;
}

static void DgramSender_dealloc(DgramSender *self)
{
    Py_CLEAR(self->transport);
    Py_CLEAR(self->address);
    Py_CLEAR(self->packed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef DgramSender_members[] = {
    {"conn", T_ULONGLONG, offsetof(DgramSender, conn), 0, "al_conn address; 0: Python path"},
    {"high_water", T_LONGLONG, offsetof(DgramSender, high_water), 0, "pending bytes that pause"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(DgramSender, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject DgramSenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.DgramSender",
    .tp_doc = "DgramSender(transport, ring, al_dgram_send, address, packed): sendto() in C.",
    .tp_basicsize = sizeof(DgramSender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(DgramSender, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DgramSender_init,
    .tp_dealloc = (destructor)DgramSender_dealloc,
    .tp_members = DgramSender_members,
};

/* ---- LoopCore: the loop's iteration (asyncio's _run_once) ---- */

typedef struct {
    PyObject_HEAD
    PyObject *loop, *ready, *scheduled;  /* loop._ready (deque), loop._scheduled (heap) */
    PyObject *ring_ready, *batching;     /* ring._ready (poll events), ring.batching */
    PyObject *ring, *heappop, *report;
    Dispatcher *disp;
    double clock_resolution;
    int busy_poll;
    /* call_soon, call_later and call_at in C: asyncio's Handle and TimerHandle built slot
     * by slot (offsets read from their member descriptors), outside debug mode; the
     * py_call_* (BaseEventLoop's, unbound) serve the rest. */
    PyTypeObject *handle_type, *timer_type;
    PyObject *py_call_soon, *py_call_later, *py_call_at, *heappush, *ready_popleft;
    Py_ssize_t off_callback, off_args, off_cancelled, off_loop, off_tb, off_repr, off_context;
    Py_ssize_t off_when, off_scheduled; /* TimerHandle's own */
    int slots_known; /* every offset above was found: the C paths are on */
} LoopCore;

enum { BUSY_SLICE_NS = 1000000 }; /* a busy spin returns to Python this often, for signals */
static const double MAX_SELECT_TIMEOUT = 24 * 3600;

static double monotonic(void) /* time.monotonic(), which loop.time() returns: the same double */
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

/* The offset of an object slot of type t (a __slots__ member), or -1 if it is not one. */
static Py_ssize_t slot_offset(PyTypeObject *t, const char *name)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)t, name);
    Py_ssize_t off = -1;
    if (d && Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY))
            off = m->offset;
    }
    Py_XDECREF(d);
    PyErr_Clear();
    return off;
}

static int LoopCore_init(LoopCore *self, PyObject *args, PyObject *kw)
{
    PyObject *loop, *ring, *disp, *handle_types, *report, *heapq, *py_call_soon, *py_call_later,
        *py_call_at;
    double res;
    int busy;
    if (!PyArg_ParseTuple(args, "OOO!O!Odp(OOO)", &loop, &ring, &DispatcherType, &disp,
                          &PyTuple_Type, &handle_types, &report, &res, &busy, &py_call_soon,
                          &py_call_later, &py_call_at))
        return -1;
    if (PyTuple_GET_SIZE(handle_types) < 2 || !PyType_Check(PyTuple_GET_ITEM(handle_types, 0)) ||
        !PyType_Check(PyTuple_GET_ITEM(handle_types, 1))) {
        PyErr_SetString(PyExc_TypeError, "handle_types must be asyncio's (Handle, TimerHandle)");
        return -1;
    }
    PyTypeObject *ht = (PyTypeObject *)PyTuple_GET_ITEM(handle_types, 0);
    PyTypeObject *tt = (PyTypeObject *)PyTuple_GET_ITEM(handle_types, 1);
    Py_XSETREF(self->handle_type, (PyTypeObject *)Py_NewRef(ht));
    Py_XSETREF(self->timer_type, (PyTypeObject *)Py_NewRef(tt));
    Py_XSETREF(self->py_call_soon, Py_NewRef(py_call_soon));
    Py_XSETREF(self->py_call_later, Py_NewRef(py_call_later));
    Py_XSETREF(self->py_call_at, Py_NewRef(py_call_at));
    self->off_when = slot_offset(tt, "_when");
    self->off_scheduled = slot_offset(tt, "_scheduled");
    self->off_callback = slot_offset(ht, "_callback");
    self->off_args = slot_offset(ht, "_args");
    self->off_cancelled = slot_offset(ht, "_cancelled");
    self->off_loop = slot_offset(ht, "_loop");
    self->off_tb = slot_offset(ht, "_source_traceback");
    self->off_repr = slot_offset(ht, "_repr");
    self->off_context = slot_offset(ht, "_context");
    self->slots_known = self->off_callback >= 0 && self->off_args >= 0 &&
                        self->off_cancelled >= 0 && self->off_loop >= 0 && self->off_tb >= 0 &&
                        self->off_repr >= 0 && self->off_context >= 0 && self->off_when >= 0 &&
                        self->off_scheduled >= 0;
    heapq = PyImport_ImportModule("heapq");
    if (!heapq)
        return -1;
    Py_XSETREF(self->heappop, PyObject_GetAttrString(heapq, "heappop"));
    Py_XSETREF(self->heappush, PyObject_GetAttrString(heapq, "heappush"));
    Py_DECREF(heapq);
    Py_XSETREF(self->ready, PyObject_GetAttrString(loop, "_ready"));
    Py_XSETREF(self->scheduled, PyObject_GetAttrString(loop, "_scheduled"));
    Py_XSETREF(self->ready_popleft,
               self->ready ? PyObject_GetAttr(self->ready, s_popleft) : NULL);
    Py_XSETREF(self->ring_ready, PyObject_GetAttrString(ring, "_ready"));
    Py_XSETREF(self->batching, PyObject_GetAttrString(ring, "batching"));
    if (!self->heappop || !self->heappush || !self->ready || !self->ready_popleft ||
        !self->scheduled || !self->ring_ready || !self->batching)
        return -1;
    if (!PyList_CheckExact(self->scheduled) || !PyList_CheckExact(self->ring_ready) ||
        !PyList_CheckExact(self->batching)) {
        PyErr_SetString(PyExc_TypeError, "_scheduled, ring._ready and ring.batching must be lists");
        return -1;
    }
    Py_XSETREF(self->loop, Py_NewRef(loop));
    Py_XSETREF(self->ring, Py_NewRef(ring));
    Py_XSETREF(self->disp, (Dispatcher *)Py_NewRef(disp));
    Py_XSETREF(self->report, Py_NewRef(report));
    self->clock_resolution = res;
    self->busy_poll = busy;
    return 0;
}

static int LoopCore_traverse(LoopCore *self, visitproc visit, void *arg)
{
    Py_VISIT(self->loop);
    Py_VISIT(self->ready);
    Py_VISIT(self->scheduled);
    Py_VISIT(self->ring_ready);
    Py_VISIT(self->batching);
    Py_VISIT(self->ring);
    Py_VISIT(self->heappop);
    Py_VISIT(self->report);
    Py_VISIT(self->disp);
    Py_VISIT(self->handle_type);
    Py_VISIT(self->timer_type);
    Py_VISIT(self->py_call_soon);
    Py_VISIT(self->py_call_later);
    Py_VISIT(self->py_call_at);
    Py_VISIT(self->heappush);
    Py_VISIT(self->ready_popleft);
    return 0;
}

static int LoopCore_clear(LoopCore *self)
{
    Py_CLEAR(self->loop);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->scheduled);
    Py_CLEAR(self->ring_ready);
    Py_CLEAR(self->batching);
    Py_CLEAR(self->ring);
    Py_CLEAR(self->heappop);
    Py_CLEAR(self->report);
    Py_CLEAR(self->disp);
    Py_CLEAR(self->handle_type);
    Py_CLEAR(self->timer_type);
    Py_CLEAR(self->py_call_soon);
    Py_CLEAR(self->py_call_later);
    Py_CLEAR(self->py_call_at);
    Py_CLEAR(self->heappush);
    Py_CLEAR(self->ready_popleft);
    return 0;
}

static void LoopCore_dealloc(LoopCore *self)
{
    PyObject_GC_UnTrack(self);
    LoopCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* obj.name is true: 1, 0, or -1 with an exception. */
static int attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (!v)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

static int call_noargs(PyObject *obj, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* A _when value (stolen; NULL: an exception is set) as a double: 0, or -1. */
static int when_of(PyObject *w, double *when)
{
    if (!w)
        return -1;
    *when = PyFloat_AsDouble(w);
    Py_DECREF(w);
    return (*when == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* A TimerHandle's _when, or -1 with an exception. */
static int handle_when(PyObject *h, double *when)
{
    return when_of(PyObject_GetAttr(h, s_when), when);
}

static PyObject *handle_slot(LoopCore *self, PyObject *h, Py_ssize_t off, PyObject *name);

/* The head timer's _when, read by slot (-1 with an exception). */
static int timer_when(LoopCore *self, PyObject *h, double *when)
{
    return when_of(handle_slot(self, h, self->off_when, s_when), when);
}

/* The wait's timeout in ns (-1: none), as asyncio's _run_once computes it. */
static int iteration_timeout(LoopCore *self, int64_t *ns)
{
    *ns = -1;
    int stopping = attr_true(self->loop, s_stopping);
    if (stopping < 0)
        return -1;
    if (PyObject_Length(self->ready) > 0 || stopping) {
        *ns = 0;
    } else if (PyList_GET_SIZE(self->scheduled)) {
        double when;
        if (timer_when(self, PyList_GET_ITEM(self->scheduled, 0), &when) < 0)
            return -1;
        double t = when - monotonic();
        t = t < 0 ? 0 : t > MAX_SELECT_TIMEOUT ? MAX_SELECT_TIMEOUT : t;
        *ns = (int64_t)(t * 1e9);
    }
    if (self->busy_poll && (*ns < 0 || *ns > BUSY_SLICE_NS))
        *ns = BUSY_SLICE_NS;
    return 0;
}

/* asyncio's own Handle or TimerHandle (not a subclass) */
static int is_asyncio_handle(LoopCore *self, PyObject *h)
{
    return Py_IS_TYPE(h, self->handle_type) || Py_IS_TYPE(h, self->timer_type);
}

/* h.name for a Handle or TimerHandle: its slot read at the offset its member descriptor
 * gives (a new reference), or getattr where the slots are not known. */
static PyObject *handle_slot(LoopCore *self, PyObject *h, Py_ssize_t off, PyObject *name)
{
    if (self->slots_known && is_asyncio_handle(self, h)) {
        PyObject *v = *(PyObject **)((char *)h + off);
        if (v)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(h, name);
}

/* h._cancelled, read by slot: 1, 0, or -1 with an exception. */
static int handle_cancelled(LoopCore *self, PyObject *h)
{
    PyObject *c = handle_slot(self, h, self->off_cancelled, s_cancelled);
    int cancelled = c ? PyObject_IsTrue(c) : -1;
    Py_XDECREF(c);
    return cancelled;
}

/* Handle._run without its Python frame; an exception goes to report(handle, exc),
 * which says what Handle._run would have said. */
static int run_handle(LoopCore *self, PyObject *h)
{
    if (!is_asyncio_handle(self, h))
        return call_noargs(h, s_handle_run);
    /* new references: the callback may cancel its own handle, which clears these slots */
    PyObject *ctx = handle_slot(self, h, self->off_context, s_context);
    PyObject *cb = handle_slot(self, h, self->off_callback, s_callback);
    PyObject *args = handle_slot(self, h, self->off_args, s_args);
    PyObject *r = NULL;
    if (ctx && cb && args && PyTuple_Check(args)) {
        Py_ssize_t n = PyTuple_GET_SIZE(args);
        PyObject *small[8];
        PyObject **vec = n + 2 <= 8 ? small : PyMem_Malloc((n + 2) * sizeof(PyObject *));
        if (vec) {
            vec[0] = ctx;
            vec[1] = cb;
            for (Py_ssize_t i = 0; i < n; i++)
                vec[i + 2] = PyTuple_GET_ITEM(args, i);
            r = PyObject_VectorcallMethod(s_run, vec, (n + 2) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                          NULL);
            if (vec != small)
                PyMem_Free(vec);
        } else {
            PyErr_NoMemory();
        }
    } else if (args && !PyTuple_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "handle._args is not a tuple");
    }
    Py_XDECREF(ctx);
    Py_XDECREF(cb);
    Py_XDECREF(args);
    if (r) {
        Py_DECREF(r);
        return 0;
    }
    if (is_fatal_exit())
        return -1;
    PyObject *exc = take_exception();
    r = PyObject_CallFunctionObjArgs(self->report, h, exc ? exc : Py_None, NULL);
    Py_XDECREF(exc);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Timers due by now (within the clock's resolution) join the ready queue. */
static int collect_due_timers(LoopCore *self)
{
    PyObject *scheduled = self->scheduled;
    if (!PyList_GET_SIZE(scheduled))
        return 0;
    double end = monotonic() + self->clock_resolution;
    while (PyList_GET_SIZE(scheduled)) {
        double when;
        if (timer_when(self, PyList_GET_ITEM(scheduled, 0), &when) < 0)
            return -1;
        if (when >= end)
            break;
        PyObject *h = PyObject_CallOneArg(self->heappop, scheduled);
        if (!h)
            return -1;
        int err = PyObject_SetAttr(h, s_scheduled, Py_False);
        if (!err) {
            PyObject *r = PyObject_CallMethodOneArg(self->ready, s_append, h);
            err = r ? 0 : -1;
            Py_XDECREF(r);
        }
        Py_DECREF(h);
        if (err)
            return -1;
    }
    return 0;
}

/* One iteration of the loop: asyncio's BaseEventLoop._run_once, in C. */
static PyObject *LoopCore_run_once(LoopCore *self, PyObject *unused)
{
    PyObject *scheduled = self->scheduled;
    Py_ssize_t nsched = PyList_GET_SIZE(scheduled);
    if (nsched) {
        /* The Python side purges a heap full of cancelled timers, or cancelled heads. */
        int head_cancelled = handle_cancelled(self, PyList_GET_ITEM(scheduled, 0));
        if (head_cancelled < 0)
            return NULL;
        if ((head_cancelled || nsched > 100) && call_noargs(self->loop, s_drop_cancelled) < 0)
            return NULL;
    }
    int64_t ns;
    if (iteration_timeout(self, &ns) < 0)
        return NULL;
    int n = dispatcher_wait(self->disp, ns);
    if (n == PY_ERROR)
        return NULL;
    if (n < 0) { /* the ring says why, as an exception */
        PyObject *r = PyObject_CallMethod(self->ring, "_wait_failed", "i", n);
        Py_XDECREF(r);
        return NULL;
    }
    if (PyList_GET_SIZE(self->batching) && call_noargs(self->ring, s_flush_batches) < 0)
        return NULL;
    if (PyList_GET_SIZE(self->ring_ready)) {
        PyObject *events = PyList_GetSlice(self->ring_ready, 0, PY_SSIZE_T_MAX);
        if (!events || PyList_SetSlice(self->ring_ready, 0, PY_SSIZE_T_MAX, NULL) < 0) {
            Py_XDECREF(events);
            return NULL;
        }
        PyObject *r = PyObject_CallMethodOneArg(self->loop, s_process_events, events);
        Py_DECREF(events);
        if (!r)
            return NULL;
        Py_DECREF(r);
    }
    if (collect_due_timers(self) < 0)
        return NULL;
    Py_ssize_t ntodo = PyObject_Length(self->ready);
    if (ntodo <= 0)
        return ntodo < 0 ? NULL : Py_NewRef(Py_None);
    int debug = attr_true(self->loop, s_debug);
    if (debug < 0)
        return NULL;
    if (debug) {
        PyObject *count = PyLong_FromSsize_t(ntodo);
        PyObject *r = count ? PyObject_CallMethodOneArg(self->loop, s_run_ready_debug, count) : NULL;
        Py_XDECREF(count);
        return r;
    }
    for (Py_ssize_t k = 0; k < ntodo; k++) {
        PyObject *h = PyObject_CallNoArgs(self->ready_popleft);
        if (!h)
            return NULL;
        int cancelled = handle_cancelled(self, h);
        int err = cancelled < 0 ? -1 : cancelled ? 0 : run_handle(self, h);
        Py_DECREF(h);
        if (err)
            return NULL;
    }
    Py_RETURN_NONE;
}

static void set_slot(PyObject *h, Py_ssize_t off, PyObject *v) /* steals v */
{
    *(PyObject **)((char *)h + off) = v;
}

/* Whether a call (first `lead` positional arguments before the callback) takes the C path:
 * known slots, at least the callback, no keyword but context=, an open loop, no debug
 * mode. Sets *context (NULL: copy the caller's). 1, 0, or -1 with an exception. */
static int fast_call(LoopCore *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     Py_ssize_t lead, PyObject **context)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    *context = NULL;
    if (nargs < lead + 1 || !self->slots_known)
        return 0;
    if (nkw) {
        if (nkw != 1 ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "context") != 0)
            return 0;
        *context = args[nargs] == Py_None ? NULL : args[nargs];
    }
    int closed = attr_true(self->loop, s_closed);
    if (closed)
        return closed < 0 ? -1 : 0;
    int debug = attr_true(self->loop, s_debug);
    return debug < 0 ? -1 : !debug;
}

/* asyncio's own method (unbound), with the loop in front of the arguments. */
static PyObject *call_python(LoopCore *self, PyObject *func, PyObject *const *args,
                             Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[9], **vec =
        nargs + nkw + 1 <= 9 ? small : PyMem_Malloc((nargs + nkw + 1) * sizeof(PyObject *));
    if (!vec)
        return PyErr_NoMemory();
    vec[0] = self->loop;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        vec[i + 1] = args[i];
    PyObject *r = PyObject_Vectorcall(func, vec, nargs + 1, kwnames);
    if (vec != small)
        PyMem_Free(vec);
    return r;
}

/* A Handle (or TimerHandle) as Handle.__init__ makes it: callback args[0], its arguments
 * args[1:n], the given context or a copy of the caller's. */
static PyObject *new_handle(LoopCore *self, PyTypeObject *type, PyObject *const *args,
                            Py_ssize_t n, PyObject *context)
{
    PyObject *cb_args = PyTuple_New(n - 1);
    PyObject *ctx = context ? Py_NewRef(context) : PyContext_CopyCurrent();
    PyObject *h = cb_args && ctx ? type->tp_alloc(type, 0) : NULL;
    if (!h) {
        Py_XDECREF(cb_args);
        Py_XDECREF(ctx);
        return NULL;
    }
    for (Py_ssize_t i = 1; i < n; i++)
        PyTuple_SET_ITEM(cb_args, i - 1, Py_NewRef(args[i]));
    set_slot(h, self->off_context, ctx);
    set_slot(h, self->off_loop, Py_NewRef(self->loop));
    set_slot(h, self->off_callback, Py_NewRef(args[0]));
    set_slot(h, self->off_args, cb_args);
    set_slot(h, self->off_cancelled, Py_NewRef(Py_False));
    set_slot(h, self->off_repr, Py_NewRef(Py_None));
    set_slot(h, self->off_tb, Py_NewRef(Py_None));
    return h;
}

/* loop.call_soon(callback, *args, context=None): BaseEventLoop.call_soon without its
 * three Python frames (call_soon, _call_soon, Handle.__init__). A closed loop, debug
 * mode (its checks and tracebacks) and any other keyword take asyncio's own. */
static PyObject *LoopCore_call_soon(LoopCore *self, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    PyObject *context;
    int fast = fast_call(self, args, nargs, kwnames, 0, &context);
    if (fast <= 0)
        return fast < 0 ? NULL : call_python(self, self->py_call_soon, args, nargs, kwnames);
    PyObject *h = new_handle(self, self->handle_type, args, nargs, context);
    if (!h)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg(self->ready, s_append, h);
    if (!r) {
        Py_DECREF(h);
        return NULL;
    }
    Py_DECREF(r);
    return h;
}

/* A TimerHandle for `when` (stolen) pushed on the heap, as BaseEventLoop.call_at does. */
static PyObject *schedule_timer(LoopCore *self, PyObject *when, PyObject *const *args,
                                Py_ssize_t n, PyObject *context)
{
    PyObject *t = new_handle(self, self->timer_type, args, n, context);
    if (!t) {
        Py_DECREF(when);
        return NULL;
    }
    set_slot(t, self->off_when, when);
    set_slot(t, self->off_scheduled, Py_NewRef(Py_False));
    PyObject *r = PyObject_CallFunctionObjArgs(self->heappush, self->scheduled, t, NULL);
    if (!r) {
        Py_DECREF(t);
        return NULL;
    }
    Py_DECREF(r);
    PyObject *old = *(PyObject **)((char *)t + self->off_scheduled);
    set_slot(t, self->off_scheduled, Py_NewRef(Py_True));
    Py_DECREF(old);
    return t;
}

/* fast_call for call_at/call_later, whose first argument (when, delay) comes before the
 * callback: None there takes asyncio's own, for its TypeError. */
static int fast_timer_call(LoopCore *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames, PyObject **context)
{
    *context = NULL;
    if (nargs < 1 || args[0] == Py_None)
        return 0;
    return fast_call(self, args, nargs, kwnames, 1, context);
}

/* loop.call_at(when, callback, *args, context=None), in C as call_soon is. */
static PyObject *LoopCore_call_at(LoopCore *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PyObject *context;
    int fast = fast_timer_call(self, args, nargs, kwnames, &context);
    if (fast <= 0)
        return fast < 0 ? NULL : call_python(self, self->py_call_at, args, nargs, kwnames);
    return schedule_timer(self, Py_NewRef(args[0]), args + 1, nargs - 1, context);
}

/* loop.call_later(delay, callback, *args, context=None): due at loop.time() + delay. */
static PyObject *LoopCore_call_later(LoopCore *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    PyObject *context;
    int fast = fast_timer_call(self, args, nargs, kwnames, &context);
    if (fast <= 0)
        return fast < 0 ? NULL : call_python(self, self->py_call_later, args, nargs, kwnames);
    PyObject *now = PyFloat_FromDouble(monotonic());
    PyObject *when = now ? PyNumber_Add(now, args[0]) : NULL;
    Py_XDECREF(now);
    if (!when)
        return NULL;
    return schedule_timer(self, when, args + 1, nargs - 1, context);
}

static PyMethodDef LoopCore_methods[] = {
    {"run_once", (PyCFunction)LoopCore_run_once, METH_NOARGS, "One iteration of the loop."},
    {"call_soon", (PyCFunction)(void (*)(void))LoopCore_call_soon, METH_FASTCALL | METH_KEYWORDS,
     "loop.call_soon(callback, *args, context=None), in C."},
    {"call_at", (PyCFunction)(void (*)(void))LoopCore_call_at, METH_FASTCALL | METH_KEYWORDS,
     "loop.call_at(when, callback, *args, context=None), in C."},
    {"call_later", (PyCFunction)(void (*)(void))LoopCore_call_later,
     METH_FASTCALL | METH_KEYWORDS, "loop.call_later(delay, callback, *args, context=None), in C."},
    {NULL},
};

static PyTypeObject LoopCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.LoopCore",
    .tp_doc = "LoopCore(loop, ring, dispatcher, handle_types, report, clock_resolution, "
              "busy_poll): the loop's _run_once in C.",
    .tp_basicsize = sizeof(LoopCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LoopCore_init,
    .tp_dealloc = (destructor)LoopCore_dealloc,
    .tp_traverse = (traverseproc)LoopCore_traverse,
    .tp_clear = (inquiry)LoopCore_clear,
    .tp_methods = LoopCore_methods,
};

/* ---- EngineEndpoint / EnginePoller: a bypass engine's endpoint (csrc/bypass_core.c) ---- */

/* bp_recv, bp_send, bp_poll, bp_spin of the cffi module _bypass, by pointer. */
typedef int (*bp_recv_fn)(void *, int, uint8_t *, uint32_t, int, int32_t *, uint32_t *,
                          uint16_t *, int64_t *);
typedef int (*bp_send_fn)(void *, uint32_t, uint16_t, uint16_t, const uint8_t *, uint32_t);
typedef int (*bp_poll_fn)(void *);
typedef int (*bp_spin_fn)(void *, int64_t);

enum { ENGINE_BATCH = 64, ENGINE_ROUNDS = 16 }; /* as the Python transport's _BATCH, _ROUNDS */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    unsigned long long h;      /* struct bp_engine *; 0: closing or stopped (Python path) */
    int ep, reading, batched;
    unsigned port, slot;       /* our UDP port; bytes per slot of buf */
    unsigned long long truncated;
    bp_recv_fn recv;
    bp_send_fn send;
    uint8_t *buf;              /* ENGINE_BATCH slots, owned by the transport */
    int32_t lens[ENGINE_BATCH];
    uint32_t ips[ENGINE_BATCH];
    uint16_t ports[ENGINE_BATCH];
    int64_t stamps[ENGINE_BATCH];
    long long remote;          /* the default destination ip << 16 | port; -1: none */
    uint64_t last_key;         /* the last sender, ip << 16 | port, and its address */
    PyObject *last_addr;
    PyObject *protocol, *peers, *packed;  /* peers: key -> address; packed: address -> key */
    PyObject *transport;       /* a weak reference: the transport holds us */
} EngineEndpoint;

static PyObject *s_datagrams_received, *s_send_failed;

static PyObject *endpoint_transport(EngineEndpoint *self)
{
    PyObject *t = PyWeakref_GetObject(self->transport);
    if (t == Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is gone");
        return NULL;
    }
    return t ? Py_NewRef(t) : NULL;
}

/* The sender's address (new reference): the last one, the peers cache, else transport._peer. */
static PyObject *engine_peer(EngineEndpoint *self, uint32_t ip, uint16_t port)
{
    uint64_t key = (uint64_t)ip << 16 | port;
    if (self->last_addr && key == self->last_key)
        return Py_NewRef(self->last_addr);
    PyObject *k = PyLong_FromUnsignedLongLong(key);
    if (!k)
        return NULL;
    PyObject *addr = PyDict_GetItemWithError(self->peers, k);
    if (addr) {
        Py_INCREF(addr);
    } else if (!PyErr_Occurred()) {
        PyObject *t = endpoint_transport(self);
        addr = t ? PyObject_CallMethodOneArg(t, s_peer, k) : NULL;
        Py_XDECREF(t);
    }
    Py_DECREF(k);
    if (addr) {
        self->last_key = key;
        Py_XSETREF(self->last_addr, Py_NewRef(addr));
    }
    return addr;
}

/* The protocol's callback failed: SystemExit/KeyboardInterrupt propagate (-1), anything
 * else goes to transport._dgram_failed (the loop's exception handler), as call_protocol. */
static int engine_failed(EngineEndpoint *self, PyObject *proto, PyObject *method)
{
    if (is_fatal_exit())
        return -1;
    PyObject *exc = take_exception();
    PyObject *t = endpoint_transport(self);
    PyObject *r = NULL;
    if (t) {
        PyObject *args[] = {t, proto, method, exc ? exc : Py_None};
        r = PyObject_VectorcallMethod(s_dgram_failed, args, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      NULL);
        Py_DECREF(t);
    }
    Py_XDECREF(exc);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int engine_active(EngineEndpoint *self)
{
    return self->h && self->reading && self->protocol && self->protocol != Py_None;
}

/* One datagram to protocol.datagram_received: 1, 0 (none waiting) or -1. */
static int engine_deliver_one(EngineEndpoint *self)
{
    int n = self->recv((void *)(uintptr_t)self->h, self->ep, self->buf, self->slot, 1, self->lens,
                       self->ips, self->ports, self->stamps);
    if (n <= 0)
        return 0;
    if (self->lens[0] < 0) { /* longer than the slot: dropped, counted by the engine too */
        self->truncated++;
        return 1;
    }
    PyObject *proto = Py_NewRef(self->protocol);
    PyObject *addr = engine_peer(self, self->ips[0], self->ports[0]);
    PyObject *data = addr ? PyBytes_FromStringAndSize((const char *)self->buf, self->lens[0])
                          : NULL;
    int rc = -1;
    if (data) {
        PyObject *args[] = {proto, data, addr};
        PyObject *r = PyObject_VectorcallMethod(s_datagram_received, args,
                                                3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        rc = r ? 0 : engine_failed(self, proto, s_datagram_received);
        Py_XDECREF(r);
    }
    Py_XDECREF(data);
    Py_XDECREF(addr);
    Py_DECREF(proto);
    return rc < 0 ? -1 : 1;
}

/* Up to max datagrams in one protocol.datagrams_received([(data, addr, rx_ns), ...]):
 * the number taken from the ring, or -1. */
static int engine_deliver_batch(EngineEndpoint *self, int max)
{
    PyObject *batch = PyList_New(0);
    if (!batch)
        return -1;
    int total = 0;
    while (total < max) {
        int want = max - total < ENGINE_BATCH ? max - total : ENGINE_BATCH;
        int n = self->recv((void *)(uintptr_t)self->h, self->ep, self->buf, self->slot, want,
                           self->lens, self->ips, self->ports, self->stamps);
        total += n;
        for (int i = 0; i < n; i++) {
            if (self->lens[i] < 0) {
                self->truncated++;
                continue;
            }
            PyObject *addr = engine_peer(self, self->ips[i], self->ports[i]);
            PyObject *item = addr ? dgram_item((const char *)self->buf + (size_t)i * self->slot,
                                               self->lens[i], addr, self->stamps[i])
                                  : NULL;
            Py_XDECREF(addr);
            if (!item || PyList_Append(batch, item) < 0) {
                Py_XDECREF(item);
                Py_DECREF(batch);
                return -1;
            }
            Py_DECREF(item);
        }
        if (n < want)
            break;
    }
    int rc = 0;
    if (PyList_GET_SIZE(batch)) {
        PyObject *proto = Py_NewRef(self->protocol);
        PyObject *args[] = {proto, batch};
        PyObject *r = PyObject_VectorcallMethod(s_datagrams_received, args,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        rc = r ? 0 : engine_failed(self, proto, s_datagrams_received);
        Py_XDECREF(r);
        Py_DECREF(proto);
    }
    Py_DECREF(batch);
    return rc < 0 ? -1 : total;
}

/* Deliver what waits (at most ENGINE_ROUNDS batches' worth), re-reading the transport's
 * state after every callback: a pause holds the rest in the ring, a close stops, a new
 * protocol (batched or not) takes the next datagram. Datagrams taken, or -1. */
static int engine_drain(EngineEndpoint *self)
{
    int total = 0;
    const int max = ENGINE_BATCH * ENGINE_ROUNDS;
    Py_INCREF(self); /* a callback may drop the transport, and with it us */
    while (total < max && engine_active(self)) {
        int n = self->batched ? engine_deliver_batch(self, max - total)
                              : engine_deliver_one(self);
        if (n < 0) {
            total = -1;
            break;
        }
        if (n == 0)
            break;
        total += n;
    }
    Py_DECREF(self);
    return total;
}

static PyObject *EngineEndpoint_drain(EngineEndpoint *self, PyObject *unused)
{
    int n = engine_drain(self);
    return n < 0 ? NULL : PyLong_FromLong(n);
}

/* transport._sendto(*args): whatever the C path does not take. */
static PyObject *engine_send_slow(EngineEndpoint *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PyObject *t = endpoint_transport(self);
    if (!t)
        return NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *small[5];
    PyObject **vec = nargs + nkw + 1 <= 5 ? small
                                          : PyMem_Malloc((nargs + nkw + 1) * sizeof(PyObject *));
    if (!vec) {
        Py_DECREF(t);
        return PyErr_NoMemory();
    }
    vec[0] = t;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        vec[i + 1] = args[i];
    PyObject *r = PyObject_VectorcallMethod(s_sendto_py, vec, nargs + 1, kwnames);
    Py_DECREF(t);
    if (vec != small)
        PyMem_Free(vec);
    return r;
}

/* sendto(data, addr=None): bytes to the default remote or a packed address go to bp_send. */
static PyObject *EngineEndpoint_vectorcall(EngineEndpoint *self, PyObject *const *args,
                                           size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (!self->h || nargs < 1 || nargs > 2 || (kwnames && PyTuple_GET_SIZE(kwnames)) ||
        !PyBytes_CheckExact(args[0]))
        return engine_send_slow(self, args, nargs, kwnames);
    long long key = -1;
    PyObject *addr = nargs == 2 ? args[1] : Py_None;
    if (addr == Py_None) {
        key = self->remote;
    } else {
        PyObject *packed = PyDict_GetItemWithError(self->packed, addr);
        if (packed && PyLong_CheckExact(packed))
            key = PyLong_AsLongLong(packed);
        if (key < 0)
            PyErr_Clear(); /* unhashable & co.: Python says what is wrong */
    }
    if (key < 0)
        return engine_send_slow(self, args, nargs, kwnames);
    PyObject *data = args[0];
    int rc = self->send((void *)(uintptr_t)self->h, (uint32_t)(key >> 16), (uint16_t)key,
                        (uint16_t)self->port, (const uint8_t *)PyBytes_AS_STRING(data),
                        (uint32_t)PyBytes_GET_SIZE(data));
    if (rc >= 0)
        Py_RETURN_NONE;
    PyObject *t = endpoint_transport(self);
    PyObject *r = NULL;
    if (t) {
        PyObject *code = PyLong_FromLong(rc);
        r = code ? PyObject_CallMethodOneArg(t, s_send_failed, code) : NULL;
        Py_XDECREF(code);
        Py_DECREF(t);
    }
    return r;
}

static int EngineEndpoint_init(EngineEndpoint *self, PyObject *args, PyObject *kw)
{
    PyObject *transport, *peers, *packed;
    unsigned long long h, buf, recv, send;
    int ep;
    unsigned port, slot;
    long long remote;
    if (!PyArg_ParseTuple(args, "OKiIKIKKLO!O!", &transport, &h, &ep, &port, &buf, &slot, &recv,
                          &send, &remote, &PyDict_Type, &peers, &PyDict_Type, &packed))
        return -1;
    PyObject *ref = PyWeakref_NewRef(transport, NULL);
    if (!ref)
        return -1;
    Py_XSETREF(self->transport, ref);
    Py_XSETREF(self->peers, Py_NewRef(peers));
    Py_XSETREF(self->packed, Py_NewRef(packed));
    Py_XSETREF(self->protocol, Py_NewRef(Py_None));
    Py_CLEAR(self->last_addr);
    self->h = h;
    self->ep = ep;
    self->port = port;
    self->buf = (uint8_t *)(uintptr_t)buf;
    self->slot = slot;
    self->recv = (bp_recv_fn)(uintptr_t)recv;
    self->send = (bp_send_fn)(uintptr_t)send;
    self->remote = remote;
    self->reading = self->batched = 0;
    self->truncated = 0;
    self->vectorcall = (vectorcallfunc)EngineEndpoint_vectorcall;
    return 0;
}

static int EngineEndpoint_traverse(EngineEndpoint *self, visitproc visit, void *arg)
{
    Py_VISIT(self->protocol);
    Py_VISIT(self->peers);
    Py_VISIT(self->packed);
    Py_VISIT(self->last_addr);
    return 0;
}

static int EngineEndpoint_clear(EngineEndpoint *self)
{
    Py_CLEAR(self->protocol);
    Py_CLEAR(self->peers);
    Py_CLEAR(self->packed);
    Py_CLEAR(self->last_addr);
    return 0;
}

static void EngineEndpoint_dealloc(EngineEndpoint *self)
{
    PyObject_GC_UnTrack(self);
    EngineEndpoint_clear(self);
    Py_CLEAR(self->transport);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef EngineEndpoint_methods[] = {
    {"drain", (PyCFunction)EngineEndpoint_drain, METH_NOARGS,
     "Deliver the datagrams waiting in the ring; how many were taken."},
    {NULL},
};

static PyMemberDef EngineEndpoint_members[] = {
    {"h", T_ULONGLONG, offsetof(EngineEndpoint, h), 0, "the engine; 0: closing (Python path)"},
    {"protocol", T_OBJECT, offsetof(EngineEndpoint, protocol), 0, "the protocol to call"},
    {"reading", T_INT, offsetof(EngineEndpoint, reading), 0, "deliver datagrams"},
    {"batched", T_INT, offsetof(EngineEndpoint, batched), 0, "call datagrams_received"},
    {"truncated", T_ULONGLONG, offsetof(EngineEndpoint, truncated), READONLY,
     "datagrams longer than a slot"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(EngineEndpoint, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject EngineEndpointType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.EngineEndpoint",
    .tp_doc = "EngineEndpoint(transport, engine, ep, port, buf, slot, bp_recv, bp_send, remote, "
              "peers, packed): a bypass endpoint's receive path and sendto() in C.",
    .tp_basicsize = sizeof(EngineEndpoint),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(EngineEndpoint, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)EngineEndpoint_init,
    .tp_dealloc = (destructor)EngineEndpoint_dealloc,
    .tp_traverse = (traverseproc)EngineEndpoint_traverse,
    .tp_clear = (inquiry)EngineEndpoint_clear,
    .tp_methods = EngineEndpoint_methods,
    .tp_members = EngineEndpoint_members,
};

/* The poller: one callback per loop iteration for all of an engine's endpoints. */
typedef struct {
    PyObject_HEAD
    unsigned long long h;    /* the engine; 0: stopped */
    int threaded;
    long long spin_ns;
    bp_poll_fn poll;
    bp_spin_fn spin;
    PyObject *endpoints;     /* a tuple of EngineEndpoint, replaced by Python */
    PyObject *ready, *scheduled;  /* loop._ready, loop._scheduled; None: unknown loop */
    PyObject *call_soon;     /* loop.call_soon, where ready is None */
    PyObject *handle;        /* the Handle that runs us, put back in ready; None: stopped */
} EnginePoller;

/* Nanoseconds to spin in C: none while callbacks wait, never past the next timer. */
static int poller_budget(EnginePoller *self, int64_t *ns)
{
    *ns = 0;
    if (self->ready == Py_None)
        return 0;
    Py_ssize_t waiting = PyObject_Length(self->ready);
    if (waiting)
        return waiting < 0 ? -1 : 0;
    *ns = self->spin_ns;
    if (PyList_CheckExact(self->scheduled) && PyList_GET_SIZE(self->scheduled)) {
        double when;
        if (handle_when(PyList_GET_ITEM(self->scheduled, 0), &when) < 0)
            return -1;
        double left = (when - monotonic()) * 1e9;
        *ns = left <= 0 ? 0 : left < (double)*ns ? (int64_t)left : *ns;
    }
    return 0;
}

/* Deliver for every reading endpoint; datagrams moved, or -1. */
static int poller_drain(EnginePoller *self)
{
    PyObject *eps = Py_NewRef(self->endpoints); /* a callback may replace it */
    int moved = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(eps) && self->h; i++) {
        int n = engine_drain((EngineEndpoint *)PyTuple_GET_ITEM(eps, i));
        if (n < 0) {
            moved = -1;
            break;
        }
        moved += n;
    }
    Py_DECREF(eps);
    return moved;
}

/* Run again next iteration, unless stopped, or a callback cancelled our Handle (and
 * maybe scheduled another: that one runs instead). */
static int poller_reschedule(EnginePoller *self, PyObject *running)
{
    if (self->handle != running || running == Py_None)
        return 0;
    if (!self->h || !PyTuple_GET_SIZE(self->endpoints)) {
        Py_XSETREF(self->handle, Py_NewRef(Py_None));
        return 0;
    }
    if (self->ready != Py_None) {
        PyObject *r = PyObject_CallMethodOneArg(self->ready, s_append, self->handle);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    PyObject *run = PyObject_GetAttrString((PyObject *)self, "run");
    PyObject *h = run ? PyObject_CallOneArg(self->call_soon, run) : NULL;
    Py_XDECREF(run);
    if (!h)
        return -1;
    Py_XSETREF(self->handle, h);
    return 0;
}

/* One loop iteration's turn: spin (within the budget), run the engine when it has no
 * thread, deliver, and run it again so answers sent from the callbacks leave now. */
static PyObject *EnginePoller_run(EnginePoller *self, PyObject *unused)
{
    if (!self->h || !PyTuple_GET_SIZE(self->endpoints)) {
        Py_XSETREF(self->handle, Py_NewRef(Py_None));
        Py_RETURN_NONE;
    }
    Py_INCREF(self);
    PyObject *running = Py_NewRef(self->handle);
    int64_t budget;
    int moved = -1;
    if (poller_budget(self, &budget) == 0) {
        void *h = (void *)(uintptr_t)self->h;
        int waiting = budget ? self->spin(h, budget) : 0;
        if (!self->threaded && !waiting) /* bp_spin has just polled when it found some */
            self->poll(h);
        moved = poller_drain(self);
        if (moved > 0 && !self->threaded && self->h)
            self->poll((void *)(uintptr_t)self->h);
    }
    /* Back in the ready queue even when a callback raised SystemExit: the loop may run on. */
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (moved < 0)
        PyErr_Fetch(&type, &value, &tb);
    int err = poller_reschedule(self, running);
    Py_DECREF(running);
    if (moved < 0) {
        if (err)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(self);
    if (moved < 0 || err)
        return NULL;
    Py_RETURN_NONE;
}

static int EnginePoller_init(EnginePoller *self, PyObject *args, PyObject *kw)
{
    unsigned long long h, poll, spin;
    int threaded;
    long long spin_ns;
    PyObject *loop;
    if (!PyArg_ParseTuple(args, "KpLKKO", &h, &threaded, &spin_ns, &poll, &spin, &loop))
        return -1;
    PyObject *ready = PyObject_GetAttrString(loop, "_ready");
    PyObject *scheduled = ready ? PyObject_GetAttrString(loop, "_scheduled") : NULL;
    if (!ready || !scheduled || !PyList_CheckExact(scheduled)) {
        PyErr_Clear();
        Py_XDECREF(ready);
        Py_XDECREF(scheduled);
        ready = Py_NewRef(Py_None);
        scheduled = Py_NewRef(Py_None);
    }
    PyObject *call_soon = PyObject_GetAttrString(loop, "call_soon");
    if (!call_soon) {
        Py_DECREF(ready);
        Py_DECREF(scheduled);
        return -1;
    }
    Py_XSETREF(self->ready, ready);
    Py_XSETREF(self->scheduled, scheduled);
    Py_XSETREF(self->call_soon, call_soon);
    Py_XSETREF(self->endpoints, PyTuple_New(0));
    Py_XSETREF(self->handle, Py_NewRef(Py_None));
    self->h = h;
    self->threaded = threaded;
    self->spin_ns = spin_ns;
    self->poll = (bp_poll_fn)(uintptr_t)poll;
    self->spin = (bp_spin_fn)(uintptr_t)spin;
    return self->endpoints ? 0 : -1;
}

static int EnginePoller_traverse(EnginePoller *self, visitproc visit, void *arg)
{
    Py_VISIT(self->endpoints);
    Py_VISIT(self->ready);
    Py_VISIT(self->scheduled);
    Py_VISIT(self->call_soon);
    Py_VISIT(self->handle);
    return 0;
}

static int EnginePoller_clear(EnginePoller *self)
{
    Py_CLEAR(self->endpoints);
    Py_CLEAR(self->ready);
    Py_CLEAR(self->scheduled);
    Py_CLEAR(self->call_soon);
    Py_CLEAR(self->handle);
    return 0;
}

static void EnginePoller_dealloc(EnginePoller *self)
{
    PyObject_GC_UnTrack(self);
    EnginePoller_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef EnginePoller_methods[] = {
    {"run", (PyCFunction)EnginePoller_run, METH_NOARGS, "One loop iteration's turn."},
    {NULL},
};

static PyMemberDef EnginePoller_members[] = {
    {"h", T_ULONGLONG, offsetof(EnginePoller, h), 0, "the engine; 0: stopped"},
    {"endpoints", T_OBJECT, offsetof(EnginePoller, endpoints), 0, "tuple of EngineEndpoint"},
    {"handle", T_OBJECT, offsetof(EnginePoller, handle), 0, "the Handle running us, or None"},
    {NULL},
};

static PyTypeObject EnginePollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._evloop.EnginePoller",
    .tp_doc = "EnginePoller(engine, threaded, spin_ns, bp_poll, bp_spin, loop): busy-poll "
              "mode's per-iteration callback in C.",
    .tp_basicsize = sizeof(EnginePoller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)EnginePoller_init,
    .tp_dealloc = (destructor)EnginePoller_dealloc,
    .tp_traverse = (traverseproc)EnginePoller_traverse,
    .tp_clear = (inquiry)EnginePoller_clear,
    .tp_methods = EnginePoller_methods,
    .tp_members = EnginePoller_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aiolowlat._native._evloop", "The io_uring loop's per-event path in C.",
    -1, NULL,
};

#define INTERN(var, text)                           \
    if (!(var = PyUnicode_InternFromString(text))) \
        return NULL

PyMODINIT_FUNC PyInit__evloop(void)
{
    INTERN(s_fast_proto, "_fast_proto");
    INTERN(s_closed, "_closed");
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
    INTERN(s_run, "run");
    INTERN(s_handle_run, "_run");
    INTERN(s_when, "_when");
    INTERN(s_stopping, "_stopping");
    INTERN(s_debug, "_debug");
    INTERN(s_scheduled, "_scheduled");
    INTERN(s_append, "append");
    INTERN(s_popleft, "popleft");
    INTERN(s_drop_cancelled, "_drop_cancelled_timers");
    INTERN(s_flush_batches, "_flush_batches");
    INTERN(s_process_events, "_process_events");
    INTERN(s_run_ready_debug, "_run_ready_debug");
    INTERN(s_callback, "_callback");
    INTERN(s_args, "_args");
    INTERN(s_context, "_context");
    INTERN(s_datagram_received, "datagram_received");
    INTERN(s_dgram_failed, "_dgram_failed");
    INTERN(s_peer, "_peer");
    INTERN(s_sendto_py, "_sendto");
    INTERN(s_after_sendto, "_after_sendto");
    INTERN(s_datagrams_received, "datagrams_received");
    INTERN(s_send_failed, "_send_failed");
    INTERN(msg_data_failed, "Fatal error: protocol.data_received() call failed.");
    INTERN(msg_completion, "Exception in io_uring completion handler");
    if (PyType_Ready(&DispatcherType) < 0 || PyType_Ready(&WriterType) < 0 ||
        PyType_Ready(&DgramReceiverType) < 0 || PyType_Ready(&DgramSenderType) < 0 ||
        PyType_Ready(&LoopCoreType) < 0 || PyType_Ready(&EngineEndpointType) < 0 ||
        PyType_Ready(&EnginePollerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    if (PyModule_AddObjectRef(m, "Dispatcher", (PyObject *)&DispatcherType) < 0 ||
        PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddObjectRef(m, "DgramReceiver", (PyObject *)&DgramReceiverType) < 0 ||
        PyModule_AddObjectRef(m, "DgramSender", (PyObject *)&DgramSenderType) < 0 ||
        PyModule_AddObjectRef(m, "LoopCore", (PyObject *)&LoopCoreType) < 0 ||
        PyModule_AddObjectRef(m, "EngineEndpoint", (PyObject *)&EngineEndpointType) < 0 ||
        PyModule_AddObjectRef(m, "EnginePoller", (PyObject *)&EnginePollerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

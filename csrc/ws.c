/* WebSocket hot path: the parts that would cost Python a bytecode per byte, and the
 * per-message dispatch that would cost it a dozen bytecodes per frame. */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as the C API asks; only the last section uses it */
#include <structmember.h>

#include "ws.h"

#include <string.h>
#include <sys/random.h>
#include <time.h>

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ASCII in 8-byte words first; the multi-byte rules of RFC 3629 byte by byte. */
int al_ws_utf8_valid(const char *buf, size_t len)
{
    const uint8_t *s = (const uint8_t *)buf;
    size_t i = 0;
    while (i < len) {
        if (i + 8 <= len && !(load64(s + i) & 0x8080808080808080ULL)) {
            i += 8;
            continue;
        }
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            else if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            else if (c == 0xF4) hi = 0x8F; /* past U+10FFFF */
        } else {
            return 0;
        }
        if (n >= len - i) return 0; /* truncated */
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += n + 1;
    }
    return 1;
}

int al_ws_scan(const char *base, size_t start, size_t end, size_t room, uint64_t *frames,
               int cap, uint64_t max_frame, int flags, al_ws_scan_state *st)
{
    const uint8_t *buf = (const uint8_t *)base + start;
    size_t len = end - start, pos = 0;
    int n = 0, stop = 0;
    st->need = 0;
    st->error = AL_WS_OK;
    for (;;) {
        if (n == cap) {
            stop = AL_WS_STOP_FULL;
            break;
        }
        if (len - pos < 2) break;
        const uint8_t *p = buf + pos;
        uint8_t b0 = p[0], b1 = p[1];
        uint8_t opcode = b0 & 0x0F;
        size_t hdr = 2;
        uint64_t plen = b1 & 0x7F;
        int err = AL_WS_OK;

        if (plen == 126) {
            hdr = 4;
            if (len - pos < hdr) break;
            plen = (uint64_t)p[2] << 8 | p[3];
        } else if (plen == 127) {
            hdr = 10;
            if (len - pos < hdr) break;
            plen = 0;
            for (int k = 2; k < 10; k++) plen = plen << 8 | p[k];
            if (plen >> 63) err = AL_WS_E_LENGTH;
        }
        if (err) {
        } else if (b1 & 0x80) {
            err = AL_WS_E_MASKED;
        } else if (opcode >= 8) {
            if (opcode > 10) err = AL_WS_E_OPCODE;
            else if (!(b0 & 0x80) || plen > 125) err = AL_WS_E_CONTROL;
            else if (b0 & 0x70) err = AL_WS_E_RSV;
        } else if (opcode > 2) {
            err = AL_WS_E_OPCODE;
        } else if ((b0 & 0x30) || ((b0 & 0x40) && (opcode == 0 || !(flags & AL_WS_ALLOW_RSV1)))) {
            err = AL_WS_E_RSV;
        } else if (opcode == 0 ? !st->fragmented : st->fragmented) {
            err = opcode == 0 ? AL_WS_E_CONTINUATION : AL_WS_E_INTERLEAVED;
        } else if (plen > max_frame) {
            err = AL_WS_E_TOO_BIG;
        }
        if (err) {
            st->error = err;
            stop = AL_WS_STOP_ERROR;
            break;
        }
        if (plen > len - pos - hdr) {
            if (hdr + plen > room - start - pos) {
                st->need = hdr + plen;
                stop = AL_WS_STOP_NEED;
            }
            break;
        }
        if (b0 == (AL_WS_FIN | 1) && (flags & AL_WS_CHECK_UTF8) &&
            !al_ws_utf8_valid((const char *)p + hdr, plen)) {
            st->error = AL_WS_E_UTF8;
            stop = AL_WS_STOP_ERROR;
            break;
        }
        if (opcode < 8) st->fragmented = !(b0 & 0x80);
        frames[2 * n] = (uint64_t)(start + pos + hdr) << 8 | b0;
        frames[2 * n + 1] = plen;
        n++;
        pos += hdr + plen;
    }
    st->consumed = pos;
    return n | stop << AL_WS_STOP_SHIFT;
}

void al_ws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t *key)
{
    uint64_t k;
    memcpy(&k, key, 4);
    memcpy((uint8_t *)&k + 4, key, 4);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = load64(src + i) ^ k;
        memcpy(dst + i, &v, 8);
    }
    for (; i < len; i++) dst[i] = src[i] ^ key[i & 3];
}

/* Masking keys come from the kernel's CSPRNG (RFC 6455 10.3), fetched in blocks so a
 * frame costs no system call; per thread, since cffi calls run without the GIL. */
static __thread uint8_t key_pool[4096];
static __thread size_t key_used = sizeof key_pool;

static int next_key(uint8_t *key)
{
    if (key_used == sizeof key_pool) {
        if (getrandom(key_pool, sizeof key_pool, 0) != (ssize_t)sizeof key_pool) return -1;
        key_used = 0;
    }
    memcpy(key, key_pool + key_used, 4);
    key_used += 4;
    return 0;
}

size_t al_ws_encode(uint8_t *out, uint8_t first, const char *data, size_t len, int masked)
{
    const uint8_t *payload = (const uint8_t *)data;
    size_t h = 2;
    uint8_t m = masked ? 0x80 : 0;
    out[0] = first;
    if (len < 126) {
        out[1] = m | (uint8_t)len;
    } else if (len < 65536) {
        out[1] = m | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        h = 4;
    } else {
        out[1] = m | 127;
        for (int k = 0; k < 8; k++) out[2 + k] = (uint8_t)((uint64_t)len >> (56 - 8 * k));
        h = 10;
    }
    if (!masked) {
        memcpy(out + h, payload, len);
        return h + len;
    }
    if (next_key(out + h)) return 0;
    al_ws_mask(out + h + 4, payload, len, out + h);
    return h + 4 + len;
}

long al_ws_join(const char *buf, const uint64_t *frames, int n, uint8_t want,
                uint8_t *out, size_t cap, uint8_t open, uint8_t sep, uint8_t close)
{
    size_t pos = 0;
    int c = 0;
    if (cap < 2) return -1;
    out[pos++] = open;
    for (int i = 0; i < n; i++) {
        uint64_t meta = frames[2 * i], size = frames[2 * i + 1];
        if ((uint8_t)meta != want) return -2;
        if (size + 2 > cap - pos) return -1;
        if (c++) out[pos++] = sep;
        memcpy(out + pos, buf + (meta >> 8), size);
        pos += size;
    }
    out[pos++] = close;
    return (long)pos;
}

/* --- CPython side: the per-message path ------------------------------------------------
 * cffi cannot build or call Python objects, and a Python loop over a read's frames costs
 * more than the frames' JSON decoding. So these few functions are a small CPython module,
 * aiolowlat._native._ws_py, living in the cffi extension and registered by al_ws_py_init:
 * WSFrame (picows's reusable frame object), Receiver (an open connection's reads),
 * dispatch (plain messages of a scan to on_ws_frame) and frame (one masked frame). */

typedef struct {
    PyObject_HEAD
    int opcode;
    char fin;
    long long rx_ns;
    PyObject *payload;
    PyObject *close_code;
    PyObject *close_reason;
} WSFrameObject;

static PyMemberDef frame_members[] = {
    {"opcode", T_INT, offsetof(WSFrameObject, opcode), 0, "TEXT 1, BINARY 2, CLOSE 8, ..."},
    {"fin", T_BOOL, offsetof(WSFrameObject, fin), 0, "always True: messages come whole"},
    {"rx_ns", T_LONGLONG, offsetof(WSFrameObject, rx_ns), 0, "receive time, time.time_ns()"},
    {"payload", T_OBJECT, offsetof(WSFrameObject, payload), 0, "the message (bytes)"},
    {"close_code", T_OBJECT, offsetof(WSFrameObject, close_code), 0, "of a CLOSE frame"},
    {"close_reason", T_OBJECT, offsetof(WSFrameObject, close_reason), 0, "of a CLOSE frame"},
    {NULL},
};

static int frame_init(WSFrameObject *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"opcode", "payload", "rx_ns", NULL};
    int opcode = 0;
    long long rx_ns = 0;
    PyObject *payload = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|iOL", names, &opcode, &payload, &rx_ns))
        return -1;
    if (payload == NULL) payload = PyBytes_FromStringAndSize(NULL, 0);
    else Py_INCREF(payload);
    if (payload == NULL) return -1;
    self->opcode = opcode;
    self->fin = 1;
    self->rx_ns = rx_ns;
    Py_XSETREF(self->payload, payload);
    Py_XSETREF(self->close_code, Py_NewRef(Py_None));
    Py_XSETREF(self->close_reason, PyUnicode_FromStringAndSize(NULL, 0));
    return self->close_reason ? 0 : -1;
}

static int frame_traverse(WSFrameObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->payload);
    Py_VISIT(self->close_code);
    Py_VISIT(self->close_reason);
    return 0;
}

static int frame_clear(WSFrameObject *self)
{
    Py_CLEAR(self->payload);
    Py_CLEAR(self->close_code);
    Py_CLEAR(self->close_reason);
    return 0;
}

static void frame_dealloc(WSFrameObject *self)
{
    PyObject_GC_UnTrack(self);
    frame_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *frame_payload(WSFrameObject *self)
{
    if (self->payload == NULL) return PyBytes_FromStringAndSize(NULL, 0);
    return Py_NewRef(self->payload);
}

static PyObject *frame_as_bytes(WSFrameObject *self, PyObject *unused)
{
    PyObject *p = frame_payload(self);
    if (p == NULL || PyBytes_CheckExact(p)) return p;
    Py_SETREF(p, PyBytes_FromObject(p));
    return p;
}

static PyObject *frame_as_memoryview(WSFrameObject *self, PyObject *unused)
{
    PyObject *p = frame_payload(self);
    if (p == NULL) return NULL;
    Py_SETREF(p, PyMemoryView_FromObject(p));
    return p;
}

static PyObject *frame_as_text(WSFrameObject *self, const char *encoding)
{
    PyObject *p = frame_payload(self);
    if (p == NULL) return NULL;
    Py_SETREF(p, PyUnicode_FromEncodedObject(p, encoding, "strict"));
    return p;
}

static PyObject *frame_as_ascii(WSFrameObject *self, PyObject *unused)
{
    return frame_as_text(self, "ascii");
}

static PyObject *frame_as_utf8(WSFrameObject *self, PyObject *unused)
{
    return frame_as_text(self, "utf-8");
}

static PyObject *frame_repr(WSFrameObject *self)
{
    Py_ssize_t size = self->payload ? PyObject_Length(self->payload) : 0;
    if (size < 0) {
        PyErr_Clear();
        size = -1;
    }
    return PyUnicode_FromFormat("WSFrame(opcode=%d, size=%zd, rx_ns=%lld)", self->opcode, size,
                                self->rx_ns);
}

static PyMethodDef frame_methods[] = {
    {"get_payload_as_bytes", (PyCFunction)frame_as_bytes, METH_NOARGS, NULL},
    {"get_payload_as_memoryview", (PyCFunction)frame_as_memoryview, METH_NOARGS, NULL},
    {"get_payload_as_ascii_text", (PyCFunction)frame_as_ascii, METH_NOARGS, NULL},
    {"get_payload_as_utf8_text", (PyCFunction)frame_as_utf8, METH_NOARGS, NULL},
    {NULL},
};

static PyTypeObject WSFrameType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat.ws.WSFrame",
    .tp_doc = "One received message or control frame (reused from call to call: copy what "
              "you keep).",
    .tp_basicsize = sizeof(WSFrameObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)frame_init,
    .tp_dealloc = (destructor)frame_dealloc,
    .tp_traverse = (traverseproc)frame_traverse,
    .tp_clear = (inquiry)frame_clear,
    .tp_repr = (reprfunc)frame_repr,
    .tp_members = frame_members,
    .tp_methods = frame_methods,
};

/* Hand plain messages i, i+1, ... of frames[0:n] (in buf) to on_frame(transport, frame);
 * or, when transport is None, on_frame is a queue's (append_message, append_rx_ns) and each
 * message (text or bytes) goes to the first, frame.rx_ns to the second: the websockets-
 * style recv(). Two appends rather than one tuple: a queue of thousands of tuples would be
 * scanned by every young-generation collection. Returns the index of the first message
 * not taken, or -1 with an exception set. */
static Py_ssize_t dispatch_frames(PyObject *buf, const uint64_t *frames, Py_ssize_t i,
                                  Py_ssize_t n, WSFrameObject *f, PyObject *on_frame,
                                  PyObject *transport)
{
    PyObject *call_args[2] = {transport, (PyObject *)f};
    PyObject *rx_ns = NULL, *append_msg = NULL, *append_rx = NULL;
    int queue = transport == Py_None;
    if (queue) {
        if (!PyTuple_Check(on_frame) || PyTuple_GET_SIZE(on_frame) != 2) {
            PyErr_SetString(PyExc_TypeError, "a queue is (append_message, append_rx_ns)");
            return -1;
        }
        append_msg = PyTuple_GET_ITEM(on_frame, 0);
        append_rx = PyTuple_GET_ITEM(on_frame, 1);
    }
    for (; i < n; i++) {
        uint64_t meta = frames[2 * i], size = frames[2 * i + 1];
        uint8_t kind = (uint8_t)meta;
        if (kind != (AL_WS_FIN | 1) && kind != (AL_WS_FIN | 2)) break;
        /* bounds checked per frame: the arrays come from Python, a crash must not */
        if ((meta >> 8) + size > (uint64_t)PyByteArray_GET_SIZE(buf)) {
            PyErr_SetString(PyExc_ValueError, "frame outside the receive buffer");
            goto error;
        }
        const char *data = PyByteArray_AS_STRING(buf) + (meta >> 8);
        PyObject *r;
        if (queue) { /* text was UTF-8 checked by the scan */
            PyObject *msg = kind & 2 ? PyBytes_FromStringAndSize(data, (Py_ssize_t)size)
                                     : PyUnicode_DecodeUTF8(data, (Py_ssize_t)size, NULL);
            if (msg == NULL) goto error;
            r = PyObject_CallOneArg(append_msg, msg);
            Py_DECREF(msg);
            if (r == NULL) goto error;
            Py_DECREF(r);
            if (rx_ns == NULL && (rx_ns = PyLong_FromLongLong(f->rx_ns)) == NULL) goto error;
            r = PyObject_CallOneArg(append_rx, rx_ns);
        } else {
            PyObject *payload = PyBytes_FromStringAndSize(data, (Py_ssize_t)size);
            if (payload == NULL) goto error;
            f->opcode = kind & 15;
            Py_XSETREF(f->payload, payload);
            r = PyObject_Vectorcall(on_frame, call_args, 2, NULL);
        }
        if (r == NULL) goto error;
        Py_DECREF(r);
    }
    Py_XDECREF(rx_ns);
    return i;
error:
    Py_XDECREF(rx_ns);
    return -1;
}

/* dispatch(buf, frames_addr, i, n, frame, on_frame, transport) -> int: calls
 * on_frame(transport, frame) for scanned frames i, i+1, ... while each is a plain one-frame
 * message (kind 0x81 or 0x82; text already UTF-8 checked by the scan), with frame.payload
 * a bytes copy; returns the index of the first frame it did not take (n when all). */
static PyObject *py_dispatch(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "dispatch() takes 7 arguments");
        return NULL;
    }
    if (!PyByteArray_Check(args[0]) || !Py_IS_TYPE(args[4], &WSFrameType)) {
        PyErr_SetString(PyExc_TypeError, "dispatch(bytearray, int, int, int, WSFrame, ...)");
        return NULL;
    }
    const uint64_t *frames = PyLong_AsVoidPtr(args[1]);
    Py_ssize_t i = PyLong_AsSsize_t(args[2]), n = PyLong_AsSsize_t(args[3]);
    if (PyErr_Occurred()) return NULL;
    i = dispatch_frames(args[0], frames, i, n, (WSFrameObject *)args[4], args[5], args[6]);
    return i < 0 ? NULL : PyLong_FromSsize_t(i);
}

/* frame(first, payload) -> bytes: one masked client frame, built in its bytes object. */
static PyObject *py_frame(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "frame() takes 2 arguments");
        return NULL;
    }
    long first = PyLong_AsLong(args[0]);
    if (first == -1 && PyErr_Occurred()) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) return NULL;
    size_t len = (size_t)view.len, head = len < 126 ? 2 : len < 65536 ? 4 : 10;
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(head + 4 + len));
    if (out != NULL &&
        !al_ws_encode((uint8_t *)PyBytes_AS_STRING(out), (uint8_t)first, view.buf, len, 1)) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_OSError, "getrandom() failed: no masking key");
    }
    PyBuffer_Release(&view);
    return out;
}

/* Receiver: the protocol's get_buffer and buffer_updated in C, for an open connection
 * without batch decoding (aiolowlat.ws sets them as the WSTransport's own attributes, so
 * the loop calls C directly). It reads and writes the core's _buf/_view/_start/_end in
 * the core's __dict__ (the core stays plain Python and sans-I/O) and hands anything but
 * plain messages back to Python: not armed or not OPEN -> general(nbytes); a scan that
 * stopped at a control frame, a fragment, an error or the frame cap -> stopped(rx_ns);
 * an exception from a callback -> failed(exc). */
typedef struct {
    PyObject_HEAD
    PyObject *core, *dict; /* the ClientProtocol and its __dict__ */
    PyObject *open;        /* State.OPEN */
    PyObject *general, *stopped, *failed; /* Python fallbacks */
    PyObject *after_read;  /* called with no argument after each read, or None */
    PyObject *call, *arg;  /* what plain messages go to (see dispatch_frames) */
    WSFrameObject *frame;
    PyObject *buf, *view;  /* the buffer get_buffer last saw, and a view of all of it */
    uint64_t *frames;
    al_ws_scan_state *st;
    int cap, flags, armed;
    unsigned long long max_frame;
} ReceiverObject;

static PyObject *s_buf, *s_view, *s_start, *s_end, *s_state, *s_get_buffer;

static int receiver_init(ReceiverObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *core, *open, *general, *stopped, *failed;
    if (!PyArg_ParseTuple(args, "OOOOO", &core, &open, &general, &stopped, &failed)) return -1;
    PyObject *dict = PyObject_GenericGetDict(core, NULL);
    if (dict == NULL) return -1;
    Py_XSETREF(self->core, Py_NewRef(core));
    Py_XSETREF(self->dict, dict);
    Py_XSETREF(self->open, Py_NewRef(open));
    Py_XSETREF(self->general, Py_NewRef(general));
    Py_XSETREF(self->stopped, Py_NewRef(stopped));
    Py_XSETREF(self->failed, Py_NewRef(failed));
    self->armed = 0;
    return 0;
}

/* arm(frames_addr, scan_addr, cap, max_frame, flags, frame, call, arg, after_read): the
 * connection is open; from now on plain messages are taken in C. */
static PyObject *receiver_arm(ReceiverObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9 || !Py_IS_TYPE(args[5], &WSFrameType)) {
        PyErr_SetString(PyExc_TypeError, "arm(frames, scan, cap, max_frame, flags, WSFrame, "
                                         "call, arg, after_read)");
        return NULL;
    }
    uint64_t *frames = PyLong_AsVoidPtr(args[0]);
    al_ws_scan_state *st = PyLong_AsVoidPtr(args[1]);
    long cap = PyLong_AsLong(args[2]);
    unsigned long long max_frame = PyLong_AsUnsignedLongLong(args[3]);
    long flags = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (frames == NULL || st == NULL || cap <= 0 || cap > AL_WS_COUNT_MASK) {
        PyErr_SetString(PyExc_ValueError, "arm(): bad frame array or cap");
        return NULL;
    }
    self->frames = frames;
    self->st = st;
    self->cap = (int)cap;
    self->max_frame = max_frame;
    self->flags = (int)flags;
    Py_XSETREF(self->frame, (WSFrameObject *)Py_NewRef(args[5]));
    Py_XSETREF(self->call, Py_NewRef(args[6]));
    Py_XSETREF(self->arg, Py_NewRef(args[7]));
    Py_XSETREF(self->after_read, Py_NewRef(args[8]));
    self->armed = 1;
    Py_RETURN_NONE;
}

static PyObject *receiver_disarm(ReceiverObject *self, PyObject *unused)
{
    self->armed = 0;
    Py_CLEAR(self->call);
    Py_CLEAR(self->arg);
    Py_CLEAR(self->after_read);
    Py_RETURN_NONE;
}

/* An int item of the core's __dict__ (a borrowed lookup; -1 with an exception if absent). */
static Py_ssize_t dict_ssize(PyObject *dict, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(dict, key);
    if (v == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_AttributeError, key);
        return -1;
    }
    return PyLong_AsSsize_t(v);
}

static int dict_set_ssize(PyObject *dict, PyObject *key, Py_ssize_t value)
{
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL) return -1;
    int rc = PyDict_SetItem(dict, key, v);
    Py_DECREF(v);
    return rc;
}

/* get_buffer(sizehint): the whole buffer when it is empty (the common case after a read
 * took every frame), else the core's get_buffer. */
static PyObject *receiver_get_buffer(ReceiverObject *self, PyObject *sizehint)
{
    Py_ssize_t end = dict_ssize(self->dict, s_end);
    if (end < 0) return NULL;
    if (end == 0) {
        PyObject *buf = PyDict_GetItemWithError(self->dict, s_buf);
        if (buf == NULL) return PyErr_Occurred() ? NULL : PyObject_CallMethodOneArg(
                                                              self->core, s_get_buffer, sizehint);
        if (buf != self->buf) { /* first call, or the core grew its buffer */
            PyObject *view = PyDict_GetItemWithError(self->dict, s_view);
            if (view == NULL) return PyErr_Occurred() ? NULL : PyObject_CallMethodOneArg(
                                                                   self->core, s_get_buffer, sizehint);
            Py_XSETREF(self->buf, Py_NewRef(buf));
            Py_XSETREF(self->view, Py_NewRef(view));
        }
        return Py_NewRef(self->view);
    }
    return PyObject_CallMethodOneArg(self->core, s_get_buffer, sizehint);
}

/* The raised exception goes to failed(exc), which closes the connection as it calls for. */
static PyObject *call_failed(ReceiverObject *self)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL) PyException_SetTraceback(value, tb);
    PyObject *result = PyObject_CallOneArg(self->failed, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return result;
}

static PyObject *receiver_buffer_updated(ReceiverObject *self, PyObject *arg)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts); /* time.time_ns(), as rx_ns everywhere */
    long long rx_ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    Py_ssize_t nbytes = PyLong_AsSsize_t(arg);
    if (nbytes == -1 && PyErr_Occurred()) return NULL;
    PyObject *state = PyDict_GetItemWithError(self->dict, s_state);
    if (!self->armed || state != self->open) {
        if (state == NULL && PyErr_Occurred()) return NULL;
        return PyObject_CallOneArg(self->general, arg);
    }
    PyObject *buf = PyDict_GetItemWithError(self->dict, s_buf);
    if (buf == NULL || !PyByteArray_Check(buf)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "core._buf is not a bytearray");
        return NULL;
    }
    /* Strong references for the whole read: a callback may grow the buffer, disarm this
     * Receiver (connection_lost) or drop the last other reference to it. */
    Py_INCREF(buf);
    Py_INCREF(self);
    PyObject *call = Py_NewRef(self->call), *cb_arg = Py_NewRef(self->arg);
    PyObject *after_read = Py_XNewRef(self->after_read);
    WSFrameObject *frame = (WSFrameObject *)Py_NewRef(self->frame);
    Py_ssize_t start = dict_ssize(self->dict, s_start), end = dict_ssize(self->dict, s_end);
    PyObject *result = NULL;
    if (start < 0 || end < 0) goto out;
    end += nbytes;
    if (start > end || end > PyByteArray_GET_SIZE(buf)) {
        PyErr_SetString(PyExc_ValueError, "buffer_updated(): more bytes than the buffer holds");
        goto out;
    }
    if (dict_set_ssize(self->dict, s_end, end) < 0) goto out;
    frame->rx_ns = rx_ns;
    al_ws_scan_state *st = self->st;
    int r = al_ws_scan(PyByteArray_AS_STRING(buf), (size_t)start, (size_t)end,
                       (size_t)PyByteArray_GET_SIZE(buf), self->frames, self->cap,
                       self->max_frame, self->flags, st);
    st->frames = r & AL_WS_COUNT_MASK;
    st->stop = r >> AL_WS_STOP_SHIFT;
    Py_ssize_t taken = dispatch_frames(buf, self->frames, 0, st->frames, frame, call, cb_arg);
    if (taken < 0) { /* a callback raised: Python fails the connection (1011) */
        result = call_failed(self);
        goto out;
    }
    st->taken = (int)taken;
    if (taken < st->frames || st->stop) { /* the rest is Python's: core.receive_stopped() */
        PyObject *t = PyLong_FromLongLong(rx_ns);
        if (t != NULL) result = PyObject_CallOneArg(self->stopped, t);
        Py_XDECREF(t);
        goto out;
    }
    start += (Py_ssize_t)st->consumed;
    if (start == end) {
        start = 0;
        if (dict_set_ssize(self->dict, s_end, 0) < 0) goto out;
    }
    if (dict_set_ssize(self->dict, s_start, start) < 0) goto out;
    if (after_read != NULL && after_read != Py_None) {
        PyObject *r2 = PyObject_CallNoArgs(after_read);
        if (r2 == NULL) {
            result = call_failed(self);
            goto out;
        }
        Py_DECREF(r2);
    }
    result = Py_NewRef(Py_None);
out:
    Py_DECREF(frame);
    Py_XDECREF(after_read);
    Py_DECREF(cb_arg);
    Py_DECREF(call);
    Py_DECREF(self);
    Py_DECREF(buf);
    return result;
}

static int receiver_traverse(ReceiverObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->core);
    Py_VISIT(self->dict);
    Py_VISIT(self->open);
    Py_VISIT(self->general);
    Py_VISIT(self->stopped);
    Py_VISIT(self->failed);
    Py_VISIT(self->after_read);
    Py_VISIT(self->call);
    Py_VISIT(self->arg);
    Py_VISIT(self->frame);
    Py_VISIT(self->buf);
    Py_VISIT(self->view);
    return 0;
}

static int receiver_clear(ReceiverObject *self)
{
    self->armed = 0;
    Py_CLEAR(self->core);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->open);
    Py_CLEAR(self->general);
    Py_CLEAR(self->stopped);
    Py_CLEAR(self->failed);
    Py_CLEAR(self->after_read);
    Py_CLEAR(self->call);
    Py_CLEAR(self->arg);
    Py_CLEAR(self->frame);
    Py_CLEAR(self->buf);
    Py_CLEAR(self->view);
    return 0;
}

static void receiver_dealloc(ReceiverObject *self)
{
    PyObject_GC_UnTrack(self);
    receiver_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef receiver_methods[] = {
    {"arm", (PyCFunction)(void (*)(void))receiver_arm, METH_FASTCALL, NULL},
    {"disarm", (PyCFunction)receiver_disarm, METH_NOARGS, NULL},
    {"get_buffer", (PyCFunction)receiver_get_buffer, METH_O, NULL},
    {"buffer_updated", (PyCFunction)receiver_buffer_updated, METH_O, NULL},
    {NULL},
};

static PyMemberDef receiver_members[] = {
    {"armed", T_INT, offsetof(ReceiverObject, armed), READONLY, NULL},
    {NULL},
};

static PyTypeObject ReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiolowlat._native._ws_py.Receiver",
    .tp_doc = "get_buffer/buffer_updated of an open connection, in C (see csrc/ws.c).",
    .tp_basicsize = sizeof(ReceiverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)receiver_init,
    .tp_dealloc = (destructor)receiver_dealloc,
    .tp_traverse = (traverseproc)receiver_traverse,
    .tp_clear = (inquiry)receiver_clear,
    .tp_methods = receiver_methods,
    .tp_members = receiver_members,
};

static PyMethodDef py_methods[] = {
    {"dispatch", (PyCFunction)(void (*)(void))py_dispatch, METH_FASTCALL,
     "Call on_frame for each plain message of a scan; returns where it stopped."},
    {"frame", (PyCFunction)(void (*)(void))py_frame, METH_FASTCALL,
     "One masked client frame as bytes."},
    {NULL},
};

static struct PyModuleDef py_module = {
    PyModuleDef_HEAD_INIT, "aiolowlat._native._ws_py",
    "The WebSocket per-message path in C (see csrc/ws.c).", -1, py_methods,
};

int al_ws_py_init(void)
{
    PyGILState_STATE gil = PyGILState_Ensure(); /* cffi calls C without the GIL */
    int rc = -1;
    PyObject *modules = PyImport_GetModuleDict();
    if (PyDict_GetItemString(modules, py_module.m_name) != NULL) {
        rc = 0;
        goto out;
    }
    if (PyType_Ready(&WSFrameType) < 0 || PyType_Ready(&ReceiverType) < 0) goto out;
    struct { PyObject **p; const char *s; } names[] = {
        {&s_buf, "_buf"}, {&s_view, "_view"}, {&s_start, "_start"}, {&s_end, "_end"},
        {&s_state, "state"}, {&s_get_buffer, "get_buffer"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].p = PyUnicode_InternFromString(names[i].s)) == NULL) goto out;
    PyObject *m = PyModule_Create(&py_module);
    if (m == NULL) goto out;
    if (PyModule_AddObjectRef(m, "WSFrame", (PyObject *)&WSFrameType) == 0 &&
        PyModule_AddObjectRef(m, "Receiver", (PyObject *)&ReceiverType) == 0 &&
        PyDict_SetItemString(modules, py_module.m_name, m) == 0)
        rc = 0;
    Py_DECREF(m);
out:
    if (rc) PyErr_Print();
    PyGILState_Release(gil);
    return rc;
}

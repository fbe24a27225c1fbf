/* WebSocket (RFC 6455) hot path: frame scanning, masking, UTF-8 checks, frame encoding. */
#ifndef AIOLOWLAT_WS_H
#define AIOLOWLAT_WS_H
#include <stddef.h>
#include <stdint.h>

/* Why a scan stopped early (al_ws_scan_state.error); the bad frame starts at consumed. */
enum {
    AL_WS_OK = 0,
    AL_WS_E_RSV = 1,          /* reserved bit set without a negotiated extension */
    AL_WS_E_OPCODE = 2,       /* reserved opcode */
    AL_WS_E_CONTROL = 3,      /* fragmented control frame or payload over 125 bytes */
    AL_WS_E_MASKED = 4,       /* a server frame must not be masked */
    AL_WS_E_LENGTH = 5,       /* 64-bit length with its most significant bit set */
    AL_WS_E_TOO_BIG = 6,      /* payload over the frame size limit */
    AL_WS_E_UTF8 = 7,         /* a single-frame text message is not valid UTF-8 */
    AL_WS_E_CONTINUATION = 8, /* continuation frame outside a fragmented message */
    AL_WS_E_INTERLEAVED = 9   /* new data message inside a fragmented one */
};

/* Scan options. */
enum { AL_WS_ALLOW_RSV1 = 1, AL_WS_CHECK_UTF8 = 2 };

/* Why al_ws_scan returned, in the bits above the frame count (AL_WS_STOP_SHIFT up): so one
 * call answers the common case, and the state is read only when something else happened. */
enum {
    AL_WS_STOP_SHIFT = 16,
    AL_WS_COUNT_MASK = 0xFFFF,
    AL_WS_STOP_FULL = 1, /* cap frames found: scan again */
    AL_WS_STOP_NEED = 2, /* a partial frame larger than the room left: st->need */
    AL_WS_STOP_ERROR = 4 /* a bad frame: st->error */
};

/* Frame kind byte = the frame's first byte: opcode | rsv1 << 6 | fin << 7. */
enum { AL_WS_FIN = 128, AL_WS_RSV1 = 64 };

typedef struct {
    size_t consumed; /* bytes of whole frames scanned, from the start of the buffer */
    size_t need;     /* size of the partial frame at consumed once its header is in; else 0 */
    int error;       /* AL_WS_OK, or why the frame at consumed is bad */
    int fragmented;  /* in/out: inside a fragmented data message */
    int frames;      /* _ws_py.Receiver: frames its scan found */
    int taken;       /* _ws_py.Receiver: of which it dispatched (the next is not plain) */
    int stop;        /* _ws_py.Receiver: its scan's AL_WS_STOP_* bits */
} al_ws_scan_state;

/* Parse the headers of every whole frame in buf[start:end] (at most cap, cap < 65536)
 * into frames[2i] = payload offset in buf << 8 | kind byte, frames[2i+1] = payload
 * length. Stops at a partial frame, at cap, or at the first bad frame (st->error).
 * Returns the number of frames | AL_WS_STOP_* << AL_WS_STOP_SHIFT; st->consumed is set
 * always, st->need when a partial frame will not fit before buf[room] (the buffer's end). */
int al_ws_scan(const char *buf, size_t start, size_t end, size_t room, uint64_t *frames,
               int cap, uint64_t max_frame, int flags, al_ws_scan_state *st);

/* 1 if buf[0:len] is well-formed UTF-8 (no overlongs, surrogates or code points past
 * U+10FFFF), else 0. */
int al_ws_utf8_valid(const char *buf, size_t len);

/* dst[i] = src[i] ^ key[i % 4], eight bytes at a time; dst may equal src. */
void al_ws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t *key);

/* Write one frame into out (room for len + 14 bytes): first byte as given (fin, rsv1,
 * opcode), the length, and, if masked, a fresh random key and the masked payload.
 * Returns the frame's size, or 0 if the kernel's random source failed. */
size_t al_ws_encode(uint8_t *out, uint8_t first, const char *payload, size_t len, int masked);

/* Write open, the payloads of scanned frames [0, n) of buf joined by sep, and close into
 * out: e.g. a JSON array of messages for one decoder call. Every frame's kind must equal
 * want. Returns the bytes written, -1 if cap is too small, -2 for a frame of another kind. */
long al_ws_join(const char *buf, const uint64_t *frames, int n, uint8_t want,
                uint8_t *out, size_t cap, uint8_t open, uint8_t sep, uint8_t close);

/* Register aiolowlat._native._ws_py, the per-message path as a CPython module (WSFrame,
 * Receiver, dispatch, frame): call once after importing _ws. 0 on success, -1 (error printed). */
int al_ws_py_init(void);

#endif

/* WebSocket hot path: the parts that would cost Python a bytecode per byte. */
#include "ws.h"

#include <string.h>
#include <sys/random.h>

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

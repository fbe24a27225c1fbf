/* ITCH 5.0 decoder: offsets from the specification, big-endian fields. */
#include "itch.h"

#include <string.h>

#define MOLD_HEADER 20 /* session 10, sequence 8, message count 2 */

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be48(const uint8_t *p) { return (uint64_t)be16(p) << 32 | be32(p + 2); }
static inline uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* The length of each known type's layout; 0 for an unknown type. */
static size_t layout_size(uint8_t type)
{
    switch (type) {
    case 'S': return 12;
    case 'R': return 39;
    case 'A': return 36;
    case 'F': return 40;
    case 'E': return 31;
    case 'C': return 36;
    case 'X': return 23;
    case 'D': return 19;
    case 'U': return 35;
    case 'P': return 44;
    case 'Q': return 40;
    default: return 0;
    }
}

/* One message whose length was checked against its layout. */
static void decode_message(const uint8_t *m, al_itch_msg *r)
{
    memset(r, 0, sizeof *r);
    r->type = (char)m[0];
    r->locate = be16(m + 1);
    r->timestamp = be48(m + 5);
    switch (m[0]) {
    case 'S':
        r->flag = (char)m[11];
        break;
    case 'R':
        memcpy(r->stock, m + 11, 8);
        r->flag = (char)m[19];
        break;
    case 'A':
    case 'F':
    case 'P':
        r->ref = be64(m + 11);
        r->side = (char)m[19];
        r->shares = be32(m + 20);
        memcpy(r->stock, m + 24, 8);
        r->price = be32(m + 32);
        if (m[0] == 'P')
            r->match = be64(m + 36);
        break;
    case 'E':
    case 'C':
        r->ref = be64(m + 11);
        r->shares = be32(m + 19);
        r->match = be64(m + 23);
        if (m[0] == 'C') {
            r->flag = (char)m[31];
            r->price = be32(m + 32);
        }
        break;
    case 'X':
        r->ref = be64(m + 11);
        r->shares = be32(m + 19);
        break;
    case 'D':
        r->ref = be64(m + 11);
        break;
    case 'U':
        r->ref = be64(m + 11);
        r->new_ref = be64(m + 19);
        r->shares = be32(m + 27);
        r->price = be32(m + 31);
        break;
    case 'Q':
        r->shares = be64(m + 11);
        memcpy(r->stock, m + 19, 8);
        r->price = be32(m + 27);
        r->match = be64(m + 31);
        r->flag = (char)m[39];
        break;
    }
}

int al_itch_decode_packet(const uint8_t *packet, size_t len, al_itch_msg *out, int max,
                          uint64_t *counts)
{
    if (len < MOLD_HEADER) {
        counts[AL_ITCH_MALFORMED]++;
        return 0;
    }
    unsigned count = be16(packet + 18);
    if (count == 0xFFFF) /* end of session: no messages */
        return 0;
    const uint8_t *p = packet + MOLD_HEADER, *end = packet + len;
    int n = 0;
    for (unsigned i = 0; i < count; i++) {
        if (n == max) {
            counts[AL_ITCH_OVERFLOW] += count - i; /* the caller's array is full */
            break;
        }
        if (end - p < 2) {
            counts[AL_ITCH_MALFORMED]++; /* fewer blocks than the header says */
            break;
        }
        size_t size = be16(p);
        p += 2;
        if ((size_t)(end - p) < size) {
            counts[AL_ITCH_MALFORMED]++; /* a block running past the packet */
            break;
        }
        size_t need = size ? layout_size(p[0]) : 0;
        if (size == 0 || (need && size < need))
            counts[AL_ITCH_MALFORMED]++;
        else if (!need)
            counts[AL_ITCH_UNKNOWN]++;
        else
            decode_message(p, &out[n++]);
        p += size;
    }
    return n;
}

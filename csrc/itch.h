/* NASDAQ TotalView-ITCH 5.0 in MoldUDP64 packets, decoded in C into fixed records. */
#ifndef AIOLOWLAT_ITCH_H
#define AIOLOWLAT_ITCH_H
#include <stddef.h>
#include <stdint.h>

/* One decoded message; which fields mean something depends on type (see itch.c). */
typedef struct {
    uint64_t timestamp; /* ns since midnight */
    uint64_t ref;       /* order reference; the original one for 'U' */
    uint64_t new_ref;   /* 'U' */
    uint64_t match;     /* 'E' 'C' 'P' 'Q' */
    uint64_t shares;    /* shares, executed, cancelled or cross shares */
    uint32_t price;     /* 4 implied decimals; execution price for 'C', cross price for 'Q' */
    uint16_t locate;
    char type;
    char side;          /* 'A' 'F' 'P' */
    char flag;          /* event code 'S', market category 'R', printable 'C', cross type 'Q' */
    char stock[8];      /* 'R' 'A' 'F' 'P' 'Q', space padded */
} al_itch_msg;

enum { AL_ITCH_UNKNOWN = 0, AL_ITCH_MALFORMED = 1, AL_ITCH_OVERFLOW = 2 };

/* Decode every message of one MoldUDP64 packet into out (at most max; messages
 * beyond that are counted as AL_ITCH_OVERFLOW). Unknown types and truncated
 * messages or blocks are counted in counts[] and skipped; nothing past len is
 * read. Returns the number of records written. */
int al_itch_decode_packet(const uint8_t *packet, size_t len, al_itch_msg *out, int max,
                          uint64_t *counts);

#endif
